"""The MSE conditions evaluated on the α grid of the geometry: evidence, never a certificate.

Each value is computed from z, z′, z″ sampled at the grid points (the Gauss length from its
adaptive grid), so a condition that is true on the grid can still fail between grid points; only
:mod:`mli_theory.exact.conditions` proves them. The grid forms of (a)–(f) do *not* imply
L′(αᵢ) ≤ 0 at the grid points (e.g. (b) compares z′(αᵢ) with r = z(1) − y, not with z(αᵢ) − y, and
z(1) − z(αᵢ) is an integral, not a grid sum): a tanh staircase has (b), (c) and (f) true at every
grid point while L′ > 0 at all of them but α = 1. Every condition implies L′ ≤ 0 on [0, 1], so
:func:`grid_slopes` checks that necessary part at the grid points, and the grid result of a
condition (``on_grid``) requires it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..geometry import GaussLength, PathJet
from .statements import HALF_PI

# entries per batch of the per-example pairwise-cosine matrices (chunk·K² floats, a few copies live
# at once): 2²⁴ float64 = 128 MiB, so K = 2001 α take 4 examples per batch instead of 16 GiB for 512
_PAIRWISE_ENTRIES = 2**24


def _cos_matrix(v: torch.Tensor) -> torch.Tensor:
    """cos∠(v_a, v_b) for rows of v (..., K, m); 0 where a vector vanishes."""
    s = v.norm(dim=-1)
    g = v @ v.transpose(-1, -2)
    d = s.unsqueeze(-1) * s.unsqueeze(-2)
    return torch.where(d > 0, g / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(g))


def _acute_value(v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """min(min_{a,b} cos∠(v_a, v_b), −max_a cos∠(v_a, r)) for v (..., K, m), r (..., m)."""
    pair = _cos_matrix(v).amin(dim=(-1, -2))
    s = v.norm(dim=-1)
    rn = r.norm(dim=-1, keepdim=True)
    d = s * rn
    cr = torch.where(d > 0, (v * r.unsqueeze(-2)).sum(-1) / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(s))
    return torch.minimum(pair, -cr.amax(dim=-1))


def grid_evidence(jet: PathJet, y: torch.Tensor, gauss: GaussLength) -> dict[str, tuple[bool | None, float | None, float]]:
    """name -> (holds, value, threshold) on the grid."""
    K = jet.dz.shape[0]
    V = jet.dz.reshape(K, -1).double()
    A = jet.d2z.reshape(K, -1).double()
    yy = y.reshape(y.shape[0], -1).double()
    r_ex = jet.z[-1].double() - yy  # (n, k)
    r = r_ex.reshape(-1)
    rn = float(r.norm())
    out: dict[str, tuple[bool | None, float | None, float]] = {}
    g = gauss.stacked
    # (a) holds up to G = π/2 inclusive (tangents at most at right angles: ⟨z′(α), z′(s)⟩ ≥ 0)
    out["zero_residual_gauss"] = (rn == 0.0 and g <= HALF_PI and not gauss.singular, g, HALF_PI)
    gmax = float(gauss.per_example.max())
    out["zero_residual_gauss_per_example"] = (
        bool((r_ex.norm(dim=-1) == 0).all()) and gmax <= HALF_PI and not gauss.singular,
        gmax,
        HALF_PI,
    )
    acute = float(_acute_value(V, r))
    out["acute_tangents"] = (acute >= 0.0, acute, 0.0)
    per = []
    Vx = jet.dz.double().permute(1, 0, 2)  # (n, K, k)
    chunk = max(1, _PAIRWISE_ENTRIES // (K * K))
    for i0 in range(0, Vx.shape[0], chunk):
        per.append(_acute_value(Vx[i0 : i0 + chunk], r_ex[i0 : i0 + chunk]))
    acute_ex = float(torch.cat(per).min())
    out["acute_tangents_per_example"] = (acute_ex >= 0.0, acute_ex, 0.0)
    s1 = float(V[-1] @ r)
    speed2 = V.pow(2).sum(-1)
    pair = (V @ V.T) + (A @ r).unsqueeze(0)  # [i, j] = <z'(a_i), z'(a_j)> + <z''(a_j), r>
    iu = torch.triu_indices(K, K)
    smax = float(speed2.max())
    pmin = float(pair[iu[0], iu[1]].min()) / smax if smax > 0 else float(pair[iu[0], iu[1]].min())
    out["stationary_pairwise"] = (s1 <= 0.0 and pmin >= 0.0, pmin, 0.0)
    vmin2 = float(speed2.min())
    amax = float(A.norm(dim=-1).max())
    if g < HALF_PI and vmin2 > 0:
        ratio = rn * amax / (math.cos(g) * vmin2)
        out["stationary_curvature"] = (s1 <= 0.0 and ratio <= 1.0, ratio, 1.0)
    else:
        out["stationary_curvature"] = (False, None, 1.0)
    tp = two_phase_grid(jet, y)
    out["two_phase"] = (tp.holds, tp.value, 0.0)
    out["grid_slope"] = grid_slope(jet, y)
    return out


@dataclass(frozen=True)
class GridSlopes:
    """L′ at the grid points, from the jets (evidence).

    Attributes:
        alphas: the grid (K,).
        lprime: L′(αᵢ) = (2/(n·k))⟨z′(αᵢ), z(αᵢ) − y⟩ (torch's mean squared error), (K,).
        allowance: the rounding level of each value, 64·eps·(2/(n·k))·Σ|z′|(|z| + |y|) in the jets'
            dtype: a positive L′ below it may be rounding (a stationary endpoint computes as ±tiny).
    """

    alphas: torch.Tensor
    lprime: torch.Tensor
    allowance: torch.Tensor

    @property
    def rising(self) -> torch.Tensor:
        """Where L′(αᵢ) > 0 beyond rounding (K booleans)."""
        return self.lprime > self.allowance

    def reason(self) -> str | None:
        """Why no condition can be true on this grid (a grid point with L′ > 0), or None."""
        up = self.rising
        if not bool(up.any()):
            return None
        i = int(torch.argmax(torch.where(up, self.lprime, torch.full_like(self.lprime, -math.inf))))
        return (
            f"on grid: L′(αᵢ) > 0 at {int(up.sum())} of {len(up)} grid points (largest {float(self.lprime[i]):.3g} at "
            f"α = {float(self.alphas[i]):.4g}); every condition implies L′ ≤ 0, so it is false on the grid"
        )


def grid_slopes(jet: PathJet, y: torch.Tensor) -> GridSlopes:
    """L′ at the jet's grid points with the rounding level of each value (:class:`GridSlopes`)."""
    K = jet.dz.shape[0]
    V = jet.dz.reshape(K, -1).double()
    Z = jet.z.reshape(K, -1).double()
    yy = y.reshape(-1).double()
    c = 2.0 / yy.numel()
    eps = torch.finfo(jet.dz.dtype).eps if jet.dz.is_floating_point() else torch.finfo(torch.float64).eps
    lp = c * (V * (Z - yy)).sum(-1)
    allowance = 64 * eps * c * (V.abs() * (Z.abs() + yy.abs())).sum(-1)
    return GridSlopes(jet.alphas.double(), lp, allowance)


def slope_envelope(lp: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Per grid interval, max over s ∈ [0, h] of min(L′(αᵢ) + Mᵢs, L′(αᵢ₊₁) − mᵢ(h − s)).

    Args:
        lp: L′ at the K grid points (any positive multiple).
        lower, upper: mᵢ ≤ L″ ≤ Mᵢ on each of the K − 1 intervals (the same multiple).
        h: interval widths.

    With proven bounds mᵢ, Mᵢ the result bounds L′ on each interval from above (a proof of L′ ≤ 0
    where it is ≤ 0); with sampled ones it is evidence. The envelope is the minimum of two lines, so
    its maximum is at an end or where they cross, t* = (q − mh − p)/(M − m).
    """
    p, q, m, M = lp[:-1], lp[1:], lower, upper

    def env(t: torch.Tensor) -> torch.Tensor:
        return torch.minimum(p + M * t, q - m * (h - t))

    gap = M - m
    t_star = torch.where(gap > 0, (q - m * h - p) / torch.where(gap > 0, gap, torch.ones_like(gap)), torch.zeros_like(h))
    t_star = torch.minimum(torch.maximum(t_star, torch.zeros_like(h)), h)
    return torch.maximum(torch.maximum(env(torch.zeros_like(h)), env(h)), env(t_star))


def grid_slope(jet: PathJet, y: torch.Tensor) -> tuple[bool, float | None, float]:
    """The sound grid statement, evaluated with the jets' L″ at the grid points (evidence).

    Statement: on a grid interval [a, b] (h = b − a) with mᵢ ≤ L″ ≤ Mᵢ, for α = a + s,
    L′(α) ≤ E(s) = min(L′(a) + Mᵢs, L′(b) − mᵢ(h − s)) (integrate L″ from either end). If
    L′(αᵢ) ≤ 0 at every grid point and max_{s∈[0,h]} E(s) ≤ 0 on every interval, L is non-increasing
    on [0, 1]. E is the minimum of two lines, so its maximum is at an end or where they cross. It is a
    proof with *proven* bounds mᵢ, Mᵢ (an enclosure of L″ on the interval: on polynomial paths
    :mod:`mli_theory.exact.conditions` proves it with Bernstein bounds); here they are the smaller
    and larger of L″(αᵢ), L″(αᵢ₊₁) from the jets, so the verdict is evidence. The geometric conditions
    (a)–(f) checked on the same grid are no more rigorous, and their grid forms do not imply
    L′(αᵢ) ≤ 0: the grid result of every condition adds that requirement (:func:`grid_slopes`).

    Returns (holds, value, threshold): value = the largest max E over the intervals divided by
    max|L′(αᵢ)| (≤ 0 where it holds).
    """
    K = jet.dz.shape[0]
    V = jet.dz.reshape(K, -1).double()
    A = jet.d2z.reshape(K, -1).double()
    R = jet.z.reshape(K, -1).double() - y.reshape(-1).double()
    lp = (V * R).sum(-1)  # L′ up to the positive factor 2/(n·k)
    lpp = V.pow(2).sum(-1) + (A * R).sum(-1)  # L″, same factor
    if K < 2:
        return (bool(lp.max() <= 0), None, 0.0)
    h = jet.alphas.double().diff()
    peak = slope_envelope(lp, torch.minimum(lpp[1:], lpp[:-1]), torch.maximum(lpp[1:], lpp[:-1]), h)
    worst = float(peak.max())
    scale = float(lp.abs().max())
    return (bool(lp.max() <= 0) and worst <= 0.0, worst / scale if scale > 0 else worst, 0.0)


@dataclass(frozen=True)
class TwoPhaseGrid:
    """Result (f) evaluated on the jet grid (evidence).

    Attributes:
        holds: (i) ⟨z′(1), r⟩ ≤ 0, (ii) L″(αᵢ) ≥ 0 at every grid point αᵢ ≥ c, (iii) at every grid
            point αᵢ < c: ⟨z′(αᵢ), r⟩ ≤ cos(min(G(αᵢ), π))·‖z′(αᵢ)‖·arc(αᵢ, 1).
        value: max over grid αᵢ < c of ⟨z′(αᵢ), r⟩ − cos G(αᵢ)·‖z′(αᵢ)‖·arc(αᵢ, 1), divided by
            ‖r‖·max‖z′‖ (when positive); ≤ 0 where (iii) holds.
        split: c, the smallest grid point with L″ ≥ 0 at every grid point from c on (the best split
            for (ii), and the one that leaves (iii) the fewest points). value is None when c = 0
            (L convex on the grid: (iii) has no points).
    """

    holds: bool
    value: float | None
    split: float | None


def _tail_turning(V: torch.Tensor, A: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """G(αᵢ) ≈ turning of the tangent on [αᵢ, 1] from the grid (K,), capped at π.

    Per interval: max(angle between the end tangents, trapezoid of ‖z″⊥‖/‖z′‖); an interval with a
    zero velocity at an end counts π (the tangent may reverse there), so cos G = −1 and (iii)
    reduces to Cauchy–Schwarz, which always holds.
    """
    speed = V.norm(dim=-1)
    zero = speed == 0
    safe = torch.where(zero, torch.ones_like(speed), speed)
    T = V / safe.unsqueeze(-1)
    perp = A - (A * T).sum(-1, keepdim=True) * T
    rate = torch.where(zero, torch.zeros_like(speed), perp.norm(dim=-1) / safe)
    ang = 2 * torch.atan2((T[1:] - T[:-1]).norm(dim=-1), (T[1:] + T[:-1]).norm(dim=-1))
    turn = torch.maximum(ang, h * (rate[1:] + rate[:-1]) / 2)
    turn = torch.where(zero[1:] | zero[:-1], torch.full_like(turn, math.pi), turn)
    tail = torch.zeros_like(speed)
    tail[:-1] = torch.flip(torch.cumsum(torch.flip(turn, [0]), 0), [0])
    return tail.clamp(max=math.pi)


def two_phase_grid(jet: PathJet, y: torch.Tensor) -> TwoPhaseGrid:
    """Result (f) (:func:`mli_theory.theory.symbolic.two_phase`) on the jet grid: evidence, not proof.

    Needs a grid that contains α = 1 (the residual r = z(1) − y is taken at the last point).
    """
    K = jet.dz.shape[0]
    a = jet.alphas.double()
    V = jet.dz.reshape(K, -1).double()
    A = jet.d2z.reshape(K, -1).double()
    Z = jet.z.reshape(K, -1).double()
    yy = y.reshape(-1).double()
    r = Z[-1] - yy
    s1 = float(V[-1] @ r)
    if K < 2 or float(a[-1]) != 1.0:
        return TwoPhaseGrid(False, None, None)
    lpp = V.pow(2).sum(-1) + ((Z - yy) * A).sum(-1)  # ∝ L″ at the grid points
    bad = torch.nonzero(lpp < 0).flatten()
    ci = int(bad.max()) + 1 if bad.numel() else 0
    if ci >= K:  # L″(1) < 0: no split works
        return TwoPhaseGrid(False, None, None)
    h = a[1:] - a[:-1]
    speed = V.norm(dim=-1)
    arc = torch.zeros_like(speed)
    arc[:-1] = torch.flip(torch.cumsum(torch.flip(h * (speed[1:] + speed[:-1]) / 2, [0]), 0), [0])
    G = _tail_turning(V, A, h)
    gap = (V @ r) - torch.cos(G) * speed * arc
    # (iii) is needed only before the split: from c on, (ii) and (i) give L′ ≤ L′(1) ≤ 0
    worst = float(gap[:ci].max()) if ci > 0 else -math.inf
    scale = float(r.norm()) * float(speed.max())
    value = worst / scale if scale > 0 else worst
    return TwoPhaseGrid(s1 <= 0.0 and worst <= 0.0, value if math.isfinite(value) else None, float(a[ci]))
