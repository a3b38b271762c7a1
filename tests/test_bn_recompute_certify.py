"""Certification under ``bn=recompute``: the re-estimation pass enclosed (one batch of all the data).

References that know nothing of Taylor models: a 60-digit mpmath evaluation of the whole
procedure (a train-mode pass recording batch statistics, then the evaluation pass with them, every
quantity carried with its exact α-derivative), torch's own re-estimation in float64 (the curve
``check`` evaluates), and central differences of that curve."""

from __future__ import annotations

import mpmath as mp
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mli_theory as mt
from mli_theory.certify.partition import decide_by_enclosures, enclose, plain_loss, prepare
from mli_theory.inputs import convnets
from mli_theory.path import BNPolicy

from test_enclosure_soundness import ACTS, _act

mp.mp.dps = 60


def _forward(model, act, start, end, x, a, stats, record):
    """All examples layer by layer in mpmath; BatchNorm from ``stats`` (eval) or, when ``stats`` is
    None, from the batch (train mode), recording (μ, μ′, σ²_unbiased, σ²′_unbiased) in ``record``."""
    H = [[mp.mpf(float(t)) for t in row] for row in x.tolist()]
    D = [[mp.mpf(0)] * len(r) for r in H]
    n = len(H)
    for j, layer in enumerate(model):
        if isinstance(layer, nn.Linear):
            W0, WT = start[f"{j}.weight"].tolist(), end[f"{j}.weight"].tolist()
            b0, bT = start[f"{j}.bias"].tolist(), end[f"{j}.bias"].tolist()
            NH, ND = [], []
            for hv, hd in zip(H, D):
                nv, nd = [], []
                for r in range(len(W0)):
                    acc_v = mp.mpf(b0[r]) + a * (mp.mpf(bT[r]) - mp.mpf(b0[r]))
                    acc_d = mp.mpf(bT[r]) - mp.mpf(b0[r])
                    for c in range(len(hv)):
                        dw = mp.mpf(WT[r][c]) - mp.mpf(W0[r][c])
                        acc_v += (mp.mpf(W0[r][c]) + a * dw) * hv[c]
                        acc_d += dw * hv[c] + (mp.mpf(W0[r][c]) + a * dw) * hd[c]
                    nv.append(acc_v)
                    nd.append(acc_d)
                NH.append(nv)
                ND.append(nd)
            H, D = NH, ND
        elif isinstance(layer, nn.BatchNorm1d):
            F = len(H[0])
            F0 = len(H[0])
            w0, wT = (start[f"{j}.weight"].tolist(), end[f"{j}.weight"].tolist()) if f"{j}.weight" in start else ([1.0] * F0, [1.0] * F0)
            b0, bT = (start[f"{j}.bias"].tolist(), end[f"{j}.bias"].tolist()) if f"{j}.bias" in start else ([0.0] * F0, [0.0] * F0)
            g = [mp.mpf(s) + a * (mp.mpf(e) - mp.mpf(s)) for s, e in zip(w0, wT)]
            dg = [mp.mpf(e) - mp.mpf(s) for s, e in zip(w0, wT)]
            be = [mp.mpf(s) + a * (mp.mpf(e) - mp.mpf(s)) for s, e in zip(b0, bT)]
            dbe = [mp.mpf(e) - mp.mpf(s) for s, e in zip(b0, bT)]
            NH = [[None] * F for _ in range(n)]
            ND = [[None] * F for _ in range(n)]
            for c in range(F):
                if stats is None:  # train mode: the batch's mean and biased variance
                    mu = sum(H[i][c] for i in range(n)) / n
                    dmu = sum(D[i][c] for i in range(n)) / n
                    var = sum((H[i][c] - mu) ** 2 for i in range(n)) / n
                    dvar = sum(2 * (H[i][c] - mu) * (D[i][c] - dmu) for i in range(n)) / n
                    record.setdefault(j, []).append((mu, dmu, var * n / (n - 1), dvar * n / (n - 1)))
                else:  # eval mode: the recorded running statistics
                    mu, dmu, var, dvar = stats[j][c]
                s = mp.sqrt(var + mp.mpf(layer.eps))
                for i in range(n):
                    u = (H[i][c] - mu) / s
                    du = (D[i][c] - dmu) / s - (H[i][c] - mu) * dvar / (2 * s**3)
                    NH[i][c] = u * g[c] + be[c]
                    ND[i][c] = du * g[c] + u * dg[c] + dbe[c]
            H, D = NH, ND
        else:
            pairs = [[_act(act, v, d) for v, d in zip(hv, hd)] for hv, hd in zip(H, D)]
            H = [[p[0] for p in row] for row in pairs]
            D = [[p[1] for p in row] for row in pairs]
    return H, D


