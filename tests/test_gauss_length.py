"""Gauss length by adaptive quadrature, against dense, piecewise-exact and closed-form references.

References:

* smooth (tanh) paths: the trapezoid rule of :func:`turning_rate` on a dense grid of 20 001 α, the
  jets of the dense grid from a batched forward pass that is checked against :func:`path_jet`;
* ReLU paths: the zero crossings of every pre-activation are located (bisection), the rate is
  integrated between them by adaptive Gauss–Legendre quadrature, and the angle of each kink
  (between z′ just before and just after) is added; a dense grid that takes the larger of the
  trapezoid and the chord angle per step is not accurate enough there (with 20 examples the
  stacked path has ~300 kinks, and two of them in one step count less than each alone);
* planar curves and reversals: closed forms;
* the default (angle sums) on the reference code's paths (the tanh FCNet 5-16-16-2 with 20
  examples, its π arc) and on a deep linear network: the angle sum on 20 001 α with z′ from
  ``torch.func.jvp`` of a plain ``functional_call`` forward pass (no mli_theory code), to 1e-5.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from torch import nn

from mli_theory.geometry import gauss_length, path_jet, turning_rate
from mli_theory.inputs import Dataset, build_model
from mli_theory.path import make_line

F64 = torch.float64
RTOL = 1e-3


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """The tensors here are tiny: with more than one intra-op thread each elementwise op pays an
    OpenMP hand-off, which on a busy machine costs milliseconds (the tanh paths then take minutes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# ----------------------------------------------------------------------------- MLP paths


@functools.lru_cache(maxsize=None)
def _mlp(act: str, seed: int, n: int = 20):
    """mlp:5-16-16-2 with θT = θ0 + 0.5·noise, n Gaussian inputs (float64)."""
    torch.manual_seed(seed)
    model = build_model(f"mlp:5-16-16-2:{act}").double()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.5 * torch.randn_like(v) for k, v in init.items()}
    x = torch.randn(n, 5, dtype=F64)
    data = Dataset(x, torch.randn(n, 2, dtype=F64), "mse", "t")
    return make_line(model, init, final, dtype=F64), data


def _jets(line, x: torch.Tensor, alphas: torch.Tensor, preacts: bool = False):
    """z′, z″ (K, n, k) of a Sequential of Linear/Tanh/ReLU at many α in one batched pass (or the
    pre-activations of the ReLUs, (K, n, units))."""
    a = alphas.reshape(-1, 1, 1)
    h = x.expand(len(alphas), *x.shape)
    h1, h2 = torch.zeros_like(h), torch.zeros_like(h)
    pre = []
    for name, m in line.shell.named_children():
        if isinstance(m, nn.Linear):
            w0, dw = line.start[f"{name}.weight"], line.end[f"{name}.weight"] - line.start[f"{name}.weight"]
            b0, db = line.start[f"{name}.bias"], line.end[f"{name}.bias"] - line.start[f"{name}.bias"]
            w = w0 + a * dw  # (K, out, in)

            def mul(u: torch.Tensor, w: torch.Tensor = w) -> torch.Tensor:
                return torch.einsum("kni,koi->kno", u, w)

            h, h1, h2 = mul(h) + b0 + a * db, h @ dw.T + db + mul(h1), 2 * (h1 @ dw.T) + mul(h2)
        elif isinstance(m, nn.Tanh):
            t = torch.tanh(h)
            d1 = 1 - t * t
            h, h1, h2 = t, d1 * h1, -2 * t * d1 * h1 * h1 + d1 * h2
        elif isinstance(m, nn.ReLU):
            pre.append(h)
            on = (h > 0).to(h.dtype)
            h, h1, h2 = h * on, h1 * on, h2 * on
        else:
            raise TypeError(type(m))
    return torch.cat(pre, -1) if preacts else (h1, h2)


