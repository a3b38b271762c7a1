"""The adjoint bound of the ReLU kinks' Clarke terms (certify/adjoint.py).

With the bound on, the forward walk propagates derivatives through a mixed ReLU neuron with the
midpoint slope and the reverse walk adds Σ sup|∂ℓ/∂a|·(1 − s)/2·|ṽ′| to the radius of L′. Checked
here: L and L′ from an independent 60-digit forward-mode evaluation lie in the enclosures on cells
chosen to straddle kinks (deep and narrow nets, ReLU and LeakyReLU, MSE and cross-entropy); a
single kink where the bound is attained at both ends of the cell (so a smaller bound fails); graphs
with residual sums, in-place ReLU, flatten, negation; the fall-back to the forward Clarke rule for
graphs the reverse walk does not cover; and that the bound is the tighter one on a deep net."""

from __future__ import annotations

import dataclasses

import mpmath as mp
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, jvp
from torch.nn import functional as F

import mli_theory as mt
from mli_theory.certify.partition import decide_by_enclosures, enclose, prepare
from mli_theory.exact import deadline_after
from mli_theory.path import BNPolicy

from test_enclosure_soundness import _build, _reference

mp.mp.dps = 60


def _problem(model, start, end, x, y, loss, adjoint=True):
    line = mt.make_line(model, start, end, dtype=torch.float64)
    return prepare(line, mt.Dataset(x, y, loss, "t"), BNPolicy.FROZEN, adjoint=adjoint)


@st.composite
def deep_cases(draw):
    act = draw(st.sampled_from(["relu", "leaky"]))
    depth = draw(st.integers(2, 4))
    widths = [draw(st.integers(1, 3))] + [draw(st.integers(2, 6)) for _ in range(depth)] + [draw(st.integers(1, 3))]
    loss = draw(st.sampled_from(["mse", "ce"]))
    if loss == "ce":
        widths[-1] = max(2, widths[-1])
    n = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**20))
    scale = draw(st.sampled_from([0.3, 1.0, 3.0]))
    j = draw(st.sampled_from([2, 4, 7, 10]))
    k = draw(st.integers(0, 2**j - 1))
    fracs = draw(st.lists(st.floats(0, 1), min_size=2, max_size=4))
    return act, widths, loss, n, seed, scale, (k / 2**j, (k + 1) / 2**j), fracs


@settings(deadline=None)
@given(deep_cases(), st.booleans())
def test_adjoint_enclosures_contain_the_60_digit_loss_and_slope(case, float32):
    """``float32``: every product that may be computed in float32 is (the remainders' non-negative
    products and the reverse walk's centres, whatever their length: ``UPPER32_MIN_K`` = 1)."""
    from mli_theory.certify import enclosures as E

    act, widths, loss, n, seed, scale, (ca, cb), fracs = case
    model, start, end, x, y = _build(act, widths, False, seed, scale, loss, n)
    prob = _problem(model, start, end, x, y, loss)
    assert prob.adjoint
    saved, saved_share = E.UPPER32_MIN_K, E.SHARED_MAX_DENSITY
    E.UPPER32_MIN_K = 1 if float32 else saved
    E.SHARED_MAX_DENSITY = 1.0 if float32 else saved_share  # the sparse product of ĉ′ − ĝ whenever it applies
    try:
        (dlo, dhi), (llo, lhi) = (t[0] for t in enclose(prob, [ca], [cb]))
    finally:
        E.UPPER32_MIN_K, E.SHARED_MAX_DENSITY = saved, saved_share
    for f in fracs + [0.0, 1.0]:
        alpha = ca + f * (cb - ca)
        L, dL = _reference(model, act, start, end, x, y, loss, alpha)
        assert mp.mpf(llo) <= L <= mp.mpf(lhi), (case, float(L), llo, lhi)
        assert mp.mpf(dlo) <= dL <= mp.mpf(dhi), (case, float(dL), dlo, dhi)


