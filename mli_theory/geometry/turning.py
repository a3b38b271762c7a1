"""Turning of the output path and its Gauss length (total turning of the unit tangent).

Per example x the outputs z_x(α) ∈ R^k trace a curve as α runs over [0, 1]. With velocity
v = z′ and acceleration z″ (from :mod:`mli_theory.geometry.jets`):

* unit tangent T = v/‖v‖; its rate of turning is ‖dT/dα‖ = ‖z″⊥‖/‖v‖ with
  z″⊥ = z″ − ⟨z″, T⟩T (equivalently √(‖v‖²‖z″‖² − ⟨v, z″⟩²)/‖v‖²);
* Gauss length G(x) = ∫₀¹ ‖dT/dα‖ dα, the total turning of the tangent (a planar arc through an
  angle φ has G = φ; Lucas et al. 2021, following the reference code); reported as the mean over
  examples and for the stacked outputs z ∈ R^{n·k}. Where z′ jumps (a kink of a ReLU network) or
  passes through 0 (a reversal), the tangent turns at a point, by the angle between its directions
  on either side (π for a reversal), and that counts too. G is the length of the tangent's path on
  the unit sphere, the limit of Σ angle(T(α_i), T(α_{i+1})) over ever finer grids.

:func:`gauss_length` computes it, with an error estimate, by adaptive angle sums extrapolated on
panels of four steps (the default wherever z′ is continuous), or for piecewise-smooth paths (ReLU
networks) by the kink-aware quadrature of the rate (:func:`_kink_quadrature`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..inputs.data import Dataset
from ..path import BNPolicy, Line, PathKind
from .jets import JetMethod, PathJet, path_jet

# a single refined grid step that turns the tangent by more than this many radians (close to π)
# is taken as a reversal of direction through z′ = 0: a smooth turn that fast is split by the
# refinement first, while a reversal stays a jump of π however fine the grid
REVERSAL_TURN = 3.0


def speed_floor(dtype: torch.dtype) -> float:
    """Relative speed below which the tangent direction is treated as undefined (per dtype)."""
    return 1e3 * torch.finfo(dtype).eps


def _rate(dz: torch.Tensor, d2z: torch.Tensor, floor: float, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turning rate and singular mask of :func:`turning_rate`, with the reference speed given."""
    speed = dz.norm(dim=-1)
    singular = (speed <= floor * ref) | (ref == 0)
    safe = torch.where(singular, torch.ones_like(speed), speed)
    t = dz / safe.unsqueeze(-1)
    perp = d2z - (d2z * t).sum(-1, keepdim=True) * t
    rate = torch.where(singular, torch.zeros_like(speed), perp.norm(dim=-1) / safe)
    return rate, singular


