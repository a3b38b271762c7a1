"""Issue 16 (theory, round 2): conditions only where their hypotheses hold, the two-phase result (f),
hierarchy and tightness, grid verdicts withdrawn by a measured rise."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from mli_theory import check
from mli_theory.geometry import PathJet
from mli_theory.inputs import Dataset
from mli_theory.results import Condition
from mli_theory.theory import overrule
from mli_theory.theory.evidence import grid_evidence, two_phase_grid
from mli_theory.theory.hypotheses import HYPOTHESES, applicability
from mli_theory.theory.statements import HALF_PI, STATEMENTS

D = torch.float64
C = 0.337  # the kink of issue 16, off the 50-point grid


# ----------------------------------------------------------------------------- the ReLU kink


def _kink_problem():
    """mlp:1-2-2:relu, x = 1, first biases (c, −c) → (c − 1, 1 − c), second layer [[−1, 1], [0, 1]].

    z1(α) = α − c on all of [0, 1]; z2(α) = relu(α − c): z′ = (1, 0) before the kink, (1, 1) after,
    z″ = 0 off the kink. r = (2.968, −2.978): ⟨z′(1), r⟩ = −0.01, and on [0, c] L′ ∝ r1 − (1 − α) > 0,
    so L rises by c·(r1 − 1) + c²/2 ≈ 0.72 (mean over the two outputs).
    """
    w2 = torch.tensor([[-1.0, 1.0], [0.0, 1.0]], dtype=D)
    base = {"0.weight": torch.zeros(2, 1, dtype=D), "2.weight": w2, "2.bias": torch.zeros(2, dtype=D)}
    init = {**base, "0.bias": torch.tensor([C, -C], dtype=D)}
    final = {**base, "0.bias": torch.tensor([C - 1, 1 - C], dtype=D)}
    r = torch.tensor([2.968, -2.978], dtype=D)
    y = (torch.tensor([1 - C, 1 - C], dtype=D) - r).reshape(1, 2)
    return init, final, y


def _kink_model():
    return nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2)).double()


def test_kink_counterexample_no_condition_holds_library():
    init, final, y = _kink_problem()
    data = Dataset(torch.ones(1, 1, dtype=D), y, "mse", "kink")
    r = check(_kink_model(), init, final, data, alphas=50, dtype=D)
    assert r.max_rise > 0.6  # the loss really rises (≈ 0.72 between α = 0 and the kink)
    by = {c.name: c for c in r.conditions}
    assert set(by) == set(STATEMENTS) - {"linear_in_theta"}
    assert not any(c.holds for c in r.conditions)
    assert not any(c.on_grid for c in r.conditions)
    for name in ("stationary_pairwise", "stationary_curvature", "two_phase"):
        assert by[name].applicable is False and by[name].holds is None and by[name].on_grid is None
        assert "C²" in by[name].reason and "piecewise smooth" in by[name].reason
    # the C¹ results stay evaluated on the grid (and fail there: z′ = (1, 0) before the kink is
    # acute to r); nothing is proven without certify on a ReLU path, so holds stays None
    assert by["acute_tangents"].applicable and by["acute_tangents"].on_grid is False and by["acute_tangents"].holds is None


def test_kink_jets_would_have_claimed_the_pairwise_form():
    """Without the hypothesis check, the jets' z″ = 0 makes (c)'s pairwise form hold on the grid:
    the reason the result must be declared not applicable (no test that cannot fail)."""
    init, final, y = _kink_problem()
    data = Dataset(torch.ones(1, 1, dtype=D), y, "mse", "kink")
    from mli_theory.geometry import gauss_length, path_jet
    from mli_theory.path import make_line

    line = make_line(_kink_model(), init, final, device=torch.device("cpu"), dtype=D)
    grid = torch.linspace(0, 1, 50, dtype=D)
    jet = path_jet(line, data, grid)
    ev = grid_evidence(jet, data.y, gauss_length(line, data, jet=jet))
    assert ev["stationary_pairwise"][0] is True


def test_kink_counterexample_cli_json(tmp_path):
    from mli_theory.cli import main

    init, final, y = _kink_problem()
    torch.save(init, tmp_path / "init.pt")
    torch.save(final, tmp_path / "final.pt")
    np.savez(tmp_path / "d.npz", x=np.ones((1, 1)), y=y.numpy())
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(["check", "--arch", "mlp:1-2-2:relu", "--init", str(tmp_path / "init.pt"), "--final", str(tmp_path / "final.pt"),
                     "--data", str(tmp_path / "d.npz"), "--dtype", "float64", "--json"])
    assert code == 0
    js = json.loads(out.getvalue())
    assert js["max_rise"] > 0.6
    assert js["conditions"] and not any(c["holds"] for c in js["conditions"])
    assert not any(c["on_grid"] for c in js["conditions"])
    for c in js["conditions"]:
        assert {"name", "holds", "value", "threshold", "statement", "proven", "applicable", "reason", "on_grid"} <= set(c)
        assert c["holds"] is None or c["proven"] is True  # holds is a proof verdict, never grid evidence
    na = {c["name"] for c in js["conditions"] if c["applicable"] is False}
    assert {"stationary_pairwise", "stationary_curvature", "two_phase"} <= na


# ----------------------------------------------------------------------------- BatchNorm


@pytest.mark.parametrize("bn", ["recompute", "interpolate", "frozen"])
def test_batchnorm_conditions_under_every_policy(bn):
    """The jets follow the statistics of every policy (tests/test_bn_geometry.py), so the
    conditions are evaluated on BatchNorm models whatever the policy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight)
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 2)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    data = Dataset(torch.randn(12, 3, dtype=D), torch.randn(12, 2, dtype=D), "mse", "bn")
    conds = check(model, init, final, data, alphas=5, dtype=D, bn=bn).conditions
    assert conds
    for c in conds:
        assert c.applicable, (c.name, c.reason)


