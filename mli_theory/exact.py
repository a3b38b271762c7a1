"""Exact MLI decision for networks whose outputs are polynomial in α (linear, deep linear).

For ``f(x) = A_L ⋯ A_1 x`` (each ``A_i`` a Linear layer, with or without bias) on the path
``A_i(α) = A_i⁰ + α·(A_iᵀ − A_i⁰)``, the stacked outputs ``z(α)`` are a matrix polynomial of degree
at most L in α and the mean squared error

    L(α) = (1/(n·k)) · ‖z(α) − y‖²

is a polynomial of degree at most 2L. Every float in the weights and data is a dyadic rational, so
we compute that polynomial *exactly* (integer matrices via python-flint, one power-of-two scale per
layer), isolate the real roots of L′ on [0, 1] rigorously (arb ball arithmetic; each ball provably
holds one root), read the sign of L′ between roots at rational points, and turn the result into a
verdict:

* ``monotone``: L′ ≤ 0 on [0, 1] (then the largest rise is 0), or a proven upper bound on the
  largest rise sup_{a<b} L(b) − L(a) is ≤ tol;
* ``non_monotone``: float64-representable a < b with L(b) − L(a) > tol, computed exactly;
* ``unknown``: the time budget ran out, or the rise is within rounding of ``tol``.

The certificate is about the network with exactly these (float) weights on exactly this (float)
data, in real arithmetic; it is not about any rounding a float evaluation adds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Sequence

import numpy as np
import torch

from .errors import InputError

try:  # python-flint: fast exact integer matrices and rigorous root isolation
    import flint
except ImportError:  # pragma: no cover - declared as a dependency
    flint = None  # type: ignore[assignment]


class BudgetExceeded(RuntimeError):
    """The exact computation would take longer than its time budget."""


@dataclass(frozen=True)
class _Fixed:
    """Several arrays as integers with one power-of-two scale: value = int · 2**exp."""

    ints: list[list[int]]
    exp: int


def _to_fixed(arrays: Sequence[np.ndarray], max_exp: int | None = None) -> _Fixed:
    """Exact integer form of float arrays with one common binary exponent (≤ ``max_exp``)."""
    mants: list[np.ndarray] = []
    exps: list[np.ndarray] = []
    for a in arrays:
        a = np.asarray(a, dtype=np.float64).ravel()
        m, e = np.frexp(a)
        mants.append((m * 2.0**53).astype(np.int64))
        exps.append(e.astype(np.int64) - 53)
    nz = [e[m != 0] for m, e in zip(mants, exps)]
    lo = min((int(x.min()) for x in nz if x.size), default=0)
    if max_exp is not None:
        lo = min(lo, max_exp)
    ints = [[int(mi) << int(ei - lo) if mi else 0 for mi, ei in zip(m.tolist(), e.tolist())] for m, e in zip(mants, exps)]
    tz = None
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
    return _Fixed(ints, lo)


def _mat(rows: int, cols: int, flat: list[int]) -> "flint.fmpz_mat":
    return flint.fmpz_mat(rows, cols, flat)


@dataclass(frozen=True)
class OutputPolynomial:
    """z(α)ᵀ = 2**exp · Σ_j α^j Z_j exactly, each Z_j a k×n integer matrix (outputs × examples)."""

    coeffs: tuple["flint.fmpz_mat", ...]
    exp: int

    @property
    def degree(self) -> int:
        return len(self.coeffs) - 1


@dataclass(frozen=True)
class LossPolynomial:
    """L(α) = scale · Σ_m ints[m] α^m exactly (scale > 0 rational).

    Attributes:
        ints: integer coefficients, lowest degree first.
        scale: positive rational factor (4**s / (n·k) for mean squared error).
    """

    ints: tuple[int, ...]
    scale: Fraction

    @property
    def coeffs(self) -> tuple[Fraction, ...]:
        """Exact rational coefficients of L, lowest degree first."""
        return tuple(self.scale * c for c in self.ints)

    @property
    def degree(self) -> int:
        return len(self.ints) - 1

    def exact(self, alpha: Fraction | int | float) -> Fraction:
        """L(α) exactly at a rational (or float, taken exactly) α."""
        a = Fraction(alpha)
        acc = Fraction(0)
        for c in reversed(self.ints):
            acc = acc * a + c
        return acc * self.scale

    def __call__(self, alpha: float) -> float:
        """L(α) rounded to a float."""
        return float(self.exact(alpha))


def linear_layers(line) -> list[tuple[str, bool]] | None:
    """``(prefix, has_bias)`` of each Linear layer if the line's model is a Sequential of Linears."""
    from .arch import polynomial_layers

    layers = polynomial_layers(line.shell)
    if layers is None:
        return None
    names = {id(m): n for n, m in line.shell.named_modules()}
    return [(names[id(m)], m.bias is not None) for m in layers]