def _one_kink(hidden_moves: bool):
    """x = 1, v(α) = s(α − 1/2) (exactly affine: no remainder), z = c·relu(v) (+ a moving hidden
    layer after it when ``hidden_moves``), MSE against y: L′ jumps at α = 1/2 from 0 to
    2(z − y)·c·s, and on a small cell around 1/2 the enclosure must reach both values."""
    s, c, y = 4.0, 1.5, 2.0
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    start = {"0.weight": torch.tensor([[-s / 2]], dtype=torch.float64), "0.bias": torch.zeros(1, dtype=torch.float64),
             "2.weight": torch.tensor([[c]], dtype=torch.float64), "2.bias": torch.zeros(1, dtype=torch.float64)}
    end = dict(start)
    end["0.weight"] = torch.tensor([[s / 2]], dtype=torch.float64)
    if hidden_moves:
        end["2.weight"] = torch.tensor([[c * 1.25]], dtype=torch.float64)
    x = torch.ones(1, 1, dtype=torch.float64)
    t = torch.full((1, 1), y, dtype=torch.float64)
    return model, start, end, x, t


def _around_the_kink(model, start, end, x, y, h=2.0**-20):
    """(lower, upper) of the L′ enclosure on [1/2 − h, 1/2 + h] with the adjoint bound, and the
    60-digit L′ at both ends."""
    prob = _problem(model, start, end, x, y, "mse")
    assert prob.adjoint
    (dlo, dhi), _ = (t[0] for t in enclose(prob, [0.5 - h], [0.5 + h]))
    left = _reference(model, "relu", start, end, x, y, "mse", 0.5 - h)[1]
    right = _reference(model, "relu", start, end, x, y, "mse", 0.5 + h)[1]
    return dlo, dhi, left, right


def test_a_single_kink_attains_the_bound_at_both_sides():
    for moves in (False, True):
        dlo, dhi, left, right = _around_the_kink(*_one_kink(moves))
        assert left == 0 and right < -1
        assert mp.mpf(dlo) <= right and mp.mpf(dhi) >= left
        # the bound is attained: the enclosure is no wider than the jump plus a little
        assert dhi - dlo <= float(left - right) * (1 + 1e-3) + 1e-6, (dlo, dhi, float(right))


def test_two_kinks_in_one_cell_need_the_clarke_set_of_the_backward_slope():
    """v1 = s(α − 1/2), v2 = relu(v1) + k(α − 1/2), z = c·relu(v2): both neurons change sign at
    α = 1/2, so the true L′ is 0 on the left and 2(z − y)c(s + k) on the right. The reverse walk
    must let the gradient pass the mixed second neuron with a slope in [0, 1] (taking 0 there, as
    a proven-negative neuron would, loses the first kink's share, and the enclosure misses the
    right-hand value)."""
    s, k, c, y = 4.0, 1.0, 1.5, 2.0
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    one, zero = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    start = {"0.weight": -s / 2 * one, "0.bias": zero, "2.weight": one, "2.bias": torch.tensor([-k / 2], dtype=torch.float64),
             "4.weight": c * one, "4.bias": zero}
    end = dict(start, **{"0.weight": s / 2 * one, "2.bias": torch.tensor([k / 2], dtype=torch.float64)})
    dlo, dhi, left, right = _around_the_kink(model, start, end, one.clone(), torch.full((1, 1), y, dtype=torch.float64))
    assert left == 0 and right < -1
    assert mp.mpf(dlo) <= right and mp.mpf(dhi) >= left, (dlo, dhi, float(right))


