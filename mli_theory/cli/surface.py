"""``mli-theory surface``: a 1D or 2D slice of the training loss (random filter-normalised
directions about θT or θ0, or the plane through θ0, θT and a third checkpoint)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from .common import input_notes, seed as _seed
from .common import Progress, Timings, add_model_args, emit, envelope, load_model_inputs, model_facts, plot_warnings, positive_int

DESCRIPTION = """\
A slice of the mean training loss L over the whole data set.

Random mode (default): f(x) = L(c + x*d1) or f(x, y) = L(c + x*d1 + y*d2), x, y in [-R, R],
c = theta_T (--center final) or theta_0 (--center init). d1, d2 are filter-normalised Gaussian
directions (Li et al. 2018): zero-mean N(0,1) entries, each filter (row of a Linear weight, output
channel of a convolution) rescaled to the norm of the same filter of c; biases and BatchNorm
parameters zero unless --include-bn-and-bias; d2 orthogonalised against d1 after normalisation.

Plane mode (--plane --third C.pt): theta(x, y) = theta_0 + x*e1 + y*e2 with e1 = theta_T - theta_0,
e2 = (theta_C - theta_0) - beta*e1, beta = <theta_C - theta_0, e1>/|e1|^2; theta_0 sits at (0, 0),
theta_T at (1, 0), theta_C at (beta, 1), the MLI line is y = 0, 0 <= x <= 1, and both axes span
[-R, 1 + R]. With --dims 1 --plane: the line through theta_0 and theta_T, x in [-R, 1 + R].

BatchNorm: recompute re-estimates the running statistics at every grid point (one extra pass over
the data per point, no vmap batching); interpolate combines them like the parameters; frozen keeps
theta_T's (plane) or the centre's (random).
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``surface`` on the subparsers ``sub``."""
    p = sub.add_parser(
        "surface",
        help="1D/2D loss surface: filter-normalised random directions, or the plane through init, final and a third checkpoint",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--dims", type=int, default=2, help="1 (a line) or 2 (a surface; default)")
    p.add_argument("--center", default="final", help="random mode: centre of the slice, final (theta_T, default) or init (theta_0)")
    p.add_argument("--plane", action="store_true", help="slice through init, final (and --third in 2D) instead of random directions")
    p.add_argument("--third", metavar="C.pt", default=None, help="the third checkpoint of --plane (2D)")
    p.add_argument("--steps", type=int, default=21, help="grid points per axis (default 21)")
    p.add_argument("--range", type=float, default=None, dest="span", metavar="R",
                   help="R: random mode coordinates in [-R, R] (default 1); plane mode [-R, 1+R] (default 0.5)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random directions (default 0)")
    p.add_argument("--directions", default="random",
                   help="random (filter-normalised random directions, default) | hessian (the top-1/top-2 Hessian "
                        "eigenvectors at the centre, unit length)")
    p.add_argument("--include-bn-and-bias", action="store_true", help="perturb biases and BatchNorm parameters too (random mode)")
    p.add_argument("--chunk", type=int, default=None, help="grid points per vmapped pass (default: sized to memory; 1: a loop)")
    return p


def validate(args: argparse.Namespace) -> None:
    """The surface flags, checked before any file is read; InputError naming the flag."""
    from ..errors import InputError

    if args.dims not in (1, 2):
        raise InputError(f"--dims {args.dims}: a surface has 1 or 2 dimensions")
    positive_int(args.steps, "--steps")
    if args.steps < 2:
        raise InputError(f"--steps {args.steps}: need at least 2 grid points per axis")
    from ..connectivity.surface import MAX_POINTS

    if args.steps ** args.dims > MAX_POINTS:
        raise InputError(f"--steps {args.steps}: {args.steps ** args.dims} grid points is more than {MAX_POINTS}")
    if args.span is not None:
        if not math.isfinite(args.span) or args.span < 0 or (args.span == 0 and not args.plane):
            raise InputError(f"--range {args.span}: must be a finite number > 0 (>= 0 with --plane)")
    if args.center not in ("final", "init"):
        raise InputError(f"--center {args.center}: expected final or init")
    if args.plane and args.dims == 2 and not args.third:
        raise InputError("--plane needs --third C.pt (the third checkpoint spanning the plane with init and final)")
    if args.third and not args.plane:
        raise InputError("--third is only used with --plane")
    if args.third and args.dims == 1:
        raise InputError("--third is only used with --dims 2 (the 1D plane slice is the line through init and final)")
    if args.plane and args.center != "final":
        raise InputError("--center applies to random directions; a --plane slice has its origin at init")
    if args.chunk is not None:
        positive_int(args.chunk, "--chunk")
    from ..connectivity.surface import DIRECTIONS

    if args.directions not in DIRECTIONS:
        raise InputError(f"--directions {args.directions}: expected one of {', '.join(DIRECTIONS)}")
    if args.directions == "hessian" and args.plane:
        raise InputError("--directions hessian spans the slice by eigenvectors; it does not combine with --plane")
    if args.directions == "hessian" and args.include_bn_and_bias:
        raise InputError("--directions hessian uses every trainable parameter; --include-bn-and-bias is for random directions")


def run(args: argparse.Namespace) -> int:
    """Compute the surface and print it (JSON with ``--json``); 0 on success."""
    from dataclasses import replace

    from ..connectivity.surface import loss_surface
    from ..inputs import load_state_dict

    validate(args)
    timings = Timings()
    with timings.stage("load"):
        third = load_state_dict(args.third) if args.third else None
        inp = load_model_inputs(args)
    progress = Progress("surface", args.quiet, unit="pt")
    with timings.stage("surface"):
        result = _surface(loss_surface, inp, third, args, progress)
    progress.close()
    if args.plot:
        from ..connectivity.surface_figures import plot_surface

        with timings.stage("plot"):
            result = replace(result, warnings=result.warnings + plot_warnings(plot_surface, result, args.plot))
    if args.json:
        emit(envelope(result.to_dict(), **model_facts(inp), input_warnings=input_notes(inp), seed=args.seed, timings=timings), True)
    else:
        emit(_text(result), False)
    return 0


def _surface(loss_surface: Any, inp: dict[str, Any], third: Any, args: argparse.Namespace, progress: Any) -> Any:
    return loss_surface(
        inp["model"],
        inp["states"]["init"],
        inp["states"]["final"],
        inp["data"],
        dims=args.dims,
        plane=args.plane,
        third=third,
        center=args.center,
        steps=args.steps,
        span=args.span,
        seed=args.seed,
        include_bn_and_bias=args.include_bn_and_bias,
        directions=args.directions,
        bn=inp["bn"],
        device=inp["device"],
        dtype=inp["dtype"],
        batch_size=args.batch_size,
        chunk=args.chunk,
        progress=progress,
    )


def _text(s: Any) -> str:
    vals = [(v, i) for i, v in enumerate(v for row in s.grid() for v in row) if v is not None]
    lines = [f"{s.dims}D loss surface ({s.mode}): {len(s.x)}{'x' + str(len(s.y)) if s.y else ''} points", f"  axes: {s.directions}"]
    if vals:
        lo, i = min(vals)
        hi, _ = max(vals)
        nx = len(s.x)
        where = f"x={s.x[i % nx]:.4g}" + (f", y={s.y[i // nx]:.4g}" if s.y else "")
        lines.append(f"  loss: min {lo:.6g} at {where}; max {hi:.6g}")
    if s.mli_line is not None:
        lines.append(f"  MLI line from {tuple(round(v, 6) for v in s.mli_line[0])} to {tuple(round(v, 6) for v in s.mli_line[1])}")
    for w in s.warnings:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)
