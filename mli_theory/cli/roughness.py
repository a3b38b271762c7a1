"""``mli-theory roughness``: the roughness index over random 1D slices about θT (or θ0), and the
rise statistics of the loss along the MLI line."""

from __future__ import annotations

import argparse
import math
from typing import Any

from .common import input_notes, seed as _seed
from .common import Progress, Timings, add_model_args, emit, envelope, load_model_inputs, model_facts, plot_warnings, positive_int

DESCRIPTION = """\
Roughness index (our reading of Wu et al. 2021, arXiv:2103.11069): for m random filter-normalised
directions d_i about c (theta_T, or theta_0 with --center init) and f_i(t) = L(c + t*d_i) on
--steps points t in [-R, R],
  T_i = sum_k |f_i(t_k+1) - f_i(t_k)| / (max f_i - min f_i)   (normalised total variation; 1 if monotone)
  RI  = sample std(T_i) / mean(T_i).

MLI path statistics on --alphas points of theta(a) = (1-a)*theta_0 + a*theta_T:
  max_rise       = max_{i<j} (L_j - L_i)+
  interior_bump  = largest rise ending at a peak strictly inside the grid (what a bump search sees)
  end_rise       = L_last - min of the earlier L (a rise at the end, which a bump search misses);
                   max_rise = max(interior_bump, end_rise)
  final_run_rise = rise of the last non-decreasing run, over final_run_steps grid steps
  n_rises        = separate rises at --tol (hysteresis: a rise ends when the curve falls > tol below its peak)
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``roughness`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "roughness",
        help="roughness index over random 1D slices, and rise statistics of the MLI line",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--slices", type=int, default=10, help="random 1D slices (default 10)")
    p.add_argument("--steps", type=int, default=51, help="points per slice (default 51)")
    p.add_argument("--range", type=float, default=1.0, dest="span", metavar="R", help="R: slice coordinates in [-R, R] (default 1)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random directions (default 0)")
    p.add_argument("--center", default="final", help="centre of the slices: final (default) or init")
    p.add_argument("--include-bn-and-bias", action="store_true", help="perturb biases and BatchNorm parameters too")
    p.add_argument("--alphas", type=int, default=50, help="alpha points of the MLI line for the path statistics (default 50)")
    p.add_argument("--tol", type=float, default=0.0, help="tolerance of the separate-rise count (default 0)")
    p.add_argument("--chunk", type=int, default=None, help="grid points per vmapped pass (default: sized to memory)")
    return p


def validate(args: argparse.Namespace) -> None:
    """The roughness flags, before any file is read; InputError naming the flag."""
    from ..errors import InputError

    positive_int(args.slices, "--slices")
    if args.slices < 2:  # the index is a sample standard deviation over the slices
        raise InputError(f"--slices {args.slices}: the roughness index is a standard deviation over slices: give at least 2")
    positive_int(args.steps, "--steps")
    if args.steps < 3:
        raise InputError(f"--steps {args.steps}: need at least 3 points per slice")
    if args.slices * args.steps > 1_000_000:
        raise InputError(f"--slices {args.slices}: {args.slices * args.steps} points in all is more than 1000000")
    if not math.isfinite(args.span) or args.span <= 0:
        raise InputError(f"--range {args.span}: must be a finite number > 0")
    if args.center not in ("final", "init"):
        raise InputError(f"--center {args.center}: expected final or init")
    positive_int(args.alphas, "--alphas")
    if args.alphas < 2 or args.alphas > 100_000:
        raise InputError(f"--alphas {args.alphas}: need 2 to 100000 points")
    if not math.isfinite(args.tol) or args.tol < 0:
        raise InputError(f"--tol {args.tol}: must be a finite number >= 0")
    if args.chunk is not None:
        positive_int(args.chunk, "--chunk")


def run(args: argparse.Namespace) -> int:
    """Compute the index and the path statistics; print them (JSON with ``--json``)."""
    from ..connectivity.pathstats import path_statistics
    from ..connectivity.roughness import landscape_roughness
    from ..path import alpha_grid, loss_curve, make_line

    validate(args)
    timings = Timings()
    with timings.stage("load"):
        inp = load_model_inputs(args)
    init, final, data = inp["states"]["init"], inp["states"]["final"], inp["data"]
    progress = Progress("roughness slices", args.quiet, unit="pt")
    with timings.stage("slices"):
        res = landscape_roughness(
            inp["model"], init, final, data,
            slices=args.slices, steps=args.steps, span=args.span, seed=args.seed, center=args.center,
            include_bn_and_bias=args.include_bn_and_bias, bn=inp["bn"], device=inp["device"], dtype=inp["dtype"],
            batch_size=args.batch_size, chunk=args.chunk, progress=progress,
        )
    progress.close()
    line = make_line(inp["model"], init, final, device=inp["device"], dtype=inp["dtype"])
    grid = alpha_grid(args.alphas)
    p2 = Progress("MLI line", args.quiet)
    with timings.stage("line"):
        curve = loss_curve(line, data.to(inp["device"], inp["dtype"]), grid, bn=inp["bn"], batch_size=args.batch_size, progress=p2)
    p2.close()
    stats = path_statistics(curve.losses, tol=args.tol, alphas=grid)
    warnings = list(res.warnings)
    out = res.to_dict()
    out.update(
        path={"alphas": list(grid), "losses": list(curve.losses), "statistics": stats.to_dict()},
        info=dict(res.info),
    )
    if args.plot:
        from ..connectivity.surface_figures import plot_slices

        ri = out["roughness_index"]
        with timings.stage("plot"):
            warnings += plot_warnings(plot_slices, res.t, res.slices, args.plot,
                                      title=f"roughness index {ri:.4g}" if ri is not None else "roughness index: undefined",
                                      path_alphas=grid, path_losses=curve.losses)
    out["warnings"] = warnings
    if args.json:
        emit(envelope(out, **model_facts(inp), input_warnings=input_notes(inp), seed=args.seed, timings=timings), True)
    else:
        r = res.roughness
        lines = [
            f"roughness index {r.index:.6g} (mean normalised TV {r.mean:.6g}, std {r.std:.6g}) over {len(r.per_slice)} slices"
            if r is not None else "roughness index: no slice with finite losses",
            f"MLI line ({args.alphas} alphas): max rise {stats.max_rise:.6g}, interior bump {stats.interior_bump:.6g}, "
            f"end rise {stats.end_rise:.6g}, final run {stats.final_run_rise:.6g} over {stats.final_run_steps} steps, "
            f"{stats.n_rises} separate rise(s) at tol {args.tol:g}",
        ] + [f"warning: {w}" for w in warnings]
        emit("\n".join(lines), False)
    return 0
