"""Issue "Trust, round 3", items 3 and 5 (plateau): proof and evidence never share a word.

``holds`` is True or False only when proven for all of [0, 1] (``proven`` = True); what the α grid
showed is ``on_grid``; a grid result also needs L′(αᵢ) ≤ 0 at every grid point; polynomial paths
are proven by default; an exact rise disproves every condition; exact (f) decides plateau starts.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from mli_theory import check
from mli_theory.exact import decide_line, output_polynomial, prove_conditions
from mli_theory.exact.conditions import _grid_slope
from mli_theory.inputs import Dataset
from mli_theory.path import make_line
from mli_theory.results import Condition
from mli_theory.testing.strategies import deep_linear_problems
from mli_theory.theory import complete_proofs, evaluate_conditions
from mli_theory.theory.evidence import grid_slopes

D = torch.float64
GRID_50 = torch.linspace(0, 1, 50, dtype=D).tolist()


def _assert_contract(conditions) -> None:
    """holds is a proof verdict; grid evidence lives in on_grid and says "on grid"."""
    for c in conditions:
        assert (c.holds is not None) == c.proven, c
        if not c.applicable:
            assert c.holds is None and c.on_grid is None, c
        if c.holds is None and c.on_grid is not None:
            assert "on grid" in c.statement, c


# ----------------------------------------------------------------------------- the dataclass


def test_holds_needs_a_proof_and_proven_needs_a_verdict():
    with pytest.raises(ValueError, match="on_grid"):
        Condition("acute_tangents", True, 0.1, 0.0, "s")  # a grid result spelled "holds"
    with pytest.raises(ValueError):
        Condition("acute_tangents", False, 0.1, 0.0, "s")
    with pytest.raises(ValueError):
        Condition("acute_tangents", None, 0.1, 0.0, "s", proven=True)
    with pytest.raises(ValueError):
        Condition("acute_tangents", None, 0.1, 0.0, "s", applicable=False, on_grid=False)
    with pytest.raises(ValueError):
        Condition("acute_tangents", None, 0.1, 0.0, "s", on_grid=1)  # type: ignore[arg-type]
    ok = Condition("acute_tangents", None, 0.1, 0.0, "s [on grid]", on_grid=True)
    assert ok.holds is None and ok.on_grid is True
    assert Condition("acute_tangents", False, 0.1, 0.0, "s", proven=True, on_grid=True).holds is False


# ----------------------------------------------------------------------------- constructions


def power_net(C: torch.Tensor):
    """Deep linear 1-2-…-(L+1)-k realising z(α) = Σ_j α^j C_j exactly on x = 1 (C: (L+1) × k).

    Layer l maps (1, α, …, α^{l−1}) to (1, α, …, α^l): identity at θ0, plus α·(top power) at θT;
    the last layer (the same at both ends) applies the coefficients.
    """
    L, k = C.shape[0] - 1, C.shape[1]
    layers, init, final = [], {}, {}
    for l in range(L):
        A = torch.zeros(l + 2, l + 1, dtype=D)
        A[: l + 1, : l + 1] = torch.eye(l + 1, dtype=D)
        B = torch.zeros(l + 2, l + 1, dtype=D)
        B[l + 1, l] = 1.0
        layers.append(nn.Linear(l + 1, l + 2, bias=False))
        init[f"{l}.weight"], final[f"{l}.weight"] = A, A + B
    layers.append(nn.Linear(L + 1, k, bias=False))
    init[f"{L}.weight"], final[f"{L}.weight"] = C.T.clone(), C.T.clone()
    return nn.Sequential(*layers).double(), init, final


def bump_problem(K: float = 85.0, w: float = 0.005, m: float = 0.5, e1: float = 1e-3):
    """z(α) − y = e(α) = E0 + ε(α − m) − (K/3)(α − m)³ with ε = K·w²: e′ > 0 only for |α − m| < w,
    inside the grid interval (24/49, 25/49) of a 50-point grid (m = 0.5 is its midpoint), and the
    interval's net change εh − Kh³/12 < 0 (w < h/√12), so the grid losses fall while the exact loss
    rises by ≈ 1e-4 there, before α = 1. Deep linear 1-2-3-4-1 on one input."""
    eps = K * w * w
    E0 = (K / 3) * (1 - m) ** 3 - eps * (1 - m) + e1  # e(1) = e1 > 0
    c = [E0 - eps * m + (K / 3) * m**3, eps - K * m * m, K * m, -K / 3]
    model, init, final = power_net(torch.tensor([[v] for v in c], dtype=D))
    return model, init, final, Dataset(torch.ones(1, 1, dtype=D), torch.zeros(1, 1, dtype=D), "mse", "bump")


def staircase(scale: float = 0.02, s: float = 2000.0, rising_at_grid: bool = True, H: int = 49):
    """tanh MLP 1-49-1 on x = 1, y = 0: one steep tanh step at each midpoint of the 50-point grid.

    rising_at_grid=True (the reviewer's case): z < 0 drifts down between the steps (L′ > 0 at every
    grid point but α = 1) and steps up towards 0 between grid points, so the grid losses fall;
    z′(αᵢ) < 0 and r = z(1) > 0 make (b), (c) and (f) true at every grid point.
    rising_at_grid=False: z > 0 falls at the grid points (L′ < 0 there) and steps *up* between
    them, by less than the fall of a grid interval: the grid sees a monotone loss and (b) holds at
    every grid point, while the loss rises at every step.
    """
    c = (torch.arange(H, dtype=D) + 0.5) / H
    model = nn.Sequential(nn.Linear(1, H), nn.Tanh(), nn.Linear(H, 1)).double()
    if rising_at_grid:
        d, a, b0 = 1.0, 24.25, 0.0  # z(αᵢ) = 0.505·i − 24.5 < 0 for i < 49, z(1) = 0.25
    else:
        d, a, b0 = 0.5, 49.0, 60.0  # net −0.5 per interval; z > 0 throughout
    v = torch.full((1, H), scale * d / 2, dtype=D)
    base = {"0.bias": -s * c, "2.weight": v}
    init = {**base, "0.weight": torch.zeros(H, 1, dtype=D), "2.bias": torch.full((1,), scale * b0, dtype=D)}
    final = {**base, "0.weight": torch.full((H, 1), s, dtype=D), "2.bias": torch.full((1,), scale * (b0 - a), dtype=D)}
    return model, init, final, Dataset(torch.ones(1, 1, dtype=D), torch.zeros(1, 1, dtype=D), "mse", "staircase")


def plateau_problem(ry: float = -0.02):
    """deep_linear:1-1-1-2 whose θ0 has two zero layers: z(α) = α²·(P + α(Q − P)), so z′(0) = 0 (a
    plateau start), L″(0) < 0 (not convex near 0: result (f) needs its turning bound) and
    r = z(1) − y = (0, ry)."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False), nn.Linear(1, 2, bias=False)).double()
    P = torch.tensor([[1.0], [0.0]], dtype=D)
    Q = torch.tensor([[1.0], [0.25]], dtype=D)
    zero, one = torch.zeros(1, 1, dtype=D), torch.ones(1, 1, dtype=D)
    init = {"0.weight": zero, "1.weight": zero.clone(), "2.weight": P}
    final = {"0.weight": one, "1.weight": one.clone(), "2.weight": Q}
    y = Q.T - torch.tensor([[0.0, ry]], dtype=D)
    return model, init, final, Dataset(torch.ones(1, 1, dtype=D), y, "mse", "plateau")


