"""Work the enclosure walks no longer do, and proof that nothing it bounded changed.

* Values-only walks (the validation's points): the Linear and ReLU rules skip the derivative, and at
  points the slopes and all but one product per Linear layer; the enclosures of L agree with the
  full walk's to 1e-9 and contain torch's float64 loss, on every model family the interpreter covers.
* The reverse walk of the adjoint kink bound stops at nodes no kink precedes: the bound is
  bit-for-bit the one of the unpruned walk.
* Points (cells of width 0) skip the reverse walk: their enclosures are the forward rule's.
* The screening's choice between the reverse walk and the forward rule follows the predicted cost.
"""

from __future__ import annotations

import copy
import math
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from torch import nn
from torch.nn import functional as F

from mli_theory.certify import adjoint as adjoint_module
from mli_theory.certify import partition as P
from mli_theory.certify.enclosures import strict_arithmetic
from mli_theory.certify.partition import CellBound, EnclosureVerdict, enclose, enclose_cells, enclose_values, prepare
from mli_theory.inputs.data import Dataset
from mli_theory.path import BNPolicy, make_line

from cases import CASES as SMALL_CASES, instantiate


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(5, 7), nn.Linear(7, 7), nn.Linear(7, 3)

    def forward(self, x):
        h = F.relu(self.a(x))
        h = F.relu(self.b(h)) + h
        return self.head(F.leaky_relu(h, 0.1))


def _image_cases():
    return {
        "conv_relu_pool": lambda: nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(27, 2)),
        "conv_bn_softplus": lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Softplus(beta=2), nn.Flatten(), nn.Linear(32, 2)),
        "conv_same_sigmoid": lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Sigmoid(), nn.Flatten(), nn.Linear(72, 2)),
    }


def _setups():
    out = []
    for case in SMALL_CASES:
        model, init, final, data = instantiate(case, n=11)
        policies = [BNPolicy.FROZEN, BNPolicy.RECOMPUTE] if "bn" in case["id"] or case["id"] == "convnet" else [BNPolicy.FROZEN]
        for bn in policies:
            out.append(pytest.param(model.double(), init, final, data, bn, id=f"{case['id']}-{bn.value}"))
    g = torch.Generator().manual_seed(3)
    for name, make in _image_cases().items():
        torch.manual_seed(1)
        model = make().double()
        a = {k: v.detach().clone() for k, v in model.state_dict().items()}
        b = {k: (v + 0.4 * torch.randn(v.shape, generator=g, dtype=torch.float64)) if v.is_floating_point() else v for k, v in a.items()}
        data = Dataset(torch.randn(9, 1, 6, 6, generator=g, dtype=torch.float64), torch.randn(9, 2, generator=g, dtype=torch.float64), "mse", name)
        out.append(pytest.param(model, a, b, data, BNPolicy.FROZEN, id=name))
    torch.manual_seed(2)
    model = _Residual().double()
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = {k: v + 0.5 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in a.items()}
    data = Dataset(torch.randn(10, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,), generator=g), "ce", "residual")
    out.append(pytest.param(model, a, b, data, BNPolicy.FROZEN, id="residual_relu_ce"))
    return out


def _loss_at(model, a, b, data, alpha: float, bn: BNPolicy) -> float:
    """torch's own float64 loss at α (under ``recompute``, one train-mode pass over all the data
    re-estimates the BatchNorm statistics first)."""
    moving = lambda k: a[k].is_floating_point() and "running_" not in k  # noqa: E731 - frozen statistics are θT's
    state = {k: (a[k].double() + alpha * (b[k].double() - a[k].double())) if moving(k) else b[k] for k in a}
    probe = copy.deepcopy(model).double()
    probe.load_state_dict(state)
    if bn is BNPolicy.RECOMPUTE:
        for mod in probe.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
                mod.momentum = None
        probe.train()
        with torch.no_grad():
            probe(data.x)
    probe.eval()
    with torch.no_grad():
        out = probe(data.x)
    return float(F.mse_loss(out, data.y) if data.loss == "mse" else F.cross_entropy(out, data.y))


