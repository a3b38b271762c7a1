"""Remainders carried in Euclidean norm as well as entrywise (certify/enclosures.py).

The Linear rule bounds W(α)δ both by |W(α)|·e (entrywise) and by ‖W(α)‖₂‖δ‖₂ (rows: ‖W(α)_j‖₂‖δ‖₂),
with proven spectral-norm bounds (repeated squaring of the Gram matrix) and proven Euclidean norms.
Each piece is checked here against an independent high-precision value (mpmath), and the whole
enclosure of L and L′ against the 60-digit reference of ``test_enclosure_soundness`` on networks
wide and deep enough for the Euclidean bound to be the one used."""

from __future__ import annotations

import dataclasses

import mpmath as mp
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mli_theory as mt
from mli_theory.certify import enclosures as E
from mli_theory.certify.partition import enclose, prepare
from mli_theory.path import BNPolicy

from test_enclosure_soundness import _build, _reference

mp.mp.dps = 50


def _sigma_max(a: torch.Tensor) -> mp.mpf:
    """The largest singular value at 50 digits (eigenvalues of the exact Gram matrix)."""
    m = mp.matrix(a.tolist())
    g = m.T * m if a.shape[0] >= a.shape[1] else m * m.T
    return mp.sqrt(max(mp.eigsy(g)[0]))


@st.composite
def matrices(draw):
    r, c = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**20))
    scale = draw(st.sampled_from([1e-200, 1e-6, 1.0, 3e5, 1e150]))
    kind = draw(st.sampled_from(["dense", "rank1", "sparse", "zero", "identity-like"]))
    g = torch.Generator().manual_seed(seed)
    if kind == "rank1":
        a = torch.randn(r, 1, generator=g, dtype=torch.float64) @ torch.randn(1, c, generator=g, dtype=torch.float64)
    elif kind == "zero":
        a = torch.zeros(r, c, dtype=torch.float64)
    elif kind == "identity-like":
        a = torch.eye(r, c, dtype=torch.float64) * (1 + 1e-12 * torch.randn(r, c, generator=g, dtype=torch.float64))
    else:
        a = torch.randn(r, c, generator=g, dtype=torch.float64)
        if kind == "sparse":
            a = a * (torch.rand(r, c, generator=g, dtype=torch.float64) < 0.3)
    return a * scale


@settings(deadline=None)
@given(matrices())
def test_spectral_bound_is_an_upper_bound_and_tight(a):
    bound = E._spectral_bound(a)
    true = _sigma_max(a)
    assert mp.mpf(bound) >= true, (a, bound, true)
    # c^(1/2^(J+2)) with c ≤ 6 and J = 5: ≤ 1.03; plus the absolute underflow slack
    assert mp.mpf(bound) <= true * mp.mpf(1.03) + mp.mpf(2.0**-900), (a, bound, true)


def test_spectral_bound_of_a_wide_random_matrix_is_close_to_lapack():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 200, generator=g, dtype=torch.float64) / 10
    s = torch.linalg.matrix_norm(a, 2).item()
    b = E._spectral_bound(a)
    assert s <= b <= 1.06 * s


@settings(deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**20), st.sampled_from([1e-300, 1e-170, 1e-3, 1.0, 1e100]), st.booleans())
def test_euclidean_norm_bound_dominates_the_exact_norm(width, seed, scale, broadcast):
    g = torch.Generator().manual_seed(seed)
    e = torch.rand(3, 1 if broadcast else width, generator=g, dtype=torch.float64) * scale
    n = E._l2(e, width)
    assert n.shape == (3, 1)
    for i in range(3):
        row = [mp.mpf(float(v)) for v in e[i].tolist()]
        if broadcast:
            row = row * width
        true = mp.sqrt(sum(v * v for v in row))
        assert mp.mpf(n[i, 0].item()) >= true
        assert mp.mpf(n[i, 0].item()) <= true * (1 + mp.mpf(1e-12)) + mp.mpf(2.0**-499)


def test_matrix_norms_bound_every_interpolated_matrix_on_a_cell():
    g = torch.Generator().manual_seed(1)
    w0 = torch.randn(20, 30, generator=g, dtype=torch.float64) / 5
    dw = torch.randn(20, 30, generator=g, dtype=torch.float64)
    p = E.Param(w0, dw)
    b = E._matrix_norms(p)
    m = torch.tensor([0.125, 0.5, 0.9375], dtype=torch.float64).reshape(-1, 1)
    h = torch.tensor([0.125, 0.25, 0.0625], dtype=torch.float64).reshape(-1, 1)
    s = E._along_cells(b["s0"], b["sT"], b["sD"], m, h)
    r = E._along_cells(b["r0"], b["rT"], b["rD"], m, h)
    for i in range(3):
        for t in torch.linspace(-1, 1, 41, dtype=torch.float64):
            alpha = (m[i] + t * h[i]).item()
            w = w0 + alpha * dw
            assert torch.linalg.matrix_norm(w, 2).item() <= s[i].item()
            assert bool((torch.linalg.vector_norm(w, dim=1) <= r[i]).all())


