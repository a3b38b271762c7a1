"""Witnesses from the validation's point enclosures alone (``partition._point_witness``).

The validation encloses L at a few α (degenerate cells), among them the ends of the grid's largest
rise; two such enclosures prove L(b) − L(a) ≥ lo(b) − hi(a). Checked here against a 60-digit mpmath
evaluation of the whole BatchNorm re-estimation procedure (no Taylor model in it), and the pair
logic against hand-made enclosures."""

from __future__ import annotations

import math
from types import SimpleNamespace

import mpmath as mp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mli_theory as mt
from mli_theory.certify.partition import _point_witness, decide_by_enclosures
from mli_theory.certify.validation import Reference
from mli_theory.path import BNPolicy

from test_bn_recompute_certify import _build, _reference


class _Measured:
    """A stand-in for the measured computation: L(α) from a table."""

    def __init__(self, table: dict[float, float]) -> None:
        self.table = table

    def losses(self, alphas):
        return [self.table[a] for a in alphas]


def _problem(table: dict[float, float]) -> SimpleNamespace:
    return SimpleNamespace(reference=_Measured(table), statistics={}, gm=None)  # no traced graph: no ball re-check


def test_the_best_pair_is_found_with_exact_arithmetic():
    points = [0.0, 0.25, 0.5, 0.75, 1.0]
    values = [(2.0, 2.0), (1.0, 1.25), (1.5, 1.5), (0.5, 0.5), (1.75, 2.0)]
    table = {a: (lo + hi) / 2 for a, (lo, hi) in zip(points, values)}
    v = _point_witness(_problem(table), points, values, tol=0.1)
    # the pairs that prove a rise: (0.25, 0.5): 1.5 − 1.25, (0.25, 1): 1.75 − 1.25, (0.75, 1): 1.75 − 0.5 (the best)
    assert v.status == "non_monotone" and v.where == (0.75, 1.0)
    assert v.rise_lower == 1.25 and v.rise == table[1.0] - table[0.75]


def test_a_rise_of_exactly_tol_is_no_witness_and_overlapping_enclosures_prove_nothing():
    points = [0.0, 0.5, 1.0]
    exact = [(1.0, 1.0), (0.5, 0.5), (0.625, 0.75)]  # lo(1) − hi(½) = 0.125 = tol exactly
    assert _point_witness(_problem({0.0: 1.0, 0.5: 0.5, 1.0: 0.7}), points, exact, tol=0.125) is None
    wide = [(1.0, 1.0), (0.4, 0.9), (0.5, 0.8)]  # the enclosures overlap: no proven order
    assert _point_witness(_problem({0.0: 1.0, 0.5: 0.5, 1.0: 0.6}), points, wide, tol=0.0) is None
    # infinite enclosures (an overflow) take part in no pair
    inf = [(1.0, 1.0), (-math.inf, math.inf), (2.0, 2.0)]
    v = _point_witness(_problem({0.0: 1.0, 0.5: 0.0, 1.0: 2.0}), points, inf, tol=0.5)
    assert v.where == (0.0, 1.0) and v.rise_lower == 1.0


def test_a_witness_the_measured_computation_does_not_reproduce_is_unknown():
    points = [0.0, 1.0]
    values = [(1.0, 1.0), (2.0, 2.0)]
    v = _point_witness(_problem({0.0: 1.0, 1.0: 1.0}), points, values, tol=0.0)  # measured: flat
    assert v.status == "unknown" and "does not reproduce" in v.reason


@st.composite
def _paths(draw):
    act = draw(st.sampled_from(["relu", "tanh", "gelu"]))
    widths = [draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(2, 3))]
    loss = draw(st.sampled_from(["mse", "ce"]))
    return act, widths, loss, draw(st.integers(3, 6)), draw(st.integers(0, 2**20)), draw(st.sampled_from([0.3, 1.0, 3.0]))


@settings(deadline=None, max_examples=25)
@given(_paths(), st.sampled_from([0.0, 1e-3, 0.05]))
def test_every_point_witness_is_a_true_rise_above_tol(path, tol):
    """BatchNorm re-estimated along the path: whenever a verdict comes from the point enclosures,
    the 60-digit evaluation of the same procedure shows L(b) − L(a) ≥ the proven bound > tol."""
    act, widths, loss, n, seed, scale = path
    model, start, end, x, y = _build(act, widths, seed, scale, loss, n)
    data = mt.Dataset(x, y, loss, "t")
    res = mt.check(model, start, end, data, alphas=9, dtype=torch.float64, geometry=False)
    line = mt.make_line(model, start, end, dtype=torch.float64)
    ref = Reference(line, data, BNPolicy.RECOMPUTE, None, mt.LossCurve(tuple(res.alphas), tuple(res.losses), None))
    v = decide_by_enclosures(line, data, tol=tol, bn=BNPolicy.RECOMPUTE, reference=ref, deadline=None)
    if v.status == "non_monotone" and "point enclosures" in v.reason:
        a, b = v.where
        la = _reference(model, act, start, end, x, y, loss, a)[0]
        lb = _reference(model, act, start, end, x, y, loss, b)[0]
        assert lb - la >= mp.mpf(v.rise_lower) > tol, (path, tol, float(lb - la), v.rise_lower)


def test_a_batchnorm_rise_on_the_grid_is_proven_from_two_points():
    """A BatchNorm path (statistics re-estimated at every α) whose grid rises by more than 0.01: the
    point enclosures prove the rise before any cell of L′ is enclosed (the first seed with such a
    rise; the search is deterministic)."""
    from mli_theory.certify.validation import grid_rise

    data = None
    for seed in range(40):
        model, start, end, x, y = _build("tanh", [3, 4, 2], seed, 1.0, "ce", 6)
        data = mt.Dataset(x, y, "ce", "t")
        res = mt.check(model, start, end, data, alphas=33, dtype=torch.float64, geometry=False)
        if res.max_rise > 0.01:
            break
    else:
        raise AssertionError("no seed in 0..39 gives a grid rise above 0.01")
    out = mt.check(model, start, end, data, alphas=33, dtype=torch.float64, geometry=False, certify=True, certify_budget=60, tol=1e-3)
    cert = out.certificate
    assert cert.status == "non_monotone" and "point enclosures" in cert.reason and cert.cells == 0, cert
    a, b = cert.where
    assert (a, b) == grid_rise(mt.LossCurve(tuple(res.alphas), tuple(res.losses), None))
    la = _reference(model, "tanh", start, end, x, y, "ce", a)[0]
    lb = _reference(model, "tanh", start, end, x, y, "ce", b)[0]
    assert lb - la > 1e-3 and abs(float(lb - la) - cert.rise) < 1e-9
