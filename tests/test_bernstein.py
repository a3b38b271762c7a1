"""Exact Bernstein bounds (mli_theory.exact.bernstein) against independent references.

References used here, none of which go through the module under test:

* ``peval`` / ``peval2``: the textbook sum Σ c_i t^i in exact Fractions;
* ``bernstein_ref``: Bernstein coefficients of p on [u, u + h] from the power coefficients of
  p(u + h·a) (expanded here in Fractions) and b_j = Σ_{i≤j} C(j,i)/C(d,i)·g_i, itself checked by
  rebuilding Σ_j b_j C(d,j) a^j (1 − a)^{d−j} = p(u + h·a);
* ``ref_nonneg`` / ``ref_nonneg2``: sympy real-root isolation (and, for two variables, a
  discriminant / resultant cell decomposition in s) deciding p ≥ 0 on [0, 1] (or [0, 1]²)
  exactly, with a witness point where p < 0.
"""

from __future__ import annotations

from fractions import Fraction
from math import comb, lcm

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from mli_theory.exact import bernstein as bz

# ----------------------------------------------------------------------------- references


def peval(c, t) -> Fraction:
    """p(t) = Σ c_i t^i, exactly."""
    t = Fraction(t)
    return sum((Fraction(ci) * t**i for i, ci in enumerate(c)), Fraction(0))


def peval2(c, x, y) -> Fraction:
    """p(x, y) = Σ c[i][j] x^i y^j, exactly."""
    x, y = Fraction(x), Fraction(y)
    return sum((Fraction(cij) * x**i * y**j for i, row in enumerate(c) for j, cij in enumerate(row)), Fraction(0))


def pmul(a, b):
    out = [0] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def ppow(a, e):
    out = [1]
    for _ in range(e):
        out = pmul(out, a)
    return out


def padd(a, b):
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


def compose_affine(c, u, h):
    """Power coefficients (Fractions) of g(a) = p(u + h·a)."""
    out = [Fraction(0)] * len(c)
    lin = [Fraction(u), Fraction(h)]
    for i, ci in enumerate(c):
        for r, v in enumerate(ppow(lin, i)):
            out[r] += ci * v
    return out


def bernstein_ref(c, u=Fraction(0), h=Fraction(1)) -> list[Fraction]:
    """Bernstein coefficients of p on [u, u + h] (degree len(c) − 1)."""
    g = compose_affine(c, u, h)
    d = len(c) - 1
    return [sum((Fraction(comb(j, i), comb(d, i)) * g[i] for i in range(j + 1)), Fraction(0)) for j in range(d + 1)]


def bernstein_rebuild(b):
    """Σ_j b_j C(d,j) a^j (1 − a)^{d−j} as power coefficients."""
    d = len(b) - 1
    out = [0] * (d + 1)
    for j, bj in enumerate(b):
        basis = pmul([0] * j + [comb(d, j)], ppow([1, -1], d - j))
        out = padd(out, [bj * v for v in basis])
    return out


def _int_coeffs(c) -> list[int]:
    """A positive multiple of the rational coefficients c that is integral (same sign as p)."""
    c = [Fraction(x) for x in c]
    den = 1
    for x in c:
        den = lcm(den, x.denominator)
    return [int(x * den) for x in c]


_T = sympy.Symbol("t")


def ref_nonneg(c) -> tuple[bool, Fraction | None]:
    """(p ≥ 0 on [0, 1], a point of [0, 1] with p < 0 or None), decided with sympy root isolation.

    p has constant sign between consecutive distinct real roots, so p ≥ 0 on [0, 1] iff p ≥ 0 at
    0, at 1 and at one point strictly between each two consecutive roots in [0, 1].
    """
    c = _int_coeffs(c)
    while len(c) > 1 and c[-1] == 0:
        c = c[:-1]
    for x in (Fraction(0), Fraction(1)):
        if peval(c, x) < 0:
            return False, x
    samples = []
    if len(c) > 1:
        P = sympy.Poly(list(reversed(c)), _T)
        for e in [None] + list(range(20, 400, 20)):
            eps = None if e is None else sympy.Rational(1, 2**e)
            ivs = sorted((Fraction(int(a.p), int(a.q)), Fraction(int(b.p), int(b.q))) for (a, b), _ in P.intervals(inf=0, sup=1, eps=eps, fast=True))
            gaps = [(ivs[i][1], ivs[i + 1][0]) for i in range(len(ivs) - 1)]
            pts = [(g0 + g1) / 2 for g0, g1 in gaps]
            if all(g0 < g1 for g0, g1 in gaps) and all(peval(c, x) != 0 for x in pts):
                samples += pts
                break
        else:  # pragma: no cover
            raise AssertionError("reference could not separate the roots")
    for x in samples:
        if peval(c, x) < 0:
            return False, x
    return True, None


