"""The MSE conditions evaluated on the α grid of the geometry: evidence, never a certificate.

Each value is computed from z, z′, z″ sampled at the grid points (the Gauss length from its
adaptive grid), so a condition that "holds" here can still fail between grid points; only
:mod:`mli_theory.exact.conditions` proves them.
"""

from __future__ import annotations

import math

import torch

from ..geometry import GaussLength, PathJet
from .statements import HALF_PI

# examples per batch of the per-example pairwise-cosine matrices (bounds memory: chunk·K² floats)
_EXAMPLE_CHUNK = 512


def _cos_matrix(v: torch.Tensor) -> torch.Tensor:
    """cos∠(v_a, v_b) for rows of v (..., K, m); 0 where a vector vanishes."""
    s = v.norm(dim=-1)
    g = v @ v.transpose(-1, -2)
    d = s.unsqueeze(-1) * s.unsqueeze(-2)
    return torch.where(d > 0, g / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(g))


def _acute_value(v: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """min(min_{a,b} cos∠(v_a, v_b), −max_a cos∠(v_a, r)) for v (..., K, m), r (..., m)."""
    pair = _cos_matrix(v).amin(dim=(-1, -2))
    s = v.norm(dim=-1)
    rn = r.norm(dim=-1, keepdim=True)
    d = s * rn
    cr = torch.where(d > 0, (v * r.unsqueeze(-2)).sum(-1) / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(s))
    return torch.minimum(pair, -cr.amax(dim=-1))


def grid_evidence(jet: PathJet, y: torch.Tensor, gauss: GaussLength) -> dict[str, tuple[bool | None, float | None, float]]:
    """name -> (holds, value, threshold) on the grid."""
    K = jet.dz.shape[0]
    V = jet.dz.reshape(K, -1).double()
    A = jet.d2z.reshape(K, -1).double()
    yy = y.reshape(y.shape[0], -1).double()
    r_ex = jet.z[-1].double() - yy  # (n, k)
    r = r_ex.reshape(-1)
    rn = float(r.norm())
    out: dict[str, tuple[bool | None, float | None, float]] = {}
    g = gauss.stacked
    out["zero_residual_gauss"] = (rn == 0.0 and g < HALF_PI and not gauss.singular, g, HALF_PI)
    gmax = float(gauss.per_example.max())
    out["zero_residual_gauss_per_example"] = (
        bool((r_ex.norm(dim=-1) == 0).all()) and gmax < HALF_PI and not gauss.singular,
        gmax,
        HALF_PI,
    )
    acute = float(_acute_value(V, r))
    out["acute_tangents"] = (acute >= 0.0, acute, 0.0)
    per = []
    Vx = jet.dz.double().permute(1, 0, 2)  # (n, K, k)
    for i0 in range(0, Vx.shape[0], _EXAMPLE_CHUNK):
        per.append(_acute_value(Vx[i0 : i0 + _EXAMPLE_CHUNK], r_ex[i0 : i0 + _EXAMPLE_CHUNK]))
    acute_ex = float(torch.cat(per).min())
    out["acute_tangents_per_example"] = (acute_ex >= 0.0, acute_ex, 0.0)
    s1 = float(V[-1] @ r)
    speed2 = V.pow(2).sum(-1)
    pair = (V @ V.T) + (A @ r).unsqueeze(0)  # [i, j] = <z'(a_i), z'(a_j)> + <z''(a_j), r>
    iu = torch.triu_indices(K, K)
    smax = float(speed2.max())
    pmin = float(pair[iu[0], iu[1]].min()) / smax if smax > 0 else float(pair[iu[0], iu[1]].min())
    out["stationary_pairwise"] = (s1 <= 0.0 and pmin >= 0.0, pmin, 0.0)
    vmin2 = float(speed2.min())
    amax = float(A.norm(dim=-1).max())
    if g < HALF_PI and vmin2 > 0:
        ratio = rn * amax / (math.cos(g) * vmin2)
        out["stationary_curvature"] = (s1 <= 0.0 and ratio <= 1.0, ratio, 1.0)
    else:
        out["stationary_curvature"] = (False, None, 1.0)
    return out