def _reference(model, act, start, end, x, y, loss, alpha):
    """(L, L′) at α of the recompute curve in 60-digit arithmetic."""
    a = mp.mpf(alpha)
    record: dict = {}
    _forward(model, act, start, end, x, a, None, record)
    H, D = _forward(model, act, start, end, x, a, record, {})
    if loss == "mse":
        N = len(H) * len(H[0])
        L = sum((v - mp.mpf(float(t))) ** 2 for row, tr in zip(H, y.tolist()) for v, t in zip(row, tr)) / N
        dL = sum(2 * (v - mp.mpf(float(t))) * d for row, dr, tr in zip(H, D, y.tolist()) for v, d, t in zip(row, dr, tr)) / N
        return L, dL
    L, dL = mp.mpf(0), mp.mpf(0)
    for row, dr, lab in zip(H, D, y.tolist()):
        u = [v - row[lab] for v in row]
        du = [d - dr[lab] for d in dr]
        m = max(u)
        ex = [mp.exp(v - m) for v in u]
        s = sum(ex)
        L += m + mp.log(s)
        dL += sum(e_ / s * d for e_, d in zip(ex, du))
    return L / len(H), dL / len(H)


@st.composite
def cases(draw):
    act = draw(st.sampled_from(["relu", "tanh", "gelu", "leaky"]))
    depth = draw(st.integers(1, 2))
    widths = [draw(st.integers(1, 3)) for _ in range(depth + 1)] + [draw(st.integers(2, 3))]
    loss = draw(st.sampled_from(["mse", "ce"]))
    n = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**20))
    scale = draw(st.sampled_from([1e-3, 0.3, 1.0]))
    j = draw(st.sampled_from([0, 2, 5, 12, 30]))
    k = draw(st.integers(0, 2**j - 1))
    fracs = draw(st.lists(st.floats(0, 1), min_size=1, max_size=2))
    return act, widths, loss, n, seed, scale, (k / 2**j, (k + 1) / 2**j), fracs


def _build(act, widths, seed, scale, loss, n):
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers += [nn.BatchNorm1d(b), ACTS[act]()]
    model = nn.Sequential(*layers).double().eval()
    start = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    end = {k: v + scale * torch.randn(v.shape, generator=g, dtype=torch.float64) if v.is_floating_point() else v.clone() for k, v in start.items()}
    x = torch.randn(n, widths[0], generator=g, dtype=torch.float64) * 2
    y = torch.randn(n, widths[-1], generator=g, dtype=torch.float64) if loss == "mse" else torch.randint(0, widths[-1], (n,), generator=g)
    return model, start, end, x, y


@settings(deadline=None)
@given(cases())
def test_recompute_enclosures_contain_the_60_digit_loss_and_slope(case):
    act, widths, loss, n, seed, scale, (ca, cb), fracs = case
    model, start, end, x, y = _build(act, widths, seed, scale, loss, n)
    line = mt.make_line(model, start, end, dtype=torch.float64)
    prob = prepare(line, mt.Dataset(x, y, loss, "t"), BNPolicy.RECOMPUTE)
    (dlo, dhi), (llo, lhi) = (t[0] for t in enclose(prob, [ca], [cb]))
    for f in fracs:
        alpha = ca + f * (cb - ca)
        L, dL = _reference(model, act, start, end, x, y, loss, alpha)
        assert mp.mpf(llo) <= L <= mp.mpf(lhi), (case, float(L), llo, lhi)
        assert mp.mpf(dlo) <= dL <= mp.mpf(dhi), (case, float(dL), dlo, dhi)


