"""Soundness of the enclosures against an independent 60-digit evaluation (mpmath).

For random small networks, endpoints, cells and α in the cell, the mpmath value of L(α) and of
L′(α) (forward-mode: every quantity carried with its exact α-derivative) must lie inside the
enclosures returned by :func:`mli_theory.certify.partition.enclose`. The reference knows nothing
of Taylor models: it evaluates the network at one α from the float64 weights converted exactly."""

from __future__ import annotations

import mpmath as mp
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import mli_theory as mt
from mli_theory.certify import enclosures as E
from mli_theory.certify.partition import enclose, prepare
from mli_theory.path import BNPolicy

mp.mp.dps = 60

ACTS = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.1), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "softplus": nn.Softplus,
        "relu6": nn.ReLU6, "hardtanh": lambda: nn.Hardtanh(-0.5, 0.75)}
CLAMPS = {"relu6": (0, 6), "hardtanh": (-0.5, 0.75)}


def _act(name, v, d):
    """(f(v), f′(v)·d) in mpmath."""
    if name == "relu":
        return (v, d) if v > 0 else (mp.mpf(0), mp.mpf(0))
    if name == "leaky":
        return (v, d) if v > 0 else (v / 10 if False else v * mp.mpf(0.1), d * mp.mpf(0.1))
    if name in CLAMPS:  # clamp to [a, b]: slope 1 strictly inside, 0 outside (the kinks have measure zero)
        a, b = (mp.mpf(t) for t in CLAMPS[name])
        return (v, d) if a < v < b else ((a, mp.mpf(0)) if v <= a else (b, mp.mpf(0)))
    if name == "tanh":
        t = mp.tanh(v)
        return t, (1 - t * t) * d
    if name == "sigmoid":
        s = 1 / (1 + mp.exp(-v))
        return s, s * (1 - s) * d
    if name == "gelu":
        phi = mp.exp(-v * v / 2) / mp.sqrt(2 * mp.pi)
        Phi = mp.erfc(-v / mp.sqrt(2)) / 2
        return v * Phi, (Phi + v * phi) * d
    if name == "softplus":
        return mp.log1p(mp.exp(v)), d / (1 + mp.exp(-v))
    raise AssertionError(name)


def _reference(model, act, start, end, x, y, loss, alpha, bn=False):
    """(L, L′) at α by mpmath forward mode on nn.Sequential(Linear, [BatchNorm1d], act, …, Linear)."""
    a = mp.mpf(alpha)

    def par(k):
        s, e = start[k].tolist(), end[k].tolist()
        if isinstance(s, float):
            s, e = [s], [e]
        return s, e

    out_v, out_d = [], []
    for i in range(x.shape[0]):
        hv = [mp.mpf(float(t)) for t in x[i].tolist()]
        hd = [mp.mpf(0)] * len(hv)
        for j, layer in enumerate(model):
            if isinstance(layer, nn.Linear):
                W0, WT = start[f"{j}.weight"].tolist(), end[f"{j}.weight"].tolist()
                b0, bT = start[f"{j}.bias"].tolist(), end[f"{j}.bias"].tolist()
                nv, nd = [], []
                for r in range(len(W0)):
                    acc_v = mp.mpf(b0[r]) + a * (mp.mpf(bT[r]) - mp.mpf(b0[r]))
                    acc_d = mp.mpf(bT[r]) - mp.mpf(b0[r])
                    for c in range(len(hv)):
                        w = mp.mpf(W0[r][c]) + a * (mp.mpf(WT[r][c]) - mp.mpf(W0[r][c]))
                        dw = mp.mpf(WT[r][c]) - mp.mpf(W0[r][c])
                        acc_v += w * hv[c]
                        acc_d += dw * hv[c] + w * hd[c]
                    nv.append(acc_v)
                    nd.append(acc_d)
                hv, hd = nv, nd
            elif isinstance(layer, nn.BatchNorm1d):  # frozen: statistics of θT; γ, β move
                mu, var = end[f"{j}.running_mean"].tolist(), end[f"{j}.running_var"].tolist()
                g0, gT = start[f"{j}.weight"].tolist(), end[f"{j}.weight"].tolist()
                be0, beT = start[f"{j}.bias"].tolist(), end[f"{j}.bias"].tolist()
                nv, nd = [], []
                for c in range(len(hv)):
                    r = 1 / mp.sqrt(mp.mpf(var[c]) + mp.mpf(layer.eps))
                    g = mp.mpf(g0[c]) + a * (mp.mpf(gT[c]) - mp.mpf(g0[c]))
                    dg = mp.mpf(gT[c]) - mp.mpf(g0[c])
                    be = mp.mpf(be0[c]) + a * (mp.mpf(beT[c]) - mp.mpf(be0[c]))
                    dbe = mp.mpf(beT[c]) - mp.mpf(be0[c])
                    u = (hv[c] - mp.mpf(mu[c])) * r
                    nv.append(u * g + be)
                    nd.append(hd[c] * r * g + u * dg + dbe)
                hv, hd = nv, nd
            else:
                pairs = [_act(act, v, d) for v, d in zip(hv, hd)]
                hv, hd = [p[0] for p in pairs], [p[1] for p in pairs]
        out_v.append(hv)
        out_d.append(hd)
    if loss == "mse":
        N = len(out_v) * len(out_v[0])
        L = sum((v - mp.mpf(float(t))) ** 2 for row, trow in zip(out_v, y.tolist()) for v, t in zip(row, trow)) / N
        dL = sum(2 * (v - mp.mpf(float(t))) * d for row, drow, trow in zip(out_v, out_d, y.tolist()) for v, d, t in zip(row, drow, trow)) / N
        return L, dL
    L, dL = mp.mpf(0), mp.mpf(0)
    for row, drow, lab in zip(out_v, out_d, y.tolist()):
        # in differences to the label's logit: no cancellation when the label's probability is
        # within 10^-60 of 1 (a reference that computed Σ p_j z′_j − z′_y kept only the digits of
        # 1 − p_y that 60 digits leave, and once disagreed with a correct enclosure in the 9th digit)
        u = [v - row[lab] for v in row]
        du = [d - drow[lab] for d in drow]
        m = max(u)
        ex = [mp.exp(v - m) for v in u]
        s = sum(ex)
        others = sum(mp.exp(v) for j, v in enumerate(u) if j != lab)
        L += mp.log1p(others) if m <= 0 else m + mp.log(s)
        dL += sum(e_ / s * d for j, (e_, d) in enumerate(zip(ex, du)) if j != lab)
    n = len(out_v)
    return L / n, dL / n


@st.composite
def cases(draw):
    act = draw(st.sampled_from(sorted(ACTS)))
    depth = draw(st.integers(1, 2))
    widths = [draw(st.integers(1, 4)) for _ in range(depth + 1)] + [draw(st.integers(1, 3))]
    loss = draw(st.sampled_from(["mse", "ce"]))
    if loss == "ce":
        widths[-1] = max(2, widths[-1])
    bn = draw(st.booleans())
    n = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**20))
    scale = draw(st.sampled_from([1e-3, 0.3, 1.0, 5.0]))
    # a cell with dyadic ends: [k, k + 1]·2^-j, including narrow ones and both ends of [0, 1]
    j = draw(st.sampled_from([0, 1, 3, 6, 12, 30]))
    k = draw(st.integers(0, 2**j - 1))
    fracs = draw(st.lists(st.floats(0, 1), min_size=1, max_size=3))
    return act, widths, loss, bn, n, seed, scale, (k / 2**j, (k + 1) / 2**j), fracs