@pytest.mark.parametrize("model, a, b, data, bn", _setups())
def test_values_only_walks_enclose_the_same_values_as_full_walks(model, a, b, data, bn):
    line = make_line(model, a, b, dtype=torch.float64)
    prob = prepare(line, data, bn)
    points = [0.0, 0.25, 0.6180339887, 1.0]
    with strict_arithmetic(prob.x.device):
        full_d, full_l, _ = enclose_cells(prob, points, points)
        # called directly: a rule without a values-only path would raise here (no fallback)
        vo_d, vo_l, vo_i = enclose_cells(prob, points, points, values_only=True)
    for alpha, (flo, fhi), (vlo, vhi), (dlo, dhi) in zip(points, full_l, vo_l, vo_d):
        # the same values; at points a Linear layer multiplies by W(α) once (its own rounding) and
        # may bound a rounding-sized remainder without a product: the bounds agree to 1e-9
        assert abs(vlo - flo) <= 1e-9 * (1 + abs(flo)) and abs(fhi - vhi) <= 1e-9 * (1 + abs(fhi)), (alpha, (flo, fhi), (vlo, vhi))
        assert (dlo, dhi) == (float("-inf"), float("inf"))  # no L′ is claimed
        ref = _loss_at(model, a, b, data, alpha, bn)
        slack = 1e-10 * (1 + abs(ref))
        assert vlo - slack <= ref <= vhi + slack, (alpha, ref, vlo, vhi)
    assert all(i == (float("-inf"), float("inf"), float("inf")) for i in vo_i)


def test_enclose_values_falls_back_to_the_full_walk_when_a_rule_fails(monkeypatch):
    model, a, b, data = instantiate(SMALL_CASES[2], n=7)
    prob = prepare(make_line(model.double(), a, b, dtype=torch.float64), data, BNPolicy.FROZEN)
    real = P.enclose_cells

    def failing(problem, lo, hi, deadline=None, *, values_only=False):
        if values_only:
            raise TypeError("a rule without a values-only path")
        return real(problem, lo, hi, deadline)

    monkeypatch.setattr(P, "enclose_cells", failing)
    with strict_arithmetic(prob.x.device):
        got = enclose_values(prob, [0.0, 0.5])
        want = enclose(prob, [0.0, 0.5], [0.0, 0.5])[1]
    assert got == want


def _deep_relu(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)).double()
    g = torch.Generator().manual_seed(seed)
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = {k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in a.items()}
    data = Dataset(torch.randn(20, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (20,), generator=g), "ce", "deep")
    return model, a, b, data


@pytest.mark.parametrize("which", ["deep", "residual"])
def test_the_pruned_reverse_walk_gives_the_unpruned_bound_bit_for_bit(monkeypatch, which):
    if which == "deep":
        model, a, b, data = _deep_relu()
    else:
        model = _Residual().double()
        g = torch.Generator().manual_seed(5)
        a = {k: v.detach().clone() for k, v in model.state_dict().items()}
        b = {k: v + 0.5 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in a.items()}
        data = Dataset(torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g), "ce", "res")
    prob = prepare(make_line(model, a, b, dtype=torch.float64), data, BNPolicy.FROZEN, adjoint=True)
    assert prob.adjoint
    cells = ([0.0, 0.3, 0.75], [0.125, 0.3 + 2.0**-5, 1.0])
    with strict_arithmetic(prob.x.device):
        pruned = enclose_cells(prob, *cells)
        monkeypatch.setattr(adjoint_module, "_downstream_of_kinks", lambda gm, tape, reads: set(gm.graph.nodes))
        unpruned = enclose_cells(prob, *cells)
    assert pruned == unpruned


