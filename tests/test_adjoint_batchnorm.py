"""The kinks' reverse walk through eval-mode BatchNorm (certify/adjoint.py, ``_scale_back``).

Under every statistics policy an eval-mode BatchNorm layer is y = (x − μ(α))·ρ(α) + β(α) per
channel with ρ = γ·(σ² + ε)^(−1/2); its derivative is linear in x′ with the coefficient ρ(α), so
the reverse walk passes the cotangent back as ρ·g. Checked here, against references that know
nothing of Taylor models: every cotangent the walk keeps contains autograd's gradient of the summed
loss at points of the cell, with the statistics the curve uses at that α (θT's under ``frozen``,
interpolated under ``interpolate``, torch's own train-mode re-estimation under ``recompute``); the
enclosures of L and L′ contain a 60-digit evaluation of the recompute curve (MLPs) and central
differences of torch's curve (a BatchNorm ResNet); with fixed or interpolated statistics the walk
is on by default from three ReLU layers and several times tighter, under ``recompute`` it is an
option the screening may take (the statistics' remainders enter every scale ρ)."""

from __future__ import annotations

import dataclasses
import math

import mpmath as mp
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mli_theory as mt
from mli_theory.certify.partition import enclose, plain_loss, prepare
from mli_theory.inputs.convnets import image_resnet
from mli_theory.path import BNPolicy
from mli_theory.path.batchnorm import recompute_bn_statistics

from test_adjoint_conv import gradients_at, walk_back
from test_bn_recompute_certify import _build, _reference

POLICIES = [BNPolicy.FROZEN, BNPolicy.INTERPOLATE, BNPolicy.RECOMPUTE]


def _net(kind: str) -> nn.Module:
    if kind == "mlp":  # three ReLU layers, each behind a BatchNorm1d
        return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 5), nn.BatchNorm1d(5), nn.ReLU(),
                             nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    if kind == "plain":  # BatchNorm without affine parameters, on (n, C, L) sequences, a large ε
        return nn.Sequential(nn.Linear(3, 8), nn.Unflatten(1, (2, 4)), nn.BatchNorm1d(2, affine=False, eps=0.1), nn.ReLU(),
                             nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4), nn.BatchNorm1d(4, affine=False), nn.ReLU(),
                             nn.Linear(4, 3))
    # the validation ResNet with BatchNorm after every convolution, narrow, on 5×5 images
    return nn.Sequential(nn.Unflatten(1, (1, 5, 5)), *image_resnet(1, bn=True, width=3, classes=3))


def _path(kind, loss, seed, scale, n=6):
    torch.manual_seed(seed)
    model = _net(kind).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    end = {k: v + scale * torch.randn(v.shape, generator=g, dtype=torch.float64) if v.is_floating_point() else v.clone() for k, v in start.items()}
    for k in start:  # running variances stay positive at both ends (frozen, interpolate)
        if k.endswith("running_var"):
            start[k] = start[k] + torch.rand(start[k].shape, generator=g, dtype=torch.float64)
            end[k] = end[k].abs() + 0.5
    d_in = 25 if kind == "resnet" else 3
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64) * 2
    y = torch.randn(n, 3, generator=g, dtype=torch.float64) if loss == "mse" else torch.randint(0, 3, (n,), generator=g)
    return model, start, end, x, y


def _state(prob, policy, alpha):
    """The curve's state at α: parameters interpolated; statistics as the policy moves them."""
    state = {}
    for k, s in prob.start.items():
        moving = policy == BNPolicy.INTERPOLATE or k in prob.line.param_names
        state[k] = s + alpha * (prob.end[k] - s) if moving and s.is_floating_point() else prob.end[k]
    if policy == BNPolicy.RECOMPUTE:
        state = recompute_bn_statistics(prob.line, state, prob.x, None)
    return state


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(["mlp", "plain", "resnet"]))
    policy = draw(st.sampled_from(POLICIES))
    loss = draw(st.sampled_from(["mse", "ce"]))
    seed = draw(st.integers(0, 2**20))
    scale = draw(st.sampled_from([0.05, 0.3]))
    j = draw(st.sampled_from([3, 6, 10]))
    k = draw(st.integers(0, 2**j - 1))
    return kind, policy, loss, seed, scale, (k / 2**j, (k + 1) / 2**j)


