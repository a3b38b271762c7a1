"""The packed evaluation of loss surfaces (issue 29, "Performance round"): P grid points through the
model's traced graph at once (grouped convolutions with BatchNorm folded in, first Linear once per
basis, large Linear layers block by block). It must give the per-point definition
L(c + x·d1 + y·d2) — plain ``functional_call`` on the model as given — to rounding, and leave to
the other strategies every model it does not cover."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as Fn

import mli_theory.connectivity.surface as surface
from mli_theory.connectivity.directions import random_directions
from mli_theory.connectivity.surface import loss_surface
from mli_theory.inputs.data import Dataset

F64 = torch.float64
# tiny float64 convolutions and BatchNorm cost milliseconds per call with two threads on a busy machine
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


# ----------------------------------------------------------------------------- models


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, bias: bool = False) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias)
        self.b1 = nn.BatchNorm2d(c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c_out)
        self.skip = nn.Sequential() if stride == 1 and c_in == c_out else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        return Fn.relu(self.b2(self.c2(h)) + self.skip(x), inplace=True)


def _resnet() -> nn.Module:
    """Stem conv (with bias) + BN, residual blocks with and without projection, pooling, head."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, 1, 1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
        _Block(4, 4, 1), _Block(4, 6, 2, bias=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )


class _Zoo(nn.Module):
    """Every other covered operation: grouped convolutions on the shared input and on packed values,
    Conv1d, a BatchNorm not after a convolution, max pooling, mean over dims, flatten as function and
    method, elementwise functions, methods and modules, scalar arithmetic, a value with several users,
    dropout in eval mode, and preprocessing of the input before the first parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.g0 = nn.Conv2d(2, 4, 3, padding=1, groups=2)
        self.g1 = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.c1d = nn.Conv1d(4, 3, 3, padding=1)
        self.bn1d = nn.BatchNorm1d(3)
        self.act = nn.GELU()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3 * 2, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        x = x * 0.5 + 1.0  # shared preprocessing
        h = self.g0(x)
        a = self.bn(torch.relu(h))  # BatchNorm after an activation: one affine map per point
        b = self.g1(a)
        h = self.pool(b - 0.25 * a).tanh()  # a and h with several users
        h = h.flatten(2)  # (N, 4, 4)
        h = self.bn1d(self.c1d(h))  # BatchNorm1d directly after Conv1d: folded
        h = torch.flatten(Fn.leaky_relu(h, 0.1)[..., :2], 1)  # basic indexing
        h = self.drop(self.act(self.fc(h)))
        h = Fn.softplus(Fn.gelu(h, approximate="tanh"), beta=2.0)  # builtins without a signature
        return self.head(h * 2.0) + h.mean(dim=1, keepdim=True)


class _Cat(nn.Module):
    """Concatenation of point-dependent values is not covered: the packed plan must decline."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = self.fc(x)
        return self.out(torch.cat([h, h.tanh()], 1))


def _mlp(width: int = 9, bn: bool = False) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(5, width), nn.ReLU()]
    layers += [nn.Linear(width, width)] + ([nn.BatchNorm1d(width)] if bn else []) + [nn.Tanh(), nn.Linear(width, 3)]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- helpers


def _trained(model: nn.Module, seed: int = 1) -> tuple[dict, dict, dict]:
    """(init, final, third) state dicts in float64, every entry moved off its start (positive variances)."""
    model = model.double().eval()
    g = torch.Generator().manual_seed(seed)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def moved(scale):
        out = {}
        for k, v in init.items():
            if not v.is_floating_point():
                out[k] = v.clone()
            elif k.endswith("running_var"):
                out[k] = v.abs() + 0.5 + scale * torch.rand(v.shape, generator=g, dtype=v.dtype)
            else:
                out[k] = v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype)
        return out

    return init, moved(0.3), moved(0.3)


def _data(shape, n: int, k: int = 3, loss: str = "ce", seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=F64)
    y = torch.randint(0, k, (n,), generator=g) if loss == "ce" else torch.randn(n, k, generator=g, dtype=F64)
    return Dataset(x, y, loss, "test")


def _definition(model, centre, dirs, data, xs, ys):
    """The per-point definition: mean loss of functional_call(model, c + x·d1 + y·d2)."""
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


