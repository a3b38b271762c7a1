"""A Linear layer's centre products along a batch of cells, from sparse differences (``chain_products``).

Behind a ReLU whose input is exact in α, neighbouring cells' value centres and slopes differ only
where a neuron changes state or is mixed, so the Linear rule multiplies one reference cell densely
and every other cell's difference from its neighbour as a sparse matrix. Checked here:

* the products are within the stated rounding bound of the exact (rational) products, with cells
  in any order, runs broken by a cell that differs widely, three-dimensional inputs, scales from
  tiny to large, and differences planted just below the threshold under which they are bounded
  rather than multiplied (the bound's τ term is what covers them);
* it declines (None) where it would not pay or cannot be trusted;
* on an MLP wide enough to take it, the L′ enclosures contain torch's float64 derivative and agree
  with the dense products' to 1e-6, under the forward rule and the reverse walk;
* on trained 6-512-512-3 MLPs, where the Linear rule takes it on its own: a monotone verdict that a
  201-point grid of plain torch losses does not contradict, and a non-monotone one whose witness
  plain torch reproduces.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mli_theory.certify import enclosures as E

from test_sparse_remainders import assert_taken_sound_and_as_the_dense


def _behind_first_relu(cells: int, lead: tuple, k: int, scale: float, g: torch.Generator, *, jump: bool, shuffle: bool,
                       plant: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ĉ, ĝ, midpoints) as a ReLU behind an exact layer gives them: ĉ_k = fl(A + m_k B), ĝ_k = B
    on active neurons, 0 on inactive ones, arbitrary values on about 1 % mixed ones; about 2 % of
    the neurons change state from one cell to the next (30 % at one cell when ``jump``); with
    ``plant``, one row of one cell sits 0.9τ above what its neighbour predicts on every entry."""
    a = torch.randn(*lead, k, generator=g, dtype=torch.float64) * scale
    bb = torch.randn(*lead, k, generator=g, dtype=torch.float64) * scale
    mids = [0.125 + 0.0625 * i for i in range(cells)]
    active = torch.rand(*lead, k, generator=g) < 0.5
    cs, gs = [], []
    for i, m in enumerate(mids):
        if i:
            flip = torch.rand(*lead, k, generator=g) < (0.3 if jump and i == cells // 2 else 0.02)
            active = active ^ flip
        mixed = torch.rand(*lead, k, generator=g) < 0.01
        c = torch.where(active, a + m * bb, torch.zeros(()))
        s = torch.where(active, bb, torch.zeros(()))
        c = torch.where(mixed, torch.rand(*lead, k, generator=g, dtype=torch.float64) * scale, c)
        s = torch.where(mixed, torch.rand(*lead, k, generator=g, dtype=torch.float64) * scale, s)
        cs.append(c)
        gs.append(s)
    c, s = torch.stack(cs), torch.stack(gs)
    mid = torch.tensor(mids, dtype=torch.float64)
    if plant:
        j = 1
        mu = mid[j] - mid[j - 1]
        row = (j,) + (0,) * len(lead)
        c[row] = c[(j - 1,) + (0,) * len(lead)] + mu * s[row]  # what the neighbour predicts, then 0.9τ more
        tau = (c[j].abs().reshape(-1, k).amax(-1)[0] + c[j - 1].abs().reshape(-1, k).amax(-1)[0]
               + mu * s[j].abs().reshape(-1, k).amax(-1)[0]) * E.CHAIN_SMALL
        c[row] = c[row] + 0.9 * tau
    if shuffle:
        perm = torch.randperm(cells, generator=g)
        c, s, mid = c[perm], s[perm], mid[perm]
    return c, s, mid


def _exact_rows(x: torch.Tensor, b: torch.Tensor) -> list:
    cols = [[Fraction(v) for v in col] for col in b.T.tolist()]
    return [[sum(Fraction(p) * q for p, q in zip(row, col) if p) for col in cols] for row in x.reshape(-1, x.shape[-1]).tolist()]


@settings(deadline=None, max_examples=25)
@given(st.sampled_from([3, 5, 7]), st.sampled_from([(8,), (2, 4)]), st.sampled_from([1e-305, 1e-150, 1.0, 1e40]),
       st.sampled_from([1e-150, 1e-100, 1.0, 1e20]), st.booleans(), st.booleans(), st.booleans(), st.integers(0, 2**20))
def test_chain_products_are_within_their_bound_of_the_exact_products(cells, lead, scale, scale_b, jump, shuffle, plant, seed):
    g = torch.Generator().manual_seed(seed)
    k, outs = 70, 6
    c, s, mid = _behind_first_relu(cells, lead, k, scale, g, jump=jump and cells >= 5, shuffle=shuffle, plant=plant)
    # planted: b > 0, so the entries bounded rather than multiplied err coherently (about 0.9τ·Σ_i b_ij)
    b = (torch.rand if plant else torch.randn)(k, outs, generator=g, dtype=torch.float64) * scale_b
    got = E.chain_products(c, s, mid, b.contiguous())
    # declined where a random draw makes more than half the cells references (3 cells, 2 % flips):
    # the bound is what is tested here; the tests below check that typical batches are taken
    assume(got is not None)
    assert got.pc.shape == (cells, *lead, outs) and got.pg.shape == (cells, *lead, outs)
    assert 1 <= got.references <= cells // 2
    colsum = [Fraction(v) for v in b.abs().sum(0).tolist()]  # exact sums of floats: bounds below
    colmax = b.abs().amax(0).tolist()
    for prod, x, mag, mag1 in ((got.pc, c, got.mag_c, got.mag1_c), (got.pg, s, got.mag_g, got.mag1_g)):
        for cell in range(cells):
            exact = _exact_rows(x[cell], b)
            computed = prod[cell].reshape(-1, outs).tolist()
            ms, m1s = mag[cell].reshape(-1).tolist(), mag1[cell].reshape(-1).tolist()
            dense = _exact_rows(x[cell].abs(), b.abs())  # a dense product's own bound γ_K|x||b|
            for r, (row_e, row_c) in enumerate(zip(exact, computed)):
                for j in range(outs):
                    err = abs(Fraction(row_c[j]) - row_e[j])
                    bound = Fraction(got.gamma) * ((Fraction(ms[r]) + Fraction(2.0**-1020)) * colsum[j]
                                                   + (Fraction(m1s[r]) + Fraction(2.0**-1020)) * Fraction(colmax[j]))
                    bound += Fraction(cells * (k + 1)) * Fraction(2.0**-1074)  # underflow: (L + 1)(K + 1)·2⁻¹⁰⁷⁴
                    if ms[r] == 0 and m1s[r] == 0:  # a reference cell: the dense product's own γ_K|x||b|
                        bound += Fraction(E.gamma(k)) * dense[r][j]
                    assert err <= bound, (cell, r, j, float(err), float(bound))


def test_chain_products_decline_where_they_would_not_pay_or_cannot_be_trusted():
    g = torch.Generator().manual_seed(3)
    c, s, mid = _behind_first_relu(6, (4,), 80, 1.0, g, jump=False, shuffle=False, plant=False)
    b = torch.randn(80, 70, generator=g, dtype=torch.float64)
    assert E.chain_products(c, s, mid, b) is not None
    unrelated = torch.randn_like(c), torch.randn_like(s)  # neighbours differ everywhere
    assert E.chain_products(*unrelated, mid, b) is None
    assert E.chain_products(c[:2], s[:2], mid[:2], b) is None  # too few cells
    assert E.chain_products(c.float(), s.float(), mid, b.float()) is None
    assert E.chain_products(c, s[:, :2], mid, b) is None
    assert E.chain_products(c, s, mid[:3], b) is None
    for bad in (math.inf, math.nan):
        broken = c.clone()
        broken[2, 1, 5] = bad
        assert E.chain_products(broken, s, mid, b) is None


@pytest.mark.parametrize("adjoint", [False, True])
def test_mlp_enclosures_with_chained_products_contain_the_slope_and_match_the_dense_ones(monkeypatch, adjoint):
    monkeypatch.setattr(E, "CHAIN_MIN_OUTPUTS", 64)  # taken on this narrower net (only a matter of speed)
    width = 2.0**-6
    cells = [(0.25 + i * width, 0.25 + (i + 1) * width) for i in range(8)]
    assert_taken_sound_and_as_the_dense(monkeypatch, "chain_products", cells, adjoint,
                                        lambda mp: mp.setattr(E, "CHAIN_MIN_OUTPUTS", 10**9))  # every product dense


@pytest.mark.parametrize("seed", range(4))
def test_differences_below_the_threshold_are_covered_by_their_own_term(seed):
    """Short rows (K = 8), where the allowance τ_j·Σ_i|b_ij| for the differences bounded rather
    than multiplied is most of the bound: a row planted 0.9τ above its neighbour's prediction on
    every entry, b > 0, errs by more than the rest of the bound, and the whole bound covers it."""
    g = torch.Generator().manual_seed(seed)
    k, outs = 8, 5
    c, s, mid = _behind_first_relu(3, (64,), k, 1.0, g, jump=False, shuffle=False, plant=True)
    b = torch.rand(k, outs, generator=g, dtype=torch.float64) + 0.5
    got = E.chain_products(c, s, mid, b)
    assert got is not None and got.references == 1
    mu = float(mid[1] - mid[0])
    tau = (float(c[1, 0].abs().max()) + float(c[0, 0].abs().max()) + mu * float(s[1, 0].abs().max())) * E.CHAIN_SMALL
    exact = _exact_rows(c[1, :1], b)[0]
    for j in range(outs):
        err = abs(Fraction(float(got.pc[1, 0, j])) - exact[j])
        colsum = sum(Fraction(v) for v in b[:, j].tolist())
        bound = Fraction(got.gamma) * ((Fraction(float(got.mag_c[1, 0, 0])) + Fraction(2.0**-1020)) * colsum
                                       + (Fraction(float(got.mag1_c[1, 0, 0])) + Fraction(2.0**-1020)) * Fraction(float(b[:, j].max())))
        assert err <= bound
        assert err > bound - Fraction(tau) * colsum, "the planted differences must need the τ term"


def _trained_wide_path(seed: int, lr: float, steps: int):
    """A 6-512-512-3 ReLU MLP trained by SGD with momentum on 300 examples: its second layer has
    512 outputs, so the Linear rule takes the chained products on its own."""
    from torch import nn
    from torch.nn import functional as F

    from mli_theory.inputs.data import Dataset
    from mli_theory.path import make_line

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 3)).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 6, dtype=torch.float64, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    end = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model, start, end, x, y, make_line(model, start, end, dtype=torch.float64), Dataset(x, y, "ce", "wide")


