"""The jet interpreter: every rule against nested forward mode, and whole models against nested jvp.

Rules are checked one operation at a time: the operation is wrapped in a module, traced, and
interpreted on random jets (u, u′, u″) of its inputs and parameters; the reference is nested
``torch.func.jvp`` of the same module at t = 0 along u + t u′ + ½t² u″, so (f, f′, f″) must agree
to rounding (relative error ≤ 1e-10 in float64). Each check also asserts that the rule ran, not
the nested-jvp fallback.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.nn import functional as F

from mli_theory.geometry.interpreter import UnsupportedGraph, interpret, plan, trace
from mli_theory.geometry.rules import JET, Jet

DT = torch.float64
REL = 1e-10


# ----------------------------------------------------------------------------- harness


class Fn(nn.Module):
    """A functional call under test: ``forward`` calls ``f(self, *inputs)`` (traced through)."""

    def __init__(self, f, arity: int = 1, **tensors: torch.Tensor) -> None:
        super().__init__()
        self.f = f
        self.arity = arity
        for k, v in tensors.items():
            if k.startswith("buf_"):
                self.register_buffer(k, v)
            else:
                setattr(self, k, nn.Parameter(v))

    def forward(self, x, y=None, z=None):
        return self.f(self, *(x, y, z)[: self.arity])


def _rand(shape, g, domain="real"):
    t = torch.randn(shape, generator=g, dtype=DT)
    if domain == "pos":
        t = t.abs() + 0.5
    return t


def _jet(v: torch.Tensor, g, sparsity: str) -> Jet:
    if not v.is_floating_point():
        return Jet(v)
    d1 = None if sparsity == "no_d1" else torch.randn(v.shape, generator=g, dtype=DT) * 0.7
    d2 = None if sparsity == "no_d2" else torch.randn(v.shape, generator=g, dtype=DT) * 0.7
    return Jet(v, d1, d2)


def _reference(module: nn.Module, inputs: list[Jet], params: dict[str, Jet]):
    """Nested jvp of the whole module along u + t u′ + ½t² u″ (inputs and parameters)."""

    def along(j: Jet, t):
        x = j.v
        if j.d1 is not None:
            x = x + t * j.d1
        if j.d2 is not None:
            x = x + 0.5 * t * t * j.d2
        return x

    def g(t):
        xs = tuple(along(j, t) for j in inputs)
        state = {k: along(j, t) for k, j in params.items()}
        out = functional_call(module, state, xs)
        return out if isinstance(out, torch.Tensor) else out[0]

    one = torch.ones((), dtype=DT)

    def first(t):
        return jvp(g, (t,), (one,))

    (v, d1), (_, d2) = jvp(first, (torch.zeros((), dtype=DT),), (one,))
    return v, d1, d2


def _close(name, got, want):
    got = torch.zeros_like(want) if got is None else got
    assert got.shape == want.shape, (name, got.shape, want.shape)
    scale = float(want.abs().max()) if want.numel() else 0.0
    err = float((got - want).abs().max()) if want.numel() else 0.0
    assert err <= REL * max(scale, 1e-3), f"{name}: error {err:.3e} at scale {scale:.3e}"


def check_rule(
    module: nn.Module, inputs: list, *, seed: int = 0, sparsity: str = "full", param_d2: bool = True, reference=None, fallbacks=()
):
    """Interpret ``module`` on random jets and compare with nested jvp; the rule (no fallback) must run.

    ``reference``: a module computing the same function from the same parameters by elementary
    operations, for ops whose nested forward mode torch gets wrong or lacks (see below).
    """
    g = torch.Generator().manual_seed(seed)
    module = module.to(DT).eval()
    jets = [_jet(x, g, sparsity) for x in inputs]
    params = {}
    for k, v in module.state_dict().items():
        if k.startswith("buf_") or "running" in k or not v.is_floating_point():
            params[k] = Jet(v)
        else:
            params[k] = Jet(v, torch.randn(v.shape, generator=g, dtype=DT), torch.randn(v.shape, generator=g, dtype=DT) if param_d2 else None)
    gm = trace(module)
    ran: list[str] = []
    out = interpret(gm, JET, jets, params, fallbacks=ran)
    assert ran == list(fallbacks), f"fell back on {ran}"
    assert plan(gm, JET) == list(fallbacks)
    out = out if isinstance(out, Jet) else out[0]
    v, d1, d2 = _reference(module if reference is None else reference.to(DT).eval(), jets, params)
    _close("value", out.v, v)
    _close("d1", out.d1, d1)
    _close("d2", out.d2, d2)


def _x(*shape, domain="real", seed=1):
    return _rand(shape, torch.Generator().manual_seed(seed), domain)


def _p(*shape, seed=2):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


# ----------------------------------------------------------------------------- rules: modules

MODULE_CASES = [
    ("linear", lambda: nn.Linear(5, 3), [_x(4, 5)]),
    ("linear_3d_nobias", lambda: nn.Linear(5, 3, bias=False), [_x(2, 4, 5)]),
    ("conv1d", lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), [_x(2, 3, 9)]),
    ("conv1d_groups_dilation", lambda: nn.Conv1d(4, 6, 3, groups=2, dilation=2, padding=2), [_x(2, 4, 9)]),
    ("conv1d_reflect", lambda: nn.Conv1d(2, 3, 3, padding=1, padding_mode="reflect"), [_x(2, 2, 7)]),
    ("conv2d", lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), [_x(2, 3, 7, 7)]),
    ("conv2d_groups_same", lambda: nn.Conv2d(4, 4, 3, groups=2, dilation=2, padding="same"), [_x(2, 4, 6, 6)]),
    ("conv2d_circular_unbatched", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), [_x(2, 5, 5)]),
    ("batchnorm1d", lambda: nn.BatchNorm1d(4), [_x(6, 4)]),
    ("batchnorm1d_3d", lambda: nn.BatchNorm1d(4), [_x(3, 4, 5)]),
    ("batchnorm2d", lambda: nn.BatchNorm2d(3), [_x(2, 3, 4, 4)]),
    ("batchnorm2d_noaffine", lambda: nn.BatchNorm2d(3, affine=False), [_x(2, 3, 4, 4)]),
    ("layernorm", lambda: nn.LayerNorm(5), [_x(3, 5)]),
    ("layernorm_2dims", lambda: nn.LayerNorm((3, 5)), [_x(2, 3, 5)]),
    ("layernorm_noaffine", lambda: nn.LayerNorm(5, elementwise_affine=False), [_x(2, 4, 5)]),
    ("layernorm_nobias", lambda: nn.LayerNorm(5, bias=False), [_x(2, 5)]),
    ("groupnorm", lambda: nn.GroupNorm(2, 4), [_x(2, 4, 3, 3)]),
    ("groupnorm_instance_1d", lambda: nn.GroupNorm(4, 4, affine=False), [_x(2, 4, 6)]),
    ("rmsnorm", lambda: nn.RMSNorm(5), [_x(3, 5)]),
    ("relu", lambda: nn.ReLU(), [_x(4, 5)]),
    ("leaky_relu", lambda: nn.LeakyReLU(0.1), [_x(4, 5)]),
    ("relu6", lambda: nn.ReLU6(), [4 * _x(4, 5)]),
    ("hardtanh", lambda: nn.Hardtanh(-0.5, 0.7), [_x(4, 5)]),
    ("elu", lambda: nn.ELU(0.8), [_x(4, 5)]),
    ("gelu", lambda: nn.GELU(), [_x(4, 5)]),
    ("gelu_tanh", lambda: nn.GELU(approximate="tanh"), [_x(4, 5)]),
    ("silu", lambda: nn.SiLU(), [_x(4, 5)]),
    ("tanh", lambda: nn.Tanh(), [_x(4, 5)]),
    ("sigmoid", lambda: nn.Sigmoid(), [_x(4, 5)]),
    ("softplus", lambda: nn.Softplus(beta=2.0, threshold=1.5), [_x(4, 5)]),
    ("softmax", lambda: nn.Softmax(dim=1), [_x(3, 4, 2)]),
    ("log_softmax", lambda: nn.LogSoftmax(dim=-1), [_x(3, 4)]),
    ("avgpool1d", lambda: nn.AvgPool1d(2), [_x(2, 3, 8)]),
    ("avgpool2d", lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), [_x(2, 3, 7, 7)]),
    ("adaptive_avgpool1d", lambda: nn.AdaptiveAvgPool1d(3), [_x(2, 3, 8)]),
    ("adaptive_avgpool2d", lambda: nn.AdaptiveAvgPool2d((2, 3)), [_x(2, 3, 5, 7)]),
    ("maxpool1d", lambda: nn.MaxPool1d(3, stride=2, padding=1), [_x(2, 3, 9)]),
    ("maxpool2d", lambda: nn.MaxPool2d(2), [_x(2, 3, 6, 6)]),
    ("maxpool2d_ceil_dilation", lambda: nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True), [_x(2, 3, 9, 9)]),
    ("adaptive_maxpool1d", lambda: nn.AdaptiveMaxPool1d(3), [_x(2, 3, 8)]),
    ("adaptive_maxpool2d", lambda: nn.AdaptiveMaxPool2d(2), [_x(2, 3, 5, 5)]),
    ("flatten", lambda: nn.Flatten(), [_x(2, 3, 4)]),
    ("unflatten", lambda: nn.Unflatten(1, (2, 3)), [_x(4, 6)]),
    ("identity", lambda: nn.Identity(), [_x(2, 3)]),
    ("dropout_eval", lambda: nn.Dropout(0.3), [_x(2, 3)]),
    ("embedding", lambda: nn.Embedding(7, 3), [torch.tensor([[1, 4, 6], [0, 4, 2]])]),
    ("zeropad2d", lambda: nn.ZeroPad2d((1, 0, 2, 1)), [_x(2, 3, 4, 4)]),
    ("constantpad1d", lambda: nn.ConstantPad1d(2, 0.5), [_x(2, 3, 4)]),
    ("upsample_bilinear", lambda: nn.Upsample(scale_factor=2, mode="bilinear"), [_x(1, 2, 3, 3)]),
]


class ManualLayerNorm(nn.Module):
    """LayerNorm by elementary operations, with nn.LayerNorm's parameter names (a reference)."""

    def __init__(self, shape, eps=1e-5, weight=True, bias=True):
        super().__init__()
        self.shape, self.eps = tuple(shape) if not isinstance(shape, int) else (shape,), eps
        self.weight = nn.Parameter(torch.ones(self.shape)) if weight else None
        self.bias = nn.Parameter(torch.zeros(self.shape)) if bias else None

    def forward(self, x):
        dims = tuple(range(-len(self.shape), 0))
        c = x - x.mean(dims, keepdim=True)
        y = c / torch.sqrt((c * c).mean(dims, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight
        return y if self.bias is None else y + self.bias


def manual_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """Scaled dot-product attention by elementary operations (a reference)."""
    s = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if is_causal:
        s = s.masked_fill(~torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool).tril(), float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    return torch.softmax(s, -1) @ v


def test_torch_nested_forward_mode_of_layer_norm_is_not_second_order_exact():
    """Why LayerNorm rules are checked against ManualLayerNorm: torch's double jvp of F.layer_norm
    disagrees with finite differences (torch 2.x), while the jet rule and the manual composition agree.
    """
    g = torch.Generator().manual_seed(0)
    u, u1 = torch.randn(3, 5, generator=g, dtype=DT), torch.randn(3, 5, generator=g, dtype=DT)
    h = 1e-4
    f = lambda t: F.layer_norm(u + t * u1, (5,))  # noqa: E731
    fd2 = (f(h) - 2 * f(0.0) + f(-h)) / h**2
    m = nn.Sequential(nn.LayerNorm(5, elementwise_affine=False))
    out = interpret(trace(m), JET, [Jet(u, u1)], {})
    assert float((out.d2 - fd2).abs().max()) < 1e-5 * float(fd2.abs().max())


@pytest.mark.parametrize("sparsity", ["full", "no_d1", "no_d2"])
@pytest.mark.parametrize("name,factory,inputs", MODULE_CASES, ids=[c[0] for c in MODULE_CASES])
def test_module_rule_matches_nested_jvp(name, factory, inputs, sparsity):
    torch.manual_seed(0)
    module = factory()
    ref = None
    if type(module) is nn.LayerNorm:
        ref = nn.Sequential(ManualLayerNorm(module.normalized_shape, module.eps, module.weight is not None, module.bias is not None))
    check_rule(nn.Sequential(module), inputs, sparsity=sparsity, param_d2=sparsity != "no_d2", reference=ref)


def test_batchnorm_rule_with_moving_statistics():
    """The general BatchNorm rule: statistics that themselves carry derivatives (torch's own forward
    mode refuses those, so the reference is the formula)."""
    tensors = dict(m=_p(3), var=_p(3).abs() + 0.5, w=_p(3, seed=4), b=_p(3, seed=5))
    f = Fn(lambda s, x: F.batch_norm(x, s.m, s.var, s.w, s.b, False, 0.1, 1e-3), **tensors)
    r = Fn(lambda s, x: (x - s.m[:, None]) / torch.sqrt(s.var[:, None] + 1e-3) * s.w[:, None] + s.b[:, None], **tensors)
    check_rule(f, [_x(4, 3, 2)], reference=r)


# ----------------------------------------------------------------------------- rules: functional calls

_W, _B = _p(3, 5), _p(3, seed=3)
FUNCTION_CASES = [
    ("F.linear", Fn(lambda s, x: F.linear(x, s.w, s.b), w=_W, b=_B), [_x(4, 5)]),
    ("F.linear_nobias", Fn(lambda s, x: F.linear(x, s.w), w=_W), [_x(2, 4, 5)]),
    ("addmm", Fn(lambda s, x: torch.addmm(s.b, x, s.w.t(), beta=0.5, alpha=2.0), w=_W, b=_B), [_x(4, 5)]),
    ("matmul_2d", Fn(lambda s, x, y: torch.matmul(x, y), 2), [_x(3, 4), _x(4, 5, seed=2)]),
    ("matmul_broadcast", Fn(lambda s, x, y: x @ y, 2), [_x(2, 3, 4), _x(4, 5, seed=2)]),
    ("matmul_batched", Fn(lambda s, x, y: x.matmul(y), 2), [_x(2, 3, 4), _x(2, 4, 5, seed=2)]),
    ("matmul_vector", Fn(lambda s, x, y: x @ y, 2), [_x(3, 4), _x(4, seed=2)]),
    ("mm", Fn(lambda s, x, y: torch.mm(x, y), 2), [_x(3, 4), _x(4, 2, seed=2)]),
    ("bmm", Fn(lambda s, x, y: torch.bmm(x, y), 2), [_x(2, 3, 4), _x(2, 4, 2, seed=2)]),
    ("einsum", Fn(lambda s, x, y: torch.einsum("bij,bkj->bik", x, y), 2), [_x(2, 3, 4), _x(2, 5, 4, seed=2)]),
    ("F.conv1d", Fn(lambda s, x: F.conv1d(x, s.w, s.b, stride=2, padding=1), w=_p(4, 3, 3), b=_p(4, seed=3)), [_x(2, 3, 9)]),
    ("F.conv2d", Fn(lambda s, x: F.conv2d(x, s.w, None, 1, 1, 2, 2), w=_p(4, 2, 3, 3)), [_x(2, 4, 6, 6)]),
    ("F.batch_norm", Fn(lambda s, x: F.batch_norm(x, s.buf_m, s.buf_v, s.w, s.b, False, 0.1, 1e-5),
                        buf_m=_p(3), buf_v=_p(3).abs() + 0.5, w=_p(3, seed=4), b=_p(3, seed=5)), [_x(4, 3, 5)]),
    ("F.group_norm", Fn(lambda s, x: F.group_norm(x, 3, s.w, s.b), w=_p(6), b=_p(6, seed=3)), [_x(2, 6, 4)]),
    ("F.relu", Fn(lambda s, x: F.relu(x)), [_x(4, 5)]),
    ("torch.relu", Fn(lambda s, x: torch.relu(x)), [_x(4, 5)]),
    (".relu", Fn(lambda s, x: x.relu()), [_x(4, 5)]),
    ("F.leaky_relu", Fn(lambda s, x: F.leaky_relu(x, 0.2)), [_x(4, 5)]),
    ("F.relu6", Fn(lambda s, x: F.relu6(4 * x)), [_x(4, 5)]),
    ("F.hardtanh", Fn(lambda s, x: F.hardtanh(x, -0.3, 0.4)), [_x(4, 5)]),
    ("F.elu", Fn(lambda s, x: F.elu(x, 1.3)), [_x(4, 5)]),
    ("F.gelu", Fn(lambda s, x: F.gelu(x)), [_x(4, 5)]),
    ("F.gelu_tanh", Fn(lambda s, x: F.gelu(x, approximate="tanh")), [_x(4, 5)]),
    ("F.silu", Fn(lambda s, x: F.silu(x)), [_x(4, 5)]),
    ("torch.tanh", Fn(lambda s, x: torch.tanh(x)), [_x(4, 5)]),
    (".tanh", Fn(lambda s, x: x.tanh()), [_x(4, 5)]),
    ("torch.sigmoid", Fn(lambda s, x: torch.sigmoid(x)), [_x(4, 5)]),
    ("F.softplus", Fn(lambda s, x: F.softplus(x, beta=2, threshold=1.5)), [_x(4, 5)]),
    ("exp", Fn(lambda s, x: torch.exp(x)), [_x(4, 5)]),
    ("log", Fn(lambda s, x: torch.log(x)), [_x(4, 5, domain="pos")]),
    (".log", Fn(lambda s, x: x.log()), [_x(4, 5, domain="pos")]),
    ("sqrt", Fn(lambda s, x: torch.sqrt(x)), [_x(4, 5, domain="pos")]),
    ("rsqrt", Fn(lambda s, x: x.rsqrt()), [_x(4, 5, domain="pos")]),
    ("erf", Fn(lambda s, x: torch.erf(x)), [_x(4, 5)]),
    ("sin_cos", Fn(lambda s, x: torch.sin(x) * torch.cos(x)), [_x(4, 5)]),
    ("abs", Fn(lambda s, x: x.abs()), [_x(4, 5)]),
    ("clamp", Fn(lambda s, x: torch.clamp(x, -0.5, 0.6)), [_x(4, 5)]),
    ("pow_int", Fn(lambda s, x: x**3), [_x(4, 5)]),
    ("pow_2", Fn(lambda s, x: x.pow(2)), [_x(4, 5)]),
    ("pow_1_0", Fn(lambda s, x: torch.pow(x, 1) + x**0), [_x(4, 5)]),
    ("pow_frac", Fn(lambda s, x: x**0.5 + x**-1.5), [_x(4, 5, domain="pos")]),
    ("rpow", Fn(lambda s, x: 2**x), [_x(4, 5)]),
    ("neg", Fn(lambda s, x: -x + torch.neg(x)), [_x(4, 5)]),
    ("add_sub", Fn(lambda s, x, y: x + y - 2 * x, 2), [_x(4, 5), _x(5, seed=2)]),
    ("add_alpha", Fn(lambda s, x, y: torch.add(x, y, alpha=0.5) + x.sub(y, alpha=3), 2), [_x(4, 5), _x(4, 5, seed=2)]),
    ("add_scalar", Fn(lambda s, x: 1.5 + x - 2 + (3 - x)), [_x(4, 5)]),
    ("mul", Fn(lambda s, x, y: x * y * 3, 2), [_x(4, 5), _x(4, 1, seed=2)]),
    ("mul_param", Fn(lambda s, x: x * s.w, w=_p(5)), [_x(4, 5)]),
    ("div", Fn(lambda s, x, y: x / y, 2), [_x(4, 5), _x(5, domain="pos", seed=2)]),
    ("div_scalar", Fn(lambda s, x: x / 3 + 2 / x), [_x(4, 5, domain="pos")]),
    ("div_by_param", Fn(lambda s, x: x.div(s.w), w=_p(5).abs() + 1), [_x(4, 5)]),
    ("avg_pool1d", Fn(lambda s, x: F.avg_pool1d(x, 3, 2, 1)), [_x(2, 3, 8)]),
    ("avg_pool2d", Fn(lambda s, x: F.avg_pool2d(x, 2)), [_x(2, 3, 6, 6)]),
    ("adaptive_avg_pool1d", Fn(lambda s, x: F.adaptive_avg_pool1d(x, 3)), [_x(2, 3, 8)]),
    ("adaptive_avg_pool2d", Fn(lambda s, x: F.adaptive_avg_pool2d(x, (1, 1))), [_x(2, 3, 5, 5)]),
    ("max_pool1d", Fn(lambda s, x: F.max_pool1d(x, 2)), [_x(2, 3, 8)]),
    ("max_pool2d", Fn(lambda s, x: F.max_pool2d(x, 3, stride=2, padding=1)), [_x(2, 3, 7, 7)]),
    ("max_pool2d_indices", Fn(lambda s, x: F.max_pool2d(x, 2, return_indices=True)[0]), [_x(2, 3, 6, 6)]),
    ("adaptive_max_pool1d", Fn(lambda s, x: F.adaptive_max_pool1d(x, 3)), [_x(2, 3, 8)]),
    ("adaptive_max_pool2d", Fn(lambda s, x: F.adaptive_max_pool2d(x, (2, 2))), [_x(2, 3, 5, 5)]),
    ("F.softmax", Fn(lambda s, x: F.softmax(x, dim=-1)), [_x(3, 4)]),
    ("torch.softmax", Fn(lambda s, x: torch.softmax(x, 1)), [_x(3, 4, 2)]),
    (".softmax", Fn(lambda s, x: x.softmax(0)), [_x(3, 4)]),
    ("F.log_softmax", Fn(lambda s, x: F.log_softmax(x, 1)), [_x(3, 4)]),
    (".log_softmax", Fn(lambda s, x: x.log_softmax(dim=-1)), [_x(3, 4, 2)]),
    ("logsumexp", Fn(lambda s, x: torch.logsumexp(x, 1)), [_x(3, 4)]),
    ("view_reshape", Fn(lambda s, x: x.view(2, -1).reshape(3, 8) + torch.reshape(x, (3, 8))), [_x(2, 3, 4)]),
    ("flatten_permute", Fn(lambda s, x: torch.flatten(x.permute(2, 0, 1), 1) * x.flatten(1).sum()), [_x(2, 3, 4)]),
    ("transpose_contiguous", Fn(lambda s, x: x.transpose(0, 1).contiguous() + torch.transpose(x, 1, 0) + x.t()), [_x(3, 3)]),
    ("unsqueeze_squeeze", Fn(lambda s, x: x.unsqueeze(1).squeeze(1) + x[:, None].squeeze()), [_x(3, 4)]),
    ("cat_stack", Fn(lambda s, x, y: torch.cat([x, y * y], 1).sum(0) + torch.stack((x, y)).mean(0).sum(0).repeat(2), 2), [_x(3, 2), _x(3, 2, seed=2)]),
    ("cat_const", Fn(lambda s, x: torch.cat([x, x.new_ones(x.size(0), 1)], -1)), [_x(3, 2)]),
    ("getitem", Fn(lambda s, x: x[:, 1:3] * x[..., 0:2] + x[0, :2]), [_x(3, 4)]),
    ("size_shape", Fn(lambda s, x: x.reshape(x.size(0), x.shape[1] * x.shape[2]) * x.dim()), [_x(2, 3, 4)]),
    ("chunk_split", Fn(lambda s, x: x.chunk(2, -1)[1] * torch.split(x, 2, -1)[0]), [_x(3, 4)]),
    ("sum_mean", Fn(lambda s, x: x.sum(1) + x.mean((1, 2)).unsqueeze(-1) + torch.sum(x, dim=2, keepdim=True).squeeze(-1)), [_x(2, 3, 3)]),
    ("expand", Fn(lambda s, x, y: x.expand(3, 4) * y.expand_as(x.expand(3, 4)), 2), [_x(1, 4), _x(3, 1, seed=2)]),
    ("where_masked_fill", Fn(lambda s, x, y: torch.where(x > 0, x * y, y) + x.masked_fill(x < 0.2, 0.5), 2), [_x(3, 4), _x(3, 4, seed=2)]),
    ("max_dim", Fn(lambda s, x: x.max(dim=1).values + torch.min(x, 1, keepdim=True)[0].squeeze(1)), [_x(3, 4)]),
    ("pad", Fn(lambda s, x: F.pad(x, (1, 2), value=0.3) + F.pad(x, (1, 2), mode="reflect")), [_x(2, 3, 4)]),
    ("dropout_eval", Fn(lambda s, x: F.dropout(x, 0.5, training=False)), [_x(3, 4)]),
    ("detach", Fn(lambda s, x: x * x.detach()), [_x(3, 4)]),
    ("to_dtype", Fn(lambda s, x: x.to(torch.float64).double() * x.float().double()), [_x(3, 4)]),
    ("inplace", Fn(lambda s, x: _inplace(x)), [_x(3, 4)]),
    ("F.rms_norm", Fn(lambda s, x: F.rms_norm(x, (4,), s.w, 1e-4), w=_p(4)), [_x(3, 4)]),
    ("T_mT", Fn(lambda s, x: x.T @ x + x.mT.mT.sum()), [_x(3, 4)]),
    ("cumsum_zeros_like", Fn(lambda s, x: x.cumsum(1) + torch.cumsum(x, 0) + torch.zeros_like(x)), [_x(3, 4)]),
    ("log1p_expm1_square_reciprocal", Fn(lambda s, x: torch.log1p(x) + x.expm1() + x.square() + torch.reciprocal(x)), [_x(3, 4, domain="pos")]),
    ("F.embedding", Fn(lambda s, x: F.embedding(x, s.w), w=_p(6, 3)), [torch.tensor([[0, 5], [2, 2]])]),
    ("F.interpolate", Fn(lambda s, x: F.interpolate(x, scale_factor=2, mode="linear")), [_x(2, 3, 4)]),
]


def _inplace(x):
    y = x * 2.0
    y.add_(x)
    z = F.relu(y, inplace=True)
    return z + y


@pytest.mark.parametrize("sparsity", ["full", "no_d1", "no_d2"])
@pytest.mark.parametrize("name,module,inputs", FUNCTION_CASES, ids=[c[0] for c in FUNCTION_CASES])
def test_function_rule_matches_nested_jvp(name, module, inputs, sparsity):
    check_rule(module, inputs, sparsity=sparsity, param_d2=sparsity != "no_d2")


# rules checked against an elementary reference: torch has no (or no exact) nested forward mode for them
_MASK_F = _p(3, 5)
_MASK_B = torch.tensor([[True, False, True], [True, True, False]])
REFERENCE_CASES = [
    ("F.layer_norm", Fn(lambda s, x: F.layer_norm(x, (5,), s.weight, s.bias, 1e-3), weight=_p(5), bias=_p(5, seed=3)),
     ManualLayerNorm(5, 1e-3), [_x(3, 5)]),
    ("sdpa", Fn(lambda s, q, k, v: F.scaled_dot_product_attention(q, k, v), 3), Fn(lambda s, q, k, v: manual_attention(q, k, v), 3),
     [_x(2, 2, 3, 4), _x(2, 2, 5, 4, seed=2), _x(2, 2, 5, 4, seed=3)]),
    ("sdpa_causal_scale", Fn(lambda s, q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3), 3),
     Fn(lambda s, q, k, v: manual_attention(q, k, v, is_causal=True, scale=0.3), 3), [_x(2, 4, 4), _x(2, 4, 4, seed=2), _x(2, 4, 3, seed=3)]),
    ("sdpa_float_mask", Fn(lambda s, q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=s.buf_mask), 3, buf_mask=_MASK_F),
     Fn(lambda s, q, k, v: manual_attention(q, k, v, attn_mask=s.buf_mask), 3, buf_mask=_MASK_F), [_x(2, 3, 4), _x(2, 5, 4, seed=2), _x(2, 5, 4, seed=3)]),
    ("sdpa_bool_mask", Fn(lambda s, q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=s.buf_mask), 3, buf_mask=_MASK_B),
     Fn(lambda s, q, k, v: manual_attention(q, k, v, attn_mask=s.buf_mask), 3, buf_mask=_MASK_B), [_x(1, 2, 4), _x(1, 3, 4, seed=2), _x(1, 3, 4, seed=3)]),
]