@st.composite
def wide_cases(draw):
    act = draw(st.sampled_from(["relu", "leaky", "tanh", "gelu"]))
    depth = draw(st.integers(2, 3))
    widths = [draw(st.integers(2, 5))] + [draw(st.integers(6, 14)) for _ in range(depth)] + [draw(st.integers(2, 3))]
    loss = draw(st.sampled_from(["mse", "ce"]))
    n = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**20))
    scale = draw(st.sampled_from([0.01, 0.3, 1.0]))
    j = draw(st.sampled_from([1, 3, 6, 12]))
    k = draw(st.integers(0, 2**j - 1))
    fracs = draw(st.lists(st.floats(0, 1), min_size=1, max_size=2))
    return act, widths, loss, n, seed, scale, (k / 2**j, (k + 1) / 2**j), fracs


@settings(deadline=None)
@given(wide_cases())
def test_wide_enclosures_contain_the_60_digit_loss_and_slope(case):
    act, widths, loss, n, seed, scale, (ca, cb), fracs = case
    model, start, end, x, y = _build(act, widths, False, seed, scale, loss, n)
    # He-style scaling keeps the activations O(1) with depth, as in trained nets
    for k in start:
        if k.endswith("weight"):
            f = (2.0 / start[k].shape[1]) ** 0.5
            start[k], end[k] = start[k] * f, end[k] * f
    line = mt.make_line(model, start, end, dtype=torch.float64)
    prob = prepare(line, mt.Dataset(x, y, loss, "t"), BNPolicy.FROZEN)
    (dlo, dhi), (llo, lhi) = (t[0] for t in enclose(prob, [ca], [cb]))
    for f in fracs:
        L, dL = _reference(model, act, start, end, x, y, loss, ca + f * (cb - ca))
        assert mp.mpf(llo) <= L <= mp.mpf(lhi), (case, float(L), llo, lhi)
        assert mp.mpf(dlo) <= dL <= mp.mpf(dhi), (case, float(dL), dlo, dhi)


def _deep(act: str = "relu", loss: str = "ce", seed: int = 3):
    """A 3-hidden-layer net of width 256 (He-scaled ends), 8 examples: wide enough for the
    Euclidean bounds to be the ones used."""
    g = torch.Generator().manual_seed(seed)
    widths = [16, 256, 256, 256, 3]
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU() if act == "relu" else torch.nn.Tanh())
    model = torch.nn.Sequential(*layers).double()
    start = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) * ((2.0 / v.shape[-1]) ** 0.5 if v.dim() == 2 else 0.1)
             for k, v in model.state_dict().items()}
    end = {k: v + torch.randn(v.shape, generator=g, dtype=torch.float64) * ((2.0 / v.shape[-1]) ** 0.5 if v.dim() == 2 else 0.1)
           for k, v in start.items()}
    x = torch.randn(8, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g) if loss == "ce" else torch.randn(8, 3, generator=g, dtype=torch.float64)
    return model, start, end, x, y


def _deep_problem(act: str = "relu", loss: str = "ce"):
    model, start, end, x, y = _deep(act, loss)
    line = mt.make_line(model, start, end, dtype=torch.float64)
    return prepare(line, mt.Dataset(x, y, loss, "t"), BNPolicy.FROZEN)


