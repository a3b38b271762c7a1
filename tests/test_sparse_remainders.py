"""The remainders' products behind an MLP's first ReLU, computed sparsely (``sparse_upper_matmul``).

Behind a ReLU whose input is exact in α the value and derivative remainders are rounding-sized on
every neuron whose sign is proven and large only on the few mixed ones, so the Linear rule's
non-negative remainder products take the large entries one by one (a CSR product) and bound the
rest by their row maximum times the weights' column sums. Checked here:

* the bound is above the exact (rational) product, per cell and with shared weights, from tiny to
  large scales, and within float64 accuracy of it plus the small entries' allowance;
* it declines (None) where it would not pay or cannot be trusted: dense remainders, narrow
  products, non-finite entries;
* on an MLP whose hidden layers are wide enough to take it, the enclosures of L′ it gives contain
  torch's float64 derivative and agree with those of the dense product to 1e-6.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mli_theory.certify import enclosures as E
from mli_theory.certify.partition import enclose, prepare
from mli_theory.inputs.data import Dataset
from mli_theory.path import BNPolicy, make_line


def _sparse_remainder(cells: int, rows: int, k: int, scale: float, density: float, g: torch.Generator) -> torch.Tensor:
    """Rounding-sized entries everywhere, ``density`` of them large (scale ``scale``)."""
    a = torch.rand(cells, rows, k, generator=g, dtype=torch.float64) * scale * 2.0**-45
    big = torch.rand(cells, rows, k, generator=g) < density
    big[0, 0, 0] = density > 0  # at least one mixed neuron
    a[big] = torch.rand(int(big.sum()), generator=g, dtype=torch.float64) * scale
    return a


def _exact(a: torch.Tensor, b: torch.Tensor) -> list:
    """(C, R, O) exact products as Fractions; b per cell (C, K, O) or shared (K, O)."""
    out = []
    for c in range(a.shape[0]):
        bc = b[c] if b.dim() == 3 else b
        cols = [[Fraction(v) for v in col] for col in bc.T.tolist()]
        rows = []
        for row in a[c].tolist():
            fr = [Fraction(v) for v in row]
            rows.append([sum(x * y for x, y in zip(fr, col)) for col in cols])
        out.append(rows)
    return out


@settings(deadline=None, max_examples=25)
@given(st.booleans(), st.sampled_from([1e-300, 1e-20, 1.0, 1e30]), st.sampled_from([1e-200, 1e-3, 1.0, 1e10]),
       st.sampled_from([0.0, 0.003, 0.01]), st.integers(0, 2**20))
def test_sparse_upper_matmul_bounds_the_exact_product(per_cell, scale_a, scale_b, density, seed):
    g = torch.Generator().manual_seed(seed)
    cells, rows, k, outs = 2, 2, 96, 64
    a = _sparse_remainder(cells, rows, k, scale_a, density, g)
    b = torch.rand(*((cells,) if per_cell else ()), k, outs, generator=g, dtype=torch.float64) * scale_b
    got = E.sparse_upper_matmul(a, b, E.column_sums_up(b))
    if density == 0.0:  # rounding-sized entries of every size: no few that matter, the dense product serves
        assert got is None
        return
    assert got is not None and got.shape == (cells, rows, outs) and got.dtype == torch.float64
    exact = _exact(a, b)
    for c in range(cells):
        colsum = (b[c] if per_cell else b).sum(0)
        for r in range(rows):
            large = a[c, r] > float(a.max()) * E.SPARSE_REMAINDER_SHARE
            small = float(torch.where(large, 0.0, a[c, r]).max())
            for j in range(outs):
                value = float(got[c, r, j])
                assert Fraction(value) >= exact[c][r][j], (c, r, j, value, float(exact[c][r][j]))
                # tight: float64 accuracy of the exact product, plus the small entries' row maximum
                # times the column sum, plus the underflow allowance
                slack = float(exact[c][r][j]) * 1e-12 + small * float(colsum[j]) * (1 + 1e-12) + (k + 2) * 2.0**-1019
                assert value <= float(exact[c][r][j]) + slack


def test_sparse_upper_matmul_declines_where_it_would_not_pay_or_cannot_be_trusted():
    g = torch.Generator().manual_seed(1)
    b = torch.rand(3, 50, 80, generator=g, dtype=torch.float64)
    cs = E.column_sums_up(b)
    sparse = _sparse_remainder(3, 4, 50, 1.0, 0.01, g)
    assert E.sparse_upper_matmul(sparse, b, cs) is not None
    dense = torch.rand(3, 4, 50, generator=g, dtype=torch.float64)  # every entry matters
    assert E.sparse_upper_matmul(dense, b, cs) is None
    narrow = b[..., : E.SPARSE_MIN_OUTPUTS - 1]
    assert E.sparse_upper_matmul(sparse, narrow, E.column_sums_up(narrow)) is None
    for bad in (math.inf, math.nan):
        broken = sparse.clone()
        broken[0, 0, 0] = bad
        assert E.sparse_upper_matmul(broken, b, cs) is None
    assert E.sparse_upper_matmul(sparse.to(torch.float32), b, cs) is None
    assert E.sparse_upper_matmul(sparse, b[:2], cs[:2]) is None  # cells do not match
    zero = torch.zeros(3, 4, 50, dtype=torch.float64)
    assert bool((E.sparse_upper_matmul(zero, b, cs) >= 0).all())


def test_column_sums_up_bounds_the_exact_sums():
    g = torch.Generator().manual_seed(2)
    b = torch.rand(2, 300, 5, generator=g, dtype=torch.float64) * torch.logspace(-300, 300, 300, dtype=torch.float64).reshape(1, -1, 1)
    up = E.column_sums_up(b)
    for c in range(2):
        for j in range(5):
            assert Fraction(float(up[c, j])) >= sum(Fraction(v) for v in b[c, :, j].tolist())


def _wide_mlp_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 3))
    start = {k: v.detach().clone().double() for k, v in model.state_dict().items()}
    end = {k: (v + 0.3 * torch.randn_like(v)).double() for k, v in start.items()}
    x = torch.randn(40, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    line = make_line(model, start, end, dtype=torch.float64)
    return line, Dataset(x, y, "ce", "test")


def _autograd_slope(line, data, alpha: float) -> float:
    from torch.func import functional_call

    a = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    params = {k: (1 - a) * line.start[k] + a * line.end[k] for k in line.start}
    loss = torch.nn.functional.cross_entropy(functional_call(line.shell, params, (data.x,)), data.y)
    (g,) = torch.autograd.grad(loss, a)
    return float(g)


def assert_taken_sound_and_as_the_dense(monkeypatch, counted: str, cells: list[tuple[float, float]], adjoint: bool,
                                       switch_off) -> None:
    """On the wide MLP: ``E.<counted>`` (a routine that returns None when it declines) is taken at
    least once on ``cells``, the L′ enclosures contain torch's float64 derivative at three points of
    each cell, and after ``switch_off(monkeypatch)`` (the dense products again) every enclosure
    agrees with the new one to 1e-6 of its size."""
    line, data = _wide_mlp_problem()
    a, b = [c[0] for c in cells], [c[1] for c in cells]
    taken = []
    original = getattr(E, counted)

    def counting(*args):
        out = original(*args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(E, counted, counting)
    problem = prepare(line, data, BNPolicy.FROZEN, adjoint=adjoint)
    with E.strict_arithmetic(problem.x.device):
        new_d, new_l = enclose(problem, a, b)
    assert any(taken), f"{counted} was never taken on this net"
    for (lo, hi), (ca, cb) in zip(new_d, cells):
        for t in (0.0, 0.37, 1.0):
            slope = _autograd_slope(line, data, ca + t * (cb - ca))
            assert lo - 1e-12 <= slope <= hi + 1e-12, (ca, cb, lo, slope, hi)
    switch_off(monkeypatch)
    taken.clear()
    problem = prepare(line, data, BNPolicy.FROZEN, adjoint=adjoint)
    with E.strict_arithmetic(problem.x.device):
        dense_d, dense_l = enclose(problem, a, b)
    assert not any(taken)
    for (nlo, nhi), (dlo, dhi) in zip(new_d + new_l, dense_d + dense_l):
        scale = max(abs(dlo), abs(dhi))
        assert abs(nlo - dlo) <= 1e-6 * scale and abs(nhi - dhi) <= 1e-6 * scale


@pytest.mark.parametrize("adjoint", [False, True])
def test_mlp_enclosures_with_sparse_remainders_contain_the_slope_and_match_the_dense_ones(monkeypatch, adjoint):
    cells = [(0.1, 0.1 + 2.0**-9), (0.5, 0.5 + 2.0**-10), (0.9, 0.9 + 2.0**-9)]
    assert_taken_sound_and_as_the_dense(monkeypatch, "_sparse_product", cells, adjoint,
                                        lambda mp: mp.setattr(E, "SPARSE_REMAINDER_MAX_DENSITY", -1.0))  # every product dense
