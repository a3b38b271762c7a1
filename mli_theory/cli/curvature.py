"""``mli-theory curvature``: Hessian eigenvalues, trace, density and directional curvature along the path.

A thin layer over :func:`mli_theory.curvature.curvature_along`; flags are validated (one line,
exit 2) before any model, checkpoint or data is loaded.
"""

from __future__ import annotations

import argparse
import math

from .common import input_notes, seed as _seed
from .common import (
    Progress, Timings, add_model_args, emit, envelope, load_model_inputs, model_facts, plot_warnings, positive_float,
    positive_int,
)

WHICH = ("LA", "SA", "LM")
TRACE_METHODS = ("xtrace", "hutchpp")
DEFAULT_ALPHAS = 5
MAX_ALPHAS = 10_000


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``curvature`` subcommand on ``sub``."""
    p = sub.add_parser(
        "curvature",
        help="Hessian of the training loss along the path: top eigenvalues, trace, density, Δθᵀ H Δθ",
        description=(
            "Curvature of the mean training loss at points θ(α) = (1−α)θ0 + αθT: the top-k Hessian eigenvalues "
            "(Lanczos, relative residual --tol), optionally the smallest one, the trace (XTrace or Hutch++ with a "
            "confidence interval), the spectral density (stochastic Lanczos quadrature), and the directional curvature "
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
    p.add_argument("--trace", action="store_true", help="estimate the trace with a 95%% interval (method: --trace-method)")
    p.add_argument("--trace-method", default="xtrace", metavar="M",
                   help="estimator of --trace: xtrace (default: XTrace with a sign-flipped copy of each test vector "
                        "by alternating layers, which cancels the Hessian blocks between adjacent layers; fewest "
                        "products for a given accuracy on network Hessians) | hutchpp (Hutch++); the method used is "
                        "in the JSON as trace_details[].method")
    p.add_argument("--trace-rtol", type=float, default=0.01, help="relative half-width of the trace interval (default 0.01)")
    p.add_argument("--density", action="store_true", help="spectral density by stochastic Lanczos quadrature")
    p.add_argument("--tol", type=float, default=1e-3,
                   help="relative residual ‖Hv − λv‖ ≤ tol·|λ| of the eigenvalues (default 1e-3; JSON 'eigen_tol')")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random vectors (default 0)")
    p.add_argument("--matrix", default="hessian",
                   help="the matrix of --per-layer, --diagonal and, when not hessian, of extra top-k eigenvalues "
                        "(matrix_eigenvalues): hessian (default) | ggn | fisher_mc | empirical_fisher | kfac")
    p.add_argument("--per-layer", action="store_true", help="top-k eigenvalues of each parameter tensor's block of --matrix")
    p.add_argument("--diagonal", action="store_true",
                   help="the diagonal of --matrix (exact up to 2048 parameters, else Hutchinson with standard errors)")
    p.add_argument("--split", action="store_true",
                   help="L″ = Δθᵀ G Δθ + Σ⟨∇ℓ, z″⟩: the Gauss–Newton and output-curvature terms of the loss's second derivative")
    p.add_argument("--engine", default="auto",
                   help="Hessian-vector products: auto (default: double_backward on a CPU when the cached graphs fit "
                        "the memory budget, else forward_over_reverse) | forward_over_reverse (torch.func) | "
                        "double_backward (cached gradient graphs: faster, more memory)")
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
    if args.trace_method not in TRACE_METHODS:
        raise InputError(f"--trace-method {args.trace_method}: expected one of {', '.join(TRACE_METHODS)}")
    from ..curvature.hvp import ENGINES

    if args.engine not in ENGINES:
        raise InputError(f"--engine {args.engine}: expected one of {', '.join(ENGINES)}")
    from ..curvature import MATRICES

    if args.matrix not in MATRICES:
        raise InputError(f"--matrix {args.matrix}: expected one of {', '.join(MATRICES)}")
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
    timings = Timings()
    with timings.stage("load"):
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
        trace=args.trace and args.trace_method == "hutchpp",
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
    if args.trace and args.trace_method == "xtrace":
        result = _xtrace_traces(result, args, line, inp, alphas)
    extra: dict = {}
    if args.matrix != "hessian" or args.per_layer or args.diagonal or args.split:
        with timings.stage("matrices"):
            extra = _matrices(args, line, inp, alphas)
    if args.plot:
        from ..curvature.figures import plot_curvature

        with timings.stage("plot"):
            result = replace(result, warnings=result.warnings + plot_warnings(plot_curvature, result, args.plot))
    if args.json:
        emit(envelope({**result.to_dict(), **extra}, **model_facts(inp), input_warnings=input_notes(inp), seed=args.seed, timings=timings, stage="curvature"), True)
    else:
        emit("\n".join([result.to_text(), *_matrices_text(extra)]), False)
    return 0


def _xtrace_traces(result, args: argparse.Namespace, line, inp: dict, alphas: list[float]):
    """``result`` with the trace at each α estimated by XTrace (:func:`~mli_theory.curvature.xtrace_trace`,
    sign-flipped copies by layer), same seeds, interval level, product budget and exact small case as
    :func:`~mli_theory.curvature.curvature_along` uses for Hutch++."""
    import time
    from dataclasses import replace

    from ..curvature import hutchpp_trace, loss_hessian, xtrace_trace
    from ..path import data_on_line

    t0 = time.perf_counter()
    data = data_on_line(line, inp["data"], inp["bn"], args.batch_size)
    points, warnings, products = [], list(result.warnings), 0
    progress = Progress("trace", args.quiet)
    for i, (a, point) in enumerate(zip(alphas, result.points)):
        t = time.perf_counter()
        op = loss_hessian(line, data, a, bn=inp["bn"], batch_size=args.batch_size, engine=args.engine)
        if op.size <= 128:  # as curvature_along: small Hessians exactly (n products)
            tr = hutchpp_trace(op, sketch_rank=op.size)
        else:
            tr = xtrace_trace(op, rtol=args.trace_rtol, confidence=0.95, max_matvecs=2000, seed=args.seed * 1_000_003 + i)
        products += tr.n_matvecs
        if not tr.converged:
            rel = tr.half_width / abs(tr.value) if tr.value else math.inf
            warnings.append(f"alpha={a:.6g}: the trace reached relative half-width {rel:.3g}, "
                            f"not {args.trace_rtol:g}, within 2000 products")
        points.append(replace(point, trace=tr, seconds=point.seconds + time.perf_counter() - t))
        progress(i + 1, len(alphas))
    progress.close()
    info = dict(result.info)
    info["hessian_vector_products"] = info.get("hessian_vector_products", 0) + products
    info["seconds"] = round(info.get("seconds", 0.0) + time.perf_counter() - t0, 4)
    info["trace_method"] = "xtrace"
    return replace(result, points=tuple(points), warnings=tuple(warnings), info=info)


def _matrices(args: argparse.Namespace, line, inp: dict, alphas: list[float]) -> dict:
    """The GGN/Fisher/K-FAC eigenvalues, per-layer spectra, diagonals and the split of L″ at each α."""
    from ..curvature import (curvature_operator, extreme_eigenpairs, ggn_diagonal, hessian_diagonal, layer_spectra,
                             operator_diagonal, second_derivative_splits)

    data, bn, out = inp["data"], inp["bn"], {}
    each = dict(bn=bn, batch_size=args.batch_size)
    progress = Progress(f"{args.matrix} curvature", args.quiet)
    total, done = len(alphas) * (int(args.matrix != "hessian") + int(args.per_layer) + int(args.diagonal)), 0
    if args.matrix != "hessian":
        eig = []
        for a in alphas:
            op = curvature_operator(line, data, a, args.matrix, seed=args.seed, **each)
            e = extreme_eigenpairs(op, args.top_k, args.which, tol=args.tol, seed=args.seed)
            eig.append({"eigenvalues": list(e.eigenvalues), "residuals": list(e.residuals), "converged": e.converged})
            done += 1
            progress(done, total)
        out["matrix_eigenvalues"] = {"matrix": args.matrix, "points": eig}
    if args.per_layer:
        layers = []
        for a in alphas:
            layers.append(layer_spectra(line, data, a, top_k=args.top_k, which=args.which, matrix=args.matrix,
                                        tol=args.tol, seed=args.seed, engine=args.engine, **each).to_dict())
            done += 1
            progress(done, total)
        out["per_layer"] = layers
    if args.diagonal:
        diags = []
        for a in alphas:
            if args.matrix == "hessian":
                d = hessian_diagonal(line, data, a, seed=args.seed, engine=args.engine, **each)
            elif args.matrix == "ggn":
                d = ggn_diagonal(line, data, a, **each)
            else:
                d = operator_diagonal(curvature_operator(line, data, a, args.matrix, seed=args.seed, **each),
                                      seed=args.seed, matrix=args.matrix)
            diags.append({k: v for k, v in d.to_dict().items() if k not in ("values", "standard_error")})
            done += 1
            progress(done, total)
        out["diagonal"] = diags
    progress.close()
    if args.split:
        out["split"] = [s.to_dict() for s in second_derivative_splits(line, data, alphas, **each)]
    return out


def _matrices_text(extra: dict) -> list[str]:
    lines = []
    if "matrix_eigenvalues" in extra:
        m = extra["matrix_eigenvalues"]
        lines.append(f"top eigenvalues of the {m['matrix']}: " + "; ".join(
            ", ".join(f"{v:.6g}" for v in p["eigenvalues"]) for p in m["points"]))
    for spectra in extra.get("per_layer", []):
        lines.append(f"per layer at α={spectra['alpha']:.4g} ({spectra['matrix']}): " + "; ".join(
            f"{b['name']} {', '.join(f'{v:.4g}' for v in b['eigenvalues'])}" for b in spectra["blocks"]))
    for d in extra.get("diagonal", []):
        lines.append(f"diagonal of the {d['matrix']} at α={d['alpha']:.4g}: trace {d['trace']:.6g} ({d['method']})")
    for s in extra.get("split", []):
        lines.append(f"L″({s['alpha']:.4g}) = {s['second_derivative']:.6g} = Gauss–Newton {s['gauss_newton']:.6g} "
                     f"+ output curvature {s['residual']:.6g}")
    return lines
