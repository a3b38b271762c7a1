"""Minimal, deterministic training loops that record θ0 and θT (for demos and experiments)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..inputs.checkpoint import StateDict
from ..inputs.data import Dataset
from ..path.losses import batch_loss_sums, loss_normaliser

Optimizer = Literal["sgd", "adam"]


@dataclass(frozen=True)
class TrainResult:
    """θ0, θT and the training history.

    Attributes:
        init: state dict before training (a copy).
        final: state dict after training (a copy).
        history: mean training loss over the whole set after each epoch.
        final_loss: the last entry of ``history`` (inf if training diverged).
        diverged: whether the loss became non-finite (training stops there).
    """

    init: StateDict
    final: StateDict
    history: tuple[float, ...]
    final_loss: float
    diverged: bool


def _snapshot(model: nn.Module) -> StateDict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def full_loss(model: nn.Module, data: Dataset, batch_size: int | None = None) -> float:
    """Mean loss of ``model`` (in eval mode, on a copy) over the whole data set."""
    m = copy.deepcopy(model).eval()
    total, size = 0.0, batch_size or data.n
    with torch.no_grad():
        for i in range(0, data.n, size):
            s, _ = batch_loss_sums(m(data.x[i : i + size]), data.y[i : i + size], data.loss)
            total += float(s)
    return total / loss_normaliser(data)


def train(
    model: nn.Module,
    data: Dataset,
    *,
    optimizer: Optimizer = "sgd",
    lr: float = 0.05,
    epochs: int = 100,
    batch_size: int | None = 64,
    momentum: float = 0.9,
    seed: int = 0,
    distance_reward: float = 0.0,
) -> TrainResult:
    """Train ``model`` in place from its current weights and return both endpoints.

    Args:
        model: the network (its current weights are θ0; it is trained in place).
        data: training data on the model's device and dtype.
        optimizer: ``sgd`` (with ``momentum``) or ``adam``.
        lr: learning rate.
        epochs: passes over the data.
        batch_size: minibatch size (None: full batch).
        momentum: SGD momentum.
        seed: seeds the minibatch order.
        distance_reward: λ ≥ 0; adds −λ·‖θ − θ0‖² / 2 to the loss, which pushes the weights away
            from initialisation (the systematic way to produce MLI violations).
    """
    gen = torch.Generator().manual_seed(seed)
    init = _snapshot(model)
    theta0 = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    opt = (
        torch.optim.SGD(params, lr=lr, momentum=momentum)
        if optimizer == "sgd"
        else torch.optim.Adam(params, lr=lr)
    )
    size = batch_size or data.n
    norm = loss_normaliser(data) / data.n  # per-example normaliser (k for mse, 1 for ce)
    history: list[float] = []
    diverged = False
    for _ in range(epochs):
        model.train()
        order = torch.randperm(data.n, generator=gen).to(data.x.device)
        for i in range(0, data.n, size):
            idx = order[i : i + size]
            s, _ = batch_loss_sums(model(data.x[idx]), data.y[idx], data.loss)
            loss = s / (idx.numel() * norm)
            if distance_reward:
                loss = loss - 0.5 * distance_reward * sum((p - q).pow(2).sum() for p, q in zip(params, theta0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        value = full_loss(model, data)
        history.append(value)
        if not math.isfinite(value):
            diverged = True
            break
    model.eval()
    return TrainResult(init, _snapshot(model), tuple(history), history[-1] if history else math.nan, diverged)