def _build(act, widths, bn, seed, scale, loss, n):
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            if bn:
                layers.append(nn.BatchNorm1d(b))
            layers.append(ACTS[act]())
    model = nn.Sequential(*layers).double().eval()
    start = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            start[k] = torch.randn(v.shape, generator=g, dtype=torch.float64)
            if k.endswith("running_var"):
                start[k] = start[k].abs() + 0.1
        else:
            start[k] = v.clone()
    end = {k: (v + scale * torch.randn(v.shape, generator=g, dtype=torch.float64) if v.is_floating_point() else v.clone()) for k, v in start.items()}
    for k in end:
        if k.endswith("running_var"):
            end[k] = end[k].abs() + 0.1
    x = torch.randn(n, widths[0], generator=g, dtype=torch.float64) * 2
    y = torch.randn(n, widths[-1], generator=g, dtype=torch.float64) if loss == "mse" else torch.randint(0, widths[-1], (n,), generator=g)
    return model, start, end, x, y


@settings(deadline=None)  # example count from the profile: fast 25, ci 60, stress 400
@given(cases(), st.booleans())
def test_enclosures_contain_the_60_digit_loss_and_slope(case, float32):
    """``float32``: the remainders' non-negative products are computed in float32 whatever their
    length (``UPPER32_MIN_K`` = 1; by default only products of length ≥ 64 are);
    the derivative's centre is ĝ·W + (ĉ′ − ĝ)·W wherever that applies (``SHARED_MAX_DENSITY`` = 1)."""
    from mli_theory.certify import enclosures as E

    act, widths, loss, bn, n, seed, scale, (ca, cb), fracs = case
    model, start, end, x, y = _build(act, widths, bn, seed, scale, loss, n)
    line = mt.make_line(model, start, end, dtype=torch.float64)
    data = mt.Dataset(x, y, loss, "t")
    prob = prepare(line, data, BNPolicy.FROZEN)
    saved, saved_share = E.UPPER32_MIN_K, E.SHARED_MAX_DENSITY
    E.UPPER32_MIN_K = 1 if float32 else saved
    E.SHARED_MAX_DENSITY = 1.0 if float32 else saved_share  # the sparse product of ĉ′ − ĝ whenever it applies
    try:
        (dlo, dhi), (llo, lhi) = (t[0] for t in enclose(prob, [ca], [cb]))
    except Exception as exc:  # softplus past its threshold is declined, never enclosed wrongly
        assert act == "softplus", exc
        return
    finally:
        E.UPPER32_MIN_K, E.SHARED_MAX_DENSITY = saved, saved_share
    for f in fracs:
        alpha = ca + f * (cb - ca)
        L, dL = _reference(model, act, start, end, x, y, loss, alpha, bn)
        assert mp.mpf(llo) <= L <= mp.mpf(lhi), (case, float(L), llo, lhi)
        assert mp.mpf(dlo) <= dL <= mp.mpf(dhi), (case, float(dL), dlo, dhi)


@settings(deadline=None)
@given(cases(), st.booleans())
def test_point_enclosures_contain_the_60_digit_loss(case, exact_remainders):
    """The validation's point walks (values only, one product per Linear layer, the remainder's
    cheap bound or, with ``exact_remainders``, always the product) contain L at their points."""
    from mli_theory.certify import enclosures as E
    from mli_theory.certify.partition import enclose_values

    act, widths, loss, bn, n, seed, scale, (ca, cb), fracs = case
    model, start, end, x, y = _build(act, widths, bn, seed, scale, loss, n)
    prob = prepare(mt.make_line(model, start, end, dtype=torch.float64), mt.Dataset(x, y, loss, "t"), BNPolicy.FROZEN)
    points = sorted({ca + f * (cb - ca) for f in fracs} | {ca})
    saved = E._POINT_CHEAP
    E._POINT_CHEAP = 0.0 if exact_remainders else saved
    try:
        got = enclose_values(prob, points)
    except Exception as exc:  # softplus past its threshold is declined, never enclosed wrongly
        assert act == "softplus", exc
        return
    finally:
        E._POINT_CHEAP = saved
    for alpha, (lo, hi) in zip(points, got):
        L, _ = _reference(model, act, start, end, x, y, loss, alpha, bn)
        assert mp.mpf(lo) <= L <= mp.mpf(hi), (case, alpha, float(L), lo, hi)


@pytest.mark.parametrize("spec", ["_TANH", "_SIGMOID", "_GELU", "_SOFTPLUS"])
def test_sup_bounds_of_second_and_third_derivatives_dominate_a_dense_grid(spec):
    """The listed maximisers make _sup_at an upper bound of |f″|, |f‴| on any interval."""
    s = getattr(E, spec)
    g = torch.Generator().manual_seed(0)
    ends = torch.rand(300, 2, generator=g, dtype=torch.float64) * 24 - 12
    lo, hi = ends.min(1).values, ends.max(1).values
    for fn, peaks, scale in ((s.f2, s.peaks2, s.scale2), (s.f3, s.peaks3, s.scale3)):
        bound = E._sup_at(fn, lo, hi, peaks, scale)
        t = torch.linspace(0, 1, 4001, dtype=torch.float64)
        pts = lo[:, None] + (hi - lo)[:, None] * t[None, :]
        true = fn(pts).abs().amax(1)
        assert bool((bound >= true).all())


@pytest.mark.parametrize("rows", [None, 16])
def test_cpu_float64_convolution_is_a_dot_product_per_output(rows, monkeypatch):
    """The enclosures' convolution on CPU float64 (:func:`conv2d_dots`: im2col + gemm per block of
    output positions) rests on the argument that every output is a computed dot product of length K
    (in whatever summation order the CPU's BLAS picks), so that |conv − exact| ≤ γ_K·(|W| * |x|)
    entrywise, the allowance the rules add. Checked against exact rational dot products, in one block
    and (``rows`` = 16) in many. An FFT or Winograd algorithm has no such entrywise bound (its error
    scales with the norms of whole rows), and the small outputs here would show it."""
    from fractions import Fraction

    import torch.nn.functional as F

    from mli_theory.certify import enclosures as E
    from mli_theory.certify.enclosures import _conv_f, gamma

    if rows is not None:
        monkeypatch.setattr(E, "CONV_ROWS", rows)
    g = torch.Generator().manual_seed(0)
    for cin, cout, hw, stride, pad, dil in [(1, 8, 8, 1, 1, 1), (3, 5, 9, 2, 0, 1), (4, 6, 7, 1, 2, 2)]:
        x = torch.randn(3, cin, hw, hw, dtype=torch.float64, generator=g)
        x[0, 0, :2] *= 1e-9  # outputs much smaller than their terms' magnitudes
        ws = [torch.randn(cout, cin, 3, 3, dtype=torch.float64, generator=g) for _ in range(2)]
        fast = _conv_f(2, (stride, stride), (pad, pad), (dil, dil), 1).multi(x, ws)
        cols = F.unfold(x, (3, 3), dilation=dil, padding=pad, stride=stride)  # (n, K, L): moves entries only
        oh = (hw + 2 * pad - dil * 2 - 1) // stride + 1
        k = cols.shape[1]
        for w, got in zip(ws, fast):
            wm = w.reshape(cout, -1)
            mag = torch.matmul(wm.abs(), cols.abs()).reshape(3, cout, oh, oh)
            wf = [[Fraction(v) for v in row] for row in wm.tolist()]
            for b in range(3):
                cf = [[Fraction(v) for v in col] for col in cols[b].T.tolist()]  # L columns of K
                exact = [[float(sum(a * c for a, c in zip(row, col))) for col in cf] for row in wf]
                err = (got[b].reshape(cout, -1) - torch.tensor(exact, dtype=torch.float64)).abs()
                allowed = mag[b].reshape(cout, -1) * gamma(k + 1) + 1e-300  # γ_{K+1}: the exact sum rounded once more
                assert bool((err <= allowed).all()), float((err / allowed).max())


