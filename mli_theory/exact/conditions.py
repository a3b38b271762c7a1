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

Every condition implies L′ ≤ 0 on all of [0, 1], so an exact rise disproves all of them at once:
:func:`prove_conditions` first decides the loss polynomial at tolerance 0
(:func:`mli_theory.exact.decide.decide`) and, when L provably rises somewhere, answers False for
every condition with the witness as the reason. ``grid_slope`` (L′(αᵢ) ≤ 0 at the grid points and
the envelope of L′ from bounds mᵢ ≤ L″ ≤ Mᵢ between them) is proven with exact values of L′ at the
(dyadic) grid points and Bernstein bounds of L″ on each grid interval.

A path that starts on a plateau (z′(0) = 0, e.g. a deep linear net whose θ0 has two zero layers)
has no unit tangent at α = 0; there z′ = α^m·u with u(0) ≠ 0, the unit tangent is u/‖u‖ on (0, 1],
and the turning bound that result (f) needs is that of u (:func:`_tangent_data`).
"""

from __future__ import annotations

import math
from fractions import Fraction
from math import comb
from typing import Collection, Sequence

import flint
import torch

from . import bernstein as bz
from .budget import BudgetExceeded, check_deadline, expired
from .decide import decide
from .dyadic import round_up, sqrt_up, to_fixed, to_fraction_of_arb
from .polynomials import LossPolynomial, OutputPolynomial, horner, mse_loss_polynomial

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
# proven only when the α grid is given (the statement is about that grid)
GRID_NAMES = ("grid_slope",)
# grid_slope: each grid interval's bounds of L″ are tried on 1, 2, 4, … up to this many equal pieces
GRID_SLOPE_PIECES = 16
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


class Verdicts(dict):
    """name → True (proven) / False (disproven) / None (undecided), with the reasons.

    A plain ``dict`` to every caller, plus:

    Attributes:
        reasons: name → a sentence on why a verdict is False (the witness of a rise, the grid point
            with L′ > 0) or None (the budget ran out); names without a reason have none to give.
        expired: True when the deadline passed before every requested condition was tried
            (only with ``partial=True``; the untried ones are None).
    """

    def __init__(self, *args, **kwargs) -> None:  # dict's signature: copy.deepcopy and dataclasses.asdict rebuild it so
        super().__init__(*args, **kwargs)
        self.reasons: dict[str, str] = {}
        self.expired = False


def prove_conditions(
    z: OutputPolynomial,
    y: torch.Tensor,
    deadline: float | None = None,
    *,
    alphas: Sequence[float] | None = None,
    names: Collection[str] | None = None,
    partial: bool = False,
    loss: LossPolynomial | None = None,
) -> Verdicts:
    """Proven verdicts of the conditions (see :mod:`mli_theory.theory.statements`) on a polynomial path.

    Args:
        z: the exact output polynomial (outputs × examples).
        y: targets (n, k).
        deadline: ``time.perf_counter()`` value; past it :class:`~mli_theory.exact.budget.BudgetExceeded`
            is raised (``partial=False``) or the conditions not yet decided are None (``partial=True``).
        alphas: the α grid of ``grid_slope`` (increasing, from 0 to 1; floats are dyadic rationals,
            taken exactly); None: ``grid_slope`` is not proven.
        names: prove only these (None: all of :data:`NAMES`, ``linear_in_theta`` only for affine
            paths, and ``grid_slope`` when ``alphas`` is given).
        partial: return what was decided when the deadline passes instead of raising.
        loss: the exact loss polynomial of ``z`` and ``y`` if the caller has it (else computed).

    Returns:
        :class:`Verdicts`: name → True (proven), False (disproven) or None (undecided), with reasons.
        When the exact loss rises anywhere on [0, 1] every condition is False (each implies L′ ≤ 0).
    """
    p = _IntegerPath(z, y)
    wanted = set(NAMES if names is None else names)
    if names is None and alphas is not None:
        wanted |= set(GRID_NAMES)
    if p.degree > 1:
        wanted.discard("linear_in_theta")  # result (d) is about affine paths only
    if alphas is None:
        wanted.discard("grid_slope")
    order = ("linear_in_theta", "grid_slope", "acute_tangents", "stationary_pairwise", "zero_residual_gauss",
             "stationary_curvature", "two_phase", "acute_tangents_per_example", "zero_residual_gauss_per_example")
    todo = [n for n in order if n in wanted]
    out = Verdicts()
    try:
        check_deadline(deadline)
        if loss is None:
            loss = mse_loss_polynomial(z, y, deadline)
        rise = decide(loss, 0.0, deadline)
        if rise.status == "non_monotone":
            a, b = rise.where
            why = (f"disproven: the exact loss rises by {rise.rise:.3g} from α = {a:.6g} to α = {b:.6g} "
                   "(real-root isolation of L′), and the condition implies L′ ≤ 0 on [0, 1]")
            for name in todo:
                out[name] = False
                out.reasons[name] = why
            return out
        _prove_each(p, loss.ints, alphas, todo, out, deadline)
    except BudgetExceeded:
        if not partial:
            raise
        out.expired = True
        for name in todo:
            if name not in out:
                out[name] = None
                out.reasons[name] = "undecided: the proof budget ran out first"
    return out


def _prove_each(p: _IntegerPath, loss: Sequence[int], alphas, todo: list[str], out: Verdicts, deadline: float | None) -> None:
    """Fill ``out`` with the verdict of each name of ``todo``, in that order (cheap ones first)."""
    r_zero = not any(p.R)
    s1 = sum(_dot(v, p.R) for v in p.V)  # ⟨z′(1), r⟩ times a positive power of two
    gauss: dict[str, object] = {}

    def tangent_bound():
        # Gauss-length data of z′ (shared by (a), the curvature form of (c) and (f))
        if "bound" not in gauss:
            D, A, B = _gram(p.V, p.V), _gram(p.U, p.U), _gram(p.V, p.U)
            gauss["D"], gauss["A"], gauss["N"] = D, A, D * A - B * B
            gauss["bound"] = gauss_upper(D, gauss["N"], HALF_PI_BELOW, deadline) if p.V else None
        return gauss["bound"]

    for name in todo:
        check_deadline(deadline)
        if name == "linear_in_theta":
            out[name] = s1 <= 0
        elif name == "grid_slope":
            verdict, why = _grid_slope(loss, alphas, deadline)
            out[name] = verdict
            if why:
                out.reasons[name] = why
        elif name == "acute_tangents":
            out[name] = _acute(p.V, p.R, deadline)
        elif name == "acute_tangents_per_example":
            out[name] = _all((check_deadline(deadline), _acute(p.column(p.V, x), p.rcol(x), deadline))[1] for x in range(p.n))
        elif name == "stationary_pairwise":
            out[name] = _pairwise(p, s1, deadline)
        elif name == "zero_residual_gauss":
            if not r_zero:
                out[name] = False
            else:
                # (a) holds up to G = π/2 inclusive; HALF_PI_BELOW < π/2, so "bound ≤ it" proves G < π/2
                bound = tangent_bound()
                out[name] = True if (bound is not None and bound[0] <= HALF_PI_BELOW) else None
        elif name == "zero_residual_gauss_per_example":
            out[name] = _gauss_per_example(p, deadline)
        elif name == "stationary_curvature":
            if s1 > 0 or out.get("stationary_pairwise") is False:
                # the curvature form implies the pairwise form (proofs/stationary_curvature.py)
                out[name] = False
            else:
                bound = tangent_bound()
                out[name] = _curvature(p, bound, gauss.get("A"), deadline)
        elif name == "two_phase":

            def tangent():
                bound = tangent_bound()
                return gauss["D"], gauss["N"], bound

            out[name] = _two_phase(p, s1, tangent, deadline)


def _pairwise(p: _IntegerPath, s1: int, deadline: float | None) -> bool | None:
    """(c), pairwise: ⟨z′(α), z′(s)⟩·4^e + ⟨z″(s), r⟩·2^{e+s} ≥ 0 on α ≤ s, and ⟨z′(1), r⟩ ≤ 0."""
    if s1 > 0:
        return False
    if not p.V:
        return True
    m = min(2 * p.e, p.e + p.s)
    c1, c2 = 1 << (2 * p.e - m), 1 << (p.e + p.s - m)
    deg = len(p.V) - 1
    W = [_dot(u, p.R) for u in p.U] + [0] * (deg + 1 - len(p.U))
    Q = [[_dot(p.V[i], p.V[j]) * c1 + (W[j] * c2 if i == 0 else 0) for j in range(deg + 1)] for i in range(deg + 1)]
    return bz.prove_nonnegative2(bz.compose_triangle(Q), deadline=deadline)


def _gauss_per_example(p: _IntegerPath, deadline: float | None) -> bool | None:
    """(a) per example: every r_x = 0 and every example's own path turns by ≤ π/2."""
    if any(any(p.rcol(x)) for x in range(p.n)):
        return False

    def one(x: int) -> bool | None:
        check_deadline(deadline)
        Vx, Ux = p.column(p.V, x), p.column(p.U, x)
        Dx = _gram(Vx, Vx)
        bx = gauss_upper(Dx, Dx * _gram(Ux, Ux) - _gram(Vx, Ux) ** 2, HALF_PI_BELOW, deadline)
        return True if (bx is not None and bx[0] <= HALF_PI_BELOW) else None

    return _all(one(x) for x in range(p.n))