def _loss_at(model, start, end, x, y, alpha: float) -> float:
    from torch.func import functional_call
    from torch.nn import functional as F

    with torch.no_grad():
        params = {k: (1 - alpha) * start[k] + alpha * end[k] for k in start}
        return float(F.cross_entropy(functional_call(model, params, (x,)), y))


def _decide_counting(monkeypatch, line, data, tol):
    from mli_theory.certify.partition import decide_by_enclosures

    taken = []
    original = E.chain_products

    def counting(*args):
        out = original(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(E, "chain_products", counting)
    return decide_by_enclosures(line, data, tol=tol), sum(taken)


def test_a_trained_wide_mlp_is_decided_monotone_with_chained_products_as_its_grid_shows(monkeypatch):
    model, start, end, x, y, line, data = _trained_wide_path(0, 0.05, 300)
    verdict, taken = _decide_counting(monkeypatch, line, data, 0.0)
    assert taken > 0, "the chained products were never taken on this net"
    assert verdict.status == "monotone", verdict
    losses = [_loss_at(model, start, end, x, y, i / 200) for i in range(201)]
    assert all(b <= a for a, b in zip(losses, losses[1:])), "a rise on the grid contradicts the certificate"


def test_a_wide_mlp_pushed_far_is_decided_non_monotone_and_its_witness_reproduces(monkeypatch):
    model, start, end, x, y, line, data = _trained_wide_path(1, 2.0, 60)
    verdict, taken = _decide_counting(monkeypatch, line, data, 0.0)
    assert taken > 0
    assert verdict.status == "non_monotone", verdict
    a, b = verdict.where
    assert _loss_at(model, start, end, x, y, b) > _loss_at(model, start, end, x, y, a)  # re-checked by plain torch
