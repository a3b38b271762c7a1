"""Kernel distance and kernel velocity (Fort et al. 2020).

Fort, Dziugaite, Paul, Kharaghani, Roy and Ganguli, "Deep learning versus kernel learning: an
empirical study of loss landscape geometry and the time evolution of the neural tangent kernel"
(NeurIPS 2020) compare two kernels by the kernel distance

    S(K1, K2) = 1 − ⟨K1, K2⟩_F / (‖K1‖_F ‖K2‖_F),

one minus the cosine of the angle between them as vectors. S is invariant to scaling either
kernel by a positive constant, S(K, K) = 0, and by Cauchy–Schwarz 0 ≤ S ≤ 2; for positive
semi-definite kernels ⟨K1, K2⟩_F = tr(K1 K2) ≥ 0, so S ≤ 1.

Kernel velocity along the path (this package's definition, :func:`path_velocity`): the derivative
dS/dα of the distance from the start, v(α) = d/dα S(K(0), K(α)), estimated on the α grid by second
order finite differences (``numpy.gradient`` with ``edge_order=2``: on a grid h_{i−1} = α_i − α_{i−1},
h_i = α_{i+1} − α_i the interior estimate is
[h_{i−1}² S_{i+1} + (h_i² − h_{i−1}²) S_i − h_i² S_{i−1}] / [h_{i−1} h_i (h_{i−1} + h_i)],
exact for quadratics, with second-order one-sided formulas at the ends).

Kernel velocity between training checkpoints (:func:`step_velocity`) follows Fort et al.: the
distance between consecutive kernels divided by the number of optimisation steps between them,
S(K_{t_i}, K_{t_{i+1}}) / (t_{i+1} − t_i).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


def distance_from_products(inner: float, sq_norm_1: float, sq_norm_2: float) -> float:
    """S from ⟨K1, K2⟩_F, ‖K1‖²_F and ‖K2‖²_F; NaN when a kernel is zero (S is undefined then).

    Rounding can push the cosine a hair outside [−1, 1]; the result is clipped to [0, 2].
    """
    if not (sq_norm_1 > 0 and sq_norm_2 > 0) or not math.isfinite(inner):
        return float("nan")
    cos = inner / (math.sqrt(sq_norm_1) * math.sqrt(sq_norm_2))
    return min(2.0, max(0.0, 1.0 - cos))


def kernel_distance(k1: torch.Tensor, k2: torch.Tensor) -> float:
    """S(K1, K2) = 1 − ⟨K1, K2⟩_F / (‖K1‖_F ‖K2‖_F) for two dense kernels of one shape (float64).

    >>> k = torch.eye(3, dtype=torch.float64)
    >>> kernel_distance(k, 5 * k)
    0.0
    """
    if k1.shape != k2.shape:
        raise ValueError(f"kernels of different shapes {tuple(k1.shape)} and {tuple(k2.shape)}")
    a, b = k1.to(torch.float64), k2.to(torch.float64)
    return distance_from_products(float((a * b).sum()), float((a * a).sum()), float((b * b).sum()))


def path_velocity(alphas: Sequence[float], distances: Sequence[float]) -> tuple[float, ...]:
    """dS/dα on the grid by second-order finite differences (see the module docstring).

    Two points give the one difference quotient at both; NaN distances propagate to their
    neighbours.

    >>> path_velocity([0.0, 0.5, 1.0], [0.0, 0.25, 1.0])  # S = α²: exact for quadratics
    (0.0, 1.0, 2.0)
    """
    a = np.asarray(alphas, dtype=np.float64)
    s = np.asarray(distances, dtype=np.float64)
    if a.shape != s.shape or a.size < 2:
        raise ValueError("need matching α and distance sequences of length ≥ 2")
    if np.any(np.diff(a) <= 0):
        raise ValueError("α must increase strictly")
    if a.size == 2:
        v = (s[1] - s[0]) / (a[1] - a[0])
        return (float(v), float(v))
    return tuple(float(v) for v in np.gradient(s, a, edge_order=2))


def step_velocity(steps: Sequence[int | float], consecutive: Sequence[float]) -> tuple[float, ...]:
    """Fort et al.'s kernel velocity between checkpoints: S(K_i, K_{i+1}) / (t_{i+1} − t_i)."""
    t = [float(s) for s in steps]
    if len(consecutive) != len(t) - 1:
        raise ValueError("need one consecutive distance per pair of checkpoints")
    out = []
    for i, d in enumerate(consecutive):
        dt = t[i + 1] - t[i]
        out.append(d / dt if dt > 0 else float("nan"))
    return tuple(out)
