"""Curvature along the path: every fast routine against a slow, obviously correct reference.

References: dense ``torch.func.hessian`` of the mean loss (float64), the closed-form Hessian of
least squares, dense eigendecompositions, the geometry module's L″ and finite differences of
the loss curve.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from mli_theory.curvature import (
    MatrixOperator,
    curvature_along,
    directional_curvature,
    extreme_eigenpairs,
    hutchpp_trace,
    loss_hessian,
    path_direction,
    spectral_density,
)
from mli_theory.errors import InputError
from mli_theory.inputs import Dataset
from mli_theory.path import BNPolicy, loss_curve, make_line


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is faster, and much faster on a loaded machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _endpoints(model: nn.Module, scale: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    final = {
        k: (v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) if v.is_floating_point() else v.clone())
        for k, v in init.items()
    }
    if any("running_var" in k for k in final):
        final = {k: (v.abs() + 0.5 if "running_var" in k else v) for k, v in final.items()}
    return init, final


def _mlp(act=nn.Tanh, bn: bool = False, d: int = 3, h: int = 5, k: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(d, h)] + ([nn.BatchNorm1d(h)] if bn else []) + [act(), nn.Linear(h, k)]
    return nn.Sequential(*layers).double()


def _data(loss: str, n: int = 20, d: int = 3, k: int = 2, seed: int = 1) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, k, generator=g, dtype=torch.float64) if loss == "mse" else torch.randint(0, k, (n,), generator=g)
    return Dataset(x, y, loss, "test")


def _dense_reference(line, data: Dataset, alpha: float, bn: BNPolicy, stats_batch: int | None = None) -> torch.Tensor:
    """torch.func.hessian of torch's mean loss over all examples at once, buffers as the policy gives them."""
    from mli_theory.curvature import fixed_buffers

    state = line.at(alpha)
    params = {k: state[k] for k in line.param_names}
    buffers = fixed_buffers(line, data, alpha, bn, stats_batch)  # re-estimated statistics depend on the batches
    flat = torch.cat([p.reshape(-1) for p in params.values()])
    shapes = [(k, p.shape, p.numel()) for k, p in params.items()]

    def loss(v: torch.Tensor) -> torch.Tensor:
        d, i = {}, 0
        for k, s, m in shapes:
            d[k] = v[i : i + m].reshape(s)
            i += m
        out = functional_call(line.shell, {**buffers, **d}, (data.x,))
        if data.loss == "mse":
            return nn.functional.mse_loss(out, data.y)
        return nn.functional.cross_entropy(out, data.y)

    return hessian(loss)(flat)


def _rel(a: torch.Tensor | float, b: torch.Tensor | float) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ----------------------------------------------------------------------------- Hessian-vector products


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("batch_size", [None, 7])
@pytest.mark.parametrize("engine", ["forward_over_reverse", "double_backward"])
def test_hvp_equals_dense_hessian(loss, batch_size, engine):
    model = _mlp(k=3 if loss == "ce" else 2)
    line = make_line(model, *_endpoints(model), dtype=torch.float64)
    data = _data(loss, k=3 if loss == "ce" else 2)
    for alpha in (0.0, 0.37, 1.0):
        op = loss_hessian(line, data, alpha, bn="frozen", batch_size=batch_size, engine=engine)
        ref = _dense_reference(line, data, alpha, BNPolicy.FROZEN)
        assert _rel(op.dense(), ref) < 1e-8
        v = torch.randn(op.size, dtype=torch.float64)
        assert _rel(op.matvec(v), ref @ v) < 1e-8
        block = torch.randn(5, op.size, dtype=torch.float64)
        assert _rel(op.matmat(block), block @ ref.T) < 1e-8


