"""Certificates: verdicts on the whole interval α ∈ [0, 1], never a grid result in disguise.

Order of methods:

1. Exact polynomial decision (:mod:`mli_theory.exact`) when the model is a Sequential of Linear
   layers (``linear``, ``deep_linear`` specs or equivalent) under MSE.
2. A sufficient condition whose evaluation is *proven* (``Condition.proven``), giving "monotone".
3. Otherwise "unknown", with the reason.
"""

from __future__ import annotations

from typing import Sequence

from .data import Dataset
from .exact import decide_line, linear_layers
from .path import Line
from .report import Certificate, Condition


def certify(
    line: Line,
    data: Dataset,
    *,
    tol: float = 0.0,
    conditions: Sequence[Condition] = (),
    budget_s: float = 30.0,
) -> Certificate:
    """Prove monotonicity or non-monotonicity of the loss on all of [0, 1], or say "unknown".

    Args:
        line: the path.
        data: training data (on the line's device and dtype).
        tol: "monotone" means sup_{a<b} L(b) − L(a) ≤ tol; "non_monotone" means a witness with a
            rise > tol.
        conditions: evaluated sufficient conditions; only ``proven`` ones are used.
        budget_s: seconds the exact method may take.
    """
    if data.loss == "mse" and linear_layers(line) is not None:
        verdict, _ = decide_line(line, data, tol=tol, budget_s=budget_s)
        if verdict.status == "unknown":
            return Certificate.unknown(f"exact method: {verdict.reason}")
        return Certificate(verdict.status, "exact_polynomial", verdict.rise, verdict.where, verdict.reason)
    for cond in conditions:
        if cond.proven and cond.holds:
            return Certificate("monotone", f"condition:{cond.name}", 0.0, None, cond.statement)
    if data.loss != "mse":
        return Certificate.unknown("no proof method for cross-entropy; the grid result is evidence only")
    if conditions:
        return Certificate.unknown(
            "not a polynomial path, and no sufficient condition could be proven (grid evaluations are not proofs)"
        )
    return Certificate.unknown("not a polynomial path (linear / deep_linear); no proven condition available")
