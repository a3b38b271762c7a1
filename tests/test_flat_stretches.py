"""Exactly flat stretches of the loss (dead ReLU units, a constant output) at tol = 0.

There L′ = 0 exactly, and every enclosure of it is [−ε, ε] with ε the enclosures' rounding, at every
cell width: no partition proves L′ ≤ 0, so a rise of at most Σ|C|·ε can be neither excluded nor
proven. The bisection notices that splitting no longer narrows the enclosures and answers
``unknown`` at once, saying why (before: it split until the proof budget ran out); a tolerance above
the proven bound decides. Witnesses elsewhere on such paths are still found, and their reasons do
not call a rise float64 reproduces "below its resolution"."""

from __future__ import annotations

import importlib
import time

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from mli_theory.inputs.data import Dataset
from mli_theory.path import make_line

P = importlib.import_module("mli_theory.certify.partition")


def _ramps(units: list[tuple[float, float, float]], c0: float = 1.0, c1: float | None = None):
    """A 1-H-1 ReLU net on one example x = 1, y = 0: unit u's pre-activation is slope·(α − at) along
    the path (split between weight and bias), its output weight v; the output bias goes from c0 to
    c1 (c0 when None). Returns (model, θ0, θT, data)."""
    h = len(units)
    w0, b0, w1, b1, v = torch.zeros(h, 1), torch.zeros(h), torch.zeros(h, 1), torch.zeros(h), torch.zeros(1, h)
    for u, (slope, at, vv) in enumerate(units):
        p0, p1 = -slope * at, slope * (1 - at)
        w0[u, 0], b0[u], w1[u, 0], b1[u] = p0 / 2, p0 / 2, p1 / 2, p1 / 2
        v[0, u] = vv
    model = nn.Sequential(nn.Linear(1, h), nn.ReLU(), nn.Linear(h, 1))
    s0 = {"0.weight": w0, "0.bias": b0, "2.weight": v.clone(), "2.bias": torch.tensor([c0])}
    s1 = {"0.weight": w1, "0.bias": b1, "2.weight": v.clone(), "2.bias": torch.tensor([c0 if c1 is None else c1])}
    return model, s0, s1, Dataset(torch.ones(1, 1), torch.zeros(1, 1), "mse", "ramps")


def _loss(model, s0, s1, data, a: float) -> float:
    state = {k: (1 - a) * s0[k].double() + a * s1[k].double() for k in s0}
    with torch.no_grad():
        return float(F.mse_loss(functional_call(model.double(), state, (data.x.double(),)), data.y.double()))


def test_a_constant_loss_is_unknown_at_once_and_decided_above_the_rounding():
    """Every unit dead on [0, 1] (L ≡ 1, θ0 ≠ θT): ``unknown`` well inside the budget with the
    rounding named; with tol = 10⁻¹² (above the proven bound) ``monotone``."""
    model, s0, s1, data = _ramps([(1.0, 2.0, 1.0), (-1.0, -1.0, 1.0)])
    assert {_loss(model, s0, s1, data, a) for a in (0.0, 0.3, 0.7, 1.0)} == {1.0}
    t = time.perf_counter()
    v = P.decide_by_enclosures(make_line(model, s0, s1), data, tol=0.0, deadline=time.perf_counter() + 120.0)
    took = time.perf_counter() - t
    assert v.status == "unknown" and "does not narrow when the cells are halved" in v.reason
    assert took < 60.0 and v.cells < 2000, (took, v.cells)
    assert v.rise_bound is not None and 0 < v.rise_bound < 1e-12
    w = P.decide_by_enclosures(make_line(model, s0, s1), data, tol=1e-12, deadline=time.perf_counter() + 120.0)
    assert w.status == "monotone"


def test_a_flat_middle_does_not_hide_a_rise_and_the_rise_is_reported_as_measured():
    """z = 1 + 2.5(0.3 − α)⁺, then flat, then 10⁻³(α − 0.8)⁺ rises: the witness is proven (through
    the same bisection that stops on flat cells) and re-measured; float64 reproduces it, so its
    reason does not call it below float64's resolution."""
    model, s0, s1, data = _ramps([(-2.5, 0.3, 1.0), (1e-3, 0.8, 1.0)])
    v = P.decide_by_enclosures(make_line(model, s0, s1), data, tol=0.0, deadline=time.perf_counter() + 120.0)
    assert v.status == "non_monotone", v.reason
    a, b = v.where
    assert _loss(model, s0, s1, data, b) - _loss(model, s0, s1, data, a) > 0
    assert "below float64's resolution" not in v.reason


def test_stalls_are_counted_only_where_the_enclosure_stops_narrowing():
    """The counter (``partition._stalled``): a part at least ``STALL_RATIO`` of its parent's width and
    within the rounding scale counts one more; a part that narrowed, or is wide, starts again at 0."""
    cb = P.CellBound
    lineage = {(0.0, 0.5): (2e-15, 3), (0.5, 1.0): (2e-15, 3), (1.0, 1.5): (4.0, 3), (1.5, 2.0): (2e-15, 3)}
    cells = [cb(0.0, 0.5, -1e-15, 1e-15), cb(0.5, 1.0, -1e-16, 1e-16), cb(1.0, 1.5, -3.9, 0.1), cb(1.5, 2.0, -5e-16, 1.5e-15)]
    stalled: dict = {}
    P._stalled(cells, lineage, stalled)
    assert stalled == {(0.0, 0.5): 4, (0.5, 1.0): 0, (1.0, 1.5): 0, (1.5, 2.0): 4}
    assert lineage == {}
    # the scale is the cells' median |L′| bound: one blown-up cell (10¹⁸, a deep net's first cell)
    # does not make a width of 10⁻³ look like rounding
    lineage = {(0.0, 0.5): (1e-3, 3), (0.5, 1.0): (1e-3, 3), (1.0, 1.5): (1e-3, 3)}
    cells = [cb(0.0, 0.5, -1e18, 1e18), cb(0.5, 1.0, -5e-4, 5e-4), cb(1.0, 1.5, -2.0, -1.9995)]
    stalled = {}
    P._stalled(cells, lineage, stalled)
    assert stalled == {(0.0, 0.5): 0, (0.5, 1.0): 0, (1.0, 1.5): 0}