def _check_budget(deadline: float | None) -> None:
    if deadline is not None and time.perf_counter() > deadline:
        raise BudgetExceeded("the exact computation ran past its time budget (--certify-budget)")


def output_polynomial(
    start: dict[str, torch.Tensor],
    end: dict[str, torch.Tensor],
    layers: Sequence[tuple[str, bool]],
    x: torch.Tensor,
    deadline: float | None = None,
) -> OutputPolynomial:
    """Exact coefficients of the outputs along the path for a Sequential of Linear layers.

    Args:
        start, end: θ0 and θT state dicts (keys ``{prefix}.weight`` and ``{prefix}.bias``).
        layers: ``(prefix, has_bias)`` per layer, in order.
        x: inputs, shape (n, d0).
        deadline: ``time.perf_counter()`` value after which :class:`BudgetExceeded` is raised.
    """
    if flint is None:  # pragma: no cover
        raise RuntimeError("the exact method needs python-flint (pip install python-flint)")
    if x.dim() != 2:
        raise InputError(f"the exact method needs 2-D inputs, got shape {tuple(x.shape)}")
    aug = any(b for _, b in layers)  # carry a row of ones so that biases become matrix columns
    xt = x.detach().cpu().double().numpy().T  # d0 × n
    n = xt.shape[1]
    fx = _to_fixed([xt], max_exp=0)
    rows = xt.shape[0]
    flat = fx.ints[0]
    if aug:
        flat = flat + [1 << (-fx.exp)] * n
        rows += 1
    coeffs = [_mat(rows, n, flat)]
    exp = fx.exp
    for prefix, has_bias in layers:
        _check_budget(deadline)
        w0 = start[f"{prefix}.weight"].detach().cpu().double().numpy()
        w1 = end[f"{prefix}.weight"].detach().cpu().double().numpy()
        out_d, in_d = w0.shape
        arrays = [w0, w1]
        if has_bias:
            arrays += [start[f"{prefix}.bias"].detach().cpu().double().numpy(), end[f"{prefix}.bias"].detach().cpu().double().numpy()]
        f = _to_fixed(arrays, max_exp=0 if aug else None)
        m0, m1 = f.ints[0], f.ints[1]
        if aug:
            one = 1 << (-f.exp)
            b0 = f.ints[2] if has_bias else [0] * out_d
            b1 = f.ints[3] if has_bias else [0] * out_d
            m0 = [v for r in range(out_d) for v in m0[r * in_d : (r + 1) * in_d] + [b0[r]]] + [0] * in_d + [one]
            m1 = [v for r in range(out_d) for v in m1[r * in_d : (r + 1) * in_d] + [b1[r]]] + [0] * in_d + [one]
            shape = (out_d + 1, in_d + 1)
        else:
            shape = (out_d, in_d)
        a0 = _mat(*shape, m0)
        d = _mat(*shape, [v1 - v0 for v0, v1 in zip(m0, m1)])
        new = [a0 * coeffs[0]]
        for j in range(1, len(coeffs)):
            _check_budget(deadline)
            new.append(a0 * coeffs[j] + d * coeffs[j - 1])
        new.append(d * coeffs[-1])
        coeffs = new
        exp += f.exp
    if aug:  # drop the row of ones
        k = coeffs[0].nrows() - 1
        coeffs = [_mat(k, n, [int(v) for v in c.entries()[: k * n]]) for c in coeffs]
    while len(coeffs) > 1 and coeffs[-1].is_zero():
        coeffs.pop()
    return OutputPolynomial(tuple(coeffs), exp)


def _inner(a: "flint.fmpz_mat", b: "flint.fmpz_mat") -> int:
    """⟨A, B⟩ = trace(A·Bᵀ) for integer matrices."""
    p = a * b.transpose()
    return int(sum(int(p[i, i]) for i in range(p.nrows())))


def mse_loss_polynomial(z: OutputPolynomial, y: torch.Tensor, deadline: float | None = None) -> LossPolynomial:
    """L(α) = (1/(n·k))·‖z(α) − y‖² exactly, for targets y of shape (n, k)."""
    yt = y.detach().cpu().double().numpy().T  # k × n
    k, n = yt.shape
    if z.coeffs[0].nrows() != k or z.coeffs[0].ncols() != n:
        raise InputError(f"targets of shape {(n, k)} do not match outputs of shape {(z.coeffs[0].ncols(), z.coeffs[0].nrows())}")
    fy = _to_fixed([yt])
    s = min(z.exp, fy.exp)
    r = [c * (1 << (z.exp - s)) for c in z.coeffs]
    r[0] = r[0] - _mat(k, n, [v << (fy.exp - s) for v in fy.ints[0]])
    deg = len(r) - 1
    gram: dict[tuple[int, int], int] = {}
    for i in range(deg + 1):
        for j in range(i, deg + 1):
            _check_budget(deadline)
            gram[i, j] = _inner(r[i], r[j])
    ints = [0] * (2 * deg + 1)
    for (i, j), g in gram.items():
        ints[i + j] += g if i == j else 2 * g
    while len(ints) > 1 and ints[-1] == 0:
        ints.pop()
    scale = (Fraction(4) ** s) / (n * k)
    return LossPolynomial(tuple(ints), scale)


