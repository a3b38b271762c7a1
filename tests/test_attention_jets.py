"""The fused jet rules of the attention block (batched matmul, linear, GELU, softmax, LayerNorm):
exact against nested forward mode (or an elementary LayerNorm, whose nested forward mode torch
gets wrong) in float64, for every pattern of absent derivatives, and the value pass bitwise equal
to torch's own operation in float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import jvp
from torch.nn import functional as F

from mli_theory.geometry.rules import Jet, _matmul, gelu, layer_norm, linear_layer, softmax_t

DT = torch.float64
REL = 1e-10


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _jet(v: torch.Tensor, seed: int, d1: bool = True, d2: bool = True) -> Jet:
    g = _g(seed)
    return Jet(v, torch.randn(v.shape, generator=g, dtype=v.dtype) if d1 else None, torch.randn(v.shape, generator=g, dtype=v.dtype) if d2 else None)


def _reference(f, jets: list[Jet]):
    """(f, f′, f″) at t = 0 along u + t u′ + ½t² u″ for every operand, by nested jvp."""

    def g(t):
        xs = []
        for j in jets:
            x = j.v
            if j.d1 is not None:
                x = x + t * j.d1
            if j.d2 is not None:
                x = x + 0.5 * t * t * j.d2
            xs.append(x)
        return f(*xs)

    one = torch.ones((), dtype=DT)
    (v, d1), (_, d2) = jvp(lambda t: jvp(g, (t,), (one,)), (torch.zeros((), dtype=DT),), (one,))
    return v, d1, d2


def _close(got: torch.Tensor | None, want: torch.Tensor) -> None:
    got = torch.zeros_like(want) if got is None else got
    assert got.shape == want.shape
    scale = max(float(want.abs().max()), 1e-3)
    assert float((got - want).abs().max()) <= REL * scale


def _check(rule, f, jets: list[Jet]) -> None:
    out = rule(*jets)
    v, d1, d2 = _reference(f, jets)
    _close(out.v, v)
    _close(out.d1, d1)
    _close(out.d2, d2)


SPARSITY = [(True, True), (True, False), (False, True)]


def _heads(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as the encoder block makes them: views of one qkv tensor (batch dims not mergeable)."""
    qkv = torch.randn(3, 5, 3 * 8, generator=_g(seed), dtype=DT).reshape(3, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


@pytest.mark.parametrize("sa,sb", [(a, b) for a in SPARSITY for b in SPARSITY])
def test_batched_matmul_of_strided_heads(sa, sb):
    q, k, _ = _heads(0)
    a = Jet(q, *[None if not keep else t for keep, t in zip(sa, _jet(q, 1).derivatives())])
    kt = k.transpose(-1, -2)
    b = Jet(kt, *[None if not keep else t for keep, t in zip(sb, _jet(kt, 2).derivatives())])
    _check(_matmul, torch.matmul, [a, b])


@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (4,))])
def test_matmul_shapes(shapes):
    a, b = (_jet(torch.randn(s, generator=_g(i), dtype=DT), 10 + i) for i, s in enumerate(shapes))
    _check(_matmul, torch.matmul, [a, b])


def test_matmul_value_is_torchs_own_in_float32():
    q, k, v = (t.float() for t in _heads(3))
    s = torch.softmax(q @ k.transpose(-1, -2), -1)
    assert torch.equal(_matmul(_jet(q, 1), _jet(k.transpose(-1, -2), 2)).v, q @ k.transpose(-1, -2))
    assert torch.equal(_matmul(_jet(s, 1), _jet(v, 2, d2=False)).v, s @ v)
    m = torch.randn(6, 7, generator=_g(4))
    n = torch.randn(7, 3, generator=_g(5))
    assert torch.equal(_matmul(_jet(m, 1), _jet(n, 2)).v, m @ n)