@pytest.mark.parametrize("batch_size", [None, 7])
def test_auto_engine_agrees_with_both_engines(batch_size):
    model = _mlp(k=3)
    line = make_line(model, *_endpoints(model), dtype=torch.float64)
    data = _data("ce", k=3)
    auto = loss_hessian(line, data, 0.37, bn="frozen", batch_size=batch_size)  # the default is auto
    assert auto.engine_requested == "auto" and auto.engine == "double_backward" and auto.graph_bytes > 0
    block = torch.randn(9, auto.size, dtype=torch.float64)  # chunks of 4, 4 and 1 through the graph
    got = auto.matmat(block)
    for engine in ("forward_over_reverse", "double_backward"):
        op = loss_hessian(line, data, 0.37, bn="frozen", batch_size=batch_size, engine=engine)
        assert op.engine == engine
        assert _rel(got, op.matmat(block)) < 1e-10, engine
        assert _rel(auto.matvec(block[0]), op.matvec(block[0])) < 1e-10, engine
    # a budget the graphs do not fit: auto falls back to forward-over-reverse, same products
    small = loss_hessian(line, data, 0.37, bn="frozen", batch_size=batch_size, memory_budget=1)
    assert small.engine == "forward_over_reverse" and small.cache == () and small.graph_bytes > 1
    assert _rel(small.matmat(block), got) < 1e-10


def test_double_backward_block_size_does_not_change_products():
    model = _mlp(k=3)
    line = make_line(model, *_endpoints(model), dtype=torch.float64)
    data = _data("ce", k=3)
    from mli_theory.curvature.hvp import loss_hessian_at

    op = loss_hessian(line, data, 0.5, bn="frozen", engine="double_backward")
    block = torch.randn(7, op.size, dtype=torch.float64)
    ref = op.matmat(block)
    for b in (1, 3, 16):
        other = loss_hessian_at(line.shell, op.params, op.buffers, op.data, engine="double_backward", block=b)
        assert _rel(other.matmat(block), ref) < 1e-12, b


def test_curvature_along_records_the_engine_used():
    model = _mlp(k=3)
    line = make_line(model, *_endpoints(model), dtype=torch.float64)
    res = curvature_along(line, _data("ce", k=3), [0.5], top_k=1, smallest=False, trace=False, dense_below=0)
    assert res.info["engine_requested"] == "auto" and res.info["engine"] == "double_backward"


def test_hvp_with_batchnorm_equals_dense_hessian_for_each_policy():
    model = _mlp(bn=True)
    line = make_line(model, *_endpoints(model), dtype=torch.float64)
    data = _data("mse")
    for bn in BNPolicy:
        ref = _dense_reference(line, data, 0.4, bn, stats_batch=6)
        for engine in ("forward_over_reverse", "double_backward"):
            op = loss_hessian(line, data, 0.4, bn=bn, batch_size=6, engine=engine)
            assert _rel(op.dense(), ref) < 1e-8, (bn, engine)


def test_nothing_given_is_modified():
    model = _mlp(bn=True)
    before_model = {k: v.clone() for k, v in model.state_dict().items()}
    init, final = _endpoints(model)
    i0, f0 = {k: v.clone() for k, v in init.items()}, {k: v.clone() for k, v in final.items()}
    data = _data("mse")
    x0, y0 = data.x.clone(), data.y.clone()
    line = make_line(model, init, final, dtype=torch.float64)
    curvature_along(line, data, [0.0, 1.0], top_k=2, smallest=True, trace=True, density=True, bn="recompute")
    for a, b in ((model.state_dict(), before_model), (init, i0), (final, f0)):
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert torch.equal(data.x, x0) and torch.equal(data.y, y0)
    assert model.training  # the caller's module keeps its mode


# ----------------------------------------------------------------------------- closed form: least squares


