"""The empirical NTK, kernel distance and velocity, PL* λmin, checkpoints and the ``kernel`` command.

Every fast routine is compared with a slow, obviously correct reference: the dense Jacobian from
``torch.func.jacrev`` of all stacked outputs, dense Frobenius sums, ``eigvalsh``, closed forms.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, jacrev

from mli_theory.errors import InputError
from mli_theory.kernels import (
    NTKModel,
    empirical_ntk,
    estimate_cost,
    kernel_along_path,
    kernel_between_checkpoints,
    kernel_distance,
    kernel_sequence,
    lambda_min_dense,
    lambda_min_operator,
    list_checkpoints,
    ntk_matvec,
    path_velocity,
    step_velocity,
)
from mli_theory.path import BNPolicy, interpolate, make_line

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: extra threads only add synchronisation, which shared CPUs make costly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dense_reference(model: nn.Module, x: torch.Tensor, state=None) -> torch.Tensor:
    """K = J Jᵀ from the Jacobian of all stacked outputs (rows a·k + o), the slow obvious way."""
    m = copy.deepcopy(model).eval()
    st_ = dict(m.state_dict() if state is None else state)
    names = [n for n, _ in m.named_parameters()]
    params = {n: st_[n] for n in names}
    rest = {k: v for k, v in st_.items() if k not in params}

    def f(p):
        return functional_call(m, {**p, **rest}, (x,)).reshape(-1)

    jac = jacrev(f)(params)
    j = torch.cat([jac[n].reshape(jac[n].shape[0], -1) for n in names], dim=1)
    return j @ j.T


def logit_trace_of(k_full: torch.Tensor, n: int, k: int) -> torch.Tensor:
    return k_full.reshape(n, k, n, k).diagonal(dim1=1, dim2=3).sum(-1)


def mlp(seed: int = 0, d: int = 3, h: int = 6, k: int = 2, act=nn.Tanh) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), act(), nn.Linear(h, k)).to(F64)


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.head = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def perturbed(state, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: (v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) if v.is_floating_point() else v.clone())
            for k, v in state.items()}


# ----------------------------------------------------------------------------- the kernel itself


@pytest.mark.parametrize("recipe", ["jacobian", "ntk_vp"])
def test_linear_model_closed_form(recipe):
    # f(x) = W x + b: ∂f_o/∂W_{o'j} = δ_{oo'} x_j and ∂f_o/∂b_{o'} = δ_{oo'}, so
    # K[(a,o),(c,o')] = δ_{oo'} (x_a·x_c + 1), i.e. K = (X Xᵀ + 1) ⊗ I_k; its logit trace is k (X Xᵀ + 1).
    torch.manual_seed(0)
    n, d, k = 5, 4, 3
    lin = nn.Linear(d, k).to(F64)
    x = torch.randn(n, d, dtype=F64)
    base = x @ x.T + 1.0
    expected = torch.kron(base, torch.eye(k, dtype=F64))
    got = empirical_ntk(lin, x, recipe=recipe)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
    got_t = empirical_ntk(lin, x, recipe=recipe, kernel="logit_trace")
    assert torch.allclose(got_t, k * base, atol=1e-12, rtol=0)
    no_bias = nn.Linear(d, k, bias=False).to(F64)
    assert torch.allclose(empirical_ntk(no_bias, x, recipe=recipe), torch.kron(x @ x.T, torch.eye(k, dtype=F64)), atol=1e-12)


def test_linear_model_kernel_is_constant_along_the_path():
    torch.manual_seed(0)
    lin = nn.Linear(4, 2).to(F64)
    line = make_line(lin, lin.state_dict(), perturbed(lin.state_dict(), 2.0), dtype=F64)
    x = torch.randn(6, 4, dtype=F64)
    res = kernel_along_path(line, x, [0.0, 0.5, 1.0])
    assert max(abs(v) for v in res.kernel_distance_from_init) < 1e-12
    assert max(abs(v) for v in res.kernel_velocity) < 1e-11
    lam = float(torch.linalg.eigvalsh(torch.kron(x @ x.T + 1, torch.eye(2, dtype=F64)))[0])
    assert all(abs(v - lam) < 1e-10 for v in res.pl_lambda_min)


@pytest.mark.parametrize("recipe", ["jacobian", "ntk_vp"])
@pytest.mark.parametrize("memory", [1 << 30, 3000])  # one block, or one example per block
def test_recipes_match_the_dense_jacobian(recipe, memory):
    x = torch.randn(7, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    m = mlp()
    ref = dense_reference(m, x)
    got = empirical_ntk(m, x, recipe=recipe, memory_bytes=memory)
    assert (got - ref).abs().max() < 1e-10
    got_t = empirical_ntk(m, x, recipe=recipe, kernel="logit_trace", memory_bytes=memory)
    assert (got_t - logit_trace_of(ref, 7, 2)).abs().max() < 1e-10


def test_recipes_agree_on_a_cnn_and_with_the_matrix_free_product():
    torch.manual_seed(0)
    cnn = TinyCNN().to(F64)
    x = torch.randn(5, 1, 4, 4, dtype=F64)
    ref = dense_reference(cnn, x)
    a = empirical_ntk(cnn, x, recipe="jacobian")
    b = empirical_ntk(cnn, x, recipe="ntk_vp", memory_bytes=5000)
    assert (a - ref).abs().max() < 1e-10 and (b - ref).abs().max() < 1e-10
    for kernel, dense in (("full", ref), ("logit_trace", logit_trace_of(ref, 5, 3))):
        v = torch.randn(dense.shape[0], dtype=F64)
        mv = ntk_matvec(cnn, x, kernel=kernel, memory_bytes=5000)
        assert (mv(v) - dense @ v).abs().max() < 1e-10


def test_the_callers_model_and_tensors_are_untouched():
    m = mlp()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    x = torch.randn(4, 3, dtype=F64)
    x0 = x.clone()
    state = perturbed(m.state_dict())
    state0 = {k: v.clone() for k, v in state.items()}
    empirical_ntk(m, x, state=state)
    line = make_line(m, m.state_dict(), state, dtype=F64)
    kernel_along_path(line, x, [0.0, 1.0])
    assert m.training and torch.equal(x, x0)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(torch.equal(state0[k], v) for k, v in state.items())


def test_cost_estimate_follows_its_formula():
    # full kernel: contraction when 2kP < 3F; logit trace: when 2P < 3F (k·P, F as in the docstring)
    assert estimate_cost(100, 10, 1000, 2000.0).choice == "ntk_vp"  # dense net, many outputs
    assert estimate_cost(100, 1, 1000, 2000.0).choice == "jacobian"  # one output
    assert estimate_cost(100, 10, 1000, 1e6).choice == "jacobian"  # convolution: F ≫ P
    assert estimate_cost(100, 10, 1000, 2000.0, kernel="logit_trace").choice == "jacobian"
    c = estimate_cost(10, 2, 50, 100.0)
    assert c.jacobian_flops == pytest.approx(10 * 5 * 100 + 2 * 20**2 * 50)
    assert c.ntk_vp_flops == pytest.approx(10 * 5 * 100 + 3 * 100 * 2 * 100)


# ----------------------------------------------------------------------------- distance and products


def _sym(seed: int, n: int) -> torch.Tensor:
    a = torch.randn(n, n, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return a @ a.T


@given(st.integers(0, 10_000), st.floats(1e-3, 1e3))
def test_distance_is_zero_for_positive_multiples_and_bounded(seed, c):
    k1, k2 = _sym(seed, 5), _sym(seed + 1, 5)
    assert kernel_distance(k1, k1) == pytest.approx(0.0, abs=1e-12)
    assert kernel_distance(k1, c * k1) == pytest.approx(0.0, abs=1e-12)
    s = kernel_distance(k1, k2)
    assert 0.0 <= s <= 1.0  # positive semi-definite kernels: tr(K1 K2) ≥ 0
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(4, 4, dtype=F64, generator=g), torch.randn(4, 4, dtype=F64, generator=g)
    assert 0.0 <= kernel_distance(a, b) <= 2.0
    assert kernel_distance(a, -a) == pytest.approx(2.0)
    cos = float((k1 * k2).sum() / (k1.norm() * k2.norm()))
    assert s == pytest.approx(1.0 - cos, abs=1e-12)


def test_blocked_products_equal_dense_ones():
    m = mlp(h=5, k=3)
    x = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    states = [perturbed(m.state_dict(), 0.5, seed=s) for s in range(4)]
    for kernel in ("full", "logit_trace"):
        dense = [dense_reference(m, x, s) for s in states]
        if kernel == "logit_trace":
            dense = [logit_trace_of(kd, 6, 3) for kd in dense]
        for recipe in ("jacobian", "ntk_vp"):
            for streamed, memory in ((False, 1 << 30), (True, 1 << 30), (True, 4000)):
                stats = kernel_sequence(NTKModel.from_module(m), lambda i: states[i], 4, x, kernel=kernel,
                                        recipe=recipe, memory_bytes=memory, force_streamed=streamed, lambda_min=False)
                assert stats.mode == ("streamed" if streamed else "dense")
                if memory == 4000:
                    assert stats.plan.row_block < 6  # really blocked
                for i in range(4):
                    assert stats.sq_norms[i] == pytest.approx(float((dense[i] ** 2).sum()), rel=1e-12)
                    assert stats.inner_first[i] == pytest.approx(float((dense[0] * dense[i]).sum()), rel=1e-12)
                    if i:
                        assert stats.inner_prev[i - 1] == pytest.approx(float((dense[i - 1] * dense[i]).sum()), rel=1e-12)


def test_path_velocity_is_exact_for_quadratics_on_uneven_grids():
    a = [0.0, 0.1, 0.35, 0.4, 0.8, 1.0]
    s = [3 * t * t - t + 0.5 for t in a]
    assert path_velocity(a, s) == pytest.approx([6 * t - 1 for t in a], abs=1e-12)
    assert path_velocity([0.0, 1.0], [0.2, 0.7]) == pytest.approx((0.5, 0.5), abs=1e-15)
    assert step_velocity([0, 10, 30], [0.1, 0.4]) == pytest.approx((0.01, 0.02))


class ScaledProjection(nn.Module):
    """f(x) = s·⟨w, x⟩: K = (Xw)(Xw)ᵀ + s² X Xᵀ (∂f/∂s = ⟨w, x⟩, ∂f/∂w = s·x)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(1.0))
        self.w = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return (self.s * (x @ self.w)).unsqueeze(1)