_A, _S = sympy.symbols("a s")


def ref_nonneg2(c) -> tuple[bool, tuple[Fraction, Fraction] | None]:
    """(p ≥ 0 on [0, 1]², a point with p < 0 or None), exactly (cylindrical decomposition in s).

    With Q the square-free part of p, the real roots of Q(·, s) in [0, 1] keep their number and
    order while s stays between consecutive real roots of lc_a(Q)·disc_a(Q)·Q(0, s)·Q(1, s), so the
    sign pattern of p(·, s) on [0, 1] is the same for every s of such a cell; by continuity p ≥ 0 on
    [0, 1]² iff p(·, s) ≥ 0 on [0, 1] at one sample s per cell (decided by :func:`ref_nonneg`).
    """
    expr = sum(int(cij) * _A**i * _S**j for i, row in enumerate(c) for j, cij in enumerate(row))
    if expr == 0:
        return True, None
    Q = sympy.Poly(sympy.sqf_part(sympy.Poly(expr, _A, _S)).as_expr(), _A, _S)
    qa = sympy.Poly(Q.as_expr(), _A)
    crit = [qa.LC(), Q.as_expr().subs(_A, 0), Q.as_expr().subs(_A, 1)]
    if qa.degree() >= 2:
        crit.append(sympy.discriminant(Q.as_expr(), _A))
    R = sympy.Integer(1)
    for f in crit:
        f = sympy.expand(f)
        if f != 0:
            R *= f
    s_samples = [Fraction(0), Fraction(1)]
    R = sympy.Poly(sympy.expand(R), _S)
    if R.degree() > 0:
        for e in [None] + list(range(20, 400, 20)):
            eps = None if e is None else sympy.Rational(1, 2**e)
            ivs = sorted((Fraction(int(a.p), int(a.q)), Fraction(int(b.p), int(b.q))) for (a, b), _ in R.intervals(inf=0, sup=1, eps=eps, fast=True))
            gaps = [(ivs[i][1], ivs[i + 1][0]) for i in range(len(ivs) - 1)]
            pts = [(g0 + g1) / 2 for g0, g1 in gaps]
            if all(g0 < g1 for g0, g1 in gaps) and all(R.eval(sympy.Rational(x.numerator, x.denominator)) != 0 for x in pts):
                s_samples += pts
                break
        else:  # pragma: no cover
            raise AssertionError("reference could not separate the critical values")
    for s in s_samples:
        col = [sum((Fraction(c[i][j]) * s**j for j in range(len(c[i]))), Fraction(0)) for i in range(len(c))]
        ok, x = ref_nonneg(col)
        if not ok:
            return False, (x, s)
    return True, None


def test_references_agree_with_known_answers():
    """The references themselves on hand-made cases."""
    assert ref_nonneg([1, -4, 4]) == (True, None)  # (2t − 1)² touches 0 at 1/2
    assert ref_nonneg([0, 0, 0]) == (True, None)
    assert ref_nonneg([-1])[0] is False
    # (3t − 1)² − 1/1000 < 0 only near 1/3: the sample between the two roots catches it
    ok, x = ref_nonneg(padd([-1], [1000 * v for v in ppow([-1, 3], 2)]))
    assert not ok and peval(padd([-1], [1000 * v for v in ppow([-1, 3], 2)]), x) < 0
    # t(1 − t)(2t − 1)² ≥ 0; t(1 − t)(2t − 1) is negative on (0, 1/2)
    assert ref_nonneg(pmul(pmul([0, 1], [1, -1]), ppow([-1, 2], 2)))[0]
    assert not ref_nonneg(pmul(pmul([0, 1], [1, -1]), [-1, 2]))[0]
    # bivariate: (α − s)² ≥ 0; 100(α − s)² − 1 is negative near the diagonal only
    assert ref_nonneg2([[0, 0, 1], [0, -2, 0], [1, 0, 0]])[0]
    ok, w = ref_nonneg2([[-1, 0, 100], [0, -200, 0], [100, 0, 0]])
    assert not ok and peval2([[-1, 0, 100], [0, -200, 0], [100, 0, 0]], *w) < 0
    # α·s − ε is negative near the α = 0 and s = 0 edges only
    assert not ref_nonneg2([[-1, 0], [0, 1000]])[0]
    # a bump negative only in the interior, around (1/3, 1/3)
    bump = [[7, -24, 36], [-24, 0, 0], [36, 0, 0]]  # 36(α − 1/3)² + 36(s − 1/3)² − 1
    ok, w = ref_nonneg2(bump)
    assert not ok and peval2(bump, *w) < 0 and peval2(bump, 0, 0) > 0 and peval2(bump, 1, 1) > 0


