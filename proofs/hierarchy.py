"""Checks of the hierarchy and tightness statements (counterexamples computed numerically)."""

import numpy as np
from _common import exit_with, run, turning

from mli_theory.theory.symbolic import hierarchy


def turn_then_straight(phi: float, ell: float, samples: int = 20001):
    """Unit-speed planar curve: an arc of radius 1 through angle φ, then ℓ straight; y = z(end)."""
    sig = np.linspace(0, phi + ell, samples)
    ang = np.minimum(sig, phi)
    T = np.stack([np.cos(ang), np.sin(ang)], 1)
    z = np.concatenate([[np.zeros(2)], np.cumsum((T[1:] + T[:-1]) / 2 * np.diff(sig)[:, None], 0)])
    L = ((z - z[-1]) ** 2).sum(1) / 2
    return sig, L


def tightness_of_half_pi() -> bool:
    """Turning π/2 + 0.05 then straight rises; turning exactly π/2 then straight never does."""
    _, L = turn_then_straight(np.pi / 2 + 0.05, 25.0)
    rises = np.diff(L).max() > 1e-6
    flat_ok = all(np.diff(turn_then_straight(np.pi / 2, ell)[1]).max() <= 1e-12 for ell in (0.1, 1.0, 25.0, 200.0))
    return bool(rises and flat_ok)


def spiral_is_monotone_with_large_turning() -> bool:
    """(1 − α)(cos 2πα, sin 2πα): L = (1 − α)²/2, Gauss length ≈ 7.7, tangents not pairwise acute."""
    a = np.linspace(0, 1, 20001)
    w = 2 * np.pi
    c, s = np.cos(w * a), np.sin(w * a)
    dz = np.stack([-c - (1 - a) * w * s, -s + (1 - a) * w * c], 1)
    d2z = np.stack([2 * w * s - (1 - a) * w * w * c, -2 * w * c - (1 - a) * w * w * s], 1)
    rate = turning(dz, d2z)
    G = float(np.sum((rate[1:] + rate[:-1]) / 2 * np.diff(a)))
    L = ((1 - a) ** 2) / 2
    sub = dz[::200]
    return bool(abs(G - 7.7) < 0.1 and np.all(np.diff(L) <= 0) and (sub @ sub.T).min() < 0)


if __name__ == "__main__":
    exit_with(
        run(
            hierarchy(),
            {
                "π/2 is tight for (a): π/2 + 0.05 then straight rises, π/2 then straight does not": tightness_of_half_pi,
                "spiral: monotone with G ≈ 7.7 and obtuse tangent pairs ((a), (b) fail)": spiral_is_monotone_with_large_turning,
            },
        )
    )
