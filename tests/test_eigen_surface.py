"""Loss surfaces along the top Hessian eigenvectors (``loss_surface(..., directions="hessian")``),
checked against a dense ``torch.func.hessian`` reference on small float64 models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from mli_theory.connectivity.directions import hessian_directions
from mli_theory.connectivity.surface import loss_surface
from mli_theory.errors import InputError
from mli_theory.inputs.data import Dataset
from mli_theory.path import make_line

F64 = torch.float64


def _problem(kind: str, seed: int = 0):
    """(model, θ0, θT, data): ``linear`` is least squares (an exactly quadratic loss), ``tanh`` an MLP.
    Both have more than 128 parameters, so the eigenpairs come from Lanczos, not the dense solver.
    (The least-squares Hessian (2/nk)·(X̃ᵀX̃ ⊗ I_k) repeats each eigenvalue k = 8 times: λ1 = λ2, a
    degenerate top eigenspace that block Lanczos resolves.)"""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if kind == "linear":
        model = nn.Sequential(nn.Linear(20, 8)).double()  # 168 parameters
        d, k = 20, 8
    else:
        model = nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 3)).double()  # 243 parameters
        d, k = 6, 3
    init = {n: v.detach().clone() for n, v in model.state_dict().items()}
    final = {n: v + 0.3 * torch.randn(v.shape, generator=g, dtype=F64) for n, v in init.items()}
    x = torch.randn(48, d, generator=g, dtype=F64)
    y = torch.randn(48, k, generator=g, dtype=F64)
    return model, init, final, Dataset(x, y, "mse", kind)


def _flat_loss(model, point, data):
    names = [n for n, _ in model.named_parameters()]
    shapes = [point[n].shape for n in names]
    sizes = [point[n].numel() for n in names]

    def f(w):
        parts = torch.split(w, sizes)
        params = {n: p.reshape(s) for n, p, s in zip(names, parts, shapes)}
        return nn.functional.mse_loss(functional_call(model, params, (data.x,)), data.y)

    return f, names, torch.cat([point[n].reshape(-1) for n in names])


def _reference(model, point, data):
    """Dense Hessian by torch.func.hessian, its ascending eigenvalues, and the flat layout."""
    f, names, w = _flat_loss(model, point, data)
    h = torch.func.hessian(f)(w)
    return h, torch.linalg.eigvalsh(h), names, f, w


def _directions(model, init, final, data, count, *, center="final", seed=0):
    line = make_line(model, init, final, dtype=F64)
    c = line.end if center == "final" else line.start
    buffers = {k: v for k, v in c.items() if k not in line.param_names}
    return hessian_directions(line.shell, c, list(line.param_names), buffers, data, count, seed=seed)


@pytest.mark.parametrize("kind", ["linear", "tanh"])
def test_directions_are_eigenvectors_of_the_dense_hessian(kind):
    model, init, final, data = _problem(kind)
    h, ref, names, _, _ = _reference(model, final, data)
    dirs, pairs = _directions(model, init, final, data, 2)
    assert pairs.method in ("block_lanczos", "arpack") and pairs.converged
    lam_ref = ref.flip(0)[:2]
    for i, d in enumerate(dirs):
        v = torch.cat([d[n].reshape(-1) for n in names])
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-12)
        lam = pairs.eigenvalues[i]
        assert lam == pytest.approx(float(lam_ref[i]), rel=1e-9)
        assert float((h @ v - lam * v).norm()) <= 1e-5 * abs(lam)  # ‖Hv − λv‖ against the dense reference
        assert float(v[int(v.abs().argmax())]) > 0  # the sign convention
    v1, v2 = (torch.cat([d[n].reshape(-1) for n in names]) for d in dirs)
    assert abs(float(v1 @ v2)) <= 1e-6


@pytest.mark.parametrize("kind", ["linear", "tanh"])
def test_second_difference_of_the_1d_surface_is_lambda1(kind):
    model, init, final, data = _problem(kind)
    _, ref, *_ = _reference(model, final, data)
    lam1 = float(ref[-1])
    # the quadratic loss has L(c + s·v) = L(c) + s·g·v + ½λs² exactly; the MLP only for small s
    span = 0.5 if kind == "linear" else 1e-3
    s = loss_surface(model, init, final, data, dims=1, steps=3, span=span, dtype=F64, directions="hessian")
    assert s.mode == "hessian" and s.dims == 1 and s.center == "final" and s.seed == 0
    assert len(s.eigenvalues) == 1 and s.eigenvalues[0] == pytest.approx(lam1, rel=1e-9)
    fm, f0, fp = s.losses
    second = (fp - 2 * f0 + fm) / span**2
    assert second == pytest.approx(lam1, rel=1e-7 if kind == "linear" else 1e-4)
    assert "Hessian eigenvector" in s.directions and "not filter-normalised" in s.directions
    assert s.info["eigen_converged"] and s.info["eigen_residuals"][0] <= 1e-6 * lam1 and s.points == {"final": (0.0,)}
    assert not s.warnings


def test_the_surface_is_the_loss_along_the_directions_in_2d():
    model, init, final, data = _problem("tanh")
    _, ref, names, f, w = _reference(model, final, data)
    dirs, pairs = _directions(model, init, final, data, 2)
    h = 1e-3  # small steps: second differences along each axis are λ1 and λ2, the mixed one v1ᵀHv2 ≈ 0
    s = loss_surface(model, init, final, data, dims=2, steps=3, span=h, dtype=F64, directions="hessian")
    assert s.eigenvalues == pytest.approx(tuple(float(v) for v in ref.flip(0)[:2]), rel=1e-9)
    assert s.eigenvalues == pytest.approx(pairs.eigenvalues, rel=1e-12)
    v1, v2 = (torch.cat([d[n].reshape(-1) for n in names]) for d in dirs)
    for r, yv in enumerate(s.y):
        for c_, xv in enumerate(s.x):
            assert s.losses[r][c_] == pytest.approx(float(f(w + xv * v1 + yv * v2)), rel=1e-12, abs=1e-14)
    assert s.info["direction_norms"] == pytest.approx([1.0, 1.0], abs=1e-12) and abs(s.info["direction_cosine"]) <= 1e-6
    z = s.losses
    assert (z[1][2] - 2 * z[1][1] + z[1][0]) / h**2 == pytest.approx(s.eigenvalues[0], rel=1e-4)
    assert (z[2][1] - 2 * z[1][1] + z[0][1]) / h**2 == pytest.approx(s.eigenvalues[1], rel=1e-4)
    assert abs((z[2][2] - z[2][0] - z[0][2] + z[0][0]) / (4 * h * h)) <= 1e-4 * s.eigenvalues[0]
    d = json.loads(json.dumps(s.to_dict()))
    assert d["mode"] == "hessian" and d["eigenvalues"] == list(s.eigenvalues) and "top-2 Hessian eigenvectors" in d["directions"]


def test_centre_init_and_seed_independence():
    model, init, final, data = _problem("tanh", seed=3)
    _, ref, *_ = _reference(model, init, data)
    a = loss_surface(model, init, final, data, dims=1, steps=5, span=0.2, dtype=F64, directions="hessian", center="init")
    b = loss_surface(model, init, final, data, dims=1, steps=5, span=0.2, dtype=F64, directions="hessian", center="init", seed=7)
    assert a.center == "init" and a.points == {"init": (0.0,)}
    assert a.eigenvalues[0] == pytest.approx(float(ref[-1]), rel=1e-9)
    # the fixed sign makes the slice the same whatever the Lanczos start (a simple top eigenvalue)
    assert b.seed == 7 and b.losses == pytest.approx(a.losses, rel=1e-6)


def test_random_mode_is_unchanged():
    model, init, final, data = _problem("tanh")
    a = loss_surface(model, init, final, data, dims=2, steps=3, dtype=F64)
    b = loss_surface(model, init, final, data, dims=2, steps=3, dtype=F64, directions="random")
    assert a.losses == b.losses and a.mode == b.mode == "random" and a.eigenvalues is None
    assert "eigenvalues" not in a.to_dict() and "filter-normalised Gaussian" in a.directions


def test_batchnorm_and_cross_entropy_models_work():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: (v + 0.2 * torch.randn_like(v)) if v.is_floating_point() else v.clone() for k, v in init.items()}
    final["1.running_var"] = final["1.running_var"].abs() + 0.5
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=g, dtype=F64)
    data = Dataset(x, torch.randint(0, 3, (16,), generator=g), "ce", "bn")
    for bn in ("recompute", "interpolate", "frozen"):
        s = loss_surface(model, init, final, data, dims=2, steps=3, span=0.1, dtype=F64, bn=bn, directions="hessian")
        assert s.mode == "hessian" and len(s.eigenvalues) == 2 and s.eigenvalues[0] >= s.eigenvalues[1]
        assert all(v is not None and math.isfinite(v) for row in s.losses for v in row)


def test_bad_options_are_input_errors():
    model, init, final, data = _problem("linear")
    third = {k: v + 1 for k, v in final.items()}
    for kw, word in [
        (dict(directions="top"), "directions"),
        (dict(directions=None), "directions"),
        (dict(directions="hessian", plane=True, third=third), "plane"),
        (dict(directions="hessian", plane=True, dims=1), "plane"),
        (dict(directions="hessian", include_bn_and_bias=True), "include_bn_and_bias"),
        (dict(directions="hessian", hessian_tol=0.0), "hessian_tol"),
        (dict(directions="hessian", hessian_tol=1.5), "hessian_tol"),
        (dict(directions="hessian", hessian_tol=float("nan")), "hessian_tol"),
        (dict(directions="hessian", hessian_tol=True), "hessian_tol"),
        (dict(directions="hessian", center="middle"), "center"),
    ]:
        with pytest.raises(InputError, match=word):
            loss_surface(model, init, final, data, dtype=F64, **kw)
    tiny = nn.Sequential(nn.Linear(1, 1, bias=False)).double()
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    one = Dataset(torch.ones(3, 1, dtype=F64), torch.zeros(3, 1, dtype=F64), "mse", "one")
    with pytest.raises(InputError, match="at least 2 trainable parameters"):
        loss_surface(tiny, sd, {k: v + 1 for k, v in sd.items()}, one, dims=2, dtype=F64, directions="hessian")
    s = loss_surface(tiny, sd, {k: v + 1 for k, v in sd.items()}, one, dims=1, steps=3, dtype=F64, directions="hessian")
    assert s.eigenvalues == pytest.approx((2.0,))  # L(w) = mean (w·1 − 0)² has L″ = 2
