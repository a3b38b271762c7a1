"""XTrace (plain and with sign-flipped copies by layer) against dense traces, its standard error over seeds,
and the exact trace references of ``benchmarks/curvature_speed.py`` against ``torch.func.hessian``."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from mli_theory.curvature import MatrixOperator, layer_colors, loss_hessian, xtrace_trace
from mli_theory.curvature.trace import _XTrace, sign_patterns
from mli_theory.errors import InputError
from mli_theory.inputs import Dataset
from mli_theory.path import make_line

ROOT = os.path.join(os.path.dirname(__file__), "..")


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("curvature_speed", os.path.join(ROOT, "benchmarks", "curvature_speed.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dense_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> float:
    """tr of torch.func.hessian of torch's mean loss over the flat parameters (float64)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    names = list(params)
    flat = torch.cat([params[k].reshape(-1) for k in names])

    def f(v):
        d, o = {}, 0
        for k in names:
            d[k] = v[o : o + params[k].numel()].reshape(params[k].shape)
            o += params[k].numel()
        out = functional_call(model, {**d, **buffers}, (x,))
        return nn.functional.cross_entropy(out, y) if loss == "ce" else nn.functional.mse_loss(out, y)

    return float(torch.trace(hessian(f)(flat)))


def _xy(loss: str, n: int, shape: tuple[int, ...], k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (n,), generator=g) if loss == "ce" else torch.randn(n, k, generator=g, dtype=torch.float64)
    return x, y


def _decaying(n: int = 60, seed: int = 1) -> tuple[MatrixOperator, float]:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.concatenate([10 * 0.7 ** np.arange(10), rng.normal(0, 0.3, n - 10)])
    return MatrixOperator(torch.tensor((u * lam) @ u.T)), float(lam.sum())


def _hessian_op(act=nn.Tanh, h: int = 8, n: int = 30, seed: int = 0):
    """A small path Hessian (float64) with its dense trace."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, h), act(), nn.Linear(h, 2)).double()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    final = {k: v + 0.5 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in init.items()}
    line = make_line(model, init, final, dtype=torch.float64)
    x, y = _xy("mse", n, (3,), 2, seed=1)
    op = loss_hessian(line, Dataset(x, y, "mse", "test"), 0.3, bn="frozen")
    return op, float(torch.trace(op.dense()))


# ----------------------------------------------------------------------------- the benchmark's exact references


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_relu_mlp_reference_trace_equals_the_dense_hessian_trace(bench, loss):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x, y = _xy(loss, 40, (5,), 3)
    true = _dense_trace(model, x, y, loss)
    assert math.isclose(bench.relu_mlp_hessian_trace(model, x, y, loss, chunk=7), true, rel_tol=1e-10)
    assert math.isclose(bench.ggn_trace_jacobians(model, x, y, loss, chunk=9), true, rel_tol=1e-10)


def test_jacobian_reference_trace_on_a_conv_net_with_frozen_batchnorm(bench):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    x, y = _xy("mse", 12, (2, 5, 5), 2)
    true = _dense_trace(model, x, y, "mse")
    assert math.isclose(bench.ggn_trace_jacobians(model, x, y, "mse", chunk=5), true, rel_tol=1e-10)


def test_the_reference_identity_needs_piecewise_linear_layers(bench):
    """Control: with tanh, tr H ≠ tr GGN (the second derivative of the output has a diagonal)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = _xy("ce", 30, (4,), 3)
    assert not math.isclose(bench.ggn_trace_jacobians(model, x, y, "ce"), _dense_trace(model, x, y, "ce"), rel_tol=1e-3)


# ----------------------------------------------------------------------------- XTrace itself


def _naive_xtrace(a: np.ndarray, om: np.ndarray) -> np.ndarray:
    """est_i = tr(Q_iᵀ A Q_i) + ω_iᵀ (I − Q_iQ_iᵀ) A (I − Q_iQ_iᵀ) ω_i with Q_i = orth(A Ω without column i)."""
    y = a @ om
    out = []
    for i in range(om.shape[1]):
        q, _ = np.linalg.qr(np.delete(y, i, axis=1))
        w = om[:, i] - q @ (q.T @ om[:, i])
        out.append(np.trace(q.T @ a @ q) + w @ a @ w)
    return np.array(out)


def test_xtrace_leave_one_out_estimates_equal_the_naive_formula():
    op, _ = _decaying(n=40)
    st = _XTrace(op, seed=3)
    st.grow(3, 2)
    st.grow(6, 8)
    ests, low = st.estimates()
    om = torch.cat(st.omega).numpy().T
    assert np.abs(ests - _naive_xtrace(op.matrix.numpy(), om)).max() < 1e-10
    q = torch.cat(st.q).numpy()
    assert np.abs(q @ q.T - np.eye(9)).max() < 1e-12
    other = _XTrace(op, seed=3)
    other.grow(9, 4)  # the same stream for any grouping of the vectors into blocks
    assert np.abs(other.estimates()[0] - ests).max() < 1e-10


