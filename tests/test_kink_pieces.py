"""The kinks' share of L′ piece by piece along a cell (certify/adjoint.py: ``_kink_pairs``,
``kink_pieces``; certify/partition.py: ``_cell_bounds``, ``_intersect``).

Outside its window a mixed neuron's slope D is known, so its term (D − D̃)·g·ṽ′ keeps its sign and
the terms of neurons whose crossings lie at different places along the cell cancel as in L′
itself. Checked here: the sweep of sorted window ends against the sum it stands for, evaluated
term by term at random t (so the sort, the prefix sums, the clamping to the cell and the pieces of
length zero are what they claim); one neuron's states against sampled points of its Taylor models
(the direction of the crossing, the sign of D − D̃, the radius of g·ṽ′); every enclosure that
``enclose`` intersects, each on its own, against the 60-digit L and L′; and a cell with two kinks
of opposite jumps, where the pieces are much narrower than the Clarke bound."""

from __future__ import annotations

import math
import random

import mpmath as mp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mli_theory as mt
from mli_theory.certify import partition as P
from mli_theory.certify.adjoint import _Cot, _kink_pairs, kink_pieces
from mli_theory.certify.enclosures import Kink
from mli_theory.certify.partition import enclose, prepare
from mli_theory.path import BNPolicy

from test_adjoint_kinks import deep_cases
from test_enclosure_soundness import _build, _reference

mp.mp.dps = 60


@st.composite
def swept_pairs(draw):
    """Neurons of one cell (radius h): window ends (some outside the cell, some infinite) and the
    affine upper and lower bounds of the three states, as _kink_pairs lays them out."""
    h = draw(st.sampled_from([2.0**-3, 2.0**-7, 0.3]))
    m = draw(st.integers(1, 12))
    rnd = random.Random(draw(st.integers(0, 2**30)))
    ends = []
    for _ in range(m):
        kind = rnd.random()
        if kind < 0.15:
            ends.append((-math.inf, math.inf))
        else:
            a, b = sorted(rnd.uniform(-1.5 * h, 1.5 * h) for _ in range(2))
            if kind < 0.3:  # the shared ends of several neurons
                a = b = rnd.choice([-h, 0.0, h / 2])
            ends.append((a, b))
    states = [[rnd.uniform(-2, 2) for _ in range(m)] for _ in range(12)]
    for s in (0, 4, 8):  # the lower bound of each state below its upper bound (slopes alike: any)
        states[s + 2] = [lo - abs(rnd.gauss(0, 1)) for lo in states[s]]
        states[s + 3] = list(states[s + 1])
    return h, ends, states


def _brute(t, ends, states, j):
    """Σ over neurons of the ``j``-th bound (0: upper, 2: lower) of the state at t, term by term."""
    total = 0.0
    for i, (a, b) in enumerate(ends):
        base = 0 if t < a else 8 if t > b else 4
        total += states[base + j][i] + states[base + j + 1][i] * t
    return total


@settings(deadline=None, max_examples=200)
@given(swept_pairs())
def test_the_pieces_are_the_term_by_term_sums_between_window_ends(case):
    h, ends, states = case
    m = len(ends)
    cell = torch.zeros(m, dtype=torch.long)
    cols = [torch.tensor([e[0] for e in ends], dtype=torch.float64), torch.tensor([e[1] for e in ends], dtype=torch.float64)]
    cols += [torch.tensor(s, dtype=torch.float64) for s in states]
    other = tuple(t[:1].clone() for t in [cell + 1, *cols])  # a neuron of another cell: ignored
    got = kink_pieces(torch.tensor([h, h], dtype=torch.float64), [(cell, *cols), other])[0]
    assert got is not None
    a, b, a_up, b_up, a_lo, b_lo = (t.tolist() for t in got)
    assert a[0] == -h and b[-1] == h and all(x < y for x, y in zip(a, b))
    assert all(y <= x2 for y, x2 in zip(b, a[1:]))  # the pieces follow each other (zero-length ones dropped)
    edges = {e for pair in ends for e in pair}
    rng = random.Random(len(ends))
    for k in range(len(a)):
        for _ in range(3):
            t = rng.uniform(a[k], b[k])
            if t in edges or t in (a[k], b[k]):
                continue
            up, lo = _brute(t, ends, states, 0), _brute(t, ends, states, 2)
            mag = sum(abs(v) for s in states for v in s) * (1 + h)
            assert a_up[k] + b_up[k] * t >= up
            assert a_lo[k] + b_lo[k] * t <= lo
            assert a_up[k] + b_up[k] * t <= up + 1e-12 * mag  # tight: only the rounding pad
            assert a_lo[k] + b_lo[k] * t >= lo - 1e-12 * mag


