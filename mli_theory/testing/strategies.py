"""Hypothesis strategies that draw whole MLI problems (needs ``pip install mli-theory[test]``).

Each strategy yields an :class:`MLIProblem`: a model, two endpoint state dicts and a data set,
all float64 on the CPU, that :func:`mli_theory.check` and :func:`mli_theory.testing.assert_mli`
accept directly. Everything is drawn from small integers (depth, widths, example count, a seed)
and a few fixed scales, so hypothesis shrinks a counterexample towards few layers, few examples,
small seeds and simple numbers.

>>> from hypothesis import given, settings
>>> @settings(max_examples=3, deadline=None)
... @given(deep_linear_problems(max_depth=2))
... def test_it(p):
...     assert len(p.model) <= 2
>>> test_it()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from hypothesis import strategies as st
from torch import nn

from ..inputs.data import Dataset

Endpoint = Literal["random", "trained", "overshoot"]
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


@dataclass(frozen=True)
class MLIProblem:
    """A network, θ0, θT and training data: one MLI question.

    Attributes:
        model: the architecture (its own weights are θ0).
        init: θ0 state dict.
        final: θT state dict.
        data: training data (float64).
        label: a readable description (shown in failure messages).
    """

    model: nn.Module
    init: dict[str, torch.Tensor]
    final: dict[str, torch.Tensor]
    data: Dataset
    label: str


def _loss(model: nn.Module, data: Dataset) -> torch.Tensor:
    out = model(data.x)
    if data.loss == "mse":
        return ((out - data.y) ** 2).mean()
    return nn.functional.cross_entropy(out, data.y)


def _gradient_descent(model: nn.Module, data: Dataset, steps: int, lr: float) -> dict[str, torch.Tensor]:
    """Full-batch gradient descent from the model's weights; the step halves until it stays finite."""
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for _ in range(30):
        model.load_state_dict(init)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        model.train()
        for _ in range(steps):
            loss = _loss(model, data)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        if all(bool(torch.isfinite(v).all()) for v in model.state_dict().values()):
            break
        lr /= 2
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(init)
    return final


def build_problem(
    widths: list[int],
    n: int,
    seed: int,
    init_scale: float = 1.0,
    endpoint: Endpoint = "random",
    *,
    bias: bool = False,
    activation: str | None = None,
    batchnorm: bool = False,
    loss: Literal["mse", "ce"] = "mse",
    overshoot: float = 0.5,
    steps: int = 60,
) -> MLIProblem:
    """One problem, deterministic in its arguments.

    Args:
        widths: layer widths D0..DL (deep linear without ``activation``, else an MLP).
        n: number of examples.
        seed: seeds weights, data and noise.
        init_scale: θ0 = init_scale · N(0, 1/fan_in).
        endpoint: ``random`` (θT = θ0 + N(0, 1)), ``trained`` (``steps`` of full-batch gradient
            descent) or ``overshoot`` (θT = θ* + overshoot·(θ* − θ0) with θ* from gradient descent:
            the final point lies past the minimum along the line, a planted MLI violation).
        bias: biases in every layer (always on for MLPs).
        activation: None (deep linear) or one of :data:`ACTIVATIONS`.
        batchnorm: BatchNorm1d after each hidden layer (MLPs only).
        loss: ``mse`` (targets from a linear teacher plus noise) or ``ce`` (teacher's argmax).
    """
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b, bias=bias or activation is not None))
        if activation is not None and i < len(widths) - 2:
            if batchnorm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(ACTIVATIONS[activation]())
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * init_scale / max(1, p.shape[-1]) ** 0.5)
    x = torch.randn(n, widths[0], generator=g, dtype=torch.float64)
    teacher = torch.randn(widths[0], widths[-1], generator=g, dtype=torch.float64)
    z = x @ teacher + 0.1 * torch.randn(n, widths[-1], generator=g, dtype=torch.float64)
    data = Dataset(x, z, "mse", "synthetic") if loss == "mse" else Dataset(x, z.argmax(1), "ce", "synthetic")
    model.eval()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if endpoint == "random":
        final = {k: (v + torch.randn(v.shape, generator=g, dtype=torch.float64) if v.is_floating_point() else v) for k, v in init.items()}
    else:
        final = _gradient_descent(model, data, steps, lr=0.05)
        if endpoint == "overshoot":
            final = {k: (v + overshoot * (v - init[k]) if v.is_floating_point() else v) for k, v in final.items()}
    kind = f"mlp:{activation}{':bn' if batchnorm else ''}" if activation else "deep_linear"
    label = f"{kind} {'-'.join(map(str, widths))}, n={n}, seed={seed}, scale={init_scale}, {endpoint}, {loss}"
    return MLIProblem(model, init, final, data, label)


@st.composite
def deep_linear_problems(draw, max_depth: int = 5, max_width: int = 6, max_n: int = 16, endpoints=("random", "trained")) -> MLIProblem:
    """Deep linear networks (exactly decidable): depth 1–max_depth, widths 1–max_width, 1–max_n examples."""
    depth = draw(st.integers(1, max_depth))
    widths = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    n = draw(st.integers(1, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    endpoint = draw(st.sampled_from(list(endpoints)))
    bias = draw(st.booleans()) if depth == 1 else False
    return build_problem(widths, n, seed, scale, endpoint, bias=bias)


@st.composite
def mlp_problems(
    draw, max_depth: int = 3, max_width: int = 8, max_n: int = 16, activations=tuple(ACTIVATIONS), batchnorm: bool | None = None,
    losses=("mse",), endpoints=("random", "trained", "overshoot"),
) -> MLIProblem:
    """MLPs with a drawn activation (and optional BatchNorm), regression or classification data."""
    depth = draw(st.integers(2, max_depth))
    widths = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    loss = draw(st.sampled_from(list(losses)))
    if loss == "ce":
        widths[-1] = max(widths[-1], 2)
    n = draw(st.integers(2, max_n))
    bn = draw(st.booleans()) if batchnorm is None else batchnorm
    return build_problem(
        widths, n, draw(st.integers(0, 2**31 - 1)), draw(st.sampled_from([0.5, 1.0, 2.0])),
        draw(st.sampled_from(list(endpoints))), activation=draw(st.sampled_from(list(activations))), batchnorm=bn, loss=loss,
    )


@st.composite
def overshoot_problems(draw, max_depth: int = 3, max_width: int = 4, max_n: int = 8) -> MLIProblem:
    """Deep linear networks whose θT is planted past the minimum: θT = θ* + ε(θ* − θ0), ε ∈ (0, 1]."""
    depth = draw(st.integers(1, max_depth))
    widths = [draw(st.integers(1, max_width)) for _ in range(depth + 1)]
    eps = draw(st.sampled_from([0.125, 0.25, 0.5, 1.0]))
    return build_problem(widths, draw(st.integers(1, max_n)), draw(st.integers(0, 2**16)), 1.0, "overshoot", overshoot=eps)


def rises() -> st.SearchStrategy[list[float]]:
    """Sequences of finite floats (sampled loss curves) for max-rise properties."""
    return st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=0, max_size=60)