def test_points_use_the_forward_rule_without_the_reverse_walk(monkeypatch):
    model, a, b, data = _deep_relu(1)
    line = make_line(model, a, b, dtype=torch.float64)
    with_adjoint = prepare(line, data, BNPolicy.FROZEN, adjoint=True)
    calls = []
    real = adjoint_module.kink_bound
    monkeypatch.setattr(P, "kink_bound", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    points = [0.0, 0.4, 1.0]
    with strict_arithmetic(with_adjoint.x.device):
        got = enclose(with_adjoint, points, points)
        assert not calls
        want = enclose(dataclasses.replace(with_adjoint, adjoint=False), points, points)
        enclose(with_adjoint, [0.0], [0.5])  # a cell of positive width still takes the reverse walk
    assert got == want
    assert calls


def test_point_walks_skip_the_slope_products_and_enclose_the_same_loss(monkeypatch):
    """Points (values only, width 0) carry the slopes ĝ as zero: each hidden Linear layer computes
    one product, ĉ·W(α), where a cell computes ĉ and ĝ times [W0; ΔW]; the loss enclosures agree
    with the full walks' and contain torch's loss."""
    from mli_theory.certify import enclosures as E

    model, a, b, data = _deep_relu(2)
    prob = prepare(make_line(model, a, b, dtype=torch.float64), data, BNPolicy.FROZEN)
    stacked, direct = [], []
    real_multi, real_at = E._multi, E._weights_at
    monkeypatch.setattr(E, "_multi", lambda f, x, ws: stacked.append(1) or real_multi(f, x, ws))
    monkeypatch.setattr(E, "_weights_at", lambda *args: direct.append(1) or real_at(*args))
    points = [0.0, 0.3, 1.0]
    hidden = sum(isinstance(m, nn.Linear) for m in model.modules()) - 1
    with strict_arithmetic(prob.x.device):
        got = enclose_values(prob, points)
        assert (len(stacked), len(direct)) == (1, hidden)  # the input layer's products are shared by the points
        stacked.clear(), direct.clear()
        enclose_cells(prob, [0.3], [0.3 + 2.0**-30], values_only=True)  # a cell: slopes are carried
        assert (len(stacked), len(direct)) == (1 + 2 * hidden, 0)
        full = enclose(prob, points, points)[1]
    for alpha, (lo, hi), (flo, fhi) in zip(points, got, full):
        assert abs(lo - flo) <= 1e-9 * (1 + abs(flo)) and abs(hi - fhi) <= 1e-9 * (1 + abs(fhi))
        ref = _loss_at(model, a, b, data, alpha, BNPolicy.FROZEN)
        assert lo - 1e-12 <= ref <= hi + 1e-12


@pytest.mark.parametrize("shapes", [[(3, 1, 5), (4, 1), ()], [(2, 3)], [(1,), (7, 1, 1)], [(0, 4), (1, 4)], [(5, 2), (5, 3)], [(2,), (3,)]])
def test_broadcast_shape_is_torchs_rule(shapes):
    from mli_theory.certify.enclosures import broadcast_shape

    try:
        want = torch.broadcast_shapes(*shapes)
    except RuntimeError:
        with pytest.raises(ValueError):
            broadcast_shape(*shapes)
        return
    assert broadcast_shape(*shapes) == want


def _verdict(status: str, cells: int, parts: int, where=None) -> EnclosureVerdict:
    partition = tuple(CellBound(i / parts, (i + 1) / parts, -1.0, -0.5, None, 0.0, 0.0) for i in range(parts))
    return EnclosureVerdict(status, 0.0 if status == "monotone" else None, None, where, None, cells, (), "stub", partition)


@pytest.mark.parametrize(
    "forward, reverse, expected",
    [
        # (status, cells evaluated, partition size, seconds) of each screening → the reverse walk chosen?
        (("monotone", 60, 32, 6.0), ("monotone", 24, 16, 3.6), True),   # half the cells, 1.5× per cell: 0.75 of the cost
        (("monotone", 20, 16, 2.0), ("monotone", 20, 16, 2.6), False),  # same cells, dearer per cell
        (("monotone", 20, 16, 2.0), ("monotone", 18, 14, 1.9), False),  # within ADJOINT_ADVANTAGE: keep the forward rule
        (("unknown", 256, 0, 9.0), ("monotone", 40, 30, 6.0), True),    # only the reverse walk settles the subsample
        (("monotone", 20, 16, 2.0), ("unknown", 30, 0, 2.0), False),    # the reverse walk does not settle it
    ],
)
def test_the_screening_chooses_the_cheaper_bound(monkeypatch, forward, reverse, expected):
    model, a, b, data = _deep_relu(2)
    sub = dataclasses.replace(prepare(make_line(model, a, b, dtype=torch.float64), data, BNPolicy.FROZEN, adjoint=True),
                              adjoint=False, adjoint_optional=True)
    runs = {False: forward, True: reverse}
    clock = [100.0]
    monkeypatch.setattr(P.time, "perf_counter", lambda: clock[0])

    def bisect(problem, tol, deadline, batch, **kw):
        status, cells, parts, seconds = runs[problem.adjoint]
        clock[0] += seconds
        return _verdict(status, cells, parts)

    monkeypatch.setattr(P, "_bisect", bisect)
    verdict, chosen = P._screen(sub, 0.0, None, 16, True, 100 * sub.x.shape[0])
    assert chosen is expected
    assert verdict.cells == (reverse if expected else forward)[1]


def test_the_second_screening_is_not_tried_when_the_full_data_are_cheap(monkeypatch):
    model, a, b, data = _deep_relu(2)
    sub = dataclasses.replace(prepare(make_line(model, a, b, dtype=torch.float64), data, BNPolicy.FROZEN, adjoint=True),
                              adjoint=False, adjoint_optional=True)
    seen = []

    def bisect(problem, tol, deadline, batch, **kw):
        seen.append(problem.adjoint)
        return _verdict("monotone", 24, 16)

    monkeypatch.setattr(P, "_bisect", bisect)
    # 16 of 24 cells on 7 × the subsample: the full data cost about 4.7 screenings, below ADJOINT_TRIAL
    verdict, chosen = P._screen(sub, 0.0, None, 16, True, 7 * sub.x.shape[0])
    assert seen == [False] and chosen is False


def test_a_net_below_the_layer_threshold_may_take_the_reverse_walk_but_does_not_by_default():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = {k: v + 0.1 for k, v in a.items()}
    data = Dataset(torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 2, (5,)), "ce", "t")
    line = make_line(model, a, b, dtype=torch.float64)
    auto = prepare(line, data, BNPolicy.FROZEN)
    assert not auto.adjoint and auto.adjoint_optional
    assert not prepare(line, data, BNPolicy.FROZEN, adjoint=False).adjoint_optional
    forced = prepare(line, data, BNPolicy.FROZEN, adjoint=True)
    assert forced.adjoint and not forced.adjoint_optional


