"""L′(1) in ball arithmetic (:mod:`mli_theory.certify.endpoint`) and the convex end it decides.

References are independent of the ball code: difference quotients (L(1) − L(1 − s))/s of losses
evaluated exactly in rational arithmetic (ReLU nets under MSE: every operation is exact on
rationals) or with 80-digit mpmath (tanh, sigmoid, GELU, cross-entropy), with s so small that the
quotient's own error, at most (s/2)·sup|L″|, is far below the slopes compared."""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import pytest
import torch
from torch import nn

import mli_theory as mt
from mli_theory.certify import partition
from mli_theory.certify.endpoint import rise_between, slope_at_end
from mli_theory.certify.partition import decide_by_enclosures, enclose, prepare
from mli_theory.geometry.interpreter import trace
from mli_theory.path import BNPolicy

ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


def _net(act: str, widths=(3, 6, 6, 2)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(ACTS[act]())
    return nn.Sequential(*layers).double()


def _path(act: str, loss: str, seed: int, interpolating: bool, widths=(3, 6, 6, 2), n: int = 6, scale: float = 0.6):
    """A net, its endpoints and data; ``interpolating`` (MSE): targets y = f(x; θT) + 10⁻¹⁵·noise,
    so the residuals at α = 1 are about 10⁻¹⁵ and so is L′(1)."""
    torch.manual_seed(seed)
    model = _net(act, widths)
    g = torch.Generator().manual_seed(seed)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    final = {k: v + scale * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in init.items()}
    x = torch.randn(n, widths[0], generator=g, dtype=torch.float64)
    if loss == "mse":
        if interpolating:
            with torch.no_grad():  # fitted to about 10⁻¹⁵: L′(1) is below the float64 enclosure's resolution
                y = torch.func.functional_call(model, final, (x,))
                y = y + 1e-15 * torch.randn(y.shape, generator=g, dtype=torch.float64)
        else:
            y = torch.randn(n, widths[-1], generator=g, dtype=torch.float64)
    else:
        y = torch.randint(0, widths[-1], (n,), generator=g)
    return model, init, final, x, y


def _exact_loss(model, init, final, x, y, alpha: Fraction) -> Fraction:
    """L(α) of a ReLU net under MSE, exactly (Fractions)."""
    def mix(a, b):
        return (1 - alpha) * Fraction(float(a)) + alpha * Fraction(float(b))

    total = Fraction(0)
    weights = {}
    for i, m in enumerate(model):
        if isinstance(m, nn.Linear):
            w0, wt = init[f"{i}.weight"], final[f"{i}.weight"]
            b0, bt = init[f"{i}.bias"], final[f"{i}.bias"]
            weights[i] = ([[mix(w0[r, c], wt[r, c]) for c in range(w0.shape[1])] for r in range(w0.shape[0])],
                          [mix(b0[r], bt[r]) for r in range(b0.shape[0])])
    for row in range(x.shape[0]):
        h = [Fraction(float(v)) for v in x[row]]
        for i, m in enumerate(model):
            if isinstance(m, nn.Linear):
                w, b = weights[i]
                h = [sum((w[r][c] * h[c] for c in range(len(h))), Fraction(0)) + b[r] for r in range(len(w))]
            else:
                assert isinstance(m, nn.ReLU)
                h = [v if v > 0 else Fraction(0) for v in h]
        total += sum((h[j] - Fraction(float(y[row, j]))) ** 2 for j in range(len(h)))
    return total / (x.shape[0] * y.shape[1])


def _mp_loss(model, init, final, x, y, loss: str, alpha) -> mpmath.mpf:
    """L(α) with 80-digit mpmath (any of the activations above, MSE or cross-entropy)."""
    acts = {nn.ReLU: lambda v: v if v > 0 else mpmath.mpf(0), nn.Tanh: mpmath.tanh,
            nn.Sigmoid: lambda v: 1 / (1 + mpmath.exp(-v)), nn.GELU: lambda v: v * (1 + mpmath.erf(v / mpmath.sqrt(2))) / 2}
    total = mpmath.mpf(0)
    for row in range(x.shape[0]):
        h = [mpmath.mpf(float(v)) for v in x[row]]
        for i, m in enumerate(model):
            if isinstance(m, nn.Linear):
                w0, wt = init[f"{i}.weight"], final[f"{i}.weight"]
                b0, bt = init[f"{i}.bias"], final[f"{i}.bias"]
                h = [mpmath.fsum((1 - alpha) * float(w0[r, c]) * h[c] + alpha * float(wt[r, c]) * h[c] for c in range(len(h)))
                     + (1 - alpha) * float(b0[r]) + alpha * float(bt[r]) for r in range(w0.shape[0])]
            else:
                h = [acts[type(m)](v) for v in h]
        if loss == "mse":
            total += mpmath.fsum((h[j] - float(y[row, j])) ** 2 for j in range(len(h)))
        else:
            top = max(h)
            total += top + mpmath.log(mpmath.fsum(mpmath.exp(v - top) for v in h)) - h[int(y[row])]
    return total / (x.shape[0] * (y.shape[1] if loss == "mse" else 1))


def _ball(model, init, final, x, y, loss):
    return slope_at_end(trace(model), init, final, set(init), x, y, loss)


@pytest.mark.parametrize("interpolating", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_relu_mse_slope_balls_contain_the_exact_left_difference_quotient(seed, interpolating):
    model, init, final, x, y = _path("relu", "mse", seed, interpolating)
    s = Fraction(1, 2**200)  # |quotient − L′(1⁻)| ≤ (s/2)·sup|L″| < 10⁻⁴⁰ on these nets
    q = (_exact_loss(model, init, final, x, y, Fraction(1)) - _exact_loss(model, init, final, x, y, 1 - s)) / s
    lo, hi = _ball(model, init, final, x, y, "mse")
    assert Fraction(lo) - Fraction(1, 10**40) <= q <= Fraction(hi) + Fraction(1, 10**40)
    assert hi - lo <= 4 * math.ulp(max(abs(lo), abs(hi)))  # the ball is far narrower than a double
    if interpolating:  # the float64 enclosure cannot tell this slope's sign; the ball can
        assert abs(float(q)) < 1e-14
        assert (lo > 0) == (q > 0) and (hi < 0) == (q < 0)


@pytest.mark.parametrize("act,loss,interpolating", [("tanh", "mse", True), ("tanh", "ce", False), ("sigmoid", "mse", True),
                                                    ("gelu", "mse", True), ("gelu", "ce", False), ("relu", "ce", False)])
@pytest.mark.parametrize("seed", range(2))
def test_smooth_and_cross_entropy_slope_balls_contain_80_digit_difference_quotients(act, loss, interpolating, seed):
    model, init, final, x, y = _path(act, loss, seed, interpolating)
    with mpmath.workdps(80):
        s = mpmath.mpf(10) ** -35
        q = (_mp_loss(model, init, final, x, y, loss, mpmath.mpf(1)) - _mp_loss(model, init, final, x, y, loss, 1 - s)) / s
        lo, hi = _ball(model, init, final, x, y, loss)
        assert lo - 1e-30 <= q <= hi + 1e-30
    assert hi - lo <= 4 * math.ulp(max(abs(lo), abs(hi)))  # the ball is far narrower than a double
    if interpolating:
        assert abs(float(q)) < 1e-13 and ((lo > 0) == (q > 0)) and ((hi < 0) == (q < 0))


def test_a_unit_exactly_at_its_kink_at_one_takes_the_left_derivative():
    """θT's first hidden row and bias are zero, so that unit's pre-activation is exactly 0 at α = 1;
    from the left it is −(1 − α)·(θ0 row·x + b0): active where that is positive."""
    model, init, final, x, y = _path("relu", "mse", 0, False)
    for key in ("0.weight", "0.bias"):
        final[key][0] = 0.0
    with torch.no_grad():
        init["0.bias"][0] = -float((init["0.weight"][0] @ x.T).max()) - 1.0  # θ0 row·x + b0 < 0 on every example
    s = Fraction(1, 2**200)
    q = (_exact_loss(model, init, final, x, y, Fraction(1)) - _exact_loss(model, init, final, x, y, 1 - s)) / s
    lo, hi = _ball(model, init, final, x, y, "mse")
    assert Fraction(lo) - Fraction(1, 10**40) <= q <= Fraction(hi) + Fraction(1, 10**40)
    assert hi - lo <= 4 * math.ulp(max(abs(lo), abs(hi)))  # the ball is far narrower than a double


class _Scaled(nn.Linear):
    def forward(self, x):
        return 1.5 * super().forward(x)


@pytest.mark.parametrize("build", [
    lambda: nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.1), nn.Linear(4, 2)),
    lambda: nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)),
    lambda: nn.Sequential(nn.Linear(3, 4), nn.GELU(approximate="tanh"), nn.Linear(4, 2)),
    lambda: nn.Sequential(nn.Linear(3, 4), nn.Softplus(), nn.Linear(4, 2)),
])
def test_graphs_outside_the_ball_rules_are_declined(build):
    model = build().double().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    assert slope_at_end(trace(model), state, state, {k for k in state if "running" not in k and "num_batches" not in k}, x, y, "mse") is None