def test_not_applicable_cannot_hold():
    with pytest.raises(ValueError):
        Condition("x", True, None, None, "s", proven=True, applicable=False, reason="no")
    with pytest.raises(ValueError):
        Condition("x", None, None, None, "s", applicable=False, reason="no", on_grid=True)


def test_every_condition_declares_hypotheses():
    assert set(HYPOTHESES) == set(STATEMENTS)
    from mli_theory.path.structure import analyse

    poly = analyse(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)))
    affine = analyse(nn.Sequential(nn.Linear(2, 1)))
    assert not applicability("linear_in_theta", poly).applicable and applicability("linear_in_theta", affine).applicable
    assert applicability("two_phase", poly).applicable


# ----------------------------------------------------------------------------- overruling


def test_measured_rise_withdraws_grid_verdicts_and_a_proven_rise_disproves():
    conds = (
        Condition("acute_tangents", None, 0.1, 0.0, "s [on grid]", on_grid=True),
        Condition("two_phase", None, None, 0.0, "s", applicable=False, reason="not applicable: …"),
        Condition("stationary_pairwise", True, 0.0, 0.0, "s", proven=True, on_grid=True),
    )
    out = overrule(conds, grid_rise=0.5, rounding=1e-12)
    assert out[0].on_grid is False and out[0].holds is None and "withdrawn" in out[0].reason
    assert out[1] == conds[1]
    assert out[2].holds is True and out[2].on_grid is False  # a float grid rise changes no proven verdict
    kept = overrule(conds, grid_rise=1e-14, rounding=1e-12)
    assert kept == conds  # a rise within rounding withdraws nothing
    out = overrule(conds, grid_rise=0.0, rounding=1e-12, certificate_status="non_monotone", witness=(0.0, 0.3))
    assert out[0].holds is False and out[0].proven and "[0, 0.3]" in out[0].reason
    assert out[0].on_grid is True  # what the grid showed: it missed the rise
    assert out[1].holds is None
    assert "CONTRADICTION" in out[2].reason


# ----------------------------------------------------------------------------- two-phase (f)