class _ResidualNoCat(nn.Module):
    """Residual sums, in-place ReLU, flatten, view, negation, a constant shift and a LeakyReLU:
    every reverse rule."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.leaky = nn.LeakyReLU(0.2)

    def forward(self, x):
        h = F.relu(self.a(x))
        r = self.b(h)
        r.relu_()
        u = h + r
        w = self.leaky(-u)
        v = torch.flatten(w.view(-1, 1, 4), 1)
        return self.c(v - 0.25).view(-1, 2)


def _float_reference(model, start, end, x, y, loss, alpha):
    """(L, L′) at α in float64 (torch.func.jvp on the interpolated parameters)."""
    names = {k for k, _ in model.named_parameters()}

    def loss_at(a):  # buffers (BatchNorm statistics) frozen at θT, as BNPolicy.FROZEN
        state = {k: start[k] + a * (end[k] - start[k]) if k in names else end[k] for k in start}
        out = functional_call(model, state, (x,))
        return F.mse_loss(out, y) if loss == "mse" else F.cross_entropy(out, y)

    a = torch.tensor(alpha, dtype=torch.float64)
    L, dL = jvp(loss_at, (a,), (torch.ones_like(a),))
    return float(L), float(dL)


@settings(deadline=None, max_examples=20)
@given(st.integers(0, 2**20), st.sampled_from(["mse", "ce"]), st.sampled_from([2, 5, 9]), st.integers(0, 2**9 - 1))
def test_residual_graphs_take_the_reverse_walk_and_stay_sound(seed, loss, j, k):
    torch.manual_seed(seed)
    model = _ResidualNoCat().double()
    g = torch.Generator().manual_seed(seed)
    start = {k_: torch.randn(v.shape, generator=g, dtype=torch.float64) for k_, v in model.state_dict().items()}
    end = {k_: v + torch.randn(v.shape, generator=g, dtype=torch.float64) for k_, v in start.items()}
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 2, generator=g, dtype=torch.float64) if loss == "mse" else torch.randint(0, 2, (4,), generator=g)
    prob = _problem(model, start, end, x, y, loss)
    assert prob.adjoint
    k %= 2**j
    ca, cb = k / 2**j, (k + 1) / 2**j
    (dlo, dhi), (llo, lhi) = (t[0] for t in enclose(prob, [ca], [cb]))
    for f in (0.0, 0.3, 0.71, 1.0):
        L, dL = _float_reference(model, start, end, x, y, loss, ca + f * (cb - ca))
        slack = 1e-10 * (1 + abs(L) + abs(dL))
        assert llo - slack <= L <= lhi + slack
        assert dlo - slack <= dL <= dhi + slack, (seed, loss, j, k, f, dL, dlo, dhi)


def test_graphs_without_reverse_rules_keep_the_forward_clarke_rule():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 2, generator=g, dtype=torch.float64)
    mixed = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    gelu = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)).double()  # a smooth op after a kink
    smooth = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    for model in (mixed, gelu, smooth):
        start = {k: v.clone() for k, v in model.state_dict().items()}
        end = {k: (v + 0.5 * torch.randn(v.shape, generator=g, dtype=torch.float64) if k.endswith(("weight", "bias")) else v.clone())
               for k, v in start.items()}
        prob = _problem(model, start, end, x, y, "mse")
        assert not prob.adjoint
        (dlo, dhi), _ = (t[0] for t in enclose(prob, [0.25], [0.5]))
        for f in (0.25, 0.4, 0.5):
            _, dL = _float_reference(model, start, end, x, y, "mse", f)
            assert dlo - 1e-10 <= dL <= dhi + 1e-10


def moved_from_default_init(model, seed, scale, n, classes=4):
    """(model, start, end, x, y): θ0 the model's default initialisation, θT = θ0 + scale·N(0, 1),
    n Gaussian inputs and random labels."""
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    end = {k: v + scale * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in start.items()}
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Unflatten)))
    d_in = first.in_features if isinstance(first, nn.Linear) else int(torch.Size(first.unflattened_size).numel())
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return model, start, end, x, y


def _deep_default_init(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(*[m for i in range(5) for m in (nn.Linear(16 if i == 0 else 64, 64), nn.ReLU())], nn.Linear(64, 4)).double()
    return moved_from_default_init(model, seed, 0.2, 32)


def assert_tighter_than_the_forward_rule(path, cells, most, least=1.0):
    """The reverse walk is the default here, both enclosures contain L′ inside each cell, and the
    ratio of their widths is below ``most`` on every cell and below ``least`` on one."""
    model, start, end, x, y = path
    prob = _problem(model, start, end, x, y, "ce", adjoint=None)
    assert prob.adjoint
    with_adjoint = enclose(prob, *cells)[0]
    clarke = enclose(dataclasses.replace(prob, adjoint=False), *cells)[0]
    for (alo, ahi), (clo, chi), a, b in zip(with_adjoint, clarke, *cells):
        _, dL = _float_reference(model, start, end, x, y, "ce", (a + b) / 2)
        assert alo <= dL <= ahi and clo <= dL <= chi
    widths = [(ahi - alo) / (chi - clo) for (alo, ahi), (clo, chi) in zip(with_adjoint, clarke)]
    assert max(widths) < most and min(widths) < least, widths


def assert_decided_as_a_grid_shows(path, budget=20.0):
    """A decision at T = 1e-3 within ``budget`` seconds, consistent with a 401-point float64 grid."""
    model, start, end, x, y = path
    line = mt.make_line(model, start, end, dtype=torch.float64)
    v = decide_by_enclosures(line, mt.Dataset(x, y, "ce", "t"), tol=1e-3, deadline=deadline_after(budget))
    assert v.status in ("monotone", "non_monotone"), v.reason
    grid = [_float_reference(model, start, end, x, y, "ce", i / 400)[0] for i in range(401)]
    rise = max(max(grid[j] - min(grid[: j + 1]) for j in range(len(grid))), 0.0)
    if v.status == "monotone":
        assert rise <= v.rise_bound + 1e-12
    else:
        assert v.rise_lower > 1e-3 and rise >= v.rise_lower - 1e-9


def test_the_adjoint_bound_is_the_default_from_three_relu_layers():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    for depth, expected in ((1, False), (2, False), (3, True)):
        model, start, end, _, _ = _build("relu", [3] + [4] * depth + [2], False, depth, 1.0, "mse", 4)
        assert _problem(model, start, end, x, y, "mse", adjoint=None).adjoint is expected
        assert _problem(model, start, end, x, y, "mse", adjoint=False).adjoint is False
        assert _problem(model, start, end, x, y, "mse", adjoint=True).adjoint is True


def test_the_adjoint_bound_is_much_tighter_on_a_deep_net():
    assert_tighter_than_the_forward_rule(_deep_default_init(), ([0.0, 0.5, 0.9], [2.0**-6, 0.5 + 2.0**-6, 0.9 + 2.0**-6]), 0.75, 0.2)


def test_decisions_agree_with_and_without_the_adjoint_bound():
    assert_decided_as_a_grid_shows(_deep_default_init(3))


class _ParameterAdded(nn.Module):
    """A parameter vector added to, and another multiplying, an activation (no example axis of
    their own), and a branch computed from a buffer alone: as many examples as cells, the case where
    a wrong broadcast would silently pair example i with cell i (found by an adversarial review)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.p = nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 1), nn.Linear(2, 3)
        self.extra = nn.Parameter(torch.zeros(3))
        self.scale = nn.Parameter(torch.ones(3))
        self.register_buffer("pos", torch.ones(2))

    def forward(self, x):
        h = F.relu(self.a(x) + self.extra) * self.scale
        h = F.relu(self.b(h) + F.relu(self.p(self.pos)))
        return self.c(F.relu(h))


