"""The MSE sufficient conditions on a concrete path: grid evidence, replaced by proofs where we have them.

:func:`evaluate_conditions` computes the geometry of the output path (jets on the α grid, the
Gauss length, logit linearity) and the conditions of :mod:`mli_theory.theory.statements` on the
grid (``proven`` = False: evidence), each only where the traced model satisfies its hypotheses
(:mod:`mli_theory.theory.hypotheses`; otherwise ``applicable`` = False, ``holds`` = None and a
``reason``). :func:`with_proofs` replaces the verdicts by the proven ones from
:func:`mli_theory.exact.prove_conditions` (polynomial paths, within the proof budget).
:func:`overrule` withdraws a grid "holds" that the measured loss contradicts, and turns every
condition false when a rise is proven.

Grid evidence is no proof: every value is computed at grid points (and the Gauss length by
quadrature), so an inequality that holds there can fail in between. The sound grid statement is
``grid_slope`` with *proven* bounds on L″ per interval; the geometric conditions (a)–(f) checked on
the same grid are more conservative than it and no more rigorous.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import torch

from ..geometry import GaussLength, PathJet, gauss_length, logit_linearity, path_jet
from ..inputs.data import Dataset
from ..path import BNPolicy, Line
from ..results import Condition
from .evidence import grid_evidence, two_phase_grid
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
    """

    gauss: GaussLength
    logit_linearity: float | None
    conditions: tuple[Condition, ...]
    jet: PathJet
    lprime1: float | None = None

    @property
    def gauss_length(self) -> float:
        """Mean over examples of the Gauss length."""
        return self.gauss.mean


def evaluate_conditions(
    line: Line,
    data: Dataset,
    *,
    alphas: int | Sequence[float] = 51,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    rtol: float = 1e-3,
    max_alphas: int = 513,
) -> GeometryReport:
    """Geometry of the output path and the MSE sufficient conditions as grid evidence.

    Args:
        line: the path.
        data: training data on the line's device and dtype.
        alphas: the base α grid for z′, z″ (a count of evenly spaced points with both ends, or the
            points); the Gauss length refines it adaptively.
        bn: BatchNorm policy; the jets differentiate through the statistics it sets (where they
            cannot, :attr:`PathJet.off_curve` says why and every condition is not applicable).
        batch_size: examples per pass.
        rtol: relative tolerance of the Gauss-length estimate.
        max_alphas: α budget of the Gauss-length refinement (bounds its time: ReLU paths on many
            examples have thousands of kinks, and the estimate then reports that it did not
            converge, with its error estimate, instead of running for minutes).
    """
    grid = torch.linspace(0, 1, alphas, dtype=torch.float64) if isinstance(alphas, int) else torch.as_tensor(alphas, dtype=torch.float64)
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
        holds, value, threshold = evidence[name]
        points = len(gauss.alphas) if ("gauss" in name or "curvature" in name) else len(jet.alphas)
        note = f"evaluated on a {points}-point α grid: evidence, not proof"
        if name == "two_phase" and split is not None:
            note += f"; split c = {split:.4g}"
        conds.append(Condition(name, bool(holds) if holds is not None else None, value, threshold, f"{statement} [{note}]", False))
    return GeometryReport(gauss, lin, tuple(conds), jet, lprime1)


def with_proofs(conditions: Sequence[Condition], proven: Mapping[str, bool | None], lprime1: float | None = None) -> tuple[Condition, ...]:
    """The conditions with the proven verdicts of :func:`mli_theory.exact.prove_conditions` in place.

    A proven True or False replaces the grid verdict (``proven`` = True); an undecided one keeps
    ``holds`` = None and says so. ``linear_in_theta`` (only for affine paths) is added, with
    ``lprime1`` = L′(1) as its value.
    """
    out = []
    seen = set()
    for cond in conditions:
        seen.add(cond.name)
        if cond.name not in proven:
            out.append(cond)
            continue
        verdict = proven[cond.name]
        how = {True: "proven exactly", False: "disproven exactly", None: "undecided by the exact method"}[verdict]
        grid_note = "value on the grid" if cond.value is not None else "no grid value"
        out.append(
            replace(
                cond,
                applicable=True,  # an exact verdict is on the polynomial path itself
                reason=None,
                holds=verdict,
                statement=f"{STATEMENTS[cond.name]} [{how} (integer arithmetic, Bernstein bounds); {grid_note}]",
                proven=verdict is not None,
            )
        )
    for name, verdict in proven.items():
        if name in seen:
            continue
        out.append(
            Condition(
                name,
                verdict,
                lprime1 if name == "linear_in_theta" else None,
                0.0 if name == "linear_in_theta" else None,
                f"{STATEMENTS[name]} [exact: {'proven' if verdict else ('disproven' if verdict is False else 'undecided')} in integer arithmetic]",
                verdict is not None,
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
    """Withdraw verdicts that the measured or proven loss contradicts (soundness backstop).

    Every condition is *sufficient* for a non-increasing L on [0, 1], so a path whose loss rises
    satisfies none of them. Hence:

    * with a proven ``non_monotone`` certificate (witness a < b with L(b) > L(a)), every applicable
      condition is false, and that is proven (``proven`` = True);
    * with a grid rise above the rounding level of the loss evaluation, a grid verdict "holds"
      (``proven`` = False) is false: the inequality held at the grid points only. It becomes
      False, with the reason.

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
            if cond.proven and cond.holds:
                why += " (CONTRADICTION with its own proof: please report)"
            out.append(replace(cond, holds=False, proven=True, reason=why))
        elif cond.holds and not cond.proven and grid_rise > rounding:
            why = (
                f"withdrawn: the measured loss rises by {grid_rise:.3g} on the grid (above rounding {rounding:.2g}), "
                "so the condition fails between grid points; it held at the grid points only"
            )
            out.append(replace(cond, holds=False, reason=why))
        else:
            out.append(cond)
    return tuple(out)