def test_distance_and_velocity_along_the_path_match_a_closed_form():
    torch.manual_seed(0)
    d, n = 3, 5
    model = ScaledProjection(d).to(F64)
    w = torch.randn(d, dtype=F64)
    s0, s1 = 0.5, 2.0
    init = {"s": torch.tensor(s0, dtype=F64), "w": w}
    final = {"s": torch.tensor(s1, dtype=F64), "w": w.clone()}  # only s moves: K(α) = A + s(α)² B
    x = torch.randn(n, d, dtype=F64)
    u = x @ w
    a_, b_ = torch.outer(u, u), x @ x.T
    aa, ab, bb = float((a_ * a_).sum()), float((a_ * b_).sum()), float((b_ * b_).sum())

    def closed(alpha: torch.Tensor) -> torch.Tensor:
        s = (1 - alpha) * s0 + alpha * s1
        inner = aa + (s0**2 + s**2) * ab + s0**2 * s**2 * bb
        n0 = math.sqrt(aa + 2 * s0**2 * ab + s0**4 * bb)
        na = torch.sqrt(aa + 2 * s**2 * ab + s**4 * bb)
        return 1 - inner / (n0 * na)

    grid = [i / 40 for i in range(41)]
    res = kernel_along_path(make_line(model, init, final, dtype=F64), x, grid)
    exact = [float(closed(torch.tensor(a, dtype=F64))) for a in grid]
    assert res.kernel_distance_from_init == pytest.approx(exact, abs=1e-10)
    deriv = []
    for a in grid:
        t = torch.tensor(a, dtype=F64, requires_grad=True)
        (g,) = torch.autograd.grad(closed(t), t)
        deriv.append(float(g))
    scale = max(abs(v) for v in deriv)
    err = max(abs(p - q) for p, q in zip(res.kernel_velocity, deriv))
    assert err < 5e-3 * scale  # second-order differences, h = 1/40
    coarse = kernel_along_path(make_line(model, init, final, dtype=F64), x, grid[::4])
    err_coarse = max(abs(p - q) for p, q in zip(coarse.kernel_velocity, deriv[::4]))
    assert err < err_coarse / 8  # error falls like h² (16× for 4× finer; 8× leaves room)


