"""Statistics of a loss curve sampled along the MLI line: separate rises, the largest interior bump
and the rise at the end.

For a curve L_0, …, L_{K−1} on an increasing α grid (K ≥ 1):

* **Max rise** Δ = max_{i<j} (L_j − L_i)⁺ (GUIDE §1; :func:`mli_theory.path.max_rise`).
* **Interior bump** B = max over interior peaks k (0 < k < K−1 with L_{k+1} < L_k, i.e. the curve
  turns down right after k) of (L_k − min_{i<k} L_i)⁺: the largest rise that *ends at a peak
  strictly inside the grid*. This is the quantity a bump-based computation (such as the reference
  code of Lucas et al. 2021, which looks for bumps in the curve) can see.
* **End rise** E = (L_{K−1} − min_{i<K−1} L_i)⁺: the largest rise that ends at the last grid point,
  which a bump-based computation misses (GUIDE §1).
* Identity: **Δ = max(B, E)**. Proof: take an optimal pair i < j with j as large as possible among
  optimal pairs. If j = K−1, Δ = E. Otherwise L_{j+1} < L_j (else (i, j+1) would be optimal with a
  larger j), so j is an interior peak and Δ ≤ B; B ≤ Δ and E ≤ Δ always.
* **Final run**: the last maximal run of non-decreasing steps, L_s ≤ … ≤ L_{K−1}; its rise
  L_{K−1} − L_s and its length K−1−s steps ("a rise in the last steps"; 0 when the last step
  decreases).
* **Separate rises** at tolerance τ ≥ 0: a scan with hysteresis τ. Starting from a trough (running
  minimum), a rise begins when the curve exceeds the trough by more than τ; it continues through
  dips of at most τ below its running peak and ends when the curve falls more than τ below that peak;
  the next trough search starts there. Each rise is reported as (trough index, peak index, height
  = peak − trough > τ). There is at least one rise iff Δ > τ, and every height is ≤ Δ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..path.monotonicity import max_rise


@dataclass(frozen=True)
class RiseInterval:
    """One separate rise of a sampled curve.

    Attributes:
        start: index of the trough it starts from.
        end: index of its peak.
        height: L[end] − L[start] (> the tolerance).
    """

    start: int
    end: int
    height: float


@dataclass(frozen=True)
class PathStats:
    """Rise statistics of a sampled loss curve (definitions in the module docstring).

    Attributes:
        n_rises: number of separate rises at ``tolerance``.
        rises: the rises, in order.
        interior_bump: B, the largest rise ending at an interior peak (0.0 if none).
        interior_bump_where: (i, k) indices attaining B, or None when B = 0.
        end_rise: E, the largest rise ending at the last point (0.0 if none).
        end_rise_where: (i, K−1) attaining E, or None when E = 0.
        final_run_rise: rise of the final non-decreasing run (0.0 if the last step decreases).
        final_run_steps: its number of grid steps.
        max_rise: Δ = max(B, E).
        tolerance: τ used for ``n_rises``.
        alphas: the grid (None if not given); indices above refer to it.
    """

    n_rises: int
    rises: tuple[RiseInterval, ...]
    interior_bump: float
    interior_bump_where: tuple[int, int] | None
    end_rise: float
    end_rise_where: tuple[int, int] | None
    final_run_rise: float
    final_run_steps: int
    max_rise: float
    tolerance: float
    alphas: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        a = self.alphas

        def at(pair: tuple[int, int] | None) -> list[float] | None:
            return [a[pair[0]], a[pair[1]]] if (pair is not None and a is not None) else None

        return {
            "n_rises": self.n_rises,
            "rises": [
                {"start": r.start, "end": r.end, "height": r.height, **({"alphas": [a[r.start], a[r.end]]} if a else {})}
                for r in self.rises
            ],
            "interior_bump": self.interior_bump,
            "interior_bump_where": list(self.interior_bump_where) if self.interior_bump_where else None,
            "interior_bump_alphas": at(self.interior_bump_where),
            "end_rise": self.end_rise,
            "end_rise_where": list(self.end_rise_where) if self.end_rise_where else None,
            "end_rise_alphas": at(self.end_rise_where),
            "final_run_rise": self.final_run_rise,
            "final_run_steps": self.final_run_steps,
            "max_rise": self.max_rise,
            "tolerance": self.tolerance,
        }


def separate_rises(values: Sequence[float], tol: float = 0.0) -> tuple[RiseInterval, ...]:
    """The separate rises of ``values`` at tolerance ``tol`` (hysteresis scan, module docstring).

    >>> [(r.start, r.end, r.height) for r in separate_rises([3, 1, 2, 1.5, 4, 0, 1])]
    [(1, 2, 1.0), (3, 4, 2.5), (5, 6, 1.0)]
    >>> [(r.start, r.end) for r in separate_rises([3, 1, 2, 1.5, 4, 0, 1], tol=0.6)]
    [(1, 4), (5, 6)]
    """
    v = [float(x) for x in values]
    out: list[RiseInterval] = []
    if not v:
        return ()
    rising = False
    trough, ti = v[0], 0
    peak, pk = v[0], 0
    for k in range(1, len(v)):
        x = v[k]
        if not rising:
            if x < trough:
                trough, ti = x, k
            elif x - trough > tol:
                rising, peak, pk = True, x, k
        else:
            if x >= peak:
                peak, pk = x, k
            elif peak - x > tol:
                out.append(RiseInterval(ti, pk, peak - trough))
                rising, trough, ti = False, x, k
    if rising:
        out.append(RiseInterval(ti, pk, peak - trough))
    return tuple(out)


def path_statistics(losses: Sequence[float], tol: float = 0.0, alphas: Sequence[float] | None = None) -> PathStats:
    """Rise statistics of a loss curve (see the module docstring).

    Args:
        losses: L at increasing α (finite values).
        tol: τ ≥ 0 for the count of separate rises.
        alphas: the α grid (same length), recorded for reporting.

    >>> s = path_statistics([3.0, 2.0, 2.5, 1.0, 1.2])
    >>> (s.interior_bump, round(s.end_rise, 12), s.max_rise, s.n_rises)
    (0.5, 0.2, 0.5, 2)
    >>> s = path_statistics([3.0, 2.0, 1.0, 1.5])      # a rise only in the last step
    >>> (s.interior_bump, s.end_rise, s.max_rise, s.final_run_steps)
    (0.0, 0.5, 0.5, 1)
    """
    v = [float(x) for x in losses]
    if any(math.isnan(x) for x in v):
        raise ValueError("path_statistics: NaN in the curve")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"path_statistics: tol={tol!r} must be a finite number >= 0")
    if alphas is not None and len(alphas) != len(v):
        raise ValueError("path_statistics: alphas and losses differ in length")
    K = len(v)
    bump, bump_where = 0.0, None
    end, end_where = 0.0, None
    if K >= 2:
        lo, lo_i = v[0], 0
        for k in range(1, K):
            if k < K - 1 and v[k + 1] < v[k] and v[k] - lo > bump:
                bump, bump_where = v[k] - lo, (lo_i, k)
            if k == K - 1 and v[k] - lo > 0.0:
                end, end_where = v[k] - lo, (lo_i, k)
            if v[k] < lo:
                lo, lo_i = v[k], k
    s = K - 1
    while s > 0 and v[s - 1] <= v[s]:
        s -= 1
    final_rise = v[K - 1] - v[s] if K else 0.0
    rises = separate_rises(v, tol)
    delta = max_rise(v).value
    return PathStats(
        n_rises=len(rises),
        rises=rises,
        interior_bump=bump,
        interior_bump_where=bump_where,
        end_rise=end,
        end_rise_where=end_where,
        final_run_rise=final_rise,
        final_run_steps=(K - 1 - s) if K else 0,
        max_rise=delta,
        tolerance=float(tol),
        alphas=tuple(float(a) for a in alphas) if alphas is not None else None,
    )
