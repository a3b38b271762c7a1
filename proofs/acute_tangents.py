"""Proof: acute tangent cone and tangents obtuse to r imply a non-increasing loss."""

import numpy as np
from _common import exit_with, random_poly_curve, run

from mli_theory.theory.symbolic import acute_tangents


def _curves_meeting_the_assumptions(rng, grid, tries: int = 600):
    """Random polynomial curves in R³ whose tangents are pairwise acute and obtuse to r (on ``grid``)."""
    for _ in range(tries):
        z, dz, _ = random_poly_curve(rng, 3, 3, scale=0.6)
        y = z(np.array([1.0]))[0] + rng.normal(size=3) * 0.3
        v = dz(grid)
        r = z(np.array([1.0]))[0] - y
        if (v @ v.T).min() < 0 or (v @ r).max() > 0:
            continue
        yield z, dz, y, r


def condition_implies_decrease() -> bool:
    rng = np.random.default_rng(3)
    grid = np.linspace(0, 1, 801)
    seen = 0
    for z, dz, y, r in _curves_meeting_the_assumptions(rng, grid):
        seen += 1
        L = ((z(grid) - y) ** 2).sum(1)
        if np.any(np.diff(L) > 1e-12 * L.max()):
            return False
    return seen >= 20


def sign_bookkeeping() -> bool:
    """On random curves meeting the assumptions: n·L′ = −∫_α^1 P ds + Q with ∫P ≥ 0 and Q ≤ 0.

    L′ by central differences of L, ∫_α^1 P ds by Gauss–Legendre quadrature (exact for these
    polynomial integrands), Q = ⟨z′(α), r⟩: the checked identity and the two signs the argument
    step uses, term by term.
    """
    rng = np.random.default_rng(6)
    grid = np.linspace(0, 1, 201)
    xg, wg = np.polynomial.legendre.leggauss(8)
    seen, n, h = 0, 3, 1e-5
    for z, dz, y, r in _curves_meeting_the_assumptions(rng, grid):
        seen += 1
        for a in rng.uniform(0.0, 1.0, 5):
            sq = a + (1 - a) * (xg + 1) / 2
            va = dz(np.array([a]))[0]
            p_int = (dz(sq) @ va) @ (wg * (1 - a) / 2)
            q = va @ r
            L = lambda t: ((z(np.array([t]))[0] - y) ** 2).sum() / (2 * n)  # noqa: E731
            nLp = n * (L(a + h) - L(a - h)) / (2 * h)
            if p_int < -1e-12 or q > 1e-12 or abs(nLp - (-p_int + q)) > 1e-6 * (1 + abs(nLp)):
                return False
    return seen >= 20


if __name__ == "__main__":
    exit_with(
        run(
            acute_tangents(),
            {
                "condition ⇒ non-increasing loss (random curves with r ≠ 0)": condition_implies_decrease,
                "n·L′ = −∫P + Q with ∫P ≥ 0, Q ≤ 0 under the assumptions (quadrature, random α)": sign_bookkeeping,
            },
        )
    )