def _check_jets(line, data) -> None:
    a = torch.tensor([0.0, 0.37, 1.0], dtype=F64)
    ref = path_jet(line, data, a)
    dz, d2z = _jets(line, data.x, a)
    assert torch.allclose(dz, ref.dz, rtol=1e-12, atol=1e-12) and torch.allclose(d2z, ref.d2z, rtol=1e-12, atol=1e-12)


def _rates(line, x: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Turning rates (K, n + 1): per example, then of the stacked outputs."""
    dz, d2z = _jets(line, x, alphas)
    K = len(alphas)
    per, _ = turning_rate(dz, d2z)
    st, _ = turning_rate(dz.reshape(K, -1), d2z.reshape(K, -1))
    return torch.cat([per, st[:, None]], 1)


@functools.lru_cache(maxsize=None)
def _dense_trapezoid(act: str, seed: int, points: int = 20001) -> tuple[float, float]:
    """(mean, stacked) by the trapezoid rule of the rate on ``points`` evenly spaced α."""
    line, data = _mlp(act, seed)
    _check_jets(line, data)
    r = _rates(line, data.x, torch.linspace(0, 1, points, dtype=F64))
    g = ((r[1:] + r[:-1]) / 2).sum(0) / (points - 1)
    return float(g[:-1].mean()), float(g[-1])


_GL_X, _GL_W = (torch.tensor(v, dtype=F64) for v in np.polynomial.legendre.leggauss(20))


def _gauss_legendre(line, x, lo, hi):
    nodes = ((lo + hi) / 2)[:, None] + ((hi - lo) / 2)[:, None] * _GL_X
    r = _rates(line, x, nodes.reshape(-1)).reshape(len(lo), len(_GL_X), -1)
    return (r * _GL_W[None, :, None]).sum(1) * ((hi - lo) / 2)[:, None]


def _angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    u, v = u / u.norm(dim=-1, keepdim=True), v / v.norm(dim=-1, keepdim=True)
    return 2 * torch.atan2((v - u).norm(dim=-1), (v + u).norm(dim=-1))


@functools.lru_cache(maxsize=None)
def _piecewise_exact(seed: int) -> tuple[float, float]:
    """(mean, stacked) of a ReLU path: kinks located, smooth pieces integrated to 1e-11, kink
    angles added (per example at its own kinks, for the stacked outputs at all of them)."""
    line, data = _mlp("relu", seed)
    _check_jets(line, data)
    x, n = data.x, data.x.shape[0]
    grid = torch.linspace(0, 1, 20001, dtype=F64)
    u = _jets(line, x, grid, preacts=True)
    cross = (torch.sign(u[1:]) != torch.sign(u[:-1])).nonzero()  # (m, 3): step, example, unit
    lo, hi, ex, unit = grid[cross[:, 0]], grid[cross[:, 0] + 1], cross[:, 1], cross[:, 2]
    sign_lo = torch.sign(u[cross[:, 0], ex, unit])
    rows = torch.arange(len(lo))
    for _ in range(55):
        mid = (lo + hi) / 2
        same = torch.sign(_jets(line, x, mid, preacts=True)[rows, ex, unit]) == sign_lo
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    kinks = (lo + hi) / 2
    # smooth pieces between all kinks: adaptive Gauss–Legendre
    edges = torch.unique(torch.cat([torch.tensor([0.0, 1.0], dtype=F64), kinks]))
    lo, hi = edges[:-1], edges[1:]
    whole, total = _gauss_legendre(line, x, lo, hi), torch.zeros(n + 1, dtype=F64)
    while len(lo):
        mid = (lo + hi) / 2
        left, right = _gauss_legendre(line, x, lo, mid), _gauss_legendre(line, x, mid, hi)
        done = ((whole - left - right).abs().amax(1) <= 1e-11) | (hi - lo < 1e-13)
        total += (left + right)[done].sum(0)
        lo, hi = torch.cat([lo[~done], mid[~done]]), torch.cat([mid[~done], hi[~done]])
        whole = torch.cat([left[~done], right[~done]])
    before, _ = _jets(line, x, kinks - 1e-10)
    after, _ = _jets(line, x, kinks + 1e-10)
    per = total[:n].index_add(0, ex, _angle(before[rows, ex], after[rows, ex]))
    stacked = total[n] + _angle(before.reshape(len(kinks), -1), after.reshape(len(kinks), -1)).sum()
    return float(per.mean()), float(stacked)


def _actual_error(g, mean: float, stacked: float) -> float:
    return max(abs(g.mean - mean), abs(g.stacked - stacked))


@pytest.mark.parametrize("seed", [1, 4])
def test_tanh_path_meets_its_tolerance_against_a_dense_trapezoid(seed):
    # seed 4: the former refinement stopped at 419 α with converged=False, 6e-3 off
    line, data = _mlp("tanh", seed)
    g = gauss_length(line, data, rtol=RTOL)
    mean, stacked = _dense_trapezoid("tanh", seed)
    assert g.converged
    assert g.mean == pytest.approx(mean, rel=RTOL)
    assert g.stacked == pytest.approx(stacked, rel=RTOL)
    assert g.error <= RTOL * max(g.mean, g.stacked)
    assert _actual_error(g, mean, stacked) <= g.error  # the estimate bounds the actual error
    assert g.per_example.mean().item() == pytest.approx(g.mean, rel=1e-12)
    assert not g.singular


def test_tighter_tolerance_gives_a_closer_estimate():
    line, data = _mlp("tanh", 4)
    mean, stacked = _dense_trapezoid("tanh", 4)
    g = gauss_length(line, data, rtol=1e-4)
    assert g.converged and _actual_error(g, mean, stacked) <= g.error <= 1e-4 * max(g.mean, g.stacked)


def test_an_unreachable_tolerance_reports_not_converged_with_a_finite_error():
    line, data = _mlp("tanh", 4)
    mean, stacked = _dense_trapezoid("tanh", 4)
    g = gauss_length(line, data, rtol=1e-9, max_alphas=301)
    assert not g.converged
    assert g.n_alphas <= 301 and len(g.alphas) == g.n_alphas
    assert math.isfinite(g.error) and g.error > 1e-9 * max(g.mean, g.stacked)
    assert _actual_error(g, mean, stacked) <= g.error


@pytest.mark.parametrize("seed", [0, 2])
def test_relu_path_counts_its_kinks_and_converges(seed):
    line, data = _mlp("relu", seed)
    g = gauss_length(line, data, rtol=RTOL)
    mean, stacked = _piecewise_exact(seed)
    assert g.converged
    assert g.mean == pytest.approx(mean, rel=RTOL)
    assert g.stacked == pytest.approx(stacked, rel=RTOL)
    assert _actual_error(g, mean, stacked) <= g.error
    # each estimate bounds its own quantity's error; the reported error is the larger of the two
    assert abs(g.mean - mean) <= g.mean_error and abs(g.stacked - stacked) <= g.stacked_error
    assert g.error == max(g.mean_error, g.stacked_error) and g.mean_converged and g.rtol == RTOL
    # the rate alone misses the kinks: most of the stacked turning is in them
    r = _rates(line, data.x, torch.linspace(0, 1, 4001, dtype=F64))
    assert float(((r[1:, -1] + r[:-1, -1]) / 2).sum()) / 4000 < 0.5 * stacked


@pytest.mark.parametrize("act,rule", [("relu", "kinks"), ("tanh", "kinks"), ("tanh", "angles")])
def test_per_example_only_meets_the_tolerance_of_the_mean_with_fewer_alphas(act, rule):
    # stacked=False (the geometry's blocks of examples): the mean alone drives the refinement; it
    # still meets its tolerance against the references, on no more α than with the stacked path
    seed = 2 if act == "relu" else 4
    line, data = _mlp(act, seed)
    mean, _ = _piecewise_exact(seed) if act == "relu" else _dense_trapezoid(act, seed)
    both = gauss_length(line, data, rtol=RTOL, rule=rule)
    alone = gauss_length(line, data, rtol=RTOL, rule=rule, stacked=False)
    assert alone.stacked is None and both.stacked is not None
    assert alone.converged and alone.error <= RTOL * alone.mean
    assert abs(alone.mean - mean) <= alone.error
    assert alone.n_alphas <= both.n_alphas
    assert alone.per_example.mean().item() == pytest.approx(alone.mean, rel=1e-12)
    if act == "relu":  # the stacked path has ~n times the kinks: it is what the grid was refined for
        assert alone.n_alphas < both.n_alphas


# ----------------------------------------------------------------------------- closed forms


class Ellipse(nn.Module):
    """Outputs (a cos s, b sin s) with s = x·(e^{2t} − 1)/(e² − 1) (or s = x·t when ``even``): as
    t goes 0 → 1 each example sweeps an arc of the ellipse through the parameter angle x."""

    def __init__(self, a: float, b: float, even: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.even = a, b, even
        self.t = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0] * (self.t if self.even else torch.expm1(2 * self.t) / math.expm1(2))
        return torch.stack([self.a * torch.cos(s), self.b * torch.sin(s)], -1)


def _ellipse_turning(a: float, b: float, sweep: float) -> float:
    """Total turning of the tangent of (a cos s, b sin s) for s in [0, sweep]."""
    k = math.floor(sweep / math.pi)
    r = sweep - k * math.pi
    return k * math.pi + math.atan2(a * math.sin(r), b * math.cos(r))


def _scalar_line(module: nn.Module, start: float, end: float, sweeps: list[float]):
    s0 = {k: torch.full_like(v, start, dtype=F64) for k, v in module.state_dict().items()}
    s1 = {k: torch.full_like(v, end, dtype=F64) for k, v in module.state_dict().items()}
    line = make_line(module, s0, s1, dtype=F64)
    x = torch.tensor(sweeps, dtype=F64)[:, None]
    return line, Dataset(x, torch.zeros(len(sweeps), 2, dtype=F64), "mse", "curve")


@pytest.mark.parametrize("sweeps", [[0.4, 1.3, 2.6, 4.0, 7.0], [2.6] * 3], ids=["mixed", "same"])
def test_planar_arcs_of_an_ellipse_turn_by_their_closed_form(sweeps):
    a, b = 2.0, 0.5
    line, data = _scalar_line(Ellipse(a, b), 0.0, 1.0, sweeps)
    g = gauss_length(line, data, rtol=RTOL)
    want = [_ellipse_turning(a, b, s) for s in sweeps]
    assert g.converged and not g.singular
    for got, w in zip(g.per_example.tolist(), want):
        assert got == pytest.approx(w, rel=RTOL)
    mean = sum(want) / len(want)
    assert abs(g.mean - mean) <= g.error
    if len(set(sweeps)) == 1:  # copies of one curve: the stacked path is the same curve, scaled
        assert abs(g.stacked - want[0]) <= g.error


@pytest.mark.parametrize("angle", [0.3, 2.5, 7.0])
def test_a_circle_at_an_even_pace_is_exact(angle):
    # constant rate: the trapezoid rule is exact, and the kink term vanishes on a circle
    line, data = _scalar_line(Ellipse(1.0, 1.0, even=True), 0.0, 1.0, [angle] * 2)
    g = gauss_length(line, data)
    assert g.mean == pytest.approx(angle, rel=1e-9) and g.stacked == pytest.approx(angle, rel=1e-9)
    assert g.converged and g.error <= 1e-9


class Power(nn.Module):
    """Outputs (t², t³) for every example: z′ = (2t, 3t²) passes through 0 at t = 0, where the
    direction reverses (a cusp)."""

    def __init__(self, eps: float = 0.0) -> None:
        super().__init__()
        self.eps = eps
        self.t = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.t * torch.ones_like(x[:, 0])
        return torch.stack([t * t, t**3 if self.eps == 0 else self.eps * t], -1)


def test_a_cusp_turns_by_pi_plus_its_smooth_turning_and_is_singular():
    c = 0.3137  # t = α − c, so the cusp sits between grid points
    line, data = _scalar_line(Power(), -c, 1 - c, [1.0, 1.0])
    g = gauss_length(line, data, rtol=RTOL)
    want = math.atan(1.5 * c) + math.pi + math.atan(1.5 * (1 - c))
    assert g.converged and g.singular
    assert g.mean == pytest.approx(want, rel=RTOL) and g.stacked == pytest.approx(want, rel=RTOL)
    assert abs(g.mean - want) <= g.error


def test_a_near_reversal_turns_by_its_closed_form():
    # z = (t², εt): z′ = (2t, ε) swings from −x to +x within |t| ~ ε
    c, eps = 0.3137, 1e-4
    line, data = _scalar_line(Power(eps), -c, 1 - c, [1.0])
    g = gauss_length(line, data, rtol=RTOL)
    want = math.atan2(eps, -2 * c) - math.atan2(eps, 2 * (1 - c))
    assert g.converged
    assert g.mean == pytest.approx(want, rel=RTOL)
    assert abs(g.mean - want) <= g.error


def test_a_reversal_between_grid_points_counts_pi():
    # z(α) = w(α)² with w(α) = α − 0.3137: z′ changes sign between grid points
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    w0 = {"0.weight": torch.tensor([[-0.3137]], dtype=F64), "1.weight": torch.tensor([[-0.3137]], dtype=F64)}
    w1 = {"0.weight": torch.tensor([[0.6863]], dtype=F64), "1.weight": torch.tensor([[0.6863]], dtype=F64)}
    line = make_line(model, w0, w1, dtype=F64)
    data = Dataset(torch.ones(1, 1, dtype=F64), torch.zeros(1, 1, dtype=F64), "mse", "rev")
    g = gauss_length(line, data)
    assert g.mean == pytest.approx(math.pi, rel=1e-12) and g.stacked == pytest.approx(math.pi, rel=1e-12)
    assert g.singular and g.converged and g.error <= 1e-12


# ----------------------------------------------------------------------------- BatchNorm, float32


def test_moving_batchnorm_statistics_integrate_the_rate_alone():
    torch.manual_seed(0)
    model = build_model("mlp:3-6-2:tanh:bn").double()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    final = {k: (v + 0.7 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in init.items()}
    line = make_line(model, init, final, dtype=F64)
    data = Dataset(torch.randn(8, 3, dtype=F64), torch.zeros(8, 2, dtype=F64), "mse", "bn")
    g = gauss_length(line, data, bn="recompute")
    plain = gauss_length(line, data, bn="recompute", jumps=False)
    assert (g.mean, g.stacked, g.n_alphas) == (plain.mean, plain.stacked, plain.n_alphas)
    # reference: trapezoid rule of the rate on 201 and 401 α, Richardson-extrapolated
    refs = []
    for points in (201, 401):
        jet = path_jet(line, data, torch.linspace(0, 1, points, dtype=F64), bn="recompute")
        per, _ = turning_rate(jet.dz, jet.d2z)
        refs.append(float(((per[1:] + per[:-1]) / 2).sum(0).mean()) / (points - 1))
    ref = (4 * refs[1] - refs[0]) / 3
    assert g.converged and g.mean == pytest.approx(ref, rel=RTOL) and abs(g.mean - ref) <= g.error


def test_float32_path_reaches_the_tolerance():
    line64, data64 = _mlp("tanh", 1)
    mean, stacked = _dense_trapezoid("tanh", 1)
    line = make_line(line64.shell, line64.start, line64.end, dtype=torch.float32)
    data = data64.to("cpu", torch.float32)
    g = gauss_length(line, data, rtol=RTOL)
    assert g.converged
    assert g.mean == pytest.approx(mean, rel=RTOL) and g.stacked == pytest.approx(stacked, rel=RTOL)


# ----------------------------------------------------------------------------- angle sums (the default): accuracy


def _plain_fcnet() -> nn.Module:
    """The reference code's FCNet(5, [16, 16], out 2) with tanh, as plain torch (state-dict keys as
    ``mlp:5-16-16-2:tanh``)."""
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)).double()


def _plain_angle_sum(model: nn.Module, start, end, x: torch.Tensor, points: int = 20001, chunk: int = 2001):
    """(mean over examples, stacked) of Σ angle(T_i, T_{i+1}) on ``points`` evenly spaced α, with z′ by
    ``torch.func.jvp`` of a plain ``functional_call`` forward pass: nothing of mli_theory."""
    names = list(start)

    def velocity(a: torch.Tensor) -> torch.Tensor:
        def z_of(t: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(model, {k: (1 - t) * start[k] + t * end[k] for k in names}, (x,))

        return torch.func.jvp(z_of, (a,), (torch.ones_like(a),))[1]

    def turn(u: torch.Tensor) -> torch.Tensor:
        t = u / u.norm(dim=-1, keepdim=True)
        return 2 * torch.atan2((t[1:] - t[:-1]).norm(dim=-1), (t[1:] + t[:-1]).norm(dim=-1)).sum(0)

    alphas = torch.linspace(0, 1, points, dtype=F64)
    per, st, prev = torch.zeros(x.shape[0], dtype=F64), 0.0, None
    with torch.no_grad():
        for i in range(0, points, chunk):
            v = torch.func.vmap(velocity)(alphas[i : i + chunk])
            v = v.reshape(v.shape[0], x.shape[0], -1)
            v = v if prev is None else torch.cat([prev, v])
            per, st, prev = per + turn(v), st + float(turn(v.reshape(v.shape[0], -1))), v[-1:]
    return float(per.mean()), st


@functools.lru_cache(maxsize=None)
def _fcnet_reference(seed: int) -> tuple[float, float]:
    line, data = _mlp("tanh", seed)
    return _plain_angle_sum(_plain_fcnet(), line.start, line.end, data.x)


@pytest.mark.parametrize("seed", [0, 4, 7])
def test_default_matches_a_plain_torch_angle_sum_on_the_tanh_fcnet_path(seed):
    # seed 4: an example whose velocity nearly reverses (‖z′‖ dips to 5e-4 of its size; the tangent
    # turns by ~π within Δα ~ 1e-4); the former quadrature was 2e-4 off on seed 0 (669 α)
    line, data = _mlp("tanh", seed)
    mean, stacked = _fcnet_reference(seed)
    g = gauss_length(line, data)
    assert g.converged and not g.singular
    assert g.mean == pytest.approx(mean, rel=1e-5)
    assert g.stacked == pytest.approx(stacked, rel=1e-5)
    assert g.error <= 1e-5 * max(g.mean, g.stacked)
    assert _actual_error(g, mean, stacked) <= g.error
    assert g.n_alphas <= 250  # measured 105–161


@pytest.mark.parametrize("seed", [0, 4])
def test_check_settings_on_the_fcnet_path_converge_within_their_budget(seed):
    # what the conditions pass: the jets of the check's 50-α grid, rtol 1e-3, at most 513 α (the
    # former quadrature reported 'not converged' there, 2e-2 off on seed 4)
    line, data = _mlp("tanh", seed)
    mean, stacked = _fcnet_reference(seed)
    jet = path_jet(line, data, torch.linspace(0, 1, 50, dtype=F64))
    g = gauss_length(line, data, rtol=1e-3, max_alphas=513, jet=jet)
    assert g.converged and g.n_alphas <= 200  # measured 93 and 125
    assert _actual_error(g, mean, stacked) <= g.error <= 1e-3 * max(g.mean, g.stacked)
    assert g.mean == pytest.approx(mean, rel=5e-5) and g.stacked == pytest.approx(stacked, rel=5e-5)  # measured ≤ 4e-6


class ReferenceArc(nn.Module):
    """The reference code's test model: outputs (sin(θ + x), cos(θ + x)) for a scalar θ."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.sin(self.theta + x[:, 0]), torch.cos(self.theta + x[:, 0])], -1)


