"""Exact dyadic forms of floats, and directed rounding of rationals that never overflows.

Every finite float is m·2^e with integers m, e, so weights and data convert to integers with one
power-of-two scale and no rounding. Going back, a rational q becomes the nearest float *below*
(:func:`float_down`) or *above* (:func:`float_up`) q, including when q is beyond the float range
(±inf or ±max float, whichever keeps the direction) or below it (0 or the smallest subnormal):
``float(Fraction)`` raises ``OverflowError`` there, which once turned a decided certificate into a
crash.

>>> float_up(Fraction(10) ** 400)
inf
>>> float_down(Fraction(10) ** 400) == sys.float_info.max
True
>>> Fraction(float_down(Fraction(1, 3))) < Fraction(1, 3) < Fraction(float_up(Fraction(1, 3)))
True
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Fixed:
    """Several arrays as integers with one power-of-two scale: value = int · 2**exp.

    Attributes:
        ints: one flat list of Python integers per array.
        exp: the common binary exponent.
    """

    ints: list[list[int]]
    exp: int


def to_fixed(arrays: Sequence[np.ndarray], max_exp: int | None = None) -> Fixed:
    """Exact integer form of float arrays with one common binary exponent (≤ ``max_exp``).

    A finite float is x = m·2^(e−53) with m = frexp mantissa·2^53 an integer (|m| < 2^53, also for
    subnormals), so with lo ≤ every e − 53, x = (m·2^(e−53−lo))·2^lo exactly. Common trailing zero
    bits are then divided out (not past ``max_exp``). Arrays are flattened in C order.

    Raises:
        InputError: (a ``ValueError``) for inf or NaN, which have no exact integer form.

    >>> f = to_fixed([np.array([0.5, 3.0])])
    >>> [v * 2.0**f.exp for v in f.ints[0]]
    [0.5, 3.0]
    """
    mants: list[np.ndarray] = []
    exps: list[np.ndarray] = []
    for a in arrays:
        a = np.asarray(a, dtype=np.float64).ravel()
        if not np.all(np.isfinite(a)):
            raise InputError("to_fixed: inf or NaN has no exact dyadic form")
        m, e = np.frexp(a)
        mants.append((m * 2.0**53).astype(np.int64))
        exps.append(e.astype(np.int64) - 53)
    nz = [e[m != 0] for m, e in zip(mants, exps)]
    lo = min((int(x.min()) for x in nz if x.size), default=0)
    if max_exp is not None:
        lo = min(lo, max_exp)
    ints = [[int(mi) << int(ei - lo) if mi else 0 for mi, ei in zip(m.tolist(), e.tolist())] for m, e in zip(mants, exps)]
    tz = None  # common trailing zero bits: divide them out to keep the integers small
    for row in ints:
        for v in row:
            if v:
                t = (v & -v).bit_length() - 1
                tz = t if tz is None else min(tz, t)
    if tz and max_exp is not None:
        tz = min(tz, max_exp - lo)
    if tz:
        ints = [[v >> tz for v in row] for row in ints]
        lo += tz
    return Fixed(ints, lo)


def _nearest(q: Fraction) -> float:
    """A float near q: exact for q in range, ±inf beyond it, 0 below it (never raises)."""
    try:
        return float(q)
    except OverflowError:
        return math.inf if q > 0 else -math.inf


def float_down(q: Fraction) -> float:
    """The largest float ≤ q (−inf when q is below −max float)."""
    f = _nearest(q)
    if math.isinf(f):
        return -math.inf if f < 0 else sys.float_info.max
    return f if Fraction(f) <= q else math.nextafter(f, -math.inf)


def float_up(q: Fraction) -> float:
    """The smallest float ≥ q (+inf when q is above max float)."""
    f = _nearest(q)
    if math.isinf(f):
        return math.inf if f > 0 else -sys.float_info.max
    return f if Fraction(f) >= q else math.nextafter(f, math.inf)


def round_up(q: Fraction, bits: int = 64) -> Fraction:
    """A dyadic rational ≥ q with about ``bits`` significant bits (keeps sums of bounds small)."""
    if q == 0:
        return q
    shift = bits - (abs(q.numerator).bit_length() - q.denominator.bit_length())
    if shift >= 0:
        num = -((-q.numerator << shift) // q.denominator)  # ceil
        return Fraction(num, 1 << shift)
    den = q.denominator << -shift
    return Fraction(-(-q.numerator // den)) * (1 << -shift)


def round_down(q: Fraction, bits: int = 64) -> Fraction:
    """A dyadic rational ≤ q with about ``bits`` significant bits."""
    return -round_up(-q, bits)


def sqrt_up(q: Fraction, bits: int = 64) -> Fraction:
    """A rational ≥ √q for q ≥ 0, in integer arithmetic (no float range limits).

    >>> sqrt_up(Fraction(4)) >= 2 and sqrt_up(Fraction(4)) - 2 < Fraction(1, 2**50)
    True
    """
    if q < 0:
        raise ValueError("sqrt_up of a negative number")
    if q == 0:
        return q
    q = round_up(q, 2 * bits + 8)
    # √(a/b) = √(a·b)/b ≤ (isqrt(a·b) + 1)/b, with a·b scaled to a precision of about 2·bits bits
    a, b = q.numerator, q.denominator
    scale = max(0, (2 * bits - (a * b).bit_length()) // 2 + 1)
    r = math.isqrt(a * b << (2 * scale))
    if r * r != a * b << (2 * scale):
        r += 1
    return Fraction(r, b << scale)


def to_fraction_of_arb(x) -> Fraction:
    """The exact value of an arb midpoint or radius (a dyadic number) as a Fraction."""
    man, exp = x.man_exp()
    man, exp = int(man), int(exp)
    return Fraction(man * 2**exp) if exp >= 0 else Fraction(man, 2 ** (-exp))


def dyadic_in(lo: Fraction, hi: Fraction, mid: Fraction) -> Fraction:
    """A float64-representable point of [0, 1] as close to ``mid`` as 2**-53 allows, inside [lo, hi] if possible.

    Every k·2^-53 in [0, 1] is a float; if that grid point misses [lo, hi], the float nearest to
    ``mid`` is used (for mid = (lo + hi)/2 it lies in [lo, hi] whenever any float does). ``mid``
    outside [0, 1] is clamped first, so that this never raises.
    """
    mid = min(max(Fraction(mid), Fraction(0)), Fraction(1))
    q = Fraction(round(mid * 2**53), 2**53)
    if q < lo or q > hi:
        q = Fraction(_nearest(mid))
    return min(max(q, Fraction(0)), Fraction(1))
