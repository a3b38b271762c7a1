"""The kinks' reverse walk through convolutions and averages (certify/adjoint.py).

The adjoint identity of :mod:`mli_theory.certify.adjoint` holds for any maps whose derivative walk is
linear in the incoming derivative; the reverse walk now passes cotangents back through Conv2d
(transposed convolution with W(α) = W_m + tΔW) and through averages (pooling, ``mean``). Checked
here: the transposed convolution against autograd's vector-Jacobian product on both of its routes;
a single kink behind 1×1 convolutions, where the bound is attained at both sides (a reverse rule
that lost the cotangent would miss the jump); enclosures of L and L′ on random conv nets (strides,
padding, dilation, residual sums, projection shortcuts, every average) against float64 forward-mode
references; graphs with convolutions the walk does not cover keep the forward rule; the bound is the
tighter one on a ReLU CNN; decisions re-checked on a grid."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from mli_theory.certify.adjoint import transposed_conv2d
from mli_theory.certify.partition import enclose

from test_adjoint_kinks import (_float_reference, _problem, assert_decided_as_a_grid_shows, assert_tighter_than_the_forward_rule,
                                moved_from_default_init)
from test_enclosure_soundness import _DeepClamps, _PoolCNN, _endpoints_and_data


@pytest.mark.parametrize("via", ["auto", "fold"])
def test_the_transposed_convolution_is_the_vector_jacobian_product(via):
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for k, s, p, d, hw in itertools.product([1, 3, 5], [1, 2, 3], [0, 1, 3], [1, 2], [(7, 8), (8, 5)]):
        if min(hw) + 2 * p - d * (k - 1) - 1 < 0:
            continue
        x = torch.randn(3, 4, *hw, dtype=torch.float64, generator=g)
        w = torch.randn(5, 4, k, k, dtype=torch.float64, generator=g)
        out, vjp = torch.func.vjp(lambda t: F.conv2d(t, w, None, s, p, d), x)
        t = torch.randn(out.shape, dtype=torch.float64, generator=g)
        got = transposed_conv2d(t, w, (s, s), (p, p), (d, d), hw, via=via)
        assert got.shape == x.shape
        worst = max(worst, float((got - vjp(t)[0]).abs().max()))
        # one weight per cell: (C, Cout, Cin, k, k) against (C, n, Cout, OH, OW)
        wc = torch.randn(2, 5, 4, k, k, dtype=torch.float64, generator=g)
        tc = torch.randn(2, 3, *out.shape[1:], dtype=torch.float64, generator=g)
        ref = torch.stack([torch.func.vjp(lambda t_, i=i: F.conv2d(t_, wc[i], None, s, p, d), x)[1](tc[i])[0] for i in range(2)])
        got = transposed_conv2d(tc, wc, (s, s), (p, p), (d, d), hw, per_cell=True, via=via)
        worst = max(worst, float((got - ref).abs().max()))
    assert worst < 1e-12, worst


class _OneKinkConv(nn.Module):
    """x = 1 on a 1×1 image, v(α) = s(α − 1/2) through a 1×1 convolution, z = c·relu(v) through a
    second one: L′ jumps at α = 1/2 from 0 to 2(z − y)·c·s."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return torch.flatten(self.b(F.relu(self.a(x.view(-1, 1, 1, 1)))), 1)


def test_a_single_kink_behind_convolutions_attains_the_bound_at_both_sides():
    s, c, y = 4.0, 1.5, 2.0
    model = _OneKinkConv().double()
    one, zero = torch.ones(1, 1, 1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    start = {"a.weight": -s / 2 * one, "a.bias": zero, "b.weight": c * one, "b.bias": zero}
    end = dict(start, **{"a.weight": s / 2 * one, "b.weight": 1.25 * c * one})
    x, t = torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), y, dtype=torch.float64)
    prob = _problem(model, start, end, x, t, "mse")
    assert prob.adjoint
    h = 2.0**-20
    (dlo, dhi), _ = (r[0] for r in enclose(prob, [0.5 - h], [0.5 + h]))
    _, left = _float_reference(model, start, end, x, t, "mse", 0.5 - h)
    _, right = _float_reference(model, start, end, x, t, "mse", 0.5 + h)
    assert left == 0 and right < -1
    assert dlo <= right and dhi >= left
    assert dhi - dlo <= (left - right) * (1 + 1e-3) + 1e-6, (dlo, dhi, right)