# ----------------------------------------------------------------------------- deep linear bump


def test_deep_linear_bump_between_grid_points_is_never_reported_as_holding():
    model, init, final, data = bump_problem()
    verdict, _ = decide_line(make_line(model, init, final, dtype=D), data)
    assert verdict.status == "non_monotone" and 5e-5 < verdict.rise < 5e-4
    a, b = verdict.where
    assert 24 / 49 < a < b < 25 / 49  # the rise is between two grid points, before α = 1
    r = check(model, init, final, data, alphas=50, dtype=D)  # no certify
    assert r.max_rise == 0.0 and r.monotone_on_grid  # the grid misses it
    assert r.certificate.status == "unknown"
    _assert_contract(r.conditions)
    by = {c.name: c for c in r.conditions}
    # the grid alone would have said yes to (b) and (f) (what the reviewer saw as "holds")
    assert by["acute_tangents"].on_grid is True and by["two_phase"].on_grid is True
    # the default exact proof on the polynomial path disproves every condition (the exact rise)
    for c in r.conditions:
        assert c.holds is False and c.proven and "rises" in c.reason, c
    # JSON: the same, spelled out
    js = json.loads(json.dumps(r.to_dict()))
    for c in js["conditions"]:
        assert {"name", "holds", "value", "threshold", "statement", "proven", "applicable", "reason", "on_grid"} <= set(c)
        assert c["holds"] is False and c["proven"] is True


def test_deep_linear_bump_without_time_for_proofs_is_grid_evidence_only():
    model, init, final, data = bump_problem()
    r = check(model, init, final, data, alphas=50, dtype=D, certify_budget=1e-9)
    _assert_contract(r.conditions)
    assert r.conditions and all(c.holds is None and not c.proven for c in r.conditions)
    assert {c.name for c in r.conditions if c.on_grid} >= {"acute_tangents", "two_phase"}
    assert any("budget" in w for w in r.warnings)
    text = r.to_text()
    assert "on grid only (not proven)" in text and "holds: proven on all of [0, 1]" in text