def test_a_linear_subclass_or_a_hook_is_declined_not_read_by_its_name():
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    model = nn.Sequential(_Scaled(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert slope_at_end(trace(model), state, state, set(state), x, y, "mse") is None
    plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    gm = trace(plain)
    gm.get_submodule("0").register_forward_hook(lambda m, i, o: o * 2)
    state = {k: v.clone() for k, v in plain.state_dict().items()}
    assert slope_at_end(gm, state, state, set(state), x, y, "mse") is None


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_interpolating_mse_nets_are_decided_at_tolerance_zero_and_agree_with_the_reference(act):
    """The float64 enclosure of L′(1) straddles 0 on these paths (the residuals are rounding-sized);
    with the ball the convex end decides, and the decision agrees with the independent reference:
    a ``monotone`` path has L′(1⁻) ≤ 0, a ``non_monotone`` witness rises in that reference too."""
    decided = 0
    for seed in range(6):
        model, init, final, x, y = _path(act, "mse", seed, True, widths=(3, 5, 2), n=4, scale=0.3)
        line = mt.make_line(model, init, final, dtype=torch.float64)
        data = mt.Dataset(x, y, "mse", "interpolating")
        lo1, hi1 = enclose(prepare(line, data, BNPolicy.FROZEN), [1.0], [1.0])[0][0]
        if not lo1 <= 0 < hi1:
            continue  # the float64 enclosure already decides this one's sign
        v = decide_by_enclosures(line, data, tol=0.0)
        with mpmath.workdps(80):
            if act == "relu":
                exact = lambda a: _exact_loss(model, init, final, x, y, Fraction(a))  # noqa: E731
            else:
                exact = lambda a: _mp_loss(model, init, final, x, y, "mse", mpmath.mpf(a))  # noqa: E731
            s = Fraction(1, 2**200) if act == "relu" else mpmath.mpf(10) ** -35
            if v.status == "unknown":
                # never for want of L′(1)'s sign: only a rise proven within the last float64 step
                assert "last float64 step" in v.reason, v.reason
                assert (exact(1) - exact(1 - s)) / s > 0
                continue
            decided += 1
            if v.status == "non_monotone":
                a, b = v.where
                assert exact(b) - exact(a) > 0
            else:
                assert (exact(1) - exact(1 - s)) / s <= (0 if act == "relu" else 1e-30)
    assert decided >= 3


def test_check_reports_tiny_end_slopes_via_the_ball_in_its_reason(monkeypatch):
    """Without the ball (patched out) such a path is ``unknown`` for the sign of L′(1), as before."""
    for seed in range(6):
        model, init, final, x, y = _path("tanh", "mse", seed, True, widths=(3, 5, 2), n=4, scale=0.3)
        line = mt.make_line(model, init, final, dtype=torch.float64)
        data = mt.Dataset(x, y, "mse", "interpolating")
        lo1, hi1 = enclose(prepare(line, data, BNPolicy.FROZEN), [1.0], [1.0])[0][0]
        if lo1 <= 0 < hi1:
            break
    else:
        pytest.skip("no seed left the float64 sign open")
    with_ball = decide_by_enclosures(line, data, tol=0.0)
    monkeypatch.setattr(partition, "slope_at_end", lambda *a, **k: None)
    without = decide_by_enclosures(line, data, tol=0.0)
    assert without.status == "unknown" and "sign" in without.reason
    assert with_ball.status != "unknown" or "sign" not in with_ball.reason
    assert math.isfinite(lo1)


class _InPlaceResidual(nn.Module):
    """h = W1x; r = relu_(h) modifies h in place, so h + r is 2·relu(W1x): a walk that ignored the
    mutation would compute W1x + relu(W1x)."""

    def __init__(self):
        super().__init__()
        self.a, self.act, self.out = nn.Linear(3, 5), nn.ReLU(inplace=True), nn.Linear(5, 2)

    def forward(self, x):
        h = self.a(x)
        r = self.act(h)
        return self.out(h + r)


def test_in_place_activations_rebind_the_value_they_modify():
    torch.manual_seed(0)
    model = _InPlaceResidual().double()
    g = torch.Generator().manual_seed(1)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.5 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in init.items()}
    x, y = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64)
    line = mt.make_line(model, init, final, dtype=torch.float64)
    lo64, hi64 = enclose(prepare(line, mt.Dataset(x, y, "mse", "t"), BNPolicy.FROZEN), [1.0], [1.0])[0][0]
    lo, hi = _ball(model, init, final, x, y, "mse")
    assert lo64 <= lo <= hi <= hi64  # the ball lies inside the float64 enclosure of the same number
    h = 1e-6  # and agrees with torch's own evaluation of the model (central difference, float64)
    plain = [float(torch.nn.functional.mse_loss(torch.func.functional_call(model, {k: init[k] + a * (final[k] - init[k]) for k in init}, (x,)), y))
             for a in (1 - h, 1 + h)]
    assert abs((plain[1] - plain[0]) / (2 * h) - lo) < 1e-6 * (1 + abs(lo))