@pytest.mark.parametrize("rows", [3, 64, 2048])
def test_conv2d_dots_computes_what_conv2d_does(rows, monkeypatch):
    """:func:`conv2d_dots` against ``F.conv2d`` on rectangular inputs and kernels, strides, paddings
    and dilations per axis, 1 × 1 kernels, more input than output channels and blocks of ``rows``
    output positions (one image per block, several, all in one): equal within the dot products'
    rounding γ_K·(|W| * |x|), so no field or kernel entry is misplaced (which would err by O(1))."""
    import torch.nn.functional as F

    from mli_theory.certify import enclosures as E

    monkeypatch.setattr(E, "CONV_ROWS", rows)
    g = torch.Generator().manual_seed(3)
    for b, cin, cout, (hgt, wid), (kh, kw), stride, padding, dilation in [
        (5, 3, 4, (9, 7), (3, 2), (2, 1), (1, 0), (1, 2)),
        (4, 6, 2, (8, 8), (1, 1), (2, 2), (0, 0), (1, 1)),
        (3, 2, 5, (6, 10), (3, 3), (1, 1), (2, 1), (2, 1)),
        (2, 4, 3, (5, 5), (5, 5), (1, 1), (0, 0), (1, 1)),
    ]:
        x = torch.randn(b, cin, hgt, wid, dtype=torch.float64, generator=g)
        w = torch.randn(cout, cin, kh, kw, dtype=torch.float64, generator=g)
        got = E.conv2d_dots(x, w, stride, padding, dilation)
        want = F.conv2d(x, w, None, stride, padding, dilation)
        assert got.shape == want.shape and got.is_contiguous()
        allowed = F.conv2d(x.abs(), w.abs(), None, stride, padding, dilation) * (2 * E.gamma(cin * kh * kw + 2))
        assert bool(((got - want).abs() <= allowed).all())


@pytest.mark.parametrize("rows", [3, 64, 2048])
def test_conv2d_dots_with_a_weight_per_cell_and_uneven_padding(rows, monkeypatch):
    """:func:`conv2d_dots` with a cell axis (x (C, B, Cin, H, W) against w (C, Cout, Cin, kh, kw):
    cell i's images against cell i's kernel) and with (top, bottom, left, right) padding, against
    ``F.conv2d`` of each cell's images padded by ``F.pad``: equal within the dot products' rounding,
    so no cell takes another's kernel and no padded row or column is misplaced."""
    import torch.nn.functional as F

    from mli_theory.certify import enclosures as E

    monkeypatch.setattr(E, "CONV_ROWS", rows)
    plain_empty = torch.Tensor.new_empty

    def poisoned(self, *size, **kw):  # fresh memory full of NaN: padding left unset would show
        return plain_empty(self, *size, **kw).fill_(float("nan"))

    monkeypatch.setattr(torch.Tensor, "new_empty", poisoned)
    g = torch.Generator().manual_seed(5)
    for cells, b, cin, cout, (hgt, wid), (kh, kw), stride, pads, dilation in [
        (3, 4, 2, 5, (6, 7), (3, 3), (1, 1), (2, 0, 1, 3), (1, 1)),
        (2, 1, 3, 2, (5, 5), (3, 2), (2, 1), (0, 1, 1, 1), (1, 2)),
        (4, 3, 1, 4, (8, 8), (1, 1), (1, 1), (1, 1, 1, 1), (1, 1)),
        (1, 5, 4, 3, (4, 6), (2, 2), (1, 1), (0, 0, 0, 0), (2, 1)),
    ]:
        x = torch.randn(cells, b, cin, hgt, wid, dtype=torch.float64, generator=g)
        w = torch.randn(cells, cout, cin, kh, kw, dtype=torch.float64, generator=g)
        got = E.conv2d_dots(x, w, stride, pads, dilation)
        for i in range(cells):
            xi = F.pad(x[i], (pads[2], pads[3], pads[0], pads[1]))
            want = F.conv2d(xi, w[i], None, stride, 0, dilation)
            allowed = F.conv2d(xi.abs(), w[i].abs(), None, stride, 0, dilation) * (2 * E.gamma(cin * kh * kw + 2))
            assert got[i].shape == want.shape
            assert bool(((got[i] - want).abs() <= allowed).all())
            one = E.conv2d_dots(x[i], w[i], stride, pads, dilation)  # no cell axis, uneven padding
            assert one.shape == want.shape and bool(((one - want).abs() <= allowed).all())
    with pytest.raises(ValueError, match="per-cell weights"):
        E.conv2d_dots(torch.zeros(2, 1, 1, 3, 3, dtype=torch.float64), torch.zeros(3, 1, 1, 1, 1, dtype=torch.float64), (1, 1), (0, 0), (1, 1))


@settings(deadline=None)
@given(st.sampled_from([(8, 3, 1, (1, 1, 1, 1)), (9, 3, 1, (2, 0, 0, 1)), (16, 1, 2, (0, 0, 0, 0))]), st.integers(1, 3),
       st.sampled_from([1e-45, 1e-20, 1.0, 1e30, 1e39]), st.sampled_from([1e-40, 1.0, 1e20]), st.floats(0.0, 0.9), st.integers(0, 2**20))
def test_upper_conv2d_dots_with_a_weight_per_cell_bounds_each_cells_exact_convolution(geometry, cells, scale_x, scale_w, zeros, seed):
    """The per-cell form of :func:`upper_conv2d_dots` ≥ each cell's exact convolution with its own
    kernel (rational dot products), float32 where K ≥ 64 and sound, float64 else or past float32's
    range (1e30 · 1e20: products beyond it, so the float32 sums overflow), and within float32's
    accuracy of the exact value plus the underflow allowance."""
    from fractions import Fraction

    import torch.nn.functional as F

    from mli_theory.certify.enclosures import upper_conv2d_dots

    cin, kern, stride, pads = geometry
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(cells, 2, cin, 5, 4, generator=g, dtype=torch.float64) * scale_x
    x[torch.rand(x.shape, generator=g) < zeros] = 0.0
    w = torch.rand(cells, 2, cin, kern, kern, generator=g, dtype=torch.float64) * scale_w
    got = upper_conv2d_dots(x, w, (stride, stride), pads, (1, 1))
    assert got.dtype == torch.float64 and bool(torch.isfinite(got).all())
    for i in range(cells):
        cols = F.unfold(F.pad(x[i], (pads[2], pads[3], pads[0], pads[1])), (kern, kern), stride=stride)  # moves entries only
        k = cols.shape[1]
        wf = [[Fraction(v) for v in row] for row in w[i].reshape(2, -1).tolist()]
        flat = got[i].reshape(2, 2, -1)
        assert flat.shape[-1] == cols.shape[-1]
        for b in range(2):
            for li, col in enumerate(cols[b].T.tolist()):
                cf = [Fraction(v) for v in col]
                for o in range(2):
                    exact = sum(a * c for a, c in zip(wf[o], cf))
                    value = float(flat[b, o, li])
                    assert Fraction(value) >= exact, (i, b, o, li, value, float(exact))
                    slack = float(exact) * (4 * k * 2.0**-24 + 1e-12) + 8 * k * 2.0**-126 * (2 + scale_x + scale_w)
                    assert value <= float(exact) + slack


def test_upper_matmul_whose_float32_sums_overflow_falls_back_to_float64():
    """Operands inside float32's range whose products are not (1e30 · 1e20): the float32 sums are
    infinite, which the overflow test (k·max â·max b̂ ≥ 2¹²⁶) sends to the finiteness check and so to
    float64; operands whose products stay far below it skip that check and still bound the product."""
    from mli_theory.certify.enclosures import upper_matmul

    g = torch.Generator().manual_seed(1)
    for scale_a, scale_b in [(1e30, 1e20), (1e18, 1e18), (1e-3, 1.0)]:
        a = torch.rand(3, 100, generator=g, dtype=torch.float64) * scale_a
        b = torch.rand(100, 2, generator=g, dtype=torch.float64) * scale_b
        got = upper_matmul(a, b)
        assert bool(torch.isfinite(got).all())
        exact = _exact_matmul(a, b)
        from fractions import Fraction

        assert all(Fraction(float(got[i, j])) >= exact[i][j] for i in range(3) for j in range(2))
        assert bool((got <= torch.matmul(a, b) * (1 + 4 * 100 * 2.0**-24 + 1e-12)).all())


