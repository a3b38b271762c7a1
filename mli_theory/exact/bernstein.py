"""Exact Bernstein bounds for integer polynomials on dyadic boxes (no rounding anywhere).

A polynomial p(t) = Σ_i c_i t^i of degree d on [0, 1] equals Σ_j b_j B_{j,d}(t) with Bernstein
coefficients b_j = Σ_{i≤j} C(j,i)/C(d,i) · c_i, and since the Bernstein basis is a partition of
unity with non-negative terms, min_j b_j ≤ p(t) ≤ max_j b_j on [0, 1]; b_0 = p(0) and b_d = p(1)
are attained. On a sub-interval [u, u + 2^-k] with u = m·2^-k we bound the integer polynomial
2^{kd}·p((m + a)/2^k) in a ∈ [0, 1], which has the same sign. Bivariate polynomials work the same
way variable by variable. All arithmetic is on Python integers, so every verdict is exact.

>>> prove_nonnegative([1, -2, 1])   # (1 − t)² ≥ 0 on [0, 1], touching 0 at t = 1
True
>>> prove_nonnegative([-1, 4, -4])  # −(1 − 2t)² is negative at t = 0
False
"""

from __future__ import annotations

import time
from fractions import Fraction
from functools import lru_cache
from math import comb, lcm
from typing import Sequence

Poly1 = Sequence[int]
Poly2 = Sequence[Sequence[int]]


