"""Dyadic conversions and directed rounding (mli_theory.exact.dyadic) against exact references.

The references are Fractions (``Fraction(float)`` is the exact value of a float), ``math.nextafter``
for the neighbouring float and ``math.isqrt`` for square roots: a directed rounding is right iff it
is on the correct side of q and the next float in the other direction is strictly beyond q.
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mli_theory.exact import dyadic as dy

MAX = sys.float_info.max
TINY = 5e-324  # smallest positive subnormal
FMAX = Fraction(MAX)
ULP_MAX = Fraction(2) ** (1023 - 52)  # spacing of floats just below MAX

# ----------------------------------------------------------------------------- strategies

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
special_floats = st.sampled_from([0.0, -0.0, TINY, -TINY, 2.2250738585072014e-308, 2.225073858507201e-308, 1e308, -1e308, MAX, -MAX, 1.0, 0.1, -0.1, 2.0**-1074, 2.0**-1022, 1.5, 3e-320])
any_floats = st.one_of(finite_floats, special_floats)


@st.composite
def rationals(draw, max_pow10=400, max_pow2=1100, allow_zero=True):
    """Rationals of every magnitude: (n/d)·2^e or (n/d)·10^e, exact floats and their neighbours."""
    kind = draw(st.sampled_from(["pow2", "pow10", "float", "float_nudge", "half_way", "small"]))
    sign = draw(st.sampled_from([1, -1]))
    if kind == "float":
        q = Fraction(draw(any_floats))
    elif kind in ("float_nudge", "half_way"):
        f = abs(draw(any_floats))
        g = math.nextafter(f, math.inf)
        if math.isinf(g):  # beyond MAX: the overflow threshold MAX + ulp/2 and around it
            q = FMAX + ULP_MAX / 2
        else:
            q = (Fraction(f) + Fraction(g)) / 2  # exactly between two floats (a tie for float())
        if kind == "float_nudge":
            q += draw(st.sampled_from([1, -1])) * Fraction(1, 2 ** draw(st.integers(1080, 1200)))
    else:
        n = draw(st.integers(1 if not allow_zero else 0, 2**80))
        d = draw(st.integers(1, 2**80))
        q = Fraction(n, d)
        if kind == "pow2":
            q *= Fraction(2) ** draw(st.integers(-max_pow2, max_pow2))
        elif kind == "pow10":
            q *= Fraction(10) ** draw(st.integers(-max_pow10, max_pow10))
    q *= sign
    if not allow_zero:
        assume(q != 0)
    return q


EXTREMES = [
    Fraction(0),
    Fraction(10) ** 400,
    Fraction(1, 10**400),
    Fraction(2) ** 1100,
    Fraction(1, 2**1100),
    Fraction(2) ** 1024,
    FMAX,
    FMAX + ULP_MAX / 2,  # the first value float() rounds to overflow
    FMAX + ULP_MAX / 2 - Fraction(1, 2**2000),
    FMAX + Fraction(1, 2**2000),
    Fraction(TINY),
    Fraction(TINY) / 2,  # a tie between 0 and the smallest subnormal
    Fraction(TINY) / 2 + Fraction(1, 2**2000),
    Fraction(TINY) / 3,
    Fraction(1, 3),
    Fraction(2, 3) * Fraction(2) ** -1060,  # inside the subnormal range
]
EXTREMES = EXTREMES + [-q for q in EXTREMES]


# ----------------------------------------------------------------------------- to_fixed


def _check_fixed(arrays, max_exp=None):
    f = dy.to_fixed([np.asarray(a, dtype=np.float64) for a in arrays], max_exp=max_exp)
    assert isinstance(f.exp, int)
    if max_exp is not None:
        assert f.exp <= max_exp
    assert len(f.ints) == len(arrays)
    scale = Fraction(2) ** f.exp
    for a, row in zip(arrays, f.ints):
        flat = np.asarray(a, dtype=np.float64).ravel().tolist()
        assert len(row) == len(flat)
        for x, v in zip(flat, row):
            assert type(v) is int
            assert v * scale == Fraction(x), (x, v, f.exp)
    # no common power of two is left in the integers unless max_exp stops it
    nonzero = [v for row in f.ints for v in row if v]
    if nonzero and (max_exp is None or f.exp < max_exp):
        assert any(v & 1 for v in nonzero)
    return f


@given(st.lists(st.lists(any_floats, max_size=8), min_size=1, max_size=4), st.one_of(st.none(), st.integers(-1200, 1200)))
def test_to_fixed_round_trips_every_float(arrays, max_exp):
    _check_fixed(arrays, max_exp)


@given(st.lists(any_floats, min_size=6, max_size=6), st.one_of(st.none(), st.integers(-60, 60)))
def test_to_fixed_2d_arrays(vals, max_exp):
    """Multi-dimensional arrays are flattened in C order, values exact."""
    a = np.array(vals).reshape(2, 3)
    f = _check_fixed([a, a.T], max_exp)
    assert f.ints[0] == [f.ints[0][0], f.ints[0][1], f.ints[0][2], f.ints[0][3], f.ints[0][4], f.ints[0][5]]
    assert f.ints[1] == [f.ints[0][i] for i in (0, 3, 1, 4, 2, 5)]


def test_to_fixed_examples():
    mixed = [TINY, -TINY, 1e308, -MAX, 0.0, -0.0, 0.1, 2.2250738585072014e-308, 1.0, 3.0]
    f = _check_fixed([mixed])
    assert f.exp == -1074  # the smallest subnormal needs the exponent -1074
    f = _check_fixed([[0.5, 3.0]])
    assert f.ints == [[1, 6]] and f.exp == -1
    f = _check_fixed([[0.0, -0.0]])
    assert f.ints == [[0, 0]]
    f = _check_fixed([[8.0, 16.0]], max_exp=0)
    assert f.exp == 0 and f.ints == [[8, 16]]
    f = _check_fixed([[8.0, 16.0]])
    assert f.exp == 3 and f.ints == [[1, 2]]
    f = _check_fixed([[], [2.0**-3]], max_exp=-10)
    assert f.exp == -10 and f.ints == [[], [2**7]]
    _check_fixed([np.zeros(0)])
    _check_fixed([[MAX, TINY]], max_exp=0)
    f = dy.to_fixed([np.array([1.5], dtype=np.float32)])
    assert f.ints[0][0] * Fraction(2) ** f.exp == Fraction(3, 2)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_to_fixed_rejects_non_finite(bad):
    with pytest.raises(ValueError):
        dy.to_fixed([np.array([1.0, bad])])


# ----------------------------------------------------------------------------- float_down / float_up


def _check_directed(q: Fraction):
    down, up = dy.float_down(q), dy.float_up(q)  # must not raise
    assert isinstance(down, float) and isinstance(up, float)
    assert not math.isnan(down) and not math.isnan(up)
    # float_down: the largest float ≤ q
    assert down != math.inf
    if down == -math.inf:
        assert q < -FMAX
    else:
        assert Fraction(down) <= q
        nxt = math.nextafter(down, math.inf)
        assert nxt == math.inf or Fraction(nxt) > q
    # float_up: the smallest float ≥ q
    assert up != -math.inf
    if up == math.inf:
        assert q > FMAX
    else:
        assert Fraction(up) >= q
        prv = math.nextafter(up, -math.inf)
        assert prv == -math.inf or Fraction(prv) < q
    # equal when q is a float, else adjacent
    if not math.isinf(down) and Fraction(down) == q:
        assert up == down
    else:
        assert math.nextafter(down, math.inf) == up
    return down, up


@given(rationals())
def test_float_down_up_enclose_and_are_adjacent(q):
    _check_directed(q)


@given(any_floats)
def test_float_down_up_of_a_float_is_the_float(x):
    down, up = _check_directed(Fraction(x))
    assert Fraction(down) == Fraction(x) == Fraction(up)


@pytest.mark.parametrize("q", EXTREMES, ids=[f"q{i}" for i in range(len(EXTREMES))])
def test_float_down_up_extremes(q):
    _check_directed(q)


def test_float_down_up_examples():
    assert dy.float_up(Fraction(10) ** 400) == math.inf
    assert dy.float_down(Fraction(10) ** 400) == MAX
    assert dy.float_down(-(Fraction(10) ** 400)) == -math.inf
    assert dy.float_up(-(Fraction(10) ** 400)) == -MAX
    assert dy.float_down(Fraction(1, 10**400)) == 0.0
    assert dy.float_up(Fraction(1, 10**400)) == TINY
    assert dy.float_down(-Fraction(1, 10**400)) == -TINY
    assert dy.float_up(-Fraction(1, 10**400)) == 0.0
    assert dy.float_up(FMAX + ULP_MAX / 2) == math.inf and dy.float_down(FMAX + ULP_MAX / 2) == MAX
    assert dy.float_down(Fraction(1, 3)) == math.nextafter(dy.float_up(Fraction(1, 3)), 0)
    assert dy.float_down(Fraction(0)) == 0.0 == dy.float_up(Fraction(0))


# ----------------------------------------------------------------------------- round_up / round_down

bits_st = st.one_of(st.just(64), st.integers(2, 300))


def _is_dyadic(r: Fraction) -> bool:
    return r.denominator & (r.denominator - 1) == 0


def _odd_bits(n: int) -> int:
    n = abs(n)
    return (n >> ((n & -n).bit_length() - 1)).bit_length() if n else 0


@given(rationals(max_pow10=600, max_pow2=2000), bits_st)
def test_round_up_down(q, bits):
    up, down = dy.round_up(q, bits), dy.round_down(q, bits)
    assert isinstance(up, Fraction) and isinstance(down, Fraction)
    assert down <= q <= up
    assert _is_dyadic(up) and _is_dyadic(down)
    gap = abs(q) / Fraction(2) ** (bits - 2)
    assert up - q <= gap and q - down <= gap
    assert _odd_bits(up.numerator) <= bits + 1 and _odd_bits(down.numerator) <= bits + 1
    assert dy.round_down(q, bits) == -dy.round_up(-q, bits)


@given(st.integers(-(2**40), 2**40), st.integers(-1500, 1500), st.integers(41, 200))
def test_round_keeps_short_dyadics(n, e, bits):
    """A dyadic with fewer significant bits than ``bits`` is not moved."""
    q = Fraction(n) * Fraction(2) ** e
    assert dy.round_up(q, bits) == q == dy.round_down(q, bits)


def test_round_examples():
    assert dy.round_up(Fraction(0)) == 0 == dy.round_down(Fraction(0))
    third = Fraction(1, 3)
    assert dy.round_down(third) < third < dy.round_up(third)
    assert dy.round_up(third) - dy.round_down(third) <= third / 2**62
    assert dy.round_up(Fraction(10) ** 600) >= Fraction(10) ** 600
    assert dy.round_down(-(Fraction(10) ** 600)) <= -(Fraction(10) ** 600)


# ----------------------------------------------------------------------------- sqrt_up


def _isqrt_bracket(q: Fraction, extra: int = 140) -> tuple[Fraction, Fraction]:
    """lo ≤ √q ≤ hi from math.isqrt, with hi − lo ≤ 2^-(extra/2)·√q roughly."""
    e = q.numerator.bit_length() - q.denominator.bit_length()
    n = max(0, (2 * extra - e) // 2 + 1)
    scaled = q.numerator * 4**n // q.denominator  # floor(q·4^n)
    r = math.isqrt(scaled)
    lo = Fraction(r, 2**n)
    hi = Fraction(r + 1, 2**n)
    assert lo * lo <= q <= hi * hi
    return lo, hi


@given(rationals(max_pow10=600, max_pow2=2000, allow_zero=False))
def test_sqrt_up(q):
    q = abs(q)
    r = dy.sqrt_up(q)
    assert isinstance(r, Fraction) and r > 0
    assert r * r >= q  # soundness: r ≥ √q
    assert r * r <= q * (1 + Fraction(1, 2**50)) ** 2  # r ≤ √q·(1 + 2^-50)
    lo, hi = _isqrt_bracket(q)
    assert r >= lo and r <= hi * (1 + Fraction(1, 2**50))


@given(rationals(max_pow10=600, max_pow2=2000, allow_zero=False), st.integers(8, 200))
def test_sqrt_up_bits(q, bits):
    q = abs(q)
    r = dy.sqrt_up(q, bits)
    assert r * r >= q
    assert r * r <= q * (1 + Fraction(1, 2 ** (bits - 2))) ** 2


@given(st.integers(1, 2**50), st.integers(-700, 700))
def test_sqrt_up_of_a_square_is_exact(n, e):
    x = Fraction(n) * Fraction(2) ** e
    assert dy.sqrt_up(x * x) == x


def test_sqrt_up_examples():
    assert dy.sqrt_up(Fraction(0)) == 0
    assert dy.sqrt_up(Fraction(4)) == 2
    r = dy.sqrt_up(Fraction(2))
    assert r * r > 2 and r - Fraction(1414213562373095, 10**15) < Fraction(1, 10**14)
    for q in (Fraction(10) ** 600, Fraction(1, 10**600), Fraction(7, 10**601), Fraction(2) ** 2001 / 3):
        r = dy.sqrt_up(q)
        assert r * r >= q and r * r <= q * (1 + Fraction(1, 2**50)) ** 2
    with pytest.raises(ValueError):
        dy.sqrt_up(Fraction(-1, 10**600))


# ----------------------------------------------------------------------------- arb and dyadic_in


@given(st.integers(-(2**200), 2**200), st.integers(-3000, 3000))
def test_to_fraction_of_arb_exact_dyadics(n, e):
    flint = pytest.importorskip("flint")
    q = Fraction(n) * Fraction(2) ** e
    with flint.ctx.workprec(400):  # n·2^e is exact at 400 bits
        x = flint.arb(n) * flint.arb(2) ** e
    assert dy.to_fraction_of_arb(x.mid()) == q
    assert dy.to_fraction_of_arb(x.rad()) == 0


@given(st.integers(-(10**30), 10**30), st.integers(1, 10**30))
def test_to_fraction_of_arb_encloses(n, d):
    flint = pytest.importorskip("flint")
    x = flint.arb(flint.fmpq(n, d))
    mid, rad = dy.to_fraction_of_arb(x.mid()), dy.to_fraction_of_arb(x.rad())
    assert rad >= 0 and mid - rad <= Fraction(n, d) <= mid + rad
    big = flint.arb(3) ** 2000
    mid, rad = dy.to_fraction_of_arb(big.mid()), dy.to_fraction_of_arb(big.rad())
    assert mid - rad <= Fraction(3) ** 2000 <= mid + rad


def _has_float_in(lo: Fraction, hi: Fraction) -> bool:
    return lo <= hi and Fraction(dy.float_up(lo)) <= hi


@given(st.fractions(min_value=0, max_value=1), st.fractions(min_value=0, max_value=1), st.integers(0, 200))
def test_dyadic_in(a, b, w):
    lo, hi = min(a, b), max(a, b)
    if w:  # also very narrow intervals, narrower than the float spacing
        hi = lo + (hi - lo) / Fraction(2) ** w
    mid = (lo + hi) / 2
    q = dy.dyadic_in(lo, hi, mid)
    assert isinstance(q, Fraction) and 0 <= q <= 1
    assert Fraction(float(q)) == q  # a float64 value
    assert abs(q - mid) <= Fraction(1, 2**54)
    if _has_float_in(lo, hi):
        assert lo <= q <= hi


def test_dyadic_in_never_raises_out_of_range():
    assert dy.dyadic_in(Fraction(0), Fraction(1), Fraction(10) ** 400) == 1
    assert dy.dyadic_in(Fraction(0), Fraction(1), -(Fraction(10) ** 400)) == 0
    q = dy.dyadic_in(Fraction(1, 3), Fraction(1, 3), Fraction(1, 3))
    assert Fraction(float(q)) == q and abs(q - Fraction(1, 3)) <= Fraction(1, 2**54)
