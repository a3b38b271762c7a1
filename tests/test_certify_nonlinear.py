"""Certified verdicts for nonlinear networks (enclosure bisection): closed forms, planted
overshoots, agreement with the exact deep-linear decision, the CLI contract."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mli_theory as mt
from mli_theory.certify import certify
from mli_theory.certify.partition import Unsupported, decide_by_enclosures, plain_loss, prepare
from mli_theory.exact import decide, mse_loss_polynomial, output_polynomial
from mli_theory.path import BNPolicy
from mli_theory.testing.strategies import build_problem, deep_linear_problems, mlp_problems


def _line(p):
    return mt.make_line(p.model, p.init, p.final, dtype=torch.float64)


def _mlp(widths, act=nn.ReLU, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()


# ----------------------------------------------------------------------------- closed form: a quadratic


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, nn.GELU])
@pytest.mark.parametrize("target_shift", [0.0, 0.6])
def test_only_the_last_layer_moves_gives_the_quadratic_verdict(act, target_shift):
    """With only the last layer moving, z is affine in α and the MSE is a convex quadratic:
    monotone on [0, 1] iff L′(1) ≤ 0, and the largest rise is L(1) − min L."""
    model = _mlp([3, 5, 2], act, seed=1)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        feats = model[:-1](x)
    y = torch.randn(12, 2, generator=g, dtype=torch.float64)
    # least-squares last layer θ*, then θT = θ* shifted away from the optimum by target_shift
    a = torch.cat([feats, torch.ones(12, 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(a, y).solution
    final = dict(init)
    final["2.weight"] = sol[:-1].T.contiguous() + target_shift
    final["2.bias"] = sol[-1].contiguous() + target_shift
    line = mt.make_line(model, init, final, dtype=torch.float64)
    data = mt.Dataset(x, y, "mse", "t")
    # closed form of the quadratic from three exact-enough evaluations
    prob = prepare(line, data, BNPolicy.FROZEN)
    l0, lh, l1 = (Fraction(plain_loss(prob, t)) for t in (0.0, 0.5, 1.0))
    qa = 2 * (l0 - 2 * lh + l1)
    qb = l1 - l0 - qa
    lprime1 = 2 * qa + qb
    v = decide_by_enclosures(line, data, tol=0.0)
    if lprime1 < -1e-9:
        assert v.status == "monotone" and v.rise_bound == 0.0
    elif lprime1 > 1e-9:
        assert v.status == "non_monotone"
        amin = -qb / (2 * qa)
        true_max_rise = float(l1 - (qa * amin * amin + qb * amin + l0))
        lo, hi = v.where
        assert 0 <= lo < hi <= 1 and 0 < v.rise <= true_max_rise * (1 + 1e-9)
        assert v.rise_lower <= v.rise * (1 + 1e-9)


# ----------------------------------------------------------------------------- planted overshoots


def _planted(act: str, loss: str, eps: float = 0.02):
    """θT placed just past the minimum of L along the ray from θ0 through a trained θ*.

    Labels are partly flipped for ``ce`` so the data are not separable and the ray has a minimum.
    Returns the line, the data and the α of the minimum along the line (≈ 1 − eps)."""
    p = build_problem([4, 8, 3], 24, seed=3, endpoint="trained", activation=act, loss=loss, steps=400)
    data = p.data
    if loss == "ce":
        y = data.y.clone()
        y[::3] = (y[::3] + 1) % 3
        data = mt.Dataset(data.x, y, "ce", "flipped")
    ray = mt.make_line(p.model, p.init, p.final, dtype=torch.float64)
    prob = prepare(ray, data, BNPolicy.FROZEN)
    scales = [1 + i / 50 for i in range(101)]  # s ∈ [1, 3]
    s_min = min(scales, key=lambda s: plain_loss(prob, s))
    final = {k: (p.init[k] + s_min * (1 + eps) * (v - p.init[k]) if v.is_floating_point() else v) for k, v in p.final.items()}
    return mt.make_line(p.model, p.init, final, dtype=torch.float64), data, 1 / (1 + eps)


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_planted_overshoot_is_proven_non_monotone_where_a_grid_misses_it(act, loss):
    """θT just past the minimum along the line: the rise sits in the last 2% of the path, where a
    50-point grid has one interval; the certificate must find it and its witness must hold."""
    line, data, at = _planted(act, loss)
    prob = prepare(line, data, BNPolicy.FROZEN)
    assert plain_loss(prob, 1.0) > plain_loss(prob, at)  # the plant worked
    v = decide_by_enclosures(line, data, tol=0.0)
    assert v.status == "non_monotone", v.reason
    a, b = v.where
    assert b > 0.9 and v.rise > 0 and v.rise_lower > 0
    assert plain_loss(prob, b) - plain_loss(prob, a) == pytest.approx(v.rise, rel=1e-9)


def test_a_rise_seen_while_screening_is_proven_on_all_the_data_from_its_own_cells(monkeypatch):
    """n > 512 examples: a subsample chooses the cells first. When it shows a rise, the full data
    are enclosed on the cells of that run alone, and the witness is re-checked on all the data."""
    import importlib

    part = importlib.import_module("mli_theory.certify.partition")

    line, data, at = _planted("relu", "mse")
    reps = 600 // data.x.shape[0] + 1  # repeated examples: the same mean loss, n > 2·SCREEN_EXAMPLES
    big = mt.Dataset(data.x.repeat(reps, 1), data.y.repeat(reps, 1), "mse", "repeated")
    assert big.x.shape[0] > 2 * part.SCREEN_EXAMPLES
    calls = []
    real = part._confirm_rise

    def spy(problem, run, *args):
        calls.append((problem.x.shape[0], list(run)))
        return real(problem, run, *args)

    monkeypatch.setattr(part, "_confirm_rise", spy)
    v = decide_by_enclosures(line, big, tol=0.0)
    assert v.status == "non_monotone", v.reason
    assert len(calls) == 1 and calls[0][0] == big.x.shape[0]
    run = calls[0][1]
    assert run and all(c.b - c.a > 0 for c in v.partition) and v.cells == len(run)  # only the run's cells
    a, b = v.where
    assert run[0][0] <= a < b <= run[-1][1]
    prob = prepare(line, big, BNPolicy.FROZEN)
    assert plain_loss(prob, b) - plain_loss(prob, a) == pytest.approx(v.rise, rel=1e-9) and v.rise >= v.rise_lower > 0


def test_a_screened_run_too_wide_for_all_the_data_is_halved_until_it_proves_the_rise():
    """L(α) = (α − 0.8)² (a 1×1 linear model, MSE): the single cell [0.5, 1] proves no rise (L′ < 0
    at its midpoint), its right half [0.75, 1] proves one of 0.0375 > T = 0.01, re-checked on the
    measured loss. The verdict counts every cell enclosed."""
    import importlib

    from mli_theory.certify.validation import Reference

    part = importlib.import_module("mli_theory.certify.partition")
    model = torch.nn.Linear(1, 1, bias=False).double()
    start = {"weight": torch.tensor([[-0.8]], dtype=torch.float64)}
    end = {"weight": torch.tensor([[0.2]], dtype=torch.float64)}
    line = mt.make_line(model, start, end, dtype=torch.float64)
    data = mt.Dataset(torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64), "mse", "quadratic")
    prob = prepare(line, data, BNPolicy.FROZEN)
    prob.reference = Reference(line, data, BNPolicy.FROZEN, None)
    assert part._witness(prob, [part.CellBound(0.5, 1.0, *part.enclose_cells(prob, [0.5], [1.0])[0][0])], 0.01, 1, None) is None
    v = part._confirm_rise(prob, [(0.5, 1.0)], 0.01, None, 16)
    assert v is not None and v.status == "non_monotone" and v.cells == 1 + 2
    a, b = v.where
    assert (a, b) == (0.75, 1.0) and v.rise_lower > 0.01
    assert v.rise == pytest.approx(0.0375, rel=1e-9)
    # no refinement without a rise to find: the rise above T = 0.05 does not exist
    assert part._confirm_rise(prob, [(0.5, 1.0)], 0.05, None, 16) is None


def test_a_run_of_cells_never_spans_a_gap():
    from mli_theory.certify.partition import CellBound, _best_run

    cells = [CellBound(0.0, 0.25, 1.0, 2.0), CellBound(0.5, 0.75, 1.0, 2.0)]
    total, i, j = _best_run(cells)
    assert (i, j) == (0, 0) and total == Fraction(1, 4)


def test_trained_relu_net_is_certified_monotone_at_a_tolerance():
    p = build_problem([4, 16, 16, 3], 32, seed=5, endpoint="trained", activation="relu", loss="ce", steps=200)
    v = decide_by_enclosures(_line(p), p.data, tol=1e-3)
    assert v.status in ("monotone", "non_monotone"), v.reason
    if v.status == "monotone":
        assert v.rise_bound <= 1e-3 and v.undecided == ()


# ----------------------------------------------------------------------------- agreement with the exact method


def _exact(line, data, tol):
    z = output_polynomial(line.start, line.end, line.structure.linear, data.x, None)
    return decide(mse_loss_polynomial(z, data.y, None), tol, None)


@settings(max_examples=15)
@given(deep_linear_problems(max_depth=3, max_width=4, max_n=8), st.sampled_from([0.0, 1e-3]))
def test_enclosures_never_contradict_the_exact_deep_linear_decision(p, tol):
    line = _line(p)
    exact = _exact(line, p.data, tol)
    v = decide_by_enclosures(line, p.data, tol=tol, deadline=mt_deadline(10))
    if v.status != "unknown" and exact.status != "unknown":
        assert v.status == exact.status, (p.label, v.reason, exact.reason)
    if v.status == "monotone":
        assert exact.status != "non_monotone"
    if v.status == "non_monotone":
        assert exact.status != "monotone" and v.rise > tol


def mt_deadline(seconds):
    from mli_theory.exact import deadline_after

    return deadline_after(seconds)


@settings(max_examples=12)
@given(mlp_problems(max_depth=3, max_width=5, max_n=8, batchnorm=False, losses=("mse", "ce")))
def test_witnesses_are_rechecked_and_rise_bounds_hold_on_a_dense_grid(p):
    line = _line(p)
    tol = 1e-3
    v = decide_by_enclosures(line, p.data, tol=tol, deadline=mt_deadline(10))
    prob = prepare(line, p.data, BNPolicy.FROZEN)
    grid = [i / 200 for i in range(201)]
    losses = [plain_loss(prob, a) for a in grid]
    best = 0.0
    low = losses[0]
    for L in losses:
        low = min(low, L)
        best = max(best, L - low)
    if v.status == "monotone":
        assert best <= v.rise_bound + 1e-9 and v.rise_bound <= tol, p.label
    if v.status == "non_monotone":
        a, b = v.where
        assert plain_loss(prob, b) - plain_loss(prob, a) > tol
    if v.rise_bound is not None:
        assert best <= v.rise_bound + 1e-9, p.label


# ----------------------------------------------------------------------------- what is refused


def test_batchnorm_recompute_in_minibatches_is_refused_with_the_reason():
    p = build_problem([3, 4, 2], 6, seed=0, endpoint="trained", activation="relu", batchnorm=True)
    with pytest.raises(Unsupported, match="minibatches of 3"):
        decide_by_enclosures(_line(p), p.data, bn=BNPolicy.RECOMPUTE, batch_size=3)
    out = certify(_line(p), p.data, bn="recompute", batch_size=3)
    assert out.certificate.status == "unknown" and "recompute" in out.certificate.reason
    # one batch of all the data (the default) is enclosed (tests/test_bn_recompute_certify.py)
    full = decide_by_enclosures(_line(p), p.data, bn=BNPolicy.RECOMPUTE, tol=1e-3, deadline=mt_deadline(20))
    assert full.cells >= 8
    v = decide_by_enclosures(_line(p), p.data, bn=BNPolicy.FROZEN, tol=1e-3, deadline=mt_deadline(20))
    assert v.cells >= 8


def test_undefined_outputs_stop_the_bisection_with_a_reason():
    """A random 'final' BatchNorm state has negative running variances: NaN outputs, never a verdict."""
    p = build_problem([3, 4, 2], 6, seed=0, endpoint="random", activation="relu", batchnorm=True)
    v = decide_by_enclosures(_line(p), p.data, bn=BNPolicy.FROZEN, tol=1e-3, deadline=mt_deadline(20))
    assert v.status == "unknown" and "not finite" in v.reason and v.cells < 100


def test_an_operation_without_a_rule_names_the_layer():
    model = nn.Sequential(nn.Linear(3, 4), nn.Mish(), nn.Linear(4, 1)).double()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.1 for k, v in init.items()}
    data = mt.Dataset(torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64), "mse", "t")
    out = certify(mt.make_line(model, init, final, dtype=torch.float64), data)
    assert out.certificate.status == "unknown" and "Mish" in out.certificate.reason


def test_budget_exhaustion_reports_the_undecided_intervals():
    p = build_problem([4, 16, 16, 3], 32, seed=5, endpoint="trained", activation="relu", loss="ce", steps=200)
    out = certify(_line(p), p.data, tol=0.0, budget_s=0.0)
    c = out.certificate
    assert c.status == "unknown" and c.undecided and all(a < b for a, b in c.undecided)


# ----------------------------------------------------------------------------- the CLI contract


def test_cli_check_certifies_an_mlp(tmp_path):
    from test_cli import cli

    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    torch.save(model.state_dict(), tmp_path / "a.pt")
    torch.save({k: v + 0.3 * torch.randn_like(v) for k, v in model.state_dict().items()}, tmp_path / "b.pt")
    p = cli("check", "--arch", "mlp:4-8-3:tanh", "--init", str(tmp_path / "a.pt"), "--final", str(tmp_path / "b.pt"),
            "--data", "sklearn:iris", "--loss", "ce", "--certify", "--tol", "1e-3", "--json")
    assert p.returncode == 0, p.stderr
    c = json.loads(p.stdout)["certificate"]
    assert c["method"] == "enclosure_bisection" and {"rise_bound", "cells", "undecided"} <= set(c)
    assert c["status"] in ("monotone", "non_monotone")
    t = cli("check", "--arch", "mlp:4-8-3:tanh", "--init", str(tmp_path / "a.pt"), "--final", str(tmp_path / "b.pt"),
            "--data", "sklearn:iris", "--loss", "ce", "--certify", "--tol", "1e-3")
    # a partition prints its cells; a rise proven from two point enclosures alone (0 cells) says so
    assert "enclosure_bisection" in t.stdout
    assert ("cells]" in t.stdout) if c["cells"] else ("point enclosures" in t.stdout and c["status"] == "non_monotone")


class _FunctionalNet(nn.Module):
    """A user model written with functional calls, shape reads and a residual block."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.bn = nn.BatchNorm2d(3)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.c1(x))
        h = torch.tanh(h + self.bn(self.c2(h)))
        h = torch.nn.functional.avg_pool2d(h, 2)
        h = h.mean((2, 3))
        return self.out(h.view(x.shape[0], -1))


