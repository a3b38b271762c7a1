"""Mode connectivity along a trained curve between two checkpoints A and B.

Garipov, Izmailov, Podoprikhin, Vetrov & Wilson 2018, "Loss surfaces, mode connectivity, and fast
ensembling of DNNs" (NeurIPS 2018), and Draxler, Veschgini, Salmhofer & Hamprecht 2018,
"Essentially no barriers in neural network energy landscape" (ICML 2018), find that two
independently trained networks, separated by a high loss barrier on the straight line, are joined
by a simple *curve* along which the loss stays low. This module trains such a curve and measures
the barriers along it with the definitions of :mod:`mli_theory.connectivity.barrier`.

Curves
    φ_θ(t), t ∈ [0, 1], with φ_θ(0) = A and φ_θ(1) = B exactly and one bend θ (a point in weight
    space):

    * ``bezier``, the quadratic Bézier curve  φ_θ(t) = (1−t)²·A + 2t(1−t)·θ + t²·B;
    * ``polychain``, the polygonal chain A → θ → B with its bend at t = ½:
      φ_θ(t) = A + 2t·(θ − A) for t ≤ ½ and θ + (2t − 1)·(B − θ) for t ≥ ½.

    The bend starts at the midpoint θ₀ = (A + B)/2, where both curves *are* the straight line
    θ(α) = (1−α)·A + α·B with α = t (for the Bézier: (1−t)²·A + t(1−t)·(A + B) + t²·B =
    (1−t)·A + t·B). So an untrained curve (``epochs=0``) reproduces the line's loss curve and
    barriers up to rounding.

    Which entries move: every state entry moves along the curve as it moves along the line (see
    :class:`~mli_theory.path.Motion`): parameters and floating buffers follow φ_θ(t); integer
    entries, and BatchNorm running statistics under ``bn="frozen"``, hold B's value; under
    ``bn="recompute"`` the statistics are re-estimated at every t. Only the trainable parameters
    (``requires_grad``) of the bend are trained; its other floating entries stay at the midpoint,
    so along both curves they follow the straight line (running statistics under
    ``bn="interpolate"`` are interpolated linearly in t).

Training the bend (Garipov et al. 2018, §3.2)
    θ* ≈ argmin_θ E_{t∼U(0,1)} L(φ_θ(t)), with A and B fixed, by stochastic gradient steps: each
    minibatch (an epoch visits every example once, in an order drawn from the seeded generator)
    draws one t ∼ U(0, 1) from the same generator and takes one step of SGD (with momentum) or Adam
    on the minibatch loss L_batch(φ_θ(t)) (torch's mean reduction), differentiated through
    φ_θ(t) with respect to θ alone. The model is run with ``torch.func.functional_call`` on a
    private copy: the caller's module, state dicts and tensors are never touched.

    BatchNorm: as in Garipov et al., with ``bn="recompute"`` the BatchNorm layers use the batch
    statistics of each minibatch while the bend is trained (train mode; every other module, e.g.
    dropout, stays in eval mode, so the objective is deterministic given the seed), and at every
    evaluated t the running statistics are re-estimated over the data before the loss is measured
    in eval mode. With ``bn="interpolate"`` or ``"frozen"`` training and evaluation both use the
    policy's running statistics in eval mode, so the trained objective is the evaluated loss.
    ``repair`` is defined for the straight line only and is refused.

Evaluation
    L(t) (and the error E(t) = 1 − accuracy for ``ce``), exact means over the whole data set
    (per-batch sums in float64, one division), on an even grid of ``alphas`` values of t, both
    ends included; the named barriers (``loss_chord``, ``loss_mean``, ``error_mean``,
    ``signed_taxonomy``; :data:`~mli_theory.connectivity.barrier.BARRIER_DEFINITIONS`) are read by
    :func:`~mli_theory.connectivity.barrier.barriers_from_samples` from the grid and the same
    refinement that :func:`~mli_theory.connectivity.barrier.barrier_on_line` does around each grid
    maximiser (golden section for the loss objectives, nested local grids for the error), with t in
    the place of α. On a straight line (an untrained bend) the numbers are those of
    :func:`~mli_theory.connectivity.barrier.barrier` up to rounding. The line's own barriers, with
    the same options, are computed by the line code and reported next to the curve's.

    Note that along a curve the chord (1−t)·L(0) + t·L(1) of ``loss_chord`` is taken in the curve's
    parameter t, which is not proportional to arc length.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from ..errors import InputError
from ..inputs.checkpoint import StateDict
from ..inputs.data import Dataset
from ..inputs.devices import resolve_device, resolve_dtype
from ..path import BNPolicy, Line, Motion, Progress, alpha_grid, data_on_line, evaluate, make_line, recompute_bn_statistics
from ..path.batchnorm import batches
from ..path.line import tied_entries
from ..path.losses import batch_loss_sums, loss_normaliser
from ..results import json_safe
from .barrier import (
    _INV_PHI,
    BARRIER_DEFINITIONS,
    MAX_ALPHAS,
    BarrierBN,
    BarrierValue,
    _bracket,
    _golden_max,
    _grid_max,
    barrier_on_line,
    barriers_from_samples,
)

__all__ = ["CURVES", "CurveResult", "curve_coefficients", "curve_connectivity", "curve_point"]

#: the curve families (see the module docstring)
CURVES: tuple[str, ...] = ("bezier", "polychain")

#: the optimisers of the bend
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")


# --------------------------------------------------------------------------- the curves


def curve_coefficients(curve: str, t: float) -> tuple[float, float, float]:
    """(c_A, c_θ, c_B) with φ_θ(t) = c_A·A + c_θ·θ + c_B·B.

    * ``bezier``: ((1−t)², 2t(1−t), t²);
    * ``polychain``: (1 − 2t, 2t, 0) for t < ½ and (0, 2 − 2t, 2t − 1) for t ≥ ½.

    >>> curve_coefficients("bezier", 0.5)
    (0.25, 0.5, 0.25)
    >>> curve_coefficients("polychain", 0.25), curve_coefficients("polychain", 0.75)
    ((0.5, 0.5, 0.0), (0.0, 0.5, 0.5))
    """
    t = float(t)
    if curve == "bezier":
        s = 1.0 - t
        return s * s, 2.0 * t * s, t * t
    if curve == "polychain":
        if t < 0.5:
            return 1.0 - 2.0 * t, 2.0 * t, 0.0
        return 0.0, 2.0 - 2.0 * t, 2.0 * t - 1.0
    raise InputError(f"curve={curve!r}: unknown curve (expected one of: {', '.join(CURVES)})")


def _combine(ca: float, cm: float, cb: float, a: torch.Tensor, m: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c_A·a + c_θ·m + c_B·b, leaving out zero terms (so the ends and the polychain's bend are exact)."""
    out = None
    for c, x in ((ca, a), (cm, m), (cb, b)):
        if c == 0.0:
            continue
        term = x if c == 1.0 else c * x
        out = term if out is None else out + term
    return out if out is not None else torch.zeros_like(a)


