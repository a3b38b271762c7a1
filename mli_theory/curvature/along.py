"""Curvature along the path: extreme eigenvalues, trace, density and directional curvature of H(α).

At each α of a grid (or one α), with H(α) = ∇²_θ L(θ(α)) the Hessian of the mean training loss
with respect to the trainable parameters (:mod:`mli_theory.curvature.hvp`):

* top-k eigenvalues at the end ``which`` and their residuals (:mod:`.spectrum`), optionally the
  smallest algebraic eigenvalue λ_min(α) (negative curvature);
* tr H(α) by Hutch++ with a confidence interval (:mod:`.trace`), optionally;
* the spectral density by stochastic Lanczos quadrature (:mod:`.density`), optionally;
* the directional curvature κ(α) = Δθᵀ H(α) Δθ with Δθ = θT − θ0 over the trainable parameters.
  Since θ(α) = θ0 + αΔθ, the chain rule gives d²/dα² L(θ(α)) = Δθᵀ H(α) Δθ whenever the buffers
  (BatchNorm statistics) do not depend on α: it is L″(α) exactly for models without BatchNorm and
  for ``bn="frozen"``. With ``interpolate`` or ``recompute`` the statistics are held fixed at
  their value at α while differentiating (as the geometry module does), so κ(α) is the curvature
  of the loss with those statistics, not the second derivative of the ``check`` loss curve, in
  which the statistics move with α.

Directional curvature and the Hessian's extreme eigenvalues are related by
λ_min ≤ κ/‖Δθ‖² ≤ λ_max (Rayleigh quotient).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from ..errors import InputError
from ..inputs.data import Dataset
from ..path import BNPolicy, Line, data_on_line
from ..results import json_safe
from .density import SpectralDensity, spectral_density
from .hvp import ENGINES, MatrixOperator, loss_hessian, path_direction
from .spectrum import Eigenpairs, extreme_eigenpairs, validate_eigen_options
from .trace import TraceEstimate, hutchpp_trace

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CurvatureAt:
    """Curvature of the mean training loss at one point θ(α).

    Attributes:
        alpha: α.
        spectrum: the top-k eigenpairs at the requested end (values, residuals, convergence).
        smallest: the smallest algebraic eigenvalue's pair (k = 1), when asked; else None.
        trace: the Hutch++ estimate of tr H(α), when asked; else None.
        density: the SLQ spectral density, when asked; else None.
        directional_curvature: Δθᵀ H(α) Δθ (= L″(α) with fixed statistics, see the module doc).
        loss: the mean training loss at θ(α) with the same BatchNorm statistics.
        seconds: wall time spent at this α.
    """

    alpha: float
    spectrum: Eigenpairs
    smallest: Eigenpairs | None
    trace: TraceEstimate | None
    density: SpectralDensity | None
    directional_curvature: float
    loss: float
    seconds: float


@dataclass(frozen=True)
class PathCurvature:
    """Curvature of the loss Hessian at a grid of α (what ``mli-theory curvature`` reports).

    Attributes:
        alphas: the α values.
        points: one :class:`CurvatureAt` per α.
        which: ``LA``, ``SA`` or ``LM`` (end of the spectrum of ``eigenvalues``).
        top_k: k.
        tol: relative residual bound of the eigenvalues.
        n_parameters: trainable parameters (the Hessian is n_parameters²).
        bn: BatchNorm policy used (None for models without BatchNorm).
        warnings: unconverged eigenvalues or traces, failed optional work; one sentence each.
        info: run facts (device, dtype, products, timings).
    """

    alphas: tuple[float, ...]
    points: tuple[CurvatureAt, ...]
    which: str
    top_k: int
    tol: float
    n_parameters: int
    bn: str | None
    warnings: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def eigenvalues(self) -> list[list[float]]:
        return [list(p.spectrum.eigenvalues) for p in self.points]

    @property
    def directional_curvature(self) -> list[float]:
        return [p.directional_curvature for p in self.points]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the CLI contract (GUIDE §3), non-finite floats as None.

        ``eigen_tol`` is the relative residual bound of the eigenvalues (``tolerance`` in ``check``
        is a rise tolerance, a different thing). ``density[i].trace`` is the SLQ quadrature's
        Hutchinson estimate n·mean_v qᵀHq from the density's few start vectors (4 by default): it is
        reported with ``trace_stderr``, its standard error over those vectors (null for one
        vector), and can be tens of percent off; the accurate trace is the top-level ``trace``
        (Hutch++ with the confidence interval ``trace_ci``, with ``--trace``).
        """
        pts = self.points
        want_small = any(p.smallest is not None for p in pts) or self.which == "SA"
        want_trace = any(p.trace is not None for p in pts)
        want_density = any(p.density is not None for p in pts)

        def smallest(p: CurvatureAt) -> float | None:
            if p.smallest is not None:
                return p.smallest.eigenvalues[0] if p.smallest.eigenvalues else None
            return p.spectrum.eigenvalues[0] if self.which == "SA" and p.spectrum.eigenvalues else None

        out: dict[str, Any] = {
            "alphas": list(self.alphas),
            "eigenvalues": [list(p.spectrum.eigenvalues) for p in pts],
            "residuals": [list(p.spectrum.residuals) for p in pts],
            "converged": [p.spectrum.converged for p in pts],
            "which": self.which,
            "top_k": self.top_k,
            "eigen_tol": self.tol,
            "smallest_eigenvalue": [smallest(p) for p in pts] if want_small else None,
            "smallest_residual": (
                [(p.smallest.residuals[0] if p.smallest and p.smallest.residuals else None) for p in pts]
                if any(p.smallest is not None for p in pts) else None
            ),
            "directional_curvature": [p.directional_curvature for p in pts],
            "losses": [p.loss for p in pts],
            "n_parameters": self.n_parameters,
            "bn": self.bn,
        }
        if want_trace:
            out["trace"] = [p.trace.value if p.trace else None for p in pts]
            out["trace_ci"] = [list(p.trace.ci) if p.trace else None for p in pts]
            out["trace_details"] = [
                {k: v for k, v in asdict(p.trace).items() if k not in ("value", "ci")} if p.trace else None for p in pts
            ]
        else:
            out["trace"] = None
            out["trace_ci"] = None
        if want_density:
            out["density"] = [
                {"grid": list(p.density.grid), "values": list(p.density.values), "sigma": p.density.sigma,
                 "trace": p.density.trace, "trace_stderr": p.density.trace_stderr,
                 "n_vectors": p.density.n_vectors, "steps": p.density.steps}
                if p.density else None for p in pts
            ]
        out["warnings"] = list(self.warnings)
        out["info"] = dict(self.info)
        return json_safe(out)

    def to_text(self) -> str:
        """A human-readable table (what the CLI prints without ``--json``)."""
        end = {"LA": "largest", "SA": "smallest", "LM": "largest-magnitude"}[self.which]
        lines = [
            f"Hessian of the mean training loss along θ(α) = (1−α)θ0 + αθT ({self.n_parameters} parameters"
            f"{', BatchNorm ' + self.bn if self.bn else ''})",
            f"  {end} {self.top_k} eigenvalue(s), relative residual tol {self.tol:g}",
        ]
        head = f"  {'alpha':>8}  {'eigenvalues':<36} {'max rel. residual':>17}  {'dθᵀHdθ':>12}"
        if any(p.smallest for p in self.points):
            head += f"  {'λ_min':>12}"
        if any(p.trace for p in self.points):
            head += f"  {'trace [CI]':>34}"
        lines.append(head)
        for p in self.points:
            ev = ", ".join(f"{v:.6g}" for v in p.spectrum.eigenvalues)
            rel = max((r / abs(v) if v else math.inf) for v, r in zip(p.spectrum.eigenvalues, p.spectrum.residuals)) if p.spectrum.eigenvalues else math.nan
            row = f"  {p.alpha:>8.4g}  {ev:<36} {rel:>17.2e}  {p.directional_curvature:>12.6g}"
            if any(q.smallest for q in self.points):
                row += f"  {(p.smallest.eigenvalues[0] if p.smallest and p.smallest.eigenvalues else math.nan):>12.6g}"
            if p.trace:
                row += f"  {p.trace.value:>12.6g} [{p.trace.ci[0]:.5g}, {p.trace.ci[1]:.5g}]"
            lines.append(row)
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def validate_curvature_options(
    *,
    alphas: Sequence[float],
    top_k: int,
    which: str,
    tol: float,
    bn: BNPolicy | str,
    batch_size: int | None,
    trace_rtol: float,
) -> BNPolicy:
    """Check the options of :func:`curvature_along` before any work; return the BatchNorm policy.

    Raises:
        InputError: naming the parameter.
    """
    if len(alphas) == 0:
        raise InputError("alphas=[]: need at least one α")
    for a in alphas:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or not 0 <= a <= 1:
            raise InputError(f"alphas: {a!r} is not a number in [0, 1]")
    validate_eigen_options(top_k, which, tol)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0):
        raise InputError(f"batch_size={batch_size!r}: must be a positive integer")
    if not (isinstance(trace_rtol, (int, float)) and math.isfinite(trace_rtol) and trace_rtol > 0):
        raise InputError(f"trace_rtol={trace_rtol!r}: must be a finite number > 0")
    try:
        return BNPolicy(bn)
    except ValueError:
        raise InputError(f"bn={bn!r}: unknown BatchNorm policy (expected recompute, interpolate or frozen)") from None


