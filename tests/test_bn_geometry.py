"""Issue 16, item 2: with BatchNorm the jets differentiate the curve whose loss is measured.

Under ``recompute`` the statistics are re-estimated at each α; the Taylor mode runs the
re-estimation pass on jets (mli_theory.geometry.statistics). References: (1) an independent,
hand-written differentiable re-estimation for a Linear/BatchNorm1d/tanh chain, differentiated twice
by ``torch.func.jvp``; (2) central finite differences of the evaluated curve itself (the outputs
``check`` would compute at α ± h) for a convolutional net with BatchNorm2d and a residual add.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.nn import functional as F

from mli_theory import Dataset, make_line
from mli_theory.geometry import path_jet
from mli_theory.path import BNPolicy, recompute_batches, recompute_bn_statistics
from mli_theory.theory import evaluate_conditions

D = torch.float64


def _randomise_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2))


class _Block(nn.Module):
    """Conv–BN–tanh with a residual add, then pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.bn1(self.stem(x)))
        h = h + torch.tanh(self.bn2(self.conv(h)))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


def _line(factory, seed=0):
    torch.manual_seed(seed)
    m0, m1 = _randomise_bn(factory()), _randomise_bn(factory())
    return make_line(factory(), m0.state_dict(), m1.state_dict(), dtype=D)


# ----------------------------------------------------------------------------- reference (1)


def _reference_mlp(line, x, alpha, bn, batch_size):
    """(z, z′, z″) of the measured curve of the _mlp chain, by nested jvp through a hand-written
    re-estimation (batch means, biased variance for normalising, unbiased for the running
    variance, equal-weight average over minibatches)."""
    layers = list(line.shell)

    def theta(a):
        return {k: (1 - a) * line.start[k] + a * line.end[k] for k in line.start if line.start[k].is_floating_point()}

    def run(p, h, stats):
        """Forward pass; BatchNorm with ``stats[i]`` = (mean, var) or batch statistics (recorded)."""
        seen = []
        for i, m in enumerate(layers):
            if isinstance(m, nn.Linear):
                h = h @ p[f"{i}.weight"].T + p[f"{i}.bias"]
            elif isinstance(m, nn.BatchNorm1d):
                if stats is None:
                    mu, v = h.mean(0), h.var(0, unbiased=False)
                    seen.append((mu, v * h.shape[0] / (h.shape[0] - 1)))
                else:
                    mu, v = stats[len(seen)]
                    seen.append(None)
                h = (h - mu) / torch.sqrt(v + m.eps) * p[f"{i}.weight"] + p[f"{i}.bias"]
            else:
                h = torch.tanh(h)
        return h, seen

    bn_idx = [i for i, m in enumerate(layers) if isinstance(m, nn.BatchNorm1d)]

    def z_of(a):
        p = theta(a)
        if bn == "frozen":
            stats = [(line.end[f"{i}.running_mean"], line.end[f"{i}.running_var"]) for i in bn_idx]
        elif bn == "interpolate":
            stats = [(p[f"{i}.running_mean"], p[f"{i}.running_var"]) for i in bn_idx]
        else:
            per = [run(p, x[sl], None)[1] for sl in recompute_batches(x.shape[0], batch_size)]
            stats = [
                (sum(b[j][0] for b in per) / len(per), sum(b[j][1] for b in per) / len(per)) for j in range(len(bn_idx))
            ]
        return run(p, x, stats)[0]

    def first(a):
        return jvp(z_of, (a,), (torch.ones_like(a),))

    a = torch.tensor(alpha, dtype=D)
    (z, dz), (_, d2z) = jvp(first, (a,), (torch.ones_like(a),))
    return z, dz, d2z