class _SharedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.o = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.o(torch.tanh(self.a(torch.tanh(self.a(x)))))


class _FunctionalReluResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.o = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        return self.o(torch.nn.functional.relu(h + self.b(h).sigmoid()))


class _Scaled2(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.o = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.o(2 * torch.tanh(self.a(x)))


class _RawParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2, 4))

    def forward(self, x):
        return torch.nn.functional.linear(x, self.w)


COSTUMES = {
    "shared_module": (_SharedTwice, True),
    "functional_relu_and_method": (_FunctionalReluResidual, True),
    "flatten_identity": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Identity(), nn.Tanh(), nn.Linear(5, 2)), True),
    "constant_scale": (_Scaled2, False),
    "raw_parameter": (_RawParameter, False),
}


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("name", sorted(COSTUMES))
def test_ball_slopes_and_rises_match_torch_or_are_declined(name, loss):
    """What the ball walk covers agrees with torch's own float64 evaluation of the model (forward
    mode at α = 1 and a plain rise); what it does not cover (a constant scale, a raw parameter)
    is declined, never guessed."""
    build, covered = COSTUMES[name]
    torch.manual_seed(0)
    model = build().double()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    final = {k: v + 0.7 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in init.items()}
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    y = torch.randn(7, 2, generator=g, dtype=torch.float64) if loss == "mse" else torch.randint(0, 2, (7,), generator=g)

    def plain(a):
        z = torch.func.functional_call(model, {k: init[k] + a * (final[k] - init[k]) for k in init}, (x,))
        return torch.nn.functional.mse_loss(z, y) if loss == "mse" else torch.nn.functional.cross_entropy(z, y)

    one = torch.tensor(1.0, dtype=torch.float64)
    slope = torch.func.jvp(plain, (one,), (one,))[1].item()
    rise = (plain(1.0) - plain(0.25)).item()
    gm = trace(model)
    got = slope_at_end(gm, init, final, set(init), x, y, loss)
    up = rise_between(gm, init, final, set(init), x, y, loss, 0.25, 1.0)
    if not covered:
        assert got is None and up is None
        return
    assert got is not None and abs((got[0] + got[1]) / 2 - slope) <= 1e-9 * (1 + abs(slope))
    assert up is not None and abs((up[0] + up[1]) / 2 - rise) <= 1e-9 * (1 + abs(rise))