def directional_curvature(
    line: Line,
    data: Dataset,
    alpha: float,
    *,
    bn: BNPolicy | str = BNPolicy.FROZEN,
    batch_size: int | None = None,
) -> float:
    """Δθᵀ H(α) Δθ, one Hessian-vector product (= L″(α) when the buffers do not move with α)."""
    op = loss_hessian(line, data, alpha, bn=bn, batch_size=batch_size)
    d = path_direction(line)
    return float((op.matvec(d).double() * d.double()).sum())


def curvature_along(
    line: Line,
    data: Dataset,
    alphas: Sequence[float],
    *,
    top_k: int = 1,
    which: str = "LA",
    smallest: bool = False,
    trace: bool = False,
    density: bool = False,
    tol: float = 1e-3,
    trace_rtol: float = 0.01,
    confidence: float = 0.95,
    seed: int = 0,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    max_matvecs: int = 2000,
    density_vectors: int = 4,
    density_steps: int = 40,
    dense_below: int = 128,
    engine: str = "auto",
    progress: Progress | None = None,
) -> PathCurvature:
    """Curvature of the mean training loss at each α (see the module doc for the definitions).

    Args:
        line: the path (:func:`mli_theory.path.make_line`); not modified.
        data: training data (cast here to the line's device and dtype).
        alphas: where to evaluate, each in [0, 1].
        top_k: eigenvalues per α at the end ``which``.
        which: ``LA`` (largest algebraic), ``SA`` (smallest algebraic) or ``LM`` (largest magnitude).
        smallest: also the smallest algebraic eigenvalue (free when ``which="SA"``).
        trace: estimate tr H(α) by Hutch++ to relative half-width ``trace_rtol`` at level ``confidence``.
        density: the SLQ spectral density (``density_vectors`` start vectors, ``density_steps`` steps).
        tol: relative residual bound of every reported eigenpair.
        seed: seed of every random vector (α index mixed in).
        bn: BatchNorm policy (statistics held fixed while differentiating, see :mod:`.hvp`).
        batch_size: examples per pass (None: all). Products do not depend on it; with
            ``bn="recompute"`` the re-estimated statistics do (cumulative average over batches, as
            in the reference implementation and in ``check``).
        max_matvecs: budget of products per trace estimate.
        dense_below: Hessians with at most this many parameters are solved densely.
        engine: ``auto`` (default: ``double_backward`` on a CPU when the cached graphs fit the
            memory budget, else ``forward_over_reverse``), ``forward_over_reverse`` (memory of one
            batch) or ``double_backward`` (every batch's gradient graph cached per α: faster
            products, more memory); see :mod:`~mli_theory.curvature.hvp`. ``info["engine"]`` is
            the engine used (``info["engine_requested"]`` the argument; with ``auto`` and
            different choices at different α, a comma-separated list in α order).
        progress: called with (done, total) after each α.
    """
    alist = [float(a) for a in alphas] if not isinstance(alphas, (int, float)) else [float(alphas)]
    bn = validate_curvature_options(alphas=alist, top_k=top_k, which=which, tol=tol, bn=bn, batch_size=batch_size, trace_rtol=trace_rtol)
    if engine not in ENGINES:
        raise InputError(f"engine={engine!r}: expected one of {', '.join(ENGINES)}")
    n_params = sum(line.start[k].numel() for k in line.param_names)
    validate_eigen_options(top_k, which, tol, n_params)
    data = data_on_line(line, data, bn, batch_size)
    d = path_direction(line)
    warnings: list[str] = []
    points: list[CurvatureAt] = []
    t_all = time.perf_counter()
    products = 0
    used_engines: list[str] = []
    for i, a in enumerate(alist):
        t0 = time.perf_counter()
        op = loss_hessian(line, data, a, bn=bn, batch_size=batch_size, engine=engine)
        used_engines.append(op.engine)
        if op.size <= dense_below:  # small: form H once (n products), then every request is exact and cheap
            work: Any = MatrixOperator(op.dense())
            products += op.size
        else:
            work = op
        hvps = (lambda m: m) if work is op else (lambda m: 0)  # count products with H, not with a formed matrix
        s = seed * 1_000_003 + i
        spec = extreme_eigenpairs(work, top_k, which, tol=tol, seed=s, dense_below=dense_below)  # type: ignore[arg-type]
        products += hvps(spec.n_matvecs)
        if not spec.converged:
            warnings.append(f"alpha={a:.6g}: the {which} eigenvalues did not reach relative residual {tol:g}")
        small = None
        if smallest and which != "SA":
            small = extreme_eigenpairs(work, 1, "SA", tol=tol, seed=s, dense_below=dense_below)
            products += hvps(small.n_matvecs)
            if not small.converged:
                warnings.append(f"alpha={a:.6g}: the smallest eigenvalue did not reach relative residual {tol:g}")
        tr = None
        if trace:
            tr = hutchpp_trace(
                work, rtol=trace_rtol, confidence=confidence, max_matvecs=max_matvecs, seed=s,
                sketch_rank=op.size if op.size <= dense_below else None,  # small: exact
            )
            products += hvps(tr.n_matvecs)
            if not tr.converged:
                warnings.append(
                    f"alpha={a:.6g}: the trace reached relative half-width {tr.half_width / abs(tr.value) if tr.value else math.inf:.3g}, "
                    f"not {trace_rtol:g}, within {max_matvecs} products"
                )
        dens = None
        if density:
            dens = spectral_density(work, n_vectors=density_vectors, steps=density_steps, seed=s)
            products += hvps(dens.n_matvecs)
        kappa = float((op.matvec(d).double() * d.double()).sum())
        products += 1
        points.append(CurvatureAt(a, spec, small, tr, dens, kappa, op.loss(), time.perf_counter() - t0))
        if progress is not None:
            progress(i + 1, len(alist))
    info = {
        "device": str(line.device),
        "dtype": str(line.dtype).replace("torch.", ""),
        "n_examples": data.n,
        "batch_size": batch_size,
        "hessian_vector_products": products,
        "seconds": round(time.perf_counter() - t_all, 4),
        "seed": seed,
        "engine": ",".join(dict.fromkeys(used_engines)) or engine,
        "engine_requested": engine,
    }
    if line.has_bn and bn != BNPolicy.FROZEN:
        info["directional_curvature_note"] = (
            f"BatchNorm statistics ({bn.value}) are held fixed at each α while differentiating, so "
            "directional_curvature is not the second derivative of the check loss curve"
        )
    return PathCurvature(
        tuple(alist), tuple(points), which, top_k, float(tol), n_params, bn.value if line.has_bn else None,
        tuple(warnings), info,
    )