def _exact_matmul(a: torch.Tensor, b: torch.Tensor) -> list[list]:
    from fractions import Fraction

    fa = [[Fraction(v) for v in row] for row in a.tolist()]
    fb = [[Fraction(v) for v in col] for col in b.T.tolist()]
    return [[sum(x * y for x, y in zip(row, col)) for col in fb] for row in fa]


@settings(deadline=None)
@given(st.integers(1, 4), st.sampled_from([1, 5, 63, 64, 200]), st.integers(1, 3), st.sampled_from([1e-45, 1e-39, 1e-20, 1.0, 1e18, 1e30, 1e39]),
       st.sampled_from([1e-40, 1e-3, 1.0, 1e20]), st.floats(0.0, 0.9), st.integers(0, 2**20))
def test_upper_matmul_bounds_the_exact_product(rows, k, cols, scale_a, scale_b, zeros, seed):
    """upper_matmul(a, b) ≥ a @ b exactly (rational arithmetic), for non-negative operands from
    float32's subnormals to beyond its range (where it falls back to float64), and it is tight:
    within float32's accuracy of the exact product plus the underflow allowance."""
    from mli_theory.certify.enclosures import upper_matmul

    g = torch.Generator().manual_seed(seed)
    a = torch.rand(rows, k, generator=g, dtype=torch.float64) * scale_a
    b = torch.rand(k, cols, generator=g, dtype=torch.float64) * scale_b
    a[torch.rand(rows, k, generator=g) < zeros] = 0.0
    got = upper_matmul(a, b)
    assert got.dtype == torch.float64 and got.shape == (rows, cols)
    exact = _exact_matmul(a, b)
    for i in range(rows):
        for j in range(cols):
            from fractions import Fraction

            assert Fraction(float(got[i, j])) >= exact[i][j], (i, j, float(got[i, j]), float(exact[i][j]))
            slack = float(exact[i][j]) * (4 * k * 2.0**-24 + 1e-12) + 8 * k * 2.0**-126 * (2 + scale_a + scale_b)
            assert float(got[i, j]) <= float(exact[i][j]) + slack


@settings(deadline=None)
@given(st.sampled_from([(1, 3, 1, 1), (8, 3, 1, 1), (9, 3, 2, 0), (16, 1, 1, 0)]), st.integers(1, 3),
       st.sampled_from([1e-45, 1e-39, 1e-20, 1.0, 1e18, 1e39]), st.sampled_from([1e-40, 1e-3, 1.0, 1e20]),
       st.floats(0.0, 0.9), st.integers(0, 2**20))
def test_upper_conv2d_dots_bounds_the_exact_convolution(geometry, cout, scale_x, scale_w, zeros, seed):
    """upper_conv2d_dots(x, w) ≥ the exact convolution (rational dot products over the receptive
    fields), for non-negative operands from float32's subnormals to beyond its range (where it falls
    back to float64), in float32 where K = Cin·kh·kw ≥ 64 and in float64 below, and it is tight:
    within float32's accuracy of the exact value plus the underflow allowance."""
    from fractions import Fraction

    import torch.nn.functional as F

    from mli_theory.certify.enclosures import upper_conv2d_dots

    cin, kern, stride, pad = geometry
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, cin, 5, 4, generator=g, dtype=torch.float64) * scale_x
    x[torch.rand(x.shape, generator=g) < zeros] = 0.0
    w = torch.rand(cout, cin, kern, kern, generator=g, dtype=torch.float64) * scale_w
    got = upper_conv2d_dots(x, w, (stride, stride), (pad, pad), (1, 1))
    cols = F.unfold(x, (kern, kern), padding=pad, stride=stride)  # (2, K, L): moves entries only
    k = cols.shape[1]
    assert got.shape[:2] == (2, cout) and got.shape[2] * got.shape[3] == cols.shape[2]
    wf = [[Fraction(v) for v in row] for row in w.reshape(cout, -1).tolist()]
    flat = got.reshape(2, cout, -1)
    for b in range(2):
        for li, col in enumerate(cols[b].T.tolist()):
            cf = [Fraction(v) for v in col]
            for o in range(cout):
                exact = sum(a * c for a, c in zip(wf[o], cf))
                value = float(flat[b, o, li])
                assert Fraction(value) >= exact, (b, o, li, value, float(exact))
                slack = float(exact) * (4 * k * 2.0**-24 + 1e-12) + 8 * k * 2.0**-126 * (2 + scale_x + scale_w)
                assert value <= float(exact) + slack


def test_upper_matmul_stays_in_float64_unless_float32_is_plain_ieee():
    from mli_theory.certify.enclosures import _float32_is_ieee, gamma, upper_matmul

    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 100, generator=g, dtype=torch.float64)
    b = torch.rand(100, 3, generator=g, dtype=torch.float64)
    assert _float32_is_ieee(torch.device("cpu"))
    fast = upper_matmul(a, b)
    slow = torch.matmul(a, b) * (1.0 + 2.0 * gamma(102))
    assert not torch.equal(fast, slow)  # the float32 route was taken
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # may allow bf16 products on CPU
    try:
        assert not _float32_is_ieee(torch.device("cpu"))
        assert torch.equal(upper_matmul(a, b), slow)
    finally:
        torch.set_float32_matmul_precision(saved)


@pytest.mark.parametrize("name, value, device, ieee", [
    ("ONEDNN_DEFAULT_FPMATH_MODE", "BF16", "cpu", False), ("ONEDNN_DEFAULT_FPMATH_MODE", "any", "cpu", False),
    ("ONEDNN_DEFAULT_FPMATH_MODE", "STRICT", "cpu", True), ("CUBLAS_EMULATE_SINGLE_PRECISION", "1", "cuda", False),
    ("CUBLAS_EMULATE_SINGLE_PRECISION", "1", "cpu", True),
])
def test_float32_products_stay_off_when_the_environment_lowers_their_precision(name, value, device, ieee, monkeypatch):
    """oneDNN and cuBLAS read these variables to compute float32 products in bf16/tf32 or by
    emulation: float32 is then not plain IEEE and every product stays in float64."""
    from mli_theory.certify.enclosures import _float32_is_ieee

    monkeypatch.setenv(name, value)
    assert not torch.backends.cuda.matmul.allow_tf32  # the default: only the variable decides here
    assert _float32_is_ieee(torch.device(device)) is ieee


