"""The whole geometry of the output path on a grid, and the logit (non-)linearity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..inputs.data import Dataset
from ..path import BNPolicy, Line
from .jets import JetMethod, path_jet
from .turning import turning_rate


def logit_linearity(z: torch.Tensor, alphas: torch.Tensor) -> float | None:
    """∫₀¹ D(α) dα, D(α) = mean_x ‖w − ⟨w, u⟩u‖², w = z(α) − z(0), u = unit(z(1) − z(0)) (GUIDE §1).

    It measures how far the output paths stray from their chords: 0 for paths that move along a
    straight line (a non-linearity measure, despite the name used by Lucas et al. 2021). With one
    output per example (k = 1) every path lies on its chord, so the measure says nothing: None.

    Args:
        z: outputs (K, n, k) on a grid that includes α = 0 and α = 1.
        alphas: the grid (K,).

    >>> a = torch.linspace(0, 1, 5, dtype=torch.float64)
    >>> logit_linearity(torch.stack([a, 0 * a], -1).reshape(5, 1, 2), a)  # along a straight line
    0.0
    >>> b = torch.linspace(0, 1, 101, dtype=torch.float64)
    >>> round(logit_linearity(torch.stack([b, b * (1 - b)], -1).reshape(101, 1, 2), b), 4)  # 1/30
    0.0333
    >>> logit_linearity(a.reshape(5, 1, 1), a) is None
    True
    """
    if z.shape[-1] == 1:
        return None
    w = z - z[0]
    chord = z[-1] - z[0]
    norm = chord.norm(dim=-1, keepdim=True)
    u = torch.where(norm > 0, chord / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(chord))
    perp = w - (w * u).sum(-1, keepdim=True) * u
    d = perp.pow(2).sum(-1).mean(-1)
    return float(torch.trapezoid(d.double(), alphas.double(), dim=0))


@dataclass(frozen=True)
class PathGeometry:
    """The whole geometry of the output path on a grid (for analysis and plots).

    Attributes:
        alphas: (K,).
        z, dz, d2z: outputs and their α-derivatives, (K, n, k).
        speed: ‖z′‖ per example (K, n) and for the stacked outputs (K,) in ``speed_stacked``.
        turning_rate: ‖dT/dα‖ per example (K, n); ``turning_rate_stacked`` (K,).
        curvature: κ = ‖z″⊥‖/‖z′‖² per example (K, n) (turning per unit arc length).
        loss, dloss, d2loss: L, L′ and L″ along α for torch's mean-reduced MSE,
            L = c‖z − y‖², L′ = 2c⟨z′, z − y⟩, L″ = 2c(‖z′‖² + ⟨z″, z − y⟩), c = 1/(n·k);
            None for cross-entropy.
    """

    alphas: torch.Tensor
    z: torch.Tensor
    dz: torch.Tensor
    d2z: torch.Tensor
    speed: torch.Tensor
    speed_stacked: torch.Tensor
    turning_rate: torch.Tensor
    turning_rate_stacked: torch.Tensor
    curvature: torch.Tensor
    loss: torch.Tensor | None
    dloss: torch.Tensor | None
    d2loss: torch.Tensor | None


def describe_path(
    line: Line,
    data: Dataset,
    alphas: Sequence[float] | torch.Tensor,
    *,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    method: JetMethod = "auto",
) -> PathGeometry:
    """z, z′, z″, speed, turning rate, curvature and (for MSE) L, L′, L″ at each α."""
    jet = path_jet(line, data, alphas, bn=bn, batch_size=batch_size, method=method)
    K = jet.dz.shape[0]
    per, _ = turning_rate(jet.dz, jet.d2z)
    st, _ = turning_rate(jet.dz.reshape(K, -1), jet.d2z.reshape(K, -1))
    speed = jet.dz.norm(dim=-1)
    curv = torch.where(speed > 0, per / torch.where(speed > 0, speed, torch.ones_like(speed)), torch.zeros_like(per))
    loss = dloss = d2loss = None
    if data.loss == "mse":
        r = jet.z - data.y.reshape(1, *jet.z.shape[1:]).to(jet.z.dtype)
        c = 1.0 / data.y.numel()
        loss = c * r.pow(2).sum(dim=(1, 2))
        dloss = 2 * c * (jet.dz * r).sum(dim=(1, 2))
        d2loss = 2 * c * (jet.dz.pow(2).sum(dim=(1, 2)) + (jet.d2z * r).sum(dim=(1, 2)))
    return PathGeometry(jet.alphas, jet.z, jet.dz, jet.d2z, speed, jet.dz.reshape(K, -1).norm(dim=-1), per, st, curv, loss, dloss, d2loss)