def turning_rate(dz: torch.Tensor, d2z: torch.Tensor, floor: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """‖dT/dα‖ = ‖z″⊥‖/‖z′‖ along the last axis, and a mask of singular points.

    Where ‖z′‖ is below ``floor`` times its largest value along α (or is zero), the tangent is
    undefined; the rate is set to 0 there and the point is flagged in the mask.

    Args:
        dz, d2z: (K, ..., k).
        floor: relative speed floor (default :func:`speed_floor` of the dtype).
    """
    floor = speed_floor(dz.dtype) if floor is None else floor
    return _rate(dz, d2z, floor, dz.norm(dim=-1).amax(dim=0, keepdim=True))


def _unit(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v/‖v‖ along the last axis (0 where v = 0), and where v ≠ 0."""
    n = v.norm(dim=-1, keepdim=True)
    return v / torch.where(n > 0, n, torch.ones_like(n)), n[..., 0] > 0


def _angle(t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """Angle between unit vectors along the last axis: 2·atan2(‖t1 − t0‖, ‖t1 + t0‖), accurate
    near 0 and π, unlike arccos⟨t0, t1⟩."""
    return 2 * torch.atan2((t1 - t0).norm(dim=-1), (t1 + t0).norm(dim=-1))


@dataclass(frozen=True)
class _Frame:
    """At some grid points (one curve per trailing row): z′, z″, turning rate, singular mask, unit
    tangent (the last nonzero z′ at or before the point along α, so that a reversal through an exact
    zero of z′ still turns by π), whether it is defined, the unit direction in which it turns
    (z″⊥/‖z″⊥‖, 0 where it does not) and the rate of change of the speed ⟨T, z″⟩."""

    dz: torch.Tensor
    d2z: torch.Tensor
    rate: torch.Tensor
    singular: torch.Tensor
    t: torch.Tensor
    defined: torch.Tensor
    normal: torch.Tensor
    dspeed: torch.Tensor


def _frame(dz: torch.Tensor, d2z: torch.Tensor, carried: torch.Tensor, floor: float, ref: torch.Tensor) -> _Frame:
    """The rate and singular mask are those of :func:`_rate` (the carried tangent is z′'s own
    direction wherever the rate is not 0)."""
    speed = dz.norm(dim=-1)
    singular = (speed <= floor * ref) | (ref == 0)
    t, defined = _unit(carried)
    along = (d2z * t).sum(-1, keepdim=True)
    normal, turns = _unit(d2z - along * t)
    perp_norm = (normal * d2z).sum(-1)  # ‖z″⊥‖
    safe = torch.where(singular, torch.ones_like(speed), speed)
    rate = torch.where(singular | ~turns, torch.zeros_like(speed), perp_norm / safe)
    return _Frame(dz, d2z, rate, singular, t, defined, normal, along[..., 0])


def _to_midpoint(f: _Frame, step: torch.Tensor) -> torch.Tensor:
    """The velocity carried by ``step`` in α: the speed linearly (‖z′‖ + step·⟨T, z″⟩), the tangent
    turned by step·rate in its turning direction (exact on a circle); linearly (z′ + step·z″) at
    singular points. ``step`` broadcasts against the rate; the turn is capped at π/2."""
    speed = f.dz.norm(dim=-1)
    th = (step * f.rate).clamp(min=-torch.pi / 2, max=torch.pi / 2).unsqueeze(-1)
    turned = (speed + step * f.dspeed).unsqueeze(-1) * (torch.cos(th) * f.t + torch.sin(th) * f.normal)
    return torch.where(f.singular.unsqueeze(-1), f.dz + step.unsqueeze(-1) * f.d2z, turned)


def _rule(f0: _Frame, f1: _Frame, h: torch.Tensor, blocks: int | None, jumps: bool):
    """Turning over intervals with end frames ``f0``, ``f1`` and widths ``h`` (m,).

    Returns (estimate, merged, trapezoid, end-tangent angle), each (m, ...). The estimate is
    max(angle between the end tangents, trapezoid of the rate + kink term), or the trapezoid alone
    without ``jumps``. The kink term is the angle between the velocities carried to the midpoint
    from either end (:func:`_to_midpoint`): they differ by O(h³) where the path is smooth (not at
    all on a circle), and by the jump of z′ at a kink inside the interval (counted as if it sat at
    the midpoint: an O(h) error). The end-tangent angle is a lower bound of the turning inside the
    interval and counts a reversal (z′ through 0) as π.

    With ``blocks`` (stacked outputs: ``blocks`` examples of k outputs each), ``merged`` is how much
    more the kink term would be if the velocity changed one block after the other: kinks of
    different examples inside one interval, at different α, add up in full; taken at once they
    count less. It is 0 otherwise.
    """
    h = h.reshape(-1, *([1] * (f0.rate.dim() - 1)))
    trap = (f0.rate + f1.rate) / 2 * h
    ok = f0.defined & f1.defined
    chord = torch.where(ok, _angle(f0.t, f1.t), torch.zeros_like(trap))
    if not jumps:
        return trap, torch.zeros_like(trap), trap, chord
    left, right = _to_midpoint(f0, h / 2), _to_midpoint(f1, -h / 2)
    (ul, okl), (ur, okr) = _unit(left), _unit(right)
    both = okl & okr
    kink = torch.where(both, _angle(ul, ur), torch.zeros_like(trap))
    est = torch.where(ok, torch.maximum(chord, trap + kink), trap)
    if blocks is None or blocks <= 1:
        return est, torch.zeros_like(est), trap, chord
    # left → right one block at a time: P_j = P_{j−1} + D_j (D_j = block j of right − left), in
    # units of ‖left‖ (angles do not depend on the scale)
    m = left.shape[0]
    scale = left.norm(dim=-1).clamp(min=1e-300).reshape(m, 1, 1)
    L, D = left.reshape(m, blocks, -1) / scale, (right - left).reshape(m, blocks, -1) / scale
    grow = ((L + D) ** 2).sum(-1) - (L * L).sum(-1)  # ‖P_j‖² − ‖P_{j−1}‖²
    a2 = 1.0 + torch.cumsum(grow, dim=1) - grow  # ‖P_{j−1}‖²
    ld = (L * D).sum(-1)  # ⟨P_{j−1}, D_j⟩
    cross2 = (a2 * (D * D).sum(-1) - ld * ld).clamp(min=0)  # ‖P_{j−1}‖²‖P_j‖² − ⟨P_{j−1}, P_j⟩²
    blockwise = torch.where(both, torch.atan2(cross2.sqrt(), a2 + ld).sum(1), torch.zeros_like(trap))
    est_blocks = torch.where(ok, torch.maximum(chord, trap + blockwise), trap)
    return est, (est_blocks - est).clamp(min=0), trap, chord


@dataclass(frozen=True)
class GaussLength:
    """Total turning of the output path.

    Attributes:
        mean: mean over examples of G(x).
        per_example: G(x) for each example, shape (n,).
        stacked: G of the stacked output path z ∈ R^{n·k} (None when computed in blocks of
            examples, see :func:`mli_theory.theory.evaluate_conditions`).
        n_alphas: number of α points of the final (refined) grid.
        converged: ``error`` ≤ rtol·max(mean, stacked) (the refinement met its tolerance).
        error: estimated absolute error of ``mean`` and of ``stacked`` (the larger of the two; see
            :func:`gauss_length`).
        singular: whether the velocity vanished (below the speed floor) at a grid point, or a step
            of the final grid turns by more than ``REVERSAL_TURN`` (a reversal of direction, which
            is counted as π).
        alphas: the final grid.
        mean_error: estimated absolute error of ``mean`` alone (None: not estimated apart, take
            ``error``). The stacked path of many examples has many more kinks than any one
            example's, so its error can be far larger than the mean's.
        stacked_error: estimated absolute error of ``stacked`` alone (None when not computed).
        rtol: the relative tolerance the refinement aimed at (None: not recorded).
    """

    mean: float
    per_example: torch.Tensor
    stacked: float | None
    n_alphas: int
    converged: bool
    error: float
    singular: bool
    alphas: tuple[float, ...]
    mean_error: float | None = None
    stacked_error: float | None = None
    rtol: float | None = None

    @property
    def mean_converged(self) -> bool:
        """Whether ``mean`` alone met the relative tolerance (``converged`` where either is unknown)."""
        if self.mean_error is None or self.rtol is None:
            return self.converged
        return self.mean_error <= self.rtol * max(self.mean, _TINY)


# no split below this many units in the last place of the line's dtype: the new α must stay distinct
_MIN_SPLIT_ULPS = 64
# an absolute floor (radians) under the relative tolerance, for paths that hardly turn at all
_TINY = 1e-12


class _Grid:
    """The α evaluated so far (in the order evaluated) with their jets, and the rule on any of
    their intervals. The reference speeds of the singular mask and the carried tangents use all
    points evaluated so far (estimates cached from earlier rounds are not redone when a new point
    changes them, which only happens at points where z′ is 0 or below the speed floor)."""

    def __init__(self, alphas: torch.Tensor, dz: torch.Tensor, d2z: torch.Tensor, blocks: int, jumps: bool,
                 stacked: bool = True) -> None:
        self.alphas, self.dz, self.d2z = alphas, dz, d2z
        self.blocks, self.jumps, self.stacked = blocks, jumps, stacked
        self.floor = speed_floor(dz.dtype)
        self.speed = dz.norm(dim=-1)  # (K, n)
        self._refresh()

    def add(self, alphas: torch.Tensor, dz: torch.Tensor, d2z: torch.Tensor) -> torch.Tensor:
        """Append points; returns their indices."""
        K = self.alphas.shape[0]
        self.alphas = torch.cat([self.alphas, alphas])
        self.dz, self.d2z = torch.cat([self.dz, dz]), torch.cat([self.d2z, d2z])
        self.speed = torch.cat([self.speed, dz.norm(dim=-1)])
        self._refresh()
        return torch.arange(K, K + alphas.shape[0])

    def _refresh(self) -> None:
        speed_st = self.speed.norm(dim=1)
        self.ref, self.ref_st = self.speed.amax(dim=0), speed_st.amax()
        # the last point at or before each one (along α) where z′ ≠ 0
        order = torch.argsort(self.alphas).to(self.dz.device)
        K = order.shape[0]

        def last_moving(moving: torch.Tensor) -> torch.Tensor | None:
            if bool(moving.all()):
                return None
            pos = torch.arange(K, device=moving.device).reshape(-1, *([1] * (moving.dim() - 1))).expand_as(moving)
            idx = torch.cummax(torch.where(moving[order], pos, -1), dim=0).values
            out = torch.empty_like(idx)
            source = order.reshape(-1, *([1] * (idx.dim() - 1))).expand_as(idx).gather(0, idx.clamp(min=0))
            out[order] = torch.where(idx >= 0, source, -1)
            return out

        self.last, self.last_st = last_moving(self.speed > 0), last_moving(speed_st > 0)

    def _frames(self, idx: torch.Tensor) -> tuple[_Frame, _Frame | None]:
        i = idx.to(self.dz.device)
        dz, d2z = self.dz[i], self.d2z[i]
        m, n = dz.shape[0], dz.shape[1]
        if self.last is None:
            carried = dz
        else:
            src = self.last[i]  # (m, n)
            carried = self.dz[src.clamp(min=0), torch.arange(n, device=dz.device)] * (src >= 0).unsqueeze(-1)
        per = _frame(dz, d2z, carried, self.floor, self.ref)
        if not self.stacked:
            return per, None
        if self.last_st is None:
            carried_st = dz.reshape(m, -1)
        else:
            src = self.last_st[i]
            carried_st = self.dz[src.clamp(min=0)].reshape(m, -1) * (src >= 0).unsqueeze(-1)
        st = _frame(dz.reshape(m, -1), d2z.reshape(m, -1), carried_st, self.floor, self.ref_st)
        return per, st

    def rule(self, lo: torch.Tensor, hi: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rule on the intervals [α_lo, α_hi] for example and stacked outputs."""
        (p0, s0), (p1, s1) = self._frames(lo), self._frames(hi)
        h = (self.alphas[hi] - self.alphas[lo]).to(self.dz.device)
        est, _, trap, chord = _rule(p0, p1, h, None, self.jumps)
        if s0 is None or s1 is None:  # per example only: the stacked entries are zeros
            est_st = merged = trap_st = chord_st = torch.zeros_like(est[:, 0])
        else:
            est_st, merged, trap_st, chord_st = _rule(s0, s1, h, self.blocks, self.jumps)
        reversal = (chord > REVERSAL_TURN).any(dim=1) | (chord_st > REVERSAL_TURN)
        return {"ex": est, "st": est_st, "merged": merged, "trap": trap, "trap_st": trap_st, "rev": reversal}

    def singular(self) -> bool:
        if bool(((self.speed <= self.floor * self.ref) | (self.ref == 0)).any()):
            return True
        return self.stacked and bool(((self.speed.norm(dim=1) <= self.floor * self.ref_st) | (self.ref_st == 0)).any())


def _cat(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([a[k], b[k]]) for k in a}


def _take(a: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in a.items()}


def _kink_quadrature(
    line: Line,
    data: Dataset,
    *,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    initial: int = 51,
    rtol: float = 1e-3,
    max_alphas: int = 4097,
    max_step_turn: float | None = 0.1,
    kink_width: float | None = 1 / 4096,
    jumps: bool | None = None,
    max_rounds: int = 40,
    batch_size: int | None = None,
    method: JetMethod = "auto",
    jet: PathJet | None = None,
    stacked: bool = True,
) -> GaussLength:
    """Gauss length by the kink-aware rule (``rule="kinks"`` of :func:`gauss_length`): adaptive
    quadrature of the rate with kink terms, for paths whose z′ jumps (ReLU networks).

    **Rule on an interval [a, b]** (h = b − a): max(angle between the unit tangents at a and b,
    trapezoid of the rate ‖dT/dα‖ + kink term), the kink term being the angle between the
    velocities carried to the midpoint from either end (the speed linearly, ‖z′‖ ± (h/2)⟨T, z″⟩,
    the tangent turned by (h/2)·rate towards z″⊥). Where the path is smooth the two differ by
    O(h³) (not at all on a circle) and the rule is the trapezoid rule (error O(h²)); a kink of a
    ReLU network inside the interval (a jump of z′) is counted whole, as if it sat at the midpoint
    (error O(h)); the end-tangent angle is a lower bound of the turning inside the interval and
    counts a reversal of direction (z′ through 0) as π, whatever the grid (the tangent is carried
    over grid points where z′ vanishes exactly).

    **Error estimate.** The grid is a chain of panels (a, m, b) (``initial`` evenly spaced α or the
    grid of ``jet``, two intervals at a time; an odd interval left over gets its midpoint). A
    panel's coarse estimate C is the rule on [a, b], its fine estimate F the rule on [a, m] plus
    [m, b]; F is reported and |C − F| is its error estimate (about 3 times F's error where smooth,
    and about F's error next to a kink, where the error halves with each split). Per example the
    differences are averaged over the examples (the error of the mean). For the stacked outputs a
    panel also carries what its kink terms would add if the velocity changed one example's block
    after the other: kinks of different examples at different α inside one step add up in full,
    taken together they count less, and the step is split until they are apart. ``error`` is the
    larger of the two sums over all panels (accepted or not).

    **Refinement.** A panel is split in two (its two new α are the midpoints of [a, m] and [m, b];
    the jets of all new α of a round are evaluated in one :func:`path_jet` call) when its
    difference exceeds its share of the tolerance, ½·rtol·(G·width/span + its own turning), for the
    mean or the stacked outputs, or, as guards against C and F agreeing by chance, when its
    trapezoid part turns by more than ``max_step_turn``, or when it turns by more than rtol·G in a
    way the rate does not account for (a kink, a reversal) and is wider than ``kink_width``·span
    (two kinks of one example within one step count less than they turn, or nothing if they
    cancel, and no rule on point values can see that: localising the kinks makes it unlikely, but
    ``error`` does not include it). If no panel is over its share but the
    sum is over the tolerance, the panels with the largest differences are split. When the α budget
    ``max_alphas`` does not allow all splits, the largest differences go first. Refinement stops
    when ``error`` ≤ rtol·max(mean, stacked) and no guard asks for a split, after ``max_rounds``
    rounds, at ``max_alphas``, or when no panel can be split in the line's dtype; ``converged`` is
    ``error`` ≤ rtol·max(mean, stacked), and ``error`` is finite whenever the jets are. Each round
    applies the rule to the new intervals only (the halves of a split panel take its fine
    estimates as their coarse ones).

    A reversal (a step of the final grid that turns by more than ``REVERSAL_TURN``) or a vanishing
    velocity marks the result ``singular``.

    Args:
        line, data: the path and the examples.
        bn: BatchNorm policy for the jets.
        initial: evenly spaced α to start from (ignored when ``jet`` is given).
        rtol: relative tolerance of the larger of the mean and the stacked Gauss length.
        max_alphas: the most α points the grid may reach.
        max_step_turn: split every panel whose trapezoid part turns by more than this (None: no
            such guard).
        kink_width: split panels with a kink wider than this fraction of the α range (None: no
            such guard).
        jumps: count the turning the rate misses (kinks, reversals) through the end-tangent angle
            and the kink term. None: unless BatchNorm statistics move with α (``bn`` recompute or
            interpolate on a model with BatchNorm): z′ from the jets then holds them fixed and is
            not the derivative of z(α), the angle between its directions at two α also measures
            the statistics' drift, and G is the integral of the rate alone (trapezoid rule, with
            the same error control).
        max_rounds: the most refinement rounds.
        batch_size, method: passed to :func:`path_jet`.
        jet: jets on a starting grid (reused; its α range is the range integrated over).
        stacked: also the stacked outputs (False: per example only, ``stacked`` None).
    """
    if jumps is None:
        jumps = not (line.has_bn and BNPolicy(bn) != BNPolicy.FROZEN)
    if jet is None:
        start = torch.linspace(0, 1, initial, dtype=torch.float64)
        jet = path_jet(line, data, start, bn=bn, method=method, batch_size=batch_size)

    def evaluate(at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = path_jet(line, data, at, bn=bn, method=method, batch_size=batch_size)
        return new.dz.double(), new.d2z.double()

    alphas, order = torch.sort(jet.alphas.detach().double().cpu())
    keep = torch.ones_like(alphas, dtype=torch.bool)
    keep[1:] = alphas[1:] > alphas[:-1]  # drop repeated α
    idx = order[keep].to(jet.dz.device)
    alphas, dz, d2z = alphas[keep], jet.dz.double()[idx], jet.d2z.double()[idx]
    K, n = dz.shape[0], dz.shape[1]
    grid = _Grid(alphas, dz, d2z, n, jumps, stacked)
    if K < 2 or float(alphas[-1] - alphas[0]) == 0.0:
        zero = torch.zeros(n, dtype=torch.float64, device=dz.device)
        return GaussLength(0.0, zero, 0.0 if stacked else None, K, True, 0.0, grid.singular(), tuple(alphas.tolist()),
                           0.0, 0.0 if stacked else None, rtol)
    nodes = torch.arange(K)
    if K % 2 == 0:  # an odd number of intervals: the last one gets its midpoint
        mid = ((alphas[-2] + alphas[-1]) / 2).reshape(1)
        nodes = torch.cat([nodes[:-1], grid.add(mid, *evaluate(mid)), nodes[-1:]])
    # panels (a, m, b): the coarse rule on [a, b], the fine rule on [a, m] and [m, b]
    pa, pm, pb = nodes[:-2:2], nodes[1::2], nodes[2::2]
    coarse, left, right = grid.rule(pa, pb), grid.rule(pa, pm), grid.rule(pm, pb)
    span = float(alphas[-1] - alphas[0])
    ulp = torch.finfo(line.dtype).eps
    rounds = 0
    while True:
        panel_ex, panel_st = left["ex"] + right["ex"], left["st"] + right["st"]
        diff_mean = (coarse["ex"] - panel_ex).abs().mean(dim=1)
        diff_st = (coarse["st"] - panel_st).abs() + left["merged"] + right["merged"]
        per_example = panel_ex.sum(0)
        g_mean, g_st = float(per_example.mean()), float(panel_st.sum())
        error_mean, error_st = float(diff_mean.sum()), float(diff_st.sum())
        error = max(error_mean, error_st)
        converged = error <= rtol * max(g_mean, g_st, _TINY)
        K = grid.alphas.shape[0]
        if rounds >= max_rounds or K + 2 > max_alphas:
            break
        lo, hi = grid.alphas[pa], grid.alphas[pb]
        width = ((hi - lo) / span).to(dz.device)
        gm, gs = max(g_mean, _TINY), max(g_st, _TINY)
        # guards, asked for even when the estimate meets the tolerance
        trap_ex, trap_st = left["trap"] + right["trap"], left["trap_st"] + right["trap_st"]
        guard = torch.zeros_like(diff_st, dtype=torch.bool)
        if max_step_turn is not None:
            guard |= torch.maximum(trap_ex.amax(dim=1), trap_st) > max_step_turn
        if kink_width is not None:
            kinked = ((panel_ex - trap_ex).amax(dim=1) > rtol * gm) | (panel_st - trap_st > rtol * gs)
            guard |= kinked & (width > kink_width)
        priority = torch.maximum(diff_mean / gm, diff_st / gs)
        if converged:
            split = guard
        else:
            share_mean = 0.5 * rtol * (gm * width + panel_ex.mean(dim=1))
            share_st = 0.5 * rtol * (gs * width + panel_st)
            split = (diff_mean > share_mean) | (diff_st > share_st)
            if not bool(split.any()):  # every panel within its share, yet the sum is not: split the worst
                split = priority >= 0.5 * float(priority.max())
            split |= guard
        splittable = (hi - lo) > _MIN_SPLIT_ULPS * ulp * torch.maximum(hi.abs(), lo.abs()).clamp(min=1.0)
        chosen = torch.nonzero(split & splittable.to(dz.device)).flatten()
        if chosen.numel() == 0:
            break
        room = (max_alphas - K) // 2
        if chosen.numel() > room:
            chosen = chosen[torch.argsort(priority[chosen], descending=True)[:room]]
        chosen = chosen.cpu()
        keep = torch.ones(pa.shape[0], dtype=torch.bool)
        keep[chosen] = False
        a, m, b = pa[chosen], pm[chosen], pb[chosen]
        new = torch.cat([(grid.alphas[a] + grid.alphas[m]) / 2, (grid.alphas[m] + grid.alphas[b]) / 2])
        added = grid.add(new, *evaluate(new))  # one path_jet call per round
        am, mb = added[: chosen.numel()], added[chosen.numel() :]
        # the halves of a split panel are new panels; their coarse rule is its fine one
        fine = grid.rule(torch.cat([a, am, m, mb]), torch.cat([am, m, mb, b]))
        c = chosen.numel()
        kept = torch.nonzero(keep).flatten()
        dev_keep, dev_chosen = kept.to(dz.device), chosen.to(dz.device)
        first = torch.cat([torch.arange(c), torch.arange(2 * c, 3 * c)]).to(dz.device)  # [a, am], [m, mb]
        second = torch.cat([torch.arange(c, 2 * c), torch.arange(3 * c, 4 * c)]).to(dz.device)  # [am, m], [mb, b]
        coarse = _cat(_take(coarse, dev_keep), _cat(_take(left, dev_chosen), _take(right, dev_chosen)))
        left = _cat(_take(left, dev_keep), _take(fine, first))
        right = _cat(_take(right, dev_keep), _take(fine, second))
        pa, pm, pb = torch.cat([pa[kept], a, m]), torch.cat([pm[kept], am, mb]), torch.cat([pb[kept], m, b])
        rounds += 1
    reversal = bool((left["rev"] | right["rev"]).any())
    final = torch.sort(grid.alphas).values
    singular = grid.singular() or reversal
    return GaussLength(g_mean, per_example, g_st if stacked else None, final.shape[0], converged, error, singular,
                       tuple(final.tolist()), error_mean, error_st if stacked else None, rtol)


# ----------------------------------------------------------------------------- angle sums (the default)

GaussRule = Literal["auto", "angles", "kinks"]

# default relative tolerance and step guard (radians) of each rule of :func:`gauss_length`: angle
# sums converge fast (O(h⁴) where smooth), so a tight tolerance costs a few dozen α; the kink rule
# converges linearly at every kink
RTOL = {"angles": 1e-5, "kinks": 1e-3}
MAX_STEP_TURN = {"angles": 0.5, "kinks": 0.1}

# a step turning by at least this is a reversal of a scalar output (T = ±1, the angle is π exactly)
_HALF_TURN = math.pi * (1 - 1e-12)

# elements (intervals × n·k) per chunk of the angle rule: its temporaries stay near 100 MB
_CHUNK_ELEMENTS = 1 << 20


def _fill_source(alphas: torch.Tensor, trusted: torch.Tensor) -> torch.Tensor:
    """For every point and curve, the index of the last point at or before it along α where the
    curve's tangent is trusted (−1 where there is none). ``trusted``: (K, c)."""
    K = trusted.shape[0]
    order = torch.argsort(alphas).to(trusted.device)
    pos = torch.arange(K, device=trusted.device).unsqueeze(1).expand_as(trusted)
    last = torch.cummax(torch.where(trusted.index_select(0, order), pos, -1), dim=0).values  # sorted positions
    src_sorted = torch.where(last >= 0, order.index_select(0, last.clamp(min=0).flatten()).reshape(last.shape), -1)
    return torch.empty_like(src_sorted).index_copy_(0, order, src_sorted)


def _hermite_excess(phi: torch.Tensor, m0: torch.Tensor, m1: torch.Tensor) -> torch.Tensor:
    """How much more than ``phi`` the cubic s on [0, 1] with s(0) = 0, s(1) = phi, s′(0) = m0,
    s′(1) = m1 travels: its total variation Σ|Δs| over the pieces between the zeros of s′ (a
    quadratic), minus phi (≥ 0 up to rounding)."""
    A = 3 * (m0 + m1 - 2 * phi)
    B = 6 * phi - 4 * m0 - 2 * m1
    C = m0
    disc = B * B - 4 * A * C
    sign = torch.where(B >= 0, torch.ones_like(B), -torch.ones_like(B))
    q = -0.5 * (B + sign * disc.clamp(min=0).sqrt())
    one = torch.ones_like(q)
    r1 = torch.where(A != 0, q / torch.where(A != 0, A, one), torch.zeros_like(q))
    r2 = torch.where(q != 0, C / torch.where(q != 0, q, one), torch.zeros_like(q))
    real = disc >= 0
    r1 = torch.where(real, torch.nan_to_num(r1), torch.zeros_like(r1)).clamp(0, 1)
    r2 = torch.where(real, torch.nan_to_num(r2), torch.zeros_like(r2)).clamp(0, 1)
    lo, hi = torch.minimum(r1, r2), torch.maximum(r1, r2)

    def s(t: torch.Tensor) -> torch.Tensor:
        return t * (m0 * (t - 1) ** 2 + phi * t * (3 - 2 * t) + m1 * t * (t - 1))

    sl, sh = s(lo), s(hi)
    return (sl.abs() + (sh - sl).abs() + (phi - sh).abs() - phi).clamp(min=0)


class _Curves:
    """Velocities (and accelerations) of c curves in R^d at the points evaluated so far, shape
    (K, c, d). The unit tangent of a curve at a point is that of the last point at or before it
    (along α) where its speed is above the floor (so a reversal through z′ = 0 still turns by π,
    and a direction lost in rounding is never used); its derivative T′ = z″⊥/‖z′‖ where z″ is known."""

    def __init__(self, v: torch.Tensor, a: torch.Tensor | None, floor: float) -> None:
        self.v, self.a, self.floor = v, a, floor

    def refresh(self, alphas: torch.Tensor) -> None:
        self.speed = self.v.norm(dim=-1)  # (K, c)
        self.ref = self.speed.amax(dim=0)
        self.low = (self.speed <= self.floor * self.ref) | (self.ref == 0)
        self.src = _fill_source(alphas, ~self.low)
        if self.a is not None:
            self.rate, _ = _rate(self.v, self.a, self.floor, self.ref)

    def tangents(self, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit tangents (m, c, d) at the points ``i`` (m,), and where they are defined (m, c)."""
        s = self.src.index_select(0, i)  # (m, c)
        idx = s.clamp(min=0)
        v = torch.gather(self.v, 0, idx.unsqueeze(-1).expand(*idx.shape, self.v.shape[-1]))
        speed = torch.gather(self.speed, 0, idx)
        return v / speed.clamp(min=torch.finfo(v.dtype).tiny).unsqueeze(-1), s >= 0

    def turn(self, i: torch.Tensor, j: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The angle rule on the intervals [α_i, α_j] of widths ``h`` (m,): (m, c).

        The angle φ between the end tangents (0 where either is undefined), plus, where z″ is
        known at both ends and the step is resolved (φ ≤ 1 and the tangent's speed along the
        great circle through the end tangents, times h, at most 1 rad at both ends), what the
        tangent travels back and forth along that circle: ``_hermite_excess`` of the cubic with
        the signed speeds ⟨T′, u⟩·h at the ends (u the circle's direction, towards the other end
        tangent at a and away from it at b). That term vanishes unless the turning reverses its
        sense inside the step (an inflection of a planar curve, where the chord angle alone has an
        O(h²) deficit); on a planar curve it makes the rule O(h⁴)-accurate there.
        """
        (ti, di), (tj, dj) = self.tangents(i), self.tangents(j)
        both = di & dj
        phi = torch.where(both, _angle(ti, tj), torch.zeros_like(both, dtype=ti.dtype))
        if self.a is None:
            return phi
        own = both & ~self.low.index_select(0, i) & ~self.low.index_select(0, j)  # own tangents, and z″ is theirs

        def deriv(k: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            a = self.a.index_select(0, k)
            speed = self.speed.index_select(0, k).clamp(min=torch.finfo(t.dtype).tiny)
            return (a - (a * t).sum(-1, keepdim=True) * t) / speed.unsqueeze(-1)

        c = (ti * tj).sum(-1, keepdim=True)
        ua, _ = _unit(tj - c * ti)
        ub, _ = _unit(c * tj - ti)
        hh = h.reshape(-1, *([1] * (phi.dim() - 1)))
        m0 = (deriv(i, ti) * ua).sum(-1) * hh
        m1 = (deriv(j, tj) * ub).sum(-1) * hh
        resolved = own & (phi <= 1) & (m0.abs() <= 1) & (m1.abs() <= 1)
        return phi + torch.where(resolved, _hermite_excess(phi, m0, m1), torch.zeros_like(phi))


class _AngleGrid:
    """The α evaluated so far (in the order evaluated) with z′ and z″, and the rule on any of their
    intervals, per example (n curves in R^k) and for the stacked outputs (one curve in R^{n·k})."""

    def __init__(self, alphas: torch.Tensor, dz: torch.Tensor, d2z: torch.Tensor, floor: float, stacked: bool = True) -> None:
        self.alphas, self.dz, self.d2z, self.floor, self.stacked = alphas, dz, d2z, floor, stacked
        self._refresh()

    def add(self, alphas: torch.Tensor, dz: torch.Tensor, d2z: torch.Tensor) -> torch.Tensor:
        """Append points; returns their indices."""
        K = self.alphas.shape[0]
        self.alphas = torch.cat([self.alphas, alphas])
        self.dz, self.d2z = torch.cat([self.dz, dz]), torch.cat([self.d2z, d2z])
        self._refresh()
        return torch.arange(K, K + alphas.shape[0])

    def _refresh(self) -> None:
        K, n = self.dz.shape[0], self.dz.shape[1]
        self.ex = _Curves(self.dz, self.d2z, self.floor)
        self.ex.refresh(self.alphas)
        self.st = None
        if self.stacked:
            self.st = _Curves(self.dz.reshape(K, 1, -1), self.d2z.reshape(K, 1, -1), self.floor)
            self.st.refresh(self.alphas)
        self.n = n

    def rule(self, i: torch.Tensor, j: torch.Tensor, angles: bool) -> torch.Tensor:
        """The rule on the intervals [α_i, α_j]: (m, n + 1), the examples then the stacked outputs
        (zeros where they are not computed). ``angles``: :meth:`_Curves.turn`; otherwise the
        trapezoid of the rate."""
        dev = self.dz.device
        h = (self.alphas.index_select(0, j) - self.alphas.index_select(0, i)).to(dev)
        i, j = i.to(dev), j.to(dev)
        st = self.st
        if not angles:
            rates = self.ex.rate if st is None else torch.cat([self.ex.rate, st.rate], dim=1)
            out = (rates.index_select(0, i) + rates.index_select(0, j)) / 2 * h.unsqueeze(1)
            return out if st is not None else torch.cat([out, torch.zeros_like(out[:, :1])], dim=1)
        step = max(1, _CHUNK_ELEMENTS // max(1, self.dz[0].numel()))
        out = []
        for s in range(0, i.shape[0], step):
            a, b, w = i[s : s + step], j[s : s + step], h[s : s + step]
            ex = self.ex.turn(a, b, w)
            out.append(torch.cat([ex, st.turn(a, b, w) if st is not None else torch.zeros_like(ex[:, :1])], dim=1))
        return torch.cat(out) if out else torch.zeros(0, self.n + 1, dtype=self.dz.dtype, device=dev)

    def singular(self) -> bool:
        return bool(self.ex.low.any()) or (self.st is not None and bool(self.st.low.any()))


def _layout(alphas: torch.Tensor) -> tuple[list[list[int]], list[float]]:
    """Panels of four equal intervals on a sorted grid: four consecutive equal intervals where
    there are, else two (their midpoints added), else one (its quarter points added). Returns the
    panels' five node indices (a new point has index K + its position in the returned α) and the
    new α."""
    K = alphas.shape[0]
    a = alphas.tolist()
    w = [a[i + 1] - a[i] for i in range(K - 1)]

    def equal(i: int, m: int) -> bool:
        return i + m <= K - 1 and all(abs(w[i + t] - w[i]) <= 1e-6 * w[i] for t in range(m))

    panels, new = [], []

    def point(x: float) -> int:
        new.append(x)
        return K + len(new) - 1

    i = 0
    while i < K - 1:
        if equal(i, 4):
            panels.append([i, i + 1, i + 2, i + 3, i + 4])
            i += 4
        elif equal(i, 2):
            panels.append([i, point((a[i] + a[i + 1]) / 2), i + 1, point((a[i + 1] + a[i + 2]) / 2), i + 2])
            i += 2
        else:
            q = [point(a[i] + t * (a[i + 1] - a[i]) / 4) for t in (1, 2, 3)]
            panels.append([i, q[0], q[1], q[2], i + 1])
            i += 1
    return panels, new


def _panel_stats(grid: _AngleGrid, nodes: torch.Tensor, angles: bool, conservative: bool) -> dict[str, torch.Tensor]:
    """Romberg on each panel (a = p0, p1, …, p4 = b, equally spaced): G1 = rule on [a, b], G2 on its
    halves, G4 on its quarters; per curve (the examples, then the stacked outputs), (P, n + 1):

    * ``value`` R = G4 + min(D2, D1/4)/3 where D1 = G2 − G1 > 0 and D2 = G4 − G2 > 0 (else G4):
      Richardson's extrapolation where the halvings shrink the sum's deficit fourfold (a smooth
      path: the deficit of a chord angle is O(h³) per step, O(h²) in all), less where they do not
      (a kink, a turn between quarters);
    * ``error`` E = (2/3)|4·D2 − D1|, twice the change of the extrapolation from the halves to the
      quarters: O(h⁴) where the path is smooth (where the actual error of R is about 1/15 of
      ``(4·D2 − D1)/3``), the size of R's error where the sum converges only linearly (a kink
      inside the panel: D1 ≈ 2·D2 and the error of R ≈ (5/6)·D2); with ``conservative`` (paths that may
      have kinks) at least D2;
    * ``step`` the largest angle of a quarter step short of π (the refinement guard: a step through
      a sharp turn, or one whose turning exceeds π and so is counted short, is split; a step that
      turns by π exactly, a reversal of a scalar output, is counted exactly), ``reversal`` whether
      a quarter step turns by more than ``REVERSAL_TURN`` (P,).

    For the trapezoid of the rate (``angles`` False) R extrapolates where D1 and D2 agree in sign,
    and E is the same.
    """
    P = nodes.shape[0]
    p = nodes
    i = torch.cat([p[:, 0], p[:, 1], p[:, 2], p[:, 3], p[:, 0], p[:, 2], p[:, 0]])
    j = torch.cat([p[:, 1], p[:, 2], p[:, 3], p[:, 4], p[:, 2], p[:, 4], p[:, 4]])
    v = grid.rule(i, j, angles).reshape(7, P, -1)
    fine = v[:4]
    g4, g2, g1 = fine.sum(0), v[4] + v[5], v[6]
    d1, d2 = g2 - g1, g4 - g2
    # angle sums grow under refinement (the chord deficit shrinks): extrapolate only that way (a
    # finer sum below a coarser one is a turnaround term overshooting on the coarse step, and the
    # finer sum is the better one); the trapezoid's error has either sign
    agree = (d1 > 0) & (d2 > 0) if angles else d1 * d2 > 0
    value = g4 + torch.where(agree, torch.sign(d2) * torch.minimum(d2.abs(), d1.abs() / 4), torch.zeros_like(d2)) / 3
    error = 2 * (4 * d2 - d1).abs() / 3
    if conservative:
        error = torch.maximum(error, d2.abs())
    if angles:
        step = torch.where(fine < _HALF_TURN, fine, torch.zeros_like(fine)).amax(dim=(0, 2))
        reversal = (fine > REVERSAL_TURN).any(dim=2).any(dim=0)
    else:
        step, reversal = fine.abs().amax(dim=(0, 2)), torch.zeros(P, dtype=torch.bool, device=fine.device)
    return {"value": value, "error": error, "step": step, "reversal": reversal}


def _cat_stats(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: torch.cat([a[k].index_select(0, keep), b[k]]) for k in a}


def _angle_quadrature(
    line: Line,
    data: Dataset,
    *,
    bn: BNPolicy | str,
    initial: int,
    rtol: float,
    max_alphas: int,
    max_step_turn: float | None,
    angles: bool,
    conservative: bool,
    max_rounds: int,
    batch_size: int | None,
    method: JetMethod,
    jet: PathJet | None,
    stacked: bool = True,
) -> GaussLength:
    """The ``angles`` rule of :func:`gauss_length` (and the rate rule, ``angles`` False)."""

    def evaluate(at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = path_jet(line, data, at, bn=bn, method=method, batch_size=batch_size)
        return new.dz.double(), new.d2z.double()

    if jet is None:
        base = torch.linspace(0, 1, initial, dtype=torch.float64)
        panels, extra = _layout(base)
        at = torch.cat([base, torch.tensor(extra, dtype=torch.float64)])
        dz, d2z = evaluate(at)
        alphas = at
        K0 = base.shape[0]
    else:
        alphas, order = torch.sort(jet.alphas.detach().double().cpu())
        keep = torch.ones_like(alphas, dtype=torch.bool)
        keep[1:] = alphas[1:] > alphas[:-1]  # drop repeated α
        idx = order[keep].to(jet.dz.device)
        alphas, dz = alphas[keep], jet.dz.double().index_select(0, idx)
        d2z = jet.d2z.double().index_select(0, idx)
        K0 = alphas.shape[0]
        panels, extra = _layout(alphas) if K0 >= 2 else ([], [])
        if extra:
            new = torch.tensor(extra, dtype=torch.float64)
            ndz, nd2z = evaluate(new)
            alphas, dz = torch.cat([alphas, new]), torch.cat([dz, ndz])
            d2z = torch.cat([d2z, nd2z])
    grid = _AngleGrid(alphas, dz, d2z, speed_floor(line.dtype), stacked)  # the floor of the dtype the jets were computed in
    n = dz.shape[1]
    dev = dz.device
    span = float(alphas[:K0].max() - alphas[:K0].min()) if K0 >= 2 else 0.0
    if not panels or span == 0.0:
        zero = torch.zeros(n, dtype=torch.float64, device=dev)
        final = torch.sort(grid.alphas).values
        return GaussLength(0.0, zero, 0.0 if stacked else None, final.shape[0], True, 0.0, grid.singular(), tuple(final.tolist()),
                           0.0, 0.0 if stacked else None, rtol)
    nodes = torch.tensor(panels, dtype=torch.long)
    stats = _panel_stats(grid, nodes, angles, conservative)
    ulp = torch.finfo(line.dtype).eps
    rounds = 0
    while True:
        value, err = stats["value"], stats["error"]
        per_example = value[:, :n].sum(0)
        g_mean, g_st = float(per_example.mean()), float(value[:, n].sum())
        err_ex, err_st = err[:, :n].mean(1).cpu(), err[:, n].cpu()
        error_mean, error_st = float(err_ex.sum()), float(err_st.sum())
        error = max(error_mean, error_st)
        scale = max(g_mean, g_st, _TINY)
        converged = error <= rtol * scale
        K = grid.alphas.shape[0]
        if rounds >= max_rounds or K + 4 > max_alphas:
            break
        lo, hi = grid.alphas.index_select(0, nodes[:, 0]), grid.alphas.index_select(0, nodes[:, 4])
        own = torch.maximum(value[:, :n].mean(1), value[:, n]).cpu().clamp(min=0)
        share = 0.5 * rtol * (scale * (hi - lo) / span + own)
        over = torch.maximum(err_ex, err_st)
        step = stats["step"].cpu()
        guard = step > max_step_turn if max_step_turn is not None else torch.zeros_like(over, dtype=torch.bool)
        if converged:
            split = guard
        else:
            split = over > share
            if not bool(split.any()):  # every panel within its share, yet the sum is not: split the worst
                split = over >= 0.5 * float(over.max())
            split |= guard
        splittable = (hi - lo) > 4 * _MIN_SPLIT_ULPS * ulp * torch.maximum(hi.abs(), lo.abs()).clamp(min=1.0)
        chosen = torch.nonzero(split & splittable).flatten()
        if chosen.numel() == 0:
            break
        room = (max_alphas - K) // 4
        if chosen.numel() > room:
            priority = over / share.clamp(min=_TINY)
            if max_step_turn is not None:
                priority = torch.maximum(priority, step / max_step_turn)
            chosen = chosen.index_select(0, torch.argsort(priority.index_select(0, chosen), descending=True)[:room])
        parents = nodes.index_select(0, chosen)  # (c, 5)
        c = parents.shape[0]
        x = grid.alphas
        ends = [x.index_select(0, parents[:, t]) for t in range(5)]
        mids = torch.cat([(ends[t] + ends[t + 1]) / 2 for t in range(4)])  # (4c,)
        ndz, nd2z = evaluate(mids)
        added = grid.add(mids, ndz, nd2z).reshape(4, c)
        children = torch.cat(
            [
                torch.stack([parents[:, 0], added[0], parents[:, 1], added[1], parents[:, 2]], 1),
                torch.stack([parents[:, 2], added[2], parents[:, 3], added[3], parents[:, 4]], 1),
            ]
        )
        keep = torch.ones(nodes.shape[0], dtype=torch.bool)
        keep[chosen] = False
        kept = torch.nonzero(keep).flatten()
        stats = _cat_stats(stats, _panel_stats(grid, children, angles, conservative), kept.to(dev))
        nodes = torch.cat([nodes.index_select(0, kept), children])
        rounds += 1
    final = torch.sort(grid.alphas).values
    singular = grid.singular() or bool(stats["reversal"].any())
    return GaussLength(g_mean, per_example, g_st if stacked else None, final.shape[0], converged, error, singular,
                       tuple(final.tolist()), error_mean, error_st if stacked else None, rtol)


def gauss_length(
    line: Line,
    data: Dataset,
    *,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    initial: int = 51,
    rtol: float | None = None,
    max_alphas: int = 4097,
    max_step_turn: float | None | Literal["auto"] = "auto",
    kink_width: float | None = 1 / 4096,
    jumps: bool | None = None,
    max_rounds: int = 40,
    batch_size: int | None = None,
    method: JetMethod = "auto",
    jet: PathJet | None = None,
    rule: GaussRule = "auto",
    stacked: bool = True,
) -> GaussLength:
    """Gauss length G = ∫‖dT/dα‖dα (total turning of the unit tangent), with an error estimate.

    **Angle sums** (``rule="angles"``, the default wherever z′ is continuous): G is the limit of
    Σ angle(T(α_i), T(α_{i+1})) over ever finer grids (the length of the tangent's path on the unit
    sphere), each angle computed as 2·atan2(‖T1 − T2‖, ‖T1 + T2‖), accurate near 0 and π. The
    tangent at a point where ‖z′‖ is below the speed floor is that of the last point before it
    where it is not, so a reversal of direction (z′ through 0) turns by π wherever it falls between
    two grid points. A chord of the tangent's path is never longer than the path, and falls short
    by O(h³) per step where the path is smooth and the tangent turns one way; where it turns back
    within a step (the inflection of a planar curve: common for two outputs) it falls short by
    O(h²), and a turnaround term restores that from z″ at the step's ends (:meth:`_Curves.turn`:
    the excursion of the cubic along the great circle through the end tangents with their speeds
    along it). z′ and z″ come from the jets (:func:`path_jet`), which compute both in one pass.

    The grid is a chain of *panels* of four equal steps (the ``initial`` evenly spaced α, or the
    grid of ``jet``: four consecutive equal intervals make a panel, leftovers get their midpoints or
    quarter points). On a panel the sums over one, two and four steps give a Richardson-extrapolated
    value and an error estimate (:func:`_panel_stats`: O(h⁴) where the path is smooth, the size of
    the error where it converges only linearly). A panel is split into two panels (four new α, the
    jets of all new α of a round in one :func:`path_jet` call) when its estimate exceeds its share of
    the tolerance, ½·rtol·(G·width/span + its own turning), or, whatever the estimate, when one of
    its steps turns by more than ``max_step_turn`` and less than π (a reversal of a scalar output
    turns by π exactly and is counted exactly by one step); if no panel is over its share but the sum is, the
    panels with the largest estimates are split; when the α budget does not allow all splits, the
    largest go first. ``error`` is the larger of the summed estimates for the mean over examples and
    for the stacked outputs; ``converged`` is ``error`` ≤ rtol·max(mean, stacked).

    **Rate** (``jumps`` False): the same panels and refinement with the trapezoid rule of the rate
    ‖z″⊥‖/‖z′‖ in place of the angles (z″ needed at every α). The default where BatchNorm statistics
    move with α (``bn`` recompute or interpolate on a model with BatchNorm), where the direction of
    z′ from the jets may not be that of the curve whose loss is measured.

    **Kinks** (``rule="kinks"``, the default for piecewise-smooth paths, e.g. ReLU networks): adaptive
    quadrature of the rate plus kink terms, kinks localised, and for the stacked outputs kinks of
    different examples inside one step counted apart (:func:`_kink_quadrature`, the former default
    for every path; with ``jumps`` False the rate alone). There, an angle sum converges only
    linearly at each of the many kinks, and kinks of different examples inside one step combine to
    less than their sum (on the 5-16-16-2 ReLU paths of the tests it is 1–2 % off at 4097 α).

    On a path whose kind is unknown (:attr:`Line.structure`) the angle sum is used with an error
    estimate of at least the last halving's change (which bounds the error of a kink).

    A reversal (a step of the final grid that turns by more than ``REVERSAL_TURN``) or a vanishing
    velocity marks the result ``singular``.

    Args:
        line, data: the path and the examples.
        bn: BatchNorm policy for the jets.
        initial: evenly spaced α to start from (ignored when ``jet`` is given).
        rtol: relative tolerance of the larger of the mean and the stacked Gauss length (None:
            ``RTOL`` of the rule, 1e-5 for angle sums, 1e-3 for the kink rule).
        max_alphas: the most α points the grid may reach.
        max_step_turn: split every panel one of whose steps turns by more than this (radians; None:
            no such guard; "auto": ``MAX_STEP_TURN`` of the rule, 0.5 for angle sums, 0.1 for the
            kink rule, whose guard applies to the trapezoid part of a step).
        kink_width: for ``rule="kinks"`` only (see :func:`_kink_quadrature`).
        jumps: count the turning the rate misses (kinks, reversals). None: unless BatchNorm
            statistics move with α. False: the rate rule.
        max_rounds: the most refinement rounds.
        batch_size, method: passed to :func:`path_jet`.
        jet: jets on a starting grid (reused; its α range is the range integrated over).
        rule: ``angles``, ``kinks`` or ``auto`` (``kinks`` for piecewise-smooth paths, else
            ``angles``).
        stacked: also the Gauss length of the stacked outputs (False: the examples' only, about
            half the work; :attr:`GaussLength.stacked` is then None and the refinement serves the
            mean alone).

    >>> from torch import nn
    >>> from mli_theory.path import make_line
    >>> model = nn.Sequential(nn.Linear(1, 2), nn.Tanh(), nn.Linear(2, 2))
    >>> g = torch.Generator().manual_seed(0)
    >>> s0 = {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    >>> s1 = {k: 3 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    >>> line = make_line(model, s0, s1, dtype=torch.float64)
    >>> data = Dataset(torch.ones(3, 1, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64), "mse", "d")
    >>> r = gauss_length(line, data, rtol=1e-4)
    >>> r.converged and r.error <= 1e-4 * max(r.mean, r.stacked)
    True
    """
    if jumps is None:
        jumps = not (line.has_bn and BNPolicy(bn) != BNPolicy.FROZEN)
    kind = getattr(getattr(line, "structure", None), "kind", None)
    if rule == "auto":
        rule = "kinks" if kind == PathKind.PIECEWISE_SMOOTH else "angles"
    if rule not in ("angles", "kinks"):
        raise ValueError(f"rule must be 'auto', 'angles' or 'kinks', got {rule!r}")
    if rtol is None:
        rtol = RTOL[rule]
    if max_step_turn == "auto":
        max_step_turn = MAX_STEP_TURN[rule]
    if rule == "kinks":
        return _kink_quadrature(
            line, data, bn=bn, initial=initial, rtol=rtol, max_alphas=max_alphas, max_step_turn=max_step_turn,
            kink_width=kink_width, jumps=jumps, max_rounds=max_rounds, batch_size=batch_size, method=method, jet=jet,
            stacked=stacked,
        )  # fmt: skip
    conservative = kind not in (PathKind.POLYNOMIAL, PathKind.SMOOTH)
    return _angle_quadrature(
        line, data, bn=bn, initial=initial, rtol=rtol, max_alphas=max_alphas, max_step_turn=max_step_turn,
        angles=bool(jumps), conservative=conservative, max_rounds=max_rounds, batch_size=batch_size, method=method, jet=jet,
        stacked=stacked,
    )  # fmt: skip