def test_least_squares_hessian_closed_form():
    """f(x) = Wx + b, L = (1/(n·k)) Σ_i ‖W x_i + b − y_i‖² (torch's mean over n·k entries).

    With x̃ = (x, 1) and the rows w̃_j = (W_j, b_j), L = (1/(nk)) Σ_j ‖X̃ w̃_j − y_{:,j}‖², so the Hessian
    in the flat layout (W row-major, then b) has blocks H[W_j, W_j] = 2XᵀX/(nk), H[W_j, b_j] = 2Xᵀ1/(nk),
    H[b_j, b_j] = 2n/(nk), and no coupling between outputs j ≠ j′. Its eigenvalues are those of
    A = 2X̃ᵀX̃/(nk), each k times; tr H = k·tr A = 2‖X̃‖²_F/n; Δθᵀ H Δθ = (2/(nk)) Σ_i ‖ΔW x_i + Δb‖².
    """
    n, d, k = 40, 6, 3
    torch.manual_seed(3)
    model = nn.Linear(d, k).double()
    line = make_line(model, *_endpoints(model, 1.0), dtype=torch.float64)
    data = _data("mse", n=n, d=d, k=k, seed=5)
    X = data.x
    c = 2.0 / (n * k)
    expected = torch.zeros(d * k + k, d * k + k, dtype=torch.float64)
    for j in range(k):
        w = slice(j * d, (j + 1) * d)
        b = d * k + j
        expected[w, w] = c * X.T @ X
        expected[w, b] = expected[b, w] = c * X.sum(0)
        expected[b, b] = c * n
    xt = torch.cat([X, torch.ones(n, 1, dtype=torch.float64)], 1)
    a_eigs = torch.linalg.eigvalsh(c * xt.T @ xt)
    dW = line.end["weight"] - line.start["weight"]
    db = line.end["bias"] - line.start["bias"]
    kappa = c * float((X @ dW.T + db).pow(2).sum())
    for alpha in (0.0, 0.6):  # the model is linear: H does not depend on α
        op = loss_hessian(line, data, alpha)
        assert _rel(op.dense(), expected) < 1e-12
        top = extreme_eigenpairs(op, 3, "LA", tol=1e-10, dense_below=0)
        assert top.method == "block_lanczos"  # a block of 3 sees the triple eigenvalue
        assert np.allclose(top.eigenvalues, [float(a_eigs[-1])] * 3, rtol=1e-9)
        bottom = extreme_eigenpairs(op, 1, "SA", tol=1e-10, dense_below=0)
        assert math.isclose(bottom.eigenvalues[0], float(a_eigs[0]), rel_tol=1e-8)
        exact = hutchpp_trace(op, sketch_rank=op.size)
        assert exact.exact and math.isclose(exact.value, 2 * float(xt.pow(2).sum()) / n, rel_tol=1e-12)
        assert math.isclose(directional_curvature(line, data, alpha), kappa, rel_tol=1e-12)


# ----------------------------------------------------------------------------- eigenvalues