def test_a_functional_cnn_is_enclosed_and_contains_finite_differences():
    torch.manual_seed(4)
    model = _FunctionalNet().double().eval()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: (v + 0.2 * torch.randn_like(v) if k.endswith(("weight", "bias")) else v) for k, v in init.items()}
    data = mt.Dataset(torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0]), "ce", "t")
    line = mt.make_line(model, init, final, dtype=torch.float64)
    prob = prepare(line, data, BNPolicy.FROZEN)
    from mli_theory.certify.partition import enclose

    a = [0.0, 0.25, 0.5, 0.875]
    b = [0.125, 0.3125, 0.625, 1.0]
    dl, ll = enclose(prob, a, b)
    for (lo, hi), (llo, lhi), ai, bi in zip(dl, ll, a, b):
        for t in (ai + (bi - ai) * f for f in (0.1, 0.5, 0.9)):
            eps = 1e-6
            fd = (plain_loss(prob, t + eps) - plain_loss(prob, t - eps)) / (2 * eps)
            assert lo - 1e-6 <= fd <= hi + 1e-6
            assert llo <= plain_loss(prob, t) <= lhi
    v = decide_by_enclosures(line, data, tol=1e-3, bn=BNPolicy.FROZEN, deadline=mt_deadline(20))
    assert v.status in ("monotone", "non_monotone"), v.reason