@settings(deadline=None)
@given(cases())
def test_every_cotangent_through_batchnorm_contains_the_true_gradient(case):
    """Centre, slope and radius of every cotangent the walk keeps (BatchNorm layers, the convolutions
    and Linear layers before them, ReLUs, sums) against autograd at five points of the cell, under
    the three statistics policies: a wrong scale, a dropped slope term or a missing remainder of
    the BatchNorm rule shows here, not only where it changes a verdict."""
    kind, policy, loss, seed, scale, (ca, cb) = case
    model, start, end, x, y = _path(kind, loss, seed, scale)
    line = mt.make_line(model, start, end, dtype=torch.float64)
    prob = prepare(line, mt.Dataset(x, y, loss, "t"), policy, adjoint=True)
    assert prob.adjoint, case
    try:
        keep, _ = walk_back(prob, prob.x, prob.y, prob.loss, (ca, cb))
    except RuntimeError as exc:  # a variance enclosure reaching 0 leaves no scale: nothing to check
        assert "scale" in str(exc), exc
        return
    bns = [n for n in keep if n.op == "call_module" and isinstance(prob.gm.get_submodule(n.target), nn.modules.batchnorm._BatchNorm)]
    assert bns, "no BatchNorm layer visited"
    mid, rad = (ca + cb) / 2, (cb - ca) / 2
    for f in (0.0, 0.29, 0.5, 0.83, 1.0):
        alpha = ca + f * (cb - ca)
        true = gradients_at(prob.gm, _state(prob, policy, alpha), prob.x, prob.y, prob.loss)
        for node, (c, s, r) in keep.items():
            if not bool(torch.isfinite(r).all()) or node.name not in true:  # (an identity's output)
                continue
            gt = true[node.name].unsqueeze(0)
            err = (gt - (c + s * (alpha - mid))).abs() - r
            slack = 1e-9 * (1 + gt.abs() + c.abs() + s.abs() * rad)
            assert bool((err <= slack).all()), (case, node.name, f, float(err.max()))


@settings(deadline=None)
@given(st.sampled_from(["relu", "leaky"]), st.integers(1, 3), st.sampled_from(["mse", "ce"]), st.integers(2, 5), st.integers(0, 2**20),
       st.sampled_from([1e-3, 0.3, 1.0]), st.sampled_from([0, 2, 5, 12]), st.booleans(), st.data())
def test_recompute_enclosures_through_the_reverse_walk_contain_the_60_digit_loss_and_slope(act, depth, loss, n, seed, scale, j, walk, data):
    """``walk``: the re-estimation pass walked backward too, its statistics anchored (statistics_walk)."""
    widths = [data.draw(st.integers(1, 3)) for _ in range(depth + 1)] + [data.draw(st.integers(2, 3))]
    model, start, end, x, y = _build(act, widths, seed, scale, loss, n)
    line = mt.make_line(model, start, end, dtype=torch.float64)
    prob = prepare(line, mt.Dataset(x, y, loss, "t"), BNPolicy.RECOMPUTE, adjoint=True, statistics_walk=walk)
    assert prob.adjoint and prob.statistics_walk is walk and prob.anchored is walk
    k = data.draw(st.integers(0, 2**j - 1))
    ca, cb = k / 2**j, (k + 1) / 2**j
    (dlo, dhi), (llo, lhi) = (t[0] for t in enclose(prob, [ca], [cb]))
    for f in (0.0, data.draw(st.floats(0, 1)), 1.0):
        L, dL = _reference(model, act, start, end, x, y, loss, ca + f * (cb - ca))
        assert mp.mpf(llo) <= L <= mp.mpf(lhi), (float(L), llo, lhi)
        assert mp.mpf(dlo) <= dL <= mp.mpf(dhi), (float(dL), dlo, dhi)


