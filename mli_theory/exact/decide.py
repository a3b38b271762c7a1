"""Exact MLI decision for networks whose outputs are polynomial in α (chains of affine layers).

The loss L(α) along the path is an exact polynomial (:mod:`mli_theory.exact.polynomials`). We
isolate the real roots of L′ on [0, 1] rigorously (arb ball arithmetic; each ball provably holds
one root), read the sign of L′ between roots at rational points, and turn the result into a
verdict:

* ``monotone``: L′ ≤ 0 on [0, 1] (then the largest rise is 0), or a proven upper bound on the
  largest rise sup_{a<b} L(b) − L(a) is ≤ tol;
* ``non_monotone``: float64-representable a < b with L(b) − L(a) > tol, computed exactly;
* ``unknown``: the time budget ran out, or the rise is within rounding of ``tol``.

The certificate is about the network with exactly these (float) weights on exactly this (float)
data, in real arithmetic; it is not about any rounding a float evaluation adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from ..inputs.data import Dataset
from ..path import Line
from .budget import BudgetExceeded, check_deadline, deadline_after
from .dyadic import dyadic_in, float_down, float_up, to_fraction_of_arb
from .polynomials import LossPolynomial, horner, loss_polynomial_of_line

try:  # python-flint: rigorous root isolation
    import flint
except ImportError:  # pragma: no cover - declared as a dependency
    flint = None  # type: ignore[assignment]


@dataclass(frozen=True)
class ExactVerdict:
    """Outcome of the exact decision.

    Attributes:
        status: ``monotone``, ``non_monotone`` or ``unknown``.
        rise: for ``non_monotone`` the exact L(b) − L(a) of the witness (rounded down to a float);
            for ``monotone`` a proven upper bound on sup_{a<b} L(b) − L(a) (0.0 when L′ ≤ 0).
        where: witness (a, b), floats, a < b, for ``non_monotone``.
        rise_upper: a proven upper bound on the largest rise sup_{a<b} L(b) − L(a) (None if unknown).
        reason: a sentence on the outcome.
    """

    status: Literal["monotone", "non_monotone", "unknown"]
    rise: float | None
    where: tuple[float, float] | None
    rise_upper: float | None
    reason: str

    @staticmethod
    def unknown(reason: str) -> "ExactVerdict":
        return ExactVerdict("unknown", None, None, None, reason)


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
        mid = to_fraction_of_arb(ball.mid())
        rad = to_fraction_of_arb(ball.rad())
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
        return ExactVerdict("monotone", 0.0, None, 0.0, "L is constant along the path")
    p = flint.fmpz_poly(dp)
    sqf = p // p.gcd(p.derivative()) if p.degree() > 0 else p
    b2 = sum(abs(m * (m - 1) * a[m]) for m in range(2, len(a)))  # ≥ max |A''| on [0, 1]
    for prec in (64, 128, 256, 512, 1024, 2048, 4096):
        check_deadline(deadline)
        encl = _interior_roots(sqf, prec) if sqf.degree() > 0 else []
        if encl is None:
            continue
        # sign of L' on each segment between isolated roots, at a rational point of the gap
        cuts = [Fraction(0)] + [x for lo_hi in encl for x in lo_hi] + [Fraction(1)]
        gaps = [(cuts[2 * i], cuts[2 * i + 1]) for i in range(len(encl) + 1)]
        signs = []
        for g0, g1 in gaps:
            s = horner(dp, (g0 + g1) / 2)
            signs.append(1 if s > 0 else (-1 if s < 0 else 0))
        n_increasing = sum(s > 0 for s in signs)
        if n_increasing == 0:
            return ExactVerdict("monotone", 0.0, None, 0.0, "L′ ≤ 0 on all of [0, 1] (exact)")
        # candidate points with exact values and error bounds (in units of the integer polynomial)
        pts: list[tuple[Fraction, Fraction, Fraction]] = [(Fraction(0), horner(a, Fraction(0)), Fraction(0))]
        for lo, hi in encl:
            mid = (lo + hi) / 2
            q = dyadic_in(lo, hi, mid)
            delta = max(abs(q - lo), abs(q - hi))
            err = abs(horner(dp, q)) * delta + Fraction(b2, 2) * delta * delta
            pts.append((q, horner(a, q), err))
        pts.append((Fraction(1), horner(a, Fraction(1)), Fraction(0)))
        best_lo, best_pair, best_hi = Fraction(0), None, Fraction(0)
        for i in range(len(pts)):
            for j in range(i + 1, len(pts)):
                qi, li, ei = pts[i]
                qj, lj, ej = pts[j]
                if qj > qi and lj - li > best_lo:
                    best_lo, best_pair = lj - li, (qi, qj)
                best_hi = max(best_hi, lj - li + ei + ej)
        rise_lo, rise_hi = best_lo * poly.scale, best_hi * poly.scale
        if best_pair is not None and rise_lo > tolq and float_down(rise_lo) > tol:
            reason = f"L′ > 0 on {n_increasing} interval(s) of [0, 1]; exact rise at the witness exceeds tol"
            ends = max(abs(horner(a, best_pair[0])), abs(horner(a, best_pair[1]))) * poly.scale
            if rise_lo <= ends * Fraction(1, 2**50):  # a few units in the last place of the losses
                reason += (f" (L(b) − L(a) = {float_down(rise_lo):.6g} exactly, below float64's resolution of the losses "
                           f"(about {float(ends) * 2.0**-52:.3g}), where a float64 evaluation may measure 0 or less)")
            return ExactVerdict(
                "non_monotone",
                float_down(rise_lo),
                (float(best_pair[0]), float(best_pair[1])),
                float_up(rise_hi),
                reason,
            )
        if rise_hi <= tolq:
            return ExactVerdict(
                "monotone",
                float_up(rise_hi),
                None,
                float_up(rise_hi),
                f"L rises somewhere, but every rise is proven ≤ {float_up(rise_hi):.3g} ≤ tol",
            )
    return ExactVerdict.unknown("the largest rise is within rounding of tol, or narrower than float64 resolution")


def decide_line(
    line: Line, data: Dataset, tol: float = 0.0, budget_s: float | None = 30.0, *, deadline: float | None = None
) -> tuple[ExactVerdict, LossPolynomial | None]:
    """Exact verdict for a Line whose traced model is a chain of affine layers under MSE.

    Args:
        line, data: the path and the training data.
        tol: tolerance of "monotone".
        budget_s: seconds before answering ``unknown`` (None: no limit); ignored when ``deadline``
            (a ``time.perf_counter()`` value shared with other proof work) is given.

    Raises:
        InputError: the path is not polynomial or the loss is not MSE (see
            :func:`~mli_theory.exact.polynomials.loss_polynomial_of_line`).
    """
    if deadline is None:
        deadline = deadline_after(budget_s)
    try:
        poly = loss_polynomial_of_line(line, data, deadline)
        return decide(poly, tol, deadline), poly
    except BudgetExceeded as exc:
        return ExactVerdict.unknown(str(exc)), None
