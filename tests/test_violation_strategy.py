"""The testing API's promising strategies keep their promise: ``overshoot_problems`` draws only
*proven* MLI violations, ``mli_problems`` only *proven* MLI problems (the users' assertions, run
afresh with their defaults, agree on every draw), and shrinking still leads somewhere simple."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings

from mli_theory import check
from mli_theory.exact import decide_line
from mli_theory.path import make_line
from mli_theory.testing import assert_mli, assert_not_mli
from mli_theory.testing.strategies import build_problem, mli_problems, overshoot_problems, planted_violation, proven_mli

CI = settings.get_profile("ci")  # tests/conftest.py: derandomised, no deadline
MANY = settings(CI, max_examples=500)


def _loss_at(problem, alpha: float) -> float:
    """Independent float64 evaluation of L(θ(α)) with torch's own MSE."""
    model = copy.deepcopy(problem.model).double().eval()
    model.load_state_dict({k: (1 - alpha) * problem.init[k] + alpha * problem.final[k] for k in problem.init})
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(problem.data.x), problem.data.y))


def _exact(problem):
    line = make_line(problem.model, problem.init, problem.final, dtype=torch.float64)
    verdict, _ = decide_line(line, problem.data.to("cpu", torch.float64))
    return verdict


def _is_proven_violation(p) -> None:
    assert p.certificate is not None and p.certificate.status == "non_monotone", p.label
    r = assert_not_mli(p.model, p.init, p.final, p.data, label=p.label)  # certified, afresh
    assert r.certificate.method == "exact_polynomial" and r.certificate.rise > 0, p.label
    assert_not_mli(p.model, p.init, p.final, p.data, certify=False, label=p.label)  # and visible on the grid
    with pytest.raises(AssertionError, match="MLI is violated"):
        assert_mli(p.model, p.init, p.final, p.data, label=p.label)


def _is_proven_mli(p) -> None:
    assert p.certificate is not None and p.certificate.status == "monotone", p.label
    r = assert_mli(p.model, p.init, p.final, p.data, label=p.label)
    assert r.certificate.method in ("exact_polynomial", "constant_path"), p.label
    assert_mli(p.model, p.init, p.final, p.data, certify=False, label=p.label)


# ----------------------------------------------------------------------------- violations


@CI
@given(overshoot_problems())
def test_drawn_violations_are_proven(p):
    _is_proven_violation(p)


@pytest.mark.slow
@MANY
@given(overshoot_problems())
def test_500_drawn_violations_are_proven(p):
    _is_proven_violation(p)


@CI
@given(overshoot_problems())
def test_drawn_violations_are_decided_by_the_exact_method_with_a_confirmed_witness(p):
    v = _exact(p)  # the exact decision on its own, outside check's validation
    assert v.status == "non_monotone", p.label
    a, b = v.where
    assert a < b and _loss_at(p, b) > _loss_at(p, a), p.label


def test_the_shrunk_counterexample_of_the_bug_report_is_now_repaired():
    # hypothesis shrank the old strategy's failure to "deep_linear 1-1, n=1": gradient descent stops
    # short of the minimum, so θ* + ε(θ* − θ0) is still downhill, and the "violation" is proven MLI
    stuck = [e for e in (0.125, 0.25, 0.5, 1.0) if check(*_args(build_problem([1, 1], 1, 0, endpoint="overshoot", overshoot=e)),
                                                           certify=True, dtype=torch.float64, geometry=False).certificate.status == "monotone"]
    assert stuck, "the old construction should still fail for some ε (a regression check on the repair's need)"
    for e in stuck:
        p = planted_violation([1, 1], 1, 0, e)
        assert p is not None and "doubled" in p.label
        _is_proven_violation(p)
    # a problem that needed no repair is exactly build_problem's overshoot
    p = planted_violation([2, 1], 8, 0, 0.5)
    q = build_problem([2, 1], 8, 0, endpoint="overshoot", overshoot=0.5)
    assert "doubled" not in p.label and all(torch.equal(p.final[k], q.final[k]) for k in q.final)


def _args(p):
    return p.model, p.init, p.final, p.data


def test_a_false_claim_still_shrinks_to_one_scalar_layer():
    failing = []

    @settings(CI, max_examples=20)
    @given(overshoot_problems())
    def overshoots_are_mli(problem):
        try:
            assert_mli(problem.model, problem.init, problem.final, problem.data, label=problem.label)
        except AssertionError:
            failing.append(problem)
            raise

    with pytest.raises(AssertionError, match="MLI is violated"):
        overshoots_are_mli()
    shrunk = failing[-1]
    assert len(shrunk.model) == 1 and shrunk.data.x.shape[1] == 1 and shrunk.data.y.shape[1] == 1, shrunk.label
    assert shrunk.data.n <= 2, shrunk.label


# ----------------------------------------------------------------------------- proven MLI


@CI
@given(mli_problems())
def test_drawn_mli_problems_are_proven(p):
    _is_proven_mli(p)


@pytest.mark.slow
@MANY
@given(mli_problems())
def test_500_drawn_mli_problems_are_proven(p):
    _is_proven_mli(p)


def test_proven_mli_pulls_theta_t_back_only_when_needed():
    found = {}
    for seed in range(40):
        for widths in ([2, 3, 1], [1, 2, 2, 1]):
            p = proven_mli(widths, 4, seed, init_scale=3.0)
            if p is not None:
                found.setdefault("pulled" in p.label, p)
        if len(found) == 2:
            break
    assert set(found) == {False, True}, "expected both an untouched trained θT and a pulled-back one"
    for p in found.values():
        _is_proven_mli(p)
