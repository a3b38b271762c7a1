"""Hypothesis strategies: random linear and deep-linear networks with endpoints and data."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import nn

from mli_theory.inputs import Dataset


@dataclass
class NetCase:
    """A network, two endpoint state dicts and MSE data (all float64)."""

    model: nn.Module
    init: dict[str, torch.Tensor]
    final: dict[str, torch.Tensor]
    data: Dataset
    label: str


def _train_gd(model: nn.Module, data: Dataset, steps: int, lr: float) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = ((model(data.x) - data.y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def make_case(widths: list[int], n: int, seed: int, init_scale: float, endpoint: str, bias: bool = False) -> NetCase:
    """Build a case: ``endpoint`` is ``random`` (θT = θ0 + noise) or ``trained`` (gradient descent)."""
    g = torch.Generator().manual_seed(seed)
    layers = [nn.Linear(a, b, bias=bias) for a, b in zip(widths[:-1], widths[1:])]
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * init_scale / max(1, p.shape[-1]) ** 0.5)
    x = torch.randn(n, widths[0], generator=g, dtype=torch.float64)
    teacher = torch.randn(widths[0], widths[-1], generator=g, dtype=torch.float64)
    y = x @ teacher + 0.1 * torch.randn(n, widths[-1], generator=g, dtype=torch.float64)
    data = Dataset(x, y, "mse", "synthetic")
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if endpoint == "trained":
        lr = 0.05
        for _ in range(30):  # halve the step until gradient descent stays finite
            model.load_state_dict(init)
            _train_gd(model, data, steps=60, lr=lr)
            if all(bool(torch.isfinite(v).all()) for v in model.state_dict().values()):
                break
            lr /= 2
        final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        final = {k: v + torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in init.items()}
    return NetCase(model, init, final, data, f"{widths} n={n} seed={seed} scale={init_scale} {endpoint}")


@st.composite
def deep_linear_cases(draw, max_depth: int = 5, max_width: int = 6, max_n: int = 16) -> NetCase:
    """Deep linear networks: depth 1–5, widths 1–6, 1–16 examples, random or trained endpoints."""
    depth = draw(st.integers(1, max_depth))
    widths = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    n = draw(st.integers(1, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    endpoint = draw(st.sampled_from(["random", "trained"]))
    bias = draw(st.booleans()) if depth == 1 else False
    return make_case(widths, n, seed, scale, endpoint, bias)


def rises() -> st.SearchStrategy[list[float]]:
    """Sequences of finite floats for max-rise tests."""
    return st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=0, max_size=60)
