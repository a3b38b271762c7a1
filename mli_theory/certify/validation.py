r"""Differential validation: a certificate is about the computation that was measured, or it is not given.

Every proof method works on its own model of the computation: the exact method on a product of
``nn.Linear`` weights, the enclosure method on the traced graph walked with its own rules, its own
motion of every state entry, its own BatchNorm re-estimation and its own chunks of examples. The
loss curve of a check is measured by something else: the user's module called through
``torch.func.functional_call`` (:func:`mli_theory.path.loss_curve`). Every false certificate found in
this project came from a difference between the two (a buffer the certifier held fixed, a
training-mode branch, a random re-estimation pass, outputs centred over the batch, a function
replaced process-wide). Root causes are fixed where they live; this module is the backstop that
makes any remaining difference visible instead of silent.

:class:`Reference` re-evaluates the *measured* computation — the same :func:`loss_curve` code, the
same BatchNorm policy and minibatches — in float64, and :meth:`Reference.compare` checks the
certifier's own values of L at a few α (proven enclosures, or exact rationals) against it:

    |L_cert(α) − L_meas(α)| ≤ slack(α),   slack = 2⁻²⁶·|L_meas(α)| + 2⁻¹⁶·|L_dtype(α) − L_meas(α)|
                                                   (+ 2√L·δ + δ² under MSE, δ = 2⁻⁴⁰(max|y| + √L))

(``L_dtype`` is the check's own curve in its dtype: its distance from the float64 value measures
how ill-conditioned the evaluation is, and float64 rounding is about 2⁻²⁹ of float32's). The slack is
not a proven bound on float64 rounding, so this validation cannot *prove* that the models agree; it
turns every difference larger than rounding into ``unknown``. Any difference → ``unknown``, "the
certified model differs from the measured curve at α = …".

The same reference re-checks every witness of a rise (:meth:`Reference.witness`), a ``monotone``
verdict against the grid's own rise (:meth:`Reference.contradicts`), and that the measured curve is
a function of α at all: one α is evaluated twice (a random re-estimation pass, dropout left active,
or a forward that keeps state makes the two differ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch

from ..inputs.data import Dataset
from ..path import BNPolicy, Line, LossCurve, loss_curve
from ..path.fidelity import line_trace_differs
from ..path.line import private_copy

MEASURED_DIFFERS = "differs from the measured curve"  # in every reason of a failed validation
OFF_GRID = (1 / math.pi, 1 / math.sqrt(2))  # validation α that no evenly spaced grid contains
REL = 2.0**-26  # trusted relative accuracy of the float64 re-evaluation of the measured curve
COND = 2.0**-16  # float64 error as a fraction of the distance between the dtype curve and float64
OUT_REL = 2.0**-40  # trusted relative accuracy of float64 outputs (MSE near a perfect fit)
CURVE_REL = 2.0**-12  # the check's own curve (float32) may differ from float64 by this much relative


def _float64_line(line: Line) -> Line:
    """The same path in float64: a private float64 copy of the module, endpoints cast."""
    if line.dtype == torch.float64:
        return line
    shell = private_copy(line.shell).to(torch.float64)
    shell.eval()

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.float64) if t.is_floating_point() else t

    return replace(line, shell=shell, start={k: cast(v) for k, v in line.start.items()}, end={k: cast(v) for k, v in line.end.items()})


def validation_points(curve: LossCurve | None, extra: Sequence[float] = ()) -> list[float]:
    """Where the certified model is compared with the measured one: the grid points nearest to
    0, ¼, ½, ¾ and 1, the ends of the grid's largest rise, two points off any rational grid
    (:data:`OFF_GRID`: a difference placed between grid points is not hidden by the grid), and
    ``extra`` (sorted, distinct).

    >>> [round(a, 4) for a in validation_points(None)]
    [0.0, 0.25, 0.3183, 0.5, 0.7071, 0.75, 1.0]
    """
    targets = [0.0, 0.25, 0.5, 0.75, 1.0]
    points: set[float] = set(float(a) for a in extra) | set(OFF_GRID)
    if curve is None:
        points.update(targets)
        return sorted(points)
    grid = list(curve.alphas)
    for t in targets:
        points.add(min(grid, key=lambda a: abs(a - t)))
    where = grid_rise(curve)
    if where is not None:
        points.update(where)
    return sorted(points)


def grid_rise(curve: LossCurve) -> tuple[float, float] | None:
    """The ends (α_i, α_j), i < j, of the largest rise L(α_j) − L(α_i) > 0 on the grid (None if none).

    >>> grid_rise(LossCurve((0.0, 0.5, 1.0), (1.0, 0.5, 0.7), None))
    (0.5, 1.0)
    """
    losses, grid = curve.losses, curve.alphas
    best, where, low = 0.0, None, 0
    for j in range(1, len(losses)):
        if losses[j - 1] < losses[low]:
            low = j - 1
        if losses[j] - losses[low] > best:
            best, where = losses[j] - losses[low], (grid[low], grid[j])
    return where


@dataclass
class Reference:
    """The measured loss curve, re-evaluated in float64 by the check's own code.

    Attributes:
        line: the path (any dtype; a float64 copy is made once, lazily).
        data: the training data of the check.
        bn: the BatchNorm policy of the check.
        batch_size: the minibatch size of the check.
        curve: the check's own curve in its dtype (None: not available).
    """

    line: Line
    data: Dataset
    bn: BNPolicy
    batch_size: int | None
    curve: LossCurve | None = None
    _line64: Line | None = field(default=None, repr=False)
    _data64: Dataset | None = field(default=None, repr=False)
    _cache: dict[float, float] = field(default_factory=dict, repr=False)
    _ymax: float | None = field(default=None, repr=False)
    _curve_at: dict[float, float] | None = field(default=None, repr=False)
    _traced: tuple[str | None] | None = field(default=None, repr=False)

    def _ensure64(self) -> None:
        """The float64 copies of the line and the data, made once."""
        if self._line64 is None:
            self._line64 = _float64_line(self.line)
            self._data64 = self.data.to(self.line.device, torch.float64)

    def _dtype_value(self, alpha: float) -> float | None:
        """The check's own curve at ``alpha`` (None off its grid or without a curve)."""
        if self.curve is None:
            return None
        if self._curve_at is None:
            self._curve_at = dict(zip(self.curve.alphas, self.curve.losses))
        return self._curve_at.get(alpha)

    def losses(self, alphas: Sequence[float]) -> list[float]:
        """L(α) of the measured computation in float64 (each α evaluated once, then cached)."""
        self._ensure64()
        todo = sorted({float(a) for a in alphas if float(a) not in self._cache})
        if todo:
            self._cache.update(zip(todo, _measure(self._line64, self._data64, todo, self.bn, self.batch_size)))  # type: ignore[arg-type]
        return [self._cache[float(a)] for a in alphas]

    def slack(self, alpha: float, value: float) -> float:
        """How far a certified value may be from the float64 measurement at ``alpha``: 2⁻²⁶ of the
        loss, plus, under MSE, what outputs accurate to 2⁻⁴⁰ of their scale M = max|y| + √L do to
        a mean of squared residuals near 0 (2·√L·δ + δ², δ = 2⁻⁴⁰M: a fitted network's loss of
        1e-32 is all rounding), plus the conditioning term of the module docstring."""
        s = REL * abs(value) + 1e-300 + self._fit_floor(value, OUT_REL)
        dtype_value = self._dtype_value(alpha) if self.line.dtype != torch.float64 else None
        if dtype_value is not None and math.isfinite(dtype_value):
            s += COND * abs(dtype_value - value)
        return s

    def _fit_floor(self, value: float, rel: float) -> float:
        """Under MSE, 2√L·δ + δ² with δ = rel·(max|y| + √L): what output errors of δ do to L."""
        if self.data.loss != "mse":
            return 0.0
        if self._ymax is None:
            self._ymax = float(self.data.y.abs().max()) if self.data.y.numel() else 0.0
        root = math.sqrt(abs(value))
        delta = rel * (self._ymax + root)
        return 2 * root * delta + delta * delta

    def compare(self, alphas: Sequence[float], certified: Sequence[tuple[float, float]]) -> str | None:
        """None when every certified enclosure [lo, hi] of L(α) contains the measured value up to
        :meth:`slack`; otherwise the reason (naming the first α where they differ)."""
        measured = self.losses(alphas)
        for a, m, (lo, hi) in zip(alphas, measured, certified):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                continue  # no value to compare (an enclosure that overflowed proves nothing either way)
            s = self.slack(a, m)
            if not (lo - s <= m <= hi + s):
                cert = f"{lo:.10g}" if lo == hi else f"[{lo:.10g}, {hi:.10g}]"
                return (
                    f"the certified model {MEASURED_DIFFERS} at α = {a:.6g}: the certifier's "
                    f"model gives L = {cert}, the measured computation (float64) {m:.10g}"
                )
        return None

    def trace_fidelity(self) -> str | None:
        """None when the forward runs the operations of its traced graph and reads no moving value
        into Python (:func:`mli_theory.path.fidelity.line_trace_differs`, computed once); else the
        reason, which every proof about the traced graph must give as its own."""
        if self._traced is None:
            why = line_trace_differs(self.line, self.data.x, self.bn, self.batch_size)
            self._traced = (None if why is None else f"the certified model (the traced graph) {MEASURED_DIFFERS}: {why}",)
        return self._traced[0]

    def consistency(self) -> str | None:
        """None when the forward runs what its trace shows (:func:`mli_theory.path.fidelity.line_trace_differs`),
        the measured curve is a function of α and its dtype curve agrees with float64;
        else the reason. One interior α is evaluated twice afresh (a random re-estimation pass, active
        dropout or a forward that keeps state makes the evaluations differ)."""
        traced = self.trace_fidelity()
        if traced is not None:  # what runs differs from what is traced: no comparison of values can settle it
            return traced
        probe = 0.5
        if self.curve is not None and len(self.curve.alphas) > 2:
            probe = min(self.curve.alphas[1:-1], key=lambda a: abs(a - 0.5))
        self._ensure64()
        first, second = _measure(self._line64, self._data64, [probe, probe], self.bn, self.batch_size)  # type: ignore[arg-type]
        self._cache.setdefault(probe, first)
        if abs(first - second) > 2 * self.slack(probe, first):
            return (
                f"the certified model {MEASURED_DIFFERS}: that curve is not a function of α: two float64 evaluations at α = {probe:.6g} give "
                f"{first:.10g} and {second:.10g} (random operations in the evaluation or re-estimation pass, or a "
                "forward that keeps state)"
            )
        dtype_value = self._dtype_value(probe)
        if dtype_value is not None:
            m = self.losses([probe])[0]
            allowed = (CURVE_REL + 64 * _eps(self.line.dtype)) * abs(m) + self._fit_floor(m, CURVE_REL) + self.slack(probe, m)
            if abs(dtype_value - m) > allowed:
                return (
                    f"the certified model {MEASURED_DIFFERS}: the check's curve gives L({probe:.6g}) = {dtype_value:.10g}, a float64 re-evaluation of the same "
                    f"computation {m:.10g} (the computation changed between evaluations, or is random)"
                )
        return None

    def witness(self, a: float, b: float, proven: float, tol: float) -> str | None:
        """None when the measured computation reproduces a proven rise L(b) − L(a) ≥ ``proven`` > tol
        (up to :meth:`slack`); else the reason."""
        la, lb = self.losses([a, b])
        s = self.slack(a, la) + self.slack(b, lb)
        if lb - la < proven - s:
            return (
                f"the certified model {MEASURED_DIFFERS}: the measured computation does not reproduce the witness: proven L({b:.6g}) − L({a:.6g}) ≥ {proven:.6g} "
                f"but the measured computation gives {lb - la:.6g}"
            )
        return None

    def contradicts(self, tol: float) -> str | None:
        """For a ``monotone`` verdict: the reason when the grid's own largest rise, re-evaluated in
        float64, exceeds ``tol`` beyond rounding (None otherwise)."""
        where = None if self.curve is None else grid_rise(self.curve)
        if where is None:
            return None
        a, b = where
        la, lb = self.losses([a, b])
        if lb - la > tol + self.slack(a, la) + self.slack(b, lb):
            return (
                f"the certified model {MEASURED_DIFFERS}: a monotone verdict at tol {tol:g} is contradicted by the grid: L({b:.6g}) − "
                f"L({a:.6g}) = {lb - la:.6g} in float64"
            )
        # the check's own curve, in its dtype, is what a caller measures: a rise there beyond that dtype's
        # rounding which float64 does not show is a computation other than the one certified (an overflow
        # in float32, a forward that asks its input's dtype)
        if self.line.dtype != torch.float64:
            ma, mb = self._dtype_value(a), self._dtype_value(b)
            top = max(abs(v) for v in self.curve.losses if math.isfinite(v))
            rounding = DTYPE_ROUNDING_EPS * _eps(self.line.dtype) * top
            if ma is not None and mb is not None and mb - ma > tol + rounding:
                kind = str(self.line.dtype).replace("torch.", "")
                return (
                    f"the certified model {MEASURED_DIFFERS}: the check's {kind} curve rises by {mb - ma:.6g} on "
                    f"[{a:.6g}, {b:.6g}], beyond {kind} rounding ({rounding:.2g}) and tol, where a float64 re-evaluation "
                    f"gives {lb - la:.6g}: the evaluation in {kind} is not the computation certified (an overflow, or a "
                    "forward that depends on its dtype)"
                )
        return None


# a rise of the check's own curve below this many epsilons of its dtype times its largest loss may be
# that evaluation's rounding (as ``check`` reports it)
DTYPE_ROUNDING_EPS = 64


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def _measure(line: Line, data: Dataset, alphas: list[float], bn: BNPolicy, batch_size: int | None) -> list[float]:
    """L at ``alphas`` by :func:`loss_curve` (it needs two points: a single α is evaluated twice)."""
    pts = alphas if len(alphas) >= 2 else alphas * 2
    got = loss_curve(line, data, pts, bn=bn, batch_size=batch_size).losses
    return list(got[: len(alphas)])