@pytest.mark.parametrize("x_shape", [(7,), (4, 7), (2, 3, 7)])
@pytest.mark.parametrize("sx", SPARSITY + [(False, False)])
@pytest.mark.parametrize("w_d2", [False, True])
def test_linear_layer_accumulated_products(x_shape, sx, w_d2):
    x = torch.randn(x_shape, generator=_g(0), dtype=DT)
    if len(x_shape) == 3:
        x = x.transpose(0, 1).contiguous().transpose(0, 1)  # a strided input
    xj = _jet(x, 1, *sx)
    w = _jet(torch.randn(5, 7, generator=_g(2), dtype=DT), 3, d2=w_d2)
    b = _jet(torch.randn(5, generator=_g(4), dtype=DT), 5, d2=w_d2)
    _check(linear_layer, F.linear, [xj, w, b])
    _check(lambda a, m: linear_layer(a, m), F.linear, [xj, w])


@pytest.mark.parametrize("s", SPARSITY)
def test_gelu_and_softmax(s):
    u = _jet(torch.randn(3, 4, 6, generator=_g(0), dtype=DT) * 2, 1, *s)
    _check(gelu, F.gelu, [u])
    _check(lambda j: gelu(j, "tanh"), lambda t: F.gelu(t, approximate="tanh"), [u])
    _check(lambda j: softmax_t(j, -1), lambda t: torch.softmax(t, -1), [u])
    _check(lambda j: softmax_t(j, 1), lambda t: torch.softmax(t, 1), [u])


def _manual_layer_norm(x, w, b, eps=1e-5):
    c = x - x.mean(-1, keepdim=True)
    return c / torch.sqrt((c * c).mean(-1, keepdim=True) + eps) * w + b


@pytest.mark.parametrize("s", SPARSITY)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_layer_norm_fused(s, affine):
    x = _jet(torch.randn(3, 4, 6, generator=_g(0), dtype=DT), 1, *s)
    w = _jet(torch.randn(6, generator=_g(2), dtype=DT), 3)
    b = _jet(torch.randn(6, generator=_g(4), dtype=DT), 5)
    if affine == "both":
        _check(lambda a, m, c: layer_norm(a, (6,), m, c), _manual_layer_norm, [x, w, b])
    elif affine == "weight":
        _check(lambda a, m: layer_norm(a, 6, m), lambda a, m: _manual_layer_norm(a, m, 0.0), [x, w])
    else:
        _check(lambda a: layer_norm(a, (6,)), lambda a: _manual_layer_norm(a, 1.0, 0.0), [x])


class _Block(nn.Module):
    """The benchmark's pre-norm encoder block (jet_speed.py --model transformer), small."""

    def __init__(self, d: int = 8, heads: int = 2, manual: bool = False) -> None:
        super().__init__()
        self.d, self.h, self.manual = d, heads, manual
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.head = nn.Linear(d, 3)

    def _norm(self, m: nn.LayerNorm, x):
        return _manual_layer_norm(x, m.weight, m.bias, m.eps) if self.manual else m(x)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self._norm(self.n1, x)).reshape(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, dim=-1) @ v
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        x = x + self.fc2(F.gelu(self.fc1(self._norm(self.n2, x))))
        return self.head(x.mean(dim=1))


def test_encoder_block_taylor_equals_nested_jvp():
    from mli_theory.inputs import Dataset
    from mli_theory.geometry import path_jet
    from mli_theory.path import make_line

    torch.manual_seed(0)
    model, ref = _Block().to(DT), _Block(manual=True).to(DT)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.3 * torch.randn_like(v) for k, v in init.items()}
    x = torch.randn(4, 5, 8, dtype=DT)
    data = Dataset(x, torch.zeros(4, 3, dtype=DT), "mse", "synthetic")
    a = [0.0, 0.4, 1.0]
    fast = path_jet(make_line(model, init, final, dtype=DT), data, a, method="taylor")
    slow = path_jet(make_line(ref, init, final, dtype=DT), data, a, method="nested_jvp")
    assert fast.fallbacks == ()
    for attr in ("z", "dz", "d2z"):
        f, r = getattr(fast, attr), getattr(slow, attr)
        assert torch.allclose(f, r, rtol=1e-10, atol=1e-12 * (1 + float(r.abs().max()))), attr
    assert float(fast.d2z.abs().max()) > 0