@pytest.mark.parametrize("fast, g_scale, w_scale, shared", [
    (False, 1.0, 1.0, False), (True, 1.0, 1.0, False), (False, 1.0, 1.0, True), (True, 1.0, 1.0, True),
    # float32's subnormals and below, and past its range (float32 remainder products)
    (True, 2.0**-140, 1.0, False), (True, 2.0**-170, 1.0, False), (True, 2.0**60, 2.0**-150, False), (True, 2.0**125, 2.0**8, False),
])
def test_the_forward_linear_rule_contains_w_times_x_exactly(fast, g_scale, w_scale, shared, monkeypatch):
    """Rule level: for an input known exactly (remainders 0: x(t) = c + g·t, x′(t) = c′ + g′·t), the
    Linear rule's Taylor models contain the exact rational o(t) = W(m + t)x(t) + b(m + t) and
    o′(t) = ΔW·x(t) + W(m + t)x′(t) + Δb at points of each cell, entrywise. ``fast``: the
    remainders' products in float32 (``UPPER32_MIN_K`` = 1); ``shared``: the derivative's centre as
    ĝ·W + (c′ − ĝ)·W, c′ equal to ĝ but on a few entries where ĝ is large and c′ small (so the
    products' rounding exceeds anything c′ alone accounts for: narrow cells, no bias, and without
    ``fast``, whose absolute underflow floor would cover it). End-to-end tests cannot see a missing
    error term here: other remainders hide it."""
    from fractions import Fraction

    from mli_theory.certify import enclosures as E

    gen = torch.Generator().manual_seed(7)
    k, out, cells, n = 70, 5, 3, 2
    w = E.Param(torch.randn(out, k, generator=gen, dtype=torch.float64) * w_scale, torch.randn(out, k, generator=gen, dtype=torch.float64) * w_scale)
    b = E.Param(torch.randn(out, generator=gen, dtype=torch.float64), torch.randn(out, generator=gen, dtype=torch.float64))
    mid = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    rad = torch.tensor([2.0**-3, 2.0**-6, 2.0**-10], dtype=torch.float64)
    c = torch.randn(cells, n, k, generator=gen, dtype=torch.float64) * (3 * g_scale)
    g = torch.randn(cells, n, k, generator=gen, dtype=torch.float64) * g_scale
    if shared:  # narrow cells and a small input, so that nothing else covers the products' rounding
        rad = torch.full((cells,), 2.0**-30, dtype=torch.float64)
        c, g = c * 1e-8, g * 1e-8
        dc = g.clone()
        dc[:, :, :2] = 0.0  # 12 of 420 entries differ
        g[:, :, :2] = torch.randn(cells, n, 2, generator=gen, dtype=torch.float64)
    else:
        dc = torch.randn(cells, n, k, generator=gen, dtype=torch.float64) * g_scale
    dg = torch.randn(cells, n, k, generator=gen, dtype=torch.float64) * (g_scale * (1e-8 if shared else 1.0))
    zero = torch.zeros((), dtype=torch.float64)
    x = E.Enclosure(E.TM(c, g, zero), E.TM(dc, dg, zero))
    monkeypatch.setattr(E, "UPPER32_MIN_K", 1 if fast else 10**9)
    monkeypatch.setattr(E, "SHARED_MAX_DENSITY", 0.05 if shared else 0.0)
    used = {"shared": 0}

    def spy(name, key):
        real = getattr(E, name)

        def call(*a):
            out = real(*a)
            used[key] += out is not None
            return out
        monkeypatch.setattr(E, name, call)

    spy("_shared_difference", "shared")
    if shared or g_scale < 1.0:  # no bias: its rounding allowance would cover everything at these scales
        b = E.Param(torch.zeros(out, dtype=torch.float64), torch.zeros(out, dtype=torch.float64))
    o = E._linear(E.EnclosureNumbers(mid, rad), x, w, b)
    assert used["shared"] == int(shared)
    F = Fraction
    for i in range(cells):
        m, h = F(mid[i].item()), F(rad[i].item())
        for frac in (F(-1), F(-1, 3), F(0), F(1, 2), F(1)):
            t = frac * h
            wt = [[F(a) + (m + t) * F(d) for a, d in zip(ra, rd)] for ra, rd in zip(w.w0.tolist(), w.dw.tolist())]
            bt = [F(a) + (m + t) * F(d) for a, d in zip(b.w0.tolist(), b.dw.tolist())]
            for j in range(n):
                xt = [F(a) + t * F(d) for a, d in zip(c[i, j].tolist(), g[i, j].tolist())]
                dxt = [F(a) + t * F(d) for a, d in zip(dc[i, j].tolist(), dg[i, j].tolist())]
                for r in range(out):
                    val = sum(wv * xv for wv, xv in zip(wt[r], xt)) + bt[r]
                    der = (sum(F(d) * xv for d, xv in zip(w.dw[r].tolist(), xt)) + sum(wv * dv for wv, dv in zip(wt[r], dxt))
                           + F(b.dw[r].item()))
                    for tm, exact in ((o.v, val), (o.d, der)):
                        model = F(tm.c.expand(cells, n, out)[i, j, r].item()) + t * F(tm.g.expand(cells, n, out)[i, j, r].item())
                        assert abs(exact - model) <= F(tm.e.expand(cells, n, out)[i, j, r].item()), (tm is o.d, i, j, r, float(frac))


@pytest.mark.parametrize("fast", [False, True])
def test_the_forward_linear_rule_covers_its_inputs_remainders_at_their_worst(fast, monkeypatch):
    """Rule level, the remainders' share: for inputs x(t) = ĉ + ĝt + δ and x′(t) = ĉ′ + ĝ′t + δ′
    with |δ| ≤ e, |δ′| ≤ e′ (non-zero), and the remainders not deferred (the forward rule), the
    Linear rule's Taylor models contain the exact rational o(t) and o′(t) = ΔW·x(t) + W(m + t)x′(t)
    + Δb for the worst δ, δ′ of each output entry: δ = e·sign(ΔW_r) with δ′ = e′·sign(W(m + t)_r) for
    o′, δ = e·sign(W(m + t)_r) for o. Dropping or underestimating the ΔW·δ term of o′ (an upper
    bound computed in float32 with ``fast``) fails it."""
    from fractions import Fraction

    from mli_theory.certify import enclosures as E

    gen = torch.Generator().manual_seed(11)
    k, out, cells, n = 70, 4, 2, 2
    w = E.Param(torch.randn(out, k, generator=gen, dtype=torch.float64), torch.randn(out, k, generator=gen, dtype=torch.float64))
    b = E.Param(torch.zeros(out, dtype=torch.float64), torch.zeros(out, dtype=torch.float64))
    mid = torch.tensor([0.25, 0.75], dtype=torch.float64)
    rad = torch.tensor([2.0**-4, 2.0**-8], dtype=torch.float64)
    c = torch.randn(cells, n, k, generator=gen, dtype=torch.float64)
    g = torch.randn(cells, n, k, generator=gen, dtype=torch.float64)
    dc = torch.randn(cells, n, k, generator=gen, dtype=torch.float64)
    dg = torch.randn(cells, n, k, generator=gen, dtype=torch.float64)
    e = torch.rand(cells, n, k, generator=gen, dtype=torch.float64) * 0.5
    de = torch.rand(cells, n, k, generator=gen, dtype=torch.float64) * 0.5
    x = E.Enclosure(E.TM(c, g, e), E.TM(dc, dg, de))
    monkeypatch.setattr(E, "UPPER32_MIN_K", 1 if fast else 10**9)
    nt = E.EnclosureNumbers(mid, rad)
    assert nt.deferred is None  # the forward rule: the derivative carries ΔW·δ itself
    o = E._linear(nt, x, w, b)
    F = Fraction

    def sign(v: Fraction) -> int:
        return 1 if v > 0 else -1 if v < 0 else 0

    for i in range(cells):
        m, h = F(mid[i].item()), F(rad[i].item())
        for frac in (F(-1), F(0), F(1)):
            t = frac * h
            wt = [[F(a) + (m + t) * F(d) for a, d in zip(ra, rd)] for ra, rd in zip(w.w0.tolist(), w.dw.tolist())]
            dws = [[F(d) for d in rd] for rd in w.dw.tolist()]
            for j in range(n):
                base = [F(a) + t * F(d) for a, d in zip(c[i, j].tolist(), g[i, j].tolist())]
                dbase = [F(a) + t * F(d) for a, d in zip(dc[i, j].tolist(), dg[i, j].tolist())]
                ev, dv = [F(v) for v in e[i, j].tolist()], [F(v) for v in de[i, j].tolist()]
                for r in range(out):
                    xt = [bv + ek * sign(d) for bv, ek, d in zip(base, ev, dws[r])]
                    dxt = [bv + ek * sign(wv) for bv, ek, wv in zip(dbase, dv, wt[r])]
                    der = sum(d * xv for d, xv in zip(dws[r], xt)) + sum(wv * dx for wv, dx in zip(wt[r], dxt))
                    xv_t = [bv + ek * sign(wv) for bv, ek, wv in zip(base, ev, wt[r])]
                    val = sum(wv * xv for wv, xv in zip(wt[r], xv_t))
                    for tm, exact in ((o.v, val), (o.d, der)):
                        model = F(tm.c.expand(cells, n, out)[i, j, r].item()) + t * F(tm.g.expand(cells, n, out)[i, j, r].item())
                        assert abs(exact - model) <= F(tm.e.expand(cells, n, out)[i, j, r].item()), (tm is o.d, i, j, r, float(frac))


