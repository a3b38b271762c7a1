"""What a model computes is decided by tracing it: no class name or spec string can fool a certificate."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mli_theory import check
from mli_theory.certify import certify
from mli_theory.geometry import path_jet, taylor_supported
from mli_theory.inputs import Dataset
from mli_theory.path import PathKind, analyse, loss_curve, make_line, max_rise


class Squared(nn.Sequential):
    """A Sequential subclass whose forward squares the chain's output: not polynomial of degree L."""

    def forward(self, x):
        return super().forward(x) ** 2


class CallOverride(nn.Sequential):
    def __call__(self, x):
        return super().__call__(x) * 3.0


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 1, bias=False)

    def forward(self, x):
        return self.a(x) if float(x.sum()) > 0 else -self.a(x)


class Wrapped(nn.Module):
    """A plain chain inside a wrapper module: still a chain of affine maps (degree 2)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))

    def forward(self, x):
        return self.body(x)


def _chain():
    return nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))


def _with_hook():
    m = _chain()
    m[1].register_forward_hook(lambda mod, inp, out: out**2)
    return m


def _with_pre_hook():
    m = _chain()
    m[0].register_forward_pre_hook(lambda mod, inp: (inp[0] ** 3,))
    return m


def _squared():
    return Squared(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))


def _call_override():
    return CallOverride(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))


STRUCTURES = [
    ("chain", _chain, PathKind.POLYNOMIAL),
    ("wrapped chain", Wrapped, PathKind.POLYNOMIAL),
    ("linear with bias", lambda: nn.Sequential(nn.Linear(3, 2)), PathKind.POLYNOMIAL),
    ("tanh mlp", lambda: nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), PathKind.SMOOTH),
    ("relu mlp", lambda: nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), PathKind.PIECEWISE_SMOOTH),
    ("subclass forward", _squared, PathKind.SMOOTH),
    ("forward hook", _with_hook, PathKind.UNKNOWN),
    ("forward pre-hook", _with_pre_hook, PathKind.UNKNOWN),
    ("__call__ override", _call_override, PathKind.UNKNOWN),
    ("untraceable", Branchy, PathKind.UNKNOWN),
    ("unknown op", lambda: nn.Sequential(nn.Linear(2, 2), nn.LPPool1d(2, 2)), PathKind.UNKNOWN),
    # Hardswish is in the smoothness table (kinks at ±3); Softplus's threshold is a jump in value
    ("hardswish mlp", lambda: nn.Sequential(nn.Linear(2, 2), nn.Hardswish()), PathKind.PIECEWISE_SMOOTH),
    ("softplus threshold", lambda: nn.Sequential(nn.Linear(2, 2), nn.Softplus(threshold=5)), PathKind.UNKNOWN),
]


@pytest.mark.parametrize("label,factory,kind", STRUCTURES, ids=[s[0] for s in STRUCTURES])
def test_structure_is_traced(label, factory, kind):
    s = analyse(factory())
    assert s.kind == kind, (label, s.reason)
    assert s.reason
    if kind == PathKind.POLYNOMIAL:
        assert s.degree == len(s.linear) >= 1


def test_global_hooks_are_refused():
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
    try:
        assert analyse(_chain()).kind == PathKind.UNKNOWN
    finally:
        handle.remove()
    assert analyse(_chain()).kind == PathKind.POLYNOMIAL


def _endpoints(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    init = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in model.state_dict().items()}
    final = {k: v + 2.0 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in init.items()}
    return init, final


def _data(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return Dataset(x, torch.randn(n, 1, generator=g, dtype=torch.float64), "mse", "rand")


@pytest.mark.parametrize("factory", [_squared, _with_hook, _with_pre_hook, _call_override], ids=["subclass", "hook", "pre-hook", "__call__"])
def test_no_exact_certificate_for_what_is_not_a_chain(factory):
    """The exact method must never certify W2·W1·x for a model that computes something else."""
    data = _data()
    for seed in range(8):
        model = factory()
        init, final = _endpoints(model, seed)
        line = make_line(model, init, final, dtype=torch.float64)
        outcome = certify(line, data, budget_s=10)
        assert outcome.certificate.method != "exact_polynomial"
        assert outcome.certificate.status == "unknown"
        # the one-pass jets either follow what the model computes (the subclass's own forward is
        # traced) or refuse it (hooks and __call__ are invisible to the trace)
        if line.structure.kind == PathKind.UNKNOWN:
            assert not taylor_supported(line)
        else:
            a = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
            t, j = path_jet(line, data, a, method="taylor"), path_jet(line, data, a, method="nested_jvp")
            assert torch.allclose(t.d2z, j.d2z, rtol=1e-10, atol=1e-12)


def test_a_rising_subclass_is_not_called_monotone():
    """The false certificate of the review: a squared chain rises on its own grid."""
    model = _squared()
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    init = {"0.weight": w, "1.weight": torch.tensor([[1.0, 0.0]], dtype=torch.float64)}
    final = {"0.weight": w, "1.weight": torch.tensor([[-1.0, 0.0]], dtype=torch.float64)}
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    data = Dataset(x, torch.tensor([[1.0]], dtype=torch.float64), "mse", "one")
    result = check(model, init, final, data, alphas=21, certify=True, dtype=torch.float64)
    assert result.max_rise > 0.5  # (1 − 2α)² − 1 squared: rises to 1 after dipping to 0 at α = ½
    assert result.certificate.status != "monotone"
    assert result.info["path_kind"] == "smooth"


def test_taylor_jets_follow_the_traced_chain():
    """A wrapper around a chain uses the one-pass jets, and they equal nested jvp."""
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.Tanh()), nn.Linear(3, 2))
    init, final = _endpoints(model)
    line = make_line(model, init, final, dtype=torch.float64)
    assert taylor_supported(line)
    data = _data()
    a = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    t = path_jet(line, data, a, method="taylor")
    j = path_jet(line, data, a, method="nested_jvp")
    for u, v in ((t.z, j.z), (t.dz, j.dz), (t.d2z, j.d2z)):
        assert torch.allclose(u, v, rtol=1e-10, atol=1e-12)


def test_hooked_model_curve_uses_the_hook():
    """The loss curve evaluates what the model computes, hooks included (they are not ignored)."""
    data = _data()
    model = _with_hook()
    init, final = _endpoints(model)
    line = make_line(model, init, final, dtype=torch.float64)
    plain = make_line(_chain(), init, final, dtype=torch.float64)
    a = [0.0, 0.5, 1.0]
    assert not math.isclose(loss_curve(line, data, a).losses[1], loss_curve(plain, data, a).losses[1])
    assert max_rise(loss_curve(line, data, a).losses).value >= 0.0


def _instance_forward_on_a_leaf():
    m = _chain()
    lin = m[1]
    lin.forward = lambda x: nn.functional.linear(x, lin.weight) ** 2
    return m


def _instance_forward_on_the_root():
    m = _chain()
    m.forward = lambda x: nn.Sequential.forward(m, x) ** 2
    return m


@pytest.mark.parametrize("factory", [_instance_forward_on_a_leaf, _instance_forward_on_the_root], ids=["leaf", "root"])
def test_instance_level_forward_is_refused(factory):
    """A forward assigned to one object replaces what module(x) computes, and fx never sees it."""
    model = factory()
    assert analyse(model).kind == PathKind.UNKNOWN
    init, final = _endpoints(model)
    line = make_line(model, init, final, dtype=torch.float64)
    assert certify(line, _data(), budget_s=10).certificate.method is None


def test_a_replaced_torch_forward_is_refused(monkeypatch):
    original = nn.Linear.forward
    monkeypatch.setattr(nn.Linear, "forward", lambda self, x: original(self, x) * 2)
    assert analyse(_chain()).kind == PathKind.UNKNOWN
    monkeypatch.undo()
    assert analyse(_chain()).kind == PathKind.POLYNOMIAL
    # torch's own inherited forwards (BatchNorm1d uses _BatchNorm.forward) are fine
    assert analyse(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.ReLU6(), nn.Linear(3, 1))).kind == PathKind.PIECEWISE_SMOOTH