def _arb_reference(model, act, start, end, x, y, loss, alpha):
    """(L, L′) at a dyadic α as python-flint balls (rigorous), or None when a ReLU input ball
    contains 0 (its derivative is then not defined by this reference)."""
    flint = pytest.importorskip("flint")
    arb, mat = flint.arb, flint.arb_mat
    a = arb(alpha)
    with flint.ctx.workprec(256):
        layers = []
        for j, layer in enumerate(model):
            if isinstance(layer, torch.nn.Linear):
                W0, WT = mat(start[f"{j}.weight"].tolist()), mat(end[f"{j}.weight"].tolist())
                b0 = mat([[v] for v in start[f"{j}.bias"].tolist()])
                bT = mat([[v] for v in end[f"{j}.bias"].tolist()])
                layers.append((W0 + (WT - W0) * a, WT - W0, b0 + (bT - b0) * a, bT - b0))
            else:
                layers.append(None)
        total, dtotal = arb(0), arb(0)
        for i in range(x.shape[0]):
            hv = mat([[v] for v in x[i].tolist()])
            hd = mat(hv.nrows(), 1)
            for layer in layers:
                if layer is not None:
                    W, dW, b, db = layer
                    hv, hd = W * hv + b, W * hd + dW * hv + db
                    continue
                nv, nd = [], []
                for r in range(hv.nrows()):
                    v, d = hv[r, 0], hd[r, 0]
                    if act == "relu":
                        if v > 0:
                            nv.append(v)
                            nd.append(d)
                        elif v < 0:
                            nv.append(arb(0))
                            nd.append(arb(0))
                        else:
                            return None
                    else:
                        t = v.tanh()
                        nv.append(t)
                        nd.append((1 - t * t) * d)
                hv, hd = mat([[v] for v in nv]), mat([[d] for d in nd])
            z = [hv[r, 0] for r in range(hv.nrows())]
            dz = [hd[r, 0] for r in range(hd.nrows())]
            if loss == "mse":
                t_ = y[i].tolist()
                total += sum((zk - arb(tk)) ** 2 for zk, tk in zip(z, t_))
                dtotal += sum(2 * (zk - arb(tk)) * dk for zk, tk, dk in zip(z, t_, dz))
            else:
                lab = int(y[i])
                ex = [(zk - z[lab]).exp() for zk in z]
                s_ = sum(ex)
                total += s_.log()
                dtotal += sum(e_ * (dk - dz[lab]) for e_, dk in zip(ex, dz)) / s_
        count = x.shape[0] * (z.__len__() if loss == "mse" else 1)
        return total / count, dtotal / count


@pytest.mark.parametrize("act,loss", [("relu", "ce"), ("relu", "mse"), ("tanh", "ce")])
def test_wide_enclosures_contain_the_arb_loss_and_slope(act, loss):
    """Where the Euclidean bounds are in use (width 256, depth 3): every enclosure contains the
    python-flint ball of L(α) and L′(α) at dyadic α in the cell, on narrow and wide cells."""
    flint = pytest.importorskip("flint")
    model, start, end, x, y = _deep(act, loss)
    prob = prepare(mt.make_line(model, start, end, dtype=torch.float64), mt.Dataset(x, y, loss, "t"), BNPolicy.FROZEN)
    cells = [(0.0, 2**-6), (0.5, 0.5 + 2**-10), (0.875, 0.875 + 2**-6), (1 - 2**-12, 1.0)]
    dl, ll = enclose(prob, [c[0] for c in cells], [c[1] for c in cells])
    checked = 0
    for (ca, cb), (dlo, dhi), (llo, lhi) in zip(cells, dl, ll):
        for k in (0, 1, 3, 4):
            alpha = ca + (cb - ca) * k / 4
            ref = _arb_reference(model, act, start, end, x, y, loss, alpha)
            if ref is None:
                continue
            L, dL = ref
            assert L.lower() >= flint.arb(llo) and L.upper() <= flint.arb(lhi), (alpha, L, llo, lhi)
            assert dL.lower() >= flint.arb(dlo) and dL.upper() <= flint.arb(dhi), (alpha, dL, dlo, dhi)
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("act,loss", [("relu", "ce"), ("relu", "mse"), ("tanh", "ce")])
def test_euclidean_tracking_narrows_deep_enclosures(monkeypatch, act, loss):
    """Not vacuous: on the nets of the arb test the L′ enclosure is strictly narrower with the
    Euclidean bounds than with entrywise propagation alone (norm bounds disabled)."""
    prob = _deep_problem(act, loss)
    cells = ([0.25, 0.5, 0.875], [0.25 + 2**-6, 0.5 + 2**-6, 0.875 + 2**-6])
    with_norms = enclose(prob, *cells)[0]
    monkeypatch.setattr(E, "_along_cells", lambda v0, vT, vD, m, h: torch.full_like(m * (v0 + vT), float("inf")))
    without = enclose(prob, *cells)[0]
    widths = [(hi - lo, hi2 - lo2) for (lo, hi), (lo2, hi2) in zip(with_norms, without)]
    assert all(a <= b for a, b in widths), widths
    assert any(a < 0.95 * b for a, b in widths), widths


