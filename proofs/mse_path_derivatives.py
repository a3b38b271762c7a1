"""Proof: L′ = (1/n)⟨z′, z − y⟩ and L″ = (1/n)(‖z′‖² + ⟨z″, z − y⟩) along any C² path."""

import numpy as np
from _common import exit_with, random_poly_curve, run

from mli_theory.theory.symbolic import mse_path_derivatives


def finite_differences() -> bool:
    rng = np.random.default_rng(0)
    z, dz, d2z = random_poly_curve(rng, 5, 4)
    y = rng.normal(size=5)
    n = 5
    L = lambda a: ((z(np.array([a]))[0] - y) ** 2).sum() / (2 * n)  # noqa: E731
    h = 1e-4
    for a in rng.uniform(0.1, 0.9, 5):
        za, va, aa = z(np.array([a]))[0], dz(np.array([a]))[0], d2z(np.array([a]))[0]
        d1 = (L(a + h) - L(a - h)) / (2 * h)
        d2 = (L(a + h) - 2 * L(a) + L(a - h)) / h**2
        if abs(d1 - va @ (za - y) / n) > 1e-6 * (1 + abs(d1)) or abs(d2 - (va @ va + aa @ (za - y)) / n) > 1e-4 * (1 + abs(d2)):
            return False
    return True


if __name__ == "__main__":
    exit_with(run(mse_path_derivatives(), {"central differences agree with L′ and L″ (float64)": finite_differences}))