@pytest.mark.parametrize("sparsity", ["full", "no_d1", "no_d2"])
@pytest.mark.parametrize("name,module,reference,inputs", REFERENCE_CASES, ids=[c[0] for c in REFERENCE_CASES])
def test_rule_matches_elementary_reference(name, module, reference, inputs, sparsity):
    check_rule(module, inputs, sparsity=sparsity, param_d2=sparsity != "no_d2", reference=reference)


# ----------------------------------------------------------------------------- fallback: nested jvp of one operation

class TwoInputs(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, y):
        return self.inner(x, y)


FALLBACK_CASES = [
    ("torch.atan", Fn(lambda s, x: torch.atan(x) * 2), None, [_x(3, 4)], ["torch.atan"]),
    (".cumprod", Fn(lambda s, x: x.cumprod(-1)), None, [_x(3, 4)], [".cumprod()"]),
    ("sort_tuple_output", Fn(lambda s, x: x.sort(-1)[0] * x), None, [_x(3, 4)], [".sort()"]),
    ("F.normalize", Fn(lambda s, x: F.normalize(x, dim=-1)), None, [_x(3, 4)], ["torch.nn.functional.normalize"]),
    ("bilinear_module_with_params", TwoInputs(nn.Bilinear(3, 4, 2)), None, [_x(5, 3), _x(5, 4, seed=2)], ["inner (Bilinear)"]),
    ("mish", nn.Sequential(nn.Mish()), None, [_x(3, 4)], ["0 (Mish)"]),
    # torch has no nested forward mode for glu: the fallback takes the jet by reverse mode
    ("glu_reverse_mode", nn.Sequential(nn.GLU()), Fn(lambda s, x: x[:, :2] * torch.sigmoid(x[:, 2:])), [_x(3, 4)], ["0 (GLU)"]),
]