def test_the_mse_conditions_read_the_narrowed_end_slope():
    """The tube conditions' end condition (i), L′(1) ≤ 0, reads the same narrowed slope: where the
    float64 enclosure leaves the sign open, the conditions get the ball's sign, and it is the
    80-digit reference's."""
    from mli_theory.certify.conditions import _end_slope

    seen = 0
    for seed in range(6):
        model, init, final, x, y = _path("tanh", "mse", seed, True, widths=(3, 5, 2), n=4, scale=0.3)
        problem = prepare(mt.make_line(model, init, final, dtype=torch.float64), mt.Dataset(x, y, "mse", "i"), BNPolicy.FROZEN)
        lo64, hi64 = enclose(problem, [1.0], [1.0])[0][0]
        if not lo64 <= 0 < hi64:
            continue
        lo, hi = _end_slope(problem, {}, None)
        assert lo64 <= lo <= hi <= hi64 and (hi <= 0 or lo > 0)
        with mpmath.workdps(80):
            s = mpmath.mpf(10) ** -35
            q = (_mp_loss(model, init, final, x, y, "mse", mpmath.mpf(1)) - _mp_loss(model, init, final, x, y, "mse", 1 - s)) / s
        assert (q > 0) == (lo > 0)
        seen += 1
    assert seen >= 3