# ----------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class ExactVerdict:
    """Outcome of the exact decision.

    Attributes:
        status: ``monotone``, ``non_monotone`` or ``unknown``.
        rise: for ``non_monotone`` the exact L(b) − L(a) of the witness (rounded down to a float);
            for ``monotone`` a proven upper bound on sup_{a<b} L(b) − L(a) (0.0 when L′ ≤ 0).
        where: witness (a, b), floats, a < b, for ``non_monotone``.
        rise_lower, rise_upper: proven bounds on the largest rise sup_{a<b} L(b) − L(a).
        increasing: rational enclosures of the open intervals of (0, 1) where L′ > 0.
        critical_points: approximate interior roots of L′ (floats).
        reason: a sentence on the outcome.
    """

    status: Literal["monotone", "non_monotone", "unknown"]
    rise: float | None
    where: tuple[float, float] | None
    rise_lower: float | None
    rise_upper: float | None
    increasing: tuple[tuple[float, float], ...]
    critical_points: tuple[float, ...]
    reason: str


def _arb_to_fraction(x) -> Fraction:
    man, exp = x.man_exp()
    man, exp = int(man), int(exp)
    return Fraction(man * 2**exp) if exp >= 0 else Fraction(man, 2 ** (-exp))


def _interior_roots(p: "flint.fmpz_poly", prec: int) -> list[tuple[Fraction, Fraction]] | None:
    """Disjoint rational enclosures [lo, hi] ⊂ (0, 1) of the distinct roots of p in (0, 1).

    Returns None when some enclosure still straddles 0 or 1 at this precision.
    """
    old = flint.ctx.prec
    flint.ctx.prec = prec
    try:
        # arb's complex root isolation returns real roots first, with an exactly-zero imaginary
        # part; each ball provably contains exactly one root
        roots = [r.real for r, _mult in p.complex_roots() if r.imag.is_exact() and r.imag.is_zero()]
    finally:
        flint.ctx.prec = old
    p0, p1 = int(p(0)), int(p(1))
    out: list[tuple[Fraction, Fraction]] = []
    for ball in roots:
        mid = _arb_to_fraction(ball.mid())
        rad = _arb_to_fraction(ball.rad())
        lo, hi = mid - rad, mid + rad
        if hi < 0 or lo > 1:
            continue
        if lo <= 0 <= hi:
            if p0 == 0 and hi < 1:
                continue  # the isolated root is exactly 0
            return None
        if lo <= 1 <= hi:
            if p1 == 0 and lo > 0:
                continue  # the isolated root is exactly 1
            return None
        out.append((lo, hi))
    out.sort()
    return out


def _poly_eval(ints: Sequence[int], a: Fraction) -> Fraction:
    acc = Fraction(0)
    for c in reversed(ints):
        acc = acc * a + c
    return acc


def _float_down(q: Fraction) -> float:
    f = float(q)
    return f if Fraction(f) <= q else float(np.nextafter(f, -np.inf))


def _float_up(q: Fraction) -> float:
    f = float(q)
    return f if Fraction(f) >= q else float(np.nextafter(f, np.inf))


def _dyadic_in(lo: Fraction, hi: Fraction, mid: Fraction) -> Fraction:
    """A float64-representable point of [0, 1] as close to ``mid`` as 2**-53 allows, inside [lo, hi] if possible."""
    q = Fraction(round(mid * 2**53), 2**53)
    if q < lo or q > hi:
        q = Fraction(float(mid))
    return min(max(q, Fraction(0)), Fraction(1))