# ----------------------------------------------------------------------------- λmin


def test_lambda_min_dense_and_operator_agree_with_eigvalsh():
    k = _sym(5, 6) + 0.1 * torch.eye(6, dtype=F64)
    ref = float(np.linalg.eigvalsh(k.numpy())[0])
    assert lambda_min_dense(k).value == pytest.approx(ref, rel=1e-12)
    op = lambda_min_operator(lambda v: k @ v, 6)
    assert op.value == pytest.approx(ref, rel=1e-9) and op.residual < 1e-8 and op.method == "eigsh"


def test_lambda_min_of_a_path_kernel_on_a_medium_case_matrix_free():
    # n·k = 60 rows ≤ P = 222 parameters: a non-singular kernel; eigsh on NTK-vector products
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(4, 30), nn.Tanh(), nn.Linear(30, 3)).to(F64)
    x = torch.randn(20, 4, dtype=F64)
    final = perturbed(m.state_dict(), 0.3)
    line = make_line(m, m.state_dict(), final, dtype=F64)
    dense = kernel_along_path(line, x, [0.0, 0.5, 1.0])
    assert set(dense.pl_method) == {"eigvalsh"}
    ref = [float(torch.linalg.eigvalsh(dense_reference(m, x, interpolate(line.start, line.end, a)))[0]) for a in (0.0, 0.5, 1.0)]
    assert dense.pl_lambda_min == pytest.approx(ref, rel=1e-9)
    states = [interpolate(line.start, line.end, a) for a in (0.0, 0.5, 1.0)]
    free = kernel_sequence(NTKModel.from_module(m), lambda i: states[i], 3, x, force_streamed=True, dense_eig_max=10)
    assert free.mode == "streamed" and {lm.method for lm in free.lambda_min} == {"eigsh"}
    assert all(lm.converged and lm.residual < 1e-6 for lm in free.lambda_min)
    assert [lm.value for lm in free.lambda_min] == pytest.approx(ref, rel=1e-7)
    on_dense = kernel_along_path(line, x, [0.0, 0.5, 1.0], dense_eig_max=10)  # ARPACK on the assembled kernel
    assert set(on_dense.pl_method) == {"eigsh"} and on_dense.pl_lambda_min == pytest.approx(ref, rel=1e-7)


