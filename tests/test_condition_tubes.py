"""The MSE conditions (b), (c) and (f) proven by enclosures of the output path on cells
(:mod:`mli_theory.certify.conditions`: the tube of z, z′, z″ and r).

Independent references: forward-over-forward ``torch.func.jvp`` jets of the float64 model at many
α inside each cell (every bound of the tube must contain them), the exact integer proofs on
polynomial paths (never a disagreement where both decide), dense grids of the conditions'
inequalities and of L′ (a proven condition holds at every grid point and implies L′ ≤ 0), and
planted paths on which a condition fails between cells."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, jvp, vmap

import mli_theory as mt
from mli_theory.certify import conditions as C
from mli_theory.certify.partition import prepare
from mli_theory.inputs.data import Dataset
from mli_theory.path import BNPolicy
from mli_theory.testing.strategies import build_problem

NAMES = ("two_phase", "stationary_curvature", "stationary_pairwise", "acute_tangents")


def _jets(model: nn.Module, init: dict, final: dict, x: torch.Tensor, alphas: list[float]):
    """z, z′, z″ at each α (float64, stacked outputs flattened), by nested forward-mode jvp."""
    model = copy.deepcopy(model).double()
    names = [n for n, _ in model.named_parameters()]
    t0 = {n: init[n].double() for n in names}
    d = {n: final[n].double() - t0[n] for n in names}
    one = torch.tensor(1.0, dtype=torch.float64)

    def z(a):
        return functional_call(model, {n: t0[n] + a * d[n] for n in names}, (x,)).reshape(-1)

    def dz(a):
        return jvp(z, (a,), (one,))[1]

    def jets(a):
        v, d1 = jvp(z, (a,), (one,))
        return v, d1, jvp(dz, (a,), (one,))[1]

    return vmap(jets)(torch.tensor(alphas, dtype=torch.float64))


def _problem(p):
    line = mt.make_line(p.model, p.init, p.final, dtype=torch.float64)
    return prepare(line, p.data, BNPolicy.FROZEN)


def _check_tube(p, k: int, points: int = 5) -> None:
    """Every bound of the tube on k cells contains the jets at ``points`` α in each cell."""
    problem = _problem(p)
    tube = C._tube(problem, k, None, pairs=True)
    y = p.data.y.double().reshape(-1)
    z1, _, _ = _jets(p.model, p.init, p.final, p.data.x, [1.0])
    r = z1[0] - y
    assert float(r.norm()) <= tube.r_up
    alphas = [(j + i / (points - 1)) / k for j in range(k) for i in range(points)]
    z, d1, d2 = _jets(p.model, p.init, p.final, p.data.x, alphas)
    z = z.reshape(k, points, -1)
    d1 = d1.reshape(k, points, -1)
    d2 = d2.reshape(k, points, -1)
    n_out = y.numel()
    pb = C._pair_bounds(tube)
    for j in range(k):
        n1, n2 = d1[j].norm(dim=1), d2[j].norm(dim=1)
        assert (n1 >= tube.z1_lo[j]).all() and (n1 <= tube.z1_up[j]).all()
        assert (n2 <= tube.z2_up[j]).all()
        assert ((d1[j] @ r) <= tube.zr_up[j]).all()
        assert ((d2[j] @ r) >= tube.sr_lo[j]).all()
        lpp = 2.0 / n_out * ((d1[j] * d1[j]).sum(1) + (d2[j] * (z[j] - y)).sum(1))
        assert (lpp >= tube.l2_lo[j]).all()
        for i in range(k):
            assert ((d1[j] @ d1[i].T) >= tube.pair_lo[j][i]).all()
        for i in range(k):
            assert pb[j][i] is None or ((d1[j] @ d1[i].T) >= float(pb[j][i]) - 1e-13 * abs(float(pb[j][i]))).all()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), act=st.sampled_from(["tanh", "gelu", "sigmoid", "relu"]),
       endpoint=st.sampled_from(["trained", "overshoot", "random"]), width=st.integers(2, 8))
def test_every_bound_of_the_tube_contains_the_jets(seed, act, endpoint, width):
    """(ReLU: a cell with a possible kink has z″ unbounded, and the pair bounds across it fall back
    to the entrywise products.)"""
    p = build_problem([3, width, 2], 6, seed, 1.0, endpoint, activation=act, steps=60)
    _check_tube(p, 8)


def _loss_slopes(p, alphas):
    z, d1, _ = _jets(p.model, p.init, p.final, p.data.x, alphas)
    y = p.data.y.double().reshape(-1)
    return ((z - y) * d1).sum(1) * (2.0 / y.numel())


def _grid_holds(name: str, p, m: int = 97) -> bool:
    """The condition's inequalities at every point (pair) of an m-point grid, up to rounding."""
    alphas = [i / (m - 1) for i in range(m)]
    z, d1, d2 = _jets(p.model, p.init, p.final, p.data.x, alphas)
    r = z[-1] - p.data.y.double().reshape(-1)
    scale = 1e-9 * (1 + float(d1.norm(dim=1).max()) ** 2 + float(r.norm()) * float(d2.norm(dim=1).max()))
    if name == "acute_tangents":
        return bool((d1 @ d1.T).min() >= -scale and (d1 @ r).max() <= scale)
    if name == "stationary_pairwise":
        s = d1 @ d1.T + (d2 @ r).reshape(1, -1)  # [i, j]: α = α_i, s = α_j
        return bool(torch.triu(s).min() >= -scale and float(d1[-1] @ r) <= scale)
    if name == "stationary_curvature":
        n1 = d1.norm(dim=1)
        t = d1 / n1.reshape(-1, 1)
        turn = float(torch.arccos((t[1:] * t[:-1]).sum(1).clamp(-1, 1)).sum())  # ≤ the true turning
        return turn < math.pi / 2 and float(r.norm()) * float(d2.norm(dim=1).max()) <= math.cos(turn) * float(n1.min()) ** 2 + scale
    return True  # two_phase: its consequence (L′ ≤ 0) is checked by the caller


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), act=st.sampled_from(["tanh", "gelu"]), width=st.integers(2, 6),
       kind=st.sampled_from([("trained", 1.0, 80), ("trained", 3.0, 400), ("overshoot", 1.0, 400), ("random", 1.0, 1)]))
