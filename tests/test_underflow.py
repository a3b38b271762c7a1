"""Rounding and underflow corner cases found by adversarial reviews, each one rule or one walk.

Mostly underflow amplified before the final absolute inflation can cover it: a bound computed in
float64 that loses up to 2⁻¹⁰²² to underflow and is then multiplied by a large weight or remainder
inside the same rule (each case failed before the absolute term ``_UNDER`` = 2⁻¹⁰²⁰ was added where
the bound is formed); and averages whose own rounding was not covered."""

from fractions import Fraction as F

import mpmath as mp
import pytest
import torch
from torch import nn

import mli_theory as mt
from mli_theory.certify import adjoint as A
from mli_theory.certify import enclosures as E
from mli_theory.certify.partition import cell_numbers, enclose, enclose_cells, enclose_values, prepare
from mli_theory.path import BNPolicy

D = torch.float64


def test_point_walks_cover_what_the_rounded_weights_lose_to_underflow():
    """W̃ = fl(W0 + fl(m·ΔW)) with ΔW = 2⁻¹⁰⁷⁴ rounds to 0, and the activation 2¹⁰⁰⁰ multiplies it."""
    mp.mp.dps = 60
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False)).double()
    start = {"0.weight": torch.tensor([[2.0**1000]], dtype=D), "2.weight": torch.tensor([[0.0]], dtype=D)}
    end = {"0.weight": torch.tensor([[2.0**1000]], dtype=D), "2.weight": torch.tensor([[2.0**-1074]], dtype=D)}
    x, y = torch.ones(1, 1, dtype=D), torch.zeros(1, 1, dtype=D)
    prob = prepare(mt.make_line(model, start, end, dtype=D), mt.Dataset(x, y, "mse", "t"), BNPolicy.FROZEN)
    alpha = 0.49
    exact = (mp.mpf(2) ** 1000 * mp.mpf(alpha) * mp.mpf(2) ** -1074) ** 2
    (lo, hi), = enclose_values(prob, [alpha])
    assert mp.mpf(lo) <= exact <= mp.mpf(hi), (lo, hi, exact)
    (lo, hi), = enclose(prob, [alpha], [alpha])[1]
    assert mp.mpf(lo) <= exact <= mp.mpf(hi)


def test_per_cell_absolute_weights_cover_subnormal_motion():
    """|W(α)| ≤ |W0 + mΔW| + h|ΔW| + … with ΔW = 2⁻¹⁰⁷⁴ (every term underflows), times a remainder
    (forward) or a cotangent radius (reverse) of 2¹⁰⁰, on the cell [0, 0.98] at α = 0.98."""
    w = E.Param(torch.zeros(1, 1, dtype=D), torch.tensor([[2.0**-1074]], dtype=D))
    mid, rad = torch.tensor([0.49], dtype=D), torch.tensor([0.49], dtype=D)
    big, z = 2.0**100, torch.zeros((), dtype=D)
    x = E.Enclosure(E.TM(torch.zeros(1, 1, 1, dtype=D), z, torch.full((1, 1, 1), big, dtype=D)), E.TM(torch.zeros(1, 1, 1, dtype=D), z, z))
    exact = F(big) * F(0.98) * F(2.0**-1074)  # the input's remainder at its extreme, δ = e
    o = E._linear(E.EnclosureNumbers(mid, rad), x, w, None)
    assert abs(exact - (F(o.v.c.item()) + F(0.49) * F(o.v.g.item()))) <= F(o.v.e.item())
    g = A._Cot(torch.zeros(1, 1, 1, dtype=D), torch.zeros(1, 1, 1, dtype=D), torch.full((1, 1, 1), big, dtype=D))
    back = A._linear_back(E.EnclosureNumbers(mid, rad), g, w)
    assert abs(exact - (F(back.c.item()) + F(0.49) * F(back.s.item()))) <= F(back.r.item())


