"""The MSE sufficient conditions on a concrete path: proofs where we have them, grid evidence apart.

Proof and evidence never share a field (GUIDE §3): ``holds`` is True or False only when proven for
all of [0, 1] (``proven`` = True); what the α grid showed is ``on_grid``.

:func:`evaluate_conditions` computes the geometry of the output path (jets on the α grid, the
Gauss length, logit linearity) and the conditions of :mod:`mli_theory.theory.statements` on the
grid (into ``on_grid``; ``holds`` = None), each only where the traced model satisfies its
hypotheses (:mod:`mli_theory.theory.hypotheses`; otherwise ``applicable`` = False and a ``reason``).
A grid result is True only if, besides the condition's inequalities, L′(αᵢ) ≤ 0 at every grid
point (:func:`mli_theory.theory.evidence.grid_slopes`): every condition implies that, and the grid
forms of (a)–(f) do not. On polynomial paths under MSE, :func:`complete_proofs` then proves the
conditions exactly (:func:`mli_theory.exact.prove_conditions`, within a few seconds by default:
:data:`DEFAULT_PROOF_BUDGET_S`), after checking that the exact loss reproduces the measured curve;
:func:`with_proofs` puts proven verdicts in ``holds``. :func:`overrule` makes every condition
false when a rise is proven, and withdraws a grid result that the measured loss contradicts.

Grid evidence is no proof: every value is computed at grid points (and the Gauss length by
quadrature), so an inequality that holds there can fail in between. The sound grid statement is
``grid_slope`` with *proven* bounds on L″ per interval.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Collection, Mapping, Sequence

import torch

from ..geometry import GaussLength, PathJet, gauss_length, logit_linearity, path_jet
from ..inputs.data import Dataset
from ..path import BNPolicy, Line, PathKind
from ..path.fidelity import line_trace_differs
from ..results import Condition
from .evidence import grid_evidence, grid_slopes, two_phase_grid
from .hypotheses import applicability
from .statements import STATEMENTS


@dataclass(frozen=True)
class GeometryReport:
    """Geometry of the output path and the conditions evaluated on it.

    Attributes:
        gauss: Gauss length details (mean, per example, stacked, resolution, error estimate).
        logit_linearity: ∫₀¹ D(α) dα (GUIDE §1), or None with one output per example (the
            output path of a scalar is always on its chord, so the measure says nothing).
        conditions: the MSE conditions as grid evidence (empty for cross-entropy).
        jet: z, z′, z″ on the base grid.
        lprime1: L′(1) = (2/(n·k))⟨z′(1), z(1) − y⟩ for MSE (the value of ``linear_in_theta``),
            None for cross-entropy or a grid that does not end at α = 1.
        proof_notes: what the exact proofs could not do (budget, a measured curve the exact
            polynomial does not reproduce), for the check's warnings.
        proof_seconds: time spent proving (None: no proof was attempted).
        blocks: how many blocks of examples the geometry was computed in (1: all at once; more
            when the output path of all examples exceeds the memory budget: then the Gauss length,
            its largest example, logit linearity and L′(1) are exact sums over blocks, while the
            stacked Gauss length and the conditions, which need every example at once, are
            missing and ``jet`` is the first block's).
        examples_per_block: examples per block (n when ``blocks`` is 1).
    """

    gauss: GaussLength
    logit_linearity: float | None
    conditions: tuple[Condition, ...]
    jet: PathJet
    lprime1: float | None = None
    proof_notes: tuple[str, ...] = ()
    proof_seconds: float | None = None
    blocks: int = 1
    examples_per_block: int | None = None

    @property
    def gauss_length(self) -> float:
        """Mean over examples of the Gauss length."""
        return self.gauss.mean


# bytes the geometry may hold: its jets keep z, z′, z″ of every example at every α of the refined
# Gauss-length grid (measured: about GEOMETRY_COPIES float64 copies of one (α, example, output)
# array at the peak); above this the examples are taken in blocks (GeometryReport.blocks)
GEOMETRY_MEMORY = 2.0 * 2**30
GEOMETRY_COPIES = 20


class GeometryTooLarge(ValueError):
    """The geometry cannot be computed in blocks of examples within the memory budget (why)."""


def examples_per_block(line: Line, data: Dataset, max_alphas: int, memory_bytes: float | None) -> int:
    """How many examples the geometry can hold at once within ``memory_bytes`` (None:
    :data:`GEOMETRY_MEMORY`)."""
    memory_bytes = GEOMETRY_MEMORY if memory_bytes is None else memory_bytes
    if memory_bytes == float("inf"):
        return data.n
    from torch.func import functional_call

    with torch.no_grad():
        k = int(functional_call(line.shell, line.end, (data.x[:2],))[0].numel())
    per_example = GEOMETRY_COPIES * max_alphas * max(k, 1) * 8
    return max(1, min(data.n, int(memory_bytes // per_example)))


# seconds of exact proof work on a polynomial path when the check does not certify (bounded by the
# check's certify_budget when that is smaller)
DEFAULT_PROOF_BUDGET_S = 5.0
# the exact loss must reproduce the measured one to this relative accuracy (float32 curves; 2⁻²⁶ for
# float64), plus 64 float epsilons of the largest loss, before its proofs are taken to be about it
_MEASURED_REL = {torch.float32: 2.0**-12, torch.float64: 2.0**-26}


def _grid_note(points: int) -> str:
    return f"on grid: checked at {points} α grid points only (evidence, not proof)"


def evaluate_conditions(
    line: Line,
    data: Dataset,
    *,
    alphas: int | Sequence[float] = 51,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    rtol: float | None = None,
    max_alphas: int = 513,
    prove: bool = True,
    proof_budget: float | None = DEFAULT_PROOF_BUDGET_S,
    memory_bytes: float | None = None,
) -> GeometryReport:
    """Geometry of the output path and the MSE sufficient conditions: grid evidence, and proofs on
    polynomial paths.

    Args:
        line: the path.
        data: training data on the line's device and dtype.
        alphas: the base α grid for z′, z″ (a count of evenly spaced points with both ends, or the
            points); the Gauss length refines it adaptively.
        bn: BatchNorm policy; the jets differentiate through the statistics it sets (where they
            cannot, :attr:`PathJet.off_curve` says why and every condition is not applicable).
        batch_size: examples per pass.
        rtol: relative tolerance of the Gauss-length estimate (None: the default of
            :func:`mli_theory.geometry.gauss_length`, 1e-5 for angle sums, 1e-3 on kinked paths).
        max_alphas: α budget of the Gauss-length refinement (bounds its time: ReLU paths on many
            examples have thousands of kinks, and the estimate then reports that it did not
            converge, with its error estimate, instead of running for minutes).
        prove: on a polynomial path under MSE, prove the conditions exactly (:func:`complete_proofs`)
            within ``proof_budget`` seconds (None: no limit).
        memory_bytes: what the geometry may hold (None: :data:`GEOMETRY_MEMORY`; ``math.inf``: no
            limit). When the output path of all
            examples does not fit, the geometry is computed in blocks of examples
            (:attr:`GeometryReport.blocks`; every block read batch by batch).

    Raises:
        GeometryTooLarge: blocks are needed but BatchNorm statistics are re-estimated from the
            data at each α (every block would need a pass over all the data per α).
    """
    grid = torch.linspace(0, 1, alphas, dtype=torch.float64) if isinstance(alphas, int) else torch.as_tensor(alphas, dtype=torch.float64)
    per_block = examples_per_block(line, data, max(max_alphas, len(grid)), memory_bytes)
    if per_block < data.n:
        return _in_blocks(line, data, grid, per_block, bn=bn, batch_size=batch_size, rtol=rtol, max_alphas=max_alphas)
    jet = path_jet(line, data, grid, bn=bn, batch_size=batch_size)
    gauss = gauss_length(line, data, bn=bn, batch_size=batch_size, rtol=rtol, max_alphas=max(max_alphas, len(grid)), jet=jet)
    lin = logit_linearity(jet.z, jet.alphas)
    if data.loss != "mse":
        return GeometryReport(gauss, lin, (), jet)
    lprime1 = None
    if float(jet.alphas[-1]) == 1.0:
        r1 = jet.z[-1].double() - data.y.double().reshape(jet.z[-1].shape)
        lprime1 = float(2.0 * (jet.dz[-1].double() * r1).sum() / data.y.numel())
    evidence = grid_evidence(jet, data.y, gauss)
    slope_reason = grid_slopes(jet, data.y).reason()
    split = two_phase_grid(jet, data.y).split if "two_phase" in evidence else None
    conds = []
    for name, statement in STATEMENTS.items():
        if name not in evidence:
            continue
        app = applicability(name, line.structure, off_curve=jet.off_curve)
        if not app.applicable:
            # never evaluated: its hypotheses are not shown (e.g. z″ of the jets misses the jumps
            # of z′ at ReLU kinks, the terms Σ⟨[z′](κ), r⟩ of the identity)
            conds.append(Condition(name, None, None, evidence[name][2], f"{statement} [{app.reason}]", False, False, app.reason))
            continue
        found, value, threshold = evidence[name]
        on_grid = bool(found) if found is not None else None
        reason = None
        if on_grid and slope_reason is not None:
            on_grid, reason = False, slope_reason
        points = len(gauss.alphas) if ("gauss" in name or "curvature" in name) else len(jet.alphas)
        note = _grid_note(points)
        if name == "two_phase" and split is not None:
            note += f"; split c = {split:.4g}"
        conds.append(Condition(name, None, value, threshold, f"{statement} [{note}]", False, True, reason, on_grid))
    report = GeometryReport(gauss, lin, tuple(conds), jet, lprime1)
    if prove:
        proven, notes, seconds = complete_proofs(report.conditions, line, data, alphas=grid.tolist(), lprime1=lprime1, budget_s=proof_budget,
                                                 batch_size=batch_size)
        report = replace(report, conditions=proven, proof_notes=notes, proof_seconds=seconds)
    return report


def _in_blocks(line: Line, data: Dataset, grid: torch.Tensor, per_block: int, *, bn: BNPolicy | str,
               batch_size: int | None, rtol: float | None, max_alphas: int) -> GeometryReport:
    """The per-example geometry in blocks of ``per_block`` examples (each example's path is its own:
    the Gauss length of an example, its mean and logit linearity do not depend on the others, and
    L′(1) is a sum over examples)."""
    if line.has_bn and BNPolicy(bn) == BNPolicy.RECOMPUTE:
        raise GeometryTooLarge(
            f"the output path of {data.n} examples does not fit the geometry's memory budget, and with "
            "bn=\"recompute\" a block of examples cannot be differentiated without a pass over all the data at every α"
        )
    n = data.n
    per: list[torch.Tensor] = []
    errors = mean_sum = lin_sum = lp_sum = 0.0
    converged, singular, n_alphas, alphas, first_jet = True, False, 0, (), None
    lin_none = False
    rtol_used = rtol
    for i0 in range(0, n, per_block):
        sl = slice(i0, min(i0 + per_block, n))
        block = Dataset(data.x[sl], data.y[sl], data.loss, data.name)
        jet = path_jet(line, block, grid, bn=bn, batch_size=batch_size)
        g = gauss_length(line, block, bn=bn, batch_size=batch_size, rtol=rtol, max_alphas=max(max_alphas, len(grid)), jet=jet,
                         stacked=False)  # a block's stacked path is not the data's: not reported
        m = block.n
        per.append(g.per_example)
        rtol_used = g.rtol
        mean_sum += g.mean * m
        errors += g.error * m
        converged, singular = converged and g.converged, singular or g.singular
        if g.n_alphas > n_alphas:
            n_alphas, alphas = g.n_alphas, g.alphas
        lin = logit_linearity(jet.z, jet.alphas)
        lin_none = lin_none or lin is None
        lin_sum += (lin or 0.0) * m
        if data.loss == "mse" and float(jet.alphas[-1]) == 1.0:
            r1 = jet.z[-1].double() - block.y.double().reshape(jet.z[-1].shape)
            lp_sum += float(2.0 * (jet.dz[-1].double() * r1).sum())
        if first_jet is None:
            first_jet = jet
        del jet
    assert first_jet is not None
    gauss = GaussLength(mean_sum / n, torch.cat(per), None, n_alphas, converged, errors / n, singular, alphas,  # type: ignore[arg-type]
                        mean_error=errors / n, rtol=rtol_used)
    lprime1 = lp_sum / data.y.numel() if data.loss == "mse" and float(grid[-1]) == 1.0 else None
    return GeometryReport(gauss, None if lin_none else lin_sum / n, (), first_jet, lprime1,
                          blocks=-(-n // per_block), examples_per_block=per_block)


def complete_proofs(
    conditions: Sequence[Condition],
    line: Line,
    data: Dataset,
    *,
    alphas: Sequence[float],
    lprime1: float | None = None,
    budget_s: float | None = DEFAULT_PROOF_BUDGET_S,
    names: Collection[str] | None = None,
    measured: Sequence[float] | None = None,
    batch_size: int | None = None,
    reference: object | None = None,
) -> tuple[tuple[Condition, ...], tuple[str, ...], float | None]:
    """The conditions with exact verdicts on a polynomial path under MSE (anything else: unchanged).

    The exact output polynomial of the traced chain of ``nn.Linear`` layers is computed, its loss is
    compared with the measured loss at five grid points (``measured``: the check's curve on
    ``alphas``; None: re-measured here with :func:`mli_theory.path.loss_curve`), and only if they
    agree to rounding are the verdicts of :func:`mli_theory.exact.prove_conditions` put in place
    (:func:`with_proofs`): a proof about another computation would prove nothing.

    Args:
        conditions: the grid evaluation (:func:`evaluate_conditions` with ``prove=False``).
        line, data: the path and the training data.
        alphas: the α grid of the conditions (for ``grid_slope``).
        lprime1: L′(1) (the value of ``linear_in_theta``).
        budget_s: seconds for all of it (None: no limit); conditions not decided in time stay
            grid evidence.
        names: prove only these (None: every condition).
        measured: the measured losses at ``alphas``.
        batch_size: the curve's minibatch size (the forward is compared with its trace on the
            curve's batches, :func:`mli_theory.path.fidelity.line_trace_differs`).
        reference: the certificate's :class:`~mli_theory.certify.validation.Reference`, whose
            comparison is reused (None: it is made here).

    Returns:
        (conditions, notes for the warnings, seconds spent or None when nothing was attempted).
    """
    from ..exact import BudgetExceeded, deadline_after, mse_loss_polynomial, output_polynomial, prove_conditions

    if (not conditions or data.loss != "mse" or line.structure.kind != PathKind.POLYNOMIAL or data.x.dim() != 2
            or (budget_s is not None and budget_s <= 0)):
        return tuple(conditions), (), None
    from ..exact import EXACT_MAX_ENTRIES, exact_fits

    if not exact_fits(data.x):
        return tuple(conditions), (f"the conditions were not proven: the exact method takes at most {EXACT_MAX_ENTRIES} "
                                   "input values (n · d)",), None
    t0 = time.perf_counter()
    traced = reference.trace_fidelity() if reference is not None else line_trace_differs(line, data.x, batch_size=batch_size)
    if traced is not None:  # the exact polynomial is that of the traced chain: about another computation
        return tuple(conditions), (f"the conditions were not proven: {traced}",), round(time.perf_counter() - t0, 4)
    deadline = deadline_after(budget_s)
    try:
        z = output_polynomial(line.start, line.end, line.structure.linear, data.x, deadline)
        loss = mse_loss_polynomial(z, data.y, deadline)
        differs = _differs_from_measured(loss, line, data, alphas, measured)
        if differs is not None:
            return tuple(conditions), (f"the conditions were not proven: {differs}",), round(time.perf_counter() - t0, 4)
        verdicts = prove_conditions(z, data.y, deadline, alphas=alphas, names=names, partial=True, loss=loss)
    except BudgetExceeded:
        spent = round(time.perf_counter() - t0, 4)
        return tuple(conditions), (f"the condition proofs ran past their budget of {budget_s:g} s; the conditions are grid evidence only",), spent
    notes = ()
    if getattr(verdicts, "expired", False):
        notes = (f"the condition proofs ran past their budget of {budget_s:g} s; the undecided ones are grid evidence only",)
    return with_proofs(conditions, verdicts, lprime1), notes, round(time.perf_counter() - t0, 4)


def _differs_from_measured(loss, line: Line, data: Dataset, alphas: Sequence[float], measured: Sequence[float] | None) -> str | None:
    """Why the exact loss polynomial is not the measured computation, or None when it reproduces it."""
    from ..path import loss_curve

    grid = [float(a) for a in alphas]
    picks = sorted({min(range(len(grid)), key=lambda i: abs(grid[i] - t)) for t in (0.0, 0.25, 0.5, 0.75, 1.0)})
    if measured is None:
        values = loss_curve(line, data, [grid[i] for i in picks]).losses
    else:
        values = [measured[i] for i in picks]
    rel = _MEASURED_REL.get(line.dtype, 2.0**-12)
    eps = torch.finfo(line.dtype).eps
    floor = 64 * eps * max(abs(float(v)) for v in values)
    for i, v in zip(picks, values):
        exact = float(loss.exact(grid[i]))
        if not abs(exact - float(v)) <= rel * abs(float(v)) + floor:
            return (f"the exact loss of the traced nn.Linear chain, {exact:.9g} at α = {grid[i]:.4g}, differs from the "
                    f"measured {float(v):.9g}")
    return None


def with_proofs(conditions: Sequence[Condition], proven: Mapping[str, bool | None], lprime1: float | None = None, *,
                method: str = "exact", reasons: Mapping[str, str] | None = None) -> tuple[Condition, ...]:
    """The conditions with the proven verdicts of :func:`mli_theory.exact.prove_conditions` in place.

    A proven True or False goes into ``holds`` (``proven`` = True); ``on_grid`` keeps what the grid
    showed. An undecided one keeps ``holds`` = None and says so. ``linear_in_theta`` (only for
    affine paths) is added, with ``lprime1`` = L′(1) as its value and L′(1) ≤ 0 as its grid result.
    The reasons of :class:`mli_theory.exact.conditions.Verdicts` (a witness of a rise, the budget)
    go into ``reason``. ``method``: ``exact`` (integer arithmetic, Bernstein bounds) or
    ``enclosures`` (rigorous floating-point enclosures of L′ and L″, :mod:`mli_theory.certify.conditions`).
    """
    tool = ("integer arithmetic, Bernstein bounds" if method == "exact"
            else "rigorous enclosures of L′, L″ and of the output path z, z′, z″ on cells")
    reasons = {**getattr(proven, "reasons", {}), **(reasons or {})}
    out = []
    seen = set()
    for cond in conditions:
        seen.add(cond.name)
        if cond.name not in proven:
            out.append(cond)
            continue
        verdict = proven[cond.name]
        why = reasons.get(cond.name)
        grid = cond.statement[cond.statement.rfind("[") + 1 : -1] if cond.on_grid is not None and cond.statement.endswith("]") else None
        if verdict is None:
            how = f"undecided by the {'exact method' if method == 'exact' else 'enclosure method'} ({tool})"
            text = f"{STATEMENTS[cond.name]} [{how}; {grid}]" if grid else f"{STATEMENTS[cond.name]} [{how}]"
            out.append(replace(cond, holds=None, proven=False, statement=text, reason=why or cond.reason))
            continue
        how = ("proven" if verdict else "disproven") + (" exactly" if method == "exact" else "")
        grid_note = f"value and on_grid from the grid, {grid}" if grid else "no grid value"
        out.append(
            replace(
                cond,
                applicable=True,  # a proven verdict is about the path itself
                reason=why if why else (cond.reason if cond.applicable else None),
                holds=bool(verdict),
                statement=f"{STATEMENTS[cond.name]} [{how} ({tool}); {grid_note}]",
                proven=True,
            )
        )
    for name, verdict in proven.items():
        if name in seen or name not in STATEMENTS:
            continue
        on_grid = (lprime1 <= 0.0) if (name == "linear_in_theta" and lprime1 is not None) else None
        word = {True: "proven", False: "disproven", None: "undecided"}[verdict]
        out.append(
            Condition(
                name,
                verdict,
                lprime1 if name == "linear_in_theta" else None,
                0.0 if name == "linear_in_theta" else None,
                f"{STATEMENTS[name]} [exact: {word} in integer arithmetic]",
                verdict is not None,
                True,
                reasons.get(name),
                on_grid,
            )
        )
    return tuple(out)


def overrule(
    conditions: Sequence[Condition],
    *,
    grid_rise: float,
    rounding: float,
    certificate_status: str | None = None,
    witness: tuple[float, float] | None = None,
) -> tuple[Condition, ...]:
    """Disprove what a proven rise contradicts, withdraw grid results the measured loss contradicts.

    Every condition is *sufficient* for a non-increasing L on [0, 1], so a path whose loss rises
    satisfies none of them. Hence:

    * with a proven ``non_monotone`` certificate (witness a < b with L(b) > L(a)), every applicable
      condition is false, and that is proven (``holds`` = False, ``proven`` = True); ``on_grid``
      keeps what the grid showed (it can be True: the grid missed the rise);
    * with a grid rise above the rounding level of the loss evaluation, a grid result ``on_grid``
      = True is withdrawn (False, with the reason): the inequalities held at the grid points only.
      A grid rise is a float measurement, so it changes no proven verdict.

    Not-applicable conditions stay not applicable. A *proven* "holds" contradicted by a proven
    rise would be a bug; it is turned to False as well, and the reason says so.
    """
    out = []
    for cond in conditions:
        if not cond.applicable:
            out.append(cond)
            continue
        if certificate_status == "non_monotone" and cond.holds is not False:
            where = f" on [{witness[0]:.6g}, {witness[1]:.6g}]" if witness else ""
            why = f"disproven: the loss provably rises{where} (certificate non_monotone), and the condition implies that it does not"
            if cond.holds:
                why += " (CONTRADICTION with its own proof: please report)"
            cond = replace(cond, holds=False, proven=True, reason=why)
        if cond.on_grid and grid_rise > rounding:
            why = (
                f"on grid: withdrawn, the measured loss rises by {grid_rise:.3g} on the grid (above rounding {rounding:.2g}), "
                "so the condition fails between grid points; it held at the grid points only"
            )
            cond = replace(cond, on_grid=False, reason=f"{cond.reason}; {why}" if cond.reason else why)
        out.append(cond)
    return tuple(out)