@settings(max_examples=15)
@given(st.lists(st.integers(-50, 50), min_size=1, max_size=6))
def test_reference_bernstein_formula(c):
    """bernstein_ref rebuilds p exactly (so it is a valid reference for the bounds)."""
    assert bernstein_rebuild(bernstein_ref(c)) == [Fraction(x) for x in c]


# ----------------------------------------------------------------------------- strategies

small = st.integers(-(10**6), 10**6)
huge = st.integers(-(2**200), 2**200)
coeffs = st.one_of(
    st.lists(small, min_size=1, max_size=9),
    st.lists(huge, min_size=1, max_size=9),
    st.lists(st.one_of(small, huge), min_size=1, max_size=9),
)
unit_rationals = st.fractions(min_value=0, max_value=1, max_denominator=10**9)


@st.composite
def dyadic_boxes(draw, max_k=12):
    k = draw(st.integers(0, max_k))
    m = draw(st.integers(0, 2**k - 1))
    return m, k


def box_points(m, k, extra):
    """Rational points of [m/2^k, (m+1)/2^k]: ends, midpoint, quarters, thirds and ``extra``."""
    fr = [Fraction(0), Fraction(1), Fraction(1, 2), Fraction(1, 4), Fraction(3, 4), Fraction(1, 3), Fraction(2, 3), Fraction(1, 10**12)]
    fr += list(extra)
    return [(m + a) / Fraction(2**k) for a in fr]


# ----------------------------------------------------------------------------- univariate


@given(coeffs)
def test_bernstein_rebuilds_scaled_polynomial(c):
    """bernstein(c) = (L, [L·b_j]) with Σ_j L·b_j·B_{j,d} = L·p exactly, L > 0."""
    big, b = bz.bernstein(c)
    assert isinstance(big, int) and big > 0
    assert all(isinstance(x, int) for x in b)
    assert bernstein_rebuild(b) == [big * x for x in c]
    assert [Fraction(x, big) for x in b] == bernstein_ref(c)


@given(coeffs, dyadic_boxes(), st.lists(unit_rationals, max_size=6))
def test_shift_is_exact(c, box, pts):
    """shift(c, m, k)(a) = 2^{kd}·p((m + a)/2^k) at rational a."""
    m, k = box
    d = len(c) - 1
    s = bz.shift(c, m, k)
    assert len(s) == len(c) and all(isinstance(x, int) for x in s)
    for a in [Fraction(0), Fraction(1), Fraction(1, 2), Fraction(-3, 7), Fraction(5, 2)] + pts:
        assert peval(s, a) == 2 ** (k * d) * peval(c, (m + a) / Fraction(2**k))


@given(coeffs, st.integers(0, 6), st.integers(-200, 200), st.lists(unit_rationals, max_size=3))
def test_shift_any_box(c, k, m, pts):
    """shift is exact also for boxes outside [0, 1] (negative or large m, k = 0)."""
    d = len(c) - 1
    s = bz.shift(c, m, k)
    for a in [Fraction(0), Fraction(1), Fraction(1, 3)] + pts:
        assert peval(s, a) == 2 ** (k * d) * peval(c, (m + a) / Fraction(2**k))


