"""Proof: acute tangent cone and tangents obtuse to r imply a non-increasing loss."""

import numpy as np
from _common import exit_with, random_poly_curve, run

from mli_theory.theory.symbolic import acute_tangents


def condition_implies_decrease() -> bool:
    rng = np.random.default_rng(3)
    grid = np.linspace(0, 1, 801)
    seen = 0
    for _ in range(600):
        z, dz, _ = random_poly_curve(rng, 3, 3, scale=0.6)
        y = z(np.array([1.0]))[0] + rng.normal(size=3) * 0.3
        v = dz(grid)
        r = z(np.array([1.0]))[0] - y
        if (v @ v.T).min() < 0 or (v @ r).max() > 0:
            continue
        seen += 1
        L = ((z(grid) - y) ** 2).sum(1)
        if np.any(np.diff(L) > 1e-12 * L.max()):
            return False
    return seen >= 20


if __name__ == "__main__":
    exit_with(run(acute_tangents(), {"condition ⇒ non-increasing loss (random curves with r ≠ 0)": condition_implies_decrease}))