def test_certified_bump_disproves_every_condition():
    model, init, final, data = bump_problem()
    r = check(model, init, final, data, alphas=50, dtype=D, certify=True)
    assert r.certificate.status == "non_monotone"
    _assert_contract(r.conditions)
    assert all(c.holds is False for c in r.conditions)
    assert {c.name: c for c in r.conditions}["grid_slope"].proven  # proven with the budget certify left


# ----------------------------------------------------------------------------- tanh staircases


def test_tanh_staircase_with_rising_grid_slopes_is_false_on_the_grid():
    """The reviewer's 1-49-1 case: (b), (c), (f) true at every grid point while L′ > 0 at all but α = 1."""
    model, init, final, data = staircase()
    line = make_line(model, init, final, dtype=D)
    report = evaluate_conditions(line, data, alphas=50)
    slopes = grid_slopes(report.jet, data.y)
    assert int(slopes.rising.sum()) == 49 and not bool(slopes.rising[-1])
    r = check(model, init, final, data, alphas=50, dtype=D)
    assert r.monotone_on_grid and r.info["path_kind"] == "smooth"
    _assert_contract(r.conditions)
    by = {c.name: c for c in r.conditions}
    for name in ("acute_tangents", "stationary_pairwise", "two_phase"):
        assert by[name].holds is None and by[name].on_grid is False, name
        assert "L′(αᵢ) > 0 at 49 of 50 grid points" in by[name].reason
    assert not any(c.holds or c.on_grid for c in r.conditions)
    proven = check(model, init, final, data, alphas=50, dtype=D, certify=True)
    assert proven.certificate.status == "non_monotone" and proven.certificate.rise > 1e-3
    _assert_contract(proven.conditions)
    assert all(c.holds is False and c.proven for c in proven.conditions if c.applicable)


def test_tanh_staircase_the_grid_cannot_see_is_evidence_only():
    """L′ < 0 at every grid point and the grid losses fall, but the loss rises at every step: (b) is
    true on the grid; it is never a proof, and certify disproves it."""
    model, init, final, data = staircase(rising_at_grid=False)
    r = check(model, init, final, data, alphas=50, dtype=D)
    assert r.monotone_on_grid
    _assert_contract(r.conditions)
    by = {c.name: c for c in r.conditions}
    assert by["acute_tangents"].on_grid is True and by["acute_tangents"].holds is None
    assert not any(c.holds for c in r.conditions)
    proven = check(model, init, final, data, alphas=50, dtype=D, certify=True)
    assert proven.certificate.status == "non_monotone"
    by = {c.name: c for c in proven.conditions}
    assert by["acute_tangents"].holds is False and by["acute_tangents"].proven
    assert by["acute_tangents"].on_grid is True  # what the grid showed; the proof says otherwise


# ----------------------------------------------------------------------------- grid slopes


