"""Mode connectivity along trained curves (``mli_theory.connectivity.curves``).

References: the closed forms of the curves, the straight line's own code (an untrained bend is the
line), two independently trained MLPs on ``sklearn:digits`` whose line barrier a trained bend
removes (Garipov et al. 2018).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from mli_theory.connectivity import CurveResult, barrier, curve_coefficients, curve_connectivity, curve_point
from mli_theory.errors import InputError
from mli_theory.inputs.data import Dataset, load_data
from mli_theory.inputs.examples import ArrayReader, Examples
from mli_theory.path import alpha_grid, loss_curve, make_line
from mli_theory.runs.train import train

F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster, and far faster on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _clone(sd):
    return {k: v.detach().clone() for k, v in sd.items()}


def _mlp(seed: int, d: int = 64, h: int = 32, k: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, k))


def _random_pair(model: nn.Module, seed: int):
    g = torch.Generator().manual_seed(seed)
    a = {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()) for k, v in model.state_dict().items()}
    b = {k: (torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()) for k, v in model.state_dict().items()}
    for sd in (a, b):
        for k in sd:
            if k.endswith("running_var"):
                sd[k] = sd[k].abs() + 0.5
    return a, b


def _toy_ce(n: int = 40, d: int = 5, k: int = 3, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset(torch.randn(n, d, generator=g, dtype=F64), torch.randint(0, k, (n,), generator=g), "ce", "toy")


# --------------------------------------------------------------------------- the curves


def test_curve_formulas_at_zero_half_one_and_exact_ends():
    assert curve_coefficients("bezier", 0.0) == (1.0, 0.0, 0.0)
    assert curve_coefficients("bezier", 0.5) == (0.25, 0.5, 0.25)
    assert curve_coefficients("bezier", 1.0) == (0.0, 0.0, 1.0)
    assert curve_coefficients("polychain", 0.0) == (1.0, 0.0, 0.0)
    assert curve_coefficients("polychain", 0.5) == (0.0, 1.0, 0.0)
    assert curve_coefficients("polychain", 1.0) == (0.0, 0.0, 1.0)
    for curve in ("bezier", "polychain"):
        for t in (0.0, 0.1, 0.5, 0.7, 1.0):
            assert sum(curve_coefficients(curve, t)) == pytest.approx(1.0, abs=1e-15)
    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(7, 3, generator=g), "n": torch.tensor(3)}
    m = {"w": torch.randn(7, 3, generator=g), "n": torch.tensor(5)}
    b = {"w": torch.randn(7, 3, generator=g), "n": torch.tensor(9)}
    for curve in ("bezier", "polychain"):
        p0, p1 = curve_point(curve, a, m, b, 0.0), curve_point(curve, a, m, b, 1.0)
        assert torch.equal(p0["w"], a["w"]) and torch.equal(p1["w"], b["w"])  # bit for bit
        assert p0["w"] is not a["w"] and p1["w"] is not b["w"]  # fresh tensors
        assert int(p0["n"]) == 9 and int(p1["n"]) == 9  # integer entries: B's value, like the line
    assert torch.equal(curve_point("polychain", a, m, b, 0.5)["w"], m["w"])
    half = curve_point("bezier", a, m, b, 0.5)["w"]
    assert torch.allclose(half, 0.25 * a["w"] + 0.5 * m["w"] + 0.25 * b["w"], atol=1e-6)
    quarter = curve_point("polychain", a, m, b, 0.25)["w"]
    assert torch.allclose(quarter, 0.5 * a["w"] + 0.5 * m["w"], atol=1e-6)
    with pytest.raises(InputError, match="curve"):
        curve_coefficients("spline", 0.5)
    with pytest.raises(InputError, match="t="):
        curve_point("bezier", a, m, b, 1.5)


@pytest.mark.parametrize("curve", ["bezier", "polychain"])
def test_an_untrained_bend_is_the_straight_line(curve):
    """At the midpoint bend both curves are the line: the losses are ``loss_curve``'s and the
    barriers are ``barrier``'s (same definitions, same refinement)."""
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    a, b = _random_pair(model, 1)
    data = _toy_ce()
    k = 9
    r = curve_connectivity(model, a, b, data, curve=curve, epochs=0, alphas=k, batch_size=None, dtype=F64, alpha_tol=1e-3)
    ref = loss_curve(make_line(model, a, b, dtype=F64), data, alpha_grid(k))
    assert r.ts == tuple(alpha_grid(k))
    assert max(abs(x - y) for x, y in zip(r.losses, ref.losses)) <= 1e-12
    assert max(abs(x - y) for x, y in zip(r.line_losses, ref.losses)) <= 1e-12
    assert r.errors == tuple(1.0 - acc for acc in ref.accuracies)
    line = barrier(model, a, b, data, alphas=k, dtype=F64, alpha_tol=1e-3)
    assert r.line_barriers == dict(line.barriers)
    for name, v in line.barriers.items():
        assert r.barriers[name].alpha == pytest.approx(v.alpha, abs=1e-12), name
        assert r.barriers[name].value == pytest.approx(v.value, abs=1e-12), name
    assert r.bend_distance == 0.0 and r.train_losses == () and any("epochs=0" in w for w in r.warnings)