@pytest.mark.parametrize("which,k", [("LA", 3), ("SA", 2), ("LM", 2)])
def test_lanczos_eigenvalues_equal_dense(which, k):
    model = _mlp(h=8)
    line = make_line(model, *_endpoints(model), dtype=torch.float64)
    data = _data("mse", n=30)
    op = loss_hessian(line, data, 0.5, bn="frozen")
    ref = _dense_reference(line, data, 0.5, BNPolicy.FROZEN)
    lam = torch.linalg.eigvalsh(ref).numpy()
    want = {"LA": sorted(lam[-k:], reverse=True), "SA": sorted(lam[:k]),
            "LM": sorted(lam[np.argsort(-np.abs(lam))[:k]], reverse=True)}[which]
    tight = extreme_eigenpairs(op, k, which, tol=1e-10, dense_below=0)
    assert tight.method == "block_lanczos" and tight.converged
    assert np.allclose(tight.eigenvalues, want, rtol=1e-8, atol=0)
    # the reported residuals are the true ones, recomputed here with the dense matrix
    v = tight.vectors.T
    true_res = (ref @ v - v * torch.tensor(tight.eigenvalues, dtype=torch.float64)).norm(dim=0)
    assert np.allclose(tight.residuals, true_res.numpy(), rtol=1e-6, atol=1e-13)
    # at a loose tolerance: every pair meets ‖Hv − λv‖ ≤ tol·|λ|, and each value is within its
    # residual of an eigenvalue (Bauer–Fike for symmetric matrices)
    loose = extreme_eigenpairs(op, k, which, tol=1e-3, dense_below=0)
    assert loose.converged and loose.method == "block_lanczos" and loose.n_matvecs < tight.n_matvecs
    for val, res in zip(loose.eigenvalues, loose.residuals):
        assert res <= 1e-3 * abs(val)
        assert np.min(np.abs(lam - val)) <= res * (1 + 1e-9) + 1e-14
    # a basis limit too small for the plain Lanczos run: ARPACK's restarts finish the job
    restarted = extreme_eigenpairs(op, k, which, tol=1e-8, dense_below=0, max_basis=k + 1)
    assert restarted.method == "arpack" and restarted.converged and np.allclose(restarted.eigenvalues, want, rtol=1e-7)
    dense = extreme_eigenpairs(op, k, which, tol=1e-3)  # small: dense path
    assert dense.method == "dense" and np.allclose(dense.eigenvalues, want, rtol=1e-10)


def test_eigen_options_are_checked():
    op = MatrixOperator(torch.eye(5, dtype=torch.float64))
    for kw, needle in (({"k": 0}, "top_k"), ({"k": 6}, "top_k"), ({"which": "XX"}, "which"), ({"tol": 0.0}, "tol")):
        with pytest.raises(InputError, match=needle):
            extreme_eigenpairs(op, **{"k": 1, **kw})


# ----------------------------------------------------------------------------- trace


def _spectrum_matrix(n: int = 60, seed: int = 1) -> tuple[MatrixOperator, float]:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.concatenate([10 * 0.7 ** np.arange(10), rng.normal(0, 0.3, n - 10)])  # a top and an indefinite bulk
    return MatrixOperator(torch.tensor((u * lam) @ u.T)), float(lam.sum())


def test_hutchpp_on_a_hessian_agrees_with_the_dense_trace():
    model = _mlp(h=8)
    line = make_line(model, *_endpoints(model), dtype=torch.float64)
    data = _data("mse", n=30)
    op = loss_hessian(line, data, 0.3, bn="frozen")
    true = float(torch.trace(_dense_reference(line, data, 0.3, BNPolicy.FROZEN)))
    exact = hutchpp_trace(op, sketch_rank=op.size)
    assert exact.exact and math.isclose(exact.value, true, rel_tol=1e-10)
    est = hutchpp_trace(op, rtol=0.05, confidence=0.999, sketch_rank=24, seed=4)
    assert est.converged and est.half_width <= 0.05 * abs(est.value)
    assert est.ci[0] <= true <= est.ci[1]


@pytest.mark.parametrize("adaptive", [False, True])
def test_hutchpp_intervals_cover_at_the_nominal_rate(adaptive):
    """Over 400 seeds, 95% intervals cover the true trace 95% of the time (binomial sd ≈ 1.1%)."""
    op, true = _spectrum_matrix()
    kw = dict(rtol=0.05, min_samples=24) if adaptive else dict(rtol=1e-12, min_samples=40, max_matvecs=16 + 40)
    hits, seeds = 0, 400
    for s in range(seeds):
        e = hutchpp_trace(op, sketch_rank=8, confidence=0.95, seed=s, **kw)
        hits += e.ci[0] <= true <= e.ci[1]
    assert 0.915 <= hits / seeds <= 0.985, hits / seeds


def test_hutchpp_reports_a_missed_budget():
    op, _ = _spectrum_matrix()
    e = hutchpp_trace(op, rtol=1e-6, sketch_rank=4, max_matvecs=40)
    assert not e.converged and e.n_matvecs == 40 and e.half_width > 1e-6 * abs(e.value)