def test_unravel_lists_positions_as_nonzero_does():
    """The ReLU rule finds its mixed neurons by flat position and hands the reverse walk their
    coordinates (:class:`Kink.idx`) from ``_unravel``: the same tensors, in the same order, as
    ``nonzero(as_tuple=True)``, for every rank, unit and empty axes included."""
    from mli_theory.certify.enclosures import _unravel

    g = torch.Generator().manual_seed(5)
    for shape in [(3, 5, 7), (4,), (2, 1, 3, 6), (5, 0, 2), (1, 1)]:
        mask = torch.rand(shape, generator=g) < 0.3
        got = _unravel(mask.reshape(-1).nonzero().squeeze(1), torch.Size(shape))
        want = mask.nonzero(as_tuple=True)
        assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want)), shape


def test_the_linear_rule_reads_weight_memos_as_the_reverse_walk_writes_them():
    """One batch of cells memoises weight-only work by (weight, tag) for the forward rules and the
    reverse walk alike, and a chunk whose walk fails is enclosed again with the forward rule on the
    same numbers. So a tag must mean one tensor: after the walk's |ΔW| (out × in) and its float32
    copy are memoised, the forward Linear rule on a square, non-symmetric ΔW gives what it gives on
    fresh numbers (a transposed |ΔW| read under the same tag would change the derivative's bound)."""
    from mli_theory.certify import enclosures as E

    gen = torch.Generator().manual_seed(2)
    k, cells, n = 80, 2, 3
    w = E.Param(torch.randn(k, k, generator=gen, dtype=torch.float64), torch.randn(k, k, generator=gen, dtype=torch.float64) * torch.linspace(0, 2, k, dtype=torch.float64))
    mid = torch.tensor([0.25, 0.75], dtype=torch.float64)
    rad = torch.tensor([2.0**-4, 2.0**-4], dtype=torch.float64)
    x = E.Enclosure(E.TM(torch.randn(cells, n, k, generator=gen, dtype=torch.float64), torch.randn(cells, n, k, generator=gen, dtype=torch.float64),
                         torch.rand(cells, n, k, generator=gen, dtype=torch.float64)),
                    E.TM(torch.randn(cells, n, k, generator=gen, dtype=torch.float64), torch.zeros((), dtype=torch.float64),
                         torch.rand(cells, n, k, generator=gen, dtype=torch.float64)))
    fresh = E._linear(E.EnclosureNumbers(mid, rad), x, w)
    walked = E.EnclosureNumbers(mid, rad)
    adw = walked.memo(w, "abs-dw", lambda: w.dw.abs())  # as adjoint._source_bound and _linear_back do
    E.memo_up32(walked, w, "abs-dw-32", adw, k)
    again = E._linear(walked, x, w)
    for a, b in ((fresh.v, again.v), (fresh.d, again.d)):
        assert torch.equal(a.c, b.c) and torch.equal(a.g, b.g) and torch.equal(a.e, b.e)


def _assert_cell_contains_float64(model, start, end, x, y, loss, k, j, what, adjoint=None, points=(0.0, 0.37, 0.81, 1.0)):
    """Enclose L and L′ on the dyadic cell [k, k + 1]·2^-j (k taken mod 2^j) and check that float64
    forward mode (``torch.func.jvp`` in α through ``functional_call``) lies inside at ``points`` of
    it (fractions of the cell), up to the reference's own rounding. ``adjoint=True``: the kinks'
    reverse walk, which must then be available."""
    from torch.func import functional_call, jvp

    prob = prepare(mt.make_line(model, start, end, dtype=torch.float64), mt.Dataset(x, y, loss, "t"), BNPolicy.FROZEN, adjoint=adjoint)
    assert adjoint is None or prob.adjoint == adjoint, what
    k %= 2**j
    ca, cb = k / 2**j, (k + 1) / 2**j
    (dlo, dhi), (llo, lhi) = (t[0] for t in enclose(prob, [ca], [cb]))

    def loss_at(a):
        out = functional_call(model, {n: start[n] + a * (end[n] - start[n]) for n in start}, (x,))
        return F.mse_loss(out, y) if loss == "mse" else F.cross_entropy(out, y)

    for f in points:
        a = torch.tensor(ca + f * (cb - ca), dtype=torch.float64)
        L, dL = (float(t) for t in jvp(loss_at, (a,), (torch.ones_like(a),)))
        slack = 1e-12 * (1 + abs(L) + abs(dL))
        assert llo - slack <= L <= lhi + slack, (what, loss, f, L, llo, lhi)
        assert dlo - slack <= dL <= dhi + slack, (what, loss, f, dL, dlo, dhi)


def _endpoints_and_data(model, g, x_shape, loss, outputs=2):
    """Random endpoints θ0, θ0 + N(0, 1) of ``model``'s state and random data of ``x_shape`` with
    targets for ``loss`` (MSE: normal, CE: class labels of ``outputs`` classes), all from ``g``."""
    start = {n: torch.randn(v.shape, generator=g, dtype=torch.float64) for n, v in model.state_dict().items()}
    end = {n: v + torch.randn(v.shape, generator=g, dtype=torch.float64) for n, v in start.items()}
    x = torch.randn(*x_shape, generator=g, dtype=torch.float64)
    n = x_shape[0]
    y = torch.randn(n, outputs, generator=g, dtype=torch.float64) if loss == "mse" else torch.randint(0, outputs, (n,), generator=g)
    return start, end, x, y


class _Clamps(nn.Module):
    """Every spelling of a clamp the enclosures take: torch.clamp / clip, the Tensor methods,
    F.hardtanh, F.relu6 and their modules, with one bound or both."""

    def __init__(self, form):
        super().__init__()
        self.form = form
        self.a, self.b = nn.Linear(3, 5), nn.Linear(5, 2)
        self.act = nn.ReLU6() if form == "ReLU6" else nn.Hardtanh(-0.3, 0.2)

    def forward(self, x):
        h = self.a(x)
        if self.form == "clamp":
            h = torch.clamp(h, min=-0.4, max=0.6)
        elif self.form == "clip_max":
            h = torch.clip(h, max=0.3)
        elif self.form == "method_min":
            h = h.clamp(min=0.1)
        elif self.form == "method_clip":
            h = h.clip(-0.25, 0.25)
        elif self.form == "hardtanh":
            h = F.hardtanh(h, -0.5, 0.5)
        elif self.form == "Hardtanh":
            h = self.act(h)
        elif self.form == "ReLU6":
            h = self.act(h * 4)
        else:
            h = F.relu6(h * 4)
        return self.b(h)


@settings(deadline=None, max_examples=30)
@given(st.sampled_from(["clamp", "clip_max", "method_min", "method_clip", "hardtanh", "relu6", "Hardtanh", "ReLU6"]), st.sampled_from(["mse", "ce"]),
       st.integers(0, 2**20), st.sampled_from([1, 3, 6, 10]), st.integers(0, 2**10 - 1), st.sampled_from([None, True]))