def _toy_problem():
    """z(α) = (α − 1)v + (α − 1)²w with v = (1, 0), w = (0.472, −0.02375), r = (0, 0.2473): a slow
    start, then a basin. Realised exactly by deep_linear:1-3-2 on x = 1 (hidden (1, α, α))."""
    w = torch.tensor([0.472, -0.02375], dtype=D)
    v = torch.tensor([1.0, 0.0], dtype=D)
    p, q = -v + w, v - 2 * w
    init = {"0.weight": torch.tensor([[1.0], [0.0], [0.0]], dtype=D), "1.weight": torch.stack([p, q, torch.zeros(2, dtype=D)], 1)}
    final = {"0.weight": torch.ones(3, 1, dtype=D), "1.weight": torch.stack([p, q, w], 1)}
    y = -torch.tensor([[0.0, 0.2473]], dtype=D)
    model = nn.Sequential(nn.Linear(1, 3, bias=False), nn.Linear(3, 2, bias=False)).double()
    return model, init, final, Dataset(torch.ones(1, 1, dtype=D), y, "mse", "toy")


def test_two_phase_certifies_where_every_other_condition_fails_exactly():
    model, init, final, data = _toy_problem()
    r = check(model, init, final, data, alphas=50, dtype=D, certify=True)
    assert r.certificate.status == "monotone"
    by = {c.name: c for c in r.conditions}
    assert by["two_phase"].holds is True and by["two_phase"].proven
    for name in ("zero_residual_gauss", "zero_residual_gauss_per_example", "acute_tangents",
                 "acute_tangents_per_example", "stationary_pairwise", "stationary_curvature"):
        assert by[name].holds is False and by[name].proven, name


def test_two_phase_on_the_grid_toy():
    model, init, final, data = _toy_problem()
    from mli_theory.path import make_line
    from mli_theory.theory import evaluate_conditions

    grid_only = evaluate_conditions(make_line(model, init, final, dtype=D), data, alphas=50, prove=False).conditions
    by = {c.name: c for c in grid_only}
    assert all(c.holds is None and not c.proven and "on grid" in c.statement for c in grid_only)
    assert by["two_phase"].on_grid is True and "split c =" in by["two_phase"].statement
    assert not any(c.on_grid for n, c in by.items() if n not in ("two_phase", "grid_slope"))
    assert by["grid_slope"].on_grid is True  # the sound grid statement sees it too (L′(1) = 0, L″ ≥ 0 at the end)
    # check() proves them on this polynomial path without certify, and keeps what the grid showed
    r = check(model, init, final, data, alphas=50, dtype=D)
    by = {c.name: c for c in r.conditions}
    assert by["two_phase"].holds is True and by["two_phase"].proven and by["two_phase"].on_grid is True
    assert by["grid_slope"].holds is True and by["grid_slope"].proven  # Bernstein bounds of L″ on each interval
    assert not any(c.holds for n, c in by.items() if n not in ("two_phase", "grid_slope"))


def _jet_of(fz, fdz, fd2z, K=401):
    a = torch.linspace(0, 1, K, dtype=D)
    return PathJet(a, fz(a).unsqueeze(1), fdz(a).unsqueeze(1), fd2z(a).unsqueeze(1))


def test_two_phase_never_holds_on_rising_random_quadratics():
    rng = np.random.default_rng(3)
    rising = 0
    for _ in range(200):
        v = torch.tensor([1.0, 0.0], dtype=D)
        w = torch.tensor(rng.normal(size=2) * 0.8, dtype=D)
        rr = torch.tensor(rng.normal(size=2) * 0.6, dtype=D)
        jet = _jet_of(lambda a: (a - 1)[:, None] * v + ((a - 1) ** 2)[:, None] * w, lambda a: v + 2 * (a - 1)[:, None] * w,
                      lambda a: (2 * w).expand(len(a), 2))
        y = jet.z[-1] - rr
        L = ((jet.z - y) ** 2).sum((1, 2))
        if (L.diff() > 1e-9 * L.max()).any():
            rising += 1
            assert not two_phase_grid(jet, y).holds
    assert rising >= 20


def test_wrong_two_phase_step_is_caught():
    import sympy as sp

    from mli_theory.theory.symbolic import Step, alpha, check_step, derivation

    d = derivation("two_phase")
    phase2 = d.steps[0]
    assert check_step(phase2)
    # sign of the integral of L″ flipped: L′(1) − L′(α) = −∫L″ is false
    Lp1_minus = phase2.expr
    integral = [t for t in Lp1_minus.atoms(sp.Integral)][0]
    assert not check_step(Step("sign flipped", "zero", Lp1_minus + 2 * integral))
    assert not check_step(Step("integral over [0, 1]", "zero", Lp1_minus.xreplace({integral: sp.Integral(integral.function, (integral.limits[0][0], 0, 1))})))
    assert not check_step(Step("+α", "zero", Lp1_minus + alpha))