@pytest.mark.parametrize("bn", ["recompute", "interpolate", "frozen"])
@pytest.mark.parametrize("batch_size", [None, 8])
def test_jets_equal_differentiable_reestimation(bn, batch_size):
    line = _line(_mlp)
    torch.manual_seed(1)
    x = torch.randn(21, 3, dtype=D)  # 21 = 8 + 8 + 5 minibatches
    data = Dataset(x, torch.randn(21, 2, dtype=D), "mse", "t")
    alphas = [0.0, 0.3, 1.0]
    jet = path_jet(line, data, alphas, bn=bn, batch_size=batch_size, method="taylor")
    assert jet.off_curve is None
    for i, a in enumerate(alphas):
        z, dz, d2z = _reference_mlp(line, x, a, bn, batch_size)
        torch.testing.assert_close(jet.z[i], z, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(jet.dz[i], dz, rtol=1e-10, atol=1e-11)
        torch.testing.assert_close(jet.d2z[i], d2z, rtol=1e-9, atol=1e-10)


def test_reestimated_statistics_match_torch():
    """The jets' values of the statistics are torch's own re-estimation (same minibatches)."""
    from mli_theory.geometry.jets import _graph, _ParamJets
    from mli_theory.geometry.statistics import statistics_jets

    line = _line(_mlp)
    x = torch.randn(19, 3, dtype=D)
    data = Dataset(x, torch.zeros(19, 2, dtype=D), "mse", "t")
    moving = frozenset(k for k in line.start if line.start[k].is_floating_point())
    held = {k: v for k, v in line.end.items() if not v.is_floating_point()}
    got = statistics_jets(line, _graph(line), _ParamJets(line, held, moving, 0.4), data, 6)
    want = recompute_bn_statistics(line, line.at(0.4), x, 6)
    assert set(got) == {"1.running_mean", "1.running_var", "4.running_mean", "4.running_var"}
    for k, j in got.items():
        torch.testing.assert_close(j.v, want[k], rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------- reference (2)


def _measured_z(line, x, alpha, bn, batch_size):
    """The outputs ``check`` evaluates at α: statistics by the policy, model in eval mode."""
    state = line.at(alpha, BNPolicy(bn))
    if bn == "recompute":
        state = recompute_bn_statistics(line, state, x, batch_size)
    with torch.no_grad():
        return functional_call(line.shell, state, (x,)).flatten(1)


@pytest.mark.parametrize("bn", ["recompute", "interpolate", "frozen"])
def test_conv_residual_jets_match_finite_differences(bn):
    line = _line(_Block)
    torch.manual_seed(2)
    x = torch.randn(10, 1, 5, 5, dtype=D)
    data = Dataset(x, torch.randn(10, 3, dtype=D), "mse", "img")
    a, h = 0.45, 1e-3
    jet = path_jet(line, data, [a], bn=bn, batch_size=4, method="taylor")
    assert jet.off_curve is None
    zm, z0, zp = (_measured_z(line, x, a + s, bn, 4) for s in (-h, 0.0, h))
    fd1, fd2 = (zp - zm) / (2 * h), (zp - 2 * z0 + zm) / h**2
    torch.testing.assert_close(jet.z[0], z0, rtol=1e-11, atol=1e-12)
    assert float((jet.dz[0] - fd1).norm() / fd1.norm()) < 1e-5
    assert float((jet.d2z[0] - fd2).norm() / fd2.norm()) < 1e-4


def test_holding_statistics_fixed_is_another_curve():
    """The former behaviour (statistics held fixed at α) is far from the measured curve's derivative,
    and nested forward mode, which can only do that, says so instead of answering silently."""
    line = _line(_mlp)
    x = torch.randn(16, 3, dtype=D)
    data = Dataset(x, torch.randn(16, 2, dtype=D), "mse", "t")
    taylor = path_jet(line, data, [0.3], bn="recompute", method="taylor")
    nested = path_jet(line, data, [0.3], bn="recompute", method="nested_jvp")
    assert taylor.off_curve is None and nested.off_curve is not None
    assert float((nested.dz - taylor.dz).norm() / taylor.dz.norm()) > 1e-2
    frozen_nested = path_jet(line, data, [0.3], bn="frozen", method="nested_jvp")
    assert frozen_nested.off_curve is None


def test_active_dropout_makes_reestimation_random():
    factory = lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Tanh(), nn.Linear(4, 2))  # noqa: E731
    line = _line(factory)
    data = Dataset(torch.randn(8, 3, dtype=D), torch.randn(8, 2, dtype=D), "mse", "t")
    jet = path_jet(line, data, [0.5], bn="recompute", method="taylor")
    assert jet.off_curve is not None and "Dropout" in jet.off_curve
    assert path_jet(line, data, [0.5], bn="interpolate", method="taylor").off_curve is None


def test_conditions_on_batchnorm_follow_the_measured_curve():
    """Applicable under every policy when the jets follow the statistics; not applicable, with the
    reason, when they cannot (an untraceable model runs nested forward mode)."""
    line = _line(_mlp)
    data = Dataset(torch.randn(12, 3, dtype=D), torch.randn(12, 2, dtype=D), "mse", "t")
    for bn in ("recompute", "interpolate", "frozen"):
        conds = evaluate_conditions(line, data, alphas=5, bn=bn, max_alphas=9, rtol=0.5).conditions
        assert conds and all(c.applicable for c in conds), bn

    hooked = _mlp()
    hooked.register_forward_hook(lambda m, i, o: o)
    torch.manual_seed(0)
    m0, m1 = _randomise_bn(_mlp()), _randomise_bn(_mlp())
    line = make_line(hooked, m0.state_dict(), m1.state_dict(), dtype=D)
    conds = evaluate_conditions(line, data, alphas=5, bn="recompute", max_alphas=9, rtol=0.5).conditions
    assert conds and all(c.applicable is False and c.holds is None and c.reason for c in conds)
    # a traceable path whose jets could not follow the statistics: that hypothesis is named
    from mli_theory.path.structure import analyse
    from mli_theory.theory.hypotheses import applicability

    smooth = analyse(_mlp())
    assert applicability("acute_tangents", smooth).applicable
    app = applicability("acute_tangents", smooth, off_curve="BatchNorm statistics held fixed at each α: because")
    assert not app.applicable and "another curve" in app.reason and "held fixed" in app.reason
