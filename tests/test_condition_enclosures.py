"""``grid_slope`` proven on nonlinear paths by enclosures of L′ and L″ (:mod:`mli_theory.certify.conditions`).

Differential references: the exact integer proof on polynomial (deep linear) paths, which must
never disagree where both decide; dense float64 loss curves; planted overshoots."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mli_theory as mt
from mli_theory.certify.conditions import grid_slope_by_enclosures, prove_grid_slope
from mli_theory.certify.partition import plain_loss, prepare
from mli_theory.exact import mse_loss_polynomial, output_polynomial
from mli_theory.exact.conditions import _grid_slope
from mli_theory.path import BNPolicy
from mli_theory.testing.strategies import build_problem

GRID = [i / 32 for i in range(33)]


def _line(p):
    return mt.make_line(p.model, p.init, p.final, dtype=torch.float64)


@pytest.mark.parametrize("act", ["tanh", "gelu", "sigmoid"])
def test_smooth_trained_paths_get_a_proven_grid_statement_that_dense_curves_confirm(act):
    p = build_problem([3, 8, 8, 2], 16, seed=4, endpoint="trained", activation=act, steps=200)
    verdict, why = grid_slope_by_enclosures(_line(p), p.data, GRID, bn=BNPolicy.FROZEN)
    if verdict is None:
        pytest.skip(f"not decided here: {why}")
    problem = prepare(_line(p), p.data, BNPolicy.FROZEN)
    vals = [plain_loss(problem, i / 2000) for i in range(2001)]
    monotone = all(b <= a + 1e-13 * abs(a) for a, b in zip(vals, vals[1:]))
    assert verdict is True and monotone  # a proven grid statement implies L′ ≤ 0 on [0, 1]


def test_a_planted_overshoot_is_disproven_at_a_grid_point():
    p = build_problem([3, 8, 2], 16, seed=2, endpoint="overshoot", activation="tanh", overshoot=1.0, steps=300)
    problem = prepare(_line(p), p.data, BNPolicy.FROZEN)
    verdict, why = prove_grid_slope(problem, GRID)
    end_slope = (plain_loss(problem, 1.0) - plain_loss(problem, 1 - 1e-6)) / 1e-6
    if end_slope > 1e-6:
        assert verdict is False and "disproven" in why
    else:
        assert verdict is not True or all(plain_loss(problem, (i + 1) / 500) <= plain_loss(problem, i / 500) + 1e-12 for i in range(500))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), depth=st.integers(1, 3), endpoint=st.sampled_from(["trained", "overshoot"]))
def test_never_disagrees_with_the_exact_proof_on_polynomial_paths(seed, depth, endpoint):
    p = build_problem([3] + [4] * depth + [2], 8, seed, 1.0, endpoint, bias=depth == 1, steps=40)
    problem = prepare(_line(p), p.data, BNPolicy.FROZEN)
    ours, _ = prove_grid_slope(problem, GRID)
    line = _line(p)
    z = output_polynomial(line.start, line.end, line.structure.linear, p.data.x, None)
    exact, _ = _grid_slope(mse_loss_polynomial(z, p.data.y, None).ints, GRID, None)
    if ours is not None and exact is not None:
        assert ours == exact
    if exact is False:
        assert ours is not True


def test_check_reports_the_enclosure_proof_for_a_tanh_network():
    p = build_problem([3, 8, 2], 16, seed=4, endpoint="trained", activation="tanh", steps=200)
    r = mt.check(p.model, p.init, p.final, p.data, certify=True, dtype=torch.float64, alphas=33)
    gs = next(c for c in r.conditions if c.name == "grid_slope")
    assert gs.proven and gs.holds is (r.certificate.status == "monotone")
    assert "enclosures of L′" in gs.statement
    assert "condition_enclosures_s" in r.info["timings"]


# ----------------------------------------------------------------------------- two_phase


def test_two_phase_proven_on_a_tanh_path_and_never_against_the_curve():
    """(f) in its simple form by enclosures: proven on a trained tanh network where the turning is
    small enough, and a proven verdict is confirmed by a dense float64 curve (it implies MLI)."""
    import sys
    import os

    sys.path.insert(0, os.path.dirname(__file__))
    from test_convex_end import _trained

    from mli_theory.certify.conditions import prove_two_phase

    model, init, final, data = _trained(torch.nn.Tanh, "mse", steps=800, seed=2)
    line = mt.make_line(model, init, final, dtype=torch.float64)
    problem = prepare(line, data, BNPolicy.FROZEN)
    verdict, why = prove_two_phase(problem)
    assert verdict is True, why
    vals = [plain_loss(problem, i / 2000) for i in range(2001)]
    assert all(b <= a + 1e-13 * abs(a) for a, b in zip(vals, vals[1:]))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), depth=st.integers(1, 2), endpoint=st.sampled_from(["trained", "overshoot"]))
def test_two_phase_never_disagrees_with_the_exact_proof(seed, depth, endpoint):
    from mli_theory.certify.conditions import prove_two_phase
    from mli_theory.exact import prove_conditions

    p = build_problem([3] + [4] * depth + [2], 8, seed, 1.0, endpoint, bias=depth == 1, steps=40)
    line = _line(p)
    ours, _ = prove_two_phase(prepare(line, p.data, BNPolicy.FROZEN))
    z = output_polynomial(line.start, line.end, line.structure.linear, p.data.x, None)
    exact = prove_conditions(z, p.data.y, None, names=("two_phase",))["two_phase"]
    if ours is not None and exact is not None:
        assert ours == exact
    if ours is True:  # a proof implies MLI: the exact decision agrees
        from mli_theory.exact import decide

        assert decide(mse_loss_polynomial(z, p.data.y, None), 0.0).status == "monotone"