def test_clamps_in_every_spelling_are_enclosed(form, loss, seed, j, k, adjoint):
    """L and L′ of nets with clamps (written as functions, methods, hardtanh, relu6) against float64
    forward mode at points of a dyadic cell: the enclosures must contain them (up to the reference's
    own rounding), with the clamp's Clarke term in the forward walk or (``adjoint``) its kinks
    deferred to the reverse walk."""
    model = _Clamps(form).double()
    start, end, x, y = _endpoints_and_data(model, torch.Generator().manual_seed(seed), (6, 3), loss)
    _assert_cell_contains_float64(model, start, end, x, y, loss, k, j, (form, seed), adjoint=adjoint)


class _DeepClamps(nn.Module):
    """Three kink layers (the reverse walk's default) of clamps, ReLU6 and ReLU, with scalings by
    numbers between them: the reverse walk sends cotangents back through every clamp (slope 1
    inside, 0 outside, ½ ± ½ where undecided) and every scaling to the kinks before them."""

    def __init__(self, width):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(3, width), nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, 2)
        self.act = nn.ReLU6()

    def forward(self, x):
        h = torch.clamp(self.a(x), -0.5, 0.7) * 2.0
        h = self.act(3 * self.b(h))
        h = F.relu(self.c(h / 6.0)).clamp(max=0.8)
        return self.d(h.mul(0.5))


@settings(deadline=None, max_examples=25)
@given(st.sampled_from(["mse", "ce"]), st.integers(0, 2**20), st.sampled_from([2, 4, 7]), st.integers(0, 2**7 - 1),
       st.sampled_from([4, 9]))
def test_clamps_in_the_reverse_walk_are_enclosed(loss, seed, j, k, width):
    """A deep net of clamps through the reverse walk (taken by default: three kink layers), against
    float64 forward mode at nine points of a dyadic cell."""
    model = _DeepClamps(width).double()
    start, end, x, y = _endpoints_and_data(model, torch.Generator().manual_seed(seed), (7, 3), loss)
    prob = prepare(mt.make_line(model, start, end, dtype=torch.float64), mt.Dataset(x, y, loss, "t"), BNPolicy.FROZEN)
    assert prob.adjoint, "the reverse walk is this test's subject"
    _assert_cell_contains_float64(model, start, end, x, y, loss, k, j, (loss, seed, width),
                                  points=tuple(i / 8 for i in range(9)))


@pytest.mark.parametrize("adjoint", [False, True])
def test_a_safety_clamp_far_from_the_values_keeps_the_enclosure_tight(adjoint):
    """``clamp(h, -1e16, 1e16)`` is the identity on any sane activation; shifting by 10¹⁶ and back
    rounded h away (L enclosed in [0, 2618] where it is about 7, a red team's note). A bound no entry
    reaches is skipped: the enclosure is that of the net without the clamp, and contains float64."""

    class Net(nn.Module):
        def __init__(self, clamp):
            super().__init__()
            self.clamp = clamp
            self.a, self.b, self.c = nn.Linear(3, 6), nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x):
            h = F.relu(self.a(x))
            h = F.relu(self.b(torch.clamp(h, -1e16, 1e16) if self.clamp else h))
            return self.c(h)

    g = torch.Generator().manual_seed(5)
    model = Net(True).double()
    start = {n: torch.randn(v.shape, generator=g, dtype=torch.float64) for n, v in model.state_dict().items()}
    end = {n: v + torch.randn(v.shape, generator=g, dtype=torch.float64) for n, v in start.items()}
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)
    data = mt.Dataset(x, y, "mse", "t")
    widths = []
    for clamp in (True, False):
        prob = prepare(mt.make_line(Net(clamp).double(), start, end, dtype=torch.float64), data, BNPolicy.FROZEN, adjoint=adjoint)
        d, l = enclose(prob, [0.25], [0.375])
        widths.append((d[0][1] - d[0][0], l[0][1] - l[0][0]))
    assert widths[0] == pytest.approx(widths[1], rel=1e-9), widths
    _assert_cell_contains_float64(model, start, end, x, y, "mse", 2, 3, "safety clamp", adjoint=adjoint or None)