def test_parameters_and_example_free_branches_broadcast_against_the_examples():
    model = _ParameterAdded().double()
    for seed, cells in ((0, 2), (1, 8)):
        g = torch.Generator().manual_seed(seed)
        start = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in model.state_dict().items()}
        end = {k: v + torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in start.items()}
        end["extra"] = start["extra"] + 10.0
        end["pos"] = start["pos"]  # a buffer that does not move: the branch is a constant of the path
        x = torch.randn(cells, 2, generator=g, dtype=torch.float64)
        y = torch.randn(cells, 1, generator=g, dtype=torch.float64)
        a = [i / cells for i in range(cells)]
        b = [(i + 1) / cells for i in range(cells)]
        for adjoint in (None, True, False):
            prob = _problem(model, start, end, x, y, "mse", adjoint=adjoint)
            dB, lB = enclose(prob, a, b)
            for (ca, cb), (dlo, dhi), (llo, lhi) in zip(zip(a, b), dB, lB):
                for f in (0.0, 0.5, 1.0):
                    L, dL = _float_reference(model, start, end, x, y, "mse", ca + f * (cb - ca))
                    slack = 1e-10 * (1 + abs(L) + abs(dL))
                    assert llo - slack <= L <= lhi + slack, (seed, adjoint, ca, L, llo, lhi)
                    assert dlo - slack <= dL <= dhi + slack, (seed, adjoint, ca, dL, dlo, dhi)


