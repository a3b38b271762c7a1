"""GGN, Fisher, empirical Fisher and K-FAC operators, the split of L″, curvature diagonals and
per-layer spectra, each against a dense reference built independently with ``torch.func``."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from mli_theory.curvature import (
    BlockOperator,
    CurvatureOperator,
    directional_curvature,
    extreme_eigenpairs,
    fixed_buffers,
    ggn_diagonal,
    hessian_diagonal,
    layer_spectra,
    curvature_operator,
    operator_diagonal,
    parameter_blocks,
    path_direction,
    second_derivative_split,
    second_derivative_splits,
)
from mli_theory.errors import InputError
from mli_theory.inputs import Dataset
from mli_theory.path import BNPolicy, loss_curve, make_line

ALPHA = 0.37
needs_curvlinops = pytest.mark.skipif(
    importlib.util.find_spec("curvlinops") is None, reason="curvlinops-for-pytorch is not installed (pip install mli-theory[curvature])"
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------- fixtures and references


def _mlp(d: int = 5, h: int = 6, k: int = 3, bn: bool = False, linear: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if linear:
        return nn.Sequential(nn.Linear(d, k)).double()
    layers = [nn.Linear(d, h)] + ([nn.BatchNorm1d(h)] if bn else []) + [nn.Tanh(), nn.Linear(h, k)]
    return nn.Sequential(*layers).double()


def _line(model: nn.Module, scale: float = 0.5):
    g = torch.Generator().manual_seed(0)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    final = {
        k: (v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) if v.is_floating_point() else v.clone())
        for k, v in init.items()
    }
    final = {k: (v.abs() + 0.5 if "running_var" in k else v) for k, v in final.items()}
    return make_line(model, init, final, dtype=torch.float64)


def _data(loss: str, n: int = 20, d: int = 5, k: int = 3) -> Dataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, k, generator=g, dtype=torch.float64) if loss == "mse" else torch.randint(0, k, (n,), generator=g)
    return Dataset(x, y, loss, "test")


def _setup(loss: str, **kw):
    model = _mlp(**kw)
    return _line(model), _data(loss)


class _Dense:
    """Dense references at θ(α): outputs as a function of the flat parameter vector."""

    def __init__(self, line, data: Dataset, alpha: float, bn: str = "frozen") -> None:
        state = line.at(alpha)
        self.params = {k: state[k] for k in line.param_names}
        self.buffers = fixed_buffers(line, data, alpha, bn)
        self.flat = torch.cat([p.reshape(-1) for p in self.params.values()])
        self.line, self.data = line, data
        self.norm = data.y.numel() if data.loss == "mse" else data.n

    def outputs(self, v: torch.Tensor) -> torch.Tensor:
        d, i = {}, 0
        for k, p in self.params.items():
            d[k] = v[i : i + p.numel()].reshape(p.shape)
            i += p.numel()
        return functional_call(self.line.shell, {**self.buffers, **d}, (self.data.x,))

    def example_losses(self, v: torch.Tensor) -> torch.Tensor:
        z = self.outputs(v)
        if self.data.loss == "mse":
            return ((z - self.data.y) ** 2).sum(1)
        return nn.functional.cross_entropy(z, self.data.y, reduction="none")

    def hessian(self) -> torch.Tensor:
        return hessian(lambda v: self.example_losses(v).sum() / self.norm)(self.flat)

    def output_hessians(self) -> torch.Tensor:
        z = self.outputs(self.flat)
        if self.data.loss == "mse":
            return 2 * torch.eye(z.shape[1], dtype=z.dtype).expand(z.shape[0], -1, -1)
        p = z.softmax(1)
        return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]

    def ggn(self) -> torch.Tensor:
        j = jacrev(self.outputs)(self.flat)  # (n, k, P)
        return torch.einsum("nap,nab,nbq->pq", j, self.output_hessians(), j) / self.norm

    def empirical_fisher(self) -> torch.Tensor:
        g = jacrev(self.example_losses)(self.flat)  # (n, P): gradients of the per-example summed losses
        return g.T @ g / self.norm

    def exact_fisher_ce(self) -> torch.Tensor:
        """E_{ỹ∼softmax(z)}[∇_zℓ ∇_zℓᵀ] by enumerating the classes, pulled back by J."""
        z = self.outputs(self.flat)
        p = z.softmax(1)
        k = z.shape[1]
        eye = torch.eye(k, dtype=z.dtype)
        grads = p[:, None, :] - eye[None]  # (n, c, k): ∇_z ℓ(z, c) = p − e_c
        cov = torch.einsum("nc,nca,ncb->nab", p, grads, grads)
        j = jacrev(self.outputs)(self.flat)
        return torch.einsum("nap,nab,nbq->pq", j, cov, j) / self.norm


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ----------------------------------------------------------------------------- operators


@needs_curvlinops
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_ggn_and_empirical_fisher_equal_dense_references(loss):
    line, data = _setup(loss)
    ref = _Dense(line, data, ALPHA)
    ggn = curvature_operator(line, data, ALPHA, "ggn", bn="frozen")
    assert isinstance(ggn, CurvatureOperator) and ggn.shape == (57, 57) and ggn.dtype == torch.float64
    g = ggn.dense()
    g_ref = ref.ggn()
    assert _rel(g, g_ref) < 1e-12
    # minibatches give the same (1/N)-normalised matrix
    assert _rel(curvature_operator(line, data, ALPHA, "ggn", bn="frozen", batch_size=7).dense(), g_ref) < 1e-12
    ef = curvature_operator(line, data, ALPHA, "empirical_fisher", bn="frozen", batch_size=6).dense()
    assert _rel(ef, ref.empirical_fisher()) < 1e-12
    # the Hessian minus the GGN is the residual term of L″ (checked below); here: GGN is PSD, H is not
    assert float(torch.linalg.eigvalsh(g).min()) > -1e-12
    h = curvature_operator(line, data, ALPHA, "hessian", bn="frozen").dense()
    assert _rel(h, ref.hessian()) < 1e-12


@needs_curvlinops
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_monte_carlo_fisher_is_seeded_and_tends_to_the_ggn(loss):
    line, data = _setup(loss)
    ref = _Dense(line, data, ALPHA)
    g_ref = ref.ggn()
    if loss == "ce":  # the exact Fisher (classes enumerated) is the GGN for a softmax cross-entropy
        assert _rel(ref.exact_fisher_ce(), g_ref) < 1e-12
    f1 = curvature_operator(line, data, ALPHA, "fisher_mc", bn="frozen", mc_samples=1, seed=3)
    a = f1.dense(chunk=16)
    assert torch.equal(a, curvature_operator(line, data, ALPHA, "fisher_mc", bn="frozen", mc_samples=1, seed=3).dense())
    assert _rel(a, a.T) < 1e-12  # one fixed draw per product: a symmetric matrix, whatever the block size
    assert float(torch.linalg.eigvalsh(a).min()) > -1e-10
    b = curvature_operator(line, data, ALPHA, "fisher_mc", bn="frozen", mc_samples=1, seed=4).dense()
    assert _rel(a, b) > 1e-3
    many = curvature_operator(line, data, ALPHA, "fisher_mc", bn="frozen", mc_samples=4000, seed=0).dense()
    err = float((many - g_ref).norm() / g_ref.norm())
    assert err < 0.05, err  # MC error ~ 1/√(n·M); measured ≈ 0.01


@needs_curvlinops
def test_kfac_is_exact_where_it_should_be_and_block_diagonal():
    # a single Linear layer under MSE: the output Hessian is constant, so A ⊗ B is the GGN exactly
    line, data = _line(_mlp(linear=True)), _data("mse")
    g_ref = _Dense(line, data, ALPHA).ggn()
    kfac = curvature_operator(line, data, ALPHA, "kfac", bn="frozen")
    assert _rel(kfac.dense(), g_ref) < 1e-12
    # a tanh MLP: exact on the last layer's block (weight and bias together), zero across layers
    line, data = _setup("mse")
    g_ref = _Dense(line, data, ALPHA).ggn()
    k = curvature_operator(line, data, ALPHA, "kfac", bn="frozen", fisher_type="type-2").dense()
    last = slice(36, 57)
    assert _rel(k[last, last], g_ref[last, last]) < 1e-12
    assert float(k[:36, 36:].abs().max()) == 0.0
    assert _rel(k, g_ref) > 0.1  # an approximation elsewhere
    for ft in ("mc", "empirical"):
        m = curvature_operator(line, data, ALPHA, "kfac", bn="frozen", fisher_type=ft, mc_samples=2).dense()
        assert _rel(m, m.T) < 1e-12 and float(m[:36, 36:].abs().max()) == 0.0


@needs_curvlinops
def test_operators_with_batchnorm_hold_the_statistics_of_alpha():
    line, data = _line(_mlp(bn=True)), _data("ce")
    for bn in ("recompute", "interpolate"):
        ref = _Dense(line, data, ALPHA, bn)
        assert _rel(curvature_operator(line, data, ALPHA, "ggn", bn=bn).dense(), ref.ggn()) < 1e-12
    with pytest.raises(InputError, match="Linear or Conv2d.*BatchNorm1d"):
        curvature_operator(line, data, ALPHA, "kfac", bn="frozen")


@needs_curvlinops
def test_operators_work_with_lanczos_and_refuse_bad_options():
    model = _mlp(h=30)  # 273 parameters: past the dense threshold of extreme_eigenpairs
    line, data = _line(model), _data("ce")
    op = curvature_operator(line, data, ALPHA, "ggn", bn="frozen")
    top = extreme_eigenpairs(op, 2, "LA", tol=1e-8)
    ref = torch.linalg.eigvalsh(_Dense(line, data, ALPHA).ggn())
    assert top.method != "dense" and top.converged
    assert np.allclose(top.eigenvalues, ref.flip(0)[:2].numpy(), rtol=1e-7)
    with pytest.raises(InputError, match="matrix="):
        curvature_operator(line, data, ALPHA, "fisher")
    with pytest.raises(InputError, match="mc_samples"):
        curvature_operator(line, data, ALPHA, "fisher_mc", mc_samples=0)
    with pytest.raises(InputError, match="fisher_type"):
        curvature_operator(line, data, ALPHA, "kfac", fisher_type="type-1")


def test_missing_curvlinops_is_an_input_error_and_the_hessian_needs_none(monkeypatch):
    line, data = _setup("mse")
    monkeypatch.setitem(sys.modules, "curvlinops", None)  # import curvlinops now raises ImportError
    with pytest.raises(InputError, match=r"pip install mli-theory\[curvature\]"):
        curvature_operator(line, data, ALPHA, "ggn")
    h = _Dense(line, data, ALPHA).hessian()
    assert _rel(curvature_operator(line, data, ALPHA, "hessian", bn="frozen").dense(), h) < 1e-12
    assert _rel(ggn_diagonal(line, data, ALPHA, bn="frozen").values, torch.diagonal(_Dense(line, data, ALPHA).ggn())) < 1e-12
    spec = layer_spectra(line, data, ALPHA, top_k=1, bn="frozen")
    assert spec.matrix == "hessian" and len(spec.blocks) == 4
    split = second_derivative_split(line, data, ALPHA, bn="frozen")
    assert abs(split.second_derivative - directional_curvature(line, data, ALPHA, bn="frozen")) <= 1e-10 * abs(split.second_derivative)


# ----------------------------------------------------------------------------- the split of L″


def _fd_second_derivative(line, data, alpha: float, bn: str, h: float = 2e-3) -> float:
    """Richardson-extrapolated central differences of L(α) (float64 losses from ``loss_curve``)."""
    pts = [alpha - h, alpha - h / 2, alpha, alpha + h / 2, alpha + h]
    lm, lmh, l0, lph, lp = loss_curve(line, data, pts, bn=BNPolicy(bn)).losses
    d_h = (lp - 2 * l0 + lm) / h**2
    d_h2 = (lph - 2 * l0 + lmh) / (h / 2) ** 2
    return (4 * d_h2 - d_h) / 3


@needs_curvlinops
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_second_derivative_split_matches_finite_differences_and_the_hessian(loss):
    line, data = _setup(loss)
    d = path_direction(line)
    splits = second_derivative_splits(line, data, [0.2, ALPHA, 0.8], bn="frozen")
    for s in splits:
        fd = _fd_second_derivative(line, data, s.alpha, "frozen")
        assert abs(s.second_derivative - fd) <= 1e-6 * abs(fd), (s, fd)
        assert s.second_derivative == s.gauss_newton + s.residual and s.gauss_newton >= 0 and s.ggn_form
        # Δθᵀ H Δθ, one Hessian-vector product, is the same L″
        kappa = directional_curvature(line, data, s.alpha, bn="frozen")
        assert abs(kappa - s.second_derivative) <= 1e-10 * abs(kappa)
        # the Gauss–Newton term is Δθᵀ G Δθ with the GGN operator
        g = curvature_operator(line, data, s.alpha, "ggn", bn="frozen")
        assert abs(float(d @ g.matvec(d)) - s.gauss_newton) <= 1e-10 * s.gauss_newton
        assert s.off_curve is None and s.loss_name == loss
    one = second_derivative_split(line, data, ALPHA, method="nested_jvp")
    assert abs(one.second_derivative - splits[1].second_derivative) <= 1e-10 * abs(one.second_derivative)
    assert abs(one.loss - loss_curve(line, data, [ALPHA, 1.0]).losses[0]) <= 1e-12
    assert one.to_dict()["convex"] == one.convex


@needs_curvlinops
def test_second_derivative_split_with_batchnorm():
    line, data = _line(_mlp(bn=True)), _data("ce")
    frozen = second_derivative_split(line, data, ALPHA, bn="frozen")
    assert frozen.ggn_form
    assert abs(frozen.second_derivative - _fd_second_derivative(line, data, ALPHA, "frozen")) <= 1e-6 * abs(frozen.second_derivative)
    assert abs(directional_curvature(line, data, ALPHA, bn="frozen") - frozen.second_derivative) <= 1e-9 * abs(frozen.second_derivative)
    # re-estimated statistics: the Taylor jets follow them, so the sum is the measured curve's L″
    moving = second_derivative_split(line, data, ALPHA, bn="recompute")
    assert moving.off_curve is None and not moving.ggn_form
    fd = _fd_second_derivative(line, data, ALPHA, "recompute")
    assert abs(moving.second_derivative - fd) <= 1e-6 * abs(fd)
    # held fixed at α (nested forward mode): the Gauss–Newton term is Δθᵀ G Δθ at those statistics
    fixed = second_derivative_split(line, data, ALPHA, bn="recompute", method="nested_jvp")
    assert fixed.ggn_form and fixed.off_curve is not None
    d = path_direction(line)
    g = curvature_operator(line, data, ALPHA, "ggn", bn="recompute")
    assert abs(float(d @ g.matvec(d)) - fixed.gauss_newton) <= 1e-10 * fixed.gauss_newton
    with pytest.raises(InputError, match="alphas"):
        second_derivative_splits(line, data, [1.5])


# ----------------------------------------------------------------------------- diagonals


@needs_curvlinops
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_exact_diagonals(loss):
    line, data = _setup(loss)
    ref = _Dense(line, data, ALPHA)
    h_ref, g_ref = ref.hessian(), ref.ggn()
    hd = hessian_diagonal(line, data, ALPHA, bn="frozen", method="exact", block=10)
    assert hd.exact and hd.standard_error is None and hd.n_matvecs == 57
    assert _rel(hd.values, torch.diagonal(h_ref)) < 1e-12
    assert abs(hd.trace - float(torch.trace(h_ref))) < 1e-12 * float(torch.diagonal(h_ref).abs().sum())
    assert hd.per_parameter()["0.weight"].shape == (6, 5)
    gd = ggn_diagonal(line, data, ALPHA, bn="frozen", batch_size=7)
    assert gd.exact and gd.method == "per_example_jacobian"
    assert _rel(gd.values, torch.diagonal(g_ref)) < 1e-12
    op = curvature_operator(line, data, ALPHA, "empirical_fisher", bn="frozen")
    assert _rel(operator_diagonal(op).values, torch.diagonal(ref.empirical_fisher())) < 1e-12
    assert [r["name"] for r in gd.summary()] == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_hutchinson_diagonal_and_its_standard_error():
    line, data = _setup("ce")
    h = _Dense(line, data, ALPHA).hessian()
    m = 400
    est = hessian_diagonal(line, data, ALPHA, bn="frozen", method="hutchinson", n_samples=m, seed=5)
    assert not est.exact and est.n_samples == m and est.n_matvecs == m
    z = (est.values - torch.diagonal(h)) / est.standard_error
    assert float(z.abs().max()) < 4.5, float(z.abs().max())
    # Var[v_p (Hv)_p] = Σ_{q≠p} H_pq² for Rademacher v: the estimated errors match the theory
    theory = torch.sqrt(((h**2).sum(1) - torch.diagonal(h) ** 2) / m)
    ratio = est.standard_error / theory
    assert 0.9 < float(ratio.median()) < 1.1 and 0.6 < float(ratio.min()) and float(ratio.max()) < 1.5
    again = hessian_diagonal(line, data, ALPHA, bn="frozen", method="hutchinson", n_samples=m, seed=5)
    assert torch.equal(est.values, again.values)
    assert est.to_dict()["standard_error"] is not None
    with pytest.raises(InputError, match="n_samples"):
        hessian_diagonal(line, data, ALPHA, method="hutchinson", n_samples=1)


# ----------------------------------------------------------------------------- per-layer spectra


@needs_curvlinops
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("dense_below", [128, 0])
def test_layer_spectra_equal_dense_blocks(loss, dense_below):
    line, data = _setup(loss)
    h = _Dense(line, data, ALPHA).hessian()
    names = tuple(line.param_names)
    shapes = tuple(tuple(line.start[k].shape) for k in names)
    for group in ("parameter", "module"):
        for which in ("LA", "SA"):
            spec = layer_spectra(
                line, data, ALPHA, top_k=3, which=which, group=group, bn="frozen", tol=1e-9, dense_below=dense_below,
            )
            assert spec.info["formed_full_matrix"] == (dense_below > 0)
            blocks = parameter_blocks(names, shapes, group)
            assert [b.name for b in spec.blocks] == [b[0] for b in blocks]
            for b, (_, _, idx) in zip(spec.blocks, blocks):
                vals = torch.linalg.eigvalsh(h[idx][:, idx])
                want = vals.flip(0)[: len(b.eigenvalues)] if which == "LA" else vals[: len(b.eigenvalues)]
                assert len(b.eigenvalues) == min(3, idx.numel())
                # every pair meets the relative bound, except an eigenvalue that is zero to working
                # precision (the softmax's shift invariance makes the last bias block of ce singular)
                tiny = 1e3 * torch.finfo(torch.float64).eps * float(vals.abs().max())
                assert b.eigenpairs.converged or min(abs(v) for v in b.eigenvalues) < tiny
                assert np.allclose(b.eigenvalues, want.numpy(), rtol=1e-8, atol=1e-10 * float(vals.abs().max())), (b.name, b.eigenvalues, want)
    # blocks of another matrix, and the block operator itself
    g = _Dense(line, data, ALPHA).ggn()
    spec = layer_spectra(line, data, ALPHA, top_k=2, matrix="ggn", group="module", bn="frozen", tol=1e-9)
    idx = parameter_blocks(names, shapes, "module")[1][2]
    assert np.allclose(spec.blocks[1].eigenvalues, torch.linalg.eigvalsh(g[idx][:, idx]).flip(0)[:2].numpy(), rtol=1e-9)
    blk = BlockOperator(curvature_operator(line, data, ALPHA, "hessian", bn="frozen"), idx)
    assert _rel(blk.dense(), h[idx][:, idx]) < 1e-12
    assert spec.to_dict()["blocks"][0]["name"] == "0" and "ggn" in spec.to_text()