# --------------------------------------------------------------------------- training removes the barrier


@pytest.fixture(scope="module")
def digits_pair():
    """Two MLPs 64-32-10 trained on sklearn:digits from different initialisations and orders."""
    data = load_data("sklearn:digits", "ce")
    ends = []
    for seed in (1, 2):
        m = _mlp(seed)
        r = train(m, data.to("cpu", torch.float32), optimizer="adam", lr=0.01, epochs=15, batch_size=64, seed=seed)
        ends.append(r.final)
    return _mlp(0), ends[0], ends[1], data


@pytest.mark.parametrize("curve", ["bezier", "polychain"])
def test_training_the_bend_lowers_the_barrier_below_the_line(digits_pair, curve):
    model, a, b, data = digits_pair
    before = (_clone(a), _clone(b), _clone(model.state_dict()))
    r = curve_connectivity(model, a, b, data, curve=curve, epochs=10, lr=0.01, batch_size=128, seed=0, alphas=17)
    line = r.line_barriers["loss_mean"].value
    assert line > 0.1  # a clear barrier on the straight line
    for name in ("loss_mean", "loss_chord"):
        assert r.barriers[name].value < 0.5 * r.line_barriers[name].value, name
    assert r.barriers["error_mean"].value < r.line_barriers["error_mean"].value
    assert r.losses[0] == r.line_losses[0] and r.losses[-1] == r.line_losses[-1]  # same ends, exactly
    assert len(r.train_losses) == 10 and r.train_losses[-1] < r.train_losses[0]
    assert 0.0 < r.bend_distance < r.endpoint_distance
    assert not r.warnings
    for got, ref in zip((a, b, model.state_dict()), before):
        assert all(torch.equal(got[k], ref[k]) for k in ref)  # the caller's tensors are untouched
    # the bend returned is the curve evaluated: its point at t = ½ reproduces L(½)
    line_ = make_line(model, a, b)
    from mli_theory.path import evaluate

    mid = curve_point(curve, line_.start, r.bend, line_.end, 0.5)
    assert evaluate(line_, mid, data.to("cpu", torch.float32))[0] == pytest.approx(r.losses[8], rel=1e-6)
    json.dumps(r.to_dict(), allow_nan=False)
    assert "loss_mean" in r.to_text()


def test_seeded_runs_are_identical_and_seeds_differ():
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    a, b = _random_pair(model, 2)
    data = _toy_ce()
    kw = dict(epochs=3, batch_size=8, lr=0.05, alphas=5, alpha_tol=0.05)
    r1 = curve_connectivity(model, a, b, data, seed=3, **kw)
    r2 = curve_connectivity(model, a, b, data, seed=3, **kw)
    r3 = curve_connectivity(model, a, b, data, seed=4, **kw)
    assert r1 == r2  # every field but timings and the bend tensors
    assert all(torch.equal(r1.bend[k], r2.bend[k]) for k in r1.bend)
    assert r3.train_losses != r1.train_losses
    s1 = curve_connectivity(model, a, b, data, seed=3, optimizer="sgd", curve="polychain", **kw)
    s2 = curve_connectivity(model, a, b, data, seed=3, optimizer="sgd", curve="polychain", **kw)
    assert s1 == s2 and s1 != r1


def test_streamed_inputs_give_the_in_memory_result():
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    a, b = _random_pair(model, 3)
    data = _toy_ce(n=23)
    stream = Dataset(Examples(ArrayReader(data.x.numpy(), "toy.npy")), data.y, "ce", "stream")
    kw = dict(epochs=2, batch_size=5, alphas=5, alpha_tol=0.05, dtype=F64)
    _assert_same(curve_connectivity(model, a, b, stream, **kw), curve_connectivity(model, a, b, data, **kw))


def _assert_same(got, want, where: str = "result") -> None:
    """Equal up to the last bits of float64: the same operations on the same values, but MKL's
    kernels may sum in another order for differently placed arrays (seen on AMD CPUs: 1 ulp)."""
    import dataclasses

    if dataclasses.is_dataclass(got):
        assert type(got) is type(want), where
        for f in dataclasses.fields(got):
            if f.compare:  # as == would (timings are not compared)
                _assert_same(getattr(got, f.name), getattr(want, f.name), f"{where}.{f.name}")
    elif isinstance(got, dict):
        assert got.keys() == want.keys(), where
        for k in got:
            _assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(got, (list, tuple)):
        assert len(got) == len(want), where
        for i, (u, v) in enumerate(zip(got, want)):
            _assert_same(u, v, f"{where}[{i}]")
    elif isinstance(got, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape, where
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-14) if got.is_floating_point() else torch.equal(got, want), where
    elif isinstance(got, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-14), where
    else:
        assert got == want, where


