"""Result types shared by the checker, the certifier and the CLI (all frozen dataclasses).

This module sits at the bottom of the package: it imports nothing from it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["monotone", "non_monotone", "unknown"]


@dataclass(frozen=True)
class Condition:
    """One sufficient condition for MLI, evaluated on a concrete path.

    Proof and evidence never share a field: ``holds`` is a verdict about every α in [0, 1] and is
    set only when it was *proven* (``proven`` = True); what the α grid showed is ``on_grid``.

    Attributes:
        name: short identifier, e.g. ``acute_tangents``.
        holds: True (proven to hold on all of [0, 1]) or False (proven to fail: disproven exactly,
            or by a proven rise of the loss); None when not proven either way (checked on the grid
            alone, undecided within the proof budget, or not applicable).
        value: the measured quantity the condition compares (on the grid).
        threshold: the bound ``value`` is compared with.
        statement: the condition in words, including how it was evaluated ("proven exactly",
            "on grid: …, evidence, not proof", …).
        proven: True exactly when ``holds`` is not None (a proof either way, exact arithmetic or
            proven bounds); only a proven condition may back a certificate.
        applicable: False when the traced model does not provably satisfy the result's hypotheses
            (a C² result on a ReLU path, jets with fixed BatchNorm statistics for a curve whose
            statistics move with α, …); ``holds`` and ``on_grid`` are then None and ``reason``
            says which hypothesis failed. A condition that is not applicable never holds.
        reason: why it is not applicable, why the grid result is false (a slope L′(αᵢ) > 0, a
            measured rise), or why it was disproven (a proven rise); None otherwise.
        on_grid: what the evaluation at the α grid points found: True (the inequalities, and
            L′(αᵢ) ≤ 0, hold at every grid point), False (they fail at some grid point, or the
            measured loss rises), None (not evaluated on the grid). Evidence, never a proof: a
            condition can hold on the grid and fail between grid points.
    """

    name: str
    holds: bool | None
    value: float | None
    threshold: float | None
    statement: str
    proven: bool = False
    applicable: bool = True
    reason: str | None = None
    on_grid: bool | None = None

    def __post_init__(self) -> None:
        if self.holds is not None and not isinstance(self.holds, bool):
            raise ValueError(f"condition {self.name!r}: holds must be True, False or None, got {self.holds!r}")
        if self.on_grid is not None and not isinstance(self.on_grid, bool):
            raise ValueError(f"condition {self.name!r}: on_grid must be True, False or None, got {self.on_grid!r}")
        if self.holds is not None and not self.proven:
            raise ValueError(
                f"condition {self.name!r}: holds is a verdict on all of [0, 1] and needs a proof (proven=True); "
                "a grid result goes in on_grid"
            )
        if self.proven and self.holds is None:
            raise ValueError(f"condition {self.name!r}: proven=True needs a verdict (holds True or False)")
        if not self.applicable and (self.holds is not None or self.on_grid is not None):
            raise ValueError(f"condition {self.name!r}: not applicable, so holds and on_grid must be None")


@dataclass(frozen=True)
class Certificate:
    """A verdict on the whole interval α ∈ [0, 1], or "unknown".

    Attributes:
        status: ``monotone`` (proven: sup over a<b of L(b) − L(a) ≤ tol), ``non_monotone`` (proven:
            a witness a < b with L(b) − L(a) = rise > tol), or ``unknown``.
        method: how it was proven (``exact_polynomial``, ``enclosure_bisection``,
            ``condition:<name>``), None if unknown.
        rise: for ``non_monotone`` the rise L(b) − L(a) of the witness: exact for
            ``exact_polynomial``; for ``enclosure_bisection`` the floating-point value at the witness,
            which is evidence of the size only. The proof there is the rigorous lower bound on the
            rise quoted in ``reason`` (always > tol), and it can be smaller than this value. For
            ``monotone``: a proven upper bound on the largest rise. None if unknown.
        where: the witness [a, b] for ``non_monotone``, else None.
        reason: a sentence on why (or why not).
        rise_bound: a proven upper bound on the largest rise sup_{a<b} L(b) − L(a) on [0, 1]
            (certificates from bounds; from the exact method for ``monotone``), or None.
        cells: how many α-cells the enclosure method evaluated (None for other methods).
        undecided: α-intervals where the enclosure method could not prove L′ ≤ 0 before the
            budget ran out (empty when decided; None for other methods).
        convex_end: c when the convex-end certificate proved L′ ≤ 0 on [c, 1] from L″ ≥ 0 there
            and L′(1) ≤ 0 (or bounded the rise there by L′(1)²/(2·min L″)); None when not used.
    """

    status: Status
    method: str | None = None
    rise: float | None = None
    where: tuple[float, float] | None = None
    reason: str = ""
    rise_bound: float | None = None
    cells: int | None = None
    undecided: tuple[tuple[float, float], ...] | None = None
    convex_end: float | None = None

    @staticmethod
    def unknown(reason: str, **extra: Any) -> "Certificate":
        return Certificate("unknown", None, None, None, reason, **extra)


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
        warnings: optional work that failed or fell short (geometry, conditions, proofs, plots),
            one sentence each; the verdicts above are unaffected.
        info: run facts (arch, data, device, dtype, BatchNorm policy, example count, timings,
            Gauss-length resolution and error estimate).
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
    certificate: Certificate = field(default_factory=lambda: Certificate.unknown("not requested (certify=False)"))
    conditions: tuple[Condition, ...] = ()
    warnings: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite floats become None)."""
        return json_safe(asdict(self))

    def to_text(self) -> str:
        """The human-readable report (what ``mli-theory check`` prints without ``--json``)."""
        return _text(self)


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None, recursively (JSON has no NaN or inf)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _fmt(v: Any, nd: int = 6) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return str(v)


