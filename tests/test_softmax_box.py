"""The softmax box of cross-entropy's enclosures (``enclosures._softmax_box``): bounds of
p_k = softmax([0, u])_k over a box of logit differences, held against 60-digit softmax values at
the box's extreme corners, in O(k) per example, so that outputs of a thousand classes and more
certify in seconds."""

from __future__ import annotations

import importlib
import time

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

E = importlib.import_module("mli_theory.certify.enclosures")


def _box(k: int, n: int, seed: int, scale: float, radius: float):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    onehot = torch.zeros(n, k, dtype=torch.bool).scatter_(-1, y[:, None], True)
    c = scale * torch.randn(n, k, generator=g, dtype=torch.float64)
    r = radius * torch.rand(n, k, generator=g, dtype=torch.float64)
    zero = torch.zeros(n, k, dtype=torch.float64)
    return torch.where(onehot, zero, c - r), torch.where(onehot, zero, c + r), onehot


def _extremes(lo: torch.Tensor, hi: torch.Tensor, i: int, entries) -> list[tuple[int, mpmath.mpf, mpmath.mpf]]:
    """60-digit (min, max) of p_k over the box, row i, at the corners where they are attained: the
    k-th entry at its lower (upper) bound and every other at its upper (lower) one."""
    mpmath.mp.dps = 60
    el = [mpmath.exp(mpmath.mpf(float(v))) for v in lo[i]]
    eh = [mpmath.exp(mpmath.mpf(float(v))) for v in hi[i]]
    s_lo, s_hi = mpmath.fsum(el), mpmath.fsum(eh)
    out = []
    for kk in entries:
        top = eh[kk] / (s_lo - el[kk] + eh[kk])  # 60 digits: the subtraction costs nothing here
        bottom = el[kk] / (s_hi - eh[kk] + el[kk])
        out.append((kk, bottom, top))
    return out


def _assert_contains(lo, hi, onehot, entries_per_row=None):
    p_lo, p_hi = E._softmax_box(lo, hi, onehot)
    assert bool((p_lo >= 0).all()) and bool((p_hi <= 1).all()) and bool((p_lo <= p_hi).all())
    assert bool((p_lo[onehot] == 0).all()) and bool((p_hi[onehot] == 0).all())
    for i in range(lo.shape[0]):
        entries = [k for k in range(lo.shape[1]) if not bool(onehot[i, k])]
        if entries_per_row is not None:
            entries = entries[:: max(1, len(entries) // entries_per_row)]
        for kk, bottom, top in _extremes(lo, hi, i, entries):
            assert mpmath.mpf(float(p_lo[i, kk])) <= bottom, (i, kk, float(p_lo[i, kk]), float(bottom))
            assert top <= mpmath.mpf(float(p_hi[i, kk])), (i, kk, float(p_hi[i, kk]), float(top))
    return p_lo, p_hi


@settings(deadline=None, max_examples=60)
@given(st.integers(2, 48), st.integers(0, 2**20), st.sampled_from([0.1, 3.0, 30.0, 300.0]),
       st.sampled_from([0.0, 1e-13, 1e-6, 1e-2, 1.0, 50.0]))
def test_the_box_holds_the_softmax_at_its_extreme_corners(k, seed, scale, radius):
    """p_k is increasing in u_k and decreasing in the others, so its extremes over the box are at two
    corners: both lie inside the bounds, for logits from 0.1 to 300 (exponents far below exp's
    range among them) and radii from 0 (points) to 50."""
    lo, hi, onehot = _box(k, 3, seed, scale, radius)
    _assert_contains(lo, hi, onehot)


def _corner_form(vlo: torch.Tensor, vhi: torch.Tensor, onehot: torch.Tensor):
    """The k × k form the O(k) bounds replaced: each extreme corner spelled out as a row, its
    logsumexp taken, the error allowance 8·2⁻⁴⁴(1 + |v| + |lse|) relatively (sound below ~4 000
    classes, where the sum's own γ_k stays under it)."""
    k = vlo.shape[-1]
    eye = torch.eye(k, dtype=torch.bool)
    lse_hi = torch.logsumexp(torch.where(eye, vhi.unsqueeze(-1), vlo.unsqueeze(-2)), -1)
    lse_lo = torch.logsumexp(torch.where(eye, vlo.unsqueeze(-1), vhi.unsqueeze(-2)), -1)
    rel_hi = (1.0 + vhi.abs() + lse_hi.abs()) * E._LIB * 8
    rel_lo = (1.0 + vlo.abs() + lse_lo.abs()) * E._LIB * 8
    p_hi = (torch.exp(vhi - lse_hi) * (1.0 + 2 * rel_hi)).clamp(max=1.0)
    p_lo = (torch.exp(vlo - lse_lo) * (1.0 - 2 * rel_lo)).clamp(min=0.0)
    zero = torch.zeros_like(vlo)
    return torch.where(onehot, zero, p_lo), torch.where(onehot, zero, p_hi)


@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0, 300.0])
@pytest.mark.parametrize("radius", [0.0, 1e-12, 1e-3, 1.0])
def test_never_wider_than_the_corner_form(scale, radius):
    """Against the k × k corner form on the same boxes: never wider on any entry, and on points
    (radius 0) narrower (each exponent's error weighted by its term): on points the bounds are within
    10⁻⁹ of the value relatively, and within 5·10⁻¹¹ on entries above 10⁻⁶."""
    lo, hi, onehot = _box(12, 16, 3, scale, radius)
    p_lo, p_hi = E._softmax_box(lo, hi, onehot)
    c_lo, c_hi = _corner_form(lo, hi, onehot)
    keep = ~onehot & (c_hi > 1e-290)
    assert bool(((p_hi - p_lo)[keep] <= (c_hi - c_lo)[keep] * (1 + 1e-9)).all())
    if radius == 0.0:
        p = torch.softmax(lo, -1)
        width = (p_hi - p_lo)[keep] / p[keep]
        assert bool((width < 1e-9).all())
        assert bool((width[p[keep] > 1e-6] < 5e-11).all())