def test_the_reference_codes_pi_arc_turns_by_pi():
    # its test: θ from π to 0 along the line, 100 random examples; every example and the stacked
    # outputs (a great circle of the unit tangent) turn by π
    g0 = torch.Generator().manual_seed(0)
    x = torch.randn(100, 1, generator=g0, dtype=F64)
    start, end = {"theta": torch.tensor([math.pi], dtype=F64)}, {"theta": torch.tensor([0.0], dtype=F64)}
    line = make_line(ReferenceArc(), start, end, dtype=F64)
    data = Dataset(x, torch.zeros(100, 2, dtype=F64), "mse", "arc")
    mean, stacked = _plain_angle_sum(ReferenceArc().double(), start, end, x)
    assert mean == pytest.approx(math.pi, rel=1e-12) and stacked == pytest.approx(math.pi, rel=1e-12)
    g = gauss_length(line, data)
    assert g.converged and not g.singular
    assert g.mean == pytest.approx(mean, rel=1e-5) and g.stacked == pytest.approx(stacked, rel=1e-5)
    assert torch.allclose(g.per_example, torch.full((100,), math.pi, dtype=F64), rtol=1e-10)


class Cubic(nn.Module):
    """Outputs (t, t³): the tangent's angle atan(3t²) falls and then rises (an inflection at t = 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.t * x[:, 0]
        return torch.stack([t, t**3], -1)


def test_an_inflection_is_counted_by_the_turnaround_term():
    # a chord angle misses what the tangent turns back within a step (O(h²)); the turnaround term
    # (a cubic along the great circle, from z″ at both ends) makes it O(h⁴)
    c = 0.3137
    line, data = _scalar_line(Cubic(), -c, 1 - c, [1.0, 1.0])
    want = math.atan(3 * c * c) + math.atan(3 * (1 - c) ** 2)
    g = gauss_length(line, data)
    assert g.mean == pytest.approx(want, rel=1e-8) and g.stacked == pytest.approx(want, rel=1e-8)
    assert g.converged and abs(g.mean - want) <= g.error and g.n_alphas <= 60


def test_scalar_outputs_count_their_reversals_without_localising_them():
    # deep linear, one output per example: every turn of an example's tangent is a reversal by π,
    # which one step counts exactly wherever it falls, so the grid stays small (the former
    # quadrature spent its whole budget localising them); the stacked path is smooth
    torch.manual_seed(3)
    model = build_model("deep_linear:8-8-8-8-1").double()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.4 * torch.randn_like(v) for k, v in init.items()}
    x = torch.randn(256, 8, dtype=F64)
    line = make_line(model, init, final, dtype=F64)
    data = Dataset(x, torch.zeros(256, 1, dtype=F64), "mse", "dl")
    plain = nn.Sequential(*[nn.Linear(8, 8, bias=False) for _ in range(3)], nn.Linear(8, 1, bias=False)).double()
    mean, stacked = _plain_angle_sum(plain, init, final, x)
    g = gauss_length(line, data)
    assert mean > 0.5  # the examples do reverse
    assert g.mean == pytest.approx(mean, rel=1e-12)  # π × the number of reversals
    assert g.stacked == pytest.approx(stacked, rel=1e-5)
    assert g.converged and g.singular and g.n_alphas <= 120