def _check_bounds(c, m, k, extra):
    lo, hi = bz.bounds(c, m, k)
    assert isinstance(lo, Fraction) and isinstance(hi, Fraction) and lo <= hi
    u, h = Fraction(m, 2**k), Fraction(1, 2**k)
    # soundness: the bounds enclose p at every point of the box
    for x in box_points(m, k, extra):
        v = peval(c, x)
        assert lo <= v <= hi, (c, m, k, x)
    # they are the Bernstein bounds: min/max of the exact coefficients on the box
    b = bernstein_ref(c, u, h)
    assert (lo, hi) == (min(b), max(b))
    # the corner coefficients are the values at the corners, so a corner extreme is attained
    assert b[0] == peval(c, u) and b[-1] == peval(c, u + h)
    if min(b) in (b[0], b[-1]):
        assert lo in (peval(c, u), peval(c, u + h))
    if max(b) in (b[0], b[-1]):
        assert hi in (peval(c, u), peval(c, u + h))
    if b[0] == min(b):
        assert lo == peval(c, u)
    if b[-1] == max(b):
        assert hi == peval(c, u + h)


@given(coeffs, dyadic_boxes(), st.lists(unit_rationals, max_size=8))
def test_bounds_enclose_and_are_tight(c, box, extra):
    _check_bounds(c, *box, extra)


@given(coeffs, st.integers(0, 5), st.integers(-40, 40), st.lists(unit_rationals, max_size=4))
def test_bounds_on_boxes_outside_unit_interval(c, k, m, extra):
    """bounds(c, m, k) is about [m/2^k, (m+1)/2^k] for every integer m, k = 0 included."""
    _check_bounds(c, m, k, extra)


def test_bounds_examples():
    assert bz.bounds([0, 1]) == (0, 1)
    assert bz.bounds([0, 1], 1, 0) == (1, 2)  # t on [1, 2]
    assert bz.bounds([0, 1], -1, 0) == (-1, 0)
    assert bz.bounds([0, 1], 3, 2) == (Fraction(3, 4), 1)
    assert bz.bounds([1, -4, 4]) == (-1, 1)  # (2t − 1)² on [0, 1]: b = (1, −1, 1)
    assert bz.bounds([1, -4, 4], 1, 1) == (0, 1)  # on [1/2, 1]: b = (0, 0, 1)
    assert bz.bounds([7]) == (7, 7)
    assert bz.bounds([7], 5, 3) == (7, 7)


# ----------------------------------------------------------------------------- prove_nonnegative


def _prove(c):
    return bz.prove_nonnegative(c, max_boxes=5000)


def _check_prove(c, verdict):
    assert verdict in (True, False, None)
    ok, witness = ref_nonneg(c)
    if verdict is True:
        assert ok, f"claimed p ≥ 0 but p({witness}) = {peval(c, witness)} < 0"
        for i in range(257):  # a dense rational grid as well
            assert peval(c, Fraction(i, 256)) >= 0
            assert peval(c, Fraction(i, 257) + Fraction(1, 10**7 * 257)) >= 0 or i == 256
    if verdict is False:
        assert not ok, "claimed a point with p < 0, but p ≥ 0 on [0, 1]"


@settings(max_examples=40)
@given(coeffs)
def test_prove_nonnegative_random(c):
    _check_prove(c, _prove(c))


@st.composite
def structured_polys(draw):
    """K·Π (q_i t − a_i)^{e_i} + ε: roots of chosen multiplicity in or near [0, 1], tiny ε."""
    c = [draw(st.sampled_from([1, 3, 2**40, 10**6]))]
    for _ in range(draw(st.integers(1, 3))):
        q = draw(st.sampled_from([1, 2, 3, 5, 7, 2**10, 3 * 2**10, 2**20]))
        a = draw(st.integers(-1, q + 1))
        e = draw(st.integers(1, 2))
        c = pmul(c, ppow([-a, q], e))
    eps = draw(st.sampled_from([0, 1, -1, 2**10, -(2**10)]))
    return padd(c, [eps])


@settings(max_examples=40)
@given(structured_polys())
def test_prove_nonnegative_structured(c):
    _check_prove(c, _prove(c))