# ----------------------------------------------------------------------------- hierarchy and tightness


def _spiral(w=2 * math.pi):
    c = lambda a: torch.cos(w * a)  # noqa: E731
    s = lambda a: torch.sin(w * a)  # noqa: E731
    fz = lambda a: torch.stack([(1 - a) * c(a), (1 - a) * s(a)], 1)  # noqa: E731
    fdz = lambda a: torch.stack([-c(a) - (1 - a) * w * s(a), -s(a) + (1 - a) * w * c(a)], 1)  # noqa: E731
    fd2z = lambda a: torch.stack([2 * w * s(a) - (1 - a) * w * w * c(a), -2 * w * c(a) - (1 - a) * w * w * s(a)], 1)  # noqa: E731
    return _jet_of(fz, fdz, fd2z, 801)


def _trapezoid_turning(jet):
    V, A = jet.dz[:, 0].numpy(), jet.d2z[:, 0].numpy()
    vv, aa, va = (V * V).sum(1), (A * A).sum(1), (V * A).sum(1)
    rate = np.sqrt(np.maximum(vv * aa - va * va, 0)) / vv
    return float(np.sum((rate[1:] + rate[:-1]) / 2 * np.diff(jet.alphas.numpy())))


def test_spiral_is_monotone_with_large_turning_and_only_two_phase_sees_it():
    jet = _spiral()
    y = torch.zeros(1, 2, dtype=D)  # the spiral ends at y: r = 0
    G = _trapezoid_turning(jet)
    assert abs(G - 7.7) < 0.05
    L = (jet.z**2).sum((1, 2))
    assert (L.diff() <= 0).all()
    gauss = SimpleNamespace(stacked=G, per_example=torch.tensor([G]), singular=False)
    ev = grid_evidence(jet, y, gauss)
    assert ev["zero_residual_gauss"][0] is False and ev["acute_tangents"][0] is False and ev["stationary_pairwise"][0] is False
    assert ev["two_phase"][0] is True  # L″ = 1 ≥ 0 everywhere: split c = 0


def test_tightness_of_half_pi():
    """Unit speed, turn by π/2 + 0.05 on a unit arc, then straight for 25, y = z(end): L rises.
    (a) reports it as failing (G > π/2); the same curve turning by exactly π/2 is monotone and (a)
    holds (the relaxed threshold G ≤ π/2)."""

    def curve(phi, ell=25.0, K=801):
        total = phi + ell
        # the rise lasts only for arc length σ ≲ 0.01: a fine grid there
        a = torch.cat([torch.linspace(0, 0.002, 201, dtype=D), torch.linspace(0.002, 1, K, dtype=D)[1:]])
        sig = a * total
        ang = torch.clamp(sig, max=phi)
        arc = sig <= phi
        fz_x = torch.where(arc, torch.sin(ang), math.sin(phi) + (sig - phi) * math.cos(phi))
        fz_y = torch.where(arc, 1 - torch.cos(ang), 1 - math.cos(phi) + (sig - phi) * math.sin(phi))
        z = torch.stack([fz_x, fz_y], 1)
        dz = total * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
        d2z = torch.where(arc[:, None], total**2 * torch.stack([-torch.sin(ang), torch.cos(ang)], 1), torch.zeros_like(dz))
        return PathJet(a, z.unsqueeze(1), dz.unsqueeze(1), d2z.unsqueeze(1))

    for phi, rises in ((HALF_PI + 0.05, True), (HALF_PI, False)):
        jet = curve(phi)
        y = jet.z[-1]
        L = ((jet.z - y) ** 2).sum((1, 2))
        assert bool((L.diff() > 1e-9).any()) is rises
        gauss = SimpleNamespace(stacked=phi, per_example=torch.tensor([phi]), singular=False)
        assert grid_evidence(jet, y, gauss)["zero_residual_gauss"][0] is (not rises)