def test_more_rows_than_parameters_gives_lambda_min_zero_by_rank():
    m = mlp(h=2, k=2)  # P = 3·2+2 + 2·2+2 = 14 < n·k = 20
    x = torch.randn(10, 3, dtype=F64)
    line = make_line(m, m.state_dict(), perturbed(m.state_dict()), dtype=F64)
    res = kernel_along_path(line, x, [0.0, 1.0])
    assert res.pl_lambda_min == (0.0, 0.0) and res.pl_method == ("rank", "rank")
    assert any("rank" in w for w in res.warnings)
    assert abs(float(torch.linalg.eigvalsh(dense_reference(m, x))[0])) < 1e-10  # the fact the shortcut uses


# ----------------------------------------------------------------------------- BatchNorm


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).to(F64)


def test_batchnorm_policies_against_a_by_hand_reference():
    m = _bn_model()
    init = perturbed(m.state_dict(), 0.2, seed=4)
    init["1.running_var"] = init["1.running_var"].abs() + 0.5
    final = perturbed(m.state_dict(), 0.4, seed=5)
    final["1.running_var"] = final["1.running_var"].abs() + 0.5
    x = torch.randn(12, 3, dtype=F64)
    line = make_line(m, init, final, dtype=F64)
    alpha = 0.5
    results = {}
    for policy in BNPolicy:
        res = kernel_along_path(line, x[:5], [0.0, alpha], bn=policy, bn_x=x)
        results[policy] = res
        assert res.bn == policy.value and all(math.isfinite(v) for v in res.kernel_distance_from_init)
        # the reference: a plain copy of the model with θ(α) loaded and the statistics set by hand
        ref_model = copy.deepcopy(m)
        state = interpolate(init, final, alpha, frozen=frozenset(k for k in init if "running" in k or "num_batches" in k)
                            if policy == BNPolicy.FROZEN else frozenset())
        ref_model.load_state_dict(state)
        if policy == BNPolicy.RECOMPUTE:
            bn = ref_model[1]
            bn.reset_running_stats()
            bn.momentum = None
            ref_model.train()
            with torch.no_grad():
                ref_model(x)
        ref_model.eval()
        k_ref = dense_reference(ref_model, x[:5])
        k0_model = copy.deepcopy(ref_model)
        state0 = dict(init)
        if policy == BNPolicy.FROZEN:
            state0 = {k: (final[k] if "running" in k or "num_batches" in k else v) for k, v in init.items()}
        k0_model.load_state_dict(state0)
        if policy == BNPolicy.RECOMPUTE:
            k0_model[1].reset_running_stats()
            k0_model[1].momentum = None
            k0_model.train()
            with torch.no_grad():
                k0_model(x)
        k0_model.eval()
        k0 = dense_reference(k0_model, x[:5])
        assert res.kernel_distance_from_init[1] == pytest.approx(kernel_distance(k0, k_ref), abs=1e-10)
        assert res.pl_lambda_min[1] == pytest.approx(float(torch.linalg.eigvalsh(k_ref)[0]), rel=1e-8, abs=1e-12)
    dists = {p: r.kernel_distance_from_init[1] for p, r in results.items()}
    assert len({round(v, 12) for v in dists.values()}) == 3  # the policies really differ here