class _ConvNet(nn.Module):
    """Unflatten – conv(stride, padding, dilation) – ReLU – [residual block with a 1×1 projection] –
    an average – flatten – linear: every reverse rule of this file."""

    def __init__(self, cin, hw, ch, k, stride, pad, dil, block, average):
        super().__init__()
        self.cin, self.hw = cin, hw
        self.stem = nn.Conv2d(cin, ch, k, stride=stride, padding=pad, dilation=dil)
        self.block = block
        if block:
            self.c1 = nn.Conv2d(ch, ch, 3, padding="same")
            self.c2 = nn.Conv2d(ch, ch + 1, 3, stride=2, padding=1)
            self.proj = nn.Conv2d(ch, ch + 1, 1, stride=2)
        self.average = average
        self.pool = nn.AvgPool2d(2, ceil_mode=True) if average == "avgpool" else nn.AdaptiveAvgPool2d((1, 1))
        probe = self.features(torch.zeros(1, cin * hw * hw))
        self.head = nn.Linear(probe.shape[1], 3)

    def features(self, x):
        h = F.relu(self.stem(x.unflatten(1, (self.cin, self.hw, self.hw))))
        if self.block:
            h = F.relu(self.c2(F.relu(self.c1(h))) + self.proj(h))
        if self.average == "mean":
            return h.mean((2, 3))
        if self.average == "function":
            return torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        return torch.flatten(self.pool(h), 1)

    def forward(self, x):
        return self.head(self.features(x))


@st.composite
def conv_cases(draw):
    cin, hw, ch = draw(st.integers(1, 2)), draw(st.integers(4, 6)), draw(st.integers(1, 3))
    k, stride, pad, dil = draw(st.sampled_from([1, 3])), draw(st.integers(1, 2)), draw(st.integers(0, 2)), draw(st.integers(1, 2))
    if hw + 2 * pad - dil * (k - 1) - 1 < 2 * stride:
        pad = 2
    block = draw(st.booleans())
    average = draw(st.sampled_from(["avgpool", "adaptive", "mean", "function"]))
    loss = draw(st.sampled_from(["mse", "ce"]))
    seed = draw(st.integers(0, 2**20))
    scale = draw(st.sampled_from([0.3, 1.0]))
    j = draw(st.sampled_from([1, 3, 6, 9]))
    cell = draw(st.integers(0, 2**j - 1))
    return (cin, hw, ch, k, stride, pad, dil, block, average), loss, seed, scale, (cell / 2**j, (cell + 1) / 2**j)


def _random_path(spec, loss, seed, scale, n=3):
    model = _ConvNet(*spec).double()
    g = torch.Generator().manual_seed(seed)
    start = {k: scale * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in model.state_dict().items()}
    end = {k: v + scale * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in start.items()}
    x = torch.randn(n, spec[0] * spec[1] ** 2, generator=g, dtype=torch.float64)
    y = torch.randn(n, 3, generator=g, dtype=torch.float64) if loss == "mse" else torch.randint(0, 3, (n,), generator=g)
    return model, start, end, x, y


@settings(deadline=None, max_examples=25)
@given(conv_cases())
def test_conv_nets_take_the_reverse_walk_and_their_enclosures_contain_the_loss_and_slope(case):
    spec, loss, seed, scale, (ca, cb) = case
    model, start, end, x, y = _random_path(spec, loss, seed, scale)
    prob = _problem(model, start, end, x, y, loss)
    assert prob.adjoint, case
    (dlo, dhi), (llo, lhi) = (r[0] for r in enclose(prob, [ca], [cb]))
    for f in (0.0, 0.3, 0.71, 1.0):
        L, dL = _float_reference(model, start, end, x, y, loss, ca + f * (cb - ca))
        slack = 1e-10 * (1 + abs(L) + abs(dL))
        assert llo - slack <= L <= lhi + slack, (case, L, llo, lhi)
        assert dlo - slack <= dL <= dhi + slack, (case, f, dL, dlo, dhi)