def _flat(s):
    return [v for r in s.losses for v in r] if s.dims == 2 else list(s.losses)


def _max_rel(a, b) -> float:
    fa, fb = (_flat(a) if hasattr(a, "losses") else [v for r in a for v in r]), (_flat(b) if hasattr(b, "losses") else [v for r in b for v in r])
    scale = max(1.0, max(abs(v) for v in fb))
    return max(abs(u - v) for u, v in zip(fa, fb)) / scale


# ----------------------------------------------------------------------------- equal to the definition


@pytest.mark.parametrize("batch_size, chunk", [(None, None), (3, 4)])
def test_packed_resnet_equals_the_definition(batch_size, chunk):
    """Convolutions with BatchNorm folded in (with and without conv bias), residual sums, in-place
    activations, pooling and the head: the per-point definition to ~1e-12 in float64."""
    torch.manual_seed(0)
    model = _resnet()
    init, final, _ = _trained(model)
    data = _data((2, 5, 5), n=5)
    s = loss_surface(model, init, final, data, dims=2, steps=3, span=1.2, seed=3, include_bn_and_bias=True, bn="frozen",
                     dtype=F64, batch_size=batch_size, chunk=chunk)
    assert s.info["strategy"] == "packed" and "packed_error" not in s.info and not s.warnings
    assert not s.info["first_layer_split"]  # a first convolution is one wide convolution, not split
    dirs = random_directions(model, final, 2, seed=3, include_bn_and_bias=True)
    assert _max_rel(s, _definition(model.double(), final, dirs, data, s.x, s.y)) <= 1e-12
    b = loss_surface(model, init, final, data, dims=2, steps=3, span=1.2, seed=3, include_bn_and_bias=True, bn="frozen",
                     dtype=F64, batch_size=batch_size, chunk=1)
    assert b.info["strategy"] == "loop" and _max_rel(s, b) <= 1e-12


def test_packed_plane_with_interpolated_statistics_equals_the_loop():
    """Plane mode with bn="interpolate": the running statistics differ at every point, and the
    folded scale s = γ/√(σ² + ε) is computed per point (three bases, no offset)."""
    torch.manual_seed(1)
    model = _resnet()
    init, final, third = _trained(model)
    data = _data((2, 6, 6), n=4, loss="mse")
    kw = dict(dims=2, steps=4, span=0.3, plane=True, third=third, bn="interpolate", dtype=F64)
    a = loss_surface(model, init, final, data, **kw)
    b = loss_surface(model, init, final, data, chunk=1, **kw)
    assert a.info["strategy"] == "packed" and b.info["strategy"] == "loop"
    assert _max_rel(a, b) <= 1e-12


def test_packed_covers_the_other_operations():
    torch.manual_seed(2)
    model = _Zoo()
    init, final, third = _trained(model)
    data = _data((2, 4, 4), n=6)
    for kw in (dict(include_bn_and_bias=True, bn="frozen"), dict(include_bn_and_bias=False, bn="frozen"),
               dict(plane=True, third=third, span=0.5, bn="interpolate")):
        a = loss_surface(model, init, final, data, dims=2, steps=3, dtype=F64, chunk=4, **kw)
        b = loss_surface(model, init, final, data, dims=2, steps=3, dtype=F64, chunk=1, **kw)
        assert a.info["strategy"] == "packed" and "packed_error" not in a.info, a.info
        assert _max_rel(a, b) <= 1e-12, kw
    # and the definition itself, not only the package's own loop
    s = loss_surface(model, init, final, data, dims=2, steps=3, dtype=F64, include_bn_and_bias=True, bn="frozen", seed=5)
    dirs = random_directions(model, final, 2, seed=5, include_bn_and_bias=True)
    assert _max_rel(s, _definition(model.double(), final, dirs, data, s.x, s.y)) <= 1e-12


