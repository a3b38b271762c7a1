r"""MSE conditions proven on nonlinear paths by enclosures of L′, L″ and the output path: the grid
statement ``grid_slope`` and the two-phase condition (f) ``two_phase`` in its simple form.

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
from typing import Collection, Sequence

import torch

from ..exact import check_deadline
from ..exact.conditions import _envelope
from ..exact.dyadic import float_down, float_up
from .enclosures import U, gamma
from .partition import _NoSecond, _Problem, enclose, enclose_second, loss_second_terms, second_walks

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


SPLIT_CELLS = 32  # the two-phase split c is sought among m/32, and the turning bounded on 32 cells


def _path_cells(problem: _Problem, a: list[float], b: list[float], deadline: float | None):
    """Per cell: (lo of L″, upper bound of ‖z″‖₂, lower bound of ‖z′‖₂) over the stacked outputs of
    all examples, every rounding covered (sums of non-negative terms: relative γ_count)."""
    rad = torch.tensor([(bi - ai) / 2 for ai, bi in zip(a, b)], dtype=torch.float64, device=problem.x.device)
    cells = len(a)
    acc = torch.zeros(cells, 4, dtype=torch.float64, device=problem.x.device)  # Σ lo of L″ terms, Σ their magnitude, Σ z″², Σ z′²
    count = chunks = 0
    for out, ys in second_walks(problem, a, b, deadline):
        lo, _, mag = loss_second_terms(out, ys, rad, problem.loss)
        dlo, dhi = out.first.d.bounds(rad.reshape(-1, *([1] * (out.mid.dim() - 1))))
        dlo, dhi = dlo.expand(out.mid.shape), dhi.expand(out.mid.shape)
        least = dlo.abs().minimum(dhi.abs()) * ((dlo > 0) | (dhi < 0))  # ≤ |z′| entrywise
        most = out.mid.abs() + out.rad  # ≥ |z″| entrywise
        acc += torch.stack([lo, mag, (most * most).reshape(cells, -1).sum(1), (least * least).reshape(cells, -1).sum(1)], 1)
        count += int(out.mid[0].numel())
        chunks += 1
    g = 2 * gamma(count + chunks + 8)
    scale = Fraction(2, problem.y.numel())
    rows = []
    for lsum, lmag, up2, low1 in acc.tolist():
        if not all(math.isfinite(v) for v in (lsum, lmag, up2, low1)):
            rows.append((-math.inf, math.inf, 0.0))
            continue
        l2 = float_down((Fraction(lsum) - Fraction(lmag) * Fraction(g)) * scale)
        rows.append((l2, math.sqrt(up2 * (1 + g)) * (1 + 4 * U), math.sqrt(low1 * (1 - g)) * (1 - 4 * U)))
    return rows


def _point_outputs(problem: _Problem, alphas: list[float], deadline: float | None):
    """Per point α: (lo, hi) tensors enclosing the outputs z(α) of all examples (flattened), and the targets."""
    los, his, ys_all = [], [], []
    for out, ys in second_walks(problem, alphas, alphas, deadline):
        nd = out.mid.dim() - 1
        h = torch.zeros(len(alphas), *([1] * nd), dtype=out.mid.dtype, device=out.mid.device)
        lo, hi = out.first.v.bounds(h)
        los.append(lo.expand(out.mid.shape).reshape(len(alphas), -1))
        his.append(hi.expand(out.mid.shape).reshape(len(alphas), -1))
        ys_all.append(ys.reshape(-1).to(out.mid.dtype))
    return torch.cat(los, 1), torch.cat(his, 1), torch.cat(ys_all)


def prove_two_phase(problem: _Problem, deadline: float | None = None) -> tuple[bool | None, str | None]:
    """(f) ``two_phase`` in its simple form, proven by enclosures (MSE): for a dyadic split c,
    (i) ⟨z′(1), r⟩ ≤ 0 (i.e. L′(1) ≤ 0, from the point enclosure), (ii) L″ ≥ 0 on every cell of
    [c, 1] (so L is C² there), (iii) ‖r‖ ≤ cos(G)·‖z(1) − z(c)‖ with G ≥ the total turning of the
    unit tangent of z on [0, 1] (≤ π/2), bounded by Σ_cells |C|·sup‖z″‖/inf‖z′‖ (the turning rate
    ‖z″ − ⟨z″, T⟩T‖/‖z′‖ is at most ‖z″‖/‖z′‖), and the chord ‖z(1) − z(c)‖ ≤ arc(c, 1). The turning
    bound needs L C² on all of [0, 1] (finite enclosures of z″ on every cell). False when L′(1) > 0
    is proven ((i) fails: no split works)."""
    if problem.loss != "mse":
        return None, "undecided: two_phase is an MSE condition"
    lo1, hi1 = enclose(problem, [1.0], [1.0], deadline)[0][0]
    if lo1 > 0:
        return False, f"disproven: L′(1) ≥ {lo1:.3g} > 0 is proven, so (i) fails for every split"
    if not hi1 <= 0:
        return None, f"undecided: L′(1) ≤ 0 is not proven (its enclosure reaches {hi1:.3g})"
    k = SPLIT_CELLS
    cells = [(m / k, (m + 1) / k) for m in range(k)]
    rows = []
    for i in range(0, k, 16):
        part = cells[i : i + 16]
        rows += _path_cells(problem, [c[0] for c in part], [c[1] for c in part], deadline)
    ok_from = k
    for m in range(k - 1, -1, -1):
        if not rows[m][0] >= 0:
            break
        ok_from = m
    if ok_from == k:
        return None, f"undecided: L″ ≥ 0 is not proven on [{(k - 1) / k:.6g}, 1]"
    if ok_from == 0:
        return True, None  # L convex on [0, 1] with L′(1) ≤ 0
    turning = Fraction(0)
    for (a, b), (_, z2, z1) in zip(cells, rows):
        if not (math.isfinite(z2) and z1 > 0):
            return None, f"undecided: the turning of the output path is not bounded on [{a:.6g}, {b:.6g}] (z′ may vanish or z″ is unbounded)"
        turning += (Fraction(b) - Fraction(a)) * Fraction(z2) / Fraction(z1)
    g_up = float_up(turning) * (1 + 4 * U)
    if not g_up < math.pi / 2:
        return None, f"undecided: the proven bound of the total turning, {g_up:.3g}, is not below π/2"
    cos_lo = math.cos(g_up) * (1 - 4 * U) - 2.0**-50
    cs = [m / k for m in range(ok_from, k)]
    lo, hi, y = _point_outputs(problem, [1.0] + cs, deadline)
    r_up = float(((lo[0] - y).abs().maximum((hi[0] - y).abs()) ** 2).sum()) ** 0.5 * (1 + 2 * gamma(lo.shape[1] + 8))
    for j, c in enumerate(cs, start=1):
        gap = (lo[0] - hi[j]).clamp(min=0) + (lo[j] - hi[0]).clamp(min=0)  # ≤ |z(1) − z(c)| entrywise
        chord = float((gap * gap).sum()) ** 0.5 * (1 - 2 * gamma(lo.shape[1] + 8))
        if r_up <= cos_lo * chord * (1 - 4 * U):
            return True, None
    return None, (f"undecided: ‖r‖ ≤ {r_up:.3g} exceeds cos(G)·‖z(1) − z(c)‖ for every split c ≥ {ok_from / k:.6g} "
                  f"(G ≤ {g_up:.3g})")


PROVERS = {"grid_slope": lambda problem, alphas, deadline: prove_grid_slope(problem, alphas, deadline),
           "two_phase": lambda problem, alphas, deadline: prove_two_phase(problem, deadline)}


def prove_by_enclosures(line, data, alphas: Sequence[float], *, names: Collection[str] = tuple(PROVERS), bn,
                        batch_size: int | None = None, reference=None, deadline: float | None = None
                        ) -> tuple[dict[str, bool | None], dict[str, str]]:
    """The conditions ``names`` (of :data:`PROVERS`) proven on a line, after the same differential
    validation as every certificate (the enclosures of L at the validation α must contain the
    measured values, ``reference``): (verdicts name → True / False / None, reasons of the undecided
    and disproven ones)."""
    from ..exact import BudgetExceeded
    from ..path import BNPolicy
    from .partition import Unsupported, _validate, prepare, strict_arithmetic
    from .validation import Reference

    wanted = [n for n in PROVERS if n in names]
    verdicts: dict[str, bool | None] = {n: None for n in wanted}
    reasons: dict[str, str] = {}
    try:
        problem = prepare(line, data, BNPolicy(bn), batch_size=batch_size)
    except Unsupported as exc:
        return verdicts, {n: f"undecided: no enclosure of this model ({exc})" for n in wanted}
    problem.reference = reference if reference is not None else Reference(line, data, BNPolicy(bn), batch_size)
    with strict_arithmetic(problem.x.device):
        try:
            differs = _validate(problem, BATCH, deadline)[0]
        except BudgetExceeded:
            differs = "the proof budget ran out"
        if differs is not None:
            return verdicts, {n: f"undecided: {differs}" for n in wanted}
        for name in wanted:
            try:
                verdicts[name], why = PROVERS[name](problem, alphas, deadline)
            except BudgetExceeded:
                verdicts[name], why = None, "undecided: the proof budget ran out"
            except _NoSecond as exc:
                verdicts[name], why = None, f"undecided: no second-derivative enclosure ({exc})"
            if why:
                reasons[name] = why
    return verdicts, reasons


def grid_slope_by_enclosures(line, data, alphas: Sequence[float], *, bn, batch_size: int | None = None, reference=None,
                             deadline: float | None = None) -> tuple[bool | None, str | None]:
    """:func:`prove_grid_slope` on a line, validated first (:func:`prove_by_enclosures`)."""
    verdicts, reasons = prove_by_enclosures(line, data, alphas, names=("grid_slope",), bn=bn, batch_size=batch_size,
                                            reference=reference, deadline=deadline)
    return verdicts["grid_slope"], reasons.get("grid_slope")
