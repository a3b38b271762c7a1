"""Turning of the output path and its Gauss length (total turning of the unit tangent).

Per example x the outputs z_x(α) ∈ R^k trace a curve as α runs over [0, 1]. With velocity
v = z′ and acceleration z″ (from :mod:`mli_theory.geometry.jets`):

* unit tangent T = v/‖v‖; its rate of turning is ‖dT/dα‖ = ‖z″⊥‖/‖v‖ with
  z″⊥ = z″ − ⟨z″, T⟩T (equivalently √(‖v‖²‖z″‖² − ⟨v, z″⟩²)/‖v‖²);
* Gauss length G(x) = ∫₀¹ ‖dT/dα‖ dα, the total turning of the tangent (a planar arc through an
  angle φ has G = φ; Lucas et al. 2021, following the reference code); reported as the mean over
  examples and for the stacked outputs z ∈ R^{n·k}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..inputs.data import Dataset
from ..path import BNPolicy, Line
from .jets import JetMethod, PathJet, path_jet

# a single refined grid step that turns the tangent by more than this many radians (close to π)
# is taken as a reversal of direction through z′ = 0: a smooth turn that fast is split by the
# refinement first, while a reversal stays a jump of π however fine the grid
REVERSAL_TURN = 3.0


def speed_floor(dtype: torch.dtype) -> float:
    """Relative speed below which the tangent direction is treated as undefined (per dtype)."""
    return 1e3 * torch.finfo(dtype).eps


def turning_rate(dz: torch.Tensor, d2z: torch.Tensor, floor: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """‖dT/dα‖ = ‖z″⊥‖/‖z′‖ along the last axis, and a mask of singular points.

    Where ‖z′‖ is below ``floor`` times its largest value along α (or is zero), the tangent is
    undefined; the rate is set to 0 there and the point is flagged in the mask.

    Args:
        dz, d2z: (K, ..., k).
        floor: relative speed floor (default :func:`speed_floor` of the dtype).
    """
    floor = speed_floor(dz.dtype) if floor is None else floor
    speed = dz.norm(dim=-1)
    ref = speed.amax(dim=0, keepdim=True)
    singular = (speed <= floor * ref) | (ref == 0)
    safe = torch.where(singular, torch.ones_like(speed), speed)
    t = dz / safe.unsqueeze(-1)
    perp = d2z - (d2z * t).sum(-1, keepdim=True) * t
    rate = torch.where(singular, torch.zeros_like(speed), perp.norm(dim=-1) / safe)
    return rate, singular


def _chord_angles(dz: torch.Tensor) -> torch.Tensor:
    """Angle between unit tangents at consecutive grid points, (K−1, ...); 0 where undefined.

    The tangent turns by at least this much inside the interval, so it catches turning that the
    rate misses between grid points (a reversal of direction, where z′ passes through 0, turns the
    tangent by π).
    """
    s = dz.norm(dim=-1)
    t = dz / torch.where(s > 0, s, torch.ones_like(s)).unsqueeze(-1)
    # carry the last defined tangent over points where z′ = 0, so that a reversal through an
    # exact zero on the grid still shows as a turn of π
    k = dz.shape[0]
    idx = torch.where(s > 0, torch.arange(k, device=dz.device).reshape(-1, *([1] * (s.dim() - 1))).expand_as(s), -1)
    last = torch.cummax(idx, dim=0).values
    defined = last >= 0
    t = torch.gather(t, 0, last.clamp(min=0).unsqueeze(-1).expand_as(t))
    # 2·atan2(‖t1 − t0‖, ‖t1 + t0‖) is accurate near 0 and π, unlike arccos⟨t0, t1⟩
    ang = 2 * torch.atan2((t[1:] - t[:-1]).norm(dim=-1), (t[1:] + t[:-1]).norm(dim=-1))
    ok = defined[1:] & defined[:-1]
    return torch.where(ok, ang, torch.zeros_like(ang))


def _turning(rate: torch.Tensor, dz: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Total turning per interval: max(trapezoid of the rate, angle between end tangents)."""
    w = (alphas[1:] - alphas[:-1]).reshape(-1, *([1] * (rate.dim() - 1)))
    trap = (rate[1:] + rate[:-1]) / 2 * w
    return torch.maximum(trap, _chord_angles(dz))


