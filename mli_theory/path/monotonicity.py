"""Monotonicity of a sampled loss curve: the largest rise anywhere along the grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Rise:
    """The largest increase of a sequence.

    Attributes:
        value: Δ = max over i < j of (L[j] − L[i])⁺; 0.0 for a non-increasing sequence.
        start: index i of the worst rise (None when Δ = 0).
        end: index j of the worst rise (None when Δ = 0).
    """

    value: float
    start: int | None
    end: int | None


def max_rise(values: Sequence[float]) -> Rise:
    """Δ = max_{i<j} (L_j − L_i)⁺ in one pass, keeping the running minimum.

    Unlike a bump-based computation, a rise that happens only in the final step counts.

    >>> max_rise([3.0, 2.0, 1.0, 1.5])
    Rise(value=0.5, start=2, end=3)
    >>> max_rise([3.0, 2.0, 2.0]).value
    0.0
    """
    vals = [float(v) for v in values]
    if any(math.isnan(v) for v in vals):
        raise ValueError("max_rise: NaN in the sequence")
    best, bi, bj = 0.0, None, None
    if not vals:
        return Rise(0.0, None, None)
    lo, lo_i = vals[0], 0
    for j in range(1, len(vals)):
        v = vals[j]
        if v - lo > best:
            best, bi, bj = v - lo, lo_i, j
        if v < lo:
            lo, lo_i = v, j
    return Rise(best, bi, bj)