def _random_partition(draw_widths: list[int], centres: list[float], widths: list[float], rises: list[bool]) -> list[CellBound]:
    """Cells of widths 2^-k (k from ``draw_widths``) covering [0, 1], with L′ ∈ centre ± width."""
    cells, x = [], 0.0
    for k, c, w, rise in zip(draw_widths, centres, widths, rises):
        b = min(1.0, x + 2.0**-k)
        lo, hi = c - w, c + w
        cells.append(CellBound(x, b, lo, hi, up=1e-6 if rise and hi > 0 else None))
        x = b
        if x >= 1.0:
            break
    if x < 1.0:
        cells.append(CellBound(x, 1.0, -2.0, -1.0))
    return cells


@settings(deadline=None, max_examples=200)
@given(st.lists(st.integers(3, 9), min_size=8, max_size=80), st.lists(st.floats(-50, 5), min_size=80, max_size=80),
       st.lists(st.floats(0.0, 40), min_size=80, max_size=80), st.lists(st.booleans(), min_size=80, max_size=80),
       st.sampled_from([None, 0.75, 0.9375]))
def test_the_coarser_start_partition_covers_the_path_and_keeps_every_cell_it_may_not_merge(ks, centres, widths, rises, pinned):
    """The screening's coarser start (:func:`partition._coarsened`): it only chooses cells, so what
    must hold is that it is a partition of [0, 1] (boundaries increasing, no gap), with at most as
    many cells, that cells whose L′ < 0 is not proven or that start at the convex end's c are kept
    as they are, and that each new cell stays within about one allowance of the old cells it covers
    (at most twice the narrowest of them)."""
    cells = _random_partition(ks, centres, widths, rises)
    out = P._coarsened(cells, pinned)
    assert out[0][0] == 0.0 and out[-1][1] == 1.0
    assert all(a < b for a, b in out) and all(out[i][1] == out[i + 1][0] for i in range(len(out) - 1))
    assert len(out) <= len(cells)
    kept = set(out)
    for c in cells:
        if not (c.hi < 0 and c.rise_share <= 0 and c.b - c.a >= P.COARSEN_MIN_WIDTH and c.b < 1.0) or (pinned is not None and c.a >= pinned):
            assert (c.a, c.b) in kept, (c, out)
    for a, b in out:
        under = [c for c in cells if c.b > a and c.a < b]
        assert b - a <= 2 * min(c.b - c.a for c in under) + P.COARSEN_GRID, ((a, b), under)


def test_the_coarser_start_partition_saves_cells_only_where_the_margins_allow():
    tight = [CellBound(i / 16, (i + 1) / 16, -6.0, -1.0) for i in range(16)]  # C = −3.5, W = 2.5: margin 1.4
    open_ = [CellBound(i / 16, (i + 1) / 16, -6.0, 1.0) for i in range(16)]  # L′ < 0 not proven
    wide = [CellBound(i / 16, (i + 1) / 16, -40.0, -20.0) for i in range(16)]  # C = −30, W = 10: margin 3
    assert len(P._coarsened(tight)) == 16  # (1.4 / 1.25)^(1/3) = 1.04: not one cell fewer
    assert P._coarsened(open_) == [(c.a, c.b) for c in open_]
    # margin 3: cells up to (3 / 1.25)^(1/3) = 1.34× as wide (0.0837): [0, 15/16] in 12 cells, about
    # even, and the last cell kept (near α = 1 a subsample's margin says little)
    got = P._coarsened(wide)
    assert len(got) == 13 and got[-1] == (15 / 16, 1.0), got
    inner = [b - a for a, b in got[:-1]]
    assert max(inner) - min(inner) <= 0.003 and max(inner) <= 0.0837, got


