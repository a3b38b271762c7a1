"""Symbolic theory of MLI under mean squared error (sympy).

Setting: outputs stacked into z(α) ∈ R^m (m = n·k), targets y, final residual r = z(1) − y, and
L(α) = (1/2n)·‖z(α) − y‖² (any positive constant, such as torch's 1/(n·k), changes nothing below).

Each public function returns a :class:`Derivation`: the statement, the assumptions it needs, and
the steps, each a sympy object with the claim it must satisfy (an expression that simplifies to 0,
or a polynomial degree). ``proofs/`` holds one runnable script per result that checks every step
with :func:`check_step`; steps sympy cannot check are written as arguments and backed numerically
there.

>>> d = mse_path_derivatives()
>>> all(check_step(s) for s in d.steps)
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import sympy as sp
from sympy.core.function import AppliedUndef

StepKind = Literal["zero", "degree_le", "argument"]

alpha, s, n = sp.symbols("alpha s n", positive=True)


@dataclass(frozen=True)
class Step:
    """One step of a derivation.

    Attributes:
        claim: the step in words.
        kind: ``zero`` (``expr`` simplifies to 0), ``degree_le`` (``expr`` is a polynomial in α of
            degree ≤ ``bound``) or ``argument`` (not checkable by sympy; see ``proofs/``).
        expr: the sympy object.
        bound: the degree bound for ``degree_le``.
    """

    claim: str
    kind: StepKind
    expr: sp.Basic | None = None
    bound: int | None = None


@dataclass(frozen=True)
class Derivation:
    """A result with its statement, assumptions and checkable steps.

    Attributes:
        name: identifier used by ``mli-theory derive NAME``.
        title: one line.
        statement: the result (text).
        assumptions: what it needs, one per entry.
        result: the main formula as a sympy object (for LaTeX).
        steps: the derivation.
    """

    name: str
    title: str
    statement: str
    assumptions: tuple[str, ...]
    result: sp.Basic
    steps: tuple[Step, ...] = field(default_factory=tuple)


def check_step(step: Step) -> bool:
    """Verify a step with sympy; ``argument`` steps return True here (checked in ``proofs/``).

    ``zero``: True only when sympy shows ``expr ≡ 0`` (see :func:`_is_identically_zero`); any
    failure of the simplification, or an expression that is not a scalar sympy expression, gives
    False. ``degree_le``: True when ``expr`` is a polynomial in α whose degree (for generic values
    of its other symbols) is ≤ ``bound``; anything that is not a polynomial in α gives False.
    Unknown kinds give False.

    >>> from sympy import cos, sin, symbols
    >>> x, y = symbols("x y")
    >>> check_step(Step("binomial", "zero", (x + y)**2 - x**2 - 2*x*y - y**2))
    True
    >>> check_step(Step("wrong binomial", "zero", (x + y)**2 - x**2 - y**2))
    False
    >>> check_step(Step("Pythagoras", "zero", cos(x)**2 + sin(x)**2 - 1))
    True
    >>> check_step(Step("not an identity", "zero", cos(x)**2 - sin(x)**2 - 1))
    False
    >>> check_step(Step("degree", "degree_le", (1 + alpha)**3, 3)), check_step(Step("degree", "degree_le", (1 + alpha)**3, 2))
    (True, False)
    """
    if step.kind == "zero":
        try:
            return _is_identically_zero(step.expr)
        except Exception:  # noqa: BLE001 - a check that cannot be carried out is not a pass
            return False
    if step.kind == "degree_le":
        try:
            return _degree_at_most(step.expr, step.bound)
        except Exception:  # noqa: BLE001
            return False
    return step.kind == "argument"


def _degree_at_most(expr, bound) -> bool:
    """deg_α(expr) ≤ bound, where expr must be a polynomial in α (symbolic coefficients allowed).

    The degree is the generic one: a coefficient that is a non-zero polynomial in other symbols
    counts, so the check is "degree ≤ bound for every value of the other symbols". The zero
    polynomial has degree −∞.
    """
    if expr is None or bound is None:
        return False
    if isinstance(expr, sp.Poly):
        poly = expr if expr.gens == (alpha,) else sp.Poly(expr.as_expr(), alpha)
    else:
        poly = sp.Poly(sp.sympify(expr), alpha)  # raises PolynomialError if not polynomial in α
    if poly.is_zero:
        return True
    return poly.degree(alpha) <= int(bound)


_OPAQUE = (AppliedUndef, sp.Derivative, sp.Subs, sp.Integral)


def _is_identically_zero(expr) -> bool:
    """Decide ``expr ≡ 0`` soundly: True only if sympy reduces ``expr`` to exactly 0.

    1. Floats are replaced by the exact rationals they store (no rounding inside the check);
       unevaluated integrals, derivatives, sums and substitutions are evaluated (``doit``); what
       remains opaque — undefined functions z(α), their derivatives, ``Subs``, integrals sympy
       cannot do — is replaced by fresh symbols. This is sound: the original expression is the
       new one with those symbols substituted back, so if the new one is ≡ 0 so is the original.
    2. If the result is a rational function of its symbols, write it as p/q and expand p in the
       polynomial ring over its symbols: a polynomial is zero iff all its coefficients are, so
       this is an exact decision.
    3. Otherwise (trigonometric and other transcendental terms) evaluate at a few random points
       with 50 significant digits; a value clearly away from 0 proves ``expr ≢ 0`` (False).
       Then try ``expand``, ``expand_trig``, ``trigsimp``, ``simplify`` and the rewrite in
       exponentials; True only when one of them returns exactly 0.
    """
    if expr is None:
        return False
    e = expr.as_expr() if isinstance(expr, sp.Poly) else sp.sympify(expr)
    if not isinstance(e, sp.Expr):
        return False
    floats = e.atoms(sp.Float)
    if floats:
        e = e.xreplace({f: sp.Rational(f) for f in floats})
    if e.has(sp.Integral, sp.Derivative, sp.Subs, sp.Sum, sp.Product):
        try:
            e = e.doit()  # steps may hold unevaluated integrals and derivatives: evaluate them here
        except Exception:  # noqa: BLE001 - left unevaluated, they become opaque symbols below
            pass
    opaque = [a for a in e.atoms(*_OPAQUE)]
    if opaque:
        e = e.xreplace({a: sp.Dummy(f"opaque{i}") for i, a in enumerate(opaque)})
    if e.is_rational_function():
        numerator = sp.numer(sp.together(e))
        syms = sorted(numerator.free_symbols, key=lambda x: x.name)
        if not syms:
            return sp.expand(numerator) == 0
        return sp.Poly(numerator, *syms).is_zero  # exact expansion in the polynomial ring
    if sp.expand(e) == 0:
        return True
    if _clearly_nonzero_somewhere(e):
        return False
    attempts = (
        lambda x: sp.expand(sp.expand_trig(x)),
        sp.trigsimp,
        lambda x: sp.trigsimp(sp.expand(sp.expand_trig(x))),
        sp.simplify,
        lambda x: sp.expand(sp.expand(x.rewrite(sp.exp)), power_exp=True),
    )
    for attempt in attempts:
        try:
            if attempt(e) == 0:
                return True
        except Exception:  # noqa: BLE001 - try the next one; never count a failure as a pass
            continue
    return False


def _sample_value(sym: sp.Symbol, rng) -> sp.Rational:
    """A random exact value for ``sym`` respecting its sign and integrality assumptions."""
    if sym.is_integer:
        v = sp.Integer(rng.randint(1, 9))
    else:
        v = sp.Rational(rng.randint(1, 97), rng.randint(2, 13))
    return -v if (sym.is_negative or sym.is_nonpositive) else v


def _clearly_nonzero_somewhere(e: sp.Expr, points: int = 3, digits: int = 50, max_nodes: int = 5000) -> bool:
    """True if e evaluates, at some random point, to a number clearly different from 0.

    Only ever used to reject. The threshold is 10^−(digits/2) times the largest magnitude of any
    sub-expression at that point (so cancellation in a true identity, which leaves about
    10^−digits of that size, never counts); points where e is undefined or not a finite number
    are skipped, and so are expressions too large to evaluate node by node.
    """
    import random

    if sum(1 for _ in sp.preorder_traversal(e)) > max_nodes:
        return False
    rng = random.Random(20240611)
    syms = sorted(e.free_symbols, key=lambda x: x.name)
    for _ in range(points):
        vals = {x: _sample_value(x, rng) for x in syms}
        try:
            at = e.xreplace(vals)
            v = sp.N(at, digits)
            sizes = [abs(sp.N(node, 15)) for node in sp.preorder_traversal(at)]
            scale = max([x for x in sizes if x.is_finite and x.is_real] + [sp.Integer(1)])
        except Exception:  # noqa: BLE001
            continue
        if not v.is_number or v.has(sp.nan, sp.zoo, sp.oo, -sp.oo) or not abs(v).is_finite:
            continue
        if abs(v) > sp.Float(10) ** (-(digits // 2)) * scale:
            return True
    return False


# ----------------------------------------------------------------------------- helpers


def _vector_path(m: int, name: str = "z") -> list[sp.Function]:
    return [sp.Function(f"{name}{i}")(alpha) for i in range(m)]


def _poly_path(m: int, degree: int, var: sp.Symbol = alpha, name: str = "c") -> list[sp.Expr]:
    """m generic polynomials of the given degree (symbolic coefficients) in ``var``."""
    return [sum(sp.Symbol(f"{name}{i}_{j}") * var**j for j in range(degree + 1)) for i in range(m)]


def _generic_path(m: int, degree: int):
    """A generic polynomial path in s and α: (z(s), z(α), y, r = z(1) − y, z′(α), z′(s))."""
    zs = _poly_path(m, degree, s)
    za = [zi.subs(s, alpha) for zi in zs]
    y = sp.symbols(f"y0:{m}")
    r = [zi.subs(s, 1) - yi for zi, yi in zip(zs, y)]
    return zs, za, y, r, [sp.diff(zi, alpha) for zi in za], [sp.diff(zi, s) for zi in zs]


def _dot(a, b) -> sp.Expr:
    return sum(x * y for x, y in zip(a, b))


def _slope_terms(m: int, degree: int) -> tuple[sp.Expr, sp.Expr, sp.Expr, dict]:
    """The pieces of the integral identity on a generic polynomial path, computed independently.

    Returns ``(Lp, P_int, Q, end)`` where, for z a generic polynomial path of the given degree in
    R^m (symbolic coefficients, see :func:`_generic_path`) and generic targets y,

    * ``Lp`` = L′(α) obtained by differentiating L(α) = (1/2n)‖z(α) − y‖² with sympy,
    * ``P_int`` = ∫_α^1 P(α, s) ds with P = ⟨z′(α), z′(s)⟩, integrated by sympy,
    * ``Q`` = ⟨z′(α), r⟩ with r = z(1) − y,
    * ``end`` = the substitution y := z(1), which makes r = 0.

    The integral identity says n·L′ = −∫_α^1 P ds + Q; none of the three pieces is built from it.
    """
    zs, za, y, r, dza, dzs = _generic_path(m, degree)
    res = [zi - yi for zi, yi in zip(za, y)]
    Lp = sp.diff(_dot(res, res) / (2 * n), alpha)
    P_int = sp.integrate(sp.expand(_dot(dza, dzs)), (s, alpha, 1))
    end = {yi: zi.subs(s, 1) for yi, zi in zip(y, zs)}
    return Lp, P_int, _dot(dza, r), end


def _polar(rho: sp.Symbol, phi: sp.Symbol) -> list[sp.Expr]:
    """ρ(cos φ, sin φ): a vector of R² in polar form."""
    return [rho * sp.cos(phi), rho * sp.sin(phi)]


def _spherical(rho: sp.Symbol, theta: sp.Symbol, phi: sp.Symbol) -> list[sp.Expr]:
    """ρ(sin θ cos φ, sin θ sin φ, cos θ): a vector of R³ in spherical form (θ polar, φ azimuth)."""
    return [rho * sp.sin(theta) * sp.cos(phi), rho * sp.sin(theta) * sp.sin(phi), rho * sp.cos(theta)]


# ----------------------------------------------------------------------------- results


def mse_path_derivatives(m: int = 3) -> Derivation:
    """L′ = (1/n)⟨z′, z − y⟩ and L″ = (1/n)(‖z′‖² + ⟨z″, z − y⟩), for any smooth path z(α)."""
    z = _vector_path(m)
    y = sp.symbols(f"y0:{m}")
    L = _dot([zi - yi for zi, yi in zip(z, y)], [zi - yi for zi, yi in zip(z, y)]) / (2 * n)
    d1 = _dot([sp.diff(zi, alpha) for zi in z], [zi - yi for zi, yi in zip(z, y)]) / n
    d2 = (_dot([sp.diff(zi, alpha) for zi in z], [sp.diff(zi, alpha) for zi in z]) + _dot([sp.diff(zi, alpha, 2) for zi in z], [zi - yi for zi, yi in zip(z, y)])) / n
    Lp, Lpp = sp.Function("L")(alpha).diff(alpha), sp.Function("L")(alpha).diff(alpha, 2)
    return Derivation(
        "mse_path_derivatives",
        "Derivatives of the MSE along a path in function space",
        "L′(α) = (1/n)⟨z′(α), z(α) − y⟩ and L″(α) = (1/n)(‖z′(α)‖² + ⟨z″(α), z(α) − y⟩).",
        ("z is twice differentiable in α", "L(α) = (1/2n)‖z(α) − y‖²"),
        sp.Tuple(sp.Eq(Lp, d1), sp.Eq(Lpp, d2)),
        (
            Step(f"differentiate L once (m = {m} generic components; the identity is componentwise)", "zero", sp.diff(L, alpha) - d1),
            Step("differentiate L twice", "zero", sp.diff(L, alpha, 2) - d2),
        ),
    )


def integral_identity(m: int = 2, degree: int = 4) -> Derivation:
    """L′(α) = −(1/n)∫_α^1⟨z′(α), z′(s)⟩ds + (1/n)⟨z′(α), r⟩ with r = z(1) − y."""
    zs, za, y, r, dza, dzs = _generic_path(m, degree)
    lhs = _dot(dza, [zi - yi for zi, yi in zip(za, y)]) / n
    rhs = -sp.integrate(_dot(dza, dzs), (s, alpha, 1)) / n + _dot(dza, r) / n
    # the stated form, per component: (z(α) − y) − (r − ∫_α^1 z′(s) ds), the integral left
    # unevaluated so that the check (not the construction) carries it out
    ftc = [(zai - yi) - (ri - sp.Integral(d, (s, alpha, 1))) for zai, yi, ri, d in zip(za, y, r, dzs)]
    return Derivation(
        "integral_identity",
        "The loss slope as an integral of tangent inner products",
        "L′(α) = −(1/n)∫_α^1 ⟨z′(α), z′(s)⟩ ds + (1/n)⟨z′(α), r⟩, where r = z(1) − y.",
        ("z is continuously differentiable on [0, 1]", "L(α) = (1/2n)‖z(α) − y‖²"),
        sp.Eq(sp.Symbol("L'(alpha)"), -sp.Integral(sp.Symbol("<z'(alpha),z'(s)>"), (s, alpha, 1)) / n + sp.Symbol("<z'(alpha),r>") / n),
        (
            Step("fundamental theorem of calculus: z(α) − y = r − ∫_α^1 z′(s) ds (generic polynomial components)", "zero", sp.Add(*[f**2 for f in ftc])),
            Step(f"substitute into L′ = (1/n)⟨z′, z − y⟩ (m = {m}, degree {degree} generic polynomials)", "zero", lhs - rhs),
            Step(
                "the identity holds for every C¹ path: both sides are linear in z − y and the FTC step holds for any C¹ function",
                "argument",
            ),
        ),
    )


def zero_residual_gauss(m: int = 2, degree: int = 4) -> Derivation:
    """(a) r = 0 and total turning G ≤ π/2 imply L′ ≤ 0 on [0, 1] (stacked outputs or per example).

    π/2 is tight for any rule that sees only G (see :func:`hierarchy`); z may be piecewise C¹ when G
    counts the angle of each jump of the tangent (the tangent indicatrix is then closed by
    great-circle arcs at the jumps, and the angle bound below still holds).

    Checked steps: (1) with y := z(1) the slope L′ of L(α) = (1/2n)‖z(α) − z(1)‖², differentiated
    by sympy on a generic polynomial path, equals −(1/n)∫_α^1⟨z′(α), z′(s)⟩ds, integrated by sympy;
    (2)–(4) the inner product of two vectors is the product of their lengths and the cosine of the
    angle between them, in polar form on R² (any two tangents span a plane) and, for the
    great-circle distance d on the unit sphere, in spherical form on R³:
    ⟨u, v⟩ = ρ₁ρ₂(cos θ₁ cos θ₂ + sin θ₁ sin θ₂ cos(φ₁ − φ₂)) = ρ₁ρ₂ cos d.
    """
    Lp, P_int, _, end = _slope_terms(m, degree)
    r1, r2 = sp.symbols("rho1 rho2", positive=True)
    p1, p2, t1, t2 = sp.symbols("phi1 phi2 theta1 theta2", real=True)
    u, v = _polar(r1, p1), _polar(r2, p2)
    u3, v3 = _spherical(r1, t1, p1), _spherical(r2, t2, p2)
    cos_d = sp.cos(t1) * sp.cos(t2) + sp.sin(t1) * sp.sin(t2) * sp.cos(p1 - p2)  # spherical law of cosines
    return Derivation(
        "zero_residual_gauss",
        "(a) Zero final residual and Gauss length below π/2",
        "If r = z(1) − y = 0, z′(α) ≠ 0 on [0, 1] and the total turning G = ∫₀¹‖dT/dα‖dα of the unit "
        "tangent T = z′/‖z′‖ is ≤ π/2, then L is non-increasing on [0, 1]. π/2 cannot be raised by any "
        "rule that sees only G (result 'hierarchy'). Applied per example (each example's own output path "
        "and residual), the sum of non-increasing per-example losses is non-increasing (a subordinate "
        "variant: it implies stacked (b)).",
        (
            "z continuous and piecewise C¹ on [0, 1] (G includes the angle of each jump of the tangent)",
            "z′(α) ≠ 0 for all α, one-sided at kinks (the tangent is defined)",
            "r = 0",
            "G ≤ π/2",
        ),
        sp.Lt(sp.Symbol("G"), sp.pi / 2),
        (
            Step(
                f"with r = 0 (y := z(1)) the integral identity gives L′(α) = −(1/n)∫_α^1⟨z′(α), z′(s)⟩ds: "
                f"L′ of (1/2n)‖z(α) − z(1)‖² minus that integral is 0 (m = {m}, degree {degree} generic polynomials)",
                "zero",
                (Lp + P_int / n).xreplace(end),
            ),
            Step("in polar form z′ = ρ(cos φ, sin φ) on R²: ‖z′‖² = ρ²", "zero", _dot(u, u) - r1**2),
            Step(
                "⟨z′(α), z′(s)⟩ = ‖z′(α)‖‖z′(s)‖cos∠ with ∠ = φ(α) − φ(s) the angle between the tangents "
                "(polar form on the plane the two tangents span)",
                "zero",
                _dot(u, v) - r1 * r2 * sp.cos(p1 - p2),
            ),
            Step(
                "on the unit sphere the angle is the great-circle distance d: in spherical form on R³, "
                "⟨u, v⟩ = ρ₁ρ₂ cos d with cos d = cos θ₁ cos θ₂ + sin θ₁ sin θ₂ cos(φ₁ − φ₂)",
                "zero",
                _dot(u3, v3) - r1 * r2 * cos_d,
            ),
            Step(
                "the angle between T(α) and T(s) is the great-circle distance between two points of the "
                "unit sphere, which is at most the length of any path between them on the sphere, here "
                "the tangent indicatrix (with great-circle arcs at jumps), of length ≤ G ≤ π/2; so ⟨z′(α), z′(s)⟩ = "
                "‖z′(α)‖‖z′(s)‖cos∠ ≥ 0 and the integrand is non-negative",
                "argument",
            ),
            Step("a sum of non-increasing functions is non-increasing (per-example form)", "argument"),
        ),
    )


def acute_tangents(m: int = 2, degree: int = 4) -> Derivation:
    """(b) Pairwise-acute tangents and tangents obtuse to r imply L′ ≤ 0.

    Checked step: n·L′(α) + ∫_α^1 P ds − Q = 0 with P = ⟨z′(α), z′(s)⟩ and Q = ⟨z′(α), r⟩, where
    L′ is sympy's derivative of (1/2n)‖z(α) − y‖² and the integral sympy's, on a generic polynomial
    path with generic targets. The sign bookkeeping that follows (P ≥ 0 on [α, 1] and α ≤ 1 give
    ∫_α^1 P ≥ 0; Q ≤ 0; so n·L′ = −∫P + Q ≤ 0) is an argument, backed numerically in ``proofs/``.
    """
    Lp, P_int, Q, _ = _slope_terms(m, degree)
    return Derivation(
        "acute_tangents",
        "(b) Acute tangent cone, tangents obtuse to the final residual",
        "If ⟨z′(α), z′(s)⟩ ≥ 0 for all α, s ∈ [0, 1] and ⟨z′(α), r⟩ ≤ 0 for all α ∈ [0, 1], then L is "
        "non-increasing on [0, 1]. (With r = 0 the second assumption is void, and G ≤ π/2 implies the "
        "first.) Per example: if every example satisfies this for its own output path and residual, L "
        "is non-increasing.",
        ("z ∈ C¹ on [0, 1]", "⟨z′(α), z′(s)⟩ ≥ 0 for all α, s", "⟨z′(α), r⟩ ≤ 0 for all α"),
        sp.Le(sp.Symbol("L'(alpha)"), 0),
        (
            Step(
                "n·L′(α) = −∫_α^1 P ds + Q with P = ⟨z′(α), z′(s)⟩, Q = ⟨z′(α), r⟩ (integral identity): "
                f"n·L′ + ∫_α^1 P ds − Q = 0 (m = {m}, degree {degree} generic polynomials, generic y)",
                "zero",
                n * Lp + P_int - Q,
            ),
            Step(
                "signs: P ≥ 0 on [α, 1] and the interval [α, 1] has non-negative length, so ∫_α^1 P ds ≥ 0; "
                "Q ≤ 0; hence n·L′(α) = −(non-negative) + (non-positive) ≤ 0",
                "argument",
            ),
        ),
    )


def stationary_curvature(m: int = 2, degree: int = 4) -> Derivation:
    """(c) Non-zero residual, stationary end: a curvature bound."""
    zs, za, y, r, dza, dzs = _generic_path(m, degree)
    d2zs = [sp.diff(zi, s, 2) for zi in zs]
    dz1 = [sp.diff(zi, s).subs(s, 1) for zi in zs]
    lhs = _dot(dza, [zi - yi for zi, yi in zip(za, y)]) / n
    rhs = (_dot(dz1, r) - sp.integrate(_dot(dza, dzs) + _dot(d2zs, r), (s, alpha, 1))) / n
    return Derivation(
        "stationary_curvature",
        "(c) Non-zero residual with a stationary endpoint: a curvature bound",
        "n·L′(α) = ⟨z′(1), r⟩ − ∫_α^1 (⟨z′(α), z′(s)⟩ + ⟨z″(s), r⟩) ds. Hence L is non-increasing on "
        "[0, 1] if (pairwise form) ⟨z′(1), r⟩ ≤ 0 and ⟨z′(α), z′(s)⟩ + ⟨z″(s), r⟩ ≥ 0 for all "
        "0 ≤ α ≤ s ≤ 1; and in particular (curvature form) if ⟨z′(1), r⟩ ≤ 0, the Gauss length "
        "G < π/2 and ‖r‖·max_s‖z″(s)‖ ≤ cos(G)·min_α‖z′(α)‖². ⟨z′(1), r⟩ = n·L′(1) = ⟨∇L(θT), Δθ⟩ "
        "vanishes when θT is a stationary point of the training loss.",
        (
            "z ∈ C² on [0, 1]",
            "⟨z′(1), r⟩ ≤ 0 (equality when ∇L(θT) = 0)",
            "pairwise form: ⟨z′(α), z′(s)⟩ + ⟨z″(s), r⟩ ≥ 0 for α ≤ s",
            "curvature form: z′ ≠ 0, G < π/2, ‖r‖·max‖z″‖ ≤ cos(G)·min‖z′‖²",
        ),
        sp.Le(sp.Symbol("|r|") * sp.Symbol("max|z''|"), sp.cos(sp.Symbol("G")) * sp.Symbol("min|z'|") ** 2),
        (
            Step(f"⟨z′(α), r⟩ = ⟨z′(1), r⟩ − ∫_α^1⟨z″(s), r⟩ds combined with the integral identity (m = {m}, degree {degree})", "zero", lhs - rhs),
            Step("pairwise form: each term of the integrand is ≥ 0 and ⟨z′(1), r⟩ ≤ 0, so n·L′ ≤ 0", "argument"),
            Step(
                "curvature form: ⟨z′(α), z′(s)⟩ ≥ ‖z′(α)‖‖z′(s)‖cos G ≥ cos(G)·min‖z′‖² (angle ≤ turning ≤ G < π/2, "
                "result (a)) and ⟨z″(s), r⟩ ≥ −‖z″(s)‖‖r‖ (Cauchy–Schwarz), so the pairwise form holds",
                "argument",
            ),
        ),
    )


def linear_model(m: int = 3) -> Derivation:
    """(d) z affine in α: L convex quadratic, monotone on [0,1] iff L′(1) ≤ 0.

    Checked steps: for z(α) = a + αb, L″ = ‖b‖²/n and L′(α) = L′(1) − (1 − α)‖b‖²/n; for z = Φθ
    along θ(α) = θ0 + αΔθ, L′(1) (sympy's derivative of the path loss) equals ⟨∇ℓ(θT), Δθ⟩
    (sympy's gradient of ℓ(θ) = (1/2n)‖Φθ − y‖²), and L′(1) vanishes identically when θT is the
    least-squares solution adj(ΦᵀΦ)Φᵀy / det(ΦᵀΦ) (a rational-function identity in Φ, y, θ0).
    """
    a = sp.symbols(f"a0:{m}")
    b = sp.symbols(f"b0:{m}")
    y = sp.symbols(f"y0:{m}")
    z = [ai + alpha * bi for ai, bi in zip(a, b)]
    L = _dot([zi - yi for zi, yi in zip(z, y)], [zi - yi for zi, yi in zip(z, y)]) / (2 * n)
    Lp = sp.diff(L, alpha)
    # z = Φθ along θ(α) = θ0 + α(θT − θ0): L′(1) by differentiating the path loss, ∇ℓ(θT) by
    # differentiating ℓ(θ) = (1/2n)‖Φθ − y‖² in θ; neither uses the other's formula
    phi = sp.Matrix(m, 2, sp.symbols(f"p0:{2 * m}"))
    t0, tT, th = sp.Matrix(sp.symbols("u0:2")), sp.Matrix(sp.symbols("w0:2")), sp.Matrix(sp.symbols("t0:2"))
    ym = sp.Matrix(y)

    def ell(theta: sp.Matrix) -> sp.Expr:
        e = phi * theta - ym
        return (e.T * e)[0] / (2 * n)

    Lp1 = sp.diff(ell(t0 + alpha * (tT - t0)), alpha).subs(alpha, 1)
    grad_T = sp.Matrix([sp.diff(ell(th), ti) for ti in th]).xreplace(dict(zip(th, tT)))
    # a least-squares minimiser: θT = adj(ΦᵀΦ)Φᵀy / det(ΦᵀΦ) solves the normal equations ΦᵀΦθ = Φᵀy
    # (Cramer's rule; det ΦᵀΦ ≠ 0 for generic Φ)
    gram = phi.T * phi
    t_ls = gram.adjugate() * (phi.T * ym) / gram.det()
    Lp1_ls = Lp1.xreplace(dict(zip(tT, t_ls)))
    return Derivation(
        "linear_model",
        "(d) Models linear in θ",
        "If z(α) = a + α·b (true for any model linear in its parameters), then L″ = ‖b‖²/n ≥ 0, so "
        "L′(α) = L′(1) − (1 − α)‖b‖²/n ≤ L′(1): L is non-increasing on [0, 1] iff L′(1) ≤ 0. "
        "L′(1) = ⟨∇L(θT), θT − θ0⟩, which is 0 for any least-squares minimiser θT: such a model is "
        "monotone from any θ0.",
        ("z(α) = f(X; θ0 + αΔθ) is affine in α", "L(α) = (1/2n)‖z(α) − y‖²"),
        sp.Eq(sp.Symbol("L'(alpha)"), sp.Symbol("L'(1)") - (1 - alpha) * sp.Symbol("|b|^2") / n),
        (
            Step(
                "L″ = ‖b‖²/n (the derivative left unevaluated: the check differentiates)",
                "zero",
                sp.Derivative(L, (alpha, 2)) - _dot(b, b) / n,
            ),
            Step("L′(α) = L′(1) − (1 − α)‖b‖²/n", "zero", Lp - (Lp.subs(alpha, 1) - (1 - alpha) * _dot(b, b) / n)),
            Step(
                "L′(1) = ⟨∇ℓ(θT), Δθ⟩ for z = Φθ (ℓ(θ) = (1/2n)‖Φθ − y‖², both sides differentiated by sympy)",
                "zero",
                Lp1 - (grad_T.T * (tT - t0))[0],
            ),
            Step(
                f"L′(1) = 0 when θT solves the normal equations ΦᵀΦθT = Φᵀy (generic {m}×2 Φ, any θ0)",
                "zero",
                Lp1_ls,
            ),
        ),
    )


def deep_linear_degree(depth: int = 3, width: int = 2) -> Derivation:
    """(e) Deep linear network: z(α) has degree ≤ depth, L(α) degree ≤ 2·depth."""
    gens = [alpha]

    def pmat(rows: int, cols: int, prefix: str) -> list[list[sp.Poly]]:
        syms = sp.symbols(f"{prefix}0:{rows * cols}")
        return [[sp.Poly(syms[i * cols + j], *gens) for j in range(cols)] for i in range(rows)]

    z = [sp.Poly(xi, *gens) for xi in sp.symbols(f"x0:{width}")]
    for layer in range(depth):
        w0, dw = pmat(width, width, f"w{layer}_"), pmat(width, width, f"d{layer}_")
        a = sp.Poly(alpha, *gens)
        z = [sum((w0[i][j] + a * dw[i][j]) * z[j] for j in range(width)) for i in range(width)]
    res = [zi - sp.Poly(yi, *gens) for zi, yi in zip(z, sp.symbols(f"y0:{width}"))]
    loss2n = sum(ri * ri for ri in res)  # 2n·L(α), as a polynomial in α with symbolic coefficients
    return Derivation(
        "deep_linear_degree",
        "(e) Deep linear networks: the loss along the path is a polynomial",
        "For f(x) = W_L⋯W_1x with W_i(α) = W_i⁰ + αΔ_i, z(α) is a polynomial of degree ≤ L in α and "
        "L(α) one of degree ≤ 2L, so L′ is a polynomial of degree ≤ 2L − 1 and MLI on [0, 1] is "
        "decidable exactly: isolate the real roots of L′ in [0, 1] and read its sign between them "
        "(implemented in mli_theory.exact with exact integer arithmetic).",
        ("f(x) = W_L⋯W_1x (biases allowed: append a constant 1 to x)", "L(α) = (1/2n)‖z(α) − y‖²"),
        sp.Le(sp.Symbol("deg L(alpha)"), 2 * sp.Symbol("L")),
        tuple(
            [Step(f"each output of a depth-{depth}, width-{width} network has degree ≤ {depth} in α", "degree_le", zi, depth) for zi in z]
            + [Step(f"the loss has degree ≤ {2 * depth} in α", "degree_le", loss2n, 2 * depth)]
            + [Step("induction on depth: (W + αΔ)·p(α) raises the degree by at most one", "argument")]
        ),
    )


def two_phase(m: int = 2, degree: int = 3) -> Derivation:
    """(f) Two phases: a convex final phase and a first phase pulled by the rest of the path.

    Statement (our own; proof sketch of issue 16, made precise). Let z ∈ C² on [0, 1], r = z(1) − y,
    G(α) the total turning of the unit tangent on [α, 1] (at most π is used: cos G(α) with G(α)
    capped at π; where z′(α) = 0 the bound below is 0 = 0; on a plateau start, z′(0) = 0, the
    tangent is defined on (0, 1] only and G(0) is its turning there, the limit of G(α) as α ↓ 0)
    and arc(α, 1) = ∫_α^1‖z′(s)‖ds. If for some c ∈ [0, 1]

    (i)   ⟨z′(1), r⟩ ≤ 0                                   (n·L′(1) ≤ 0, necessary for MLI),
    (ii)  L″ ≥ 0 on [c, 1],
    (iii) ⟨z′(α), r⟩ ≤ cos G(α)·‖z′(α)‖·arc(α, 1) for every α ∈ [0, c)  (void when c = 0),

    then L is non-increasing on [0, 1]. Simple sufficient form of (iii): G = G(0) ≤ π/2 and
    ‖r‖ ≤ cos(G)·arc(c, 1); and since the chord is shorter than the arc, ‖r‖ ≤ cos(G)·‖z(1) − z(c)‖
    suffices (what the exact evaluator proves on polynomial paths).

    Proof. On [c, 1]: L′(α) = L′(1) − ∫_α^1 L″ ≤ L′(1) ≤ 0 by (ii) and (i). On [0, c): the integral
    identity gives n·L′(α) = ⟨z′(α), r⟩ − ∫_α^1⟨z′(α), z′(s)⟩ds; the angle between z′(α) and z′(s)
    (s ≥ α) is at most the length of the tangent indicatrix between them, ≤ G(α), so
    ⟨z′(α), z′(s)⟩ ≥ cos G(α)·‖z′(α)‖‖z′(s)‖ (cos decreasing on [0, π]); integrating over s,
    n·L′(α) ≤ ⟨z′(α), r⟩ − cos G(α)·‖z′(α)‖·arc(α, 1) ≤ 0 by (iii). Simple form: by
    Cauchy–Schwarz ⟨z′(α), r⟩ ≤ ‖z′(α)‖‖r‖, and for α < c, G(α) ≤ G and arc(α, 1) ≥ arc(c, 1),
    so with cos G ≥ 0, ‖z′(α)‖‖r‖ ≤ ‖z′(α)‖cos G·arc(c, 1) ≤ ‖z′(α)‖cos G(α)·arc(α, 1).

    It contains (d) (c = 0, L convex) and needs no lower bound on ‖z′‖, unlike the curvature form
    of (c): a plateau z′ ≈ 0 at the start costs nothing. Hypothesis z ∈ C² is needed for (ii)
    (L′ non-decreasing): at a ReLU kink L′ may jump down, which the jets' L″ does not see.
    """
    zs, za, y, r, dza, dzs = _generic_path(m, degree)
    res_a = [zi - yi for zi, yi in zip(za, y)]
    L = _dot(res_a, res_a) / (2 * n)
    Lp = sp.diff(L, alpha)
    Lpp_s = sp.diff(L, alpha, 2).subs(alpha, s)
    P_int = sp.integrate(sp.expand(_dot(dza, dzs)), (s, alpha, 1))
    Q = _dot(dza, r)
    # the cosine bound integrated: ∫_α^1 κ·σ(s) ds = κ·∫_α^1 σ(s) ds for a constant κ = cos G(α)·‖z′(α)‖
    kappa = sp.Symbol("kappa", real=True)
    sig = sum(sp.Symbol(f"g{j}") * s**j for j in range(degree + 1))
    r1, r2 = sp.symbols("rho1 rho2", positive=True)
    p1, p2 = sp.symbols("phi1 phi2", real=True)
    u, v = _polar(r1, p1), _polar(r2, p2)
    a3, b3 = sp.symbols("a0:3", real=True), sp.symbols("b0:3", real=True)
    lagrange = sum((a3[i] * b3[j] - a3[j] * b3[i]) ** 2 for i in range(3) for j in range(i + 1, 3))
    return Derivation(
        "two_phase",
        "(f) Two phases: convex end, first phase pulled by the rest of the path",
        "If z ∈ C² and, for some c ∈ [0, 1], (i) ⟨z′(1), r⟩ ≤ 0, (ii) L″ ≥ 0 on [c, 1] and (iii) "
        "⟨z′(α), r⟩ ≤ cos G(α)·‖z′(α)‖·arc(α, 1) for every α < c (G(α): turning of the tangent on "
        "[α, 1], capped at π; arc(α, 1) = ∫_α^1‖z′‖), then L is non-increasing on [0, 1]. Simple "
        "form of (iii): G(0) ≤ π/2 and ‖r‖ ≤ cos G(0)·arc(c, 1), implied by ‖r‖ ≤ cos G(0)·‖z(1) − z(c)‖. "
        "With c = 0 it is 'L convex and L′(1) ≤ 0', which contains (d).",
        (
            "z ∈ C² on [0, 1] (for (ii); (iii) needs only piecewise C¹)",
            "(i) ⟨z′(1), r⟩ ≤ 0",
            "(ii) L″ ≥ 0 on [c, 1]",
            "(iii) ⟨z′(α), r⟩ ≤ cos G(α)·‖z′(α)‖·arc(α, 1) for all α < c",
        ),
        sp.Le(sp.Symbol("|r|"), sp.cos(sp.Symbol("G")) * sp.Symbol("arc(c,1)")),
        (
            Step(
                f"phase 2: L′(1) − L′(α) = ∫_α^1 L″(s) ds (sympy's L′, L″ and integral on m = {m}, degree {degree} "
                "generic polynomials), so L″ ≥ 0 on [c, 1] gives L′(α) ≤ L′(1) = ⟨z′(1), r⟩/n ≤ 0 there",
                "zero",
                Lp.subs(alpha, 1) - Lp - sp.Integral(Lpp_s, (s, alpha, 1)),
            ),
            Step(
                "phase 1: n·L′(α) = ⟨z′(α), r⟩ − ∫_α^1⟨z′(α), z′(s)⟩ds (integral identity, generic polynomials, generic y)",
                "zero",
                n * Lp + P_int - Q,
            ),
            Step(
                "⟨z′(α), z′(s)⟩ = ‖z′(α)‖‖z′(s)‖cos∠ (polar form on the plane the two tangents span)",
                "zero",
                _dot(u, v) - r1 * r2 * sp.cos(p1 - p2),
            ),
            Step(
                "∠(z′(α), z′(s)) ≤ turning of the tangent on [α, s] ≤ G(α) (great-circle distance ≤ length of "
                "the indicatrix), and cos is decreasing on [0, π]: ⟨z′(α), z′(s)⟩ ≥ cos G(α)·‖z′(α)‖‖z′(s)‖",
                "argument",
            ),
            Step(
                "integrate the bound over s ∈ [α, 1]: ∫_α^1 κ‖z′(s)‖ds = κ·arc(α, 1) with κ = cos G(α)‖z′(α)‖ "
                "(checked for a generic polynomial speed)",
                "zero",
                sp.Integral(kappa * sig, (s, alpha, 1)) - kappa * sp.integrate(sig, (s, alpha, 1)),
            ),
            Step(
                "so n·L′(α) ≤ ⟨z′(α), r⟩ − cos G(α)‖z′(α)‖·arc(α, 1) ≤ 0 on [0, c) by (iii)",
                "argument",
            ),
            Step(
                "simple form, Cauchy–Schwarz ⟨z′, r⟩ ≤ ‖z′‖‖r‖ from Lagrange's identity "
                "‖a‖²‖b‖² − ⟨a, b⟩² = Σ_{i<j}(a_i b_j − a_j b_i)² ≥ 0 (R³)",
                "zero",
                _dot(a3, a3) * _dot(b3, b3) - _dot(a3, b3) ** 2 - lagrange,
            ),
            Step(
                "for α < c: G(α) ≤ G(0) (a sub-interval turns less), arc(α, 1) ≥ arc(c, 1) ≥ ‖z(1) − z(c)‖ (the "
                "chord is the shortest path); with cos G(0) ≥ 0, ‖r‖ ≤ cos G(0)·arc(c, 1) gives (iii)",
                "argument",
            ),
        ),
    )


def hierarchy() -> Derivation:
    """How the conditions relate, and which thresholds are tight (all checked in ``proofs/hierarchy.py``).

    * per-example (a) ⇒ per-example (b) ⇒ stacked (b); with r = 0, (a) ⇒ (b): the per-example
      variants are subordinate (they imply the stacked form of (b), never conversely);
    * curvature form of (c) ⇒ pairwise form of (c);
    * (d) ⇔ monotone for affine z; (f) with c = 0 contains (d);
    * tightness of (a): G ≤ π/2 suffices, and no rule that sees only G can allow more: a unit-speed
      curve that turns by π/2 + ε on an arc and then runs straight, with y = z(1), has L′(0) > 0
      once the straight part is long enough (L′(0) = −⟨T(0), ∫T⟩ and ⟨T(0), T_end⟩ = −sin ε);
    * (a), (b), (c) are not necessary: a spiral z(α) − y = (1 − α)(cos ωα, sin ωα) has
      L = (1 − α)²/2, monotone, whatever its turning (G ≈ 7.7 for ω = 2π): (a) and (b) fail (and
      (c), which with r = 0 is (b)'s pairwise form); (f) holds on it (L convex: c = 0). Whether (f)
      is necessary we do not know (not claimed).
    """
    eps, ell = sp.symbols("epsilon ell", positive=True)
    phi = sp.pi / 2 + eps
    # unit-speed: arc of angle φ with radius 1 (length φ), then a straight segment of length ℓ in
    # the final direction (−sin ε, cos ε)... expressed from T(0) = (1, 0): T(t) = (cos t, sin t)
    t = sp.Symbol("t", real=True)
    # left unevaluated: the check integrates
    chord_arc = [sp.Integral(sp.cos(t), (t, 0, phi)), sp.Integral(sp.sin(t), (t, 0, phi))]
    T_end = [sp.cos(phi), sp.sin(phi)]
    # L(0) = ½‖z(0) − z(1)‖² with z(1) − z(0) = ∫T; in arc length σ, dL/dσ at 0 = −⟨T(0), z(1) − z(0)⟩
    slope0 = -(chord_arc[0] + ell * T_end[0])
    w = sp.Symbol("omega", positive=True)
    spiral = [(1 - alpha) * sp.cos(w * alpha), (1 - alpha) * sp.sin(w * alpha)]
    return Derivation(
        "hierarchy",
        "Hierarchy and tightness of the MSE conditions",
        "Implications: per-example (a) ⇒ per-example (b) ⇒ stacked (b); with r = 0, (a) ⇒ (b); the "
        "curvature form of (c) ⇒ the pairwise form; (f) with c = 0 contains (d); (d) is also necessary "
        "for affine z. Tightness: (a) holds at G ≤ π/2, and π/2 cannot be raised by any rule that sees "
        "only G (turn by π/2 + ε, then go straight: L′(0) = ℓ·sin ε − cos ε > 0 for ℓ > cot ε). (a), (b) "
        "and (c) are not necessary: the spiral (1 − α)(cos ωα, sin ωα) into y is monotone (L = "
        "(1 − α)²/2) with G ≈ 7.7 at ω = 2π, where they fail and (f) holds (c = 0); necessity of (f) is "
        "not claimed. Per-example variants are subordinate to stacked (b), which "
        "is the form that holds in practice.",
        (
            "L(α) = (1/2n)‖z(α) − y‖²",
            "the counterexamples are curves in R² (one example, two outputs)",
        ),
        sp.Eq(sp.Symbol("L'(0)"), ell * sp.sin(eps) - sp.cos(eps)),
        (
            Step(
                "tightness of π/2: for the curve turning by π/2 + ε on a unit arc and then running straight for ℓ, "
                "with y = z(1), the slope of L at the start (per unit arc length) is ℓ·sin ε − cos ε",
                "zero",
                slope0 - (ell * sp.sin(eps) - sp.cos(eps)),
            ),
            Step("so L′(0) > 0 for ℓ > cot ε (e.g. ε = 0.05, ℓ = 25): L rises, though G = π/2 + ε", "argument"),
            Step(
                "spiral into y: L(α) = ½‖z(α) − y‖² = ½(1 − α)², non-increasing for every ω",
                "zero",
                _dot(spiral, spiral) / 2 - (1 - alpha) ** 2 / 2,
            ),
            Step(
                "the spiral's tangents are not pairwise acute for ω = 2π, so (b) (and (c) with r = 0) fails, and its "
                "turning G ≈ 7.7 > π/2 (computed in proofs/hierarchy.py), so (a) fails; L″ = 1 ≥ 0, so (f) holds with c = 0",
                "argument",
            ),
            Step("per-example (a) ⇒ per-example (b) (result (a)'s proof), and a sum of per-example slopes ≤ 0 is ≤ 0", "argument"),
        ),
    )


_RESULTS = {
    "mse_path_derivatives": mse_path_derivatives,
    "integral_identity": integral_identity,
    "zero_residual_gauss": zero_residual_gauss,
    "acute_tangents": acute_tangents,
    "stationary_curvature": stationary_curvature,
    "linear_model": linear_model,
    "deep_linear_degree": deep_linear_degree,
    "two_phase": two_phase,
    "hierarchy": hierarchy,
}


def result_names() -> list[str]:
    """Names accepted by :func:`derivation` and ``mli-theory derive``."""
    return list(_RESULTS)


def derivation(name: str) -> Derivation:
    """The derivation called ``name``."""
    from ..errors import InputError

    if name not in _RESULTS:
        raise InputError(f"unknown result {name!r} (known: {', '.join(_RESULTS)})")
    return _RESULTS[name]()


def render_result(name: str, *, latex: bool = False, brief: bool = False, as_dict: bool = False):
    """Text (or LaTeX, or a dict for JSON) of one result: statement, assumptions, derivation."""
    d = derivation(name)
    if as_dict:
        return {
            "name": d.name,
            "title": d.title,
            "statement": d.statement,
            "assumptions": list(d.assumptions),
            "result_latex": sp.latex(d.result),
            "steps": [{"claim": st.claim, "kind": st.kind, "checked": check_step(st) if st.kind != "argument" else None} for st in d.steps],
        }
    if brief:
        return f"{d.name:<24} {d.title}"
    if latex:
        lines = [f"\\paragraph{{{d.title}}}", d.statement, "", "\\textbf{Assumptions.}", "\\begin{itemize}"]
        lines += [f"  \\item {a}" for a in d.assumptions] + ["\\end{itemize}", f"\\[ {sp.latex(d.result)} \\]", "\\begin{enumerate}"]
        for st in d.steps:
            body = f" \\quad $ {sp.latex(st.expr)} {'= 0' if st.kind == 'zero' else ''}$" if st.expr is not None and st.kind == "zero" and len(sp.latex(st.expr)) < 400 else ""
            lines.append(f"  \\item {st.claim}{body}")
        return "\n".join(lines + ["\\end{enumerate}"])
    lines = [d.title, "=" * len(d.title), d.statement, "", "Assumptions:"] + [f"  - {a}" for a in d.assumptions]
    lines += ["", "Derivation:"]
    for i, st in enumerate(d.steps, 1):
        tag = {"zero": "sympy: simplifies to 0", "degree_le": f"sympy: degree ≤ {st.bound}", "argument": "argument (see proofs/)"}[st.kind]
        lines.append(f"  {i}. {st.claim}  [{tag}]")
    return "\n".join(lines)
