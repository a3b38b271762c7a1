r"""The grid statement ``grid_slope`` proven on nonlinear paths by enclosures of L′ and L″.

``grid_slope`` (:mod:`mli_theory.theory.statements`): L′(αᵢ) ≤ 0 at every grid point and, with
mᵢ ≤ L″ ≤ Mᵢ on each grid interval [αᵢ, αᵢ₊₁] of length hᵢ,

    max over s ∈ [0, hᵢ] of min(L′(αᵢ) + Mᵢ·s, L′(αᵢ₊₁) − mᵢ·(hᵢ − s)) ≤ 0,

which bounds L′ between the grid points (Taylor from either end), so it implies L′ ≤ 0 on [0, 1].
On polynomial paths :mod:`mli_theory.exact.conditions` proves it in integer arithmetic. Here the
same statement is proven for any path the enclosures cover: L′(αᵢ) by the first-order enclosure
at the point αᵢ (:func:`.partition.enclose`, a radius of rounding only; the statement is monotone
in L′(αᵢ), so their upper bounds stand in for them), and mᵢ, Mᵢ by the enclosure of L″ on the
interval (:func:`.partition.enclose_second`), tightened by splitting it into up to
:data:`PIECES` equal pieces. The envelope is evaluated in exact rational arithmetic. A finite
enclosure of L″ also proves that L is C² on the interval (no ReLU kink there), which the statement
needs. Disproven (False) when L′(αᵢ) > 0 is proven at a grid point.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

from ..exact import check_deadline
from ..exact.conditions import _envelope
from .partition import _Problem, enclose, enclose_second

PIECES = 16  # each grid interval's bounds of L″ are tried on 1, 2, 4, … up to this many equal pieces
BATCH = 16  # cells per enclosure walk


def prove_grid_slope(problem: _Problem, alphas: Sequence[float], deadline: float | None = None) -> tuple[bool | None, str | None]:
    """(verdict, reason): True proven, False disproven, None undecided (reason says where)."""
    a = [float(v) for v in alphas]
    if len(a) < 2 or a[0] != 0.0 or a[-1] != 1.0 or any(u >= v for u, v in zip(a, a[1:])):
        return None, "undecided: the grid must increase from 0 to 1"
    slopes: list[tuple[float, float]] = []
    for i in range(0, len(a), BATCH):
        check_deadline(deadline)
        part = a[i : i + BATCH]
        slopes += enclose(problem, part, part, deadline)[0]
    for v, (lo, hi) in zip(a, slopes):
        if lo > 0:
            return False, f"disproven: L′({v:.6g}) ≥ {lo:.3g} > 0 is proven at a grid point"
    for v, (lo, hi) in zip(a, slopes):
        if not hi <= 0:
            return None, f"undecided: L′({v:.6g}) ≤ 0 is not proven at this grid point (its enclosure reaches {hi:.3g})"
    todo = list(range(len(a) - 1))
    pieces = 1
    while todo:
        cells: list[tuple[float, float]] = []
        owner: list[int] = []
        for i in todo:
            lo, hi = a[i], a[i + 1]
            cuts = [lo + (hi - lo) * j / pieces for j in range(pieces)] + [hi]
            cells += list(zip(cuts, cuts[1:]))
            owner += [i] * pieces
        bounds: list[tuple[float, float]] = []
        for j in range(0, len(cells), BATCH):
            check_deadline(deadline)
            part = cells[j : j + BATCH]
            got = enclose_second(problem, [c[0] for c in part], [c[1] for c in part], deadline)
            if got is None:
                return None, "undecided: the model has an operation without a second-derivative enclosure"
            bounds += got
        left = []
        for i in todo:
            mine = [b for b, o in zip(bounds, owner) if o == i]
            m, M = min(b[0] for b in mine), max(b[1] for b in mine)
            ok = math.isfinite(m) and math.isfinite(M) and _envelope(
                Fraction(slopes[i][1]), Fraction(slopes[i + 1][1]), Fraction(m), Fraction(M), Fraction(a[i + 1]) - Fraction(a[i])) <= 0
            if not ok:
                left.append(i)
        todo = left
        if todo and pieces >= PIECES:
            i = todo[0]
            return None, (f"undecided: on [{a[i]:.6g}, {a[i + 1]:.6g}] the envelope of L′ from proven bounds of L″ is positive "
                          "(or L″ is unbounded there: a possible ReLU kink)")
        pieces *= 2
    return True, None


def grid_slope_by_enclosures(line, data, alphas: Sequence[float], *, bn, batch_size: int | None = None, reference=None,
                             deadline: float | None = None) -> tuple[bool | None, str | None]:
    """:func:`prove_grid_slope` on a line, after the same differential validation as every certificate
    (the enclosures of L at the validation α must contain the measured values, ``reference``)."""
    from ..exact import BudgetExceeded
    from ..path import BNPolicy
    from .partition import Unsupported, _validate, prepare, strict_arithmetic
    from .validation import Reference

    try:
        problem = prepare(line, data, BNPolicy(bn), batch_size=batch_size)
    except Unsupported as exc:
        return None, f"undecided: no enclosure of this model ({exc})"
    problem.reference = reference if reference is not None else Reference(line, data, BNPolicy(bn), batch_size)
    try:
        with strict_arithmetic(problem.x.device):
            differs = _validate(problem, BATCH, deadline)
            if differs is not None:
                return None, f"undecided: {differs}"
            return prove_grid_slope(problem, alphas, deadline)
    except BudgetExceeded:
        return None, "undecided: the proof budget ran out"