def _text(r: CheckResult) -> str:
    info = r.info
    gauss = _fmt(r.gauss_length)
    if r.gauss_length is not None and info.get("gauss_converged") is False:
        err = info.get("gauss_error")
        gauss += f"   (NOT converged: error estimate {_fmt(err, 3)} on {info.get('gauss_alphas')} α)"
    elif r.gauss_length is not None and info.get("gauss_error") is not None:
        gauss += f"   (± {_fmt(info.get('gauss_error'), 2)} estimated, {info.get('gauss_alphas')} α)"
    if r.logit_linearity is None and r.gauss_length is not None:
        lin = "n/a (one output per example: every output path lies on its chord)"
    else:
        lin = _fmt(r.logit_linearity)
    lines = [
        f"MLI check  ({info.get('arch', '?')} on {info.get('data', '?')}, n={info.get('n_examples', '?')}, "
        f"{info.get('dtype', '?')}, {info.get('device', '?')})",
        "",
        f"  loss ({r.loss})          L(0) = {_fmt(r.initial_loss)}   L(1) = {_fmt(r.final_loss)}",
        f"  alpha points           {len(r.alphas)}",
        f"  max rise on grid       {_fmt(r.max_rise)}"
        + (f"   between α={r.rise_where[0]:.4g} and α={r.rise_where[1]:.4g}" if r.rise_where else ""),
        f"  tolerance              {_fmt(r.tolerance)}",
        f"  monotone on grid       {_fmt(r.monotone_on_grid)}",
    ]
    lines += [
        f"  distance ‖θT−θ0‖       {_fmt(r.distance)}   (normalised {_fmt(r.normalized_distance)})",
        f"  Gauss length (mean)    {gauss}",
        f"  logit non-linearity    {lin}",
    ]
    c = r.certificate
    cert = f"  certificate            {c.status}"
    if c.method:
        cert += f" ({c.method})"
    if c.where:
        cert += f": L({c.where[0]:.6g}) → L({c.where[1]:.6g}) rises by {c.rise:.6g}"
    elif c.status == "monotone" and c.rise is not None:
        cert += f": largest rise ≤ {c.rise:.3g}"
    elif c.status == "unknown" and c.rise_bound is not None:
        cert += f" (proven: largest rise ≤ {c.rise_bound:.3g})"
    if c.cells:
        cert += f"   [{c.cells} cells]"
    lines.append(cert)
    if c.undecided:
        spans = ", ".join(f"[{a:.4g}, {b:.4g}]" for a, b in c.undecided[:4]) + (" …" if len(c.undecided) > 4 else "")
        lines.append(f"                         undecided α-intervals: {spans}")
    if c.reason:
        lines.append(f"                         {c.reason}")
    if r.conditions:
        lines += [
            "",
            "  sufficient conditions (MSE)   holds: proven on all of [0, 1];  on grid: at the α grid points only (evidence)",
            f"    {'name':<32} {'holds':<6} {'on grid':<8} {'value':>12} {'threshold':>10}  status",
        ]
        for cond in r.conditions:
            if not cond.applicable:
                status = "not applicable"
            elif cond.holds is not None:
                status = "proven" if cond.holds else "disproven"
            else:
                status = "on grid only (not proven)" if cond.on_grid is not None else "undecided"
            holds = _fmt(cond.holds) if cond.applicable else "n/a"
            grid = _fmt(cond.on_grid) if cond.applicable else "n/a"
            lines.append(f"    {cond.name:<32} {holds:<6} {grid:<8} {_fmt(cond.value, 4):>12} {_fmt(cond.threshold, 4):>10}  {status}")
            if cond.reason:
                lines.append(f"      ({cond.reason})")
    if r.warnings:
        lines += ["", "  warnings"] + [f"    - {w}" for w in r.warnings]
    return "\n".join(lines)
