"""Loss surfaces, filter-normalised directions, roughness and MLI path statistics (issue 10, items 4–6)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from mli_theory.connectivity.directions import filter_axes, normalize_filters, orthogonalize, random_directions
from mli_theory.connectivity.pathstats import path_statistics, separate_rises
from mli_theory.connectivity.roughness import landscape_roughness, normalized_total_variation, roughness_index
from mli_theory.connectivity.surface import axis_grid, loss_surface
from mli_theory.errors import InputError
from mli_theory.inputs.data import Dataset
from mli_theory.path import BNPolicy, loss_curve, make_line, max_rise

F64 = torch.float64


# ----------------------------------------------------------------------------- helpers


def _clone(sd):
    return {k: v.detach().clone() for k, v in sd.items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _mlp(bn: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 6)]
    if bn:
        layers.append(nn.BatchNorm1d(6))
    layers += [nn.Tanh(), nn.Linear(6, 3)]
    return nn.Sequential(*layers).double()


def _endpoints(model: nn.Module, seed: int = 1, scale: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    init = _clone(model.state_dict())
    final = {k: (v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype)) if v.is_floating_point() else v.clone() for k, v in init.items()}
    third = {k: (v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype)) if v.is_floating_point() else v.clone() for k, v in init.items()}
    for sd in (final, third):  # running variances must stay positive
        for k in sd:
            if k.endswith("running_var"):
                sd[k] = sd[k].abs() + 0.5
    return init, final, third


def _data(n: int = 24, d: int = 4, k: int = 3, seed: int = 0, loss: str = "mse") -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, k, generator=g, dtype=F64) if loss == "mse" else torch.randint(0, k, (n,), generator=g)
    return Dataset(x, y, loss, "test")


class _Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3)
        self.bn = nn.BatchNorm2d(5)
        self.up = nn.ConvTranspose2d(5, 4, 2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.up(torch.relu(self.bn(self.conv(x))))
        return self.fc(h.mean(dim=(2, 3)))


@pytest.fixture
def no_packed(monkeypatch):
    """The strategies the packed evaluation otherwise takes over on CPU (vmap chunks, the first-layer
    split, the split loop): the tests of those paths switch it off; tests/test_surface_speedups.py
    checks the packed evaluation itself."""
    import mli_theory.connectivity.surface as surface_module

    monkeypatch.setattr(surface_module, "_PACKED", False)


# ----------------------------------------------------------------------------- directions


def test_filter_axes_follow_layer_types():
    axes = filter_axes(_Convs())
    assert axes == {"conv.weight": 0, "up.weight": 1, "fc.weight": 0}


def test_each_filter_has_the_norm_of_the_weights_filter():
    model = _Convs().double()
    ref = {k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    (d,) = random_directions(model, ref, 1, seed=3)
    for name, axis in filter_axes(model).items():
        dn = d[name].movedim(axis, 0).reshape(d[name].shape[axis], -1).norm(dim=1)
        rn = ref[name].movedim(axis, 0).reshape(ref[name].shape[axis], -1).norm(dim=1)
        torch.testing.assert_close(dn, rn, rtol=1e-12, atol=0)
        assert not torch.equal(d[name], ref[name])  # a random direction, not the weights
    # biases, BatchNorm affine parameters and every buffer are zero by default
    for k in ("conv.bias", "bn.weight", "bn.bias", "up.bias", "fc.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        assert not d[k].any(), k
    assert d["bn.num_batches_tracked"].dtype == torch.int64


def test_include_bn_and_bias_scales_each_vector_to_its_norm():
    model = _Convs().double()
    ref = {k: v + 0.3 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    (d,) = random_directions(model, ref, 1, seed=0, include_bn_and_bias=True)
    for k in ("conv.bias", "bn.weight", "bn.bias", "fc.bias"):
        assert math.isclose(float(d[k].norm()), float(ref[k].norm()), rel_tol=1e-12)
    for k in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        assert not d[k].any(), k


def test_zero_norm_filter_gives_zero_direction():
    ref = torch.ones(3, 4, dtype=F64)
    ref[1] = 0.0
    out = normalize_filters(torch.randn(3, 4, dtype=F64), ref, 0)
    assert not out[1].any() and torch.allclose(out[0].norm(), torch.tensor(2.0, dtype=F64))


def test_directions_are_zero_mean_gaussian_before_scaling():
    """The entries divided by their filter's scale are N(0,1)-like: mean ≈ 0 (a uniform[0,1) draw fails)."""
    model = nn.Linear(400, 300).double()
    ref = _clone(model.state_dict())
    (d,) = random_directions(model, ref, 1, seed=123)
    w = d["weight"]
    z = w / w.norm(dim=1, keepdim=True) * math.sqrt(w.shape[1])  # each row rescaled to unit RMS
    n = z.numel()
    assert abs(float(z.mean())) < 4.0 / math.sqrt(n)  # 4 standard errors
    assert abs(float(z.pow(2).mean()) - 1.0) < 1e-9
    frac_neg = float((z < 0).double().mean())
    assert abs(frac_neg - 0.5) < 4 * 0.5 / math.sqrt(n)
    # the same statistic on a non-centred draw (as loss-landscapes' rand) is far from 0
    u = torch.rand(w.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    u = u / u.norm(dim=1, keepdim=True) * math.sqrt(w.shape[1])
    assert float(u.mean()) > 100.0 / math.sqrt(n)


def test_seeded_directions_are_reproducible_and_leave_global_rng_alone():
    model = _mlp()
    ref = _clone(model.state_dict())
    state = torch.get_rng_state()
    a = random_directions(model, ref, 2, seed=7)
    b = random_directions(model, ref, 2, seed=7)
    c = random_directions(model, ref, 2, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0]["0.weight"], c[0]["0.weight"])