# ----------------------------------------------------------------------------- density


def test_slq_density_integrates_to_one_and_matches_its_dense_reference():
    op, true = _spectrum_matrix(n=40)
    lam, u = torch.linalg.eigh(op.matrix)
    dens = spectral_density(op, n_vectors=6, steps=40, seed=2)  # full Lanczos: the quadrature is exact
    assert abs(dens.integral() - 1) < 1e-6
    assert all(math.isclose(sum(w), 1.0, rel_tol=1e-12) for w in dens.weights)
    # reference: the start vectors' spectral measures Σ_i (qᵀu_i)² δ(λ_i), smoothed with the same σ
    rng = np.random.default_rng(2)
    z = torch.as_tensor(rng.integers(0, 2, size=(6, 40)) * 2.0 - 1.0, dtype=torch.float64)
    w = ((z / z.norm(dim=1, keepdim=True)) @ u).pow(2)  # (n_v, n) weights on the eigenvalues
    grid = torch.tensor(dens.grid, dtype=torch.float64)
    kern = torch.exp(-0.5 * ((grid[:, None] - lam[None, :]) / dens.sigma) ** 2) / (dens.sigma * math.sqrt(2 * math.pi))
    ref = (kern @ w.T).mean(dim=1)
    assert _rel(torch.tensor(dens.values), ref) < 1e-7
    # its trace is Hutchinson's estimate: within 4 standard errors of the truth, and equal to its own formula
    assert abs(dens.trace - true) <= 4 * dens.trace_stderr
    hutch = float(((z @ op.matrix) * z).sum(1).mean())
    assert math.isclose(dens.trace, hutch, rel_tol=1e-10)


def test_slq_on_a_hessian_with_few_steps():
    model = _mlp(h=8)
    line = make_line(model, *_endpoints(model), dtype=torch.float64)
    data = _data("mse", n=30)
    op = loss_hessian(line, data, 0.3, bn="frozen")
    lam = torch.linalg.eigvalsh(_dense_reference(line, data, 0.3, BNPolicy.FROZEN))
    dens = spectral_density(op, n_vectors=3, steps=12, seed=0)
    assert abs(dens.integral() - 1) < 1e-6
    nodes = np.concatenate(dens.nodes)
    assert nodes.min() >= float(lam[0]) - 1e-9 and nodes.max() <= float(lam[-1]) + 1e-9  # Ritz values interlace
    assert math.isclose(nodes.max(), float(lam[-1]), rel_tol=1e-6)  # the extreme node converges first
    # the quadrature's trace and Hutch++ estimate the same number
    many = spectral_density(op, n_vectors=40, steps=4, seed=1)
    hpp = hutchpp_trace(op, rtol=0.05, confidence=0.99, sketch_rank=24, seed=1)
    assert abs(many.trace - hpp.value) <= 4 * many.trace_stderr + hpp.half_width


# ----------------------------------------------------------------------------- directional curvature = L″


def test_directional_curvature_equals_geometry_second_derivative():
    from mli_theory.geometry.describe import describe_path

    model = _mlp(h=6)
    line = make_line(model, *_endpoints(model), dtype=torch.float64)
    data = _data("mse", n=25)
    alphas = [0.0, 0.25, 0.8, 1.0]
    geo = describe_path(line, data, alphas, bn="frozen")
    ours = [directional_curvature(line, data, a) for a in alphas]
    assert np.allclose(ours, geo.d2loss.numpy(), rtol=1e-9, atol=0)
    res = curvature_along(line, data, alphas, bn="frozen")
    assert np.allclose(res.directional_curvature, geo.d2loss.numpy(), rtol=1e-9)


