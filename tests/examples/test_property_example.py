"""Property tests of your own claims with mli-theory: a complete example (CI runs this file).

Two properties over hypothesis-drawn problems:

1. a claim that holds — "a one-layer (linear) model trained by full-batch gradient descent has a
   monotone loss from θ0 to θT" (true: the loss along the line is a convex quadratic whose slope
   at α = 1 is ≤ 0 for a stable, even number of gradient steps) — proven for every drawn case;
2. a deliberately false claim — "deep linear networks with θT planted past the minimum are MLI" —
   which hypothesis refutes, shrinking the counterexample to the smallest network it can; the
   certified witness [a, b] is then confirmed by an independent float64 evaluation.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from mli_theory.testing import assert_mli
from mli_theory.testing.strategies import deep_linear_problems, overshoot_problems

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(deep_linear_problems(max_depth=1, endpoints=("trained",)))
def test_trained_linear_models_are_mli(problem):
    # θT is a float approximation of a gradient-descent iterate, so allow rounding-level rises
    assert_mli(problem.model, problem.init, problem.final, problem.data, tol=1e-9, label=problem.label)


def _loss_at(problem, alpha: float) -> float:
    """Independent check: load (1−α)θ0 + αθT into a copy of the model and evaluate torch's MSE."""
    import copy

    model = copy.deepcopy(problem.model).double().eval()
    model.load_state_dict({k: (1 - alpha) * problem.init[k] + alpha * problem.final[k] for k in problem.init})
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(problem.data.x), problem.data.y))


def test_a_false_claim_is_refuted_with_a_shrunk_confirmed_counterexample():
    failing = []

    @SETTINGS
    @given(overshoot_problems())
    def overshoots_are_mli(problem):
        try:
            assert_mli(problem.model, problem.init, problem.final, problem.data, label=problem.label)
        except AssertionError:
            failing.append(problem)
            raise

    with pytest.raises(AssertionError, match="MLI is violated"):
        overshoots_are_mli()
    shrunk = failing[-1]  # hypothesis replays the minimal failing example last
    # shrunk to one scalar layer on a couple of examples (hypothesis found: "deep_linear 1-1, n=2, seed=0")
    assert len(shrunk.model) == 1 and shrunk.data.x.shape[1] == 1 and shrunk.data.n <= 2, shrunk.label
    from mli_theory import check

    cert = check(shrunk.model, shrunk.init, shrunk.final, shrunk.data, certify=True, dtype=torch.float64, geometry=False).certificate
    a, b = cert.where
    assert a < b and _loss_at(shrunk, b) - _loss_at(shrunk, a) == pytest.approx(cert.rise, rel=1e-6)
    assert _loss_at(shrunk, b) > _loss_at(shrunk, a)
