r"""MSE conditions proven on nonlinear paths by enclosures of L′, L″ and the output path: the grid
statement ``grid_slope``, and (b) ``acute_tangents``, (c) ``stationary_pairwise`` and
``stationary_curvature``, (f) ``two_phase`` in its full form from a *tube* of the output path
(:class:`_Tube`); (a) ``zero_residual_gauss`` is disproven when r ≠ 0 is proven. The cell reductions
are argued in ``proofs/condition_enclosures.py``; the statements themselves in
:mod:`mli_theory.theory.symbolic`.

``grid_slope`` (:mod:`mli_theory.theory.statements`): L′(αᵢ) ≤ 0 at every grid point and, with
mᵢ ≤ L″ ≤ Mᵢ on each grid interval [αᵢ, αᵢ₊₁] of length hᵢ,

    max over s ∈ [0, hᵢ] of min(L′(αᵢ) + Mᵢ·s, L′(αᵢ₊₁) − mᵢ·(hᵢ − s)) ≤ 0,

which bounds L′ between the grid points (Taylor from either end), so it implies L′ ≤ 0 on [0, 1].
On polynomial paths :mod:`mli_theory.exact.conditions` proves it in integer arithmetic. Here the
same statement is proven for any path the enclosures cover: L′(αᵢ) by the first-order enclosure
at the point αᵢ (:func:`.partition.enclose`, a radius of rounding only; the statement is monotone
in L′(αᵢ), so their upper bounds stand in for them), and mᵢ, Mᵢ by the enclosure of L″ on the
interval (:func:`.partition.enclose_second`), tightened by splitting it into up to
:data:`PIECES` equal pieces. The envelope is evaluated in exact rational arithmetic. A finite
enclosure of L″ also proves that L is C² on the interval (no ReLU kink there), which the statement
needs. Disproven (False) when L′(αᵢ) > 0 is proven at a grid point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Collection, Sequence

import torch

from ..exact import BudgetExceeded, check_deadline
from ..exact.conditions import HALF_PI_BELOW, _cos_lower, _envelope
from ..exact.dyadic import float_down, float_up
from .convexity import _interval, _outward, _tm_interval
from .enclosures import U, _imul, broadcast_shape, gamma
from .partition import _NoSecond, _Problem, cell_numbers, enclose, enclose_second, end_slope, loss_second_terms, second_walks

PIECES = 16  # each grid interval's bounds of L″ are tried on 1, 2, 4, … up to this many equal pieces
BATCH = 16  # cells per enclosure walk


def prove_grid_slope(problem: _Problem, alphas: Sequence[float], deadline: float | None = None) -> tuple[bool | None, str | None]:
    """(verdict, reason): True proven, False disproven, None undecided (reason says where)."""
    a = [float(v) for v in alphas]
    if len(a) < 2 or a[0] != 0.0 or a[-1] != 1.0 or any(u >= v for u, v in zip(a, a[1:])):
        return None, "undecided: the grid must increase from 0 to 1"
    slopes: list[tuple[float, float]] = []
    for i in range(0, len(a), BATCH):
        check_deadline(deadline)
        part = a[i : i + BATCH]
        slopes += enclose(problem, part, part, deadline)[0]
    for v, (lo, hi) in zip(a, slopes):
        if lo > 0:
            return False, f"disproven: L′({v:.6g}) ≥ {lo:.3g} > 0 is proven at a grid point"
    for v, (lo, hi) in zip(a, slopes):
        if not hi <= 0:
            return None, f"undecided: L′({v:.6g}) ≤ 0 is not proven at this grid point (its enclosure reaches {hi:.3g})"
    todo = list(range(len(a) - 1))
    pieces = 1
    while todo:
        cells: list[tuple[float, float]] = []
        owner: list[int] = []
        for i in todo:
            lo, hi = a[i], a[i + 1]
            cuts = [lo + (hi - lo) * j / pieces for j in range(pieces)] + [hi]
            cells += list(zip(cuts, cuts[1:]))
            owner += [i] * pieces
        bounds: list[tuple[float, float]] = []
        for j in range(0, len(cells), BATCH):
            check_deadline(deadline)
            part = cells[j : j + BATCH]
            got = enclose_second(problem, [c[0] for c in part], [c[1] for c in part], deadline)
            if got is None:
                return None, "undecided: the model has an operation without a second-derivative enclosure"
            bounds += got
        left = []
        for i in todo:
            mine = [b for b, o in zip(bounds, owner) if o == i]
            m, M = min(b[0] for b in mine), max(b[1] for b in mine)
            ok = math.isfinite(m) and math.isfinite(M) and _envelope(
                Fraction(slopes[i][1]), Fraction(slopes[i + 1][1]), Fraction(m), Fraction(M), Fraction(a[i + 1]) - Fraction(a[i])) <= 0
            if not ok:
                left.append(i)
        todo = left
        if todo and pieces >= PIECES:
            i = todo[0]
            return None, (f"undecided: on [{a[i]:.6g}, {a[i + 1]:.6g}] the envelope of L′ from proven bounds of L″ is positive "
                          "(or L″ is unbounded there: a possible ReLU kink)")
        pieces *= 2
    return True, None


SPLIT_CELLS = 32  # the output path's first tube: 32 equal cells (the two-phase split is sought among m/32)
FINE_CELLS = 128  # a finer tube, tried when the first leaves a condition undecided and the budget allows
PAIR_WORK = 2**30  # the pairwise conditions' interval products (cells² × outputs) at most this


@dataclass(frozen=True)
class _Tube:
    """Proven bounds of the output path z (the stacked outputs of all examples, MSE) on the k equal
    cells C_j = [j/k, (j + 1)/k] of [0, 1], and of the residual r = z(1) − y, from one walk of
    second-order enclosures (:func:`.partition.second_walks`) over the k cells and the point α = 1.
    Every bound covers its rounding (per-entry products rounded outward by :func:`_imul`, sums by
    2γ_count times the sum of magnitudes, evaluated in rational arithmetic).

    Attributes:
        k: the number of cells.
        l2_lo: per cell, a lower bound of L″ on it (−inf where not bounded).
        z1_lo, z1_up: per cell, bounds inf ≥ z1_lo and sup ≤ z1_up of ‖z′(α)‖ on it.
        z2_up: per cell, sup ‖z″(α)‖ ≤ z2_up (inf where z″ is not enclosed).
        zr_up: per cell, sup ⟨z′(α), r⟩ ≤ zr_up.
        sr_lo: per cell, inf ⟨z″(s), r⟩ ≥ sr_lo (−inf where not bounded).
        r_up: ‖r‖ ≤ r_up.
        pair_lo: pair_lo[i][j] ≤ ⟨z′(α), z′(s)⟩ for all α ∈ C_i, s ∈ C_j (None: not computed).
    """

    k: int
    l2_lo: tuple[float, ...]
    z1_lo: tuple[float, ...]
    z1_up: tuple[float, ...]
    z2_up: tuple[float, ...]
    zr_up: tuple[float, ...]
    sr_lo: tuple[float, ...]
    r_up: float
    pair_lo: tuple[tuple[float, ...], ...] | None


def _down(s: float, mag: float, g: float) -> float:
    """A float ≤ s − g·mag: the lower end of a computed sum s whose rounding is at most g·mag."""
    if not (math.isfinite(s) and math.isfinite(mag)):
        return -math.inf
    return float_down(Fraction(s) - Fraction(mag) * Fraction(g))


def _upward(s: float, mag: float, g: float) -> float:
    if not (math.isfinite(s) and math.isfinite(mag)):
        return math.inf
    return float_up(Fraction(s) + Fraction(mag) * Fraction(g))


def _tube(problem: _Problem, k: int, deadline: float | None, *, pairs: bool) -> _Tube:
    """The :class:`_Tube` of ``problem`` on k cells (``pairs``: with the pairwise bounds)."""
    a = [j / k for j in range(k)] + [1.0]
    b = [(j + 1) / k for j in range(k)] + [1.0]
    dev = problem.x.device
    rad = cell_numbers(a, b, dev)[1]
    # Σ lo of L″ terms, their magnitude, Σ sup z″², Σ inf z′², Σ sup z′², Σ hi of z′r, its magnitude,
    # Σ lo of z″r, its magnitude
    acc = torch.zeros(k, 9, dtype=torch.float64, device=dev)
    pair = torch.zeros(k, k, 2, dtype=torch.float64, device=dev) if pairs else None
    r2 = torch.zeros((), dtype=torch.float64, device=dev)
    count = chunks = 0
    for out, ys in second_walks(problem, a, b, deadline):
        lo, _, mag = loss_second_terms(out, ys, rad, problem.loss)
        shape = broadcast_shape(out.first.v.c.shape, out.mid.shape)
        hv = rad.reshape(-1, *([1] * (out.mid.dim() - 1)))
        vlo, vhi = _tm_interval(out.first.v, hv, shape)
        dlo, dhi = _tm_interval(out.first.d, hv, shape)
        slo, shi = (t.expand(shape) for t in _interval(out.mid, out.rad))
        y = ys.to(out.mid.dtype)
        rlo, rhi = _outward(vlo[k] - y, vhi[k] - y)  # the point cell [1, 1]: r = z(1) − y
        rlo, rhi = rlo.reshape(1, -1), rhi.reshape(1, -1)
        dlo, dhi = dlo[:k].reshape(k, -1), dhi[:k].reshape(k, -1)
        slo, shi = slo[:k].reshape(k, -1), shi[:k].reshape(k, -1)
        least = dlo.abs().minimum(dhi.abs()) * ((dlo > 0) | (dhi < 0))  # ≤ |z′| entrywise
        most1 = dlo.abs().maximum(dhi.abs())  # ≥ |z′|
        most2 = slo.abs().maximum(shi.abs())  # ≥ |z″|
        zr_lo, zr_hi = _imul(dlo, dhi, rlo, rhi)
        sr_lo, sr_hi = _imul(slo, shi, rlo, rhi)
        acc += torch.stack([lo[:k], mag[:k], (most2 * most2).sum(1), (least * least).sum(1), (most1 * most1).sum(1),
                            zr_hi.sum(1), (zr_lo.abs() + zr_hi.abs()).sum(1),
                            sr_lo.sum(1), (sr_lo.abs() + sr_hi.abs()).sum(1)], 1)
        rmost = rlo.abs().maximum(rhi.abs())
        r2 += (rmost * rmost).sum()
        if pair is not None:
            for i in range(k):
                check_deadline(deadline)
                plo, phi = _imul(dlo[i : i + 1], dhi[i : i + 1], dlo, dhi)
                pair[i, :, 0] += plo.sum(1)
                pair[i, :, 1] += (plo.abs() + phi.abs()).sum(1)
        count += int(dlo.shape[1])
        chunks += 1
    g = 2 * gamma(count + chunks + 8)
    scale = Fraction(2, problem.y.numel())

    tiny = (count + chunks) * 2.0**-1074  # a square that underflows loses at most 2⁻¹⁰⁷⁴ (the sums are exact there)

    def root_up(v: float) -> float:
        return math.sqrt((v + tiny) * (1 + g)) * (1 + 4 * U) if math.isfinite(v) else math.inf

    def root_down(v: float) -> float:
        return math.sqrt(max(v * (1 - g), 0.0)) * (1 - 4 * U) if math.isfinite(v) else 0.0

    l2, z1l, z1u, z2u, zru, srl = [], [], [], [], [], []
    for lsum, lmag, up2, low1, up1, zr, zrm, sr, srm in acc.tolist():
        d = _down(lsum, lmag, g)
        l2.append(float_down(Fraction(d) * scale) if math.isfinite(d) else -math.inf)
        z2u.append(root_up(up2))
        z1l.append(root_down(low1))
        z1u.append(root_up(up1))
        zru.append(_upward(zr, zrm, g))
        srl.append(_down(sr, srm, g))
    pl = None
    if pair is not None:
        pl = tuple(tuple(_down(s, m, g) for s, m in row) for row in pair.tolist())
    return _Tube(k, tuple(l2), tuple(z1l), tuple(z1u), tuple(z2u), tuple(zru), tuple(srl), root_up(float(r2)), pl)


def _point_outputs(problem: _Problem, alphas: list[float], deadline: float | None):
    """Per point α: (lo, hi) tensors enclosing the outputs z(α) of all examples (flattened), and the targets."""
    los, his, ys_all = [], [], []
    for out, ys in second_walks(problem, alphas, alphas, deadline):
        nd = out.mid.dim() - 1
        h = torch.zeros(len(alphas), *([1] * nd), dtype=out.mid.dtype, device=out.mid.device)
        lo, hi = out.first.v.bounds(h)
        los.append(lo.expand(out.mid.shape).reshape(len(alphas), -1))
        his.append(hi.expand(out.mid.shape).reshape(len(alphas), -1))
        ys_all.append(ys.reshape(-1).to(out.mid.dtype))
    return torch.cat(los, 1), torch.cat(his, 1), torch.cat(ys_all)


PI_BELOW = Fraction(math.pi)  # the float math.pi is below π: "G < this" implies G < π


def _cos_at_most(g: Fraction | None) -> Fraction:
    """A rational κ ≤ cos(min(G, π)) for every G ≤ g (None: G unbounded): cos decreases on [0, π]."""
    if g is None or g >= PI_BELOW:
        return Fraction(-1)
    return _cos_lower(g)


def _turning(t: _Tube) -> list[Fraction | None]:
    """Per cell, an upper bound of the turning of the unit tangent z′/‖z′‖ on it: |C|·sup‖z″‖/inf‖z′‖
    (the turning rate ‖z″ − ⟨z″, T⟩T‖/‖z′‖ is at most ‖z″‖/‖z′‖); None where z′ may vanish or z″ is
    not bounded."""
    return [Fraction(1, t.k) * Fraction(z2) / Fraction(z1) if (math.isfinite(z2) and z1 > 0) else None
            for z1, z2 in zip(t.z1_lo, t.z2_up)]


def _suffix(vals: list[Fraction | None]) -> list[Fraction | None]:
    """out[j] = Σ_{i ≥ j} vals[i] (None as soon as a term is None); out[k] = 0."""
    out: list[Fraction | None] = [Fraction(0)]
    for v in reversed(vals):
        out.append(None if (v is None or out[-1] is None) else out[-1] + v)
    return out[::-1]


def _pair_bounds(t: _Tube) -> list[list[Fraction | None]]:
    """Lower bounds of ⟨z′(α), z′(s)⟩ for α ∈ C_i, s ∈ C_j: the better of the entrywise interval
    bound (:attr:`_Tube.pair_lo`) and polarisation, ⟨u, v⟩ = (‖u‖² + ‖v‖² − ‖u − v‖²)/2 with
    ‖z′(α) − z′(s)‖ ≤ ∫ ‖z″‖ ≤ Σ_{l between i and j} |C_l|·sup_{C_l}‖z″‖ (needs z ∈ C¹ there, which a
    finite enclosure of z″ shows). None where neither is finite."""
    assert t.pair_lo is not None
    k = t.k
    m = [Fraction(v) for v in t.z1_lo]
    prefix = [Fraction(0)]  # prefix[j] = Σ_{l<j} sup_{C_l}‖z″‖ over the bounded cells
    holes = [0]  # holes[j] = how many of the cells l < j have z″ unbounded (a possible kink)
    for v in t.z2_up:
        prefix.append(prefix[-1] + (Fraction(v) if math.isfinite(v) else 0))
        holes.append(holes[-1] + (not math.isfinite(v)))
    out: list[list[Fraction | None]] = []
    for i in range(k):
        row: list[Fraction | None] = []
        for j in range(k):
            p = t.pair_lo[i][j]
            best = Fraction(p) if math.isfinite(p) else None
            lo_c, hi_c = min(i, j), max(i, j) + 1
            if holes[hi_c] == holes[lo_c]:  # z ∈ C² on every cell of the span
                dist = (prefix[hi_c] - prefix[lo_c]) / k
                pol = (m[i] * m[i] + m[j] * m[j] - dist * dist) / 2
                best = pol if best is None else max(best, pol)
            row.append(best)
        out.append(row)
    return out


def _end_slope(problem: _Problem, memo: dict, deadline: float | None) -> tuple[float, float]:
    """Proven bounds of L′(1) = (2/N)⟨z′(1), r⟩ (the first-order enclosure at the point α = 1,
    narrowed in ball arithmetic where its sign is open: :func:`.partition.end_slope`)."""
    if "end" not in memo:
        memo["end"] = end_slope(problem, deadline)
    return memo["end"]


def _tubes(problem: _Problem, memo: dict, deadline: float | None, *, pairs: bool):
    """The tubes to try, coarse then fine (each computed once per problem and shared by the
    conditions; one with the pairwise bounds serves those without). Yields (tube, None), or
    (None, reason) when a finer tube does not fit the budget or the memory bound."""
    for k in (SPLIT_CELLS, FINE_CELLS):
        too_big = k * k * problem.y.numel() > PAIR_WORK
        if pairs and too_big:
            yield None, f"the pairwise bounds on {k} cells would take {k}² × {problem.y.numel()} interval products (limit {PAIR_WORK})"
            return
        got = memo.get((k, True)) or (None if pairs else memo.get((k, False)))
        if got is None:
            with_pairs = (pairs or memo.get("pairs", False)) and not too_big
            try:
                got = _tube(problem, k, deadline, pairs=with_pairs)
            except BudgetExceeded:
                if k == SPLIT_CELLS:
                    raise
                yield None, f"the proof budget ran out on the finer tube ({k} cells)"
                return
            memo[(k, with_pairs)] = got
        yield got, None


def _refined(problem: _Problem, memo: dict, deadline: float | None, decide, *, pairs: bool = False) -> tuple[bool | None, str | None]:
    """``decide(tube)`` on the coarse tube, then on the fine one while undecided."""
    verdict, why = None, "undecided"
    for tube, refused in _tubes(problem, memo, deadline, pairs=pairs):
        if tube is None:
            return None, f"{why}; {refused}"
        verdict, why = decide(tube)
        if verdict is not None:
            return verdict, why
    return verdict, why


def _smooth(t: _Tube) -> str | None:
    """Why z ∈ C² on [0, 1] is not shown (None when every cell's z″ is enclosed)."""
    for j, v in enumerate(t.z2_up):
        if not math.isfinite(v):
            return f"z″ is not bounded on [{j / t.k:.6g}, {(j + 1) / t.k:.6g}] (z ∈ C², the hypothesis, is not shown)"
    return None


def _convex_from(t: _Tube) -> int:
    """The smallest m with L″ ≥ 0 proven on every cell of [m/k, 1] (k when not even on the last)."""
    m = t.k
    while m > 0 and t.l2_lo[m - 1] >= 0:
        m -= 1
    return m


def _framed(name: str, problem: _Problem, memo: dict | None, deadline: float | None, decide, *, pairs: bool = False,
            end: bool = True) -> tuple[bool | None, str | None]:
    """The frame shared by the tube conditions: MSE only; the end condition (i) first (``end``:
    False when L′(1) > 0 is proven, undecided unless L′(1) ≤ 0 is proven; otherwise only the
    disproof); then ``decide`` on the coarse and the fine tube."""
    if problem.loss != "mse":
        return None, f"undecided: {name} is an MSE condition"
    memo = {} if memo is None else memo
    lo1, hi1 = _end_slope(problem, memo, deadline)
    if lo1 > 0:
        return False, f"disproven: L′(1) ≥ {lo1:.3g} > 0 is proven, so ⟨z′(1), r⟩ > 0"
    if end and not hi1 <= 0:
        return None, f"undecided: L′(1) ≤ 0 is not proven (its enclosure reaches {hi1:.3g})"
    return _refined(problem, memo, deadline, decide, pairs=pairs)


def prove_two_phase(problem: _Problem, deadline: float | None = None, memo: dict | None = None) -> tuple[bool | None, str | None]:
    """(f) ``two_phase`` proven by enclosures (MSE). For the smallest dyadic split c = m/k with
    L″ ≥ 0 proven on every cell of [c, 1] ((ii); with (i), L′ ≤ 0 there), condition (iii),

        ⟨z′(α), r⟩ ≤ cos G(α)·‖z′(α)‖·arc(α, 1) for every α < c,

    is proven cell by cell on C_j ⊂ [0, c): sup⟨z′, r⟩ (the smaller of the entrywise bound and
    sup‖z′‖·‖r‖) against κ_j·inf‖z′‖·Σ_{i>j}|C_i| inf_{C_i}‖z′‖ when κ_j ≥ 0, or against
    κ_j·sup‖z′‖·Σ_{i≥j}|C_i| sup_{C_i}‖z′‖ when κ_j < 0, where κ_j ≤ cos(min(G_j, π)) and
    G_j = Σ_{i≥j} |C_i|·sup‖z″‖/inf‖z′‖ bounds the turning on [α, 1] for every α ∈ C_j (cos decreases
    on [0, π]; arc(α, 1) ≥ arc(b_j, 1)). Should the full form fail, the simple form is tried:
    ‖r‖ ≤ cos(G)·‖z(1) − z(c′)‖ for a split c′ ≥ c, G ≤ π/2 the total turning. The statement
    (:func:`mli_theory.theory.symbolic.two_phase`) needs z ∈ C² on [0, 1] (finite enclosures of z″
    on every cell). False when L′(1) > 0 is proven ((i) fails for every split)."""

    def decide(t: _Tube) -> tuple[bool | None, str | None]:
        k = t.k
        ok_from = _convex_from(t)
        if ok_from == k:
            return None, f"undecided: L″ ≥ 0 is not proven on [{(k - 1) / k:.6g}, 1]"
        if ok_from == 0:
            return True, None  # L convex on [0, 1] with L′(1) ≤ 0
        why = _smooth(t)
        if why is not None:
            return None, f"undecided: {why}"
        tail = _suffix(_turning(t))
        inf_arc = _suffix([Fraction(v, k) for v in map(Fraction, t.z1_lo)])
        sup_arc = _suffix([Fraction(v) / k if math.isfinite(v) else None for v in t.z1_up])
        failed = None
        for j in range(ok_from):
            kappa = _cos_at_most(tail[j])
            up = [Fraction(v) for v in (t.zr_up[j], ) if math.isfinite(v)]
            if math.isfinite(t.z1_up[j]) and math.isfinite(t.r_up):
                up.append(Fraction(t.z1_up[j]) * Fraction(t.r_up))
            if not up:
                failed = j
                break
            lhs = min(up)
            if kappa >= 0:
                rhs = kappa * Fraction(t.z1_lo[j]) * inf_arc[j + 1]  # type: ignore[operator]
            elif math.isfinite(t.z1_up[j]) and sup_arc[j] is not None:
                rhs = kappa * Fraction(t.z1_up[j]) * sup_arc[j]
            else:
                failed = j
                break
            if not lhs <= rhs:
                failed = j
                break
        if failed is None:
            return True, None
        simple = _two_phase_simple(problem, t, ok_from, deadline)
        if simple:
            return True, None
        return None, (f"undecided: with the split c = {ok_from / k:.6g}, (iii) is not proven on "
                      f"[{failed / k:.6g}, {(failed + 1) / k:.6g}] ({k} cells), nor its simple form")

    return _framed("two_phase", problem, memo, deadline, decide)


def _two_phase_simple(problem: _Problem, t: _Tube, ok_from: int, deadline: float | None) -> bool:
    """The simple form of (iii): G ≤ π/2 (total turning bound) and ‖r‖ ≤ cos(G)·‖z(1) − z(c′)‖ for
    some split c′ = m/k ≥ c (the chord from point enclosures of z)."""
    g_up = _suffix(_turning(t))[0]
    if g_up is None or not g_up < HALF_PI_BELOW:
        return False
    cos_lo = float_down(_cos_lower(g_up))
    k = t.k
    cs = [m / k for m in range(ok_from, k)]
    lo, hi, y = _point_outputs(problem, [1.0] + cs, deadline)
    r_up = float(((lo[0] - y).abs().maximum((hi[0] - y).abs()) ** 2).sum()) ** 0.5 * (1 + 2 * gamma(lo.shape[1] + 8))
    for j in range(1, len(cs) + 1):
        gap = (lo[0] - hi[j]).clamp(min=0) + (lo[j] - hi[0]).clamp(min=0)  # ≤ |z(1) − z(c)| entrywise
        chord = float((gap * gap).sum()) ** 0.5 * (1 - 2 * gamma(lo.shape[1] + 8))
        if r_up <= cos_lo * chord * (1 - 4 * U):
            return True
    return False


def prove_stationary_curvature(problem: _Problem, deadline: float | None = None, memo: dict | None = None) -> tuple[bool | None, str | None]:
    """(c), curvature form, proven by enclosures (MSE): L′(1) ≤ 0 (so ⟨z′(1), r⟩ ≤ 0), the total
    turning bound G = Σ_j |C_j|·sup‖z″‖/inf‖z′‖ < π/2, and ‖r‖·max_j sup‖z″‖ ≤ cos(G)·min_j inf‖z′‖²
    (:func:`mli_theory.theory.symbolic.stationary_curvature`; z ∈ C² shown by finite z″ on every cell)."""

    def decide(t: _Tube) -> tuple[bool | None, str | None]:
        why = _smooth(t)
        if why is not None:
            return None, f"undecided: {why}"
        g = _suffix(_turning(t))[0]
        if g is None:
            return None, f"undecided: z′ may vanish on some cell ({t.k} cells), so the turning is not bounded"
        if not g < HALF_PI_BELOW:
            return None, f"undecided: the proven bound of the total turning, {float(g):.3g}, is not below π/2 ({t.k} cells)"
        if not math.isfinite(t.r_up):
            return None, "undecided: ‖r‖ is not bounded"
        lhs = Fraction(t.r_up) * max(Fraction(v) for v in t.z2_up)
        m = min(Fraction(v) for v in t.z1_lo)
        rhs = _cos_at_most(g) * m * m  # G < π/2 already: κ = cos bound > 0
        if lhs <= rhs:
            return True, None
        return None, f"undecided: ‖r‖·max‖z″‖ ≤ {float(lhs):.3g} exceeds cos(G)·min‖z′‖² ≥ {float(rhs):.3g} ({t.k} cells)"

    return _framed("stationary_curvature", problem, memo, deadline, decide)


def prove_stationary_pairwise(problem: _Problem, deadline: float | None = None, memo: dict | None = None) -> tuple[bool | None, str | None]:
    """(c), pairwise form, proven by enclosures (MSE): L′(1) ≤ 0 and, for every pair of cells
    C_i ≤ C_j (i ≤ j; on i = j all pairs of the cell are covered, more than α ≤ s), the lower bound
    of ⟨z′(α), z′(s)⟩ (:func:`_pair_bounds`) plus that of ⟨z″(s), r⟩ is ≥ 0."""

    def decide(t: _Tube) -> tuple[bool | None, str | None]:
        why = _smooth(t)
        if why is not None:
            return None, f"undecided: {why}"
        pb = _pair_bounds(t)
        for i in range(t.k):
            for j in range(i, t.k):
                p, s = pb[i][j], t.sr_lo[j]
                if p is None or not math.isfinite(s) or not p + Fraction(s) >= 0:
                    return None, (f"undecided: ⟨z′(α), z′(s)⟩ + ⟨z″(s), r⟩ ≥ 0 is not proven for α ∈ [{i / t.k:.6g}, {(i + 1) / t.k:.6g}], "
                                  f"s ∈ [{j / t.k:.6g}, {(j + 1) / t.k:.6g}] ({t.k} cells)")
        return True, None

    return _framed("stationary_pairwise", problem, memo, deadline, decide, pairs=True)


def prove_acute_tangents(problem: _Problem, deadline: float | None = None, memo: dict | None = None) -> tuple[bool | None, str | None]:
    """(b) ``acute_tangents`` proven by enclosures (MSE): ⟨z′(α), r⟩ ≤ 0 on every cell (sup bound)
    and ⟨z′(α), z′(s)⟩ ≥ 0 on every pair of cells (:func:`_pair_bounds`). False when L′(1) > 0 is
    proven (then ⟨z′(1), r⟩ > 0). The walk needs second-derivative rules (z ∈ C¹ is what (b)
    assumes; a finite enclosure of z′ on every cell is what is used)."""

    def decide(t: _Tube) -> tuple[bool | None, str | None]:
        for j, v in enumerate(t.zr_up):
            if not v <= 0:
                return None, f"undecided: ⟨z′(α), r⟩ ≤ 0 is not proven on [{j / t.k:.6g}, {(j + 1) / t.k:.6g}] (its bound is {v:.3g}; {t.k} cells)"
        pb = _pair_bounds(t)
        for i in range(t.k):
            for j in range(i, t.k):
                if pb[i][j] is None or not pb[i][j] >= 0:  # type: ignore[operator]
                    return None, (f"undecided: ⟨z′(α), z′(s)⟩ ≥ 0 is not proven for α ∈ [{i / t.k:.6g}, {(i + 1) / t.k:.6g}], "
                                  f"s ∈ [{j / t.k:.6g}, {(j + 1) / t.k:.6g}] ({t.k} cells)")
        return True, None

    return _framed("acute_tangents", problem, memo, deadline, decide, pairs=True, end=False)


def disprove_zero_residual(problem: _Problem, deadline: float | None = None, memo: dict | None = None) -> tuple[bool | None, str | None]:
    """(a) (stacked and per example) needs r = z(1) − y = 0: False when an entry of r is proven
    ≠ 0; otherwise undecided (r = 0 cannot be proven by floating-point enclosures)."""
    if problem.loss != "mse":
        return None, "undecided: zero_residual_gauss is an MSE condition"
    memo = {} if memo is None else memo
    if "r" not in memo:
        lo, hi, y = _point_outputs(problem, [1.0], deadline)
        rlo, rhi = lo[0] - y, hi[0] - y  # each rounded once: r ≠ 0 where these exclude 0 by more than a rounding
        pad = (rlo.abs() + rhi.abs()) * (4 * U) + 2.0**-1000
        memo["r"] = bool(((rlo - pad > 0) | (rhi + pad < 0)).any())
    if memo["r"]:
        return False, "disproven: r = z(1) − y ≠ 0 is proven (an entry's enclosure excludes 0)"
    return None, "undecided: r = 0 cannot be proven by floating-point enclosures"


PROVERS = {  # in the order they are tried: cheap first (the budget is shared)
    "zero_residual_gauss": lambda problem, alphas, deadline, memo: disprove_zero_residual(problem, deadline, memo),
    "zero_residual_gauss_per_example": lambda problem, alphas, deadline, memo: disprove_zero_residual(problem, deadline, memo),
    "grid_slope": lambda problem, alphas, deadline, memo: prove_grid_slope(problem, alphas, deadline),
    "two_phase": lambda problem, alphas, deadline, memo: prove_two_phase(problem, deadline, memo),
    "stationary_curvature": lambda problem, alphas, deadline, memo: prove_stationary_curvature(problem, deadline, memo),
    "stationary_pairwise": lambda problem, alphas, deadline, memo: prove_stationary_pairwise(problem, deadline, memo),
    "acute_tangents": lambda problem, alphas, deadline, memo: prove_acute_tangents(problem, deadline, memo),
}
PAIRWISE = frozenset({"stationary_pairwise", "acute_tangents"})  # their tubes carry the pairwise bounds



def prove_by_enclosures(line, data, alphas: Sequence[float], *, names: Collection[str] = tuple(PROVERS), bn,
                        batch_size: int | None = None, reference=None, deadline: float | None = None
                        ) -> tuple[dict[str, bool | None], dict[str, str]]:
    """The conditions ``names`` (of :data:`PROVERS`) proven on a line, after the same differential
    validation as every certificate (the enclosures of L at the validation α must contain the
    measured values, ``reference``): (verdicts name → True / False / None, reasons of the undecided
    and disproven ones)."""
    from ..exact import BudgetExceeded
    from ..path import BNPolicy
    from .partition import Unsupported, _validate, prepare, strict_arithmetic
    from .validation import Reference

    wanted = [n for n in PROVERS if n in names]
    verdicts: dict[str, bool | None] = {n: None for n in wanted}
    reasons: dict[str, str] = {}
    try:
        problem = prepare(line, data, BNPolicy(bn), batch_size=batch_size)
    except Unsupported as exc:
        return verdicts, {n: f"undecided: no enclosure of this model ({exc})" for n in wanted}
    problem.reference = reference if reference is not None else Reference(line, data, BNPolicy(bn), batch_size)
    traced = problem.reference.trace_fidelity()
    if traced is not None:  # the conditions would be proven about another computation
        return verdicts, {n: f"undecided: {traced}" for n in wanted}
    with strict_arithmetic(problem.x.device):
        try:
            differs = _validate(problem, BATCH, deadline)[0]
        except BudgetExceeded:
            differs = "the proof budget ran out"
        if differs is not None:
            return verdicts, {n: f"undecided: {differs}" for n in wanted}
        # the output path's tubes and L′(1), shared by the conditions; when a pairwise condition is
        # wanted every tube carries the pairwise bounds (one walk per tube instead of two)
        memo: dict = {"pairs": bool(PAIRWISE & set(wanted))}
        for name in wanted:
            try:
                verdicts[name], why = PROVERS[name](problem, alphas, deadline, memo)
            except BudgetExceeded:
                verdicts[name], why = None, "undecided: the proof budget ran out"
            except _NoSecond as exc:
                verdicts[name], why = None, f"undecided: no second-derivative enclosure ({exc})"
            if why:
                reasons[name] = why
    return verdicts, reasons


def grid_slope_by_enclosures(line, data, alphas: Sequence[float], *, bn, batch_size: int | None = None, reference=None,
                             deadline: float | None = None) -> tuple[bool | None, str | None]:
    """:func:`prove_grid_slope` on a line, validated first (:func:`prove_by_enclosures`)."""
    verdicts, reasons = prove_by_enclosures(line, data, alphas, names=("grid_slope",), bn=bn, batch_size=batch_size,
                                            reference=reference, deadline=deadline)
    return verdicts["grid_slope"], reasons.get("grid_slope")