def _curvature(p: _IntegerPath, bound, A, deadline: float | None) -> bool | None:
    """(c), curvature form, given ⟨z′(1), r⟩ ≤ 0: G < π/2 and ‖r‖·max‖z″‖ ≤ cos(G)·min‖z′‖²."""
    if bound is None or bound[0] > HALF_PI_BELOW:
        return None
    g_up, dmin, k = bound
    al = _ints(A)
    amax = max((bz.bounds(al, m, k)[1] for m in range(2**k)), default=Fraction(0)) if p.U else Fraction(0)
    cos_lo = _cos_lower(g_up)
    rn2 = Fraction(_dot(p.R, p.R))
    # with r = 2^s R, z′ = 2^e V, z″ = 2^e U:  4^s‖R‖²·max‖U‖² ≤ cos²(G)·4^e·(min‖V‖²)²
    lhs = rn2 * max(amax, Fraction(0)) * Fraction(4) ** p.s
    rhs = cos_lo * cos_lo * dmin * dmin * Fraction(4) ** p.e
    return True if (cos_lo > 0 and lhs <= rhs) else None


def _interval_bounds(c: Sequence[int], lo: Fraction, hi: Fraction) -> tuple[Fraction, Fraction]:
    """Proven (lower, upper) bounds of p(α) = Σ c_i α^i on [lo, hi] (dyadic ends): Bernstein bounds
    of the integer polynomial 2^{Qd}·p(lo + (hi − lo)t) on t ∈ [0, 1]."""
    c = list(c) or [0]
    d = len(c) - 1
    q = max(lo.denominator.bit_length(), hi.denominator.bit_length()) - 1  # denominators are powers of two
    U, H = int(lo * 2**q), int((hi - lo) * 2**q)
    out = [0] * (d + 1)
    for i, ci in enumerate(c):
        if ci == 0:
            continue
        f = ci << (q * (d - i))
        for r in range(i + 1):  # (U + H t)^i = Σ_r C(i, r) U^{i−r} H^r t^r
            out[r] += f * comb(i, r) * U ** (i - r) * H**r
    big, b = bz.bernstein(out)
    scale = Fraction(1, big * 2 ** (q * d))
    return min(b) * scale, max(b) * scale