def test_prove_nonnegative_constructed():
    half_sq = [1, -4, 4]  # (2t − 1)² = 4(t − 1/2)²: touches 0 at the dyadic point 1/2
    assert bz.prove_nonnegative(half_sq) is not False
    assert bz.prove_nonnegative([1, -2, 1]) is True  # (1 − t)², zero at the corner t = 1
    assert bz.prove_nonnegative([0, 0, 1]) is True  # t², zero at t = 0
    third_sq = [1, -6, 9]  # (3t − 1)²: touches 0 at the non-dyadic 1/3
    assert bz.prove_nonnegative(third_sq) is not False
    assert bz.prove_nonnegative([0]) is True
    assert bz.prove_nonnegative([5, 0, 0]) is True  # trailing zeros
    assert bz.prove_nonnegative([-1, 0, 0]) is False
    big = 2**40
    # −(2t − 1)² + ε: positive only near 1/2 and negative at the ends
    for eps in (1, -1):
        assert bz.prove_nonnegative(padd([-big * v for v in half_sq], [eps])) is False
    # (2t − 1)² ± ε and (3t − 1)² ± ε: strictly positive (provable) or slightly negative inside
    for sq in (half_sq, third_sq):
        pos = padd([big * v for v in sq], [1])
        neg = padd([big * v for v in sq], [-1])
        assert ref_nonneg(pos)[0] and not ref_nonneg(neg)[0]
        assert bz.prove_nonnegative(pos) is True
        assert bz.prove_nonnegative(neg) is not True
        assert bz.prove_nonnegative(neg) is False  # a dyadic point of depth ≤ 30 lies in the dip
    # negative only on an interval of width 2^-20 around a dyadic and around a non-dyadic centre
    for q, a in ((2**21, 2**20 + 12345), (3 * 2**21, 2**21)):
        dip = padd(ppow([-a, q], 2), [-1])  # (q t − a)² − 1 < 0 iff |t − a/q| < 1/q
        assert Fraction(2, q) <= Fraction(1, 2**20)
        assert not ref_nonneg(dip)[0]
        assert bz.prove_nonnegative(dip) is not True
        assert bz.prove_nonnegative(dip) is False
        # and with a large positive multiplier of t(1 − t) elsewhere, still not True
        assert bz.prove_nonnegative(pmul(dip, [1, 1])) is not True
    # the same dip scaled by huge and tiny units keeps the verdict (only the sign matters)
    dip = padd(ppow([-(2**20), 3 * 2**21], 2), [-1])
    assert bz.prove_nonnegative([v * 2**200 for v in dip]) is False


def test_prove_nonnegative_keeps_looking_after_an_undecided_box():
    """A zero that no dyadic edge hits (2/3) must not hide a negative dip elsewhere (near 1/4)."""
    c = [16 * v for v in pmul(ppow([-2, 3], 2), padd(ppow([-1, 4], 2), [Fraction(-1, 16)]))]
    c = [int(v) for v in c]
    assert c == [60, -692, 2695, -4224, 2304] and peval(c, Fraction(1, 4)) < 0
    assert bz.prove_nonnegative(c) is False
    # the same with the touching zero left of the dip
    c2 = [int(16 * v) for v in pmul(ppow([-1, 3], 2), padd(ppow([-3, 4], 2), [Fraction(-1, 16)]))]
    assert bz.prove_nonnegative(c2) is False
    # several touching zeros only: undecided (None), never False
    c3 = pmul(ppow([-1, 3], 2), ppow([-2, 3], 2))
    assert ref_nonneg(c3)[0] and bz.prove_nonnegative(c3) is None


def test_prove_nonnegative_budget_gives_none():
    """A touching zero at a non-dyadic point cannot be proven: None, never a wrong verdict."""
    assert bz.prove_nonnegative([1, -6, 9], max_depth=8) is None
    assert bz.prove_nonnegative([1, -6, 9], max_boxes=3) is None
    assert bz.prove_nonnegative([1, -6, 9], deadline=0.0) is None


# ----------------------------------------------------------------------------- bivariate


@st.composite
def poly2(draw, max_deg=3, elems=st.integers(-20, 20)):
    d1 = draw(st.integers(0, max_deg))
    d2 = draw(st.integers(0, max_deg))
    return [[draw(elems) for _ in range(d2 + 1)] for _ in range(d1 + 1)]


