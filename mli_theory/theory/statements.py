"""The MSE sufficient conditions for MLI, evaluated on a concrete path.

Notation (derived and proved in :mod:`mli_theory.theory.symbolic` and ``proofs/``): z(α) ∈ R^{n·k}
the stacked outputs, r = z(1) − y the final residual, L(α) = c·‖z(α) − y‖² with c = 1/(n·k) > 0, so
L′(α) = 2c·⟨z′(α), z(α) − y⟩. Each condition below implies L′ ≤ 0 on [0, 1] under its hypotheses
(:mod:`mli_theory.theory.hypotheses`):

* (a) ``zero_residual_gauss``: r = 0, z′ ≠ 0 on [0, 1] and Gauss length G ≤ π/2 (stacked outputs).
  Hypotheses: z continuous, piecewise C¹ (G counts the jump angles of the tangent).
* (b) ``acute_tangents``: ⟨z′(α), z′(s)⟩ ≥ 0 for all α, s and ⟨z′(α), r⟩ ≤ 0 for all α.
  Hypotheses: z continuous, piecewise C¹.
* (c) ``stationary_pairwise``: ⟨z′(1), r⟩ ≤ 0 and ⟨z′(α), z′(s)⟩ + ⟨z″(s), r⟩ ≥ 0 for all α ≤ s;
  ``stationary_curvature``: ⟨z′(1), r⟩ ≤ 0, G < π/2 and ‖r‖·max‖z″‖ ≤ cos(G)·min‖z′‖². Hypothesis: z ∈ C².
* (f) ``two_phase``: for some split c ∈ [0, 1], (i) ⟨z′(1), r⟩ ≤ 0, (ii) L″ ≥ 0 on [c, 1], and
  (iii) ⟨z′(α), r⟩ ≤ cos(G(α))·‖z′(α)‖·arc(α, 1) for every α < c, with G(α) the turning of the
  tangent on [α, 1] (capped at π) and arc(α, 1) = ∫_α^1‖z′‖. Simple sufficient form of (iii):
  ‖r‖ ≤ cos(G)·‖z(1) − z(c)‖ with G ≤ π/2 the total turning. Hypothesis: z ∈ C².
* (d) ``linear_in_theta`` (only when z is affine in α): L′(1) ≤ 0, which is also necessary.
* ``grid_slope``: the sound grid statement — L′(αᵢ) ≤ 0 at the grid points, and with mᵢ ≤ L″ ≤ Mᵢ
  on each grid interval [αᵢ, αᵢ + h], L′(αᵢ + s) ≤ min(L′(αᵢ) + Mᵢs, L′(αᵢ₊₁) − mᵢ(h − s)) ≤ 0. A
  proof once mᵢ, Mᵢ are proven bounds (on polynomial paths: Bernstein bounds of the exact L″);
  evaluated with L″ at the grid points it is evidence. The geometric conditions (a)–(f) checked on
  the same grid are *no more rigorous*: their grid values miss what happens between grid points,
  and their grid forms do not even imply L′(αᵢ) ≤ 0 (a tanh staircase satisfies (b), (c), (f) at
  every grid point with L′ > 0 at all but α = 1), so every grid result also requires
  L′(αᵢ) ≤ 0. Hypothesis: z ∈ C².

Subordinate per-example variants (``zero_residual_gauss_per_example``,
``acute_tangents_per_example``): each example's own output path and residual satisfy (a), resp.
(b). They are implied-by relations, not new results: per-example (a) ⇒ per-example (b) ⇒ stacked
(b) (a sum of non-increasing losses is non-increasing), and with r = 0, (a) ⇒ (b). Kept for
comparison with the paper's per-example Gauss length; stacked (b) is the one that holds in practice.

Hierarchy and tightness (see :func:`mli_theory.theory.symbolic.hierarchy`): (a) ⇒ (b) when r = 0;
curvature form ⇒ pairwise form of (c); (d) ⇔ monotone for affine z; (f) with c = 0 contains (d); (a), (b), (c) are not necessary
(a spiral into y with G ≈ 7.7 is monotone, and (f) certifies it); π/2 in (a) cannot be raised by any rule that sees only G
(a unit-speed curve turning by π/2 + 0.05 then running straight rises).

How they are evaluated (:mod:`mli_theory.theory.conditions`). Proof and evidence never share a
field: ``holds`` is True or False only when proven for all of [0, 1] (``proven`` = True); what the
grid showed is ``on_grid``.

* only where the traced model satisfies the hypotheses (else ``applicable`` = False, ``holds`` and
  ``on_grid`` None);
* any such model: on the α grid of the geometry, into ``on_grid`` (evidence, never a certificate:
  ``holds`` stays None). ``on_grid`` is True only when the condition's inequalities and L′(αᵢ) ≤ 0
  hold at every grid point, and it is withdrawn (False) when the measured loss rises above rounding;
* Sequential-of-Linear models (polynomial paths) under MSE: proven with exact integer arithmetic and
  Bernstein bounds, by default (a few seconds) and under ``certify``; ``holds`` is True when proven,
  False when disproven (an exact rise of the loss disproves all of them), None when undecided
  within the budget;
* other paths under MSE, with ``certify``: proven by enclosures of L′, L″ and of the output path z,
  z′, z″ on cells (:mod:`mli_theory.certify.conditions`), after the same validation against the
  measured curve as every certificate;
* a proven rise of the loss (a ``non_monotone`` certificate) makes every applicable condition False.
"""

from __future__ import annotations

import math

HALF_PI = math.pi / 2

STATEMENTS = {
    "zero_residual_gauss": "(a) r = z(1) − y = 0, z′ ≠ 0 and the Gauss length of the stacked output path is ≤ π/2",
    "zero_residual_gauss_per_example": "(a, per example; implies stacked (b)) every example has r_x = 0 and its own output path turns by ≤ π/2 in total",
    "acute_tangents": "(b) ⟨z′(α), z′(s)⟩ ≥ 0 for all α, s in [0,1] and ⟨z′(α), r⟩ ≤ 0 for all α",
    "acute_tangents_per_example": "(b, per example; implies stacked (b)) each example's tangents are pairwise acute and obtuse to its own residual r_x",
    "stationary_pairwise": "(c) ⟨z′(1), r⟩ ≤ 0 and ⟨z′(α), z′(s)⟩ + ⟨z″(s), r⟩ ≥ 0 for all 0 ≤ α ≤ s ≤ 1",
    "stationary_curvature": "(c, curvature form; implies the pairwise form) ⟨z′(1), r⟩ ≤ 0, G < π/2 and ‖r‖·max‖z″‖ ≤ cos(G)·min‖z′‖²  (value = left/right)",
    "two_phase": "(f) for a split c: ⟨z′(1), r⟩ ≤ 0, L″ ≥ 0 on [c, 1], and ⟨z′(α), r⟩ ≤ cos G(α)·‖z′(α)‖·arc(α, 1) for α < c",
    "grid_slope": "(grid) L′(αᵢ) ≤ 0 at every grid point and, with mᵢ ≤ L″ ≤ Mᵢ on each grid interval, min(L′(αᵢ) + Mᵢs, L′(αᵢ₊₁) − mᵢ(h − s)) ≤ 0 for all s (value = largest such bound on L′ between grid points / max|L′(αᵢ)|)",
    "linear_in_theta": "(d) z is affine in α, so L is a convex quadratic: monotone on [0,1] iff L′(1) ≤ 0",
}

# results whose derivation differentiates z′ (result (c), (f)); kept for callers of the old name
NEEDS_C2 = frozenset({"stationary_pairwise", "stationary_curvature", "two_phase"})
