"""Loss barriers on the straight line between any two checkpoints A and B of one architecture.

Along θ(α) = (1−α)·θ_A + α·θ_B, α ∈ [0, 1], with L(α) the mean training loss and E(α) the
classification error (1 − accuracy, ``ce`` only), the literature uses several "barriers". Each is
reported under its own name, as ``{value, alpha}`` with ``alpha`` where the value is attained:

``loss_chord``
    sup_α [ L(α) − ((1−α)·L(0) + α·L(1)) ], the largest height of the loss above the chord joining
    its endpoint values (Entezari, Sedghi, Saukh & Neyshabur 2022, "The role of permutation
    invariance in linear mode connectivity of neural networks", ICLR 2022). It is ≥ 0 (α = 0 and 1
    give 0) and it is 0 for every convex loss.
``loss_mean``
    sup_α L(α) − ½·(L(0) + L(1)), the highest loss on the path above the mean of the endpoint
    losses (the quantity plotted by Ainsworth, Hayase & Srinivasa 2022, "Git Re-Basin"). It is
    ≥ ½·|L(0) − L(1)|.
``error_mean``
    sup_α E(α) − ½·(E(0) + E(1)), the same for the error (Frankle, Dziugaite, Roy & Carbin 2020,
    "Linear mode connectivity and the lottery ticket hypothesis", instability = error barrier).
    Only for cross-entropy data; ``None`` for ``mse``.
``signed_taxonomy``
    The signed mode-connectivity score of Yang, Hodgkinson, Theisen, Zou, Gonzalez, Ramchandran
    & Mahoney 2021, "Taxonomizing local versus global structure in neural network loss
    landscapes" (NeurIPS 2021): mc = ½·(L(0) + L(1)) − L(α*), with
    α* = argmax_α |½·(L(0) + L(1)) − L(α)|. Negative: a barrier (the path rises above the
    endpoints' mean); positive: the path dips below it (the endpoints are not minima along the
    path). Yang et al. evaluate it on a trained Bézier curve between the two modes; here it is
    evaluated on the straight line, like every other definition in this module.

How the supremum is found: L (and E) are evaluated on an even grid of ``alphas`` points, both
ends included. Around the grid maximiser α_i of each objective the bracket [α_{i−1}, α_{i+1}] is
refined: by golden-section search for the loss objectives (and for the minimum of L that the
signed score needs) until the bracket is narrower than ``alpha_tol``; for the piecewise constant
error by nested finer local grids (9 interior points per level, at most 3 levels, each level
shrinking the bracket five-fold, stopping early below ``alpha_tol``). Every value reported is the
objective at an α where the loss was actually evaluated (the best over the grid and all
refinement points), so it is a lower bound on the true supremum that is at least the grid
maximum; it equals the supremum to within the refinement tolerance when the objective is
unimodal on the bracket around the grid maximiser. No value is interpolated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import InputError
from ..inputs.checkpoint import StateDict
from ..inputs.data import Dataset
from ..inputs.devices import resolve_device, resolve_dtype
from ..path import BNPolicy, Line, Progress, alpha_grid, evaluate, interpolate, make_line, probe, recompute_bn_statistics
from ..path.batchnorm import check_recompute_batch_size
from ..results import json_safe

__all__ = [
    "BARRIER_DEFINITIONS",
    "BarrierBN",
    "BarrierResult",
    "BarrierValue",
    "barrier",
    "barrier_on_line",
    "barriers_from_samples",
]

#: the most grid points a barrier evaluates (each is a pass over the whole data set)
MAX_ALPHAS = 100_000

#: name → formula and source, for ``--help``, the README and the JSON consumer
BARRIER_DEFINITIONS: dict[str, str] = {
    "loss_chord": "sup_a [L(a) - ((1-a) L(0) + a L(1))]  (Entezari et al. 2022)",
    "loss_mean": "sup_a L(a) - (L(0) + L(1))/2  (Ainsworth et al. 2022, git re-basin plots)",
    "error_mean": "sup_a E(a) - (E(0) + E(1))/2, E = 1 - accuracy  (Frankle et al. 2020; ce only, null for mse)",
    "signed_taxonomy": "(L(0) + L(1))/2 - L(a*), a* = argmax_a |(L(0) + L(1))/2 - L(a)|  (Yang et al. 2021; < 0: barrier)",
}


class BarrierBN(str, Enum):
    """BatchNorm statistics at each α of a barrier path.

    * ``recompute``: re-estimate them over the data at every α (:class:`~mli_theory.path.BNPolicy`).
    * ``repair``: REPAIR (Jordan et al. 2022), see :mod:`mli_theory.connectivity.repair`.
    * ``interpolate``: interpolate them like the parameters.
    * ``frozen``: hold them at checkpoint B's values.
    """

    RECOMPUTE = "recompute"
    REPAIR = "repair"
    INTERPOLATE = "interpolate"
    FROZEN = "frozen"


@dataclass(frozen=True)
class BarrierValue:
    """One named barrier.

    Attributes:
        value: the definition's value (None where it does not apply, e.g. ``error_mean`` for mse).
        alpha: the α at which ``value`` is attained (where the loss was evaluated), or None.
    """

    value: float | None
    alpha: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"value": self.value, "alpha": self.alpha}


@dataclass(frozen=True)
class BarrierResult:
    """Loss (and error) along θ(α) between checkpoints A and B, and the named barriers.

    Attributes:
        alphas: the even grid of α (both ends included).
        losses: mean training loss at each grid α.
        errors: classification error 1 − accuracy at each grid α (``ce``), else None.
        barriers: name → :class:`BarrierValue` for every name in :data:`BARRIER_DEFINITIONS`.
        samples: every (α, loss, error) evaluated, grid and refinement, sorted by α (error None
            for mse); the barriers are read from these.
        alpha_tol: width below which a refinement bracket stops.
        bn: the BatchNorm policy used (None for models without BatchNorm).
        loss: ``mse`` or ``ce``.
        align: ``none`` or ``weights``.
        before_alignment: with ``align="weights"``, the same result for the unaligned pair.
        alignment: with ``align="weights"``, facts about the matching (iterations, groups, …).
        warnings: optional work that failed or facts worth a note.
    """

    alphas: tuple[float, ...]
    losses: tuple[float, ...]
    errors: tuple[float, ...] | None
    barriers: Mapping[str, BarrierValue]
    samples: tuple[tuple[float, float, float | None], ...]
    alpha_tol: float
    bn: str | None
    loss: str
    align: str = "none"
    before_alignment: "BarrierResult | None" = None
    alignment: Mapping[str, Any] | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``mli-theory barrier --json`` (GUIDE §3)."""
        out: dict[str, Any] = {
            "alphas": list(self.alphas),
            "losses": list(self.losses),
            "errors": list(self.errors) if self.errors is not None else None,
            "barriers": {k: v.to_dict() for k, v in self.barriers.items()},
        }
        if self.before_alignment is not None:
            b = self.before_alignment
            out["barriers_before_alignment"] = {k: v.to_dict() for k, v in b.barriers.items()}
            out["losses_before_alignment"] = list(b.losses)
            out["errors_before_alignment"] = list(b.errors) if b.errors is not None else None
        out.update(
            loss=self.loss, bn=self.bn, align=self.align, alpha_tol=self.alpha_tol,
            evaluations=len(self.samples), definitions=dict(BARRIER_DEFINITIONS),
        )
        if self.alignment is not None:
            out["alignment"] = dict(self.alignment)
        out["warnings"] = list(self.warnings)
        return json_safe(out)

    def to_text(self) -> str:
        """A short human-readable report."""
        lines = [f"barriers along the line A → B ({len(self.alphas)} grid points, {len(self.samples)} evaluations, "
                 f"bn={self.bn}, align={self.align}):"]

        def block(res: "BarrierResult", label: str) -> None:
            lines.append(label)
            for name, v in res.barriers.items():
                if v.value is None:
                    lines.append(f"  {name:16s} n/a")
                else:
                    lines.append(f"  {name:16s} {v.value: .6g}  at alpha={v.alpha:.6g}")

        if self.before_alignment is not None:
            block(self.before_alignment, "before alignment:")
            block(self, "after weight matching:")
        else:
            block(self, "")
        lines.append(f"  L(0)={self.losses[0]:.6g}  L(1)={self.losses[-1]:.6g}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(x for x in lines if x)


# --------------------------------------------------------------------------- suprema from samples


def barriers_from_samples(samples: Mapping[float, tuple[float, float | None]]) -> dict[str, BarrierValue]:
    """The named barriers from evaluated points {α: (L(α), E(α) or None)}; α = 0 and 1 required.

    Every value is read at one evaluated α (ties: the smallest α). This is the whole definition of
    the numbers reported; the refinement only decides where to evaluate.

    >>> s = {0.0: (1.0, None), 0.5: (3.0, None), 1.0: (2.0, None)}
    >>> {k: (v.value, v.alpha) for k, v in barriers_from_samples(s).items()}
    {'loss_chord': (1.5, 0.5), 'loss_mean': (1.5, 0.5), 'error_mean': (None, None), 'signed_taxonomy': (-1.5, 0.5)}
    """
    if 0.0 not in samples or 1.0 not in samples:
        raise InputError("samples must include alpha=0 and alpha=1")
    alphas = sorted(samples)
    l0, l1 = samples[0.0][0], samples[1.0][0]
    mean = 0.5 * (l0 + l1)

    def best(h: Callable[[float], float]) -> tuple[float, float]:
        a_best, v_best = alphas[0], h(alphas[0])
        for a in alphas[1:]:
            v = h(a)
            if v > v_best:
                a_best, v_best = a, v
        return v_best, a_best

    out: dict[str, BarrierValue] = {}
    v, a = best(lambda a: samples[a][0] - ((1.0 - a) * l0 + a * l1))
    out["loss_chord"] = BarrierValue(v, a)
    v, a = best(lambda a: samples[a][0] - mean)
    out["loss_mean"] = BarrierValue(v, a)
    e0, e1 = samples[0.0][1], samples[1.0][1]
    if e0 is None or e1 is None:
        out["error_mean"] = BarrierValue(None, None)
    else:
        emean = 0.5 * (e0 + e1)
        v, a = best(lambda a: samples[a][1] - emean)  # type: ignore[operator]
        out["error_mean"] = BarrierValue(v, a)
    _, a = best(lambda a: abs(mean - samples[a][0]))
    out["signed_taxonomy"] = BarrierValue(mean - samples[a][0], a)
    return out


# --------------------------------------------------------------------------- refinement

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 1/φ ≈ 0.618


def _golden_max(f: Callable[[float], float], lo: float, hi: float, tol: float) -> None:
    """Golden-section search for a maximiser of ``f`` on [lo, hi] until the bracket is < ``tol``.

    Only its evaluations matter (the caller caches them); the result is read from the cache.
    """
    a, b = lo, hi
    c = b - _INV_PHI * (b - a)
    d = a + _INV_PHI * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - _INV_PHI * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _INV_PHI * (b - a)
            fd = f(d)


def _grid_max(f: Callable[[float], float], lo: float, hi: float, tol: float, points: int = 9, max_levels: int = 3) -> None:
    """Nested local grids (``points`` interior points per level) around the best point so far."""
    for _ in range(max_levels):
        if hi - lo <= tol:
            return
        xs = [lo + (hi - lo) * (i + 1) / (points + 1) for i in range(points)]
        vals = [f(x) for x in xs]
        i = max(range(points), key=lambda j: (vals[j], -j))
        h = (hi - lo) / (points + 1)
        lo, hi = max(lo, xs[i] - h), min(hi, xs[i] + h)


def _bracket(alphas: list[float], values: list[float]) -> tuple[float, float]:
    i = max(range(len(values)), key=lambda j: (values[j], -j))
    return alphas[max(i - 1, 0)], alphas[min(i + 1, len(alphas) - 1)]


# --------------------------------------------------------------------------- evaluation


class _PathEvaluator:
    """L(α), E(α) on one line under one BatchNorm policy, each α evaluated once (cached)."""

    def __init__(self, line: Line, data: Dataset, bn: BarrierBN, batch_size: int | None, progress: Progress | None) -> None:
        self.line, self.data, self.bn, self.batch_size = line, data, bn, batch_size
        self.cache: dict[float, tuple[float, float | None]] = {}
        self.progress = progress
        self.total = 1  # expected evaluations, for progress only (set by the caller)
        self.frozen = line._frozen_names(BNPolicy.FROZEN) if (line.has_bn and bn == BarrierBN.FROZEN) else frozenset()
        self._repair = None
        if line.has_bn and bn == BarrierBN.RECOMPUTE:
            check_recompute_batch_size(batch_size)
        if bn == BarrierBN.REPAIR:
            from .repair import prepare_repair

            self._repair = prepare_repair(line, data, batch_size=batch_size)

    def state(self, alpha: float) -> StateDict:
        if self._repair is not None:
            from .repair import repaired_state

            return repaired_state(self._repair, alpha)
        state = interpolate(self.line.start, self.line.end, alpha, self.frozen)
        if self.line.has_bn and self.bn == BarrierBN.RECOMPUTE:
            state = recompute_bn_statistics(self.line, state, self.data.x, self.batch_size)
        return state

    def __call__(self, alpha: float) -> tuple[float, float | None]:
        alpha = float(alpha)
        if alpha not in self.cache:
            loss, acc = evaluate(self.line, self.state(alpha), self.data, self.batch_size)
            if not math.isfinite(loss):
                hint = " (evaluate in float64 with dtype=torch.float64)" if self.line.dtype != torch.float64 else ""
                raise InputError(f"the loss is not finite along the path (first at alpha={alpha:.6g}){hint}")
            self.cache[alpha] = (loss, None if acc is None else 1.0 - acc)
            if self.progress is not None:
                self.total = max(self.total, len(self.cache) + (len(self.cache) >= self.total))
                self.progress(len(self.cache), self.total)
        return self.cache[alpha]


def barrier_on_line(
    line: Line,
    data: Dataset,
    *,
    alphas: int = 25,
    bn: BarrierBN | str = BarrierBN.RECOMPUTE,
    alpha_tol: float = 1e-4,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> BarrierResult:
    """The named barriers along an existing :class:`~mli_theory.path.Line` (data already cast).

    See :func:`barrier` for the arguments; ``line.start`` is A and ``line.end`` is B.
    """
    _validate(alphas, alpha_tol, batch_size)
    bn = _policy(bn)
    ev = _PathEvaluator(line, data, bn, batch_size, progress)
    grid = alpha_grid(alphas)
    golden = math.ceil(math.log(max(2.0 / (alphas - 1) / alpha_tol, 1.0)) / math.log(1.0 / _INV_PHI)) + 2
    ev.total = alphas + 3 * golden + (27 if data.loss == "ce" else 0)
    vals = [ev(a) for a in grid]
    losses = [v[0] for v in vals]
    errors = [v[1] for v in vals] if data.loss == "ce" else None
    l0, l1 = losses[0], losses[-1]

    def loss_of(a: float) -> float:
        return ev(a)[0]

    # where to refine: the grid maximiser of each objective, then the refinement of its bracket
    chord = [l - ((1 - a) * l0 + a * l1) for a, l in zip(grid, losses)]
    lo, hi = _bracket(grid, chord)
    _golden_max(lambda a: loss_of(a) - ((1 - a) * l0 + a * l1), lo, hi, alpha_tol)
    lo, hi = _bracket(grid, losses)
    _golden_max(loss_of, lo, hi, alpha_tol)
    lo, hi = _bracket(grid, [-l for l in losses])
    _golden_max(lambda a: -loss_of(a), lo, hi, alpha_tol)
    if errors is not None:
        lo, hi = _bracket(grid, errors)  # type: ignore[arg-type]
        _grid_max(lambda a: ev(a)[1], lo, hi, alpha_tol)  # type: ignore[arg-type,return-value]
    if progress is not None:  # the expected count was an estimate: the bar ends at the evaluations made
        progress(len(ev.cache), len(ev.cache))
    samples = dict(ev.cache)
    barriers = barriers_from_samples(samples)
    ordered = tuple((a, samples[a][0], samples[a][1]) for a in sorted(samples))
    return BarrierResult(
        alphas=tuple(grid),
        losses=tuple(losses),
        errors=tuple(errors) if errors is not None else None,  # type: ignore[arg-type]
        barriers=barriers,
        samples=ordered,
        alpha_tol=float(alpha_tol),
        bn=bn.value if (line.has_bn or bn == BarrierBN.REPAIR) else None,
        loss=data.loss,
        warnings=() if errors is None else (
            f"error_mean is the largest error rate found on the {len(grid)}-point grid and around its maximiser: the error "
            "rate is a step function of α, so a spike narrower than the grid's spacing elsewhere may be missed (a lower "
            "bound of the supremum; --alphas sets the grid)",),
    )


def _validate(alphas: Any, alpha_tol: Any, batch_size: Any) -> None:
    if isinstance(alphas, bool) or not isinstance(alphas, int) or alphas < 2:
        raise InputError(f"alphas={alphas!r}: need an integer of at least 2 α points")
    if alphas > MAX_ALPHAS:
        raise InputError(f"alphas={alphas}: more than the {MAX_ALPHAS} α points a barrier evaluates")
    if isinstance(alpha_tol, bool) or not isinstance(alpha_tol, (int, float)) or not math.isfinite(alpha_tol) or alpha_tol <= 0:
        raise InputError(f"alpha_tol={alpha_tol!r}: must be a finite number > 0")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0):
        raise InputError(f"batch_size={batch_size!r}: must be a positive integer")


def _policy(bn: Any) -> BarrierBN:
    try:
        return BarrierBN(bn.value if isinstance(bn, BNPolicy) else bn)
    except ValueError:
        raise InputError(f"bn={bn!r}: unknown BatchNorm policy (expected recompute, repair, interpolate or frozen)") from None


def barrier(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    data: Dataset,
    *,
    alphas: int = 25,
    align: str = "none",
    bn: BarrierBN | BNPolicy | str = BarrierBN.RECOMPUTE,
    alpha_tol: float = 1e-4,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> BarrierResult:
    """Loss and error along θ(α) = (1−α)·θ_A + α·θ_B and the named barriers of the module docstring.

    Args:
        model: the architecture of both checkpoints (not modified; its own weights are ignored).
        a, b: state dicts of the two endpoints (not modified).
        data: the data set (cast to ``device``/``dtype``).
        alphas: points of the even grid in [0, 1], ends included (≥ 2).
        align: ``none``, or ``weights``: permute B's hidden units to match A by weight matching
            (:func:`~mli_theory.connectivity.alignment.weight_matching`) first; the result then
            holds the barriers after alignment and, in ``before_alignment``, those before.
        bn: BatchNorm statistics at each α (:class:`BarrierBN`); ignored for models without
            BatchNorm, except ``repair``, which also rescales plain hidden units.
        alpha_tol: refinement of each supremum stops when its bracket is narrower than this.
        device, dtype: where and in which precision to evaluate.
        batch_size: examples per forward pass (None: all); does not change the result.
        progress: called with (evaluations done, evaluations so far).

    Raises:
        InputError: bad options, mismatched checkpoints, data that does not fit, an architecture
            that cannot be aligned (``cannot align: <reason>``).
    """
    _validate(alphas, alpha_tol, batch_size)
    policy = _policy(bn)
    if align not in ("none", "weights"):
        raise InputError(f"align={align!r}: expected none or weights")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    line = make_line(model, a, b, device=device, dtype=dtype)
    if policy in (BarrierBN.RECOMPUTE, BarrierBN.REPAIR) and (line.has_bn or policy == BarrierBN.REPAIR) and data.n < 2:
        raise InputError(f'bn="{policy.value}" measures statistics over the data and needs at least 2 examples')
    data = data.to(device, dtype)
    probe(line, data)
    if align == "none":
        return barrier_on_line(line, data, alphas=alphas, bn=policy, alpha_tol=alpha_tol, batch_size=batch_size, progress=progress)
    from dataclasses import replace

    from .alignment import weight_matching

    matched = weight_matching(model, line.start, line.end)
    before = barrier_on_line(line, data, alphas=alphas, bn=policy, alpha_tol=alpha_tol, batch_size=batch_size, progress=progress)
    aligned = make_line(model, line.start, matched.state, device=device, dtype=dtype)
    after = barrier_on_line(aligned, data, alphas=alphas, bn=policy, alpha_tol=alpha_tol, batch_size=batch_size, progress=progress)
    facts = {
        "groups": {g.name: g.size for g in matched.groups},
        "iterations": matched.iterations,
        "similarity_before": matched.similarity_before,
        "similarity_after": matched.similarity_after,
        "identity": matched.is_identity,
    }
    notes: tuple[str, ...] = ()
    if not matched.groups:
        notes = ("the model has no hidden units to permute: alignment changes nothing",)
    elif matched.is_identity:
        notes = ("weight matching kept B's order (every permutation found is the identity)",)
    return replace(after, align="weights", before_alignment=before, alignment=facts, warnings=after.warnings + notes)