@pytest.mark.parametrize("bn", [False, True])
def test_directional_curvature_equals_finite_differences_of_the_loss_curve(bn):
    model = _mlp(h=6, k=3, bn=bn)
    line = make_line(model, *_endpoints(model), dtype=torch.float64)
    data = _data("ce", n=25, k=3)
    h = 1e-3
    for a in (0.2, 0.7):
        curve = loss_curve(line, data, [a - h, a, a + h], bn="frozen")
        fd = (curve.losses[0] - 2 * curve.losses[1] + curve.losses[2]) / h**2
        ours = directional_curvature(line, data, a, bn="frozen")
        assert math.isclose(ours, fd, rel_tol=1e-5), (ours, fd)


def test_batchnorm_model_runs_with_every_policy():
    model = _mlp(bn=True, h=6)
    line = make_line(model, *_endpoints(model), dtype=torch.float64)
    data = _data("mse", n=24)
    out = {}
    for bn in ("frozen", "interpolate", "recompute"):
        res = curvature_along(line, data, [0.0, 0.5, 1.0], top_k=2, smallest=True, trace=True, bn=bn, batch_size=8)
        assert res.bn == bn
        d = res.to_dict()
        assert all(math.isfinite(v) for row in d["eigenvalues"] for v in row)
        assert all(d["converged"])
        out[bn] = d
    # at α = 1 the interpolated statistics are θT's: interpolate and frozen agree there, and the
    # re-estimated statistics (of a model whose θT statistics are arbitrary) give another Hessian
    assert np.allclose(out["interpolate"]["eigenvalues"][-1], out["frozen"]["eigenvalues"][-1], rtol=1e-10)
    assert not np.allclose(out["recompute"]["eigenvalues"][0], out["frozen"]["eigenvalues"][0], rtol=1e-3)
    assert "directional_curvature_note" in out["recompute"]["info"]


def test_curvature_along_checks_its_options():
    model = _mlp()
    line = make_line(model, *_endpoints(model), dtype=torch.float64)
    data = _data("mse")
    for kw, needle in (
        ({"alphas": [1.5]}, "alphas"), ({"top_k": 0}, "top_k"), ({"top_k": 1000}, "top_k"),
        ({"which": "BIG"}, "which"), ({"tol": 2.0}, "tol"), ({"bn": "magic"}, "bn"), ({"batch_size": 0}, "batch_size"),
        ({"engine": "jax"}, "engine"),
    ):
        args = {"alphas": [0.5], **kw}
        with pytest.raises(InputError, match=needle):
            curvature_along(line, data, **args)
    bad = Dataset(torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64), "mse", "bad")
    with pytest.raises(InputError, match="does not fit"):
        curvature_along(line, bad, [0.5])


def test_path_direction_is_the_parameter_difference():
    model = _mlp(bn=True)
    init, final = _endpoints(model)
    line = make_line(model, init, final, dtype=torch.float64)
    d = path_direction(line)
    assert d.numel() == sum(p.numel() for p in model.parameters())
    assert math.isclose(float(d.norm()), math.sqrt(sum(float((final[k] - init[k]).pow(2).sum()) for k, _ in model.named_parameters())))


# ----------------------------------------------------------------------------- CLI