# ----------------------------------------------------------------------------- checkpoints


def test_list_checkpoints_sorts_by_step_and_refuses_empty_folders(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for s in (120, 3, 40):
        torch.save({"w": torch.zeros(1)}, tmp_path / "checkpoints" / f"step_{s:08d}.pt")
    (tmp_path / "checkpoints" / "notes.txt").write_text("x")
    files = list_checkpoints(str(tmp_path))
    assert [c.step for c in files] == [3, 40, 120]
    assert files[0].path.endswith("step_00000003.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no checkpoints"):
        list_checkpoints(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="not found"):
        list_checkpoints(str(tmp_path / "nope"))


def test_kernel_between_checkpoints_matches_dense_distances():
    m = mlp()
    x = torch.randn(6, 3, dtype=F64)
    states = [perturbed(m.state_dict(), 0.2 * i, seed=i) for i in range(4)]
    steps = [0, 5, 20, 50]
    res = kernel_between_checkpoints(m, states, x, steps=steps, dtype=F64)
    dense = [dense_reference(m, x, s) for s in states]
    assert res.distance_from_first == pytest.approx([kernel_distance(dense[0], k) for k in dense], abs=1e-12)
    cons = [kernel_distance(dense[i - 1], dense[i]) for i in range(1, 4)]
    assert res.consecutive_distance == pytest.approx(cons, abs=1e-12)
    assert res.velocity == pytest.approx([c / (steps[i + 1] - steps[i]) for i, c in enumerate(cons)], abs=1e-12)
    with pytest.raises(InputError, match="at least 2"):
        kernel_between_checkpoints(m, states[:1], x)
    with pytest.raises(InputError, match="increasing"):
        kernel_between_checkpoints(m, states, x, steps=[0, 5, 5, 9])
    with pytest.raises(InputError, match="step 20 checkpoint does not match"):
        bad = [*states[:2], {"0.weight": states[2]["0.weight"]}, states[3]]
        kernel_between_checkpoints(m, bad, x, steps=steps)


def test_library_options_are_checked():
    m = mlp()
    line = make_line(m, m.state_dict(), m.state_dict(), dtype=F64)
    x = torch.randn(3, 3, dtype=F64)
    for kwargs, needle in (({"kernel": "foo"}, "kernel="), ({"recipe": "bar"}, "recipe="), ({"bn": "x"}, "bn=")):
        with pytest.raises(InputError, match=needle):
            kernel_along_path(line, x, [0.0, 1.0], **kwargs)
    with pytest.raises(InputError, match="at least 2"):
        kernel_along_path(line, x, [0.0])


# ----------------------------------------------------------------------------- the kernel command


KEYS = {"alphas", "kernel_distance_from_init", "kernel_velocity", "pl_lambda_min", "kernel", "n_examples", "warnings"}


@pytest.fixture(scope="module")
def kfiles(tmp_path_factory):
    d = tmp_path_factory.mktemp("kernel_cli")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))  # P = 114 > n·k = 60
    torch.save(m.state_dict(), d / "init.pt")
    torch.save(perturbed(m.state_dict(), 0.3), d / "final.pt")
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=rng.normal(size=(30, 4)), y=rng.normal(size=(30, 2)))
    np.savez(d / "wide.npz", x=rng.normal(size=(30, 5)), y=rng.normal(size=(30, 2)))
    (d / "run" / "checkpoints").mkdir(parents=True)
    for i, step in enumerate((0, 10, 25)):
        torch.save(perturbed(m.state_dict(), 0.1 * i, seed=10 + i), d / "run" / "checkpoints" / f"step_{step:08d}.pt")
    bn = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    torch.save(bn.state_dict(), d / "bn_init.pt")
    bn_final = perturbed(bn.state_dict(), 0.3)
    bn_final["1.running_var"] = bn_final["1.running_var"].abs() + 0.1
    torch.save(bn_final, d / "bn_final.pt")
    return d