def curve_point(
    curve: str,
    a: Mapping[str, torch.Tensor],
    bend: Mapping[str, torch.Tensor],
    b: Mapping[str, torch.Tensor],
    t: float,
    frozen: frozenset[str] = frozenset(),
) -> StateDict:
    """φ_θ(t) entry by entry for state dicts A, θ (``bend``) and B with the same keys.

    Floating entries follow the curve (:func:`curve_coefficients`); integer entries and names in
    ``frozen`` take B's value (like :func:`~mli_theory.path.interpolate`; ``bend`` need not hold
    them). Every tensor returned is fresh; φ(0) = A, φ(1) = B and, for the polychain, φ(½) = θ,
    bit for bit.

    >>> a, m, b = {"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])}, {"w": torch.tensor([4.0])}
    >>> [curve_point("bezier", a, m, b, t)["w"].item() for t in (0.0, 0.5, 1.0)]
    [0.0, 2.0, 4.0]
    >>> m = {"w": torch.tensor([6.0])}
    >>> [curve_point("polychain", a, m, b, t)["w"].item() for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    [0.0, 3.0, 6.0, 5.0, 4.0]
    """
    t = _check_t(t)
    ca, cm, cb = curve_coefficients(curve, t)
    out: StateDict = {}
    for k, t0 in a.items():
        if k in frozen or not t0.is_floating_point():
            out[k] = b[k].clone()
        else:
            out[k] = _combine(ca, cm, cb, t0, bend[k], b[k]).clone()
    return out


