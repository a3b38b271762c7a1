"""``check``: optional work that fails becomes a warning; options are validated by parameter name."""

from __future__ import annotations

import importlib

import pytest
import torch
from mli_theory.testing.strategies import build_problem as make_case

from mli_theory import InputError, check

# the modules (the package re-exports functions of the same names)
certify_pkg = importlib.import_module("mli_theory.certify")
theory_pkg = importlib.import_module("mli_theory.theory")


@pytest.fixture(scope="module")
def case():
    return make_case([3, 4, 2], 10, 0, 1.0, "trained")


def test_geometry_failure_is_a_warning(case, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("jet exploded")

    monkeypatch.setattr(theory_pkg, "evaluate_conditions", broken)
    r = check(case.model, case.init, case.final, case.data, certify=True, dtype=torch.float64)
    assert r.gauss_length is None and r.conditions == ()
    assert any("jet exploded" in w for w in r.warnings)
    assert r.certificate.status in ("monotone", "non_monotone")  # the proof still came out


def test_proof_failure_is_a_warning_and_unknown(case, monkeypatch):
    def broken(*a, **k):
        raise ZeroDivisionError("bug in a prover")

    monkeypatch.setattr(certify_pkg, "certify", broken)
    r = check(case.model, case.init, case.final, case.data, certify=True, dtype=torch.float64)
    assert r.certificate.status == "unknown" and "bug in a prover" in r.certificate.reason
    assert any("bug in a prover" in w for w in r.warnings)
    assert len(r.losses) == 50 and r.gauss_length is not None


@pytest.mark.parametrize(
    "option,value",
    [("alphas", 1), ("alphas", 10**7), ("tol", float("nan")), ("tol", -1.0), ("certify_budget", float("nan")),
     ("certify_budget", 0.0), ("batch_size", 0), ("alpha_chunk", -2), ("bn", "magic"), ("device", "meta"), ("dtype", "float16")],
)
def test_bad_options_name_the_parameter(case, option, value):
    with pytest.raises(InputError, match=f"^{option}="):
        check(case.model, case.init, case.final, case.data, **{option: value})


def test_conditions_are_proven_on_polynomial_paths_by_default(case):
    """Deep linear path: proven without certify too (a few seconds at most); without geometry proofs
    (a tiny budget) every condition is grid evidence: holds None, the grid's answer in on_grid."""
    plain = check(case.model, case.init, case.final, case.data, dtype=torch.float64)
    proven = check(case.model, case.init, case.final, case.data, dtype=torch.float64, certify=True)
    assert plain.conditions and any(c.proven for c in plain.conditions)
    assert "condition_proofs_s" in plain.info["timings"]
    assert any(c.proven for c in proven.conditions)
    for r in (plain, proven):
        for c in r.conditions:
            assert (c.holds is not None) == c.proven
    starved = check(case.model, case.init, case.final, case.data, dtype=torch.float64, certify_budget=1e-9)
    assert starved.conditions and not any(c.proven for c in starved.conditions)
    assert all(c.holds is None and c.on_grid is not None and "on grid" in c.statement for c in starved.conditions)
    assert any("budget" in w for w in starved.warnings)


def test_curvature_conditions_are_not_claimed_on_kinked_paths():
    """Result (c) needs z ∈ C²: on a ReLU path whose kink is off the grid the grid evaluation used to
    report it as holding while the loss rose. Now it is 'not applicable' (holds None) there."""
    from torch import nn

    from mli_theory.inputs import Dataset

    c = 0.337
    model = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2)).double()
    w2 = torch.tensor([[-1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    base = {"0.weight": torch.zeros(2, 1, dtype=torch.float64), "2.weight": w2, "2.bias": torch.zeros(2, dtype=torch.float64)}
    init = {**base, "0.bias": torch.tensor([c, -c], dtype=torch.float64)}
    final = {**base, "0.bias": torch.tensor([c - 1, 1 - c], dtype=torch.float64)}
    z1 = torch.tensor([[1 - c, 1 - c]], dtype=torch.float64)  # z(1); z′(1) = (1, 1)
    data = Dataset(torch.ones(1, 1, dtype=torch.float64), z1 + 0.005, "mse", "kink")  # ⟨z′(1), r⟩ = −0.01
    r = check(model, init, final, data, alphas=50, dtype=torch.float64)
    assert r.info["path_kind"] == "piecewise_smooth"
    by_name = {cond.name: cond for cond in r.conditions}
    for name in ("stationary_pairwise", "stationary_curvature"):
        assert by_name[name].holds is None and by_name[name].on_grid is None and "not applicable" in by_name[name].statement
    # smooth paths keep their grid evidence (in on_grid: holds is for proofs)
    smooth = nn.Sequential(nn.Linear(1, 2), nn.Tanh(), nn.Linear(2, 2)).double()
    r2 = check(smooth, init, final, data, alphas=20, dtype=torch.float64)
    assert r2.info["path_kind"] == "smooth"
    pairwise = {cond.name: cond for cond in r2.conditions}["stationary_pairwise"]
    assert pairwise.on_grid is not None and pairwise.holds is None and "on grid" in pairwise.statement



def test_the_gauss_length_is_reported_with_its_own_error_and_the_stacked_error_apart(monkeypatch):
    # a ReLU path on 33 α: every example's kinks sit on the stacked output path, so its error is
    # larger than the mean's; the reported ± and "converged" are the mean's (the reported quantity),
    # the stacked path's error is reported apart
    import mli_theory.theory.conditions as tc

    real = tc.gauss_length
    seen = []

    def capped(*a, **k):
        g = real(*a, **{**k, "max_alphas": 33})
        seen.append(g)
        return g

    monkeypatch.setattr(tc, "gauss_length", capped)
    c = make_case([3, 16, 16, 4], 40, 3, 1.0, "trained", activation="relu")
    r = check(c.model, c.init, c.final, c.data, dtype=torch.float64, alphas=9)
    (g,) = seen
    info = r.info
    assert info["gauss_error"] == g.mean_error and info["gauss_error_stacked"] == g.stacked_error
    assert g.mean_error < g.stacked_error == g.error
    assert info["gauss_converged"] == (g.mean_error <= g.rtol * g.mean)
    stacked_warned = any("stacked Gauss length" in w for w in r.warnings)
    assert stacked_warned == (g.stacked_error > g.rtol * g.stacked)


def test_checkpoints_rounded_by_the_cast_to_dtype_are_named_in_the_warnings():
    """The curve and every certificate are about the weights as cast to ``dtype``: float64 weights
    that float32 cannot hold (0.1) are rounded, and the result says so; weights it holds are not."""
    from torch import nn

    from mli_theory.inputs import Dataset

    model = nn.Sequential(nn.Linear(1, 1)).double()
    init = {"0.weight": torch.tensor([[0.5]], dtype=torch.float64), "0.bias": torch.tensor([0.0], dtype=torch.float64)}
    final = {"0.weight": torch.tensor([[0.1]], dtype=torch.float64), "0.bias": torch.tensor([0.25], dtype=torch.float64)}
    data = Dataset(torch.ones(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64), "mse", "cast")
    r = check(model, init, final, data, alphas=5, dtype=torch.float32, geometry=False)
    hits = [w for w in r.warnings if "do not fit float32 exactly" in w]
    assert len(hits) == 1 and "1 entry rounded, first '0.weight'" in hits[0], r.warnings
    r = check(model, init, final, data, alphas=5, dtype=torch.float64, geometry=False)
    assert not any("do not fit" in w for w in r.warnings), r.warnings
    exact = {**final, "0.weight": torch.tensor([[0.125]], dtype=torch.float64)}
    r = check(model, init, exact, data, alphas=5, dtype=torch.float32, geometry=False)
    assert not any("do not fit" in w for w in r.warnings), r.warnings
