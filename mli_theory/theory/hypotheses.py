"""Hypotheses of the MSE conditions, and whether a traced model provably satisfies them.

Every condition of :mod:`mli_theory.theory.statements` is a theorem with hypotheses on the output
path z(α) = f(X; θ(α)) *and* on how its derivatives were obtained. A condition is evaluated only
where :func:`applicability` shows from the traced model (:func:`mli_theory.path.structure.analyse`,
the same predicate the certifier uses) that the hypotheses hold; otherwise it is reported as not
applicable (``holds`` = None, ``applicable`` = False) with the failed hypothesis as its reason.

Hypotheses (a path kind of :class:`~mli_theory.path.PathKind` satisfies a hypothesis if it is at
least as structured as listed):

* ``C1_PIECEWISE`` — z continuous and piecewise C¹ (finitely many kinks), so that the integral
  identity n·L′(α) = ⟨z′(α), r⟩ − ∫_α^1⟨z′(α), z′(s)⟩ds holds (z absolutely continuous) and the
  Gauss length counts the angle of each jump of the tangent. Kinds: polynomial, smooth,
  piecewise smooth.
* ``C2`` — z ∈ C² on [0, 1]: the derivation differentiates z′ (⟨z′(α), r⟩ = ⟨z′(1), r⟩ −
  ∫⟨z″, r⟩) or L′. On a ReLU path the jets' z″ misses the jumps of z′ at kinks, i.e. the terms
  Σ_κ⟨z′(κ⁺) − z′(κ⁻), r⟩, and the conclusion can fail (issue 16's kink example: the loss rises
  by ≈ 0.7 while the pairwise form holds at every grid point). Kinds: polynomial, smooth.
* ``AFFINE`` — z affine in α (a single affine layer). Kind: polynomial of degree ≤ 1.
* ``JETS_OF_MEASURED_CURVE`` — the z′, z″ used are the derivatives of the curve whose loss is
  measured. The Taylor mode differentiates through the BatchNorm statistics of every policy
  (:mod:`mli_theory.geometry.statistics`: interpolated statistics are affine in α, re-estimated
  ones are smooth functions of the pre-activations), so this holds unless the jets report
  otherwise (:attr:`mli_theory.geometry.PathJet.off_curve`: nested forward mode or a re-estimation
  pass that cannot be followed hold the statistics fixed at each α, and then differentiate another
  curve: 72 % off a finite difference on a tanh+BN net, issue 16).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..path import PathKind, PathStructure

C1_PIECEWISE = "C1_PIECEWISE"
C2 = "C2"
AFFINE = "AFFINE"
JETS_OF_MEASURED_CURVE = "JETS_OF_MEASURED_CURVE"

_KINDS = {
    C1_PIECEWISE: (PathKind.POLYNOMIAL, PathKind.SMOOTH, PathKind.PIECEWISE_SMOOTH),
    C2: (PathKind.POLYNOMIAL, PathKind.SMOOTH),
    AFFINE: (PathKind.POLYNOMIAL,),
}

# what each condition's theorem assumes about the path (the inequalities themselves are what is
# evaluated); every grid evaluation also needs JETS_OF_MEASURED_CURVE
HYPOTHESES: dict[str, tuple[str, ...]] = {
    "zero_residual_gauss": (C1_PIECEWISE, JETS_OF_MEASURED_CURVE),
    "zero_residual_gauss_per_example": (C1_PIECEWISE, JETS_OF_MEASURED_CURVE),
    "acute_tangents": (C1_PIECEWISE, JETS_OF_MEASURED_CURVE),
    "acute_tangents_per_example": (C1_PIECEWISE, JETS_OF_MEASURED_CURVE),
    "stationary_pairwise": (C2, JETS_OF_MEASURED_CURVE),
    "stationary_curvature": (C2, JETS_OF_MEASURED_CURVE),
    "two_phase": (C2, JETS_OF_MEASURED_CURVE),
    "grid_slope": (C2, JETS_OF_MEASURED_CURVE),
    "linear_in_theta": (AFFINE,),
}

_WORDS = {
    C1_PIECEWISE: "z continuous and piecewise C¹",
    C2: "z ∈ C² on [0, 1]",
    AFFINE: "z affine in α",
    JETS_OF_MEASURED_CURVE: "z′, z″ are derivatives of the measured curve",
}


@dataclass(frozen=True)
class Applicability:
    """Whether a condition's hypotheses provably hold on a traced model.

    Attributes:
        applicable: True when every hypothesis is shown from the traced model.
        reason: the first hypothesis that is not shown, and why (None when applicable).
    """

    applicable: bool
    reason: str | None = None


def applicability(name: str, structure: PathStructure, *, off_curve: str | None = None) -> Applicability:
    """Decide whether condition ``name`` may be evaluated on this model (see the module docstring).

    >>> from torch import nn
    >>> from mli_theory.path.structure import analyse
    >>> relu = analyse(nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2)))
    >>> applicability("acute_tangents", relu).applicable, applicability("stationary_pairwise", relu).applicable
    (True, False)
    """
    for hyp in HYPOTHESES.get(name, (C2, JETS_OF_MEASURED_CURVE)):
        if hyp == JETS_OF_MEASURED_CURVE:
            if off_curve is not None:
                return Applicability(
                    False,
                    f"not applicable: the result needs {_WORDS[hyp]}, but the jets differentiate another curve ({off_curve})",
                )
            continue
        if structure.kind not in _KINDS[hyp]:
            return Applicability(
                False,
                f"not applicable: the result needs {_WORDS[hyp]}, and this path is "
                f"{structure.kind.value.replace('_', ' ')} ({structure.reason})",
            )
        if hyp == AFFINE and (structure.degree or 0) > 1:
            return Applicability(False, f"not applicable: the result needs {_WORDS[hyp]}, and this path has degree ≤ {structure.degree}")
    return Applicability(True)