def test_a_proven_condition_holds_on_a_dense_grid_and_the_loss_falls(seed, act, width, kind):
    endpoint, scale, steps = kind
    p = build_problem([3, width, 2], 8, seed, scale, endpoint, activation=act, steps=steps, overshoot=0.05)
    problem = _problem(p)
    memo: dict = {}
    slopes = None
    for name in NAMES:
        verdict, why = C.PROVERS[name](problem, None, None, memo)
        if verdict is True:
            assert _grid_holds(name, p), name
            if slopes is None:
                slopes = _loss_slopes(p, [i / 256 for i in range(257)])
            assert float(slopes.max()) <= 1e-12, name  # every condition implies L′ ≤ 0 on [0, 1]
        elif verdict is False:
            assert float(_loss_slopes(p, [1.0])[0]) > 0, (name, why)  # disproven only by L′(1) > 0
        else:
            assert why and why.startswith("undecided"), why


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), depth=st.integers(1, 2), endpoint=st.sampled_from(["trained", "overshoot"]))
def test_never_disagrees_with_the_exact_proofs_on_polynomial_paths(seed, depth, endpoint):
    from mli_theory.exact import output_polynomial, prove_conditions

    p = build_problem([3] + [4] * depth + [2], 8, seed, 1.0, endpoint, bias=depth == 1, steps=40)
    line = mt.make_line(p.model, p.init, p.final, dtype=torch.float64)
    problem = prepare(line, p.data, BNPolicy.FROZEN)
    z = output_polynomial(line.start, line.end, line.structure.linear, p.data.x, None)
    exact = prove_conditions(z, p.data.y, None, names=NAMES)
    memo: dict = {}
    for name in NAMES:
        ours, _ = C.PROVERS[name](problem, None, None, memo)
        if ours is not None and exact[name] is not None:
            assert ours == exact[name], name
        if exact[name] is False:
            assert ours is not True, name