def _logit_model(k: int, seed: int, c_scale: float, g_scale: float, e_scale: float, h: float):
    """A random value model u = ū + ĝt ± e of logits differences (zero on the label, 2 examples, one
    cell of half-width h) and the softmax box over the cell: (generator, n, y, onehot, ū, ĝ, e, u,
    h as a tensor, (p_lo, p_hi))."""
    from mli_theory.certify.enclosures import TM
    from mli_theory.certify.partition import _softmax_box

    g = torch.Generator().manual_seed(seed)
    n = 2
    y = torch.randint(0, k, (n,), generator=g)
    onehot = torch.zeros(1, n, k, dtype=torch.bool).scatter_(-1, y.reshape(1, n, 1), True)
    zero = torch.zeros(1, n, k, dtype=torch.float64)
    c = torch.where(onehot, zero, c_scale * torch.randn(1, n, k, generator=g, dtype=torch.float64))
    gg = torch.where(onehot, zero, g_scale * torch.randn(1, n, k, generator=g, dtype=torch.float64))
    e = torch.where(onehot, zero, e_scale * torch.rand(1, n, k, generator=g, dtype=torch.float64))
    u = TM(c, gg, e)
    hv = torch.full((1, 1, 1), h, dtype=torch.float64)
    lo, hi = u.bounds(hv)
    p_cell = _softmax_box(torch.where(onehot, zero, lo), torch.where(onehot, zero, hi), onehot)
    return g, n, y, onehot, c, gg, e, u, hv, p_cell


@settings(deadline=None, max_examples=30)
@given(st.integers(2, 12), st.integers(0, 2**20), st.sampled_from([0.3, 2.0, 8.0]), st.sampled_from([0.0, 1e-9, 1e-4]),
       st.sampled_from([2.0**-6, 2.0**-4, 2.0**-2]))
def test_the_softmax_taylor_model_holds_along_the_whole_cell(k, seed, g_scale, e_scale, h):
    """p = softmax(u) on k ≠ y from u = ū + ĝt ± e (:func:`_softmax_tm`), where its second-order form
    (slope J(ū)ĝ, remainder (h²/2)·p̄·max(A, V)) is the narrower one: the remainder is attained inside
    the cell, so 33 points of it and the remainder box's corners are checked against 60-digit softmax
    values; and the form is used (the radius is below the mean value form's on most entries)."""
    from mli_theory.certify.partition import _softmax_tm

    g, n, y, onehot, c, gg, e, u, hv, p_cell = _logit_model(k, seed, 2.0, g_scale, e_scale, h)
    pc, ps, pr = _softmax_tm(u, hv, onehot, p_cell)
    signs = torch.randint(0, 2, (3, n, k), generator=g, dtype=torch.float64) * 2 - 1
    for step in range(33):
        t = mp.mpf(h) * (mp.mpf(step) / 16 - 1)
        for sgn in [torch.zeros(n, k, dtype=torch.float64), *signs]:
            for i in range(n):
                vals = [mp.mpf(0) if j == int(y[i]) else mp.mpf(float(c[0, i, j])) + mp.mpf(float(gg[0, i, j])) * t
                        + mp.mpf(float(e[0, i, j])) * mp.mpf(float(sgn[i, j])) for j in range(k)]
                top = max(vals)
                ex = [mp.exp(v - top) for v in vals]
                tot = sum(ex)
                for j in range(k):
                    if j == int(y[i]):
                        continue
                    centre = mp.mpf(float(pc[0, i, j])) + mp.mpf(float(ps[0, i, j])) * t
                    assert abs(ex[j] / tot - centre) <= mp.mpf(float(pr[0, i, j])), (k, seed, g_scale, e_scale, h, float(t), i, j)
    # the mean value form alone (the interval Jacobian over the cell's box) is wider where the
    # remainder is the curvature's (no e) and |ĝ|h is small: the second-order form is what these checks exercised
    if e_scale == 0.0 and k >= 3 and g_scale >= 2.0 and g_scale * h <= 0.25:
        _, _, mv = _softmax_tm(u, hv, onehot, p_cell, second_order=False)
        assert float(pr.sum()) < float(mv.sum()), (float(pr.sum()), float(mv.sum()), k, seed)