from inprocess import run_cli as _cli  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("curv")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    init = m.state_dict()
    torch.save(init, d / "init.pt")
    torch.save({k: v + 0.3 * torch.randn_like(v) for k, v in init.items()}, d / "final.pt")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=rng.normal(size=(30, 4)), y=rng.normal(size=(30, 2)))
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    torch.save(bn.state_dict(), d / "bn0.pt")
    torch.save({k: (v + 0.3 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in bn.state_dict().items()}, d / "bn1.pt")
    return d


def _base(files, arch="deep_linear:4-3-2", init="init.pt", final="final.pt"):
    return ["--arch", arch, "--init", str(files / init), "--final", str(files / final), "--data", str(files / "data.npz")]


def test_cli_json_contract(files, tmp_path):
    code, out, err = _cli("curvature", *_base(files), "--json", "--alphas", "3", "--top-k", "2", "--all", "--trace",
                          "--density", "--dtype", "float64", "--plot", str(tmp_path / "c.png"), "--quiet")
    assert code == 0, err
    d = json.loads(out)
    for key in ("alphas", "eigenvalues", "residuals", "smallest_eigenvalue", "trace", "trace_ci", "directional_curvature",
                "n_parameters", "density", "warnings"):
        assert key in d, key
    assert d["alphas"] == [0.0, 0.5, 1.0] and d["n_parameters"] == 18
    assert all(len(row) == 2 and row[0] >= row[1] for row in d["eigenvalues"])  # descending for LA
    assert all(len(row) == 2 for row in d["residuals"])
    assert all(len(ci) == 2 and ci[0] <= t <= ci[1] for t, ci in zip(d["trace"], d["trace_ci"]))
    assert len(d["smallest_eigenvalue"]) == 3 and all(s <= e[-1] for s, e in zip(d["smallest_eigenvalue"], d["eigenvalues"]))
    assert all(abs(np.trapezoid(x["values"], x["grid"]) - 1) < 1e-6 for x in d["density"])
    assert d["warnings"] == [] and (tmp_path / "c.png").stat().st_size > 0
    # the same numbers as the library (the deep linear model's Hessian is indefinite: λ_min < 0)
    assert min(d["smallest_eigenvalue"]) < 0


def test_cli_which_sa_at_one_alpha_and_text(files):
    code, out, err = _cli("curvature", *_base(files), "--json", "--at", "0.5", "--which", "SA", "--top-k", "3")
    assert code == 0, err
    d = json.loads(out)
    assert d["alphas"] == [0.5] and d["trace"] is None
    row = d["eigenvalues"][0]
    assert row == sorted(row) and d["smallest_eigenvalue"] == [row[0]]
    code, out, _ = _cli("curvature", *_base(files), "--at", "1")
    assert code == 0 and "eigenvalue" in out and not out.lstrip().startswith("{")


def test_cli_batchnorm_policies(files):
    for bn in ("frozen", "interpolate", "recompute"):
        code, out, err = _cli("curvature", *_base(files, "mlp:4-3-2:relu:bn", "bn0.pt", "bn1.pt"), "--bn", bn, "--at", "0.5", "--json")
        assert code == 0, err
        assert json.loads(out)["bn"] == bn


BAD = [
    (["--top-k", "0"], "--top-k"),
    (["--top-k", "100"], "--top-k"),
    (["--at", "2"], "--at"),
    (["--at", "nan"], "--at"),
    (["--which", "XX"], "--which"),
    (["--alphas", "1"], "--alphas"),
    (["--tol", "0"], "--tol"),
    (["--tol", "1.5"], "--tol"),
    (["--at", "0.5", "--alphas", "3"], "not allowed"),
    (["--bn", "magic"], "--bn"),
    (["--engine", "jax"], "--engine"),
]


@pytest.mark.parametrize("extra,needle", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_cli_bad_flags_exit_2_with_one_line(files, extra, needle):
    code, out, err = _cli("curvature", *_base(files), *extra, "--json")
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 1 and needle in lines[0], err


def test_cli_missing_file_exits_2(files):
    code, out, err = _cli("curvature", *_base(files, final="nope.pt"), "--json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "nope.pt" in err


def test_cli_failed_plot_is_a_warning(files, tmp_path, monkeypatch):
    import mli_theory.curvature.figures as figures

    def broken(*a, **k):
        raise RuntimeError("no backend")

    monkeypatch.setattr(figures, "plot_curvature", broken)
    code, out, err = _cli("curvature", *_base(files), "--json", "--at", "0", "--plot", str(tmp_path / "x.png"))
    assert code == 0, err
    d = json.loads(out)
    assert d["eigenvalues"] and any("plot" in w for w in d["warnings"])