def _check_t(t: Any) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (0.0 <= float(t) <= 1.0):
        raise InputError(f"t={t!r}: the curve parameter must be a number in [0, 1]")
    return float(t)


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class CurveResult:
    """Loss (and error) along a trained curve φ_θ(t) from A to B, its barriers and the line's.

    Attributes:
        curve: ``bezier`` or ``polychain`` (module docstring).
        ts: the even grid of t (both ends included).
        losses: mean training loss L(φ_θ(t)) at each grid t (exact full-set means).
        errors: classification error 1 − accuracy at each grid t (``ce``), else None.
        barriers: name → :class:`~mli_theory.connectivity.barrier.BarrierValue` of the curve, for
            every name in :data:`~mli_theory.connectivity.barrier.BARRIER_DEFINITIONS`, read from
            ``samples`` by :func:`~mli_theory.connectivity.barrier.barriers_from_samples`; each
            value's ``alpha`` is the curve parameter t where it is attained.
        samples: every (t, loss, error) evaluated on the curve, grid and refinement, sorted by t.
        line_losses, line_errors: the same on the grid α = t of the straight line A → B.
        line_barriers: the named barriers of the straight line with the same options
            (:func:`~mli_theory.connectivity.barrier.barrier_on_line`).
        train_losses: per epoch, the mean over its minibatches (weighted by their sizes) of the
            minibatch loss L_batch(φ_θ(t)) at the t drawn for each: a stochastic estimate of the
            objective E_t L(φ_θ(t)) while it was being trained (empty for ``epochs=0``).
        bend_distance: ‖θ − (A + B)/2‖ over the trainable parameters (how far training moved the
            bend; 0 for ``epochs=0``).
        endpoint_distance: ‖B − A‖ over the same parameters (the scale of ``bend_distance``).
        epochs, lr, batch_size, optimizer, momentum, seed: the training options used.
        alpha_tol: width below which a refinement bracket stops.
        bn: the BatchNorm policy (None for models without BatchNorm).
        loss: ``mse`` or ``ce``.
        timings: seconds spent: ``train_s``, ``curve_s`` (evaluating the curve), ``line_s``,
            ``total_s`` (not compared by ``==``).
        warnings: facts worth a note.
        bend: the trained bend θ as a full state dict (on the evaluation device and dtype; not in
            :meth:`to_dict`, not compared by ``==``); entries that do not move along the path
            (integers, and BatchNorm statistics under ``bn="frozen"``) hold B's value. The curve is
            φ_θ(t) = :func:`curve_point` (curve, A, bend, B, t), with ``frozen`` = the BatchNorm
            statistics under ``bn="frozen"``; under ``recompute`` they are re-estimated at each t.
    """

    curve: str
    ts: tuple[float, ...]
    losses: tuple[float, ...]
    errors: tuple[float, ...] | None
    barriers: Mapping[str, BarrierValue]
    samples: tuple[tuple[float, float, float | None], ...]
    line_losses: tuple[float, ...]
    line_errors: tuple[float, ...] | None
    line_barriers: Mapping[str, BarrierValue]
    train_losses: tuple[float, ...]
    bend_distance: float
    endpoint_distance: float
    epochs: int
    lr: float
    batch_size: int | None
    optimizer: str
    momentum: float
    seed: int
    alpha_tol: float
    bn: str | None
    loss: str
    timings: Mapping[str, float] = field(default_factory=dict, compare=False)
    warnings: tuple[str, ...] = field(default_factory=tuple)
    bend: StateDict | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe object (non-finite numbers become None); barrier values as
        ``{value, alpha}`` with ``alpha`` the path parameter (t on the curve, α on the line)."""
        out: dict[str, Any] = {
            "curve": self.curve,
            "ts": list(self.ts),
            "losses": list(self.losses),
            "errors": list(self.errors) if self.errors is not None else None,
            "barriers": {k: v.to_dict() for k, v in self.barriers.items()},
            "line_losses": list(self.line_losses),
            "line_errors": list(self.line_errors) if self.line_errors is not None else None,
            "line_barriers": {k: v.to_dict() for k, v in self.line_barriers.items()},
            "train_losses": list(self.train_losses),
            "bend_distance": self.bend_distance,
            "endpoint_distance": self.endpoint_distance,
            "training": {
                "epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                "optimizer": self.optimizer, "momentum": self.momentum, "seed": self.seed,
            },
            "loss": self.loss,
            "bn": self.bn,
            "alpha_tol": self.alpha_tol,
            "evaluations": len(self.samples),
            "definitions": dict(BARRIER_DEFINITIONS),
            "timings": dict(self.timings),
            "warnings": list(self.warnings),
        }
        return json_safe(out)

    def to_text(self) -> str:
        """A short human-readable report: each barrier on the curve next to the line's."""
        lines = [
            f"barriers along a trained {self.curve} curve A → B vs the straight line "
            f"({len(self.ts)} grid points, {len(self.samples)} evaluations on the curve, bn={self.bn}):",
            f"  {'':16s} {'curve':>12s} {'line':>12s}",
        ]

        def fmt(v: BarrierValue) -> str:
            return "n/a" if v.value is None else f"{v.value:.6g}"

        for name, v in self.barriers.items():
            lines.append(f"  {name:16s} {fmt(v):>12s} {fmt(self.line_barriers[name]):>12s}")
        lines.append(f"  L(0)={self.losses[0]:.6g}  L(1)={self.losses[-1]:.6g}  "
                     f"|bend - midpoint|={self.bend_distance:.6g}  |B - A|={self.endpoint_distance:.6g}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


# --------------------------------------------------------------------------- validation


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name}={value!r}: must be an integer ≥ {minimum}")