@lru_cache(maxsize=None)
def _bernstein_weights(d: int) -> tuple[int, tuple[tuple[int, ...], ...]]:
    """L and integer weights w[j][i] = C(j,i)·L/C(d,i), so that L·b_j = Σ_i w[j][i]·c_i."""
    big = 1
    for i in range(d + 1):
        big = lcm(big, comb(d, i))
    return big, tuple(tuple(comb(j, i) * (big // comb(d, i)) if i <= j else 0 for i in range(d + 1)) for j in range(d + 1))


def bernstein(c: Poly1) -> tuple[int, list[int]]:
    """(L, [L·b_0, …, L·b_d]) for p(t) = Σ c_i t^i on [0, 1]."""
    d = len(c) - 1
    big, w = _bernstein_weights(d)
    return big, [sum(wi * ci for wi, ci in zip(w[j], c)) for j in range(d + 1)]


def shift(c: Poly1, m: int, k: int) -> list[int]:
    """Integer coefficients of 2^{kd}·p((m + a)/2^k) as a polynomial in a."""
    d = len(c) - 1
    out = [0] * (d + 1)
    for i, ci in enumerate(c):
        if ci == 0:
            continue
        f = ci << (k * (d - i))
        for r in range(i + 1):  # (m + a)^i = Σ_r C(i,r) m^{i−r} a^r
            out[r] += f * comb(i, r) * m ** (i - r)
    return out


def bounds(c: Poly1, m: int = 0, k: int = 0) -> tuple[Fraction, Fraction]:
    """Proven (lower, upper) bounds of p on [m·2^-k, (m+1)·2^-k], for every integer m (and k ≥ 0).

    These are min_j b_j and max_j b_j for the Bernstein coefficients b_j of p on the box; the
    corner coefficients b_0, b_d are the values of p at the box ends, so an extreme there is attained.

    >>> bounds([0, 1], 1, 0)   # t on [1, 2]
    (Fraction(1, 1), Fraction(2, 1))
    """
    c = list(c) or [0]
    s = shift(c, m, k) if (k or m) else c
    big, b = bernstein(s)
    scale = Fraction(1, big) / Fraction(2) ** (k * (len(c) - 1))
    return min(b) * scale, max(b) * scale


def prove_nonnegative(c: Poly1, *, max_depth: int = 30, max_boxes: int = 20000, deadline: float | None = None) -> bool | None:
    """p ≥ 0 on [0, 1]: True (proven), False (a dyadic point with p < 0 was found) or None (undecided).

    Boxes whose Bernstein coefficients are all ≥ 0 are proven; a negative corner coefficient is a
    value p < 0; otherwise the box is halved. A box still undecided at ``max_depth`` (a zero of p
    that no dyadic box edge hits, e.g. (3t − 1)²) does not stop the search: the other boxes may
    still hold a point with p < 0 (p has at most d zeros, each keeping only a few boxes per level
    undecided, so this costs about O(d·max_depth) boxes more).

    >>> prove_nonnegative([1, -6, 9])                  # (3t − 1)²: true, but not provable this way
    >>> prove_nonnegative([60, -692, 2695, -4224, 2304])  # 16·(3t − 2)²·((4t − 1)² − 1/16): p(1/4) < 0
    False
    """
    c = list(c) or [0]
    while len(c) > 1 and c[-1] == 0:
        c = c[:-1]
    stack = [(0, 0)]
    boxes = 0
    undecided = False
    while stack:
        m, k = stack.pop()
        boxes += 1
        if boxes > max_boxes or (deadline is not None and time.perf_counter() > deadline):
            return None
        _, b = bernstein(shift(c, m, k) if k else list(c))
        if min(b) >= 0:
            continue
        if b[0] < 0 or b[-1] < 0:
            return False  # b_0, b_d are values of p at the box corners
        if k >= max_depth:
            undecided = True
            continue
        stack += [(2 * m, k + 1), (2 * m + 1, k + 1)]
    return None if undecided else True


# ----------------------------------------------------------------------------- bivariate


def _transpose(c: Poly2) -> list[list[int]]:
    return [list(col) for col in zip(*c)]


def shift2(c: Poly2, m1: int, m2: int, k: int) -> list[list[int]]:
    """2^{k(d1+d2)}·p((m1 + a)/2^k, (m2 + b)/2^k) as an integer polynomial in (a, b)."""
    rows = [shift(list(row), m2, k) for row in c]  # in the second variable
    cols = [shift(col, m1, k) for col in _transpose(rows)]  # in the first
    return _transpose(cols)


def bernstein2(c: Poly2) -> list[list[int]]:
    """Bernstein coefficients of a bivariate polynomial, each scaled by the same positive integer."""
    rows = [bernstein(list(row))[1] for row in c]
    return _transpose([bernstein(col)[1] for col in _transpose(rows)])


def prove_nonnegative2(c: Poly2, *, max_depth: int = 16, max_boxes: int = 20000, deadline: float | None = None) -> bool | None:
    """p(α, s) ≥ 0 on [0, 1]²: True (proven), False (a corner with p < 0) or None (undecided).

    Depth first, and None as soon as one box is undecided at ``max_depth``: a zero *curve* of p
    (e.g. (α − s)²) leaves ~2^k undecided boxes per level, too many to keep looking for a negative
    corner elsewhere, so None may be returned where p < 0 somewhere (never a wrong True/False).
    """
    stack = [(0, 0, 0)]
    boxes = 0
    while stack:
        m1, m2, k = stack.pop()
        boxes += 1
        if boxes > max_boxes or (deadline is not None and time.perf_counter() > deadline):
            return None
        b = bernstein2(shift2(c, m1, m2, k) if k else [list(r) for r in c])
        if min(min(r) for r in b) >= 0:
            continue
        if min(b[0][0], b[0][-1], b[-1][0], b[-1][-1]) < 0:
            return False
        if k >= max_depth:
            return None
        stack += [(2 * m1 + i, 2 * m2 + j, k + 1) for i in (0, 1) for j in (0, 1)]
    return True


def compose_triangle(c: Poly2) -> list[list[int]]:
    """q(s, t) = p(s·t, s): maps the triangle 0 ≤ α ≤ s ≤ 1 onto the unit square (s, t).

    p(α, s) = Σ c[i][j] α^i s^j becomes Σ c[i][j] t^i s^{i+j}; returned with the first index for s.
    """
    d1, d2 = len(c) - 1, len(c[0]) - 1
    out = [[0] * (d1 + 1) for _ in range(d1 + d2 + 1)]
    for i in range(d1 + 1):
        for j in range(d2 + 1):
            out[i + j][i] += c[i][j]
    return out