@pytest.mark.parametrize("loss, blocked, per_product", [("ce", True, 0), ("mse", True, 0), ("ce", True, 2), ("ce", False, 0)])
def test_large_linear_layers_block_by_block_equal_the_definition(monkeypatch, loss, blocked, per_product):
    """The first Linear once per basis; the next one either stacked per point (bmm) or, counted as
    large (here: any), block of rows by block with the weights rebuilt per point from the frame
    (blocks of 4 rows of 9 leave a remainder block), one point per product or two (as with two
    threads; runs of 5 points leave a single one)."""
    monkeypatch.setattr(surface, "_POINT_BATCH", per_product)
    if blocked:
        monkeypatch.setattr(surface, "_BLOCKED_MIN", 1)
        monkeypatch.setattr(surface, "_BLOCK_BYTES", 4 * 9 * 8)
    torch.manual_seed(3)
    model = _mlp()
    init, final, third = _trained(model)
    data = _data((5,), n=7, loss=loss)
    for batch_size, chunk in ((None, None), (3, 5), (None, 31)):
        s = loss_surface(model, init, final, data, dims=2, steps=5, span=1.5, seed=2, include_bn_and_bias=True, dtype=F64,
                         batch_size=batch_size, chunk=chunk)
        assert s.info["strategy"] == "packed" and s.info["first_layer_split"] and not s.warnings
        dirs = random_directions(model, final, 2, seed=2, include_bn_and_bias=True)
        assert _max_rel(s, _definition(model.double(), final, dirs, data, s.x, s.y)) <= 1e-12, (batch_size, chunk)
    # biases fixed (left out of the directions), 1D, plane mode (tails differ at every point)
    for kw in (dict(dims=2, steps=4), dict(dims=1, steps=6), dict(dims=2, steps=4, plane=True, third=third, span=0.5)):
        a = loss_surface(model, init, final, data, dtype=F64, chunk=3, **kw)
        b = loss_surface(model, init, final, data, dtype=F64, chunk=1, **kw)
        assert a.info["strategy"] == "packed"
        assert _max_rel(a, b) <= 1e-12, kw


def test_batchnorm_after_linear_and_fixed_large_weights(monkeypatch):
    """BatchNorm1d after a large Linear (one affine map per point, not folded), and a large layer
    whose weight no direction moves (one product for all points)."""
    monkeypatch.setattr(surface, "_BLOCKED_MIN", 1)
    torch.manual_seed(4)
    model = _mlp(bn=True)
    init, final, _ = _trained(model)
    data = _data((5,), n=6)
    a = loss_surface(model, init, final, data, dims=2, steps=4, dtype=F64, bn="frozen", include_bn_and_bias=True)
    b = loss_surface(model, init, final, data, dims=2, steps=4, dtype=F64, bn="frozen", include_bn_and_bias=True, chunk=1)
    assert a.info["strategy"] == "packed" and _max_rel(a, b) <= 1e-12
    from mli_theory.connectivity.surface import evaluate_points, random_frame
    from mli_theory.path import BNPolicy, make_line

    line = make_line(model, init, final, device="cpu", dtype=F64)
    frame, _ = random_frame(line, model, dims=2, center="final", seed=0, include_bn_and_bias=True)
    frozen = surface.Frame({**frame.fixed, "2.weight": line.end["2.weight"]},
                           {k: v for k, v in frame.offset.items() if k != "2.weight"},
                           {k: v for k, v in frame.bases.items() if k != "2.weight"}, frame.weights)
    coords = [(x, y) for y in (-0.5, 0.5) for x in (-1.0, 0.0, 1.0)]
    details: dict = {}
    p, _, _ = evaluate_points(line, frozen, coords, data, bn=BNPolicy.FROZEN, details=details)
    q, _, _ = evaluate_points(line, frozen, coords, data, bn=BNPolicy.FROZEN, chunk=1)
    assert details["strategy"] == "packed"
    assert max(abs(u - v) for u, v in zip(p, q)) <= 1e-12 * max(1.0, max(abs(v) for v in q))


def test_the_plan_folds_batchnorm_into_convolutions():
    """Every BatchNorm of the ResNet directly follows its convolution and is folded into it; in the
    zoo the BatchNorm after an activation stays an affine map, the one after Conv1d is folded."""
    from mli_theory.connectivity.surface import random_frame
    from mli_theory.path import make_line

    for model, n_folded, n_bn in ((_resnet(), 6, 0), (_Zoo(), 1, 1)):
        init, final, _ = _trained(model)
        line = make_line(model, init, final, device="cpu", dtype=F64)
        frame, _ = random_frame(line, model, dims=2, center="final", seed=0, include_bn_and_bias=True)
        plan = surface._packed_plan(line, frame)
        kinds = list(plan.kind.values())
        assert kinds.count("folded") == n_folded and kinds.count("bn") == n_bn