@st.composite
def one_neuron(draw):
    f = st.floats(-2, 2, allow_nan=False, allow_infinity=False)
    h = draw(st.sampled_from([2.0**-4, 2.0**-9, 0.5]))
    vc, vg = draw(f), draw(f) / h * draw(st.sampled_from([0.0, 0.1, 1.0]))
    ve = abs(draw(f)) * h * draw(st.sampled_from([0.0, 0.01, 1.0]))
    g = (draw(f), draw(f), abs(draw(f)) * draw(st.sampled_from([0.0, 0.1])))
    d = (draw(f), draw(f), abs(draw(f)) * draw(st.sampled_from([0.0, 0.1])))
    slope = draw(st.sampled_from([0.0, 0.01, 0.3]))
    return h, vc, vg, ve, g, d, slope, draw(st.integers(0, 2**30))


@settings(deadline=None, max_examples=300)
@given(one_neuron())
def test_a_neurons_states_contain_its_term_wherever_its_sign_is_as_they_say(case):
    """Sample t, the neuron's v(t) ∈ ĉ + ĝt ± e, g(t) ∈ g_c + g_s·t ± g_r and ṽ′(t) likewise: with D
    the true slope at v(t), (D − D̃)·g·ṽ′ lies in the state's bounds for t's place in the window."""
    h, vc, vg, ve, (gc, gs, gr), (dc, dg, de), slope, seed = case
    f64 = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    pos = torch.zeros(1, 1, dtype=torch.bool)
    idx = (torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    kink = Kink(pos, pos.clone(), idx, f64(0.0), slope, (f64(vc), f64(vg), f64(ve), f64(dc), f64(dg), f64(de)))
    g = _Cot(torch.tensor([[gc]], dtype=torch.float64), torch.tensor([[gs]], dtype=torch.float64), torch.tensor([[gr]], dtype=torch.float64))
    cell, tl, tr, *states = (t.item() if t.numel() else t for t in _kink_pairs(g, kink, torch.tensor([h], dtype=torch.float64)))
    rng = random.Random(seed)
    dtilde = (1.0 + slope) / 2
    for _ in range(40):
        t = rng.uniform(-h, h)
        v = vc + vg * t + rng.uniform(-ve, ve)
        if v == 0:
            continue
        gv = gc + gs * t + rng.uniform(-gr, gr)
        dv = dc + dg * t + rng.uniform(-de, de)
        term = ((1.0 if v > 0 else slope) - dtilde) * gv * dv
        base = 0 if t < tl else 8 if t > tr else 4
        up = states[base] + states[base + 1] * t
        lo = states[base + 2] + states[base + 3] * t
        tol = 1e-13 * (1 + abs(term))
        assert lo - tol <= term <= up + tol, (t, tl, tr, base, term, lo, up)
        if base != 4:  # outside the window the sign of v is known
            assert (v > 0) == ((t > tr) == (vg > 0)), (t, tl, tr, v)


@settings(deadline=None)  # the profile's count: 60 in CI, 400 under HYPOTHESIS_PROFILE=stress
@given(deep_cases())
def test_each_enclosure_that_is_intersected_contains_the_60_digit_slope(case):
    """The Clarke bound and the pieces are intersected (``_intersect``): each must hold on its own,
    or the intersection could hide a wrong one."""
    act, widths, loss, n, seed, scale, (ca, cb), fracs = case
    model, start, end, x, y = _build(act, widths, False, seed, scale, loss, n)
    line = mt.make_line(model, start, end, dtype=torch.float64)
    prob = prepare(line, mt.Dataset(x, y, loss, "t"), BNPolicy.FROZEN, adjoint=True)
    seen = []
    original = P._intersect

    def spy(cands):
        seen.append(cands)
        return original(cands)

    P._intersect = spy
    try:
        enclose(prob, [ca], [cb])
    finally:
        P._intersect = original
    assert len(seen) == 1
    for f in fracs + [0.0, 1.0]:
        alpha = ca + f * (cb - ca)
        dL = _reference(model, act, start, end, x, y, loss, alpha)[1]
        for (dlo, dhi), _ in seen[0]:
            assert mp.mpf(dlo) <= dL <= mp.mpf(dhi), (case, float(dL), dlo, dhi)


def _opposite_kinks():
    """x = 1, two hidden ReLUs v_i(α) = w(α) + b_i with w moving from −s to s, crossing zero at
    α = 0.45 and 0.55; z = relu(v1) − relu(v2), MSE against y = −2: L′ = 2(z − y)z′ jumps up at
    0.45 and back down at 0.55."""
    s = 4.0
    model = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    start = {"0.weight": f64([[-s], [-s]]), "0.bias": f64([s - 2 * s * 0.45, s - 2 * s * 0.55]),
             "2.weight": f64([[1.0, -1.0]]), "2.bias": f64([0.0])}
    end = dict(start, **{"0.weight": f64([[s], [s]])})
    return model, start, end, f64([[1.0]]), f64([[-2.0]])


def test_kinks_of_opposite_jumps_in_one_cell_cancel_piece_by_piece():
    model, start, end, x, y = _opposite_kinks()
    line = mt.make_line(model, start, end, dtype=torch.float64)
    prob = prepare(line, mt.Dataset(x, y, "mse", "t"), BNPolicy.FROZEN, adjoint=True)
    seen = []
    original = P._intersect
    P._intersect = lambda cands: (seen.append(cands), original(cands))[1]
    try:
        (dlo, dhi), _ = (t[0] for t in enclose(prob, [0.375], [0.625]))
    finally:
        P._intersect = original
    (clarke, _), (swept, _) = seen[0]
    values = [_reference(model, "relu", start, end, x, y, "mse", a)[1] for a in (0.375, 0.4, 0.46, 0.5, 0.54, 0.6, 0.625)]
    assert min(values) < max(values) - 1  # the jumps are there
    for v in values:
        assert mp.mpf(dlo) <= v <= mp.mpf(dhi)
    # one jump up, one down: the pieces are bounded by the larger state, the Clarke bound by both jumps
    assert swept[1] - swept[0] < 0.75 * (clarke[1] - clarke[0]), (clarke, swept)


def test_the_relu_rule_records_each_mixed_neurons_taylor_models():
    """The window record is the pre-activation's own Taylor model (its remainder included: the sign
    is unknown wherever |ĉ + ĝt| ≤ e) and the derivative's, at the mixed neurons, in their order."""
    from mli_theory.certify.enclosures import TM, Enclosure, EnclosureNumbers, _relu_like

    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    cells, n, k = 3, 4, 6
    nt = EnclosureNumbers(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), torch.full((cells,), 2.0**-4, dtype=torch.float64))
    nt.deferred = []
    v = TM(r(cells, n, k) * 0.1, r(cells, n, k), r(cells, n, k).abs() * 0.05)
    d = TM(r(cells, n, k), r(cells, n, k), r(cells, n, k).abs() * 0.01)
    _relu_like(nt, Enclosure(v, d))
    kink = nt.deferred[0]
    vc, vg, ve, dc, dg, de = kink.window
    assert kink.idx[0].numel() > 3
    at = lambda t: t[kink.idx]  # noqa: E731
    assert torch.equal(vc, at(v.c)) and torch.equal(vg, at(v.g)) and torch.equal(dc, at(d.c)) and torch.equal(dg, at(d.g))
    assert bool((ve >= at(v.e)).all()) and bool((ve <= at(v.e) * (1 + 1e-12) + 1e-12).all())
    assert bool((de >= at(d.e)).all())