def _envelope(p: Fraction, q: Fraction, m: Fraction, M: Fraction, h: Fraction) -> Fraction:
    """max over s ∈ [0, h] of min(p + M·s, q − m·(h − s)) (a concave function: an end or the crossing)."""

    def env(t: Fraction) -> Fraction:
        return min(p + M * t, q - m * (h - t))

    best = max(env(Fraction(0)), env(h))
    if M > m:
        t = (q - m * h - p) / (M - m)
        if 0 < t < h:
            best = max(best, env(t))
    return best


def _grid_slope(loss: Sequence[int], alphas, deadline: float | None) -> tuple[bool | None, str | None]:
    """``grid_slope`` proven on the exact loss polynomial (integer coefficients, positive scale).

    False (disproven) when L′(αᵢ) > 0 exactly at a grid point; True when L′(αᵢ) ≤ 0 at every grid
    point and, with Bernstein bounds mᵢ ≤ L″ ≤ Mᵢ on each grid interval (tightened by splitting it
    into up to :data:`GRID_SLOPE_PIECES` pieces), max_s min(L′(αᵢ) + Mᵢs, L′(αᵢ₊₁) − mᵢ(h − s)) ≤ 0;
    None otherwise (these bounds are not tight enough: no verdict).
    """
    a = [Fraction(float(v)) for v in alphas]
    if len(a) < 2 or a[0] != 0 or a[-1] != 1 or any(u >= v for u, v in zip(a, a[1:])):
        return None, "undecided: the grid must increase from 0 to 1"
    dp = [m * loss[m] for m in range(1, len(loss))] or [0]
    d2 = [m * dp[m] for m in range(1, len(dp))] or [0]
    lp = [horner(dp, v) for v in a]
    for v, s in zip(a, lp):
        if s > 0:
            return False, f"disproven: L′({float(v):.6g}) > 0 exactly at a grid point"
    for i in range(len(a) - 1):
        check_deadline(deadline)
        lo, hi = a[i], a[i + 1]
        pieces = 1
        while True:
            cuts = [lo + (hi - lo) * Fraction(j, pieces) for j in range(pieces + 1)]
            bs = [_interval_bounds(d2, u, v) for u, v in zip(cuts, cuts[1:])]
            m, M = min(b[0] for b in bs), max(b[1] for b in bs)
            if _envelope(lp[i], lp[i + 1], m, M, hi - lo) <= 0:
                break
            if pieces >= GRID_SLOPE_PIECES:
                return None, (f"undecided: on [{float(lo):.6g}, {float(hi):.6g}] the envelope of L′ from proven bounds "
                              "of L″ is positive (the statement needs tighter bounds there)")
            pieces *= 2
            check_deadline(deadline)
    return True, None