def test_second_direction_orthogonal_after_normalisation():
    model = _Convs().double()
    ref = _clone(model.state_dict())
    names = [n for n, _ in model.named_parameters()]
    d1, d2 = random_directions(model, ref, 2, seed=5, include_bn_and_bias=True)
    dot = sum(float((d1[n] * d2[n]).sum()) for n in names)
    n1 = math.sqrt(sum(float(d1[n].pow(2).sum()) for n in names))
    n2 = math.sqrt(sum(float(d2[n].pow(2).sum()) for n in names))
    assert abs(dot) <= 1e-12 * n1 * n2
    # d2 kept its overall norm through the Gram-Schmidt step
    (raw1, raw2) = random_directions(model, ref, 2, seed=5, include_bn_and_bias=True, orthogonal=False)
    assert math.isclose(n2, math.sqrt(sum(float(raw2[n].pow(2).sum()) for n in names)), rel_tol=1e-12)
    assert _same(raw1, d1)  # the first direction is untouched, its filter norms exact


def test_orthogonalize_is_a_projection():
    a = {"w": torch.tensor([1.0, 0.0], dtype=F64)}
    b = {"w": torch.tensor([1.0, 1.0], dtype=F64)}
    out = orthogonalize(b, a, ["w"])
    torch.testing.assert_close(out["w"], torch.tensor([0.0, math.sqrt(2.0)], dtype=F64))


def test_directions_built_on_the_reference_device(device):
    model = _mlp()
    ref = {k: v.to(device) for k, v in model.state_dict().items()}
    d1, d2 = random_directions(model, ref, 2, seed=0)
    assert all(t.device.type == torch.device(device).type and t.dtype == ref[k].dtype for k, t in d1.items())


# ----------------------------------------------------------------------------- surfaces


def test_caller_model_and_tensors_unchanged():
    model = _mlp(bn=True)
    init, final, third = _endpoints(model)
    data = _data()
    before = (_clone(model.state_dict()), _clone(init), _clone(final), _clone(third), data.x.clone(), data.y.clone())
    training = model.training
    rng = torch.get_rng_state()
    loss_surface(model, init, final, data, dims=2, steps=3, dtype=F64)
    loss_surface(model, init, final, data, dims=2, plane=True, third=third, steps=3, dtype=F64, bn="recompute")
    assert _same(model.state_dict(), before[0]) and _same(init, before[1]) and _same(final, before[2]) and _same(third, before[3])
    assert torch.equal(data.x, before[4]) and torch.equal(data.y, before[5])
    assert model.training == training
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("bn", ["recompute", "interpolate", "frozen"])
def test_plane_row_y0_equals_loss_curve(bn):
    model = _mlp(bn=True)
    init, final, third = _endpoints(model)
    data = _data()
    s = loss_surface(model, init, final, data, dims=2, plane=True, third=third, steps=9, span=0.0, dtype=F64, bn=bn)
    assert s.y[0] == 0.0 and s.x == tuple(i / 8 for i in range(9))
    line = make_line(model, init, final, dtype=F64)
    curve = loss_curve(line, data, s.x, bn=BNPolicy(bn))
    assert max(abs(a - b) for a, b in zip(s.losses[0], curve.losses)) <= 1e-10
    assert s.mli_line == ((0.0, 0.0), (1.0, 0.0)) and s.points["final"] == (1.0, 0.0)