def kargs(d, **over):
    args = {"--arch": "mlp:4-16-2", "--init": str(d / "init.pt"), "--final": str(d / "final.pt"), "--data": str(d / "data.npz")}
    args.update(over)
    out = ["kernel"]
    for k, v in args.items():
        if v is not None:
            out += [k, v]
    return out


def test_kernel_command_json_contract(kfiles, tmp_path):
    from test_cli import cli

    p = cli(*kargs(kfiles), "--json", "--alphas", "4", "--plot", str(tmp_path / "k.png"))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert KEYS <= set(out)
    assert out["kernel"] == "full" and out["n_examples"] == 30 and len(out["alphas"]) == 4
    assert all(len(out[key]) == 4 for key in ("kernel_distance_from_init", "kernel_velocity", "pl_lambda_min"))
    assert out["kernel_distance_from_init"][0] == 0.0 and not out["warnings"]
    assert (tmp_path / "k.png").stat().st_size > 0
    q = cli(*kargs(kfiles), "--json", "--alphas", "3", "--kernel", "logit_trace", "--examples", "7", "--seed", "3")
    out = json.loads(q.stdout)
    assert out["kernel"] == "logit_trace" and out["n_examples"] == 7
    assert any("subset of 7 of the 30" in w for w in out["warnings"])
    text = cli(*kargs(kfiles), "--alphas", "3")
    assert text.returncode == 0 and "lambda_min" in text.stdout