def test_the_reference_is_the_curve_check_evaluates():
    model, start, end, x, y = _build("tanh", [3, 4, 2], 5, 0.5, "ce", 6)
    res = mt.check(model, start, end, mt.Dataset(x, y, "ce", "t"), alphas=5, dtype=torch.float64, geometry=False)
    for a, got in zip(res.alphas, res.losses):
        assert float(_reference(model, "tanh", start, end, x, y, "ce", a)[0]) == pytest.approx(got, rel=1e-12)


@pytest.mark.parametrize("name", ["digits_cnn_bn", "digits_resnet_bn"])
def test_conv_batchnorm_recompute_enclosures_contain_the_curve_and_its_slope(name):
    torch.manual_seed(3)
    model = getattr(convnets, name)().double()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in init.items()}
    data = mt.Dataset(torch.randn(8, 64, dtype=torch.float64), torch.arange(8) % 10, "ce", "t")
    line = mt.make_line(model, init, final, dtype=torch.float64)
    prob = prepare(line, data, BNPolicy.RECOMPUTE)
    res = mt.check(model, init, final, data, alphas=17, dtype=torch.float64, geometry=False)
    a, b = [0.0, 0.5, 0.9375], [0.0625, 0.5625, 1.0]
    dl, ll = enclose(prob, a, b)
    for (lo, hi), (llo, lhi), ai, bi in zip(dl, ll, a, b):
        for al, L in zip(res.alphas, res.losses):
            if ai <= al <= bi:
                assert llo <= L <= lhi
        for t in (ai + 0.25 * (bi - ai), ai + 0.75 * (bi - ai)):
            fd = (plain_loss(prob, t + 1e-6) - plain_loss(prob, t - 1e-6)) / 2e-6
            assert lo - 1e-5 <= fd <= hi + 1e-5
    if name == "digits_cnn_bn":  # small moves: finite, informative bounds (the ResNet may need narrower cells)
        assert all(lo > -1e3 and hi < 1e3 for lo, hi in dl), dl


def test_a_trained_batchnorm_mlp_is_certified_under_recompute():
    from mli_theory.runs.train import train

    torch.manual_seed(0)
    data = mt.load_data("sklearn:digits", "ce").to("cpu", torch.float32)
    sub = mt.Dataset(data.x[:300], data.y[:300], "ce", "digits300")
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    res = train(model, sub, optimizer="adam", lr=3e-3, epochs=15, batch_size=50)
    fresh = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    out = mt.check(fresh, res.init, res.final, sub, alphas=201, dtype=torch.float64, certify=True, geometry=False, tol=1e-4, certify_budget=120)
    cert = out.certificate
    assert cert.status in ("monotone", "non_monotone"), cert.reason
    if cert.status == "monotone":
        assert out.max_rise <= cert.rise_bound + 1e-12  # the grid of the same curve never exceeds the proof
    else:
        a, b = cert.where
        assert out.max_rise > 1e-4 or cert.rise > 1e-4