def _trained_like_resnet(seed=3):
    """The digits ResNet with BatchNorm, θT a small move from its initialisation, 16 examples."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), *image_resnet(1, bn=True, width=4)).double().eval()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in init.items()}
    data = mt.Dataset(torch.randn(16, 64, dtype=torch.float64), torch.arange(16) % 10, "ce", "t")
    return mt.make_line(model, init, final, dtype=torch.float64), data


@pytest.mark.parametrize("policy", [BNPolicy.FROZEN, BNPolicy.INTERPOLATE])
def test_with_fixed_or_interpolated_statistics_the_walk_is_the_default_and_several_times_tighter(policy):
    line, data = _trained_like_resnet()
    prob = prepare(line, data, policy)
    assert prob.adjoint  # five ReLU layers behind BatchNorm: the reverse walk by default
    cells = ([0.0, 0.5, 1 - 2.0**-6], [2.0**-6, 0.5 + 2.0**-6, 1.0])
    walked = enclose(prob, *cells)[0]
    forward = enclose(dataclasses.replace(prob, adjoint=False), *cells)[0]
    for (alo, ahi), (flo, fhi), a, b in zip(walked, forward, *cells):
        for t in (a + 0.25 * (b - a), a + 0.75 * (b - a)):
            fd = (plain_loss(prob, t + 1e-6) - plain_loss(prob, t - 1e-6)) / 2e-6
            assert alo - 1e-6 <= fd <= ahi + 1e-6 and flo - 1e-6 <= fd <= fhi + 1e-6
    ratios = [(ahi - alo) / (fhi - flo) for (alo, ahi), (flo, fhi) in zip(walked, forward)]
    assert max(ratios) < 0.3, ratios  # measured 0.08–0.18


def test_under_recompute_the_walk_is_an_option_the_screening_may_take_and_stays_sound():
    """Re-estimated statistics' remainders enter every scale ρ, which the walk multiplies into the
    cotangent at each layer: not the default there (prepare), but sound when taken."""
    line, data = _trained_like_resnet()
    prob = prepare(line, data, BNPolicy.RECOMPUTE)
    assert prob.statistics and not prob.adjoint and prob.adjoint_optional
    forced = prepare(line, data, BNPolicy.RECOMPUTE, adjoint=True)
    assert forced.adjoint
    cells = ([0.0, 0.5, 1 - 2.0**-10], [2.0**-10, 0.5 + 2.0**-10, 1.0])
    for (lo, hi), a, b in zip(enclose(forced, *cells)[0], *cells):
        assert math.isfinite(lo) and math.isfinite(hi)
        for t in (a + 0.25 * (b - a), a + 0.75 * (b - a)):
            fd = (plain_loss(prob, t + 1e-7) - plain_loss(prob, t - 1e-7)) / 2e-7
            assert lo - 1e-5 <= fd <= hi + 1e-5


def test_batchnorm_in_train_mode_or_without_statistics_has_no_reverse_rule():
    from mli_theory.certify.adjoint import _kind
    from mli_theory.certify.partition import Unsupported

    model = _net("mlp").double()
    model[1].running_mean, model[1].running_var = None, None  # normalises with the batch's statistics even in eval mode
    model[4].track_running_stats = False  # torch still reads the stored statistics in eval mode: a scale
    gm = torch.fx.symbolic_trace(model.eval())
    kinds = {n.target: _kind(gm, n) for n in gm.graph.nodes if n.op == "call_module"}
    assert kinds["1"] is None and kinds["4"] == "scale" and kinds["7"] == "scale"
    model.train()
    gm = torch.fx.symbolic_trace(model)
    assert all(_kind(gm, n) is None for n in gm.graph.nodes if n.op == "call_module" and n.target in ("1", "4", "7"))
    # such a layer is refused with its reason under every policy, never a traceback
    model.eval()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    end = {k: v + 0.1 if v.is_floating_point() else v for k, v in start.items()}
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    for policy in POLICIES:
        with pytest.raises(Unsupported, match="BatchNorm1d"):
            prob = prepare(mt.make_line(model, start, end, dtype=torch.float64), mt.Dataset(x, y, "mse", "t"), policy, adjoint=True)
            enclose(prob, [0.25], [0.5])