def _steep_tanh_bump():
    """A 1-2-1 tanh net on x = 1, y = 0 (MSE): two units of slope 800 centred at α = ∓0.0025 (their
    difference a bump at α = 0), output weights ±5·10⁻⁵, the output bias going from 1 to 0. At α = 1
    both units saturate: z(1) = 5·10⁻⁵(tanh 798 − tanh 802) ≈ 10⁻⁶⁹⁷ > 0 and z′(1) ≈ −1, so
    L′(1) = 2z(1)z′(1) ≈ −2·10⁻⁶⁹⁷, whose sign 256 bits cannot give (tanh's two values agree to
    2 300 bits)."""
    model = nn.Sequential(nn.Linear(1, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    w0, b0, wt, bt = (torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                      torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    for u, at in enumerate((-0.0025, 0.0025)):
        p0, p1 = -800.0 * at, 800.0 * (1 - at)
        w0[u, 0], b0[u], wt[u, 0], bt[u] = p0 / 2, p0 / 2, p1 / 2, p1 / 2
    v = torch.tensor([[5e-5, -5e-5]], dtype=torch.float64)
    init = {"0.weight": w0, "0.bias": b0, "2.weight": v.clone(), "2.bias": torch.tensor([1.0], dtype=torch.float64)}
    final = {"0.weight": wt, "0.bias": bt, "2.weight": v.clone(), "2.bias": torch.tensor([0.0], dtype=torch.float64)}
    return model, init, final, torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)


def test_a_sign_below_256_bits_is_decided_with_more_bits(monkeypatch):
    """L′(1) ≈ −2·10⁻⁶⁹⁷: the 256-bit ball leaves its sign open; ``end_slope`` evaluates it again at
    1 024 and 4 096 bits (small nets only) and proves L′(1) < 0, held against a 2 500-digit mpmath
    difference quotient (s = 10⁻¹⁰⁰⁰, error ≤ (s/2)·sup|L″|, far below the slope); and the check
    decides the path ``monotone`` at tol = 0, which the 256-bit ball left ``unknown``."""
    model, init, final, x, y = _steep_tanh_bump()
    problem = prepare(mt.make_line(model, init, final, dtype=torch.float64), mt.Dataset(x, y, "mse", "bump"), BNPolicy.FROZEN)
    with mpmath.workdps(2500):
        s = mpmath.mpf(10) ** -1000
        ref = (_mp_loss(model, init, final, x, y, "mse", mpmath.mpf(1)) - _mp_loss(model, init, final, x, y, "mse", 1 - s)) / s
        assert mpmath.mpf("-1e-690") < ref < mpmath.mpf("-1e-700")
    lo256, hi256 = _ball(model, init, final, x, y, "mse")
    assert lo256 < 0.0 < hi256  # 256 bits: the sign is open
    lo, hi = partition.end_slope(problem, None)
    assert hi <= 0.0  # −0.0: L′(1) < 0 is proven, its size below float64's range
    with mpmath.workdps(2500):
        assert mpmath.mpf(lo) <= ref <= mpmath.mpf(hi)
    v = decide_by_enclosures(mt.make_line(model, init, final, dtype=torch.float64), mt.Dataset(x, y, "mse", "bump"), tol=0.0, deadline=None)
    assert v.status == "monotone", v.reason
    monkeypatch.setattr(partition, "HIGHER_BITS", ())
    w = decide_by_enclosures(mt.make_line(model, init, final, dtype=torch.float64), mt.Dataset(x, y, "mse", "bump"), tol=0.0, deadline=None)
    assert w.status == "unknown"