def test_convolutions_without_a_reverse_rule_keep_the_forward_clarke_rule():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2 * 25, generator=g, dtype=torch.float64)
    y = torch.randn(4, 3, generator=g, dtype=torch.float64)
    for conv in (nn.Conv2d(2, 4, 3, groups=2), nn.Conv2d(2, 4, 2, padding="same")):  # grouped; asymmetric padding
        model = nn.Sequential(nn.Unflatten(1, (2, 5, 5)), nn.Conv2d(2, 2, 1), nn.ReLU(), conv, nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
        model(x.float())
        model = model.double()
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        end = {k: v + 0.5 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in start.items()}
        prob = _problem(model, start, end, x, y, "mse")
        assert not prob.adjoint, conv
        (dlo, dhi), _ = (r[0] for r in enclose(prob, [0.25], [0.5]))
        for f in (0.25, 0.4, 0.5):
            _, dL = _float_reference(model, start, end, x, y, "mse", f)
            assert dlo - 1e-10 <= dL <= dhi + 1e-10


class _UnflattenAfterKinks(nn.Module):
    """Linear – ReLU – unflatten (method or function) – conv – ReLU – mean – linear: the reshape
    sits behind a kink, so the reverse walk passes it."""

    def __init__(self, method: bool) -> None:
        super().__init__()
        self.method = method
        self.a, self.conv, self.b = nn.Linear(5, 12), nn.Conv2d(2, 3, 2), nn.Linear(3, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        h = h.unflatten(1, (2, 3, 2)) if self.method else torch.unflatten(h, 1, (2, 3, 2))
        return self.b(F.relu(self.conv(h)).mean((2, 3)))


@pytest.mark.parametrize("method", [True, False])
def test_unflatten_behind_a_kink_is_enclosed_and_passed_back(method):
    for seed in range(4):
        torch.manual_seed(seed)
        model, start, end, x, y = moved_from_default_init(_UnflattenAfterKinks(method).double(), seed, 0.5, 6, classes=2)
        prob = _problem(model, start, end, x, y, "ce")
        assert prob.adjoint
        for ca, cb in ((0.0, 0.25), (0.5, 0.5 + 2.0**-6), (0.75, 1.0)):
            (dlo, dhi), (llo, lhi) = (r[0] for r in enclose(prob, [ca], [cb]))
            for f in (0.0, 0.5, 1.0):
                L, dL = _float_reference(model, start, end, x, y, "ce", ca + f * (cb - ca))
                slack = 1e-10 * (1 + abs(L) + abs(dL))
                assert llo - slack <= L <= lhi + slack and dlo - slack <= dL <= dhi + slack, (method, seed, ca, f)


def _cnn_path(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).double()
    return moved_from_default_init(model, seed, 0.3, 24)


def test_the_reverse_walk_is_the_tighter_bound_on_a_relu_cnn():
    # three ReLU layers behind convolutions: the reverse walk is the default
    assert_tighter_than_the_forward_rule(_cnn_path(), ([0.0, 0.5, 0.875], [2.0**-4, 0.5 + 2.0**-4, 0.875 + 2.0**-4]), 0.8)


def test_cnn_decisions_agree_with_a_grid():
    assert_decided_as_a_grid_shows(_cnn_path(2), budget=30.0)


def walk_back(prob, x, y, loss, cell):
    """The reverse walk on one cell: (node → (centre, slope, radius) of its cotangent, node → the
    radius's Euclidean norm bound where one is tracked)."""
    from mli_theory.certify.adjoint import Tape, kink_bound
    from mli_theory.certify.enclosures import EnclosureNumbers
    from mli_theory.certify.partition import _ce_terms, _mse_cotangent
    from mli_theory.geometry.interpreter import interpret

    from mli_theory.certify.partition import _statistics

    mid, rad = (cell[0] + cell[1]) / 2, (cell[1] - cell[0]) / 2
    m, h = torch.tensor([mid], dtype=torch.float64), torch.tensor([rad], dtype=torch.float64)
    # under bn=recompute the statistics are enclosed as the certifier encloses them
    params = prob.params if not prob.statistics else {**prob.params, **_statistics(prob, m, h, None)}
    nt = EnclosureNumbers(m, h)
    nt.deferred = []
    tape = Tape(nt)
    out = interpret(prob.gm, nt, [x], params, on_node=tape.record)
    cot = _ce_terms(out, y, h, cotangent=True)[2] if loss == "ce" else _mse_cotangent(out, y, h.reshape(-1, 1, 1))
    keep: dict = {}
    norms: dict = {}
    kink_bound(prob.gm, tape, prob.reads, prob.output, cot, keep=keep, keep_norms=norms)
    return keep, norms


def _true_gradients(gm, start, end, x, y, loss, alpha):
    """Node name → ∂(Σ ℓ)/∂(the node's output) at α, every entry of the state interpolated."""
    return gradients_at(gm, {k: start[k] + alpha * (end[k] - start[k]) for k in start}, x, y, loss)


def gradients_at(gm, state, x, y, loss):
    """Node name → ∂(Σ ℓ)/∂(the node's output) in ``state``, by autograd through the traced graph in
    float64 (Σ ℓ: summed cross-entropy, or ½Σ(z − y)²: the units of the reverse walk's cotangents).
    An identity's output is its input tensor itself, whose gradient is that of all its uses: left out."""
    g2 = copy.deepcopy(gm).double()
    g2.load_state_dict(state, strict=False)
    outs: dict[str, torch.Tensor] = {}

    class Keep(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            aliased = any(out is self.env[a] for a in n.all_input_nodes)
            if isinstance(out, torch.Tensor) and out.requires_grad and not aliased:
                out.retain_grad()
                outs[n.name] = out
            return out

    z = Keep(g2).run(x)
    total = F.cross_entropy(z, y, reduction="sum") if loss == "ce" else 0.5 * ((z - y) ** 2).sum()
    total.backward()
    return {k: v.grad for k, v in outs.items() if v.grad is not None}


@settings(deadline=None, max_examples=25)
@given(conv_cases())
def test_every_cotangent_of_the_reverse_walk_contains_the_true_gradient(case):
    """The reverse walk's Taylor model c + s·t ± r of ∂(Σℓ)/∂(node output), for every node it
    visits (convolutions, averages, ReLUs, sums), against autograd at points of the cell: a wrong
    centre, slope or radius of any reverse rule shows here, not only where it changes a verdict."""
    spec, loss, seed, scale, (ca, cb) = case
    model, start, end, x, y = _random_path(spec, loss, seed, scale)
    prob = _problem(model, start, end, x, y, loss)
    assert prob.adjoint
    mid, rad = (ca + cb) / 2, (cb - ca) / 2
    keep, _ = walk_back(prob, x, y, loss, (ca, cb))
    if spec[7]:  # the block's convolutions lie after the stem's kinks
        assert any(n.op == "call_module" and isinstance(prob.gm.get_submodule(n.target), nn.Conv2d) for n in keep), "no convolution visited"
    for f in (0.0, 0.37, 0.81, 1.0):
        alpha = ca + f * (cb - ca)
        true = _true_gradients(prob.gm, prob.start, prob.end, x, y, loss, alpha)
        for node, (c, s, r) in keep.items():
            gt = true[node.name].unsqueeze(0)
            t = alpha - mid
            err = (gt - (c + s * t)).abs() - r
            slack = 1e-9 * (1 + gt.abs() + c.abs() + s.abs() * rad)
            assert bool((err <= slack).all()), (case, node.name, f, float(err.max()))


@settings(deadline=None, max_examples=20)
@given(st.sampled_from(["pool", "clamps"]), st.sampled_from(["mse", "ce"]), st.integers(0, 2**20), st.sampled_from([2, 4, 7]),
       st.integers(0, 2**7 - 1))
def test_every_cotangent_through_pools_and_clamps_contains_the_true_gradient(net, loss, seed, j, k):
    """The reverse walk's Taylor model of ∂(Σℓ)/∂(node output) at every node it visits (max pools,
    clamps, scalings among them) against autograd at points of a dyadic cell: a cotangent too
    narrow shows here even where the loose enclosure of L′ would hide it."""
    if net == "pool":
        model = _PoolCNN(1 + seed % 2)
        with torch.no_grad():
            f = model.pool(model.c1(torch.zeros(1, 1, 6, 6))).shape[-1]
        model.fc = nn.Linear(2 * f * f, 2)
    else:
        model = _DeepClamps(5)
    model = model.double()
    start, end, x, y = _endpoints_and_data(model, torch.Generator().manual_seed(seed), (3, 1, 6, 6) if net == "pool" else (3, 3), loss)
    prob = _problem(model, start, end, x, y, loss)
    assert prob.adjoint
    k %= 2**j
    ca, cb = k / 2**j, (k + 1) / 2**j
    mid, rad = (ca + cb) / 2, (cb - ca) / 2
    keep, _ = walk_back(prob, x, y, loss, (ca, cb))
    kinds = {type(prob.gm.get_submodule(n.target)).__name__ if n.op == "call_module" else str(n.target) for n in keep}
    assert ("MaxPool2d" in kinds or "<function max_pool2d at" in " ".join(kinds)) if net == "pool" else "ReLU6" in kinds, kinds
    for f in (0.0, 0.2, 0.37, 0.5, 0.81, 1.0):
        alpha = ca + f * (cb - ca)
        true = _true_gradients(prob.gm, prob.start, prob.end, x, y, loss, alpha)
        for node, (c, s, r) in keep.items():
            gt = true[node.name].unsqueeze(0)
            err = (gt - (c + s * (alpha - mid))).abs() - r
            slack = 1e-9 * (1 + gt.abs() + c.abs() + s.abs() * rad)
            assert bool((err <= slack).all()), (net, loss, seed, node.name, f, float(err.max()))