@settings(deadline=None, max_examples=40)
@given(st.integers(2, 5), st.integers(0, 2**20), st.sampled_from([0.0, 1e-3, 0.3, 2.0]), st.sampled_from([0.0, 1e-3, 0.5, 3.0]),
       st.sampled_from([2.0**-10, 2.0**-3, 0.5]))
def test_the_cross_entropy_cotangent_contains_p_minus_the_label_on_the_whole_cell(k, seed, g_scale, e_scale, h):
    """∇_z ℓ = p − e_y as a Taylor model from the logits' value model u = ū + ĝt ± e: checked at the
    cell ends and the corners of the remainder box (where the remainder term is attained), against
    60-digit softmax values."""
    from mli_theory.certify.partition import _ce_cotangent

    g, n, y, onehot, c, gg, e, u, hv, p_cell = _logit_model(k, seed, 3.0, g_scale, e_scale, h)
    oc, os_, orad = _ce_cotangent(u, hv, onehot, p_cell)
    signs = torch.randint(0, 2, (6, n, k), generator=g, dtype=torch.float64) * 2 - 1
    for t in (-h, 0.0, h / 3, h):
        for sgn in signs:
            for i in range(n):
                vals = [mp.mpf(0) if j == int(y[i]) else mp.mpf(float(c[0, i, j])) + mp.mpf(float(gg[0, i, j])) * mp.mpf(t)
                        + mp.mpf(float(e[0, i, j])) * mp.mpf(float(sgn[i, j])) for j in range(k)]
                top = max(vals)
                ex = [mp.exp(v - top) for v in vals]
                tot = sum(ex)
                for j in range(k):
                    true = ex[j] / tot - (1 if j == int(y[i]) else 0)
                    centre = mp.mpf(float(oc[0, i, j])) + mp.mpf(float(os_[0, i, j])) * mp.mpf(t)
                    assert abs(true - centre) <= mp.mpf(float(orad[0, i, j])), (k, seed, g_scale, e_scale, h, t, i, j)


class _InplaceTent(nn.Module):
    """An in-place activation whose result is discarded, read through the tensor it changed after a
    node that is neither a kink nor a layer (a scaling, a view), then three ReLU layers (the reverse
    walk's default). With θ0 → θT moving only the first biases, the output is a tent of height 2
    (4 in the loss) on α ∈ [0.512, 0.516], between the validation's points."""

    def __init__(self, act, mid):
        super().__init__()
        self.act, self.mid = act, mid
        self.l1, self.l2, self.l3, self.l4 = nn.Linear(1, 3), nn.Linear(3, 1), nn.Linear(1, 1), nn.Linear(1, 1)

    def forward(self, x):
        h = self.l1(x)
        if self.act == "clamp_":
            h.clamp_(0.0, 1.0)
        elif self.act == "relu_":
            h.relu_()
        else:
            F.hardtanh(h, 0.0, 1.0, inplace=True)
        z = h * 2.0 if self.mid == "times" else h.view(h.shape[0], 3)
        return self.l4(torch.relu(torch.relu(self.l3(torch.relu(self.l2(z))))))


