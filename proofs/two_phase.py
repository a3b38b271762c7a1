"""Proof: the two-phase condition (f) implies a non-increasing loss."""

import numpy as np
from _common import exit_with, run, turning

from mli_theory.theory.symbolic import two_phase

GRID = np.linspace(0, 1, 801)


def _quadratic(v, w, z1):
    """z(α) = z1 + (α − 1)v + (α − 1)²w and its derivatives on GRID."""
    t = (GRID - 1)[:, None]
    return z1 + t * v + t**2 * w, v + 2 * t * w, np.broadcast_to(2 * w, (len(GRID), len(w)))


def _two_phase_margin(z, dz, d2z, y):
    """(holds, split c) of (f) in its general form, from a fine grid (turning by the trapezoid rule)."""
    r = z[-1] - y
    h = np.diff(GRID)
    lpp = (dz * dz).sum(1) + ((z - y) * d2z).sum(1)
    bad = np.nonzero(lpp < 0)[0]
    ci = bad.max() + 1 if len(bad) else 0
    if ci >= len(GRID) or dz[-1] @ r > 0:
        return False, None
    speed = np.linalg.norm(dz, axis=1)
    rate = turning(dz, d2z)
    seg_turn = h * (rate[1:] + rate[:-1]) / 2
    seg_arc = h * (speed[1:] + speed[:-1]) / 2
    G = np.minimum(np.append(np.cumsum(seg_turn[::-1])[::-1], 0.0), np.pi)
    arc = np.append(np.cumsum(seg_arc[::-1])[::-1], 0.0)
    gap = dz @ r - np.cos(G) * speed * arc
    return bool(ci == 0 or gap[:ci].max() <= 0), GRID[ci]


def condition_implies_decrease() -> bool:
    """Random planar quadratic curves that satisfy (f) (often when (b), (c) fail): L never rises."""
    rng = np.random.default_rng(16)
    seen = 0
    for _ in range(3000):
        v = np.array([1.0, 0.0])
        w = np.array([rng.uniform(0.2, 0.5), rng.uniform(-0.3, 0.3)])
        r = rng.normal(size=2) * rng.uniform(0.01, 0.4)
        z, dz, d2z = _quadratic(v, w, np.zeros(2))
        y = -r
        if np.linalg.norm(dz, axis=1).min() < 1e-3:
            continue
        ok, _ = _two_phase_margin(z, dz, d2z, y)
        if not ok:
            continue
        L = ((z - y) ** 2).sum(1)
        if np.any(np.diff(L) > 1e-12 * L.max()):
            return False
        seen += 1
    return seen >= 50


def toy_curve_beyond_the_other_conditions() -> bool:
    """Issue 16's situation: slow start, then a basin. (f) holds; (a), (b), (c) fail; L is monotone."""
    v, w, rho = np.array([1.0, 0.0]), np.array([0.472, -0.02375]), 0.2473
    z, dz, d2z = _quadratic(v, w, np.zeros(2))
    y = -np.array([0.0, rho])
    r = z[-1] - y
    ok, c = _two_phase_margin(z, dz, d2z, y)
    acute = (dz @ dz.T).min() >= 0 and (dz @ r).max() <= 0
    pairwise = dz[-1] @ r <= 0 and (dz @ dz.T + (d2z @ r)[None, :]).min() >= 0  # z″ is constant
    L = ((z - y) ** 2).sum(1)
    return ok and 0 < c < 1 and not acute and not pairwise and np.linalg.norm(r) > 0 and not np.any(np.diff(L) > 0)


def split_matters() -> bool:
    """The two phases are needed: (iii) alone on [0, 1) with c = 1 and (ii) dropped is not enough.

    A curve with L′(1) ≤ 0 that is concave before its end rises; (f) must reject it at every split.
    """
    rng = np.random.default_rng(5)
    found = 0
    for _ in range(3000):
        v = np.array([1.0, 0.0])
        w = rng.normal(size=2) * 0.8
        r = rng.normal(size=2) * 0.6
        z, dz, d2z = _quadratic(v, w, np.zeros(2))
        y = -r
        L = ((z - y) ** 2).sum(1)
        rises = np.any(np.diff(L) > 1e-9 * L.max())
        ok, _ = _two_phase_margin(z, dz, d2z, y)
        if rises and ok:
            return False
        found += rises
    return found >= 20


if __name__ == "__main__":
    exit_with(
        run(
            two_phase(),
            {
                "(f) ⇒ non-increasing loss (random planar quadratics with r ≠ 0)": condition_implies_decrease,
                "toy curve: (f) holds, (a), (b), (c) fail, L monotone": toy_curve_beyond_the_other_conditions,
                "(f) never holds on a rising curve (random curves, many of them rising)": split_matters,
            },
        )
    )