def test_minibatch_reestimation_and_random_train_mode_are_unknown_with_the_reason():
    model, start, end, x, y = _build("relu", [3, 4, 2], 1, 0.3, "ce", 8)
    data = mt.Dataset(x, y, "ce", "t")
    out = mt.check(model, start, end, data, alphas=5, certify=True, geometry=False, batch_size=4, dtype=torch.float64)
    assert out.certificate.status == "unknown" and "minibatches of 4" in out.certificate.reason
    # a last batch of one example is merged into the one before, in the curve and in the comparison
    odd = mt.Dataset(torch.cat([x, x[:1]]), torch.cat([y, y[:1]]), "ce", "t9")
    out = mt.check(model, start, end, odd, alphas=5, certify=True, geometry=False, batch_size=4, dtype=torch.float64)
    assert out.certificate.status == "unknown" and "minibatches of 4" in out.certificate.reason, out.certificate.reason
    assert any("merged into the one before (5 examples)" in w for w in out.warnings), out.warnings
    drop = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.2), nn.ReLU(), nn.Linear(4, 2)).double()
    st0 = {k: v.clone() for k, v in drop.state_dict().items()}
    st1 = {k: v + 0.1 if v.is_floating_point() else v for k, v in st0.items()}
    line = mt.make_line(drop, st0, st1, dtype=torch.float64)
    with pytest.raises(Exception, match="random"):
        decide_by_enclosures(line, data, bn=BNPolicy.RECOMPUTE)


@settings(deadline=None)
@given(st.sampled_from(["relu", "tanh"]), st.integers(1, 3), st.sampled_from(["mse", "ce"]), st.integers(2, 5), st.integers(0, 2**20),
       st.sampled_from([0.05, 0.5]), st.sampled_from([0, 3, 8]), st.booleans(), st.booleans(), st.data())
def test_batchnorm_right_after_the_input_is_enclosed(act, width, loss, n, seed, scale, j, walk, affine, data):
    """BatchNorm on the data itself (input normalisation): its input is the same at every α, an exact
    enclosure. Under recompute the enclosures of L and L′ contain the 60-digit curve (with the
    statistics walk drawn on or off); under frozen and interpolate, central differences of torch's.
    Without affine parameters such a layer has nothing that moves but its statistics (re-estimated
    from the data under recompute, never θT's)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.BatchNorm1d(width, affine=affine), nn.Linear(width, 3), ACTS[act](), nn.Linear(3, 2)).double().eval()
    start = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    start["0.running_var"] = start["0.running_var"].abs() + 0.5
    end = {k: v + scale * torch.randn(v.shape, generator=g, dtype=torch.float64) if v.is_floating_point() else v.clone() for k, v in start.items()}
    end["0.running_var"] = end["0.running_var"].abs() + 0.5
    x = torch.randn(n, width, generator=g, dtype=torch.float64) * 2
    y = torch.randn(n, 2, generator=g, dtype=torch.float64) if loss == "mse" else torch.randint(0, 2, (n,), generator=g)
    line = mt.make_line(model, start, end, dtype=torch.float64)
    k = data.draw(st.integers(0, 2**j - 1))
    ca, cb = k / 2**j, (k + 1) / 2**j
    cells = ([ca, 0.0, 0.5], [cb, 0.25, 1.0])  # several cells at once, as the bisection walks them
    prob = prepare(line, mt.Dataset(x, y, loss, "t"), BNPolicy.RECOMPUTE, statistics_walk=walk)
    (dlo, dhi), (llo, lhi) = (t[0] for t in enclose(prob, *cells))
    for f in (0.0, 0.5, 1.0):
        L, dL = _reference(model, act, start, end, x, y, loss, ca + f * (cb - ca))
        assert mp.mpf(llo) <= L <= mp.mpf(lhi), (float(L), llo, lhi)
        assert mp.mpf(dlo) <= dL <= mp.mpf(dhi), (float(dL), dlo, dhi)
    for policy in (BNPolicy.FROZEN, BNPolicy.INTERPOLATE):
        other = prepare(line, mt.Dataset(x, y, loss, "t"), policy)
        (dlo, dhi), (llo, lhi) = (t[0] for t in enclose(other, *cells))
        t = ca + 0.37 * (cb - ca)
        fd = (plain_loss(other, t + 1e-7) - plain_loss(other, t - 1e-7)) / 2e-7
        assert llo <= plain_loss(other, t) <= lhi and dlo - 1e-5 * (1 + abs(fd)) <= fd <= dhi + 1e-5 * (1 + abs(fd)), (policy, fd, dlo, dhi)