def test_packed_float32_matches_the_loop_to_float_rounding():
    torch.manual_seed(5)
    model = _resnet()
    init, final, _ = _trained(model)
    init = {k: v.float() if v.is_floating_point() else v for k, v in init.items()}
    final = {k: v.float() if v.is_floating_point() else v for k, v in final.items()}
    data = _data((2, 6, 6), n=5)
    data = Dataset(data.x.float(), data.y, data.loss, data.name)
    kw = dict(dims=2, steps=4, include_bn_and_bias=True, bn="frozen", dtype=torch.float32)
    a = loss_surface(model.float(), init, final, data, **kw)
    b = loss_surface(model.float(), init, final, data, chunk=1, **kw)
    assert a.info["strategy"] == "packed"
    assert _max_rel(a, b) <= 1e-5


# ----------------------------------------------------------------------------- left to the other strategies


class _Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.fc.register_forward_hook(lambda m, i, o: o * 2.0)

    def forward(self, x):
        return self.fc(x)


class _SharedInplace(nn.Module):
    """An in-place activation on a value that is used again: eager semantics the plan does not copy."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.fc(x)
        r = self.act(h)
        return r + h


@pytest.mark.parametrize("make, shape", [
    (lambda: _Cat(), (4,)),
    (lambda: _Hooked(), (4,)),
    (lambda: _SharedInplace(), (4,)),
    (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ConvTranspose2d(3, 2, 2), nn.Flatten(), nn.Linear(2 * 5 * 5, 3)), (2, 6, 6)),
    (lambda: nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.Linear(5, 3)), (4,)),
    (lambda: nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3)), (4,)),
])
def test_models_not_covered_take_the_other_strategies(make, shape):
    torch.manual_seed(6)
    model = make()
    init, final, _ = _trained(model)
    data = _data(shape, n=5)
    a = loss_surface(model, init, final, data, dims=2, steps=3, dtype=F64, bn="frozen", include_bn_and_bias=True, chunk=4)
    b = loss_surface(model, init, final, data, dims=2, steps=3, dtype=F64, bn="frozen", include_bn_and_bias=True, chunk=1)
    assert a.info["strategy"] != "packed"
    assert _max_rel(a, b) <= 1e-12


def test_a_failure_at_run_time_falls_back_silently(monkeypatch):
    def boom(self, *a, **k):
        raise RuntimeError("simulated")

    monkeypatch.setattr(surface._PackedPlan, "run", boom)
    torch.manual_seed(7)
    model = _resnet()
    init, final, _ = _trained(model)
    data = _data((2, 6, 6), n=4)
    a = loss_surface(model, init, final, data, dims=2, steps=3, dtype=F64, bn="frozen")
    b = loss_surface(model, init, final, data, dims=2, steps=3, dtype=F64, bn="frozen", chunk=1)
    assert a.info["strategy"] == "vmap" and "simulated" in a.info["packed_error"] and not a.warnings
    assert _max_rel(a, b) <= 1e-12


def test_packed_leaves_the_data_and_the_model_alone():
    """In-place work happens only on the plan's own intermediate tensors (an in-place activation on
    the input runs out of place)."""
    from mli_theory.connectivity.surface import evaluate_points, random_frame
    from mli_theory.path import BNPolicy, make_line

    torch.manual_seed(8)
    model = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3))
    init, final, _ = _trained(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = _data((4,), n=5, loss="mse")
    x0 = data.x.clone()
    line = make_line(model, init, final, device="cpu", dtype=F64)
    frame, _ = random_frame(line, model, dims=2, center="final", seed=0, include_bn_and_bias=True)
    ends = {k: v.clone() for k, v in line.end.items()}
    details: dict = {}
    evaluate_points(line, frame, [(0.5, 0.25), (-1.0, 0.5), (0.0, 1.0)], data, bn=BNPolicy.FROZEN, chunk=2, details=details)
    assert details["strategy"] == "packed"
    assert torch.equal(data.x, x0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(ends[k], v) for k, v in line.end.items())
