"""Result types shared by the checker, the certifier and the CLI (all frozen dataclasses)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["monotone", "non_monotone", "unknown"]


@dataclass(frozen=True)
class Condition:
    """One sufficient condition for MLI, evaluated on a concrete path.

    Attributes:
        name: short identifier, e.g. ``acute_tangents``.
        holds: whether it holds (None when it does not apply to this model or loss).
        value: the measured quantity the condition compares.
        threshold: the bound ``value`` is compared with.
        statement: the condition in words, including how it was evaluated (exactly, with a proven
            error bound, or on a grid, which is evidence, not proof).
        proven: True when ``holds`` was established rigorously (exact arithmetic or proven bounds);
            only a proven condition may back a certificate.
    """

    name: str
    holds: bool | None
    value: float | None
    threshold: float | None
    statement: str
    proven: bool = False


@dataclass(frozen=True)
class Certificate:
    """A verdict on the whole interval α ∈ [0, 1], or "unknown".

    Attributes:
        status: ``monotone`` (proven: sup over a<b of L(b) − L(a) ≤ tol), ``non_monotone`` (proven:
            a witness a < b with L(b) − L(a) = rise > tol), or ``unknown``.
        method: how it was proven (``exact_polynomial``, ``condition:<name>``), None if unknown.
        rise: for ``non_monotone`` the exact rise of the witness; for ``monotone`` a proven upper
            bound on the largest rise; None if unknown.
        where: the witness [a, b] for ``non_monotone``, else None.
        reason: a sentence on why (or why not).
    """

    status: Status
    method: str | None = None
    rise: float | None = None
    where: tuple[float, float] | None = None
    reason: str = ""

    @staticmethod
    def unknown(reason: str) -> "Certificate":
        return Certificate("unknown", None, None, None, reason)


@dataclass(frozen=True)
class CheckResult:
    """Everything ``mli-theory check`` reports (the ``--json`` object).

    Attributes:
        alphas: the α grid.
        losses: mean training loss at each α.
        accuracies: accuracy at each α (``ce`` only).
        loss: ``mse`` or ``ce``.
        max_rise: Δ on the grid, max over i<j of (L_j − L_i)⁺.
        rise_where: [α_i, α_j] of the worst grid rise, or None.
        tolerance: the tolerance for "monotone".
        monotone_on_grid: Δ ≤ tolerance.
        initial_loss, final_loss: L(0) and L(1).
        distance: ‖θT − θ0‖ over the trainable parameters.
        normalized_distance: ‖θT − θ0‖ / ‖θ0‖ (None when θ0 = 0).
        gauss_length: mean over examples of the total turning of the output path (None if not computed).
        logit_linearity: ∫ D(α) dα (GUIDE §1), None if not computed.
        certificate: the verdict on [0, 1].
        conditions: sufficient conditions with their margins.
        info: run facts (arch, data, device, dtype, BatchNorm policy, example count, timings).
    """

    alphas: tuple[float, ...]
    losses: tuple[float, ...]
    accuracies: tuple[float, ...] | None
    loss: str
    max_rise: float
    rise_where: tuple[float, float] | None
    tolerance: float
    monotone_on_grid: bool
    initial_loss: float
    final_loss: float
    distance: float
    normalized_distance: float | None
    gauss_length: float | None = None
    logit_linearity: float | None = None
    certificate: Certificate = field(default_factory=lambda: Certificate.unknown("not requested (use --certify)"))
    conditions: tuple[Condition, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite floats become None)."""
        return _json_safe(asdict(self))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