class _Path(nn.Module):
    """z(α) on one example with x = 1: a tanh layer whose pre-activations move along the line."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(1, 3)
        self.out = nn.Linear(3, 2, bias=False)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def _planted(k: float, mode: str):
    """z₁ = tanh(k(α − 0.3)) − tanh(k(α − 0.6)) rises then falls (so z′(0.3) and z′(0.6) are obtuse
    once k is large), z₂ = tanh(α − 0.5) rises. ``acute``: y₁ = z₁(1), y₂ = z₂(1) + 1, so r = (0, −1)
    and ⟨z′(α), r⟩ = −z₂′ < 0 everywhere (that half of (b) holds; the pairs decide). ``bump``:
    y₁ = 0, y₂ = z₂(1) + 0.1: the loss rises in the middle (z₁'s bump) and falls at the end
    (L′(1) < 0), so every sufficient condition is false while its end condition (i) holds."""
    model = _Path().double()
    w_out = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    init = {"hidden.weight": torch.tensor([[-0.3 * k], [-0.6 * k], [-0.5]], dtype=torch.float64),
            "hidden.bias": torch.zeros(3, dtype=torch.float64), "out.weight": w_out}
    final = {"hidden.weight": torch.tensor([[0.7 * k], [0.4 * k], [0.5]], dtype=torch.float64),
             "hidden.bias": torch.zeros(3, dtype=torch.float64), "out.weight": w_out.clone()}
    x = torch.ones(1, 1, dtype=torch.float64)
    with torch.no_grad():
        model.load_state_dict(final)
        z1 = model(x)[0]
        model.load_state_dict(init)
    y = torch.stack([z1[0], z1[1] + 1.0]) if mode == "acute" else torch.stack([torch.zeros((), dtype=torch.float64), z1[1] + 0.1])
    data = Dataset(x, y.reshape(1, 2), "mse", "planted")
    return type("P", (), {"model": model, "init": init, "final": final, "data": data})


@pytest.mark.parametrize("k", [1.0, 4.0, 12.0])
def test_planted_obtuse_tangents_are_never_proven_acute(k):
    p = _planted(k, "acute")
    truth = _grid_holds("acute_tangents", p, 401)
    verdict, why = C.prove_acute_tangents(_problem(p))
    if k == 1.0:
        assert truth and verdict is True, why  # gentle: acute, and proven
    else:
        assert not truth and verdict is None and "⟨z′(α), z′(s)⟩ ≥ 0" in why, why
    _check_tube(p, 16)


@pytest.mark.parametrize("k", [4.0, 12.0])
def test_a_planted_interior_rise_is_never_proven_by_any_condition(k):
    p = _planted(k, "bump")
    slopes = _loss_slopes(p, [i / 400 for i in range(401)])
    assert float(slopes.max()) > 0.1 and float(slopes[-1]) < 0  # it rises inside, falls at the end
    problem = _problem(p)
    memo: dict = {}
    assert C._end_slope(problem, memo, None)[1] < 0  # (i) is proven: the provers must fail inside
    for name in NAMES:
        verdict, why = C.PROVERS[name](problem, None, None, memo)
        assert verdict is None and why.startswith("undecided") and "L′(1)" not in why, (name, why)
    _check_tube(p, 16)


class _Bend(nn.Module):
    """z = skip(x) + out(tanh(hidden(x))) on x = 1: a straight run plus one smooth bend."""

    def __init__(self) -> None:
        super().__init__()
        self.skip = nn.Linear(1, 2, bias=False)
        self.hidden = nn.Linear(1, 1)
        self.out = nn.Linear(1, 2, bias=False)

    def forward(self, x):
        return self.skip(x) + self.out(torch.tanh(self.hidden(x)))


def _bend(k: float, b: float, height: float, at: float):
    """z(α) = (2α, −b·(tanh(k(α − at)) + tanh(k·at))) and y = (1, −height): the path runs straight
    past the foot of y (L rises once z₁ > 1 unless the bend already pulls towards y), then bends
    down by a small angle towards the far target, so L′(1) < 0 and the total turning is small
    (cos G > 0): (iii) of (f) alone decides."""
    f64 = torch.float64
    w = torch.tensor([[0.0], [-b]], dtype=f64)
    init = {"skip.weight": torch.zeros(2, 1, dtype=f64), "hidden.weight": torch.tensor([[-at * k]], dtype=f64),
            "hidden.bias": torch.zeros(1, dtype=f64), "out.weight": w}
    final = {"skip.weight": torch.tensor([[2.0], [0.0]], dtype=f64), "hidden.weight": torch.tensor([[(1 - at) * k]], dtype=f64),
             "hidden.bias": torch.zeros(1, dtype=f64), "out.weight": w.clone()}
    data = Dataset(torch.ones(1, 1, dtype=f64), torch.tensor([[1.0, -height]], dtype=f64), "mse", "bend")
    return type("P", (), {"model": _Bend().double(), "init": init, "final": final, "data": data})


@pytest.mark.parametrize("args", [(8.0, 0.05, 10.0, 0.9), (10.0, 0.05, 20.0, 0.9)])
def test_a_bend_past_the_target_is_never_proven(args):
    """A rise inside with small turning and L′(1) < 0 proven: only (iii)'s left side, ⟨z′(α), r⟩,
    stands between (f) and a false proof."""
    p = _bend(*args)
    slopes = _loss_slopes(p, [i / 400 for i in range(401)])
    assert float(slopes.max()) > 0.1 and float(slopes[-1]) < 0
    problem = _problem(p)
    memo: dict = {}
    assert C._end_slope(problem, memo, None)[1] < 0
    tube = C._tube(problem, C.SPLIT_CELLS, None, pairs=False)
    assert float(C._suffix(C._turning(tube))[0]) < 1.0  # cos G > 0: the right side of (iii) is positive
    for name in NAMES:
        verdict, why = C.PROVERS[name](problem, None, None, memo)
        assert verdict is None and why.startswith("undecided"), (name, why)
    _check_tube(p, 16)


@pytest.mark.parametrize("args", [(5.0, 0.06, 10.0, 0.9), (5.0, 0.1, 10.0, 0.85)])
def test_the_full_form_of_two_phase_proves_a_monotone_bend_the_simple_form_cannot(args):
    p = _bend(*args)
    problem = _problem(p)
    verdict, why = C.prove_two_phase(problem)
    assert verdict is True, why
    assert float(_loss_slopes(p, [i / 1000 for i in range(1001)]).max()) < 0  # a dense curve confirms MLI
    tube = C._tube(problem, C.FINE_CELLS, None, pairs=False)
    split = C._convex_from(tube)
    assert 0 < split < tube.k
    assert not C._two_phase_simple(problem, tube, split, None)  # ‖r‖ ≈ 10 dwarfs every chord


@pytest.mark.parametrize("residual, holds", [(0.6, True), (0.8, False)])
def test_the_curvature_form_needs_its_cosine(residual, holds):
    """One smooth bend turning by about 1 rad (|z′| ≥ 2, |z″| ≤ 3.4) and r = −residual·z′(1)/‖z′(1)‖:
    at 0.8, ‖r‖·max‖z″‖ lies between cos(G)·min‖z′‖² and min‖z′‖², so the curvature form is false
    (the grid shows it) although it would pass without its cos G; at 0.6 it holds and is proven."""
    p = _bend(4.0, 0.275, 10.0, 0.5)
    z, d1, _ = _jets(p.model, p.init, p.final, p.data.x, [1.0])
    y = z[0] + residual * d1[0] / d1[0].norm()
    p.data = Dataset(p.data.x, y.reshape(1, 2), "mse", "curvature")
    assert _grid_holds("stationary_curvature", p, 401) is holds
    verdict, why = C.prove_stationary_curvature(_problem(p))
    assert verdict is (True if holds else None), why


def test_check_reports_the_new_conditions_proven_by_enclosures():
    import sys
    import os

    sys.path.insert(0, os.path.dirname(__file__))
    from test_convex_end import _trained

    model, init, final, data = _trained(torch.nn.Tanh, "mse", steps=800, seed=2)
    r = mt.check(model, init, final, data, certify=True, dtype=torch.float64, alphas=33)
    got = {c.name: c for c in r.conditions}
    for name in ("two_phase", "stationary_pairwise", "acute_tangents"):
        assert got[name].proven and got[name].holds is True, (name, got[name])
        assert "enclosures of L′, L″ and of the output path" in got[name].statement
    assert got["zero_residual_gauss"].proven and got["zero_residual_gauss"].holds is False
    assert got["stationary_curvature"].holds is None and got["stationary_curvature"].reason.startswith("undecided")