def mul2(p, q):
    out = [[0] * (len(p[0]) + len(q[0]) - 1) for _ in range(len(p) + len(q) - 1)]
    for i, row in enumerate(p):
        for j, x in enumerate(row):
            for k, row2 in enumerate(q):
                for l, y in enumerate(row2):
                    out[i + k][j + l] += x * y
    return out


def add2(p, q):
    n1, n2 = max(len(p), len(q)), max(len(p[0]), len(q[0]))
    g = lambda r, i, j: r[i][j] if i < len(r) and j < len(r[0]) else 0  # noqa: E731
    return [[g(p, i, j) + g(q, i, j) for j in range(n2)] for i in range(n1)]


@st.composite
def structured_poly2(draw):
    """Σ (linear form)² + ε, or a product of linear forms, or random: nonnegative-ish cases."""
    kind = draw(st.sampled_from(["sos", "prod", "sos_minus"]))
    lin = lambda: [[draw(st.integers(-6, 6)), draw(st.integers(-6, 6))], [draw(st.integers(-6, 6)), 0]]  # noqa: E731
    if kind == "prod":
        p = [[1]]
        for _ in range(draw(st.integers(1, 3))):
            p = mul2(p, lin())
        return p
    p = [[0]]
    for _ in range(draw(st.integers(1, 2))):
        f = lin()
        p = add2(p, mul2(f, f))
    eps = draw(st.sampled_from([0, 1, -1, 3]))
    return add2([[v * 16 for v in row] for row in p], [[eps if kind == "sos" else -abs(eps) - 1]])


def _check_prove2(c, verdict):
    assert verdict in (True, False, None)
    ok, witness = ref_nonneg2(c)
    if witness is not None:
        assert peval2(c, *witness) < 0
    if verdict is True:
        assert ok, f"claimed p ≥ 0 on [0,1]² but p{witness} < 0"
        for i in range(17):
            for j in range(17):
                assert peval2(c, Fraction(i, 16), Fraction(j, 16)) >= 0
                assert peval2(c, Fraction(2 * i + 1, 35), Fraction(2 * j + 1, 37)) >= 0
    if verdict is False:
        assert not ok, "claimed a point with p < 0, but p ≥ 0 on [0, 1]²"
        corners = [peval2(c, x, y) for x in (0, 1) for y in (0, 1)]
        assert not ok and (min(corners) < 0 or witness is not None)


@settings(max_examples=20)
@given(st.one_of(poly2(), structured_poly2()))
def test_prove_nonnegative2(c):
    _check_prove2(c, bz.prove_nonnegative2(c, max_boxes=2000))


def test_prove_nonnegative2_constructed():
    diag = [[0, 0, 1], [0, -2, 0], [1, 0, 0]]  # (α − s)² touches 0 on the whole diagonal
    assert bz.prove_nonnegative2(diag, max_boxes=2000) is not False
    assert bz.prove_nonnegative2([[1, 0], [0, 0]]) is True
    assert bz.prove_nonnegative2([[0, 0], [0, 1]]) is True  # α·s
    assert bz.prove_nonnegative2([[0, 0], [0, -1]]) is False  # −α·s: negative at (1, 1)
    # interior dip: 36α² − 24α + 36s² − 24s + 7 = 36(α − 1/3)² + 36(s − 1/3)² − 1
    bump = [[7, -24, 36], [-24, 0, 0], [36, 0, 0]]
    # negative at (1/4, 1/4), but p touches 0 at the non-dyadic (1/2, 1/3) on a box edge, where the
    # depth-first search gets stuck first: False or None are both allowed, True is not
    assert bz.prove_nonnegative2(bump) is not True
    assert bz.prove_nonnegative2([[v * 1000 for v in r] for r in bump]) is not True
    # 900(α − 1/3)² + 900(s − 1/3)² − 9 (radius 1/10, away from box edges): (3/8, 3/8) is found
    small_bump = [[191, -600, 900], [-600, 0, 0], [900, 0, 0]]
    assert peval2(small_bump, Fraction(3, 8), Fraction(3, 8)) < 0
    assert bz.prove_nonnegative2(small_bump) is False
    bump_pos = [[9, -24, 36], [-24, 0, 0], [36, 0, 0]]  # ... + 1 > 0
    assert bz.prove_nonnegative2(bump_pos) is True
    # a dip of width ~2^-10 around (1/3, 1/3): not True
    q = 3 * 2**10
    lin = [[-(2**10), 0], [q, 0]]  # q α − 2^10
    lin2 = [[-(2**10), q]]  # q s − 2^10
    tiny = add2(add2(mul2(lin, lin), mul2(lin2, lin2)), [[-1]])
    assert not ref_nonneg2(tiny)[0]
    assert bz.prove_nonnegative2(tiny) is not True


