"""``mli-theory barrier``: loss barriers on the straight line between two checkpoints A and B.

JSON (GUIDE §3): ``alphas``, ``losses``, ``errors`` (ce; null for mse), ``barriers``
{name: {``value``, ``alpha``}}, with ``--align weights`` also ``barriers_before_alignment``, and
``warnings``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from .common import input_notes, seed as _seed
from .common import Progress, Timings, add_model_args, emit, envelope, load_model_inputs, model_facts, plot_warnings

_BN_CHOICES = ("recompute", "repair", "interpolate", "frozen")
_ALIGN_CHOICES = ("none", "weights")


def _epilog() -> str:
    from ..connectivity.barrier import BARRIER_DEFINITIONS

    lines = ["barrier definitions (L = mean training loss, E = error = 1 - accuracy, a in [0, 1], "
             "theta(a) = (1-a) A + a B; each reported as {value, alpha}):"]
    lines += [f"  {name:16s} {text}" for name, text in BARRIER_DEFINITIONS.items()]
    lines.append("sup_a: the grid maximum, refined around it (golden section; nested local grids for E) until the "
                 "bracket is narrower than --alpha-tol; every value is read at an alpha where the loss was evaluated.")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``barrier`` on the subcommand parsers ``sub``."""
    p = sub.add_parser(
        "barrier",
        help="loss barriers (named definitions) on the line between two checkpoints, optionally after weight matching",
        description="Loss and error along theta(a) = (1-a) A + a B, and the named barrier definitions.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(
        p,
        endpoints=(("a", "checkpoint A: state dict (.pt via torch.save, or .safetensors)"), ("b", "checkpoint B, same architecture")),
        run_folder=False,
    )
    for action in p._actions:  # this command has one more BatchNorm policy than common's
        if "--bn" in action.option_strings:
            action.help = ("BatchNorm statistics at each alpha: recompute (default; re-estimated over the data) | "
                           "repair (REPAIR, Jordan et al. 2022: every BatchNorm / hidden unit rescaled to the interpolated "
                           "statistics of A and B; also applies to models without BatchNorm) | interpolate | frozen (B's)")
    p.add_argument("--alphas", type=int, default=25, help="points of the even alpha grid in [0, 1], ends included (default 25)")
    p.add_argument("--alpha-tol", type=float, default=1e-4, help="refinement of each supremum stops below this bracket width (default 1e-4)")
    p.add_argument("--align", default="none",
                   help="none (default) | weights: permute B's hidden units to match A by weight matching "
                        "(Ainsworth et al. 2022) first; 'barriers' then holds the values after alignment and "
                        "'barriers_before_alignment' those before")
    p.add_argument("--curve", default="line",
                   help="line (default) | bezier | polychain: also train a curve from A to B with one bend "
                        "(Garipov et al. 2018) and report its barriers beside the line's ('curve' in the JSON)")
    p.add_argument("--curve-epochs", type=int, default=None, help="epochs of training the bend (default 20; with --curve only)")
    p.add_argument("--curve-lr", type=float, default=None, help="Adam learning rate of the bend (default 0.01; with --curve only)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the curve's minibatches and t samples (default 0)")


def run(args: argparse.Namespace) -> int:
    """Run ``barrier``; returns the exit code (input errors raise :class:`InputError`)."""
    from ..errors import InputError

    if args.align not in _ALIGN_CHOICES:
        raise InputError(f"--align {args.align}: expected none or weights")
    if args.bn not in _BN_CHOICES:
        raise InputError(f"--bn {args.bn}: unknown BatchNorm policy (expected recompute, repair, interpolate or frozen)")
    if isinstance(args.alphas, bool) or args.alphas < 2:
        raise InputError(f"--alphas {args.alphas}: need at least 2 alpha points")
    if not (args.alpha_tol > 0) or args.alpha_tol != args.alpha_tol or args.alpha_tol == float("inf"):
        raise InputError(f"--alpha-tol {args.alpha_tol}: must be a finite number > 0")
    if args.curve not in ("line", "bezier", "polychain"):
        raise InputError(f"--curve {args.curve}: expected line, bezier or polychain")
    if args.curve != "line" and args.bn == "repair":
        raise InputError("--bn repair applies to the straight line only; use recompute, interpolate or frozen with --curve")
    if args.curve == "line":
        given = [flag for flag, v in (("--curve-epochs", args.curve_epochs), ("--curve-lr", args.curve_lr)) if v is not None]
        if given:
            raise InputError(f"{' and '.join(given)} set the training of a curve: add --curve bezier or --curve polychain")
    args.curve_epochs = 20 if args.curve_epochs is None else args.curve_epochs
    args.curve_lr = 0.01 if args.curve_lr is None else args.curve_lr
    if args.curve != "line" and (isinstance(args.curve_epochs, bool) or args.curve_epochs < 0):
        raise InputError(f"--curve-epochs {args.curve_epochs}: must be an integer ≥ 0")
    if args.curve != "line" and not (0 < args.curve_lr < float("inf")):
        raise InputError(f"--curve-lr {args.curve_lr}: must be a finite number > 0")
    policy = args.bn
    shared = argparse.Namespace(**vars(args))
    shared.bn = "recompute" if policy == "repair" else policy  # common's loader knows the three path policies
    timings = Timings()
    with timings.stage("load"):
        inp = load_model_inputs(shared, endpoints=("a", "b"))
    args.batch_size = shared.batch_size  # a DataLoader's own, or a streamed source's, where none was given

    from ..connectivity import barrier

    progress = Progress("barrier", args.quiet, unit="eval")
    with timings.stage("barrier"):
        result = barrier(
            inp["model"], inp["states"]["a"], inp["states"]["b"], inp["data"],
            alphas=args.alphas, align=args.align, bn=policy, alpha_tol=args.alpha_tol,
            device=inp["device"], dtype=inp["dtype"], batch_size=args.batch_size, progress=None if args.quiet else progress,
        )
    progress.close()
    curve = None
    if args.curve != "line":
        from ..connectivity import curve_connectivity

        cprog = Progress(f"{args.curve} curve", args.quiet, unit="step")
        with timings.stage("curve"):
            curve = curve_connectivity(
                inp["model"], inp["states"]["a"], inp["states"]["b"], inp["data"], curve=args.curve,
                epochs=args.curve_epochs, lr=args.curve_lr, batch_size=args.batch_size or 128, alphas=args.alphas,
                alpha_tol=args.alpha_tol, seed=args.seed, bn=policy, device=inp["device"], dtype=inp["dtype"],
                progress=None if args.quiet else cprog,
            )
        cprog.close()
        result = replace(result, warnings=result.warnings + tuple(f"curve: {w}" for w in curve.warnings))
    if args.plot:
        from ..connectivity import plot_barrier

        with timings.stage("plot"):
            result = replace(result, warnings=result.warnings + plot_warnings(plot_barrier, result, args.plot))
    if args.json:
        out = result.to_dict()
        if curve is not None:
            out["curve"] = {k: v for k, v in curve.to_dict().items() if k not in ("bend", "timings")}
        emit(envelope(out, **model_facts(inp), input_warnings=input_notes(inp), seed=args.seed if curve is not None else None, timings=timings), True)
    else:
        emit(result.to_text() + ("\n" + curve.to_text() if curve is not None else ""), False)
    return 0
