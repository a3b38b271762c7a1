"""Losses as torch computes them: sums per batch, one division by the full count."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import InputError
from ..inputs.data import Dataset


def batch_loss_sums(out: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sum-reduced loss over a batch (and the count of correct predictions for ``ce``)."""
    if loss == "mse":
        if out.shape != y.shape:
            raise InputError(f"model output shape {tuple(out.shape[1:])} does not match targets {tuple(y.shape[1:])}")
        return F.mse_loss(out, y, reduction="sum"), None
    if out.dim() != 2:
        raise InputError(f"cross-entropy needs (n, classes) outputs, the model gives {tuple(out.shape)}")
    if int(y.max()) >= out.shape[1]:
        raise InputError(f"label {int(y.max())} out of range for a model with {out.shape[1]} outputs")
    return F.cross_entropy(out, y, reduction="sum"), (out.argmax(dim=1) == y).sum()


def loss_normaliser(data: Dataset) -> int:
    """The count that turns a summed loss into torch's mean-reduced loss (n·k for mse, n for ce)."""
    return data.y.numel() if data.loss == "mse" else data.n