def test_the_float64_upper_product_covers_underflow():
    """|ΔW|ᵀ·sup|g| = 2⁻⁶⁰⁰·2⁻⁶⁰⁰ underflows in float64 (K = 2, too short for float32) and is then
    multiplied by the deferred input remainder 2⁵⁰⁰ (:func:`adjoint._source_bound`)."""
    out, n_in = 2, 3
    w = E.Param(torch.ones(out, n_in, dtype=D), torch.full((out, n_in), 2.0**-600, dtype=D))
    nt = E.EnclosureNumbers(torch.tensor([0.5], dtype=D), torch.tensor([0.25], dtype=D))
    g = A._Cot(torch.full((1, 1, out), 2.0**-600, dtype=D), torch.zeros(1, 1, out, dtype=D), torch.zeros(1, 1, out, dtype=D))
    bound = A._source_bound(nt, g, E.Source(torch.full((1, 1, n_in), 2.0**500, dtype=D)), w, None)
    assert F(bound.item()) >= out * n_in * F(2.0**-600) * F(2.0**-600) * F(2.0**500)


def test_the_rounding_allowance_covers_a_slope_on_a_tiny_cell():
    """|ĝ|·h = 2⁻⁵⁰⁰·2⁻⁶⁰⁰ underflows, so an allowance built from it misses the rounding of ĝ·W0
    (W0 ≈ 2²⁰⁰) that the model carries on t ∈ [−h, h]."""
    gen = torch.Generator().manual_seed(1)
    k, out = 8, 2
    w = E.Param(torch.randn(out, k, generator=gen, dtype=D) * 2.0**200, torch.zeros(out, k, dtype=D))
    mid, rad = torch.tensor([2.0**-600], dtype=D), torch.tensor([2.0**-600], dtype=D)
    g = torch.randn(1, 1, k, generator=gen, dtype=D) * 2.0**-500
    z = torch.zeros((), dtype=D)
    x = E.Enclosure(E.TM(torch.zeros(1, 1, k, dtype=D), g, z), E.TM(torch.zeros(1, 1, k, dtype=D), z, z))
    o = E._linear(E.EnclosureNumbers(mid, rad), x, w, None)
    h = F(rad.item())
    for t in (-h, h):
        for j in range(out):
            exact = sum(F(a) * t * F(gv) for a, gv in zip(w.w0[j].tolist(), g[0, 0].tolist()))
            model = F(o.v.c[0, 0, j].item()) + t * F(o.v.g[0, 0, j].item())
            assert abs(exact - model) <= F(o.v.e[0, 0, j].item()), (float(t), j)


@pytest.mark.parametrize("a, b", [(-0.5, 0.5), (0.5, 1.5), (0.75, 0.5)])
def test_cells_outside_the_unit_interval_are_refused(a, b):
    """The rules' rounding arguments assume |m| ≤ 1 (at m = 2⁴⁰ a centre errs by 10⁹ times its radius)."""
    model = nn.Sequential(nn.Linear(2, 1)).double()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    prob = prepare(mt.make_line(model, sd, {k: v + 1 for k, v in sd.items()}, dtype=D),
                   mt.Dataset(torch.ones(1, 2, dtype=D), torch.zeros(1, 1, dtype=D), "mse", "t"), BNPolicy.FROZEN)
    with pytest.raises(ValueError, match="cells must lie in"):
        enclose_cells(prob, [a], [b])


@pytest.mark.parametrize("a, b", [(0.2, 0.45), (0.1, 0.3), (2.0**-149, 0.125), (1 / 3, 1 / 3), (0.0, 1.0), (0.9, 1.0)])
def test_a_cell_is_enclosed_as_an_interval_that_contains_it(a, b):
    """[m − h, m + h] ⊇ [a, b] exactly, also where fl((a + b)/2) and (b − a)/2 are not exact."""
    mid, rad = cell_numbers([a], [b], torch.device("cpu"))
    m, h = F(mid.item()), F(rad.item())
    assert m - h <= F(a) and F(b) <= m + h
    assert h - (F(b) - F(a)) / 2 <= F(2.0**-52)  # outward by at most an ulp or so