@given(poly2(elems=st.one_of(small, huge)), dyadic_boxes(max_k=8), unit_rationals, unit_rationals)
def test_shift2_is_exact(c, box, a, b):
    m, k = box
    m2 = (m * 7 + 3) % 2**k
    d1, d2 = len(c) - 1, len(c[0]) - 1
    s = bz.shift2(c, m, m2, k)
    assert len(s) == d1 + 1 and all(len(r) == d2 + 1 for r in s)
    for x, y in ((a, b), (Fraction(0), Fraction(1)), (Fraction(1), Fraction(0)), (b, Fraction(1, 3))):
        assert peval2(s, x, y) == 2 ** (k * (d1 + d2)) * peval2(c, (m + x) / Fraction(2**k), (m2 + y) / Fraction(2**k))


def _bern_basis2(b, x, y):
    d1, d2 = len(b) - 1, len(b[0]) - 1
    B = lambda d, j, t: comb(d, j) * t**j * (1 - t) ** (d - j)  # noqa: E731
    return sum((b[i][j] * B(d1, i, x) * B(d2, j, y) for i in range(d1 + 1) for j in range(d2 + 1)), Fraction(0))


@given(poly2(elems=st.one_of(small, huge)), unit_rationals, unit_rationals)
def test_bernstein2_rebuilds_positive_multiple(c, x, y):
    """Σ b_{ij} B_i(α) B_j(s) = K·p(α, s) for one K > 0 (so min/max b bound K·p on [0,1]²)."""
    b = bz.bernstein2(c)
    pts = [(Fraction(0), Fraction(0)), (Fraction(1), Fraction(1)), (Fraction(1, 3), Fraction(2, 7)), (x, y), (Fraction(3, 5), Fraction(1, 9))]
    ks = {_bern_basis2(b, *pt) / peval2(c, *pt) for pt in pts if peval2(c, *pt) != 0}
    assert len(ks) <= 1 and all(k > 0 for k in ks)
    if not ks:  # p vanishes at all those points: the coefficients must rebuild 0 there too
        assert all(_bern_basis2(b, *pt) == 0 for pt in pts)
    lo, hi = min(min(r) for r in b), max(max(r) for r in b)
    for pt in pts:
        v = _bern_basis2(b, *pt)
        assert lo <= v <= hi


@given(poly2(max_deg=4, elems=st.one_of(small, huge)), unit_rationals, unit_rationals)
def test_compose_triangle(c, s, t):
    """q(s, t) = p(s·t, s), first index for s: the triangle 0 ≤ α ≤ s ≤ 1 onto [0, 1]²."""
    q = bz.compose_triangle(c)
    d1, d2 = len(c) - 1, len(c[0]) - 1
    assert len(q) == d1 + d2 + 1 and all(len(r) == d1 + 1 for r in q)
    for ss, tt in ((s, t), (t, s), (Fraction(1), Fraction(1)), (Fraction(0), Fraction(1, 2)), (Fraction(7, 3), Fraction(-2, 5))):
        assert peval2(q, ss, tt) == peval2(c, ss * tt, ss)


def test_compose_triangle_then_prove():
    """p(α, s) = s − α ≥ 0 on the triangle α ≤ s (negative off it): the composed check proves it."""
    p = [[0, 1], [-1, 0]]
    assert bz.prove_nonnegative2(p) is False
    assert bz.prove_nonnegative2(bz.compose_triangle(p)) is True
    p2 = [[0, 1], [-2, 0]]  # s − 2α: negative at α = s
    assert bz.prove_nonnegative2(bz.compose_triangle(p2)) is False


def test_no_evaluate_helper():
    """The dead exact evaluator is gone (tests use their own reference)."""
    assert not hasattr(bz, "evaluate")


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