@settings(deadline=None, max_examples=200)
@given(st.lists(st.integers(3, 9), min_size=8, max_size=80), st.lists(st.floats(-50, 5), min_size=80, max_size=80),
       st.lists(st.floats(0.0, 40), min_size=80, max_size=80), st.lists(st.booleans(), min_size=80, max_size=80),
       st.lists(st.floats(1.0, 3.0), min_size=80, max_size=80), st.sampled_from([None, 0.75]))
def test_measured_exponents_keep_the_start_a_partition_and_never_narrow_it(ks, centres, widths, rises, ps, pinned):
    """With per-cell growth exponents (any in [1, 3]) the coarser start is still a partition of
    [0, 1] that keeps every cell it may not merge and widens none past twice the narrowest cell it
    covers; since a smaller exponent only enlarges each allowance, it has at most as many cells as
    the start at the largest exponent."""
    cells = _random_partition(ks, centres, widths, rises)
    exps = ps[: len(cells)] + [P.COARSEN_EXPONENT] * max(0, len(cells) - len(ps))
    out = P._coarsened(cells, pinned, exps)
    assert out[0][0] == 0.0 and out[-1][1] == 1.0
    assert all(a < b for a, b in out) and all(out[i][1] == out[i + 1][0] for i in range(len(out) - 1))
    assert len(out) <= len(P._coarsened(cells, pinned)) <= len(cells)
    kept = set(out)
    for c in cells:
        if not P._mergeable(c, pinned):
            assert (c.a, c.b) in kept, (c, out)
    for a, b in out:
        under = [c for c in cells if c.b > a and c.a < b]
        assert b - a <= 2 * min(c.b - c.a for c in under) + P.COARSEN_GRID, ((a, b), under)
    assert P._coarsened(cells, pinned, [P.COARSEN_EXPONENT] * len(cells)) == P._coarsened(cells, pinned)


def test_probe_cells_are_the_widenable_cells_evenly_spread_with_their_doubles_inside_the_path(monkeypatch):
    # margins: 1 (no room), 3 (room below the cap of 2), 30 (at the cap already with p = 3), open
    centres = [-2.0, -6.0, -60.0, 1.0]
    cells = [CellBound(i / 32, (i + 1) / 32, centres[i % 4] - 2.0, centres[i % 4] + 2.0) for i in range(32)]
    monkeypatch.setattr(P, "PROBE_CELLS", 4)
    probes = P._probe_cells(cells)
    candidates = [i for i in range(32) if i % 4 == 1]  # 1, 5, …, 29
    assert [i for i, _ in probes] == [1, 9, 21, 29]  # the first, the last, evenly between
    for i, (a2, b2) in probes:
        c = cells[i]
        assert b2 - a2 == 2 * (c.b - c.a) and 0.0 <= a2 and b2 <= 1.0
        assert (a2 + b2) / 2 == (c.a + c.b) / 2  # none sticks out here: the same midpoint
    monkeypatch.setattr(P, "PROBE_CELLS", 100)
    assert [i for i, _ in P._probe_cells(cells)] == candidates
    # a doubled cell that would stick out of [0, 1] is moved inside it
    edge = [CellBound(0.0, 0.25, -7.0, -3.0), CellBound(0.25, 0.75, -9.0, 9.0), CellBound(0.75, 1.0, -7.0, -3.0)]
    assert P._probe_cells(edge) == [(0, (0.0, 0.5))]  # the last cell is never merged
    assert P._probe_cells(edge, pinned=0.0) == []  # nothing before the convex end's c