def decide(poly: LossPolynomial, tol: float = 0.0, deadline: float | None = None) -> ExactVerdict:
    """Decide monotonicity of the exact loss polynomial on [0, 1] with tolerance ``tol``.

    The largest rise sup_{a<b} L(b) − L(a) is attained at a, b among {0, 1} and the roots of L′ in
    (0, 1), because L is monotone between consecutive such points. The roots are isolated in
    rational enclosures; L at a float point q near a root c differs from L(c) by at most
    |L′(q)|·δ + ½·max|L″|·δ² with δ ≥ |q − c|, which bounds the rise from above and below.
    """
    if flint is None:  # pragma: no cover
        raise RuntimeError("the exact method needs python-flint")
    tolq = Fraction(tol)
    a = list(poly.ints)
    dp = [m * a[m] for m in range(1, len(a))] or [0]
    if all(c == 0 for c in dp):
        return ExactVerdict("monotone", 0.0, None, 0.0, 0.0, (), (), "L is constant along the path")
    p = flint.fmpz_poly(dp)
    sqf = p // p.gcd(p.derivative()) if p.degree() > 0 else p
    b2 = sum(abs(m * (m - 1) * a[m]) for m in range(2, len(a)))  # ≥ max |A''| on [0, 1]
    for prec in (64, 128, 256, 512, 1024, 2048, 4096):
        _check_budget(deadline)
        encl = _interior_roots(sqf, prec) if sqf.degree() > 0 else []
        if encl is None:
            continue
        # sign of L' on each segment between isolated roots, at a rational point of the gap
        cuts = [Fraction(0)] + [x for lo_hi in encl for x in lo_hi] + [Fraction(1)]
        gaps = [(cuts[2 * i], cuts[2 * i + 1]) for i in range(len(encl) + 1)]
        signs = []
        for g0, g1 in gaps:
            s = _poly_eval(dp, (g0 + g1) / 2)
            signs.append(1 if s > 0 else (-1 if s < 0 else 0))
        crit = tuple(float((lo + hi) / 2) for lo, hi in encl)
        increasing = tuple((float(g0), float(g1)) for (g0, g1), s in zip(gaps, signs) if s > 0)
        if all(s <= 0 for s in signs):
            return ExactVerdict("monotone", 0.0, None, 0.0, 0.0, (), crit, "L′ ≤ 0 on all of [0, 1] (exact)")
        # candidate points with exact values and error bounds (in units of the integer polynomial)
        pts: list[tuple[Fraction, Fraction, Fraction]] = [(Fraction(0), _poly_eval(a, Fraction(0)), Fraction(0))]
        for lo, hi in encl:
            mid = (lo + hi) / 2
            q = _dyadic_in(lo, hi, mid)
            delta = max(abs(q - lo), abs(q - hi))
            err = abs(_poly_eval(dp, q)) * delta + Fraction(b2, 2) * delta * delta
            pts.append((q, _poly_eval(a, q), err))
        pts.append((Fraction(1), _poly_eval(a, Fraction(1)), Fraction(0)))
        best_lo, best_pair, best_hi = Fraction(0), None, Fraction(0)
        for i in range(len(pts)):
            for j in range(i + 1, len(pts)):
                qi, li, ei = pts[i]
                qj, lj, ej = pts[j]
                if qj > qi and lj - li > best_lo:
                    best_lo, best_pair = lj - li, (qi, qj)
                best_hi = max(best_hi, lj - li + ei + ej)
        rise_lo, rise_hi = best_lo * poly.scale, best_hi * poly.scale
        if best_pair is not None and rise_lo > tolq and _float_down(rise_lo) > tol:
            return ExactVerdict(
                "non_monotone",
                _float_down(rise_lo),
                (float(best_pair[0]), float(best_pair[1])),
                _float_down(rise_lo),
                _float_up(rise_hi),
                increasing,
                crit,
                f"L′ > 0 on {len(increasing)} interval(s) of [0, 1]; exact rise at the witness exceeds tol",
            )
        if rise_hi <= tolq:
            return ExactVerdict(
                "monotone",
                _float_up(rise_hi),
                None,
                _float_down(rise_lo),
                _float_up(rise_hi),
                increasing,
                crit,
                f"L rises somewhere, but every rise is proven ≤ {_float_up(rise_hi):.3g} ≤ tol",
            )
    return ExactVerdict(
        "unknown",
        None,
        None,
        None,
        None,
        (),
        (),
        "the largest rise is within rounding of tol, or narrower than float64 resolution",
    )


def loss_polynomial_of_line(line, data, deadline: float | None = None) -> LossPolynomial:
    """The exact MSE loss polynomial of a Line whose model is a Sequential of Linear layers."""
    layers = linear_layers(line)
    if layers is None:
        raise InputError("the exact method needs a model that is an nn.Sequential of nn.Linear layers")
    if data.loss != "mse":
        raise InputError("the exact method needs --loss mse")
    z = output_polynomial(line.start, line.end, layers, data.x, deadline)
    return mse_loss_polynomial(z, data.y, deadline)


def decide_line(line, data, tol: float = 0.0, budget_s: float | None = 30.0) -> tuple[ExactVerdict, LossPolynomial | None]:
    """Exact verdict for a Line (Sequential of Linear layers, MSE); ``unknown`` past the budget."""
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    try:
        poly = loss_polynomial_of_line(line, data, deadline)
        return decide(poly, tol, deadline), poly
    except BudgetExceeded as exc:
        return ExactVerdict("unknown", None, None, None, None, (), (), str(exc)), None
