"""The MSE sufficient conditions for MLI, evaluated on a concrete path.

Notation (derived and proved in :mod:`mli_theory.symbolic` and ``proofs/``): z(α) ∈ R^{n·k} the
stacked outputs, r = z(1) − y the final residual, L(α) = c·‖z(α) − y‖² with c = 1/(n·k) > 0, so
L′(α) = 2c·⟨z′(α), z(α) − y⟩. Each condition below implies L′ ≤ 0 on [0, 1]:

* ``zero_residual_gauss``: r = 0, z′ ≠ 0 on [0, 1] and Gauss length G < π/2 (stacked outputs).
* ``zero_residual_gauss_per_example``: the same for every example's own output path.
* ``acute_tangents``: ⟨z′(α), z′(s)⟩ ≥ 0 for all α, s and ⟨z′(α), r⟩ ≤ 0 for all α.
* ``acute_tangents_per_example``: the same for every example.
* ``stationary_pairwise``: ⟨z′(1), r⟩ ≤ 0 and ⟨z′(α), z′(s)⟩ + ⟨z″(s), r⟩ ≥ 0 for all α ≤ s.
* ``stationary_curvature``: ⟨z′(1), r⟩ ≤ 0, G < π/2 and ‖r‖·max‖z″‖ ≤ cos(G)·min‖z′‖².
* ``linear_in_theta`` (only when z is affine in α): L′(1) ≤ 0, which is also necessary.

How they are evaluated (:mod:`mli_theory.theory.conditions`):

* any model: on the α grid of the geometry (``proven`` = False: evidence, never a certificate);
* Sequential-of-Linear models (polynomial paths): with exact integer arithmetic and Bernstein
  bounds (``proven`` = True); ``holds`` is then True only when proven, False when disproven, and
  None when the exact evaluation was undecided within its budget.
"""

from __future__ import annotations

import math

HALF_PI = math.pi / 2

STATEMENTS = {
    "zero_residual_gauss": "r = z(1) − y = 0, z′ ≠ 0 and the Gauss length of the stacked output path is < π/2",
    "zero_residual_gauss_per_example": "every example has r_x = 0 and its own output path turns by < π/2 in total",
    "acute_tangents": "⟨z′(α), z′(s)⟩ ≥ 0 for all α, s in [0,1] and ⟨z′(α), r⟩ ≤ 0 for all α",
    "acute_tangents_per_example": "each example's tangents are pairwise acute and obtuse to its own residual r_x",
    "stationary_pairwise": "⟨z′(1), r⟩ ≤ 0 and ⟨z′(α), z′(s)⟩ + ⟨z″(s), r⟩ ≥ 0 for all 0 ≤ α ≤ s ≤ 1",
    "stationary_curvature": "⟨z′(1), r⟩ ≤ 0, G < π/2 and ‖r‖·max‖z″‖ ≤ cos(G)·min‖z′‖²  (value = left/right)",
    "linear_in_theta": "z is affine in α, so L is a convex quadratic: monotone on [0,1] iff L′(1) ≤ 0",
}

# results whose derivation differentiates z′ (result (c)): on a path that is only piecewise C²
# (ReLU kinks) the jets' z″ misses the jumps of z′, so they are not evaluated there
NEEDS_C2 = frozenset({"stationary_pairwise", "stationary_curvature"})