def test_exponents_from_probes_clip_fall_back_and_take_the_larger_neighbour():
    cells = [CellBound(i / 8, (i + 1) / 8, -12.0, -8.0) for i in range(8)]  # W₁ = 2
    probes = [(1, (0.0625, 0.3125)), (4, (0.4375, 0.6875)), (6, (0.6875, 0.9375))]
    # W₂ = 16 → p = 3; W₂ = 2.5 → log2(1.25) = 0.32, clipped to 1; W₂ = 6 → log2 3
    got = P._exponents_from_probes(cells, probes, [(-26.0, 6.0), (-12.5, -7.5), (-16.0, -4.0)])
    l3 = math.log2(3.0)
    assert got == [3.0, 3.0, 3.0, 3.0, 1.0, l3, l3, l3]
    # a doubled cell whose enclosure is not finite (or not wider than a point): the largest exponent
    got = P._exponents_from_probes(cells, probes, [(-math.inf, 1.0), (-10.0, -10.0), (-16.0, -4.0)])
    assert got == [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, l3, l3]
    assert P._exponents_from_probes(cells, [], []) == [P.COARSEN_EXPONENT] * 8


def test_growth_exponents_are_measured_from_the_enclosures_of_each_cell_alone(monkeypatch):
    """The probes' doubled cells are enclosed in one batch on the subsample; each exponent must be the
    one computed from that cell's enclosure on its own (a separate call per cell)."""
    model, a, b, data = _deep_relu(0)
    problem = prepare(make_line(model, a, b, dtype=torch.float64), data, BNPolicy.FROZEN, adjoint=True)
    monkeypatch.setattr(P, "PROBE_CELLS", 3)
    with strict_arithmetic(problem.x.device):
        base = [(i / 32, (i + 1) / 32) for i in range(32)]
        bounds, _, _ = enclose_cells(problem, [c[0] for c in base], [c[1] for c in base])
        cells = [CellBound(x, y, lo, hi) for (x, y), (lo, hi) in zip(base, bounds)]
        probes = P._probe_cells(cells)
        assert probes, "the case must have cells whose exponent matters"
        got = P._growth_exponents(problem, cells, None, None)
        alone = [enclose_cells(problem, [a2], [b2])[0][0] for _, (a2, b2) in probes]
    # the same to rounding (a batch's sums run in another order; each is a proven bound)
    assert got == pytest.approx(P._exponents_from_probes(cells, probes, alone), rel=1e-9, abs=0)
    assert min(got) < P.COARSEN_EXPONENT  # measured, not the fallback everywhere
    assert len(P._coarsened(cells, None, got)) <= len(P._coarsened(cells))


@settings(deadline=None, max_examples=300)
@given(st.integers(0, 60), st.integers(1, 40), st.floats(-1e6, 1e6), st.floats(0, 1e9) | st.just(math.inf))
def test_a_cell_is_split_into_parts_that_cover_it_exactly(start, k, centre, width):
    """:func:`partition._parts`: the parts of a cell cover it with no gap and its own ends, at most
    ``SPLIT_MAX_PARTS``; halves unless its L′ centre is negative (then as many parts as the width's
    growth predicts: more the farther the bound is from deciding)."""
    a = start / 64
    b = min(1.0, a + k / 64)
    if not a < b:
        return
    c = CellBound(a, b, centre - width, centre + width)
    parts = P._parts(c)
    assert parts[0][0] == a and parts[-1][1] == b
    assert all(x < y for x, y in parts) and all(parts[i][1] == parts[i + 1][0] for i in range(len(parts) - 1))
    assert 2 <= len(parts) <= P.SPLIT_MAX_PARTS
    if not (centre < 0 and math.isfinite(width)):
        assert len(parts) == 2


def test_a_cell_far_from_deciding_is_cut_in_more_parts():
    near = P._parts(CellBound(0.0, 0.125, -5.0, 1.0))  # C = −2, W = 3: (1.25·1.5)^(1/3) = 1.23 → halves
    far = P._parts(CellBound(0.0, 0.125, -300.0, 296.0))  # C = −2, W = 298: (1.25·149)^(1/3) = 5.7 → 6 parts
    assert len(near) == 2 and len(far) == 6


def test_the_convex_end_is_tried_only_when_the_last_cell_is_what_keeps_the_bound_above_tol():
    from fractions import Fraction

    decided = [CellBound(i / 8, (i + 1) / 8, -3.0, -1.0) for i in range(7)]
    last = CellBound(7 / 8, 1.0, -1.0, 0.5)
    assert P._last_blocks(decided + [last], Fraction(0))
    # another cell open as well: split that one first
    other = decided[:3] + [CellBound(3 / 8, 4 / 8, -3.0, 2.0)] + decided[4:]
    assert not P._last_blocks(other + [last], Fraction(0))
    assert P._last_blocks(other + [last], Fraction(1))  # its share is within tol