def test_plane_puts_the_third_point_at_beta_1():
    model = _mlp()
    init, final, third = _endpoints(model)
    data = _data()
    s = loss_surface(model, init, final, data, dims=2, plane=True, third=third, steps=3, span=0.0, dtype=F64)
    beta = s.points["third"][0]
    line = make_line(model, third, third, dtype=F64)
    l_third = loss_curve(line, data, [0.0, 1.0], bn="interpolate").losses[0]
    s2 = loss_surface(model, init, final, data, dims=2, plane=True, third=third, steps=3, span=0.0, dtype=F64, chunk=1)
    # evaluate exactly at (beta, 1) through the frame: a 1-point check via a custom grid
    from mli_theory.connectivity.surface import evaluate_points, plane_frame

    ln = make_line(model, init, final, dtype=F64)
    th = {k: v.to(F64) for k, v in third.items()}
    frame, b2 = plane_frame(ln, th, dims=2, bn=BNPolicy.INTERPOLATE)
    (val,), _, _ = evaluate_points(ln, frame, [(beta, 1.0)], data, chunk=1)
    assert b2 == beta and abs(val - l_third) <= 1e-10
    assert s2.losses == s.losses or max(abs(a - b) for r1, r2 in zip(s.losses, s2.losses) for a, b in zip(r1, r2)) <= 1e-12


def test_third_on_the_line_is_refused():
    model = _mlp()
    init, final, _ = _endpoints(model)
    mid = {k: 0.5 * (init[k] + final[k]) if v.is_floating_point() else v for k, v in init.items()}
    with pytest.raises(InputError, match="line"):
        loss_surface(model, init, final, _data(), dims=2, plane=True, third=mid, steps=3, dtype=F64)


