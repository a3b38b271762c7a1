"""The MSE sufficient conditions, *proven* on polynomial output paths (integer arithmetic only).

For a chain of affine layers, z(α) = 2^e Σ_j α^j Z_j exactly (:class:`OutputPolynomial`), so
z′, z″, the residual r = z(1) − y and every inner product in the conditions are integer
polynomials times powers of two. Polynomial inequalities on [0, 1] and on the triangle
0 ≤ α ≤ s ≤ 1 are proven with exact Bernstein bounds on dyadic subdivisions
(:mod:`mli_theory.exact.bernstein`), the Gauss length is bounded from above by a rigorous
Riemann sum of √N/D (N = ‖z′‖²‖z″‖² − ⟨z′, z″⟩², D = ‖z′‖²) with integer square roots, and cos(G)
from below with arb ball arithmetic. A verdict is True (proven), False (disproven) or None
(undecided within the deadline or the subdivision limits). The statements and their proofs are in
:mod:`mli_theory.theory.symbolic` and ``proofs/``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import flint
import torch

from . import bernstein as bz
from .budget import check_deadline, expired
from .dyadic import round_up, sqrt_up, to_fixed, to_fraction_of_arb
from .polynomials import OutputPolynomial

HALF_PI_BELOW = Fraction(math.pi / 2)  # the float math.pi/2 is below π/2: "G < this" implies G < π/2
# the Gauss-length bound tries uniform partitions of [0, 1] into 2^k boxes for k in this range
# (8 to 1024 boxes), stopping at the first that proves the bound needed
GAUSS_LEVELS = range(3, 11)

NAMES = (
    "zero_residual_gauss",
    "zero_residual_gauss_per_example",
    "acute_tangents",
    "acute_tangents_per_example",
    "stationary_pairwise",
    "stationary_curvature",
    "two_phase",
    "linear_in_theta",
)
# result (f): candidate splits c = m/2^SPLIT_LEVEL (dyadic, so that [c, 1] is a union of boxes)
SPLIT_LEVEL = 5


def _dot(a: list[int], b: list[int]) -> int:
    return sum(x * y for x, y in zip(a, b))


def _gram(u: list[list[int]], v: list[list[int]]) -> flint.fmpz_poly:
    """Σ_{i,j} ⟨u_i, v_j⟩ α^{i+j} for coefficient vectors u_i, v_j."""
    if not u or not v:
        return flint.fmpz_poly([0])
    out = [0] * (len(u) + len(v) - 1)
    for i, a in enumerate(u):
        for j, b in enumerate(v):
            out[i + j] += _dot(a, b)
    return flint.fmpz_poly(out)


def _ints(p: flint.fmpz_poly) -> list[int]:
    return [int(c) for c in p.coeffs()] or [0]


def gauss_upper(d: flint.fmpz_poly, num: flint.fmpz_poly, target: Fraction, deadline: float | None):
    """A proven upper bound on ∫₀¹ √N/D, with a proven lower bound of D, or None.

    Returns ``(bound, min_D_lower, k)`` for the first level k of :data:`GAUSS_LEVELS` whose bound is
    below ``target`` (else the last level that worked), or None when D cannot be shown positive
    (the tangent may be undefined) or the deadline passed first.
    """
    dl, nl = _ints(d), _ints(num)
    best = None
    for k in GAUSS_LEVELS:
        total, dmin = Fraction(0), None
        for m in range(2**k):
            if expired(deadline):
                return best
            dlo, _ = bz.bounds(dl, m, k)
            if dlo <= 0:
                return best
            _, nhi = bz.bounds(nl, m, k)
            total += round_up(sqrt_up(max(nhi, Fraction(0))) / dlo) / 2**k
            dmin = dlo if dmin is None else min(dmin, dlo)
        best = (total, dmin, k)
        if total < target:
            return best
    return best


def _cos_lower(g: Fraction) -> Fraction:
    """A rational ≤ cos(g) (arb ball arithmetic)."""
    c = flint.arb(flint.fmpq(g.numerator, g.denominator)).cos()
    return to_fraction_of_arb(c.mid()) - to_fraction_of_arb(c.rad())


class _IntegerPath:
    """Integer data of a polynomial output path: z = 2^e Σ α^j Z_j, z′ = 2^e Σ α^i V_i, z″ = 2^e Σ α^i U_i, r = 2^s R."""

    def __init__(self, z: OutputPolynomial, y: torch.Tensor) -> None:
        k, n = z.coeffs[0].nrows(), z.coeffs[0].ncols()
        self.k, self.n = k, n
        Z = [[int(v) for v in c.entries()] for c in z.coeffs]  # row-major k×n
        self.e = z.exp
        fy = to_fixed([y.detach().cpu().double().numpy().T])
        self.s = min(self.e, fy.exp)
        z1 = [sum(col) for col in zip(*Z)]
        self.R = [(a << (self.e - self.s)) - (b << (fy.exp - self.s)) for a, b in zip(z1, fy.ints[0])]
        self.Y = [b << (fy.exp - self.s) for b in fy.ints[0]]  # y = 2^s Y
        self.Z = Z
        self.degree = len(Z) - 1
        self.V = [[(i + 1) * v for v in Z[i + 1]] for i in range(self.degree)]
        self.U = [[(i + 1) * (i + 2) * v for v in Z[i + 2]] for i in range(self.degree - 1)]

    def column(self, vecs: list[list[int]], x: int) -> list[list[int]]:
        """The coefficient vectors restricted to example x."""
        return [[vec[a * self.n + x] for a in range(self.k)] for vec in vecs]

    def rcol(self, x: int) -> list[int]:
        return [self.R[a * self.n + x] for a in range(self.k)]


def _acute(V: list[list[int]], R: list[int], deadline: float | None) -> bool | None:
    """⟨z′(α), z′(s)⟩ ≥ 0 on [0,1]² and ⟨z′(α), r⟩ ≤ 0 on [0,1]."""
    if not V:
        return True  # z′ ≡ 0: L is constant
    P = [[_dot(a, b) for b in V] for a in V]
    ok = bz.prove_nonnegative2(P, deadline=deadline)
    if ok is not True or not any(R):
        return ok
    return bz.prove_nonnegative([-_dot(v, R) for v in V], deadline=deadline)


def _all(verdicts) -> bool | None:
    """True if all True, False if any False, else None (consumes lazily; stops at False)."""
    out: bool | None = True
    for v in verdicts:
        if v is False:
            return False
        if v is None:
            out = None
    return out


def prove_conditions(z: OutputPolynomial, y: torch.Tensor, deadline: float | None = None) -> dict[str, bool | None]:
    """Proven verdicts of the conditions (see :mod:`mli_theory.theory.statements`) on a polynomial path.

    Args:
        z: the exact output polynomial (outputs × examples).
        y: targets (n, k).
        deadline: ``time.perf_counter()`` value; raises
            :class:`~mli_theory.exact.budget.BudgetExceeded` once passed.

    Returns:
        name → True (proven), False (disproven) or None (undecided).
    """
    p = _IntegerPath(z, y)
    check_deadline(deadline)
    out: dict[str, bool | None] = {}
    r_zero = not any(p.R)
    s1 = sum(_dot(v, p.R) for v in p.V)  # ⟨z′(1), r⟩ times a positive power of two
    out["acute_tangents"] = _acute(p.V, p.R, deadline)
    check_deadline(deadline)
    out["acute_tangents_per_example"] = _all(
        (check_deadline(deadline), _acute(p.column(p.V, x), p.rcol(x), deadline))[1] for x in range(p.n)
    )
    # stationary, pairwise: ⟨z′(α), z′(s)⟩·4^e + ⟨z″(s), r⟩·2^{e+s} ≥ 0 on α ≤ s
    if s1 > 0:
        out["stationary_pairwise"] = False
    elif not p.V:
        out["stationary_pairwise"] = True
    else:
        m = min(2 * p.e, p.e + p.s)
        c1, c2 = 1 << (2 * p.e - m), 1 << (p.e + p.s - m)
        deg = len(p.V) - 1
        W = [_dot(u, p.R) for u in p.U] + [0] * (deg + 1 - len(p.U))
        Q = [[_dot(p.V[i], p.V[j]) * c1 + (W[j] * c2 if i == 0 else 0) for j in range(deg + 1)] for i in range(deg + 1)]
        out["stationary_pairwise"] = bz.prove_nonnegative2(bz.compose_triangle(Q), deadline=deadline)
    check_deadline(deadline)
    # Gauss-length conditions need a proven upper bound on the total turning
    D = _gram(p.V, p.V)
    A = _gram(p.U, p.U)
    B = _gram(p.V, p.U)
    bound = gauss_upper(D, D * A - B * B, HALF_PI_BELOW, deadline) if p.V else None
    # (a) holds up to G = π/2 inclusive; HALF_PI_BELOW < π/2, so "bound ≤ it" proves G < π/2
    proven_small = bound is not None and bound[0] <= HALF_PI_BELOW
    out["zero_residual_gauss"] = False if not r_zero else (True if proven_small else None)
    if not r_zero:
        out["zero_residual_gauss_per_example"] = False if any(any(p.rcol(x)) for x in range(p.n)) else None
    else:

        def per_example(x: int) -> bool | None:
            check_deadline(deadline)
            Vx, Ux = p.column(p.V, x), p.column(p.U, x)
            Dx = _gram(Vx, Vx)
            bx = gauss_upper(Dx, Dx * _gram(Ux, Ux) - _gram(Vx, Ux) ** 2, HALF_PI_BELOW, deadline)
            return True if (bx is not None and bx[0] <= HALF_PI_BELOW) else None

        out["zero_residual_gauss_per_example"] = _all(per_example(x) for x in range(p.n))
    if s1 > 0 or out["stationary_pairwise"] is False:
        # the curvature form implies the pairwise form (proofs/stationary_curvature.py)
        out["stationary_curvature"] = False
    elif not proven_small:
        out["stationary_curvature"] = None
    else:
        g_up, dmin, k = bound
        al = _ints(A)
        amax = max((bz.bounds(al, m, k)[1] for m in range(2**k)), default=Fraction(0)) if p.U else Fraction(0)
        cos_lo = _cos_lower(g_up)
        rn2 = Fraction(_dot(p.R, p.R))
        # with r = 2^s R, z′ = 2^e V, z″ = 2^e U:  4^s‖R‖²·max‖U‖² ≤ cos²(G)·4^e·(min‖V‖²)²
        lhs = rn2 * max(amax, Fraction(0)) * Fraction(4) ** p.s
        rhs = cos_lo * cos_lo * dmin * dmin * Fraction(4) ** p.e
        out["stationary_curvature"] = True if (cos_lo > 0 and lhs <= rhs) else None
    check_deadline(deadline)
    out["two_phase"] = _two_phase(p, s1, D, D * A - B * B, bound, deadline)
    if p.degree <= 1:
        out["linear_in_theta"] = s1 <= 0
    return out


def _two_phase(p: _IntegerPath, s1: int, D, N, bound, deadline: float | None) -> bool | None:
    """Result (f), simple form, proven: some dyadic c = m/2^SPLIT_LEVEL with (iii) needed only if c > 0,

    (i) ⟨z′(1), r⟩ ≤ 0 (exact integer), (ii) L″ ≥ 0 on [c, 1] (Bernstein bounds on each box of
    [c, 1]), (iii) ‖r‖ ≤ cos(G_up)·‖z(1) − z(c)‖ with G_up ≥ G a proven upper bound of the total
    turning (≤ π/2, so cos(G_up) ≥ 0 is a proven lower bound by arb) — the chord ‖z(1) − z(c)‖ is
    ≤ arc(c, 1), so this implies the simple form ‖r‖ ≤ cos(G)·arc(c, 1).

    False when (i) fails (then no split works); None when no candidate split is proven.
    """
    if s1 > 0:
        return False
    if not p.V:
        return True  # z constant: L constant
    # z(α) − y = 2^s Σ α^j W_j; L ∝ ‖W(α)‖², so L″ has the sign of P″ with P = ‖W‖²
    W = [[(a << (p.e - p.s)) for a in Zj] for Zj in p.Z]
    W[0] = [a - b for a, b in zip(W[0], p.Y)]
    P2 = _ints(_gram(W, W).derivative().derivative()) if len(W) > 1 else [0]
    k = SPLIT_LEVEL
    ok_from = 2**k  # boxes m ≥ ok_from are proven to have L″ ≥ 0
    for m in range(2**k - 1, -1, -1):
        check_deadline(deadline)
        if bz.prove_nonnegative(bz.shift(P2, m, k), deadline=deadline) is not True:
            break
        ok_from = m
    if ok_from == 2**k:
        return None
    if ok_from == 0:
        return True  # L convex on [0, 1] and L′(1) ≤ 0: (iii) has nothing left to show
    rn2 = Fraction(_dot(p.R, p.R)) * Fraction(4) ** p.s

    def cos_sq(b) -> Fraction | None:
        if b is None or b[0] > HALF_PI_BELOW:
            return None
        c = _cos_lower(b[0])
        return c * c if c > 0 else None

    cs = cos_sq(bound)
    coarse = cs is not None and bound[2] < GAUSS_LEVELS[-1]
    if coarse and cs * max(_chord_sq(p, Fraction(m, 2**k)) for m in range(ok_from, 2**k + 1)) < rn2:
        # gauss_upper stopped at the first level below π/2; the finest level gives a larger cos G
        cs = cos_sq(gauss_upper(D, N, Fraction(0), deadline))
    if cs is None:
        return None
    for m in range(ok_from, 2**k + 1):
        if rn2 <= cs * _chord_sq(p, Fraction(m, 2**k)):
            return True
    return None


def _chord_sq(p: _IntegerPath, c: Fraction) -> Fraction:
    """‖z(1) − z(c)‖² exactly (z = 2^e Σ α^j Z_j)."""
    diff = [Fraction(0)] * len(p.Z[0])
    for j, Zj in enumerate(p.Z):
        f = 1 - c**j
        if f:
            for i, a in enumerate(Zj):
                diff[i] += a * f
    return sum(d * d for d in diff) * Fraction(4) ** p.e