@pytest.mark.parametrize("expr", ["tensor_bound", "inverted", "infinite"])
def test_clamps_the_enclosures_cannot_follow_are_declined(expr):
    """Tensor bounds, min > max (torch returns max everywhere) and infinite bounds: no rule, so the
    certifier says why instead of enclosing something else."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.t = torch.tensor([0.1, 0.2], dtype=torch.float64)

        def forward(self, x):
            h = self.a(x)
            if expr == "tensor_bound":
                return torch.clamp(h, min=self.t)
            if expr == "inverted":
                return torch.clamp(h, min=0.5, max=-0.5)
            return torch.clamp(h, max=float("inf"))

    why = {"tensor_bound": "tensor bounds are not supported", "inverted": "lower clamp bound 0.5 exceeds the upper -0.5",
           "infinite": "must be finite numbers"}[expr]
    _assert_declined(Net().double(), rf"torch.clamp: the rigorous enclosure rule declines these arguments \(.*{why}.*\)")


def _assert_declined(model, match):
    """The certifier refuses ``model`` (2 inputs, 2 outputs, MSE), naming why (``match``)."""
    from mli_theory.certify.partition import Unsupported, decide_by_enclosures

    st_ = {n: v.clone() for n, v in model.state_dict().items()}
    en = {n: v + 1 for n, v in st_.items()}
    data = mt.Dataset(torch.ones(2, 2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64), "mse", "t")
    with pytest.raises(Unsupported, match=match):
        decide_by_enclosures(mt.make_line(model, st_, en, dtype=torch.float64), data, tol=0.0)


def _pool_net(pool, seed, hw):
    """Conv2d → ``pool`` → Flatten → Linear on 1-channel (hw) images, with random endpoints: the
    pool, the net's one nonlinearity, sees negative entries (a padding of zeros would change its
    maxima, which no ReLU after it hides)."""
    g = torch.Generator().manual_seed(seed)
    body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), pool, nn.Flatten()).double()
    with torch.no_grad():
        f = body(torch.zeros(1, 1, *hw, dtype=torch.float64)).shape[1]
    model = nn.Sequential(*body, nn.Linear(f, 2)).double()
    start = {n: torch.randn(v.shape, generator=g, dtype=torch.float64) for n, v in model.state_dict().items()}
    end = {n: v + torch.randn(v.shape, generator=g, dtype=torch.float64) for n, v in start.items()}
    x = torch.randn(4, 1, *hw, generator=g, dtype=torch.float64)
    return model, start, end, x, g


@settings(deadline=None, max_examples=30)
@given(st.sampled_from([(2, None, 0, 1), (3, 2, 1, 1), ((2, 3), (1, 2), 0, (2, 1)), (3, 1, 1, 1), ((3, 1), (2, 1), (1, 0), 1)]),
       st.sampled_from(["mse", "ce"]), st.integers(0, 2**20), st.sampled_from([0, 3, 6, 10]), st.integers(0, 2**10 - 1),
       st.booleans(), st.sampled_from([None, True]))
def test_max_pooling_is_enclosed(geometry, loss, seed, j, k, functional, adjoint):
    """MaxPool2d (module, or F.max_pool2d) as pairwise maxima through the ReLU rule: L and L′ of a
    small CNN against float64 forward mode at points of dyadic cells (kernels, strides, padding —
    taken as copies of the edge, which never beat the window's own entries — and dilation), with
    the forward Clarke rule or (``adjoint``) the kinks in the reverse walk."""
    kernel, stride, padding, dilation = geometry

    class Functional(nn.Module):
        def forward(self, x):
            return F.max_pool2d(x, kernel, stride, padding, dilation)

    pool = Functional() if functional else nn.MaxPool2d(kernel, stride, padding, dilation)
    model, start, end, x, g = _pool_net(pool, seed, (6, 7))
    y = torch.randn(4, 2, generator=g, dtype=torch.float64) if loss == "mse" else torch.randint(0, 2, (4,), generator=g)
    _assert_cell_contains_float64(model, start, end, x, y, loss, k, j, (geometry, functional, seed), adjoint=adjoint,
                                  points=(0.0, 0.2, 0.37, 0.5, 0.81, 1.0))


class _PoolCNN(nn.Module):
    """conv → ReLU → max pool → conv → ReLU6 → max pool (function, padded) → Linear: four kink
    layers, so the reverse walk is the default, and its cotangents pass back through both pools."""

    def __init__(self, stride):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 2, 3, padding=1)
        self.pool = nn.MaxPool2d(2, stride)
        self.fc: nn.Module | None = None  # set by the test once the flattened size is known

    def forward(self, x):
        h = self.pool(F.relu(self.c1(x)))
        h = F.max_pool2d(F.relu6(self.c2(h) * 3), 3, 1, 1)
        return self.fc(h.flatten(1))


@settings(deadline=None, max_examples=20)
@given(st.sampled_from(["mse", "ce"]), st.integers(0, 2**20), st.sampled_from([2, 4, 7]), st.integers(0, 2**7 - 1),
       st.sampled_from([1, 2]))
def test_max_pooling_in_the_reverse_walk_is_enclosed(loss, seed, j, k, stride):
    """A CNN with two max pools among ReLU and ReLU6 layers through the reverse walk (its default
    here), against float64 forward mode at nine points of a dyadic cell."""
    model = _PoolCNN(stride)
    with torch.no_grad():
        f = model.pool(model.c1(torch.zeros(1, 1, 6, 6))).shape[-1]
    model.fc = nn.Linear(2 * f * f, 2)
    model = model.double()
    start, end, x, y = _endpoints_and_data(model, torch.Generator().manual_seed(seed), (3, 1, 6, 6), loss)
    prob = prepare(mt.make_line(model, start, end, dtype=torch.float64), mt.Dataset(x, y, loss, "t"), BNPolicy.FROZEN)
    assert prob.adjoint, "the reverse walk is this test's subject"
    _assert_cell_contains_float64(model, start, end, x, y, loss, k, j, (loss, seed, stride),
                                  points=tuple(i / 8 for i in range(9)))


@pytest.mark.parametrize("pool, why", [(nn.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
                                       (nn.MaxPool2d(3, 1, 1, dilation=2), "padding together with dilation")])
def test_max_pooling_the_enclosures_cannot_follow_is_declined(pool, why):
    """ceil_mode windows, and padding with dilation (the edge copy may lie outside the window): the
    refusal names the layer and the reason."""
    from mli_theory.certify.partition import Unsupported, decide_by_enclosures

    model, start, end, x, _ = _pool_net(pool, 0, (7, 7))
    data = mt.Dataset(x, torch.zeros(4, 2, dtype=torch.float64), "mse", "t")
    with pytest.raises(Unsupported, match=rf"MaxPool2d.*declines these arguments \({why}"):
        decide_by_enclosures(mt.make_line(model, start, end, dtype=torch.float64), data, tol=0.0)


@pytest.mark.parametrize("spelling", ["module_1", "module_true", "function_1", "function_kw_1"])
def test_an_inplace_flag_of_any_true_value_is_a_mutation(spelling):
    """torch tests ``if inplace:``, so ``nn.Hardtanh(inplace=1)`` clamps its input in place. A net
    that discards the result and reads the clamped input (active only for α in (0.53, 0.67), away
    from the validation's points) was certified ``monotone`` from a model that never saw the clamp
    while only ``inplace is True`` counted as a mutation (a red team's find). Now the rise is proven,
    and its witness re-checked by plain torch."""
    from mli_theory.certify.partition import decide_by_enclosures

    flag = True if spelling == "module_true" else 1

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.base, self.l1, self.l2 = nn.Linear(1, 1), nn.Linear(1, 1), nn.Linear(1, 1)
            self.act = nn.Hardtanh(-1e9, 0.5, inplace=flag)

        def forward(self, x):
            g1 = self.l2(self.l1(x))
            g2 = self.l2(self.l1(x))
            if spelling.startswith("module"):
                self.act(g1)
            elif spelling == "function_1":
                F.hardtanh(g1, -1e9, 0.5, 1)
            else:
                F.hardtanh(g1, -1e9, 0.5, inplace=1)
            return self.base(x) + g1 - g2

    def t(v):
        return torch.tensor(v, dtype=torch.float64)

    start = {"base.weight": t([[0.0]]), "base.bias": t([2.0]), "l1.weight": t([[0.0]]), "l1.bias": t([0.0]),
             "l2.weight": t([[120.0]]), "l2.bias": t([-35.0])}
    end = {**start, "base.bias": t([1.0]), "l1.bias": t([1.0]), "l2.weight": t([[20.0]])}
    model = Net().double()
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    v = decide_by_enclosures(mt.make_line(model, start, end, dtype=torch.float64), mt.Dataset(x, y, "mse", "t"), tol=0.1)
    assert v.status == "non_monotone", v

    def plain(a):
        m = Net().double()
        m.load_state_dict({k: start[k] + a * (end[k] - start[k]) for k in start})
        with torch.no_grad():
            return float(F.mse_loss(m.eval()(x), y))

    a, b = v.where
    assert plain(b) - plain(a) > 0.1


class _StoredHalf(float):
    """A float whose ``float()`` is not what it stores: torch reads the stored 0.5."""

    def __float__(self):
        return 1e9


@pytest.mark.parametrize("spelling", ["bound", "module_attribute", "scalar_shift"])
def test_numbers_of_other_types_are_declined(spelling):
    """A subclass of float may answer ``float(v)`` otherwise than torch reads it (a red team's find:
    ``torch.clamp(g, max=v)`` clamped at 0.5 in torch and not at all in the certifier's model, and was
    certified monotone): the rules take only Python's and NumPy's own numbers, else decline by name."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)
            self.act = nn.Hardtanh(-1.0, _StoredHalf(0.5))

        def forward(self, x):
            h = self.a(x)
            if spelling == "bound":
                return torch.clamp(h, max=_StoredHalf(0.5))
            if spelling == "module_attribute":
                return self.act(h)
            return h + _StoredHalf(0.5)

    why = "attribute 'max_val' holds" if spelling == "module_attribute" else ""
    _assert_declined(Net().double(), rf"declines these arguments \(.*{why}.*number of type .*_StoredHalf, not Python's or NumPy's own\)")


def test_torch_keyword_names_reach_the_rules():
    """``torch.clamp(input=…)`` and ``F.max_pool2d(input=…)``: the rules take torch's parameter
    names (an unexpected keyword used to fail inside the rule and read as a failed re-evaluation);
    a keyword no rule knows is declined by name."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            h = F.max_pool2d(input=self.a(x), kernel_size=2)
            return torch.clamp(input=h, min=-0.3, max=0.4).flatten(1)

    g = torch.Generator().manual_seed(3)
    model = Net().double()
    start = {n: torch.randn(v.shape, generator=g, dtype=torch.float64) for n, v in model.state_dict().items()}
    end = {n: v + torch.randn(v.shape, generator=g, dtype=torch.float64) for n, v in start.items()}
    x = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randn(3, 8, generator=g, dtype=torch.float64)
    _assert_cell_contains_float64(model, start, end, x, y, "mse", 5, 4, "input keywords")


def test_a_keyword_a_rule_does_not_take_is_declined_by_name():
    """``torch.tanh(input=h)`` is valid torch; the tanh rule names its argument otherwise, so the
    call is declined and the refusal says which keyword (instead of failing inside the rule)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)

        def forward(self, x):
            return torch.tanh(input=self.a(x))

    _assert_declined(Net().double(), r"declines these arguments \(arguments it does not take: .*'input'")