@pytest.mark.parametrize("k, side, adaptive", [(8, 8, False), (16, 16, False), (12, 12, False), (16, 32, True)])
def test_average_pooling_covers_the_rounding_of_the_averaged_remainder(k, side, adaptive):
    """An average of remainders is itself a computed sum (a window summed term by term can lose
    (k − 1)u): the pooled remainder must still be at least the exact average of the inputs'."""
    e = torch.full((1, 1, 1, side, side), 0.99 * 2.0**-53, dtype=D)  # (cells, batch, channel, H, W)
    e[..., 0, 0] = 1.0
    z = torch.zeros_like(e)
    x = E.Enclosure(E.TM(z, E._zero(z), e), E.TM(z.clone(), E._zero(z), e.clone()))
    nt = E.EnclosureNumbers(torch.tensor([0.5], dtype=D), torch.tensor([0.5], dtype=D))
    mod = nn.AdaptiveAvgPool2d(side // k) if adaptive else nn.AvgPool2d(k)
    out = E._avg_pool_module(nt, mod, {}, x)
    exact = sum(F(v) for v in e[0, 0, 0, :k, :k].reshape(-1).tolist()) / (k * k)
    assert F(float(out.v.e.reshape(-1)[0])) >= exact


def test_means_over_several_axes_cover_the_rounding_of_the_averaged_remainder():
    """The same for the mean over (channel, H, W) that the re-estimated BatchNorm statistics use."""
    e = torch.full((1, 100, 3, 5, 5), 0.99 * 2.0**-53, dtype=D)
    e[0, 0, 0, 0, 0] = 1.0
    z = torch.zeros_like(e)
    x = E.Enclosure(E.TM(z, E._zero(z), e), E.TM(z.clone(), E._zero(z), e.clone()))
    out = E._mean_over(x, (1, 3, 4))
    exact = sum(F(v) for v in e[0, :, 0].reshape(-1).tolist()) / (100 * 25)
    assert F(float(out.v.e.reshape(-1)[0])) >= exact


def test_the_convolutional_source_bound_covers_underflow():
    """|ΔW|ᵀ·sup|g| through a transposed convolution underflows (|g| below 2⁻¹⁰²⁰, ΔW = 2⁻⁸⁰) and is
    then multiplied by the deferred input remainder 2⁵⁰⁰."""
    mod = nn.Conv2d(1, 1, 3, padding=1, bias=False).double()
    w = E.Param(torch.ones(1, 1, 3, 3, dtype=D), torch.full((1, 1, 3, 3), 2.0**-80, dtype=D))
    nt = E.EnclosureNumbers(torch.tensor([0.5], dtype=D), torch.tensor([2.0**-10], dtype=D))
    z = torch.zeros(1, 1, 1, 4, 4, dtype=D)
    got = A._source_bound(nt, A._Cot(z, z.clone(), z.clone()), E.Source(torch.full((1, 1, 1, 4, 4), 2.0**500, dtype=D)), w,
                          (mod, torch.Size((1, 1, 4, 4))))
    neighbours = sum(sum(1 for di in (-1, 0, 1) for dj in (-1, 0, 1) if 0 <= i + di < 4 and 0 <= j + dj < 4) for i in range(4) for j in range(4))
    # sup|g| may be up to 2⁻¹⁰²¹ (what |s|·h lost to underflow, below the allowance the rule adds)
    assert F(float(got[0])) >= neighbours * F(2) ** -1021 * F(2) ** -80 * F(2) ** 500


def test_second_order_averages_cover_the_rounding_of_the_averaged_radius():
    """The same for the second-order numbers' average pooling (:func:`convexity._averaged`)."""
    from torch.nn import functional as Fn

    from mli_theory.certify import convexity as C

    rad = torch.full((1, 1, 1, 16, 16), 0.99 * 2.0**-53, dtype=D)
    rad[..., 0, 0] = 1.0
    _, r = C._pool(C.Curved(None, torch.zeros_like(rad), rad), lambda t: Fn.avg_pool2d(t, 16), 256)
    assert F(float(r.reshape(-1)[0])) >= sum(F(v) for v in rad.reshape(-1).tolist()) / 256


@pytest.fixture
def flushing():
    """Subnormals flushed to zero (as a user's ``torch.set_flush_denormal(True)`` would), undone after."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def test_enclosures_run_with_gradual_underflow_even_where_the_process_flushes_subnormals(flushing):
    assert E._flushes_denormals()
    with E.strict_arithmetic(torch.device("cpu")):
        assert not E._flushes_denormals()
        x = torch.full((4,), 2.0**-1060, dtype=torch.float64)
        assert float((x * 0.5)[0]) == 2.0**-1061  # exact, as the underflow allowances assume
    assert E._flushes_denormals()  # the caller's setting is back