def test_a_stationary_endpoint_is_not_a_rising_grid_slope():
    """z(α) = (1 + α)x moves straight to an exact fit: L′(1) = 0, computed up to rounding."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    eye = torch.eye(2)
    init = {"0.weight": eye.clone(), "1.weight": eye.clone()}
    final = {"0.weight": eye.clone(), "1.weight": 2 * eye}
    x = torch.tensor([[1.0, 0.5], [-0.25, 2.0]])
    for dtype in (torch.float32, D):
        line = make_line(model, init, final, dtype=dtype)
        on = Dataset(x.to(dtype), (2 * x).to(dtype), "mse", "fit")
        report = evaluate_conditions(line, on, prove=False)
        assert not bool(grid_slopes(report.jet, on.y).rising.any())
        by = {c.name: c for c in report.conditions}
        assert by["acute_tangents"].on_grid is True and by["acute_tangents"].holds is None
        proven = {c.name: c for c in evaluate_conditions(line, on).conditions}
        assert proven["acute_tangents"].holds is True and proven["acute_tangents"].proven


def test_exact_grid_slope():
    # L ∝ (1 − α)²: L′ ≤ 0, L″ = 2: the envelope is ≤ 0 on every interval
    assert _grid_slope([1, -2, 1], GRID_50, None) == (True, None)
    # L ∝ (α − 0.3)²: L′(αᵢ) > 0 for αᵢ > 0.3, exactly
    verdict, why = _grid_slope([9, -60, 100], GRID_50, None)
    assert verdict is False and "L′(" in why
    # L′ = −(α − m)² + δ with a tiny bump inside (24/49, 25/49): L′(αᵢ) < 0 everywhere, and the
    # envelope, an upper bound of L′ ≥ L′(½) > 0 there, cannot be ≤ 0: no verdict
    m = Fraction(1, 2)
    lp = [-(m * m) + Fraction(1, 10**6), 2 * m, Fraction(-1)]  # L′ coefficients
    L = [Fraction(0)] + [c / (i + 1) for i, c in enumerate(lp)]
    den = math.lcm(*(f.denominator for f in L))
    ints = [int(f * den) for f in L]
    verdict, why = _grid_slope(ints, GRID_50, None)
    assert verdict is None and "envelope" in why
    assert _grid_slope([1, -2, 1], [0.0, 0.5, 0.9], None)[0] is None  # a grid that does not reach 1


def test_proofs_about_another_computation_are_refused():
    model, init, final, data = bump_problem()
    line = make_line(model, init, final, dtype=D)
    grid = evaluate_conditions(line, data, alphas=50, prove=False).conditions
    wrong = [0.5] * 50
    out, notes, _ = complete_proofs(grid, line, data, alphas=GRID_50, measured=wrong)
    assert out == tuple(grid) and notes and "differs from the measured" in notes[0]


# ----------------------------------------------------------------------------- plateau start


def test_two_phase_on_a_plateau_start_is_decided():
    """z′(0) = 0: no unit tangent at α = 0, so no bound of ∫√N/D for z′; the turning of z′/α² on
    (0, 1] is what (f) needs, and the theorem holds there (the exact decision agrees)."""
    for ry in (-0.02, -0.1, 0.0):
        model, init, final, data = plateau_problem(ry)
        line = make_line(model, init, final, dtype=D)
        z = output_polynomial(line.start, line.end, line.structure.linear, data.x)
        v = z.coeffs[1]  # the α¹ coefficient of z: z′(0)
        assert all(int(e) == 0 for e in v.entries())
        assert decide_line(line, data)[0].status == "monotone"
        proven = prove_conditions(z, data.y)
        assert proven["two_phase"] is True, (ry, dict(proven))
        # not convex near 0 (so the split c > 0 and the turning bound was needed)
        lpp0 = 2 * float((2 * torch.tensor([1.0, 0.0], dtype=D) * (0 - data.y[0])).sum())
        assert lpp0 < 0
        r = check(model, init, final, data, alphas=50, dtype=D)
        assert {c.name: c for c in r.conditions}["two_phase"].holds is True
    # a rising variant stays disproven
    model, init, final, data = plateau_problem(0.02)
    line = make_line(model, init, final, dtype=D)
    assert decide_line(line, data)[0].status == "non_monotone"
    z = output_polynomial(line.start, line.end, line.structure.linear, data.x)
    assert prove_conditions(z, data.y)["two_phase"] is False


# ----------------------------------------------------------------------------- property


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deep_linear_problems(max_depth=3, max_width=4, max_n=8, endpoints=("random", "trained", "overshoot")))
def test_no_condition_holds_where_the_exact_certificate_says_non_monotone(problem):
    line = make_line(problem.model, problem.init, problem.final, dtype=D)
    verdict, _ = decide_line(line, problem.data, budget_s=None)
    r = check(problem.model, problem.init, problem.final, problem.data, alphas=20, dtype=D)
    _assert_contract(r.conditions)
    if verdict.status == "non_monotone":
        assert not any(c.holds for c in r.conditions), problem.label
    if any(c.holds for c in r.conditions):
        assert verdict.status == "monotone", problem.label


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 4), st.integers(1, 3), st.integers(0, 2**31 - 1), st.sampled_from([0.0, 0.1, 1.0]))
def test_no_condition_holds_on_random_polynomial_paths_whose_coarse_grid_misses_the_rise(degree, k, seed, noise):
    """z(α) = Σ α^j C_j (random C, power_net) on a 5-point grid: in about 40 % of such draws the grid
    sees a monotone loss while the exact loss rises. No condition may hold there."""
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(degree + 1, k, generator=g, dtype=D)
    y = (C.sum(0) + noise * torch.randn(k, generator=g, dtype=D)).reshape(1, k)
    model, init, final = power_net(C)
    data = Dataset(torch.ones(1, 1, dtype=D), y, "mse", "poly")
    verdict, _ = decide_line(make_line(model, init, final, dtype=D), data, budget_s=None)
    r = check(model, init, final, data, alphas=5, dtype=D)
    _assert_contract(r.conditions)
    if verdict.status == "non_monotone":
        assert not any(c.holds for c in r.conditions)
    if any(c.holds for c in r.conditions):
        assert verdict.status == "monotone"