def test_a_thousand_classes_hold_and_take_linear_work():
    """k = 1 000 and k = 20 000: sampled entries against 60-digit values; the second would need a
    k × k table of 3.2 GB per row of examples in the corner form this replaced, and runs here in a
    fraction of a second."""
    lo, hi, onehot = _box(1000, 2, 1, 5.0, 0.5)
    _assert_contains(lo, hi, onehot, entries_per_row=25)
    lo, hi, onehot = _box(20000, 2, 2, 5.0, 0.5)
    t = time.perf_counter()
    E._softmax_box(lo, hi, onehot)
    assert time.perf_counter() - t < 5.0
    _assert_contains(lo, hi, onehot, entries_per_row=10)


def test_extreme_boxes_fall_back_to_the_unit_interval():
    """Non-finite bounds, and exponents beyond exp's range, give sound (wide) answers: [0, 1] where
    nothing can be divided, never NaN."""
    onehot = torch.tensor([[True, False, False]])
    lo = torch.tensor([[0.0, -float("inf"), -2000.0]], dtype=torch.float64)
    hi = torch.tensor([[0.0, float("inf"), 2000.0]], dtype=torch.float64)
    p_lo, p_hi = E._softmax_box(lo, hi, onehot)
    assert not bool(torch.isnan(p_lo).any() or torch.isnan(p_hi).any())
    assert p_lo.tolist() == [[0.0, 0.0, 0.0]] and p_hi.tolist() == [[0.0, 1.0, 1.0]]
    lo = torch.tensor([[0.0, -900.0, -1.0]], dtype=torch.float64)  # e^{-900} is below float64's range
    hi = torch.tensor([[0.0, -800.0, 1.0]], dtype=torch.float64)
    p_lo, p_hi = _assert_contains(lo, hi, onehot)
    assert float(p_hi[0, 1]) > 0.0  # a subnormal term's value is covered, not rounded to zero
    lo, hi, onehot = _box(28, 3, 45, 300.0, 0.0)  # found by hypothesis: a quotient of about 1.2e-322,
    _assert_contains(lo, hi, onehot)  # whose own rounding among the subnormals is absolute, not relative


def test_a_thousand_class_net_certifies_within_seconds():
    """End to end: a 4-8-1 000 ReLU net trained a little on 300 examples is decided well within a 60 s
    budget (the corner form spent 45 s validating it and then ran out of budget)."""
    from torch import nn
    from torch.nn import functional as F

    decide_by_enclosures = importlib.import_module("mli_theory.certify.partition").decide_by_enclosures
    from mli_theory.inputs.data import Dataset
    from mli_theory.path import make_line

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1000))
    x = torch.randn(300, 4)
    y = torch.randint(0, 1000, (300,))
    s0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    s1 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    t = time.perf_counter()
    v = decide_by_enclosures(make_line(model, s0, s1), Dataset(x, y, "ce", "thousand"), tol=0.0,
                             deadline=time.perf_counter() + 60.0)
    assert v.status in ("monotone", "non_monotone"), v.reason
    assert time.perf_counter() - t < 60.0
    reference = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1000)).double()

    def loss(a: float) -> float:
        state = {k: (1 - a) * s0[k].double() + a * s1[k].double() for k in s0}
        with torch.no_grad():
            return float(F.cross_entropy(torch.func.functional_call(reference, state, (x.double(),)), y))

    losses = [loss(a) for a in np.linspace(0, 1, 201)]
    grid_rise = max(max(losses[j] - min(losses[: j + 1]) for j in range(len(losses))), 0.0)
    if v.status == "monotone":
        assert grid_rise <= (v.rise_bound or 0.0) + 1e-12
    else:
        a, b = v.where
        assert a < b and loss(b) - loss(a) > 0.0


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