@pytest.mark.parametrize("sparsity", ["full", "no_d1", "no_d2"])
@pytest.mark.parametrize("name,module,reference,inputs,expected", FALLBACK_CASES, ids=[c[0] for c in FALLBACK_CASES])
def test_fallback_is_exact_and_named(name, module, reference, inputs, expected, sparsity):
    check_rule(module, inputs, sparsity=sparsity, param_d2=sparsity != "no_d2", reference=reference, fallbacks=expected)


def test_reverse_and_forward_fallback_routes_agree():
    from mli_theory.geometry.rules import _forward_jet, _reverse_jet

    g0 = torch.Generator().manual_seed(4)
    u, u1, u2 = (torch.randn(3, 4, generator=g0, dtype=DT) for _ in range(3))

    def g(t):
        x = u + t * u1 + 0.5 * t * t * u2
        return torch.atan(x) * torch.sin(x).sum(), x.argmax(-1)

    t0 = torch.zeros((), dtype=DT)
    fwd, rev = _forward_jet(g, t0), _reverse_jet(g, t0)
    for a, b in zip(fwd, rev):
        _close("route", b[0], a[0])
        assert torch.equal(a[1], b[1])


def test_a_fallback_torch_cannot_differentiate_twice_is_reported():
    """hardsigmoid has neither nested forward mode nor double backward in torch: a clear error."""
    line, _, data = _line(nn.Sequential(nn.Linear(3, 3), nn.Hardsigmoid()), (4, 3), 3, seed=0)
    with pytest.raises(ValueError, match="Hardsigmoid"):
        path_jet(line, data, [0.5], method="taylor")