@pytest.mark.parametrize("colors", ["layers", None])
def test_xtrace_on_a_hessian_agrees_with_the_dense_trace(colors):
    op, true = _hessian_op()
    est = xtrace_trace(op, rtol=0.1, confidence=0.95, seed=4, colors=colors)
    assert est.converged and est.half_width <= 0.1 * abs(est.value) and not est.exact
    assert est.method == ("xtrace (2 sign patterns)" if colors else "xtrace")
    assert abs(est.value - true) <= 4 * est.standard_error
    assert est.n_matvecs == est.n_samples * (4 if colors else 2) == 2 * est.sketch_rank


@pytest.mark.parametrize("case", ["decaying", "hessian", "hessian, layer signs"])
def test_xtrace_standard_error_is_sensible_over_seeds(case):
    """At a fixed number of vectors, |error| ≤ 4 SE in ≥ 95% of 200 seeds, and the SE is the right size:
    its median within a factor 2 of the root-mean-square error. (The leave-one-out estimates share
    most of their sketch, so the nominal 95% interval covers somewhat less: 0.83–0.92 measured.)"""
    if case == "decaying":
        op, true = _decaying()
        colors = None
    else:
        op, true = _hessian_op()
        colors = "layers" if "signs" in case else None
    budget = 32 if colors else 16  # 8 test vectors
    errs, ses, cover = [], [], 0
    for s in range(200):
        e = xtrace_trace(op, rtol=1e-12, min_vectors=2, max_matvecs=budget, seed=s, colors=colors)
        assert e.n_samples == 8 and not e.converged
        errs.append(e.value - true)
        ses.append(e.standard_error)
        cover += e.ci[0] <= true <= e.ci[1]
    errs, ses = np.abs(errs), np.asarray(ses)
    assert np.mean(errs <= 4 * ses) >= 0.95
    assert 0.5 <= np.median(ses) / np.sqrt(np.mean(errs**2)) <= 2.0
    assert cover / 200 >= 0.78


def _naive_grouped(a: np.ndarray, om: np.ndarray, g: int) -> np.ndarray:
    """Leave one group of g columns out: exact trace on the rest's range plus the group's mean deflated quadratic form."""
    y = a @ om
    out = []
    for i in range(om.shape[1] // g):
        cols = list(range(i * g, (i + 1) * g))
        q, _ = np.linalg.qr(np.delete(y, cols, axis=1))
        h = [(v - q @ (q.T @ v)) @ a @ (v - q @ (q.T @ v)) for v in om[:, cols].T]
        out.append(np.trace(q.T @ a @ q) + np.mean(h))
    return np.array(out)


@pytest.mark.parametrize("colors", [[0] * 15 + [1] * 25, [2] * 10 + [0] * 20 + [5] * 10])
def test_grouped_xtrace_equals_the_naive_formula_and_its_copies_cancel_cross_blocks(colors):
    op, _ = _decaying(n=40)
    signs = sign_patterns(torch.tensor(colors))
    c = torch.tensor(colors)
    p = signs.shape[0]
    assert p == (2 if len(set(colors)) == 2 else 4) and bool((signs[0] == 1).all())
    gram = signs.T @ signs  # Σ_p D_p M D_p / P keeps colour blocks (3 colours: one is split in two)
    same = c[:, None] == c[None, :]
    assert bool((gram[~same] == 0).all()) and bool((gram.diagonal() == p).all())
    assert int((gram == p).sum()) == (int(same.sum()) if p == 2 else int(same.sum()) - 2 * 10 * 10)
    st = _XTrace(op, seed=5, signs=signs)
    st.grow(2, 8)
    st.grow(3, 8)
    ests, _ = st.estimates()
    om = torch.cat(st.omega).numpy().T
    assert len(ests) == 5 and st.matvecs == 2 * 5 * p
    assert np.abs(ests - _naive_grouped(op.matrix.numpy(), om, p)).max() < 1e-9
    base = om[:, ::p]
    assert np.array_equal(om[:, 1::p], base * signs[1].numpy()[:, None])  # the copies are sign flips of ω


def test_layer_colors_alternate_by_layer_and_normalisation_joins_its_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    line = make_line(model, init, init, dtype=torch.float64)
    x, y = _xy("mse", 10, (3,), 2)
    op = loss_hessian(line, Dataset(x, y, "mse", "test"), 0.5, bn="frozen")
    c = layer_colors(op)
    sizes = [12 + 4 + 4 + 4, 16 + 4, 8 + 2]  # Linear+BN, Linear, Linear
    assert c.tolist() == [0] * sizes[0] + [1] * sizes[1] + [0] * sizes[2]
    assert layer_colors(MatrixOperator(torch.eye(3, dtype=torch.float64))) is None
    lone = make_line(nn.Sequential(nn.Linear(3, 2)).double(), *(2 * [nn.Sequential(nn.Linear(3, 2)).double().state_dict()]),
                     dtype=torch.float64)
    assert layer_colors(loss_hessian(lone, Dataset(x, y, "mse", "test"), 0.5)) is None


def test_xtrace_exact_degenerate_and_budget_cases():
    small = MatrixOperator(torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64)))
    e = xtrace_trace(small)  # n ≤ 2·min_vectors: exact from n products
    assert e.exact and e.value == 55.0 and e.n_matvecs == 10 and e.standard_error == 0.0
    zero = xtrace_trace(MatrixOperator(torch.zeros(50, 50, dtype=torch.float64)))
    assert zero.value == 0.0 and zero.converged and math.isfinite(zero.standard_error)
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((50, 2)))
    low = xtrace_trace(MatrixOperator(torch.tensor(u @ np.diag([5.0, -2.0]) @ u.T)), min_vectors=4, block=4)
    assert math.isclose(low.value, 3.0, rel_tol=1e-10) and low.n_matvecs == 8
    op, true = _decaying(n=300)
    short = xtrace_trace(op, rtol=1e-8, max_matvecs=20)
    assert not short.converged and short.n_matvecs == 20 and short.half_width > 1e-8 * abs(short.value)
    adaptive = xtrace_trace(op, rtol=0.01, seed=2)
    assert adaptive.converged and adaptive.n_matvecs < 300 and abs(adaptive.value - true) <= 4 * adaptive.standard_error