def test_derive_states_hierarchy_and_two_phase():
    from mli_theory.theory.symbolic import render_result, result_names

    assert {"two_phase", "hierarchy"} <= set(result_names())
    text = render_result("hierarchy")
    assert "π/2" in text and "spiral" in text and "per-example" in text
    assert "c = 0" in render_result("two_phase")


def test_grid_slope_is_sound_with_true_bounds_and_only_evidence_with_sampled_ones():
    """Item 5: L′(αᵢ) ≤ 0 plus bounds on L″ between grid points. Scalar paths into y = −1 on an
    11-point grid, oscillating with period 0.1 so that every grid point sees the same phase."""
    from mli_theory.theory.evidence import grid_slope, slope_envelope

    K, w = 11, 2 * math.pi * 10
    a = torch.linspace(0, 1, K, dtype=D)
    fine = torch.linspace(0, 1, 20001, dtype=D)
    y = -torch.ones(1, 1, dtype=D)

    def parts(z, dz, d2z, t):
        return dz(t) * (z(t) + 1), dz(t) ** 2 + d2z(t) * (z(t) + 1)  # L′, L″ up to the factor 2

    def true_bounds(z, dz, d2z):
        _, lpp = parts(z, dz, d2z, fine)
        per = lpp[:-1].reshape(K - 1, -1)
        return per.min(1).values - 1e-9, per.max(1).values + 1e-9

    # a monotone path: z′ = −1 + 0.2 cos(wt) < 0 and z > y
    z1, d1, dd1 = (lambda t: (1 - t) + 0.2 * torch.sin(w * t) / w), (lambda t: -1 + 0.2 * torch.cos(w * t)), (lambda t: -0.2 * w * torch.sin(w * t))
    # a rising one: z′ = −1 + 0.5·w·sin(2wt) is −1 at every grid point but large between them
    z2, d2, dd2 = (lambda t: (1 - t) + 0.5 * torch.sin(w * t) ** 2), (lambda t: -1 + 0.5 * w * torch.sin(2 * w * t)), (lambda t: w * w * torch.cos(2 * w * t))
    assert not ((z1(fine) + 1) ** 2).diff().gt(0).any() and ((z2(fine) + 1) ** 2).diff().gt(0).any()
    for (z, dz, d2z), monotone in (((z1, d1, dd1), True), ((z2, d2, dd2), False)):
        lp, _ = parts(z, dz, d2z, a)
        assert (lp < 0).all()  # L′ ≤ 0 at every grid point in both cases
        lo, hi = true_bounds(z, dz, d2z)
        sound = bool((slope_envelope(lp, lo, hi, a.diff()) <= 0).all())
        assert sound is monotone  # with true bounds of L″ the statement decides both correctly
    # with L″ sampled at the grid points only, the rising path fools it: evidence, not proof
    jet2 = PathJet(a, z2(a).reshape(K, 1, 1), d2(a).reshape(K, 1, 1), dd2(a).reshape(K, 1, 1))
    assert grid_slope(jet2, y)[0] is True


def test_per_example_pairwise_values_do_not_depend_on_the_chunking(monkeypatch):
    """The per-example cosine matrices are batched to bound memory (K = 2001 α on 1 797 examples
    once needed 16 GiB and was killed); the batches must not change the value."""
    from mli_theory.theory import evidence

    g = torch.Generator().manual_seed(5)
    K, n, k = 9, 7, 3
    jet = PathJet(torch.linspace(0, 1, K, dtype=D), torch.randn(K, n, k, generator=g, dtype=D),
                  torch.randn(K, n, k, generator=g, dtype=D), torch.randn(K, n, k, generator=g, dtype=D))
    gauss = SimpleNamespace(stacked=1.0, per_example=torch.ones(n, dtype=D), singular=False)
    y = torch.randn(n, k, generator=g, dtype=D)
    whole = evidence.grid_evidence(jet, y, gauss)
    monkeypatch.setattr(evidence, "_PAIRWISE_ENTRIES", 2 * K * K)  # batches of 2 examples
    batched = evidence.grid_evidence(jet, y, gauss)
    assert batched["acute_tangents_per_example"] == whole["acute_tangents_per_example"]