def _tangent_data(p: _IntegerPath) -> tuple[flint.fmpz_poly, flint.fmpz_poly] | None:
    """(D, N) of u = z′/α^m for a path that starts on a plateau (z′(0) = 0, m ≥ 1 the order of the
    zero), or None when z′(0) ≠ 0. The unit tangent z′/‖z′‖ = u/‖u‖ on (0, 1], so the turning of the
    tangent on (0, 1] is ∫ √N/D of u: D = ‖u‖², N = ‖u‖²‖u′‖² − ⟨u, u′⟩², with D(0) = ‖u(0)‖² > 0."""
    m = 0
    while m < len(p.V) and not any(p.V[m]):
        m += 1
    if m == 0 or m == len(p.V):
        return None
    Vu = p.V[m:]
    Uu = [[(i + 1) * v for v in Vu[i + 1]] for i in range(len(Vu) - 1)]
    D = _gram(Vu, Vu)
    return D, D * _gram(Uu, Uu) - _gram(Vu, Uu) ** 2


def _two_phase(p: _IntegerPath, s1: int, tangent, deadline: float | None) -> bool | None:
    """Result (f), simple form, proven: some dyadic c = m/2^SPLIT_LEVEL with (iii) needed only if c > 0,

    (i) ⟨z′(1), r⟩ ≤ 0 (exact integer), (ii) L″ ≥ 0 on [c, 1] (Bernstein bounds on each box of
    [c, 1]), (iii) ‖r‖ ≤ cos(G_up)·‖z(1) − z(c)‖ with G_up ≥ G a proven upper bound of the total
    turning of the unit tangent (≤ π/2, so cos(G_up) ≥ 0 is a proven lower bound by arb) — the chord
    ‖z(1) − z(c)‖ is ≤ arc(c, 1), so this implies the simple form ‖r‖ ≤ cos(G)·arc(c, 1).

    ``tangent()`` gives (D, N, bound) of z′ (computed once, shared with (a) and (c)). On a path that
    starts on a plateau, z′(0) = 0, so D(0) = 0 and no bound of ∫√N/D exists for z′ itself; the
    turning is then bounded through u = z′/α^m (:func:`_tangent_data`), whose unit tangent is the
    same on (0, 1]. That is all (iii) needs: at α = 0 both of its sides are 0, and for α ∈ (0, c)
    the turning on [α, 1] is at most the turning on (0, 1].

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

    D, N, bound = tangent()
    plateau = _tangent_data(p) if bound is None else None
    if plateau is not None:  # z′(0) = 0: the turning of the unit tangent on (0, 1], through u
        D, N = plateau
        bound = gauss_upper(D, N, HALF_PI_BELOW, deadline)
    cs = cos_sq(bound)
    if cs is None:
        return None
    check_deadline(deadline)
    gram = _chord_gram(p)
    chords = [_chord_sq(p, Fraction(m, 2**k), gram) for m in range(ok_from, 2**k + 1)]
    if bound[2] < GAUSS_LEVELS[-1] and cs * max(chords) < rn2:
        # gauss_upper stopped at the first level below π/2; the finest level gives a larger cos G
        cs = cos_sq(gauss_upper(D, N, Fraction(0), deadline))
    if cs is None:
        return None
    return True if any(rn2 <= cs * chord for chord in chords) else None


def _chord_gram(p: _IntegerPath) -> list[list[int]]:
    """⟨Z_j, Z_l⟩ for the coefficient vectors of z = 2^e Σ α^j Z_j (once per path)."""
    return [[_dot(a, b) for b in p.Z] for a in p.Z]


def _chord_sq(p: _IntegerPath, c: Fraction, gram: list[list[int]] | None = None) -> Fraction:
    """‖z(1) − z(c)‖² exactly: Σ_{j,l} ⟨Z_j, Z_l⟩(1 − c^j)(1 − c^l)·4^e (``gram`` from :func:`_chord_gram`)."""
    G = _chord_gram(p) if gram is None else gram
    f = [1 - c**j for j in range(len(G))]
    return sum(G[j][l] * f[j] * f[l] for j in range(len(G)) for l in range(len(G)) if f[j] and f[l]) * Fraction(4) ** p.e