@settings(deadline=None, max_examples=200)
@given(swept_pairs(), st.floats(-3, 3), st.floats(-3, 3), st.floats(0, 2), st.sampled_from([1.0, 0.5, 1 / 3]))
def test_the_cells_bounds_from_pieces_are_their_exact_extremes_and_integrals(case, c, g, e, scale):
    """``_cell_bounds`` with pieces against the same quantities in exact rationals: L′ ≤ C + E′ +
    A_up + (G + B_up)t on each piece, its maximum at a piece's end, its integral piece by piece."""
    from fractions import Fraction as Fr

    h, ends, states = case
    m = len(ends)
    cols = [torch.tensor([x[0] for x in ends], dtype=torch.float64), torch.tensor([x[1] for x in ends], dtype=torch.float64)]
    cols += [torch.tensor(s, dtype=torch.float64) for s in states]
    pieces = kink_pieces(torch.tensor([h], dtype=torch.float64), [(torch.zeros(m, dtype=torch.long), *cols)])[0]
    a, b, a_up, b_up, a_lo, b_lo = (t.tolist() for t in pieces)
    row = [c, g, e, abs(c) + abs(g) * h + e]
    (lo, hi), (low, up, up3) = P._cell_bounds(row, 0.25, pieces, Fr(h), Fr(scale), 0.0)
    C, G, E = Fr(c), Fr(g), Fr(e) + Fr(0.25)
    ex_hi = max(C + E + Fr(au) + (G + Fr(bu)) * Fr(t) for ai, bi, au, bu in zip(a, b, a_up, b_up) for t in (ai, bi))
    ex_lo = min(C - E + Fr(al) + (G + Fr(bl)) * Fr(t) for ai, bi, al, bl in zip(a, b, a_lo, b_lo) for t in (ai, bi))
    ex_int = sum((Fr(bi) - Fr(ai)) * (C + E + Fr(au) + (G + Fr(bu)) * (Fr(ai) + Fr(bi)) / 2) for ai, bi, au, bu in zip(a, b, a_up, b_up))
    ex_low = sum((Fr(bi) - Fr(ai)) * (C - E + Fr(al) + (G + Fr(bl)) * (Fr(ai) + Fr(bi)) / 2) for ai, bi, al, bl in zip(a, b, a_lo, b_lo))

    def pos(ai, bi, au, bu):
        f1, f2 = C + E + Fr(au) + (G + Fr(bu)) * Fr(ai), C + E + Fr(au) + (G + Fr(bu)) * Fr(bi)
        if f1 >= 0 and f2 >= 0:
            return (Fr(bi) - Fr(ai)) * (f1 + f2) / 2
        return 0 if max(f1, f2) <= 0 else (Fr(bi) - Fr(ai)) * max(f1, f2) ** 2 / (2 * (abs(f1) + abs(f2)))

    ex_up = sum(pos(*p) for p in zip(a, b, a_up, b_up))
    s = Fr(scale)
    mag = (abs(C) + E + abs(G) * Fr(h) + sum(Fr(abs(x)) for col in (a_up, a_lo) for x in col) + 1) * s
    for got, want, side in ((hi, s * ex_hi, 1), (lo, s * ex_lo, -1), (up3, s * ex_int, 1), (low, s * ex_low, -1), (up, s * ex_up, 1)):
        assert side * (Fr(got) - want) >= 0, (got, float(want))
    for got, want in ((hi, s * ex_hi), (lo, s * ex_lo), (up3, s * ex_int), (low, s * ex_low)):
        assert abs(Fr(got) - want) <= mag * Fr(1, 10**10), (got, float(want))
    # the positive part's bound: exact where a piece keeps its sign, the triangle's cover
    # length·max(ends)/2 where it changes sign
    def cover(ai, bi, au, bu):
        f1, f2 = C + E + Fr(au) + (G + Fr(bu)) * Fr(ai), C + E + Fr(au) + (G + Fr(bu)) * Fr(bi)
        if (f1 >= 0) == (f2 >= 0):
            return pos(ai, bi, au, bu)
        return (Fr(bi) - Fr(ai)) * max(f1, f2) / 2

    assert Fr(up) <= s * sum(cover(*p) for p in zip(a, b, a_up, b_up)) + mag * Fr(1, 10**10)


def test_enclosures_that_disagree_give_unknown_naming_it_never_a_verdict(monkeypatch):
    """An empty intersection means one enclosure is wrong: the certificate is ``unknown`` with that
    reason (through the library's certificate path), not a crash and not a verdict."""
    from mli_theory.certify import certificate as C

    from test_adjoint_kinks import _one_kink

    model, start, end, x, _ = _one_kink(False)
    y = torch.full((1, 1), 5.0, dtype=torch.float64)  # z rises from 0 to 3 < 5: L′ from 0 to negative, cells decide it
    line = mt.make_line(model, start, end, dtype=torch.float64)
    assert C._by_enclosures(line, mt.Dataset(x, y, "mse", "t"), 1e-6, BNPolicy.FROZEN, None, None).status == "monotone"

    def disagree(cands):
        raise P.EnclosuresDisagree("the enclosures of L′ on a cell disagree: (planted)")

    monkeypatch.setattr(P, "_intersect", disagree)
    cert = C._by_enclosures(line, mt.Dataset(x, y, "mse", "t"), 1e-6, BNPolicy.FROZEN, None, None)
    assert cert.status == "unknown"
    assert "internal check" in cert.reason and "disagree" in cert.reason
