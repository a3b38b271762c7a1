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
    """Verify a step with sympy; ``argument`` steps return True here (checked in ``proofs/``)."""
    if step.kind == "zero":
        return sp.simplify(sp.expand(step.expr)) == 0
    if step.kind == "degree_le":
        poly = step.expr if isinstance(step.expr, sp.Poly) else sp.Poly(step.expr, alpha)
        return poly.degree(alpha) <= step.bound
    return True


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
    ftc = [sp.integrate(d, (s, alpha, 1)) - (zi.subs(s, 1) - zi.subs(s, alpha)) for d, zi in zip(dzs, zs)]
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


def zero_residual_gauss() -> Derivation:
    """(a) r = 0 and total turning G < π/2 imply L′ ≤ 0 on [0, 1] (stacked outputs or per example)."""
    return Derivation(
        "zero_residual_gauss",
        "(a) Zero final residual and Gauss length below π/2",
        "If r = z(1) − y = 0, z′(α) ≠ 0 on [0, 1] and the total turning G = ∫₀¹‖dT/dα‖dα of the unit "
        "tangent T = z′/‖z′‖ is < π/2, then L is non-increasing on [0, 1]. Applied per example (each "
        "example's own output path and residual), the sum of non-increasing per-example losses is "
        "non-increasing.",
        ("z ∈ C² on [0, 1]", "z′(α) ≠ 0 for all α (the tangent is defined)", "r = 0", "G < π/2"),
        sp.Lt(sp.Symbol("G"), sp.pi / 2),
        (
            Step("with r = 0 the integral identity gives L′(α) = −(1/n)∫_α^1⟨z′(α), z′(s)⟩ds", "zero",
                 _r_zero_reduction()),
            Step(
                "the angle between T(α) and T(s) is the great-circle distance between two points of the "
                "unit sphere, which is at most the length of any path between them on the sphere, here "
                "the tangent indicatrix, of length ∫_α^s‖T′‖ ≤ G < π/2; so ⟨z′(α), z′(s)⟩ = "
                "‖z′(α)‖‖z′(s)‖cos∠ > 0 and the integrand is positive",
                "argument",
            ),
            Step("a sum of non-increasing functions is non-increasing (per-example form)", "argument"),
        ),
    )


def _r_zero_reduction() -> sp.Expr:
    """With r = 0: the (1/n)⟨z′, r⟩ term of the integral identity vanishes (symbolic check)."""
    v = sp.symbols("v0:3")
    return _dot(v, [0, 0, 0])


def acute_tangents() -> Derivation:
    """(b) Pairwise-acute tangents and tangents obtuse to r imply L′ ≤ 0."""
    a, b, c = sp.symbols("a b c", nonnegative=True)
    # L'(α)·n = −∫ P + Q with P ≥ 0, Q ≤ 0 ⇒ ≤ 0: sign bookkeeping as an identity on symbols
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
            Step("n·L′(α) = −∫_α^1 P ds + Q with P = ⟨z′(α), z′(s)⟩, Q = ⟨z′(α), r⟩ (integral identity)", "argument"),
            Step("−(non-negative) + (non-positive) ≤ 0: written as −a − b = −(a + b) with a, b ≥ 0", "zero", (-a - b) + (a + b)),
            Step("the interval of integration [α, 1] has non-negative length, so ∫_α^1 P ds ≥ 0", "argument"),
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
    """(d) z affine in α: L convex quadratic, monotone on [0,1] iff L′(1) ≤ 0."""
    a = sp.symbols(f"a0:{m}")
    b = sp.symbols(f"b0:{m}")
    y = sp.symbols(f"y0:{m}")
    z = [ai + alpha * bi for ai, bi in zip(a, b)]
    L = _dot([zi - yi for zi, yi in zip(z, y)], [zi - yi for zi, yi in zip(z, y)]) / (2 * n)
    Lp = sp.diff(L, alpha)
    # least squares: z = Φθ, ∇L(θ) = Φᵀ(Φθ − y)/n; at a minimiser ∇L = 0 so L′(1) = ∇L·Δθ = 0
    phi = sp.Matrix(m, 2, sp.symbols(f"p0:{2 * m}"))
    t0, tT = sp.Matrix(sp.symbols("u0:2")), sp.Matrix(sp.symbols("w0:2"))
    ym = sp.Matrix(y)
    grad_T = phi.T * (phi * tT - ym) / n
    Lp1 = ((phi * (tT - t0)).T * (phi * tT - ym))[0] / n
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
            Step("L″ = ‖b‖²/n", "zero", sp.diff(L, alpha, 2) - _dot(b, b) / n),
            Step("L′(α) = L′(1) − (1 − α)‖b‖²/n", "zero", Lp - (Lp.subs(alpha, 1) - (1 - alpha) * _dot(b, b) / n)),
            Step("L′(1) = ⟨∇L(θT), Δθ⟩ for z = Φθ (so L′(1) = 0 at a least-squares minimiser)", "zero", Lp1 - (grad_T.T * (tT - t0))[0]),
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


_RESULTS = {
    "mse_path_derivatives": mse_path_derivatives,
    "integral_identity": integral_identity,
    "zero_residual_gauss": zero_residual_gauss,
    "acute_tangents": acute_tangents,
    "stationary_curvature": stationary_curvature,
    "linear_model": linear_model,
    "deep_linear_degree": deep_linear_degree,
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