# ----------------------------------------------------------------------------- graphs the walk refuses or plans


def test_in_place_update_of_an_input_or_a_view_is_refused():
    class OnInput(nn.Module):
        def forward(self, x):
            return x.relu_() * 2

    class OnView(nn.Module):
        def forward(self, x):
            y = x * 2
            v = y.view(-1)
            y.add_(1.0)
            return v

    for m in (OnInput(), OnView()):
        with pytest.raises(UnsupportedGraph):
            trace(m)


def test_plan_names_operations_without_a_rule():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.act = nn.Mish()

        def forward(self, x):
            return torch.atan(self.act(self.fc(x))).cumprod(-1)

    assert plan(trace(M()), JET) == ["act (Mish)", "torch.atan", ".cumprod()"]


# ----------------------------------------------------------------------------- model zoo, end to end

from cases import ConvNet  # noqa: E402

from mli_theory.geometry import path_jet, taylor_supported  # noqa: E402
from mli_theory.geometry.jets import taylor_plan  # noqa: E402
from mli_theory.inputs import Dataset  # noqa: E402
from mli_theory.path import make_line  # noqa: E402


class Block(nn.Module):
    """A ResNet basic block (torchvision style: in-place ReLU, ``out += identity``)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class SmallResNet(nn.Module):
    def __init__(self, width=8, k=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, k)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CNN1d(nn.Module):
    def __init__(self, k=2):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(2, 6, 5, padding=2), nn.GroupNorm(2, 6), nn.GELU(), nn.MaxPool1d(2),
            nn.Conv1d(6, 8, 3, dilation=2, padding=2, groups=2), nn.BatchNorm1d(8), nn.SiLU(), nn.AvgPool1d(2),
            nn.Conv1d(8, 8, 3, padding=1, padding_mode="replicate"), nn.Softplus(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        )
        self.head = nn.Linear(8, k)

    def forward(self, x):
        return self.head(self.body(x.view(x.size(0), 2, -1)))


class TinyEncoder(nn.Module):
    """Pre-norm transformer encoder block: LayerNorm, causal multi-head attention, tanh-GELU MLP."""

    def __init__(self, d=8, heads=2, T=5, k=3, norm=nn.LayerNorm, attention=F.scaled_dot_product_attention):
        super().__init__()
        self.d, self.h, self.attention = d, heads, attention
        self.embed = nn.Linear(4, d)
        self.pos = nn.Parameter(0.1 * torch.randn(T, d))
        self.ln1, self.ln2 = norm(d), norm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.act = nn.GELU(approximate="tanh")
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(d, k)

    def forward(self, x):
        n, t = x.size(0), x.size(1)
        h = self.embed(x) + self.pos
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        q, k, v = (z.view(n, t, self.h, self.d // self.h).transpose(1, 2) for z in (q, k, v))
        a = self.attention(q, k, v, is_causal=True).transpose(1, 2).reshape(n, t, self.d)
        h = h + self.drop(self.proj(a))
        h = h + self.fc2(self.act(self.fc1(self.ln2(h))))
        return self.head(h.mean(1))


class UserStyle(nn.Module):
    """Parameters used through functional calls and tensor methods in forward."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(0.5 * torch.randn(6, 4))
        self.b1 = nn.Parameter(torch.zeros(6))
        self.kernel = nn.Parameter(0.3 * torch.randn(3, 1, 3, 3))
        self.w2 = nn.Parameter(0.3 * torch.randn(3, 18))
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x):
        h = torch.tanh(F.linear(x[:, :4], self.w1, self.b1))
        c = F.avg_pool2d(F.softplus(F.conv2d(x.view(-1, 1, 4, 4), self.kernel, padding=1)), 2).flatten(1)
        feats = torch.cat([h * h.pow(2), c / (1 + c**2)], dim=1)
        return F.log_softmax(feats @ self.w2.t() * self.scale, dim=-1)


