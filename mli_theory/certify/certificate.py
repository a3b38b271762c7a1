"""Certificates: verdicts on the whole interval α ∈ [0, 1], never a grid result in disguise.

A path along which nothing moves (θ0 = θT in every affine entry) has a constant loss:
``monotone`` at once (method ``constant_path``). Otherwise what can be proven depends on what the
model computes, decided by tracing it
(:attr:`mli_theory.path.Line.structure`), never by its class or spec string:

* :attr:`~mli_theory.path.PathKind.POLYNOMIAL` under MSE: the loss polynomial is computed exactly
  and L′ is decided on [0, 1] (:mod:`mli_theory.exact.decide`): "monotone" or "non_monotone" with
  a witness, or "unknown" if the budget runs out. The sufficient conditions are then proven on
  the same exact output polynomial with the budget that is left
  (:func:`mli_theory.exact.prove_conditions`); they explain *why* a path is monotone and never
  overrule the decision, which is complete for these paths (a condition that proves L′ ≤ 0 means
  the decision already answered "monotone").
* every other model the enclosure interpreter supports (ReLU/LeakyReLU/ReLU6/Hardtanh/clamp/max pooling/tanh/sigmoid/GELU/softplus
  MLPs and CNNs, residual additions, average pooling, BatchNorm with frozen or interpolated
  statistics or statistics re-estimated in one pass over all the data), under MSE
  or cross-entropy, and polynomial paths under cross-entropy: L′ is enclosed on a partition of
  [0, 1] into cells, refined by bisection (:mod:`.partition`, :mod:`.enclosures`):
  "monotone" with a proven ``rise_bound`` ≤ tol, "non_monotone" with a witness whose rise is proven
  > tol, or "unknown" with the best proven bound and the undecided α-intervals;
* anything else (an operation without an enclosure rule, BatchNorm re-estimated in minibatches,
  an untraceable model): "unknown", naming the reason.

One deadline bounds all of it: the work stops within the budget plus the time of one indivisible
step (an integer matrix product, a Bernstein box).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..exact import EXACT_MAX_ENTRIES, BudgetExceeded, exact_fits, decide, deadline_after, expired, mse_loss_polynomial, output_polynomial, prove_conditions
from ..inputs.data import Dataset
from ..path import BNPolicy, Line, LossCurve, Motion, PathKind
from ..path.structure import _flattens_rows
from ..results import Certificate
from .partition import EnclosuresDisagree, Unsupported, decide_by_enclosures
from .validation import MEASURED_DIFFERS, Reference, validation_points


@dataclass(frozen=True)
class ProofOutcome:
    """What the proof work of one check produced.

    Attributes:
        certificate: the verdict on [0, 1].
        proven_conditions: name → True (proven) / False (disproven) / None (undecided) for the MSE
            conditions, when they were evaluated exactly; empty otherwise.
        notes: what was skipped or ran out of budget (for the result's warnings).
        seconds: time spent.
        reference: the float64 re-evaluation of the measured curve the verdict was validated
            against (its cache and float64 copies serve later evaluations along the same line).
    """

    certificate: Certificate
    proven_conditions: dict[str, bool | None] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    reference: Reference | None = field(default=None, repr=False, compare=False)


def certify(
    line: Line,
    data: Dataset,
    *,
    tol: float = 0.0,
    budget_s: float | None = 30.0,
    conditions: bool = True,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    curve: LossCurve | None = None,
) -> ProofOutcome:
    """Prove monotonicity or non-monotonicity of the loss on all of [0, 1], or say "unknown".

    Args:
        line: the path.
        data: training data (on the line's device and dtype).
        tol: "monotone" means sup_{a<b} L(b) − L(a) ≤ tol; "non_monotone" means a witness with a
            rise > tol.
        budget_s: seconds for all proof work (None: no limit).
        conditions: also prove the MSE sufficient conditions on polynomial paths (with the budget
            the decision leaves).
        bn: the BatchNorm policy of the curve being certified (what ``check`` evaluates). Under
            ``recompute`` the re-estimation pass itself is enclosed (one train-mode pass over all
            the data: the statistics are smooth functions of the enclosed activations).
        batch_size: the minibatch size of that re-estimation in the curve; only None (one batch of
            all the examples) is certified, anything smaller gives ``unknown`` with the reason.
        curve: the check's measured loss curve (its grid is where the certified model is validated,
            :mod:`.validation`; None: a few fixed α).

    Every verdict passes the differential validation of :mod:`.validation` first: the certifier's
    own values of L (exact, or enclosed) must reproduce the measured computation re-evaluated in
    float64 at the validation α, the measured curve must be a function of α, a witness must be
    reproduced by the measured computation and a ``monotone`` verdict must not be contradicted by
    the grid; anything else is ``unknown``, saying where the two differ.
    """
    t0 = time.perf_counter()
    deadline = deadline_after(budget_s)
    kind = line.structure.kind
    reference = Reference(line, data, BNPolicy(bn), batch_size, curve)

    def done(cert: Certificate, proven: dict[str, bool | None] | None = None, notes: tuple[str, ...] = ()) -> ProofOutcome:
        cert, withdrawn = _validated(cert, reference, tol)
        if cert.status == "unknown" and cert.reason and MEASURED_DIFFERS in cert.reason and not notes:
            notes = (f"no certificate: {cert.reason}",)
        if withdrawn:  # conditions proven on a model the measured curve contradicts prove nothing
            proven = None
        return ProofOutcome(cert, proven or {}, notes + withdrawn, round(time.perf_counter() - t0, 4), reference)

    try:
        inconsistent = reference.consistency()
    except Exception as exc:  # noqa: BLE001 - whatever stops the re-evaluation stops the certificate
        inconsistent = f"the measured curve could not be re-evaluated in float64 ({type(exc).__name__}: {str(exc)[:160]})"
    if inconsistent is not None:
        return ProofOutcome(Certificate.unknown(inconsistent), {}, (f"no certificate: {inconsistent}",), round(time.perf_counter() - t0, 4),
                            reference)
    if _constant(line, BNPolicy(bn)):
        return done(Certificate("monotone", "constant_path", 0.0, None,
                                "θ0 = θT in every entry that moves along the path, so L is constant on [0, 1]", rise_bound=0.0))
    if data.inputs_given_as is not None:
        return done(Certificate.unknown(
            f"the inputs x were given as {data.inputs_given_as} and are evaluated as float32/float64: a forward may compute "
            "otherwise on the inputs as given (integer wrapping, a branch on their dtype), so no certificate speaks for "
            "them; give float32 or float64 inputs"))
    fits = exact_fits(data.x)
    x = _rows(line, data.x) if kind == PathKind.POLYNOMIAL and data.loss == "mse" and fits else None
    if data.loss != "mse" or x is None:
        cert = _by_enclosures(line, data, tol, BNPolicy(bn), deadline, budget_s, batch_size, reference)
        if kind == PathKind.POLYNOMIAL and data.loss == "mse" and not fits:
            note = (f"the exact method was not tried: its integer arithmetic on all {data.n} examples' input values exceeds "
                    f"{EXACT_MAX_ENTRIES} (the enclosures decided instead)",)
            return _with_note(done(cert), note)
        return done(cert)
    try:
        z = output_polynomial(line.start, line.end, line.structure.linear, x, deadline)
        poly = mse_loss_polynomial(z, data.y, deadline)
    except BudgetExceeded:
        return done(Certificate.unknown(f"the exact method ran past the proof budget of {budget_s:g} s"))
    # the certified model (the product of the traced nn.Linear weights) against the measured curve
    points = validation_points(curve)
    exact = [float(poly.exact(a)) for a in points]
    differs = reference.compare(points, [(v, v) for v in exact])
    if differs is not None:
        return done(Certificate.unknown(differs))
    try:
        verdict = decide(poly, tol, deadline)
    except BudgetExceeded:
        return done(Certificate.unknown(f"the exact method ran past the proof budget of {budget_s:g} s"))
    if verdict.status == "unknown":
        cert = Certificate.unknown(f"exact method: {verdict.reason}")
    else:
        bound = verdict.rise if verdict.status == "monotone" else None
        cert = Certificate(verdict.status, "exact_polynomial", verdict.rise, verdict.where, verdict.reason, rise_bound=bound)
    if not conditions:
        return done(cert)
    if expired(deadline):
        return done(cert, None, ("the proof budget ran out before the conditions could be proven",))
    try:
        proven = prove_conditions(z, data.y, deadline)
    except BudgetExceeded:
        return done(cert, None, ("the proof budget ran out while proving the conditions (they stay grid evidence)",))
    return done(cert, proven)


def _with_note(outcome: ProofOutcome, note: tuple[str, ...]) -> ProofOutcome:
    return ProofOutcome(outcome.certificate, outcome.proven_conditions, note + outcome.notes, outcome.seconds, outcome.reference)


def _rows(line: Line, x: torch.Tensor) -> torch.Tensor | None:
    """The inputs as the (n, d) rows the chain of Linear layers reads: ``x`` itself when 2-D, its
    flattened rows when the chain starts with ``nn.Flatten()``; None otherwise. Streamed inputs
    are read whole: exact arithmetic on every example needs them all (as exact integers, more)."""
    if not isinstance(x, torch.Tensor):
        x = x[:]
    if x.dim() == 2:
        return x
    chain = line.structure.chain or ()
    first = line.shell.get_submodule(chain[0]) if chain else None
    if first is not None and _flattens_rows(first) and x.dim() > 2:
        return x.flatten(1)
    return None


def _constant(line: Line, bn: BNPolicy) -> bool:
    """Whether nothing moves along the path: every affine entry is equal at both ends (BatchNorm
    statistics re-estimated at every α are then re-estimated from the same parameters, and the
    re-estimation was checked to be deterministic), so θ(α) and L(α) do not depend on α."""
    return all(torch.equal(line.start[k], line.end[k]) for k, m in line.motions(bn).items() if m == Motion.AFFINE)


def _validated(cert: Certificate, reference: Reference, tol: float) -> tuple[Certificate, tuple[str, ...]]:
    """``cert``, or ``unknown`` with a warning when the measured computation does not reproduce its
    witness or contradicts its ``monotone`` verdict (:mod:`.validation`)."""
    try:
        if cert.status == "non_monotone" and cert.where is not None:
            why = reference.witness(cert.where[0], cert.where[1], float(cert.rise or 0.0), tol)
        elif cert.status == "monotone":
            why = reference.contradicts(tol)
        else:
            return cert, ()
    except Exception as exc:  # noqa: BLE001 - a verdict that cannot be validated is not given
        why = f"the measured curve could not be re-evaluated in float64 to validate the verdict ({type(exc).__name__}: {str(exc)[:160]})"
    if why is None:
        return cert, ()
    return Certificate.unknown(f"{cert.status} withdrawn: {why}"), (f"a {cert.status} verdict was withdrawn: {why}",)


def _by_enclosures(line: Line, data: Dataset, tol: float, bn: BNPolicy, deadline: float | None, budget_s: float | None,
                   batch_size: int | None = None, reference: Reference | None = None) -> Certificate:
    """The enclosure method's verdict as a certificate (``unknown`` naming why when unsupported)."""
    try:
        v = decide_by_enclosures(line, data, tol=tol, bn=bn, deadline=deadline, batch_size=batch_size, reference=reference)
    except Unsupported as exc:
        return Certificate.unknown(f"no proof method for this model: {exc}; the grid result is evidence only")
    except BudgetExceeded:
        return Certificate.unknown(f"the enclosure method ran past the proof budget of {budget_s:g} s", cells=0, undecided=((0.0, 1.0),))
    except EnclosuresDisagree as exc:  # an internal check failed: no verdict rests on it
        return Certificate.unknown(f"an internal check of the enclosure method failed, so no verdict is given (please report): {str(exc)[:300]}")
    extra = {"rise_bound": v.rise_bound, "cells": v.cells, "undecided": v.undecided}
    if v.convex_end is not None:
        extra["convex_end"] = v.convex_end
    if v.status == "unknown":
        return Certificate.unknown(f"enclosure method: {v.reason}", **extra)
    rise = v.rise if v.status == "non_monotone" else v.rise_bound
    return Certificate(v.status, "enclosure_bisection", rise, v.where, v.reason, **extra)
