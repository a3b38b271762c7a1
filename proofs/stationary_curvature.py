"""Proof: the stationary-endpoint identity and its pairwise and curvature sufficient conditions."""

import numpy as np
from _common import exit_with, random_poly_curve, run, turning

from mli_theory.theory.symbolic import stationary_curvature


def curvature_form_implies_pairwise_and_decrease() -> bool:
    rng = np.random.default_rng(4)
    grid = np.linspace(0, 1, 401)
    seen = 0
    for _ in range(3000):
        z, dz, d2z = random_poly_curve(rng, 3, 3, scale=0.4)
        v, acc = dz(grid), d2z(grid)
        speed = np.linalg.norm(v, axis=1)
        if speed.min() < 1e-2:
            continue
        rate = turning(v, acc)
        G = np.sum((rate[1:] + rate[:-1]) / 2 * np.diff(grid))
        if G >= np.pi / 2:
            continue
        # a residual orthogonal to z'(1) (stationary end), small enough for the curvature bound
        u = rng.normal(size=3)
        u -= (u @ v[-1]) / (v[-1] @ v[-1]) * v[-1]
        budget = np.cos(G) * speed.min() ** 2 / max(np.linalg.norm(acc, axis=1).max(), 1e-12)
        r = u / np.linalg.norm(u) * budget * rng.uniform(0.1, 0.95)
        y = z(np.array([1.0]))[0] - r
        pair = v @ v.T + (acc @ r)[None, :]
        if np.triu(pair).min() < -1e-9 * (speed.max() ** 2):
            return False  # curvature form must imply the pairwise form
        L = ((z(grid) - y) ** 2).sum(1)
        if np.any(np.diff(L) > 1e-12 * L.max()):
            return False
        seen += 1
        if seen >= 300:  # enough evidence; the 401×401 pairwise matrix makes each curve costly
            break
    return seen >= 20


if __name__ == "__main__":
    exit_with(
        run(
            stationary_curvature(),
            {"curvature form ⇒ pairwise form ⇒ non-increasing loss (random curves)": curvature_form_implies_pairwise_and_decrease},
        )
    )
