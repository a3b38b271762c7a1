"""Operations the enclosures now cover (they used to answer a conservative ``unknown``): Conv2d with
``padding='same'``/``'valid'``, AvgPool2d with ``ceil_mode`` or ``count_include_pad=False``,
Softplus with β ≠ 1, and ``nn.Flatten`` inside a chain of Linear layers (the exact method).

Each enclosure of L and L′ is checked against torch's own float64 forward (``torch.func.jvp`` of a
plain ``functional_call``) inside and at the ends of random cells, and each ``check`` must decide.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.nn import functional as F

from mli_theory import check
from mli_theory.certify.partition import enclose, prepare
from mli_theory.inputs.data import Dataset
from mli_theory.path import BNPolicy, make_line

CASES = {
    "conv_same_odd": lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Tanh(), nn.Flatten(), nn.Linear(72, 2)),
    "conv_same_even": lambda: nn.Sequential(nn.Conv2d(1, 2, (2, 4), padding="same"), nn.Tanh(), nn.Flatten(), nn.Linear(72, 2)),
    "conv_same_dilated": lambda: nn.Sequential(nn.Conv2d(1, 2, 2, padding="same", dilation=3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2)),
    "conv1d_same": lambda: nn.Sequential(nn.Flatten(), nn.Unflatten(1, (1, 36)), nn.Conv1d(1, 2, 4, padding="same"), nn.Tanh(),
                                         nn.Flatten(), nn.Linear(72, 2)),
    "conv_valid": lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding="valid"), nn.Tanh(), nn.Flatten(), nn.Linear(32, 2)),
    "avgpool_ceil": lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.AvgPool2d(3, 2, ceil_mode=True), nn.Flatten(), nn.Linear(8, 2)),
    "avgpool_exclude_pad": lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.AvgPool2d(3, 2, padding=1, count_include_pad=False),
                                                 nn.Flatten(), nn.Linear(8, 2)),
    "softplus_beta2": lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 5), nn.Softplus(beta=2), nn.Linear(5, 2)),
    "softplus_beta03": lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 5), nn.Softplus(beta=0.3, threshold=5), nn.Linear(5, 2)),
}


def _setup(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = CASES[name]().double()
    g = torch.Generator().manual_seed(seed)
    data = Dataset(torch.randn(12, 1, 6, 6, generator=g, dtype=torch.float64), torch.randn(12, 2, generator=g, dtype=torch.float64), "mse", "img")
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = {k: v + 0.4 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in a.items()}
    return model, a, b, data


def _reference(model, a, b, data, t: float) -> tuple[float, float]:
    def loss_at(s):
        state = {k: a[k] + s * (b[k] - a[k]) for k in a}
        return F.mse_loss(functional_call(model, state, (data.x,)), data.y)

    s = torch.tensor(t, dtype=torch.float64)
    value, slope = jvp(loss_at, (s,), (torch.ones_like(s),))
    return float(value), float(slope)


@pytest.mark.parametrize("name", sorted(CASES))
def test_enclosures_of_newly_covered_operations_contain_torchs_values(name):
    model, a, b, data = _setup(name)
    line = make_line(model, a, b, dtype=torch.float64)
    prob = prepare(line, data, BNPolicy.FROZEN)
    cells = [(0.0, 0.125), (0.3, 0.3 + 2.0**-6), (0.5, 1.0)]
    dl, ll = enclose(prob, [c[0] for c in cells], [c[1] for c in cells])
    for (ca, cb), (dlo, dhi), (llo, lhi) in zip(cells, dl, ll):
        for f in (0.0, 0.37, 1.0):
            value, slope = _reference(model, a, b, data, ca + f * (cb - ca))
            slack = 1e-10 * (1 + abs(value) + abs(slope))
            assert llo - slack <= value <= lhi + slack, (name, ca, value, llo, lhi)
            assert dlo - slack <= slope <= dhi + slack, (name, ca, slope, dlo, dhi)
        assert dhi - dlo < 1e3 * (1 + abs(dlo))  # finite and not vacuous


@pytest.mark.parametrize("name", sorted(CASES))
def test_checks_of_newly_covered_operations_decide(name):
    model, a, b, data = _setup(name, seed=1)
    r = check(model, a, b, data, certify=True, dtype=torch.float64, geometry=False, tol=1e-3, certify_budget=30)
    assert r.certificate.status in ("monotone", "non_monotone"), r.certificate.reason
    assert r.certificate.method == "enclosure_bisection"


def test_a_flatten_inside_a_linear_chain_goes_to_the_exact_method():
    torch.manual_seed(0)
    for model, x in (
        (nn.Sequential(nn.Flatten(), nn.Linear(36, 5), nn.Linear(5, 2)), torch.randn(10, 1, 6, 6)),
        (nn.Sequential(nn.Linear(4, 5), nn.Flatten(), nn.Linear(5, 2, bias=False)), torch.randn(10, 4)),
    ):
        sd = model.state_dict()
        moved = {k: v + 0.3 * torch.randn_like(v) for k, v in sd.items()}
        data = Dataset(x, torch.randn(10, 2), "mse", "r")
        r = check(model, sd, moved, data, certify=True, dtype=torch.float64, geometry=False)
        assert r.info["path_kind"] == "polynomial"
        assert r.certificate.method == "exact_polynomial" and r.certificate.status in ("monotone", "non_monotone")
    # a Flatten that is not the rows' identity keeps the model off the exact method
    partial = nn.Sequential(nn.Flatten(1, 1), nn.Linear(2, 2), nn.Flatten())
    sd = partial.state_dict()
    r = check(partial, sd, {k: v + 0.1 for k, v in sd.items()}, Dataset(torch.randn(10, 2, 2), torch.randn(10, 4), "mse", "r"),
              certify=True, dtype=torch.float64, geometry=False)
    assert r.info["path_kind"] != "polynomial" and r.certificate.method != "exact_polynomial"