def _least_squares(n=40, d=3, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randn(n, k, generator=g, dtype=F64)
    a = torch.cat([x, torch.ones(n, 1, dtype=F64)], 1)
    sol = torch.linalg.lstsq(a, y).solution
    final = {"0.weight": sol[:d].T.contiguous(), "0.bias": sol[d].contiguous()}
    init = {k_: torch.randn(v.shape, generator=g, dtype=F64) for k_, v in final.items()}
    return nn.Sequential(nn.Linear(d, k)).double(), init, final, Dataset(x, y, "mse", "ls")


def test_convex_quadratic_bowl_has_convex_slices():
    model, init, final, data = _least_squares()
    for center in ("final", "init"):
        s = loss_surface(model, init, final, data, dims=2, steps=9, span=1.5, center=center, include_bn_and_bias=True, dtype=F64)
        z = np.array(s.losses)
        scale = float(np.abs(z).max())
        assert (np.diff(z, 2, axis=1) >= -1e-12 * scale).all() and (np.diff(z, 2, axis=0) >= -1e-12 * scale).all()
    # about the least-squares minimiser the centre is the lowest point
    s = loss_surface(model, init, final, data, dims=1, steps=11, dtype=F64)
    assert min(s.losses) == s.losses[5] and s.x[5] == 0.0


def test_vmap_chunks_equal_a_plain_loop(no_packed):
    model = _mlp(bn=True)
    init, final, third = _endpoints(model)
    for loss in ("mse", "ce"):
        data = _data(loss=loss)
        kw = dict(dims=2, steps=5, dtype=F64, bn="interpolate", batch_size=7)
        a = loss_surface(model, init, final, data, chunk=7, **kw)
        b = loss_surface(model, init, final, data, chunk=1, **kw)
        assert a.info["chunk"] == 7 and b.info["chunk"] == 1 and not a.warnings
        assert max(abs(u - v) for r1, r2 in zip(a.losses, b.losses) for u, v in zip(r1, r2)) <= 1e-12
        p = loss_surface(model, init, final, data, plane=True, third=third, chunk=6, **kw)
        q = loss_surface(model, init, final, data, plane=True, third=third, chunk=1, **kw)
        assert max(abs(u - v) for r1, r2 in zip(p.losses, q.losses) for u, v in zip(r1, r2)) <= 1e-12


def test_vmap_chunks_equal_a_plain_loop_on_convolutions(no_packed):
    model = _Convs().double()
    init, final, third = _endpoints(model)
    g = torch.Generator().manual_seed(0)
    data = Dataset(torch.randn(6, 2, 6, 6, generator=g, dtype=F64), torch.randn(6, 3, generator=g, dtype=F64), "mse", "conv")
    kw = dict(dims=2, steps=3, dtype=F64, bn="frozen", include_bn_and_bias=True)
    a = loss_surface(model, init, final, data, chunk=4, **kw)
    b = loss_surface(model, init, final, data, chunk=1, **kw)
    assert a.info["chunk"] == 4 and not a.warnings
    assert max(abs(u - v) for r1, r2 in zip(a.losses, b.losses) for u, v in zip(r1, r2)) <= 1e-12


def _plain_loop_surface(model, centre, dirs, data, xs, ys):
    """The definition, point by point: mean loss of functional_call(model, c + x·d1 + y·d2)."""
    from torch.func import functional_call
    from torch.nn import functional as Fn

    rows = []
    with torch.no_grad():
        for y in ys:
            row = []
            for x in xs:
                state = {k: (v + x * dirs[0][k] + y * dirs[1][k]) if v.is_floating_point() else v for k, v in centre.items()}
                out = functional_call(model, state, (data.x,))
                if data.loss == "mse":
                    row.append(float(((out - data.y) ** 2).sum()) / data.y.numel())
                else:
                    row.append(float(Fn.cross_entropy(out, data.y, reduction="sum")) / data.n)
            rows.append(row)
    return rows


@pytest.mark.parametrize("kind", ["mlp_ce", "mlp_mse", "conv_bn"])
def test_first_layer_split_equals_a_plain_functional_call_loop(kind, no_packed):
    """The fast paths (first Linear evaluated once per basis and the rest vmapped over points; eval-mode
    BatchNorm fused; stacked parameters written into reused buffers) give the per-point definition to
    ~1e-12 in float64."""
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(4)
    if kind == "conv_bn":
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3)).double().eval()
        data = Dataset(torch.randn(10, 2, 6, 6, generator=g, dtype=F64), torch.randint(0, 3, (10,), generator=g), "ce", "conv")
    else:
        model = nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)).double()
        data = _data(n=17, loss="ce" if kind == "mlp_ce" else "mse")
    init, final, _ = _endpoints(model)
    steps, span = 5, 1.5
    for batch_size, chunk in ((None, 6), (4, 25), (5, None)):
        s = loss_surface(model, init, final, data, dims=2, steps=steps, span=span, seed=7, include_bn_and_bias=True,
                         bn="frozen", dtype=F64, batch_size=batch_size, chunk=chunk)
        # a first convolution is left to vmap (one wide convolution on the shared input)
        assert s.info["first_layer_split"] == (kind != "conv_bn") and s.info["chunk"] > 1 and not s.warnings
        dirs = random_directions(model, final, 2, seed=7, include_bn_and_bias=True)
        ref = _plain_loop_surface(model, final, dirs, data, s.x, s.y)
        err = max(abs(u - v) for r1, r2 in zip(s.losses, ref) for u, v in zip(r1, r2))
        assert err <= 1e-12 * max(1.0, max(abs(v) for r in ref for v in r)), (batch_size, chunk, err)
        # the point-by-point path of the package agrees as well
        b = loss_surface(model, init, final, data, dims=2, steps=steps, span=span, seed=7, include_bn_and_bias=True,
                         bn="frozen", dtype=F64, batch_size=batch_size, chunk=1)
        assert not b.info["first_layer_split"]
        assert max(abs(u - v) for r1, r2 in zip(s.losses, b.losses) for u, v in zip(r1, r2)) <= 1e-12