def test_kernel_command_with_checkpoints_and_batchnorm(kfiles):
    from test_cli import cli

    p = cli(*kargs(kfiles), "--json", "--alphas", "2", "--checkpoints", str(kfiles / "run"))
    assert p.returncode == 0, p.stderr
    ck = json.loads(p.stdout)["checkpoints"]
    assert ck["steps"] == [0, 10, 25] and len(ck["distance_from_first"]) == 3 and len(ck["velocity"]) == 2
    assert ck["distance_from_first"][0] == 0.0
    for policy in ("recompute", "interpolate", "frozen"):
        q = cli(*kargs(kfiles, **{"--arch": "mlp:4-16-2:bn", "--init": str(kfiles / "bn_init.pt"),
                                   "--final": str(kfiles / "bn_final.pt")}), "--json", "--alphas", "3", "--bn", policy)
        assert q.returncode == 0, q.stderr
        assert json.loads(q.stdout)["bn"] == policy


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--alphas", "1"], "--alphas 1"),
        (["--kernel", "foo"], "--kernel foo"),
        (["--recipe", "foo"], "--recipe foo"),
        (["--examples", "0"], "--examples 0"),
        (["--bn", "magic"], "--bn magic"),
        (["--checkpoints", "/no/such/run"], "/no/such/run"),
        (["--init", "/no/such.pt"], "/no/such.pt"),
        (["--data", "/no/such.npz"], "/no/such.npz"),
        (["--plot", "/no/such/folder/k.png"], "--plot"),
    ],
)
def test_kernel_command_bad_input_exits_2_with_one_line(kfiles, extra, needle):
    from test_cli import cli

    p = cli(*kargs(kfiles), *extra)
    assert p.returncode == 2, (extra, p.stdout, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and needle in p.stderr, p.stderr
    assert p.stdout == ""


def test_kernel_command_shape_mismatch_and_too_few_checkpoints(kfiles, tmp_path):
    from test_cli import cli

    p = cli(*kargs(kfiles, **{"--data": str(kfiles / "wide.npz")}))
    assert p.returncode == 2 and "does not fit the model" in p.stderr
    (tmp_path / "checkpoints").mkdir()
    torch.save(torch.load(kfiles / "init.pt"), tmp_path / "checkpoints" / "step_00000001.pt")
    q = cli(*kargs(kfiles), "--checkpoints", str(tmp_path))
    assert q.returncode == 2 and "at least 2" in q.stderr
    torch.save({"0.weight": torch.zeros(16, 4)}, tmp_path / "checkpoints" / "step_00000002.pt")
    r = cli(*kargs(kfiles), "--checkpoints", str(tmp_path))
    assert r.returncode == 2 and "step_00000002.pt" in r.stderr and "missing keys" in r.stderr, r.stderr


def test_failed_kernel_plot_is_a_warning(kfiles, tmp_path, monkeypatch):
    from test_cli import cli

    import mli_theory.kernels as kernels

    def boom(*a, **k):
        raise RuntimeError("no backend")

    monkeypatch.setattr(kernels, "plot_kernel_path", boom)
    p = cli(*kargs(kfiles), "--json", "--alphas", "2", "--plot", str(tmp_path / "k.png"))
    assert p.returncode == 0, p.stderr
    assert any("plot could not be written" in w for w in json.loads(p.stdout)["warnings"])
