"""``mli-theory curvature``: Hessian eigenvalues, trace, density and directional curvature along the path.

A thin layer over :func:`mli_theory.curvature.curvature_along`; flags are validated (one line,
exit 2) before any model, checkpoint or data is loaded.
"""

from __future__ import annotations

import argparse
import math

from .common import Progress, add_model_args, emit, load_model_inputs, plot_warnings, positive_float, positive_int

WHICH = ("LA", "SA", "LM")
DEFAULT_ALPHAS = 5
MAX_ALPHAS = 10_000


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``curvature`` subcommand on ``sub``."""
    p = sub.add_parser(
        "curvature",
        help="Hessian of the training loss along the path: top eigenvalues, trace, density, Δθᵀ H Δθ",
        description=(
            "Curvature of the mean training loss at points θ(α) = (1−α)θ0 + αθT: the top-k Hessian eigenvalues "
            "(Lanczos, relative residual --tol), optionally the smallest one, the trace (Hutch++ with a confidence "
            "interval), the spectral density (stochastic Lanczos quadrature), and the directional curvature "
            "Δθᵀ H(α) Δθ, which equals L″(α) when BatchNorm statistics do not move with α."
        ),
    )
    add_model_args(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--alphas", type=int, default=None, metavar="K",
                       help=f"K evenly spaced α in [0, 1], ends included (default {DEFAULT_ALPHAS})")
    where.add_argument("--at", type=float, default=None, metavar="A", help="one α in [0, 1]")
    p.add_argument("--top-k", type=int, default=1, help="eigenvalues per α (default 1)")
    p.add_argument("--which", default="LA", help="LA (largest, default) | SA (smallest) | LM (largest magnitude)")
    p.add_argument("--all", action="store_true", help="also the smallest algebraic eigenvalue")
    p.add_argument("--trace", action="store_true", help="estimate the trace by Hutch++ with a 95%% interval")
    p.add_argument("--trace-rtol", type=float, default=0.01, help="relative half-width of the trace interval (default 0.01)")
    p.add_argument("--density", action="store_true", help="spectral density by stochastic Lanczos quadrature")
    p.add_argument("--tol", type=float, default=1e-3, help="relative residual ‖Hv − λv‖ ≤ tol·|λ| (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random vectors (default 0)")
    p.add_argument("--engine", default="forward_over_reverse",
                   help="Hessian-vector products: forward_over_reverse (default, torch.func) | double_backward "
                        "(cached gradient graphs: faster, more memory)")
    return p


def _validate(args: argparse.Namespace) -> list[float]:
    """The flags of this command (one-line errors naming the flag); returns the α values."""
    from ..errors import InputError

    positive_int(args.top_k, "--top-k")
    if args.which not in WHICH:
        raise InputError(f"--which {args.which}: expected one of {', '.join(WHICH)}")
    tol = positive_float(args.tol, "--tol")
    if tol >= 1:
        raise InputError(f"--tol {args.tol}: the relative residual tolerance must be below 1")
    positive_float(args.trace_rtol, "--trace-rtol")
    from ..curvature.hvp import ENGINES

    if args.engine not in ENGINES:
        raise InputError(f"--engine {args.engine}: expected one of {', '.join(ENGINES)}")
    if args.at is not None:
        if not math.isfinite(args.at) or not 0 <= args.at <= 1:
            raise InputError(f"--at {args.at}: α must be a number in [0, 1]")
        return [float(args.at)]
    k = DEFAULT_ALPHAS if args.alphas is None else args.alphas
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise InputError(f"--alphas {k}: need at least 2 α points (use --at A for one)")
    if k > MAX_ALPHAS:
        raise InputError(f"--alphas {k}: more than {MAX_ALPHAS} α points")
    return [i / (k - 1) for i in range(k)]


def run(args: argparse.Namespace) -> int:
    """Run ``mli-theory curvature``; returns the exit code (bad input raises InputError → exit 2)."""
    from dataclasses import replace

    from ..curvature import curvature_along
    from ..errors import InputError
    from ..path import make_line

    alphas = _validate(args)
    inp = load_model_inputs(args)
    model = inp["model"]
    n_params = sum(p.numel() for p in model.parameters())
    if args.top_k > n_params:
        raise InputError(f"--top-k {args.top_k}: more eigenvalues than the model's {n_params} parameters")
    line = make_line(model, inp["states"]["init"], inp["states"]["final"], device=inp["device"], dtype=inp["dtype"])
    progress = Progress("curvature", args.quiet)
    result = curvature_along(
        line,
        inp["data"],
        alphas,
        top_k=args.top_k,
        which=args.which,
        smallest=args.all,
        trace=args.trace,
        density=args.density,
        tol=args.tol,
        trace_rtol=args.trace_rtol,
        seed=args.seed,
        bn=inp["bn"],
        batch_size=args.batch_size,
        engine=args.engine,
        progress=progress,
    )
    progress.close()
    result = replace(result, info={**result.info, "arch": inp["spec"].text, "data": inp["data"].name})
    if args.plot:
        from ..curvature.figures import plot_curvature

        result = replace(result, warnings=result.warnings + plot_warnings(plot_curvature, result, args.plot))
    emit(result.to_dict() if args.json else result.to_text(), args.json)
    return 0
