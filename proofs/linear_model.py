"""Proof: for models linear in θ, MLI holds iff L′(1) ≤ 0; least-squares minimisers always pass."""

import numpy as np
from _common import exit_with, run

from mli_theory.theory.symbolic import linear_model


def least_squares_monotone() -> bool:
    rng = np.random.default_rng(5)
    grid = np.linspace(0, 1, 2001)
    for _ in range(100):
        n, d = int(rng.integers(2, 20)), int(rng.integers(1, 6))
        phi, y = rng.normal(size=(n, d)), rng.normal(size=n)
        theta_t = np.linalg.lstsq(phi, y, rcond=None)[0]
        theta_0 = rng.normal(size=d) * rng.uniform(0.1, 10)
        L = np.array([((phi @ ((1 - a) * theta_0 + a * theta_t) - y) ** 2).mean() for a in grid])
        if np.any(np.diff(L) > 1e-10 * L.max()):
            return False
    return True


if __name__ == "__main__":
    exit_with(run(linear_model(), {"least-squares θT is monotone from 100 random θ0 (float64 grid)": least_squares_monotone}))