def _positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{name}={value!r}: must be a finite number > 0")


def _validate(
    model: Any, curve: Any, epochs: Any, lr: Any, batch_size: Any, alphas: Any, alpha_tol: Any, seed: Any,
    optimizer: Any, momentum: Any, bn: Any, progress: Any,
) -> BarrierBN:
    if not isinstance(model, nn.Module):
        raise InputError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if curve not in CURVES:
        raise InputError(f"curve={curve!r}: unknown curve (expected one of: {', '.join(CURVES)})")
    _positive_int("epochs", epochs, 0)
    _positive_float("lr", lr)
    if batch_size is not None:
        _positive_int("batch_size", batch_size)
    _positive_int("alphas", alphas, 2)
    if alphas > MAX_ALPHAS:
        raise InputError(f"alphas={alphas}: more than the {MAX_ALPHAS} points a barrier evaluates")
    _positive_float("alpha_tol", alpha_tol)
    _positive_int("seed", seed, 0)
    if optimizer not in OPTIMIZERS:
        raise InputError(f"optimizer={optimizer!r}: expected one of: {', '.join(OPTIMIZERS)}")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise InputError(f"momentum={momentum!r}: must be a number in [0, 1)")
    if progress is not None and not callable(progress):
        raise InputError(f"progress={progress!r}: must be a callable (done, total) or None")
    try:
        policy = BarrierBN(bn.value if isinstance(bn, (BNPolicy, BarrierBN)) else bn)
    except ValueError:
        raise InputError(f"bn={bn!r}: unknown BatchNorm policy (expected recompute, interpolate or frozen)") from None
    if policy == BarrierBN.REPAIR:
        raise InputError('bn="repair": REPAIR is defined on the straight line only; along a curve use recompute, '
                         "interpolate or frozen")
    return policy


# --------------------------------------------------------------------------- the curve on a line's endpoints


class _Curve:
    """A, B (a :class:`Line`'s private endpoints), the bend and how every entry moves."""

    def __init__(self, line: Line, model: nn.Module, curve: str, policy: BNPolicy) -> None:
        self.line, self.curve, self.policy = line, curve, policy
        self.motion = line.motions(policy)
        self.recompute = line.has_bn and policy == BNPolicy.RECOMPUTE
        # the bend: every entry that moves with the path, initialised at the midpoint (A + B)/2
        self.moving = [k for k, m in self.motion.items() if m in (Motion.AFFINE, Motion.RECOMPUTED)]
        with torch.no_grad():
            self.mid: StateDict = {k: 0.5 * (line.start[k] + line.end[k]) for k in self.moving}
        # trainable entries: parameters with requires_grad; tied names share their leader's tensor
        train_names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.leader: dict[str, str] = {}
        for group in tied_entries(model):
            lead = next((n for n in group if n in train_names), group[0])
            for n in group:
                if n != lead:
                    self.leader[n] = lead
        self.trainable = [n for n in train_names if n in self.mid and n not in self.leader]
        self.param_names = tuple(n for n in line.param_names if n in self.mid)
        self.bend: dict[str, torch.Tensor] = {k: v.clone() for k, v in self.mid.items()}

    def state(self, t: float, bend: Mapping[str, torch.Tensor] | None = None) -> StateDict:
        """φ_θ(t): moving entries on the curve, the others as declared (B's value), all fresh."""
        bend = self.bend if bend is None else bend
        ca, cm, cb = curve_coefficients(self.curve, t)
        a, b = self.line.start, self.line.end
        out: StateDict = {}
        for k in a:
            if k in bend:
                src = bend[self.leader.get(k, k)]
                out[k] = _combine(ca, cm, cb, a[k], src, b[k])
                if out[k] is a[k] or out[k] is b[k] or out[k] is src:
                    out[k] = out[k].clone()
            else:
                out[k] = b[k].clone()
        return out

    def evaluation_state(self, t: float, data: Dataset, batch_size: int | None) -> StateDict:
        with torch.no_grad():
            state = self.state(t)
        if self.recompute:
            state = recompute_bn_statistics(self.line, state, data.x, batch_size)
        return state

    def distances(self) -> tuple[float, float]:
        """‖θ − (A + B)/2‖ and ‖B − A‖ over the parameters, in float64."""
        sq_bend = sum(float((self.bend[k].double() - self.mid[k].double()).pow(2).sum()) for k in self.param_names)
        sq_ab = sum(float((self.line.end[k].double() - self.line.start[k].double()).pow(2).sum()) for k in self.param_names)
        return math.sqrt(sq_bend), math.sqrt(sq_ab)