class WithFallback(nn.Module):
    """Two operations without a rule: evaluated by nested jvp of that operation alone, and named."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 6), nn.Mish(), nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(torch.atan(self.act(self.fc1(x))))


class Squared(nn.Sequential):
    """A Sequential subclass whose forward squares the chain: the jets must follow its forward."""

    def forward(self, x):
        return super().forward(x) ** 2


def _line(model, x_shape, k, seed, reference=None):
    g = torch.Generator().manual_seed(seed)
    init = {key: v.detach().clone().to(DT) if v.is_floating_point() else v.clone() for key, v in model.state_dict().items()}
    final = {}
    for key, v in init.items():
        if not v.is_floating_point():
            final[key] = v + 1
        elif "running_var" in key:
            final[key] = v + torch.rand(v.shape, generator=g, dtype=DT)
        else:
            final[key] = v + 0.5 * torch.randn(v.shape, generator=g, dtype=DT)
    x = torch.randn(x_shape, generator=g, dtype=DT)
    data = Dataset(x, torch.randn(x_shape[0], k, generator=g, dtype=DT), "mse", "zoo")
    line = make_line(model, init, final, dtype=DT)
    ref = line if reference is None else make_line(reference, init, final, dtype=DT)
    return line, ref, data


ZOO = [
    ("mlp", lambda: (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)), None), (7, 4), 3, []),
    ("resnet", lambda: (SmallResNet(), None), (4, 3, 8, 8), 3, []),
    ("cnn1d", lambda: (CNN1d(), None), (5, 32), 2, []),
    ("convnet_case", lambda: (ConvNet(), None), (6, 16), 2, []),
    ("transformer", lambda: (TinyEncoder(), TinyEncoder(norm=ManualLayerNorm, attention=manual_attention)), (3, 5, 4), 3, []),
    ("user_style", lambda: (UserStyle(), None), (5, 16), 3, []),
    ("squared_subclass", lambda: (Squared(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)), None), (5, 3), 2, []),
    ("fallback", lambda: (WithFallback(), None), (5, 4), 2, ["act (Mish)", "torch.atan"]),
]
ZOO_BN = {"resnet": ["recompute", "interpolate", "frozen"], "cnn1d": ["recompute", "frozen"], "convnet_case": ["interpolate"]}


@pytest.mark.parametrize(
    "name,factory,x_shape,k,fallbacks,bn",
    [(*z, bn) for z in ZOO for bn in ZOO_BN.get(z[0], ["frozen"])],
    ids=[f"{z[0]}-{bn}" for z in ZOO for bn in ZOO_BN.get(z[0], ["frozen"])],
)
def test_model_zoo_taylor_equals_nested_jvp(name, factory, x_shape, k, fallbacks, bn):
    torch.manual_seed(0)
    model, reference = factory()
    line, ref, data = _line(model, x_shape, k, seed=3, reference=reference)
    assert taylor_supported(line)
    assert taylor_plan(line) == fallbacks
    a = [0.0, 0.35, 1.0]
    fast = path_jet(line, data, a, bn=bn, method="taylor")
    slow = path_jet(ref, data, a, bn=bn, method="nested_jvp")
    assert list(fast.fallbacks) == fallbacks
    assert path_jet(line, data, [0.5], bn=bn).fallbacks == fast.fallbacks  # auto picks the interpreter
    assert fast.off_curve is None
    attrs = ("z", "dz", "d2z")
    if slow.off_curve is not None:  # moving BatchNorm statistics: nested jvp holds them fixed, so the
        attrs = ("z",)  # reference is the measured curve itself, by central differences
        h = 1e-4
        zs = path_jet(line, data, [0.35 - h, 0.35, 0.35 + h], bn=bn, method="taylor").z
        fd1, fd2 = (zs[2] - zs[0]) / (2 * h), (zs[2] - 2 * zs[1] + zs[0]) / h**2
        assert float((fast.dz[1] - fd1).norm() / fd1.norm()) < 1e-6
        assert float((fast.d2z[1] - fd2).norm() / fd2.norm()) < 1e-4
    for attr in attrs:
        f, r = getattr(fast, attr), getattr(slow, attr)
        assert f.shape == r.shape
        assert torch.allclose(f, r, rtol=1e-10, atol=1e-12 * (1 + float(r.abs().max()))), (attr, float((f - r).abs().max()))
    assert float(fast.d2z.abs().max()) > 0


def test_unsupported_models_use_nested_jvp_under_auto():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)

    hooked = nn.Sequential(nn.Linear(3, 2))
    hooked[0].register_forward_hook(lambda m, i, o: o * 2)
    for model in (Branchy(), hooked):
        line, _, data = _line(model, (4, 3), 2, seed=1)
        assert not taylor_supported(line)
        with pytest.raises(ValueError):
            taylor_plan(line)
        with pytest.raises(ValueError):
            path_jet(line, data, [0.5], method="taylor")
        jet = path_jet(line, data, [0.5])
        assert jet.fallbacks == ()


def test_values_are_freed_after_their_last_reader():
    """The interpreter drops each value after the last node that reads it (memory as in a plain
    forward pass): no value is dropped before a reader, and every intermediate is dropped."""
    from mli_theory.geometry.interpreter import _last_uses

    gm = trace(ConvNet())
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    freed_at = {v: order[n] for n, vs in _last_uses(gm).items() for v in vs}
    for v in nodes:
        if v.op == "output" or any(u.op == "output" for u in v.users):
            assert v not in freed_at  # the returned value is never dropped
            continue
        assert v in freed_at, v
        assert all(order[u] <= freed_at[v] for u in v.users), v
        assert freed_at[v] == max([order[u] for u in v.users], default=order[v]), v