@pytest.mark.parametrize("batch_size", [None, 2])
def test_split_loop_for_weight_dominated_models_equals_a_plain_functional_call_loop(batch_size, no_packed):
    """A wide MLP on few examples (parameters ≥ 2× activations) takes the CPU point loop with reused
    buffers and row-shared partial sums; it gives the per-point definition to ~1e-12 in float64."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 40), nn.ReLU(), nn.Linear(40, 40), nn.Tanh(), nn.Linear(40, 3)).double()
    init, final, third = _endpoints(model)
    for loss in ("ce", "mse"):
        data = _data(n=5, loss=loss)
        s = loss_surface(model, init, final, data, dims=2, steps=5, span=1.5, seed=2, include_bn_and_bias=True,
                         dtype=F64, batch_size=batch_size)
        assert s.info["strategy"] == "split_loop" and s.info["first_layer_split"] and s.info["chunk"] == 1 and not s.warnings
        dirs = random_directions(model, final, 2, seed=2, include_bn_and_bias=True)
        ref = _plain_loop_surface(model, final, dirs, data, s.x, s.y)
        scale = max(1.0, max(abs(v) for r in ref for v in r))
        assert max(abs(u - v) for r1, r2 in zip(s.losses, ref) for u, v in zip(r1, r2)) <= 1e-12 * scale
        # biases left at zero in the directions (fixed entries), 1D, and the plane mode (three bases, no offset)
        for kw in (dict(dims=2, steps=4), dict(dims=1, steps=6), dict(dims=2, steps=4, plane=True, third=third, span=0.5)):
            a = loss_surface(model, init, final, data, dtype=F64, batch_size=batch_size, **kw)
            b = loss_surface(model, init, final, data, dtype=F64, batch_size=batch_size, chunk=1, **kw)
            assert a.info["strategy"] == "split_loop" and b.info["strategy"] == "loop"
            fa = a.losses if a.dims == 1 else [v for r in a.losses for v in r]
            fb = b.losses if b.dims == 1 else [v for r in b.losses for v in r]
            assert max(abs(u - v) for u, v in zip(fa, fb)) <= 1e-12 * max(1.0, max(abs(v) for v in fb))


def test_first_layer_split_in_plane_mode_and_when_it_does_not_apply(no_packed):
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    init, final, third = _endpoints(model)
    data = _data()
    kw = dict(dims=2, steps=4, dtype=F64, plane=True, third=third, span=0.5)
    a = loss_surface(model, init, final, data, chunk=5, **kw)  # offset-free frame: three bases
    b = loss_surface(model, init, final, data, chunk=1, **kw)
    assert a.info["first_layer_split"] and not b.info["first_layer_split"]
    assert max(abs(u - v) for r1, r2 in zip(a.losses, b.losses) for u, v in zip(r1, r2)) <= 1e-12
    # biases left out of the directions: the first layer's bias is a fixed entry, still split
    c = loss_surface(model, init, final, data, dims=2, steps=4, dtype=F64, span=0.5, chunk=5)
    d = loss_surface(model, init, final, data, dims=2, steps=4, dtype=F64, span=0.5, chunk=1)
    assert c.info["first_layer_split"]
    assert max(abs(u - v) for r1, r2 in zip(c.losses, d.losses) for u, v in zip(r1, r2)) <= 1e-12
    # not a Sequential: the whole model is vmapped, as before
    e = loss_surface(_Convs().double(), *_endpoints(_Convs().double())[:2],
                     Dataset(torch.randn(4, 2, 6, 6, dtype=F64), torch.randn(4, 3, dtype=F64), "mse", "c"),
                     dims=2, steps=3, dtype=F64, bn="frozen", chunk=4)
    assert not e.info["first_layer_split"] and e.info["chunk"] == 4


class _ItemModel(nn.Module):
    """A model whose forward reads a tensor value (vmap cannot batch ``.item()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        s = float(self.fc.weight.sum().item())
        return self.fc(x) * (1.0 if s > -1e9 else 2.0)


def test_vmap_failure_falls_back_to_the_loop_with_a_warning():
    model = _ItemModel().double()
    init, final, _ = _endpoints(model)
    data = _data()
    a = loss_surface(model, init, final, data, dims=1, steps=5, dtype=F64, chunk=4)
    b = loss_surface(model, init, final, data, dims=1, steps=5, dtype=F64, chunk=1)
    assert any("vmap" in w for w in a.warnings)
    assert a.losses == b.losses


def test_random_surface_centre_is_the_centre_loss():
    model = _mlp()
    init, final, _ = _endpoints(model)
    data = _data()
    line = make_line(model, init, final, dtype=F64)
    l0, l1 = loss_curve(line, data, [0.0, 1.0]).losses
    s = loss_surface(model, init, final, data, dims=2, steps=5, dtype=F64, center="final")
    assert s.losses[2][2] == pytest.approx(l1, abs=1e-12) and s.points == {"final": (0.0, 0.0)} and s.mli_line is None
    s = loss_surface(model, init, final, data, dims=1, steps=5, dtype=F64, center="init")
    assert s.losses[2] == pytest.approx(l0, abs=1e-12)


def test_bad_options_are_input_errors():
    model = _mlp()
    init, final, third = _endpoints(model)
    data = _data()
    for kw, word in [
        (dict(dims=3), "dims"), (dict(steps=1), "steps"), (dict(span=-1.0), "range"), (dict(plane=True), "third"),
        (dict(third=third), "third"), (dict(center="middle"), "center"), (dict(bn="other"), "bn"),
    ]:
        with pytest.raises(InputError, match=word):
            loss_surface(model, init, final, data, **kw)


def test_axis_grid_hits_known_points():
    assert axis_grid(0.0, 1.0, 50)[-1] == 1.0 and axis_grid(0.0, 1.0, 50) == [i / 49 for i in range(50)]
    g = axis_grid(-0.5, 1.5, 21)
    assert g[5] == 0.0 and g[15] == 1.0
    assert axis_grid(-1.0, 1.0, 11)[5] == 0.0


# ----------------------------------------------------------------------------- roughness


def test_normalized_total_variation_known_values():
    ts = np.linspace(-1, 1, 301)  # hits the extremes of cos(3πt) at t = k/3
    assert normalized_total_variation(np.exp(ts)) == pytest.approx(1.0, abs=1e-12)  # monotone
    assert normalized_total_variation(ts**2) == pytest.approx(2.0, abs=1e-12)  # symmetric bowl
    assert normalized_total_variation((ts - 0.5) ** 2) == pytest.approx(1 + 0.25 / 2.25, abs=1e-12)
    # cos(3πt) on [-1, 1]: 6 half-periods, each of variation 2, range 2 -> T = 6
    assert normalized_total_variation(np.cos(3 * np.pi * ts)) == pytest.approx(6.0, abs=1e-9)
    assert normalized_total_variation([2.0, 2.0, 2.0]) == 1.0


def test_roughness_index_formula():
    r = roughness_index([[0, 1, 2], [1, 0, 1], [0, 1, 0, 1]])  # T = 1, 2, 3
    assert r.per_slice == (1.0, 2.0, 3.0) and r.mean == 2.0 and r.std == 1.0 and r.index == 0.5
    assert roughness_index([[0, 1]]).index == 0.0


def test_roughness_of_a_quadratic_bowl_is_zero():
    model, init, final, data = _least_squares()
    res = landscape_roughness(model, init, final, data, slices=4, steps=11, dtype=F64)
    assert res.roughness is not None
    assert all(t == pytest.approx(2.0, abs=1e-9) for t in res.roughness.per_slice)
    assert res.roughness.index <= 1e-9
    # each slice passes through the centre at t = 0
    assert all(row[5] == pytest.approx(res.slices[0][5], abs=1e-12) for row in res.slices)


# ----------------------------------------------------------------------------- path statistics


def test_interior_bump_versus_end_rise():
    bump = path_statistics([4.0, 3.0, 3.5, 2.0, 1.0])  # rises inside, then falls
    assert bump.interior_bump == 0.5 and bump.interior_bump_where == (1, 2)
    assert bump.end_rise == 0.0 and bump.max_rise == 0.5 and bump.n_rises == 1 and bump.final_run_steps == 0
    end = path_statistics([4.0, 3.0, 2.0, 1.0, 1.25])  # rises only in the last step
    assert end.interior_bump == 0.0 and end.interior_bump_where is None
    assert end.end_rise == 0.25 and end.end_rise_where == (3, 4) and end.max_rise == 0.25
    assert end.final_run_rise == 0.25 and end.final_run_steps == 1
    mono = path_statistics([3.0, 2.0, 2.0, 1.0])
    assert (mono.n_rises, mono.interior_bump, mono.end_rise, mono.max_rise) == (0, 0.0, 0.0, 0.0)


def test_separate_rises_with_tolerance():
    curve = [5.0, 1.0, 2.0, 1.95, 3.0, 0.0, 0.05, 0.0]
    assert [(r.start, r.end) for r in separate_rises(curve)] == [(1, 2), (3, 4), (5, 6)]
    assert [(r.start, r.end, r.height) for r in separate_rises(curve, tol=0.1)] == [(1, 4, 2.0)]
    assert path_statistics(curve, tol=3.0).n_rises == 0


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=30), st.floats(0, 10))
def test_max_rise_is_the_larger_of_bump_and_end_rise(values, tol):
    s = path_statistics(values, tol=tol)
    assert s.max_rise == max_rise(values).value == max(s.interior_bump, s.end_rise)
    assert (s.n_rises > 0) == (s.max_rise > tol)
    assert all(tol < r.height <= s.max_rise and r.start < r.end for r in s.rises)