def _minibatches(n: int, batch_size: int | None, order: torch.Tensor, merge_single: bool) -> list[torch.Tensor]:
    """``order`` cut into consecutive minibatches (a last batch of one example merged into the one
    before when train-mode BatchNorm needs 2+ examples)."""
    parts = batches(n, batch_size)
    if merge_single and len(parts) > 1 and parts[-1].stop - parts[-1].start == 1:
        parts = parts[:-2] + [slice(parts[-2].start, parts[-1].stop)]
    return [order[sl] for sl in parts]


def _train_bend(
    c: _Curve, data: Dataset, *, epochs: int, lr: float, batch_size: int | None, optimizer: str, momentum: float,
    seed: int, tick: Callable[[], None],
) -> list[float]:
    """Train the bend (module docstring); returns the per-epoch mean minibatch loss."""
    if epochs == 0 or not c.trainable:
        return []
    shell = c.line.shell
    leaves = {k: c.bend[k].detach().clone().requires_grad_(True) for k in c.trainable}
    fixed = {k: v for k, v in c.bend.items() if k not in leaves}
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(list(leaves.values()), lr=lr, momentum=momentum)
    else:
        opt = torch.optim.Adam(list(leaves.values()), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    per_example = loss_normaliser(data) / data.n  # k for mse, 1 for ce
    bn_modules = [m for m in shell.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    history: list[float] = []
    if c.recompute:
        for m in bn_modules:
            m.train()  # batch statistics while training (Garipov et al.); every other module stays in eval mode
    try:
        for epoch in range(epochs):
            order = torch.randperm(data.n, generator=gen)
            total, count = 0.0, 0
            for idx in _minibatches(data.n, batch_size, order, merge_single=c.recompute):
                t = float(torch.rand((), generator=gen, dtype=torch.float64))
                state = c.state(t, {**fixed, **leaves})  # fresh tensors: a train-mode forward writes only these
                xb = data.x[idx.to(data.x.device) if isinstance(data.x, torch.Tensor) else idx]
                yb = data.y[idx.to(data.y.device)]
                out = functional_call(shell, state, (xb,))
                s, _ = batch_loss_sums(out, yb, data.loss)
                loss = s / (idx.numel() * per_example)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise InputError(
                        f"training the bend diverged (the minibatch loss is not finite in epoch {epoch + 1}): "
                        f"lower lr={lr}"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += value * idx.numel()
                count += idx.numel()
                tick()
            history.append(total / count)
    finally:
        for m in bn_modules:
            m.eval()
    with torch.no_grad():
        for k, v in leaves.items():
            c.bend[k] = v.detach().clone()
        for k, lead in c.leader.items():  # tied names: one tensor in the model, one value in the bend
            if k in c.bend and lead in c.bend:
                c.bend[k] = c.bend[lead].clone()
    return history


class _CurveEvaluator:
    """L(t), E(t) on the curve, each t evaluated once (cached)."""

    def __init__(self, c: _Curve, data: Dataset, batch_size: int | None, tick: Callable[[], None]) -> None:
        self.c, self.data, self.batch_size, self.tick = c, data, batch_size, tick
        self.cache: dict[float, tuple[float, float | None]] = {}

    def __call__(self, t: float) -> tuple[float, float | None]:
        t = float(t)
        if t not in self.cache:
            state = self.c.evaluation_state(t, self.data, self.batch_size)
            loss, acc = evaluate(self.c.line, state, self.data, self.batch_size)
            if not math.isfinite(loss):
                hint = " (evaluate in float64 with dtype=torch.float64)" if self.c.line.dtype != torch.float64 else ""
                raise InputError(f"the loss is not finite along the curve (first at t={t:.6g}){hint}")
            self.cache[t] = (loss, None if acc is None else 1.0 - acc)
            self.tick()
        return self.cache[t]


def _expected_evaluations(alphas: int, alpha_tol: float, ce: bool) -> int:
    """At most this many evaluations for one path (grid, three golden searches, the error grids)."""
    golden = math.ceil(math.log(max(2.0 / (alphas - 1) / alpha_tol, 1.0)) / math.log(1.0 / _INV_PHI)) + 2
    return alphas + 3 * golden + (27 if ce else 0)


def _refined(ev: _CurveEvaluator, alphas: int, alpha_tol: float, ce: bool) -> tuple[list[float], list[float], list[float] | None]:
    """The grid and the refinement of :func:`~mli_theory.connectivity.barrier.barrier_on_line`, in
    the same order, with t in the place of α (so a straight curve gives the line's numbers)."""
    grid = alpha_grid(alphas)
    vals = [ev(t) for t in grid]
    losses = [v[0] for v in vals]
    errors = [v[1] for v in vals] if ce else None
    l0, l1 = losses[0], losses[-1]

    def loss_of(t: float) -> float:
        return ev(t)[0]

    chord = [l - ((1 - t) * l0 + t * l1) for t, l in zip(grid, losses)]
    lo, hi = _bracket(grid, chord)
    _golden_max(lambda t: loss_of(t) - ((1 - t) * l0 + t * l1), lo, hi, alpha_tol)
    lo, hi = _bracket(grid, losses)
    _golden_max(loss_of, lo, hi, alpha_tol)
    lo, hi = _bracket(grid, [-l for l in losses])
    _golden_max(lambda t: -loss_of(t), lo, hi, alpha_tol)
    if errors is not None:
        lo, hi = _bracket(grid, errors)  # type: ignore[arg-type]
        _grid_max(lambda t: ev(t)[1], lo, hi, alpha_tol)  # type: ignore[arg-type,return-value]
    return grid, losses, errors  # type: ignore[return-value]


# --------------------------------------------------------------------------- public


def curve_connectivity(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    data: Dataset,
    *,
    curve: str = "bezier",
    epochs: int = 20,
    lr: float = 0.01,
    batch_size: int | None = 128,
    optimizer: str = "adam",
    momentum: float = 0.9,
    alphas: int = 25,
    alpha_tol: float = 1e-4,
    seed: int = 0,
    bn: BarrierBN | BNPolicy | str = BarrierBN.RECOMPUTE,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    progress: Progress | None = None,
) -> CurveResult:
    """Train a curve φ_θ from A to B (a bend θ, A and B fixed) and measure the barriers along it.

    See the module docstring for the curves, the objective E_{t∼U(0,1)} L(φ_θ(t)), the BatchNorm
    handling and the barrier definitions (those of
    :func:`~mli_theory.connectivity.barrier.barrier`, with the curve parameter t in place of α).

    Args:
        model: the architecture of both checkpoints (not modified; its own weights are ignored).
        a, b: state dicts of the two endpoints (not modified).
        data: the training data (cast to ``device``/``dtype``; streamed inputs are read by batches).
        curve: ``bezier`` (quadratic Bézier, one bend) or ``polychain`` (A → θ → B, bend at t = ½).
        epochs: passes over the data while training the bend (0: the untrained curve, which is the
            straight line).
        lr: learning rate of the bend's optimiser.
        batch_size: examples per minibatch of training, and per forward pass of the evaluation
            (None: the whole set). The evaluated losses do not depend on it, except through the
            re-estimated BatchNorm statistics (as in :func:`~mli_theory.connectivity.barrier.barrier`).
        optimizer: ``adam`` or ``sgd`` (with ``momentum``).
        momentum: SGD momentum in [0, 1).
        alphas: points of the even grid of t in [0, 1], ends included (≥ 2), for curve and line.
        alpha_tol: refinement of each supremum stops when its bracket is narrower than this.
        seed: seeds the minibatch order and the t drawn for each minibatch (one generator).
        bn: BatchNorm statistics: ``recompute`` (default, Garipov et al.), ``interpolate`` or
            ``frozen``; ignored for models without BatchNorm. ``repair`` is refused.
        device, dtype: where and in which precision to train and evaluate.
        progress: called with (done, total): training steps, then evaluations on the curve and the
            line (``total`` bounds the work from above; the last call has done = total).

    Returns:
        a :class:`CurveResult`.

    Raises:
        InputError: bad options (naming the parameter), mismatched checkpoints, data that does not
            fit the model, a diverging bend (``lr``), non-finite losses.
    """
    start = time.perf_counter()
    policy = _validate(model, curve, epochs, lr, batch_size, alphas, alpha_tol, seed, optimizer, momentum, bn, progress)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    line = make_line(model, a, b, device=device, dtype=dtype)
    path_policy = BNPolicy(policy.value)
    data = data_on_line(line, data, path_policy, batch_size)
    c = _Curve(line, model, curve, path_policy)

    ce = data.loss == "ce"
    per_epoch = len(_minibatches(data.n, batch_size, torch.arange(data.n), merge_single=c.recompute))
    steps = epochs * per_epoch if c.trainable else 0
    per_path = _expected_evaluations(alphas, alpha_tol, ce)
    total = steps + 2 * per_path
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(min(done[0], total), total)

    warnings: list[str] = []
    train_losses = _train_bend(c, data, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
                               momentum=momentum, seed=seed, tick=tick)
    t_train = time.perf_counter() - start
    if epochs == 0:
        warnings.append("epochs=0: the bend was not trained and the curve is the straight line A → B")
    elif not c.trainable:
        warnings.append("the model has no trainable parameters: the bend stays at the midpoint (the straight line)")

    t0 = time.perf_counter()
    done[0] = steps
    ev = _CurveEvaluator(c, data, batch_size, tick)
    ts, losses, errors = _refined(ev, alphas, alpha_tol, ce)
    samples = dict(ev.cache)
    curve_barriers = barriers_from_samples(samples)
    t_curve = time.perf_counter() - t0

    t0 = time.perf_counter()
    offset = steps + per_path

    def line_progress(d: int, _total: int) -> None:
        if progress is not None:
            progress(offset + min(d, per_path), total)

    line_result = barrier_on_line(line, data, alphas=alphas, bn=policy, alpha_tol=alpha_tol, batch_size=batch_size,
                                  progress=line_progress if progress is not None else None)
    t_line = time.perf_counter() - t0
    if progress is not None:
        progress(total, total)

    bend_distance, endpoint_distance = c.distances()
    if epochs > 0 and c.trainable:
        cb, lb = curve_barriers["loss_mean"].value, line_result.barriers["loss_mean"].value
        if cb is not None and lb is not None and cb >= lb:
            warnings.append(f"the trained curve's loss_mean barrier ({cb:.6g}) is not below the line's ({lb:.6g}): "
                            "train longer or change lr")
    return CurveResult(
        curve=curve,
        ts=tuple(ts),
        losses=tuple(losses),
        errors=tuple(errors) if errors is not None else None,  # type: ignore[arg-type]
        barriers=curve_barriers,
        samples=tuple((t, samples[t][0], samples[t][1]) for t in sorted(samples)),
        line_losses=tuple(line_result.losses),
        line_errors=line_result.errors,
        line_barriers=dict(line_result.barriers),
        train_losses=tuple(train_losses),
        bend_distance=bend_distance,
        endpoint_distance=endpoint_distance,
        epochs=epochs,
        lr=float(lr),
        batch_size=batch_size,
        optimizer=optimizer,
        momentum=float(momentum),
        seed=seed,
        alpha_tol=float(alpha_tol),
        bn=policy.value if line.has_bn else None,
        loss=data.loss,
        timings={"train_s": round(t_train, 4), "curve_s": round(t_curve, 4), "line_s": round(t_line, 4),
                 "total_s": round(time.perf_counter() - start, 4)},
        warnings=tuple(warnings),
        bend={k: (c.bend[k] if k in c.bend else v).detach().clone() for k, v in line.end.items()},
    )