def test_the_decision_is_the_same_on_every_device(device):
    """Cells are batched on the line's device (CUDA when asked); the verdict does not depend on it."""
    line, data, _ = _planted("relu", "mse")
    cpu = decide_by_enclosures(line, data, tol=0.0)
    here = mt.make_line(line.shell, line.start, line.end, device=device, dtype=torch.float64)
    moved = mt.Dataset(data.x.to(device), data.y.to(device), data.loss, data.name)
    v = decide_by_enclosures(here, moved, tol=0.0)
    assert v.status == cpu.status == "non_monotone"
    assert v.where[1] > 0.9 and v.rise > 0  # rounding may pick a different (equally valid) partition


@pytest.mark.parametrize("seed", [0, 1])
def test_interpolated_batchnorm_statistics_are_enclosed(seed):
    """bn=interpolate: μ(α), σ²(α) affine in α, the scale (σ² + ε)^(−1/2) enclosed like an activation."""
    p = build_problem([3, 5, 4, 2], 10, seed=seed, endpoint="trained", activation="tanh", batchnorm=True, loss="ce", steps=100)
    final = dict(p.final)
    for k in final:
        if k.endswith("running_var"):
            final[k] = final[k] * 1.7 + 0.1
        if k.endswith("running_mean"):
            final[k] = final[k] + 0.3
    line = mt.make_line(p.model, p.init, final, dtype=torch.float64)
    prob = prepare(line, p.data, BNPolicy.INTERPOLATE)
    from mli_theory.certify.partition import enclose

    a, b = [0.0, 0.25, 0.5, 0.75], [0.25, 0.5, 0.75, 1.0]
    dl, ll = enclose(prob, a, b)
    for (lo, hi), (llo, lhi), ai, bi in zip(dl, ll, a, b):
        for t in (ai + (bi - ai) * f for f in (0.0, 0.3, 0.7, 1.0)):
            eps = 1e-6
            fd = (plain_loss(prob, min(t + eps, 1)) - plain_loss(prob, max(t - eps, 0))) / (min(t + eps, 1) - max(t - eps, 0))
            assert lo - 1e-5 <= fd <= hi + 1e-5
            assert llo <= plain_loss(prob, t) <= lhi


def test_a_budget_running_out_mid_round_keeps_a_proven_bound(monkeypatch):
    """Split cells stay in the partition until both halves are enclosed, so the bound survives."""
    from mli_theory.certify import partition
    from mli_theory.exact import BudgetExceeded

    line, data, _ = _planted("tanh", "mse", 0.02)
    real, calls = partition.enclose_cells, []

    def flaky(problem, a, b, deadline=None):
        if list(a) == list(b):  # the validation's degenerate cells, before the bisection
            return real(problem, a, b, deadline)
        calls.append(len(a))
        if len(calls) == 3:
            raise BudgetExceeded("out of time")
        return real(problem, a, b, deadline)

    monkeypatch.setattr(partition, "enclose_cells", flaky)
    v = partition.decide_by_enclosures(line, data, tol=0.0, cells_per_batch=4)
    assert v.status == "unknown" and v.rise_bound is not None and v.undecided
    cells = v.partition
    assert cells[0].a == 0.0 and cells[-1].b == 1.0 and all(x.b == y.a for x, y in zip(cells, cells[1:]))