# ----------------------------------------------------------------------------- CLI


def cli(*args: str) -> subprocess.CompletedProcess:
    from mli_theory.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("surface")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    init = m.state_dict()
    g = torch.Generator().manual_seed(1)
    final = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in init.items()}
    third = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in init.items()}
    torch.save(init, d / "init.pt")
    torch.save(final, d / "final.pt")
    torch.save(third, d / "third.pt")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=rng.normal(size=(20, 4)), y=rng.normal(size=(20, 2)))
    return d


def _base(d) -> list[str]:
    return ["--arch", "mlp:4-5-2", "--init", str(d / "init.pt"), "--final", str(d / "final.pt"), "--data", str(d / "data.npz"), "--quiet"]


def test_cli_surface_json_2d_and_1d(files):
    r = cli("surface", *_base(files), "--steps", "4", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"x", "y", "losses", "center", "directions", "mli_line", "warnings"} <= out.keys()
    assert len(out["losses"]) == 4 and all(len(row) == 4 for row in out["losses"]) and out["center"] == "final"
    r = cli("surface", *_base(files), "--dims", "1", "--steps", "5", "--center", "init", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and "y" not in out and len(out["losses"]) == 5 and out["center"] == "init"


def test_cli_surface_plane_with_plot(files, tmp_path):
    png = tmp_path / "s.png"
    r = cli("surface", *_base(files), "--plane", "--third", str(files / "third.pt"), "--steps", "5", "--range", "0.5",
            "--json", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["mli_line"] == [[0.0, 0.0], [1.0, 0.0]] and out["warnings"] == []
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert out["x"] == [-0.5, 0.0, 0.5, 1.0, 1.5]


@pytest.mark.parametrize(
    "extra, word",
    [
        (["--dims", "3"], "--dims"),
        (["--steps", "1"], "--steps"),
        (["--range", "-1"], "--range"),
        (["--plane"], "--third"),
        (["--third", "nowhere.pt"], "--third"),
        (["--plane", "--third", "nowhere.pt"], "nowhere.pt"),
    ],
)
def test_cli_surface_bad_input_is_one_line_exit_2(files, extra, word):
    r = cli("surface", *_base(files), *extra)
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and word in r.stderr


def test_cli_missing_files_exit_2(files):
    for flag in ("--init", "--final", "--data"):
        args = _base(files)
        args[args.index(flag) + 1] = str(files / "missing.file")
        for cmd in ("surface", "roughness"):
            r = cli(cmd, *args)
            assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "missing.file" in r.stderr, (cmd, flag, r.stderr)


def test_cli_roughness_json(files, tmp_path):
    png = tmp_path / "r.png"
    r = cli("roughness", *_base(files), "--slices", "3", "--steps", "7", "--alphas", "9", "--json", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"roughness_index", "roughness", "slices", "t", "path", "warnings"} <= out.keys()
    assert len(out["roughness"]["per_slice"]) == 3 and len(out["slices"]) == 3 and len(out["t"]) == 7
    stats = out["path"]["statistics"]
    assert {"n_rises", "interior_bump", "end_rise", "max_rise", "final_run_rise"} <= stats.keys()
    assert stats["max_rise"] == max(stats["interior_bump"], stats["end_rise"])
    assert png.exists()
    for extra, word in ([["--slices", "0"], "--slices"], [["--steps", "2"], "--steps"], [["--range", "0"], "--range"]):
        r = cli("roughness", *_base(files), *extra)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and word in r.stderr
