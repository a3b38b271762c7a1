"""Proof: r = 0 and total turning < π/2 imply a non-increasing loss."""

import numpy as np
from _common import exit_with, random_poly_curve, run, turning

from mli_theory.theory.symbolic import zero_residual_gauss


def angle_below_turning() -> bool:
    """∠(T(a), T(b)) ≤ ∫_a^b ‖T′‖ on random curves (the step sympy cannot check)."""
    rng = np.random.default_rng(1)
    grid = np.linspace(0, 1, 4001)
    for _ in range(200):
        _, dz, d2z = random_poly_curve(rng, int(rng.integers(2, 5)), int(rng.integers(2, 5)))
        v, acc = dz(grid), d2z(grid)
        if np.any(np.linalg.norm(v, axis=1) < 1e-3):
            continue
        rate = turning(v, acc)
        cum = np.concatenate([[0], np.cumsum((rate[1:] + rate[:-1]) / 2 * np.diff(grid))])
        t = v / np.linalg.norm(v, axis=1, keepdims=True)
        for i, j in rng.integers(0, grid.size, size=(20, 2)):
            i, j = min(i, j), max(i, j)
            ang = np.arccos(np.clip(t[i] @ t[j], -1, 1))
            # equality holds for planar curves (trapezoid error ~1e-6); arccos near 1 is only good to ~1e-8
            if ang > (cum[j] - cum[i]) * (1 + 1e-4) + 1e-7:
                return False
    return True


def condition_implies_decrease() -> bool:
    """Random curves with r = 0 (y := z(1)) and G < π/2: L is non-increasing on a fine grid."""
    rng = np.random.default_rng(2)
    grid = np.linspace(0, 1, 4001)
    seen = 0
    for _ in range(400):
        z, dz, d2z = random_poly_curve(rng, 3, 3, scale=0.5)
        v = dz(grid)
        if np.any(np.linalg.norm(v, axis=1) < 1e-3):
            continue
        rate = turning(v, d2z(grid))
        G = np.sum((rate[1:] + rate[:-1]) / 2 * np.diff(grid))
        if G >= np.pi / 2 * 0.99:
            continue
        seen += 1
        y = z(np.array([1.0]))[0]
        L = ((z(grid) - y) ** 2).sum(1)
        if np.any(np.diff(L) > 1e-12 * L.max()):
            return False
    return seen >= 50


if __name__ == "__main__":
    exit_with(
        run(
            zero_residual_gauss(),
            {
                "angle between tangents ≤ turning between them (200 random curves)": angle_below_turning,
                "r = 0 and G < π/2 ⇒ non-increasing loss (random curves, 4001-point grid)": condition_implies_decrease,
            },
        )
    )
