"""Proof: L′(α) = −(1/n)∫_α^1⟨z′(α), z′(s)⟩ds + (1/n)⟨z′(α), r⟩."""

import numpy as np
from _common import exit_with, run

from mli_theory.theory.symbolic import integral_identity


def non_polynomial_path() -> bool:
    """The identity for z(α) = (sin 3α, cos 2α, e^α) by Gauss–Legendre quadrature."""
    z = lambda a: np.stack([np.sin(3 * a), np.cos(2 * a), np.exp(a)], -1)  # noqa: E731
    dz = lambda a: np.stack([3 * np.cos(3 * a), -2 * np.sin(2 * a), np.exp(a)], -1)  # noqa: E731
    y = np.array([0.3, -0.2, 1.0])
    n = 3
    r = z(np.array([1.0]))[0] - y
    xg, wg = np.polynomial.legendre.leggauss(60)
    for a in (0.0, 0.25, 0.6, 0.95):
        s = a + (1 - a) * (xg + 1) / 2
        w = wg * (1 - a) / 2
        va = dz(np.array([a]))[0]
        integral = (dz(s) @ va) @ w
        rhs = -integral / n + va @ r / n
        lhs = va @ (z(np.array([a]))[0] - y) / n
        if abs(lhs - rhs) > 1e-12:
            return False
    return True


if __name__ == "__main__":
    exit_with(run(integral_identity(), {"identity on a non-polynomial path (quadrature, float64)": non_polynomial_path}))