def test_chunking_does_not_change_the_enclosures():
    """Weight-only work is memoised across the example chunks of one call: one chunk per example
    and one chunk for all give the same bounds (up to the order of the final sums, and to float32's
    resolution in the remainders' non-negative products, :func:`~mli_theory.certify.enclosures.upper_matmul`)."""
    prob = _deep_problem()
    cells = ([0.0, 0.5], [0.125, 0.5078125])
    whole = enclose(dataclasses.replace(prob, chunk=8), *cells)
    single = enclose(dataclasses.replace(prob, chunk=1), *cells)
    for part_w, part_s in zip(whole, single):
        for (a, b), (c, d) in zip(part_w, part_s):
            assert a == pytest.approx(c, rel=1e-6, abs=1e-12) and b == pytest.approx(d, rel=1e-6, abs=1e-12)


# ----------------------------------------------------------------------------- rule level, adversarial


def _point(dim_in: int) -> E.EnclosureNumbers:
    """A cell of radius 0 at α = 1/2: every bound below is attained by a chosen remainder."""
    return E.EnclosureNumbers(torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))


def _input(c: torch.Tensor, e: float, n: float) -> E.Enclosure:
    z = E._zero(c)
    ev = torch.full_like(c, e)
    nv = torch.full(c.shape[:-1] + (1,), n, dtype=torch.float64)
    return E.Enclosure(E.TM(c, z, ev, nv), E.TM(torch.zeros_like(c), z, ev, nv))


def test_linear_rule_is_attained_by_adversarial_remainders():
    """With ΔW = 0 and a remainder known only in Euclidean norm (entrywise bound loose), the worst
    remainders are n·(row j)/‖row j‖ for output j and n·(top right singular vector) for the norm:
    the rule's bounds must hold for them, and they are within a few per cent of the bounds (so a
    rule that claimed less would fail here)."""
    g = torch.Generator().manual_seed(7)
    w0 = torch.randn(40, 30, generator=g, dtype=torch.float64) / 6
    p = E.Param(w0, torch.zeros_like(w0))
    c = torch.randn(1, 1, 30, generator=g, dtype=torch.float64)
    n = 1e-3
    out = E._linear(_point(30), _input(c, 1.0, n), p, None)
    base = (w0 @ c[0, 0])
    rows = torch.linalg.vector_norm(w0, dim=1)
    for j in range(40):
        delta = n * w0[j] / rows[j]
        err = (w0 @ (c[0, 0] + delta) - out.v.c[0, 0])[j].abs().item()
        assert err <= out.v.e[0, 0, j].item()
        assert err >= 0.999 * out.v.e[0, 0, j].item()
    top = torch.linalg.svd(w0).Vh[0]
    err = torch.linalg.vector_norm(w0 @ (c[0, 0] + n * top) - out.v.c[0, 0]).item()
    assert err <= out.v.n[0, 0, 0].item()
    assert err >= 0.95 * out.v.n[0, 0, 0].item()
    assert torch.allclose(out.v.c[0, 0], base, rtol=0, atol=1e-15)


def test_relu_and_tanh_rules_pass_the_euclidean_norm_through():
    """All neurons decided positive (ReLU = identity) or near 0 (tanh ≈ identity): a remainder of
    norm n along any unit vector leaves with norm ≈ n, and the rules' bounds are ≥ that (tightly)."""
    g = torch.Generator().manual_seed(8)
    n = 1e-4
    u = torch.randn(20, generator=g, dtype=torch.float64)
    u = u / torch.linalg.vector_norm(u)
    for act in ("relu", "tanh"):
        c = (torch.rand(1, 1, 20, generator=g, dtype=torch.float64) + 1.0) if act == "relu" else torch.full((1, 1, 20), 1e-3, dtype=torch.float64)
        x = _input(c, n, n)
        out = E._relu_like(_point(20), x) if act == "relu" else E._smooth(_point(20), E._TANH, x)
        f = torch.relu if act == "relu" else torch.tanh
        err = torch.linalg.vector_norm(f(c[0, 0] + n * u) - out.v.c[0, 0]).item()
        assert err <= out.v.n[0, 0, 0].item()
        assert err >= 0.99 * out.v.n[0, 0, 0].item()
        # the derivative: h′ = f′(v)·v′ with v′ = 0 + (remainder n·u)
        slope = torch.ones(20, dtype=torch.float64) if act == "relu" else 1 - torch.tanh(c[0, 0] + n * u) ** 2
        derr = torch.linalg.vector_norm(slope * (n * u) - out.d.c[0, 0]).item()
        assert derr <= out.d.n[0, 0, 0].item()
        assert derr >= 0.99 * out.d.n[0, 0, 0].item()
