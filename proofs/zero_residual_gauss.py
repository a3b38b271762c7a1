"""Proof: r = 0 and total turning ≤ π/2 imply a non-increasing loss (G = π/2 itself: proofs/hierarchy.py)."""

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


def plane_reduction() -> bool:
    """Two vectors of R^m lie in a plane; in polar coordinates there ⟨u, v⟩ = ρ₁ρ₂cos(φ₁ − φ₂).

    Backs the use of the polar-form step (checked by sympy on R²) for tangents in R^m: with an
    orthonormal basis of span{u, v} (Gram–Schmidt), u and v keep their lengths and inner product,
    and their polar angles differ by the angle between them.
    """
    rng = np.random.default_rng(7)
    for _ in range(500):
        m = int(rng.integers(2, 40))
        u, v = rng.normal(size=m), rng.normal(size=m)
        e1 = u / np.linalg.norm(u)
        w = v - (v @ e1) * e1
        e2 = w / np.linalg.norm(w)
        (x1, y1), (x2, y2) = (u @ e1, u @ e2), (v @ e1, v @ e2)
        rho1, rho2 = np.hypot(x1, y1), np.hypot(x2, y2)
        phi1, phi2 = np.arctan2(y1, x1), np.arctan2(y2, x2)
        angle = np.arccos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1, 1))
        scale = np.linalg.norm(u) * np.linalg.norm(v)
        if abs(rho1 - np.linalg.norm(u)) > 1e-12 * rho1 or abs(rho2 - np.linalg.norm(v)) > 1e-12 * rho2:
            return False
        if abs(u @ v - rho1 * rho2 * np.cos(phi1 - phi2)) > 1e-12 * scale:
            return False
        if abs(abs(phi1 - phi2) - angle) > 1e-9:
            return False
    return True


if __name__ == "__main__":
    exit_with(
        run(
            zero_residual_gauss(),
            {
                "polar form on the plane spanned by two vectors of R^m (500 random pairs)": plane_reduction,
                "angle between tangents ≤ turning between them (200 random curves)": angle_below_turning,
                "r = 0 and G < π/2 ⇒ non-increasing loss (random curves, 4001-point grid)": condition_implies_decrease,
            },
        )
    )