@pytest.mark.parametrize("kw,needle", [
    ({"rtol": 0.0}, "rtol"), ({"confidence": 1.0}, "confidence"), ({"min_vectors": 1}, "min_vectors"),
    ({"block": 0}, "block"), ({"max_matvecs": 3}, "max_matvecs"), ({"colors": "bogus"}, "colors"),
    ({"colors": np.zeros(7, dtype=int)}, "colors"), ({"colors": np.zeros(60)}, "colors"),
])
def test_xtrace_input_errors(kw, needle):
    op, _ = _decaying()
    with pytest.raises(InputError, match=needle):
        xtrace_trace(op, **kw)


# ----------------------------------------------------------------------------- CLI


from inprocess import run_cli as _cli  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("trace")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 20), nn.ReLU(), nn.Linear(20, 2))  # 142 parameters: above the exact cut-off (128)
    init = m.state_dict()
    torch.save(init, d / "init.pt")
    torch.save({k: v + 0.3 * torch.randn_like(v) for k, v in init.items()}, d / "final.pt")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=rng.normal(size=(30, 4)), y=rng.normal(size=(30, 2)))
    return d


def _base(files):
    return ["--arch", "mlp:4-20-2:relu", "--init", str(files / "init.pt"), "--final", str(files / "final.pt"),
            "--data", str(files / "data.npz"), "--dtype", "float64", "--json", "--quiet", "--trace-rtol", "0.05"]


def test_cli_trace_methods(files):
    results = {}
    for method in ("xtrace", "hutchpp", None):
        code, out, err = _cli("curvature", *_base(files), "--alphas", "2", "--trace", *(["--trace-method", method] if method else []))
        assert code == 0, err
        results[method] = json.loads(out)
    assert results[None]["trace"] == results["xtrace"]["trace"]  # xtrace is the default
    for method, d in results.items():
        assert [t["method"].split(" ")[0] for t in d["trace_details"]] == [method or "xtrace"] * 2
        assert all(ci[0] <= t <= ci[1] for t, ci in zip(d["trace"], d["trace_ci"]))
        assert d["warnings"] == []
    x, h = results["xtrace"], results["hutchpp"]
    assert x["info"]["trace_method"] == "xtrace" and "trace_method" not in h["info"]
    assert x["info"]["hessian_vector_products"] >= sum(t["n_matvecs"] for t in x["trace_details"])
    for tx, th, dx, dh in zip(x["trace"], h["trace"], x["trace_details"], h["trace_details"]):
        assert abs(tx - th) <= 4 * (dx["standard_error"] + dh["standard_error"])


def test_cli_bad_trace_method_exits_2_with_one_line(files):
    code, out, err = _cli("curvature", *_base(files), "--trace", "--trace-method", "hutch")
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and "--trace-method" in lines[0], err


# ----------------------------------------------------------------------------- SLQ without reorthogonalisation


def test_slq_without_reorthogonalisation_keeps_the_quadrature():
    from mli_theory.curvature import spectral_density

    op, true = _decaying(n=200)
    lam = torch.linalg.eigvalsh(op.matrix)
    full = spectral_density(op, n_vectors=4, steps=30, seed=3)
    lean = spectral_density(op, n_vectors=4, steps=30, seed=3, reorthogonalize=False)
    assert abs(lean.integral() - 1) < 1e-6 and lean.n_matvecs == full.n_matvecs == 120
    assert math.isclose(lean.trace, full.trace, rel_tol=1e-12)  # (T)_11 = qᵀHq either way
    nodes = np.concatenate(lean.nodes)
    assert nodes.min() >= float(lam[0]) - 1e-8 and nodes.max() <= float(lam[-1]) + 1e-8
    assert math.isclose(nodes.max(), float(lam[-1]), rel_tol=1e-8)
    # the smoothed densities agree (the low moments of the quadrature are those of the same measure)
    grid = np.asarray(full.grid)
    other = np.interp(grid, lean.grid, lean.values)
    assert np.trapezoid(np.abs(other - np.asarray(full.values)), grid) < 0.05