@pytest.mark.parametrize("act", ["clamp_", "relu_", "hardtanh"])
@pytest.mark.parametrize("mid", ["times", "view"])
def test_a_kink_changed_in_place_gets_its_cotangent(act, mid):
    """The reverse walk visits only nodes downstream of a kink, and decided that downstream along the
    graph's own edges, where ``h * 2`` reads ``h`` before ``h.clamp_()`` changed it: the product's
    cotangent was dropped, the clamp's kinks got none, and a loss rise of 4 (1 through the view) was
    certified ``monotone`` (a red team's find; ``relu_`` with a view was affected before clamps
    reached the walk). Now the walk follows the edges it sends cotangents on: the rise is proven,
    and plain torch confirms its witness."""
    from mli_theory import Dataset, check

    def t(v):
        return torch.tensor(v, dtype=torch.float64)

    s0 = {"l1.weight": torch.zeros(3, 1, dtype=torch.float64), "l1.bias": t([-256.0, -257.0, -258.0]),
          "l2.weight": t([[1.0, -2.0, 1.0]]) if act == "relu_" else t([[1.0, -1.0, 0.0]]), "l2.bias": t([10.0]),
          "l3.weight": t([[1.0]]), "l3.bias": t([0.0]), "l4.weight": t([[1.0]]), "l4.bias": t([-10.0])}
    s1 = {**s0, "l1.bias": s0["l1.bias"] + 500.0}
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    model = _InplaceTent(act, mid).double()
    cert = check(model, s0, s1, Dataset(x, y, "mse", "d"), alphas=21, certify=True, tol=1e-3, geometry=False).certificate
    assert cert.status == "non_monotone", (cert.status, cert.reason)

    def plain(a):
        with torch.no_grad():
            return float(F.mse_loss(torch.func.functional_call(_InplaceTent(act, mid).double(), {k: s0[k] + a * (s1[k] - s0[k]) for k in s0}, (x,)), y))

    a, b = cert.where
    assert plain(b) - plain(a) > 1e-3


def test_a_kink_left_without_a_cotangent_stops_the_reverse_walk(monkeypatch):
    """Defence in depth for the finding above: with the old choice of nodes planted back (the graph's
    own edges), the walk raises instead of leaving the clamp's kinks out of L′, and the certifier
    falls back to the forward Clarke rule, which proves the rise."""
    from mli_theory import Dataset, check
    from mli_theory.certify import adjoint

    from test_adjoint_conv import walk_back

    def raw_edges(gm, tape, reads):
        out = set()
        for node in gm.graph.nodes:
            if node in tape.kinks or node in tape.sources or node in tape.inputs or any(a in out for a in node.all_input_nodes):
                out.add(node)
        return out

    def t(v):
        return torch.tensor(v, dtype=torch.float64)

    s0 = {"l1.weight": torch.zeros(3, 1, dtype=torch.float64), "l1.bias": t([-256.0, -257.0, -258.0]), "l2.weight": t([[1.0, -1.0, 0.0]]),
          "l2.bias": t([10.0]), "l3.weight": t([[1.0]]), "l3.bias": t([0.0]), "l4.weight": t([[1.0]]), "l4.bias": t([-10.0])}
    s1 = {**s0, "l1.bias": s0["l1.bias"] + 500.0}
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    prob = _problem(_InplaceTent("clamp_", "times").double(), s0, s1, x, y, "mse")
    assert prob.adjoint
    monkeypatch.setattr(adjoint, "_downstream_of_kinks", raw_edges)
    with pytest.raises(RuntimeError, match="the kinks of clamp_ received no cotangent"):
        walk_back(prob, x, y, "mse", (0.5, 0.515625))
    # the planning probe walks once too, so the walk is not even planned
    assert not _problem(_InplaceTent("clamp_", "times").double(), s0, s1, x, y, "mse").adjoint
    cert = check(_InplaceTent("clamp_", "times").double(), s0, s1, Dataset(x, y, "mse", "d"), alphas=21, certify=True, tol=1e-3,
                 geometry=False).certificate
    assert cert.status == "non_monotone", cert.reason