# --------------------------------------------------------------------------- BatchNorm, tied weights


@pytest.mark.parametrize("bn", ["recompute", "interpolate", "frozen"])
def test_batchnorm_policies_keep_the_ends_and_the_callers_tensors(bn):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    a, b = _random_pair(model, 5)
    before = (_clone(a), _clone(b), _clone(model.state_dict()))
    data = _toy_ce(n=41)
    r = curve_connectivity(model, a, b, data, bn=bn, epochs=2, batch_size=10, alphas=5, alpha_tol=0.05, dtype=F64)
    assert r.bn == bn
    assert r.losses[0] == r.line_losses[0] and r.losses[-1] == r.line_losses[-1]
    assert r.bend_distance > 0
    assert model.training and all(m.training for m in model.modules())  # modes untouched
    for got, ref in zip((a, b, model.state_dict()), before):
        assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert set(r.bend) == set(a) and int(r.bend["1.num_batches_tracked"]) == int(b["1.num_batches_tracked"])
    if bn == "frozen":  # held at B's statistics: the public curve_point reproduces them with frozen=
        assert torch.equal(r.bend["1.running_mean"], b["1.running_mean"].to(F64))
        frozen = frozenset({"1.running_mean", "1.running_var"})
        p = curve_point("bezier", a, r.bend, b, 0.3, frozen=frozen)
        assert torch.equal(p["1.running_var"], b["1.running_var"].to(F64))


def test_tied_weights_stay_tied_in_the_bend():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    a, b = _random_pair(model, 6)
    for sd in (a, b):
        sd["2.weight"] = sd["0.weight"].clone()
    data = Dataset(torch.randn(20, 4, dtype=F64), torch.randn(20, 4, dtype=F64), "mse", "toy")
    r = curve_connectivity(model, a, b, data, epochs=2, batch_size=7, alphas=3, alpha_tol=0.1, dtype=F64)
    assert torch.equal(r.bend["0.weight"], r.bend["2.weight"])
    assert r.bend_distance > 0 and r.loss == "mse" and r.errors is None and r.barriers["error_mean"].value is None


# --------------------------------------------------------------------------- progress, JSON, options


def test_progress_is_monotone_and_ends_at_total():
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    a, b = _random_pair(model, 7)
    calls = []
    curve_connectivity(model, a, b, _toy_ce(), epochs=2, batch_size=16, alphas=4, alpha_tol=0.05,
                       progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1]
    assert all(d <= t for d, t in calls)
    assert all(x[0] <= y[0] for x, y in zip(calls, calls[1:]))
    assert calls[5] == (6, calls[0][1])  # 2 epochs of 3 minibatches, then evaluations


def test_to_dict_is_json_safe():
    model = nn.Sequential(nn.Linear(5, 3))
    a, b = _random_pair(model, 8)
    r = curve_connectivity(model, a, b, _toy_ce(), epochs=1, alphas=3, alpha_tol=0.1)
    assert isinstance(r, CurveResult)
    bad = dataclasses.replace(r, bend_distance=float("nan"), losses=(float("inf"),) + r.losses[1:])
    d = bad.to_dict()
    assert d["bend_distance"] is None and d["losses"][0] is None
    text = json.dumps(d, allow_nan=False)
    assert set(json.loads(text)["barriers"]) == set(r.barriers)


@pytest.mark.parametrize(
    "kw, word",
    [
        ({"curve": "spline"}, "curve"),
        ({"epochs": -1}, "epochs"),
        ({"epochs": 1.5}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"alphas": 1}, "alphas"),
        ({"alpha_tol": -1.0}, "alpha_tol"),
        ({"seed": -2}, "seed"),
        ({"seed": True}, "seed"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"momentum": 1.0}, "momentum"),
        ({"bn": "magic"}, "bn"),
        ({"bn": "repair"}, "bn"),
        ({"progress": 3}, "progress"),
        ({"dtype": "float16"}, "dtype"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_options_raise_input_errors_naming_the_parameter(kw, word):
    model = nn.Linear(5, 3)
    sd = model.state_dict()
    with pytest.raises(InputError, match=word):
        curve_connectivity(model, sd, sd, _toy_ce(), **kw)


def test_bad_model_and_batchnorm_batch_of_one():
    with pytest.raises(InputError, match="model"):
        curve_connectivity(object(), {}, {}, _toy_ce())  # type: ignore[arg-type]
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    with pytest.raises(InputError, match="batch_size"):
        curve_connectivity(model, model.state_dict(), model.state_dict(), _toy_ce(), batch_size=1)


def test_divergence_names_lr():
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    a, b = _random_pair(model, 9)
    data = Dataset(torch.randn(16, 5), torch.randn(16, 1), "mse", "toy")
    with pytest.raises(InputError, match="lr"):
        curve_connectivity(model, a, b, data, optimizer="sgd", lr=1e30, momentum=0.0, epochs=5, batch_size=4, alphas=3)