@dataclass(frozen=True)
class GaussLength:
    """Total turning of the output path.

    Attributes:
        mean: mean over examples of G(x).
        per_example: G(x) for each example, shape (n,).
        stacked: G of the stacked output path z ∈ R^{n·k}.
        n_alphas: number of α points of the final (refined) grid.
        converged: whether the refinement met its relative tolerance.
        error: estimated absolute error of ``mean`` and ``stacked`` (the larger), inf if unknown.
        singular: whether the velocity vanished somewhere (the tangent is then undefined, and the
            turning there is not counted).
        alphas: the final grid.
    """

    mean: float
    per_example: torch.Tensor
    stacked: float
    n_alphas: int
    converged: bool
    error: float
    singular: bool
    alphas: tuple[float, ...]


def _rates(jet: PathJet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    per, sing = turning_rate(jet.dz, jet.d2z)  # (K, n)
    K = jet.dz.shape[0]
    st, sing_st = turning_rate(jet.dz.reshape(K, -1), jet.d2z.reshape(K, -1))
    return per, st, sing.any(dim=0).any() | sing_st.any()


def gauss_length(
    line: Line,
    data: Dataset,
    *,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    initial: int = 51,
    rtol: float = 1e-3,
    max_alphas: int = 801,
    max_step_turn: float = 0.05,
    max_rounds: int = 6,
    batch_size: int | None = None,
    method: JetMethod = "auto",
    jet: PathJet | None = None,
) -> GaussLength:
    """Gauss length with adaptive refinement of the α grid.

    Each interval contributes max(trapezoid of the turning rate, angle between its end tangents).
    Starting from ``initial`` evenly spaced α (or the grid of ``jet``), every interval that turns
    by more than ``max_step_turn`` is halved (or, when none does, all of them), until the mean and
    stacked estimates change by less than ``rtol`` (relative), the grid reaches ``max_alphas``, or
    ``max_rounds`` refinements were made (a kink, as in ReLU networks, turns the tangent at a point;
    its chord angle is already counted and splitting does not shrink it). A reversal of direction (z′ through 0) shows as a turn of π and marks the path singular.
    """
    if jet is None:
        jet = path_jet(line, data, torch.linspace(0, 1, initial, dtype=torch.float64), bn=bn, method=method, batch_size=batch_size)
    alphas = jet.alphas.double()
    dz, d2z = jet.dz.double(), jet.d2z.double()
    K = dz.shape[0]
    converged = False
    previous = None
    error = float("inf")
    rounds = 0
    while True:
        per, st, sing = _rates(PathJet(alphas, jet.z, dz, d2z))
        turn_ex = _turning(per, dz, alphas)  # (K−1, n)
        turn_st = _turning(st, dz.reshape(K, -1), alphas)  # (K−1,)
        g_mean, g_st = float(turn_ex.sum(0).mean()), float(turn_st.sum())
        if previous is not None:
            pm, ps = previous
            error = max(abs(g_mean - pm), abs(g_st - ps))
            if abs(g_mean - pm) <= rtol * max(g_mean, 1e-12) and abs(g_st - ps) <= rtol * max(g_st, 1e-12):
                converged = True
                break
        previous = (g_mean, g_st)
        if K >= max_alphas or rounds >= max_rounds:
            break
        rounds += 1
        split = torch.maximum(turn_ex.amax(dim=1), turn_st) > max_step_turn
        if not bool(split.any()):
            split = torch.ones_like(split)
        mids = ((alphas[:-1] + alphas[1:]) / 2)[split][: max_alphas - K]
        new = path_jet(line, data, mids, bn=bn, method=method, batch_size=batch_size)
        order = torch.argsort(torch.cat([alphas, mids]))
        alphas = torch.cat([alphas, mids])[order]
        dz = torch.cat([dz, new.dz.double()])[order]
        d2z = torch.cat([d2z, new.d2z.double()])[order]
        K = alphas.shape[0]
    reversal = bool((_chord_angles(dz) > REVERSAL_TURN).any()) or bool((_chord_angles(dz.reshape(K, -1)) > REVERSAL_TURN).any())
    return GaussLength(
        g_mean, turn_ex.sum(0), g_st, K, converged, error, bool(sing) or reversal, tuple(alphas.tolist())
    )
