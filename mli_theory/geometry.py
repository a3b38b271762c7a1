"""Geometry of the output path z(α) = f(X; θ(α)) with ``torch.func``.

Per example x the outputs z_x(α) ∈ R^k trace a curve as α runs over [0, 1]. With velocity
v = z′ = J(θ(α))·Δθ and acceleration z″ = D²f(θ(α))[Δθ, Δθ]:

* unit tangent T = v/‖v‖; its rate of turning is ‖dT/dα‖ = ‖z″⊥‖/‖v‖ with
  z″⊥ = z″ − ⟨z″, T⟩T (equivalently √(‖v‖²‖z″‖² − ⟨v, z″⟩²)/‖v‖²);
* Gauss length G(x) = ∫₀¹ ‖dT/dα‖ dα, the total turning of the tangent (a planar arc through an
  angle φ has G = φ); reported as the mean over examples and for the stacked outputs z ∈ R^{n·k};
* logit linearity ∫₀¹ D(α) dα with D(α) = mean_x ‖w − ⟨w, u⟩u‖², w = z(α) − z(0),
  u = (z(1) − z(0))/‖z(1) − z(0)‖.

Two ways to get z′ and z″ (they are compared in the tests):

* ``nested_jvp``: forward mode twice with respect to the scalar α (any model);
* ``taylor``: one pass that carries (h, h′, h″) through Sequential stacks of Linear, BatchNorm (with
  fixed statistics) and elementwise activations, using that θ(α) is affine in α: a Linear layer
  costs W·h, Δ·h, W·h′, Δ·h′, W·h″.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap

from .data import Dataset
from .path import BNPolicy, Line, StateDict, _batches, recompute_bn_statistics

JetMethod = Literal["auto", "taylor", "nested_jvp"]

_TAYLOR_ACTS = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Identity)


@dataclass(frozen=True)
class PathJet:
    """Outputs and their first two α-derivatives at a grid of α.

    Attributes:
        alphas: shape (K,).
        z: outputs, shape (K, n, k) (trailing output dims flattened).
        dz: z′(α), same shape.
        d2z: z″(α), same shape.
    """

    alphas: torch.Tensor
    z: torch.Tensor
    dz: torch.Tensor
    d2z: torch.Tensor


# ----------------------------------------------------------------------------- states along α


def _fixed_buffers(line: Line, bn: BNPolicy, alpha: float, data: Dataset, batch_size: int | None) -> StateDict:
    """Entries held constant when differentiating in α (BatchNorm statistics by policy)."""
    if not line.has_bn:
        return {k: v for k, v in line.end.items() if not v.is_floating_point()}
    if bn == BNPolicy.RECOMPUTE:
        state = recompute_bn_statistics(line, line.at(alpha), data.x, batch_size)
        return {k: v for k, v in state.items() if k not in line.param_names}
    if bn == BNPolicy.FROZEN:
        return {k: v for k, v in line.end.items() if k not in line.param_names}
    return {k: v for k, v in line.at(alpha).items() if k not in line.param_names}  # interpolated, held at α


def _state_fn(line: Line, fixed: StateDict):
    """a ↦ θ(a) as a function of a 0-dim tensor; entries in ``fixed`` do not depend on a."""
    names = [k for k in line.start if k not in fixed]

    def state(a: torch.Tensor) -> StateDict:
        out = dict(fixed)
        for k in names:
            out[k] = (1 - a) * line.start[k] + a * line.end[k]
        return out

    return state


# ----------------------------------------------------------------------------- nested jvp (reference)


def _nested_jvp(line: Line, fixed: StateDict, x: torch.Tensor, alphas: torch.Tensor):
    state = _state_fn(line, fixed)

    def z_of(a: torch.Tensor) -> torch.Tensor:
        return functional_call(line.shell, state(a), (x,))

    def first(a: torch.Tensor):
        z, dz = jvp(z_of, (a,), (torch.ones_like(a),))
        return dz, z

    def both(a: torch.Tensor):
        dz, d2z, z = jvp(first, (a,), (torch.ones_like(a),), has_aux=True)
        return z, dz, d2z

    return vmap(both)(alphas)


# ----------------------------------------------------------------------------- Taylor mode


def taylor_supported(line: Line) -> bool:
    """Whether the one-pass Taylor mode handles this model (Sequential of Linear/BN1d/activations)."""
    m = line.shell
    if not isinstance(m, nn.Sequential):
        return False
    return all(isinstance(layer, (nn.Linear, nn.BatchNorm1d) + _TAYLOR_ACTS) for layer in m)


def _act_derivs(layer: nn.Module, u: torch.Tensor):
    """σ(u), σ′(u), σ″(u) for an elementwise activation."""
    if isinstance(layer, nn.ReLU):
        return torch.relu(u), (u > 0).to(u.dtype), torch.zeros_like(u)
    if isinstance(layer, nn.Tanh):
        t = torch.tanh(u)
        d1 = 1 - t * t
        return t, d1, -2 * t * d1
    if isinstance(layer, nn.Sigmoid):
        s = torch.sigmoid(u)
        d1 = s * (1 - s)
        return s, d1, d1 * (1 - 2 * s)
    if isinstance(layer, nn.GELU):
        if layer.approximate != "none":
            raise NotImplementedError("tanh-approximated GELU")
        phi = torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + torch.erf(u / math.sqrt(2)))
        return u * cdf, cdf + u * phi, phi * (2 - u * u)
    return u, torch.ones_like(u), torch.zeros_like(u)  # Identity


def _taylor(line: Line, fixed: StateDict, x: torch.Tensor, alpha: float):
    """(z, z′, z″) at one α in a single pass carrying the second-order jet."""
    names = {id(mod): name for name, mod in line.shell.named_modules()}
    s, e = line.start, line.end

    def at(key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if key in fixed:
            return fixed[key], torch.zeros_like(fixed[key])
        return (1 - alpha) * s[key] + alpha * e[key], e[key] - s[key]

    h = x.flatten(1) if x.dim() > 2 else x
    h1: torch.Tensor | None = None  # h′ (None means zero)
    h2: torch.Tensor | None = None
    for layer in line.shell:
        p = names[id(layer)]
        if isinstance(layer, nn.Linear):
            w, dw = at(f"{p}.weight")
            o = h @ w.T
            o1 = h @ dw.T
            if layer.bias is not None:
                b, db = at(f"{p}.bias")
                o = o + b
                o1 = o1 + db
            o2 = None
            if h1 is not None:
                o1 = o1 + h1 @ w.T
                o2 = 2 * (h1 @ dw.T)
            if h2 is not None:
                o2 = h2 @ w.T if o2 is None else o2 + h2 @ w.T
            h, h1, h2 = o, o1, o2
        elif isinstance(layer, nn.BatchNorm1d):
            mean, _ = at(f"{p}.running_mean")
            var, _ = at(f"{p}.running_var")
            inv = torch.rsqrt(var + layer.eps)
            g, dg = at(f"{p}.weight") if layer.affine else (torch.ones_like(mean), torch.zeros_like(mean))
            b, db = at(f"{p}.bias") if layer.affine else (torch.zeros_like(mean), torch.zeros_like(mean))
            c = (h - mean) * inv
            c1 = None if h1 is None else h1 * inv
            c2 = None if h2 is None else h2 * inv
            new = g * c + b
            new1 = dg * c + db + (0 if c1 is None else g * c1)
            new2 = (0 if c2 is None else g * c2) + (0 if c1 is None else 2 * dg * c1)
            h, h1 = new, new1
            h2 = new2 if isinstance(new2, torch.Tensor) else None
        else:
            v, d1, d2 = _act_derivs(layer, h)
            n1 = None if h1 is None else d1 * h1
            n2 = None
            if h1 is not None:
                n2 = d2 * h1 * h1
            if h2 is not None:
                n2 = d1 * h2 if n2 is None else n2 + d1 * h2
            h, h1, h2 = v, n1, n2
    zero = torch.zeros_like(h)
    return h, (zero if h1 is None else h1), (zero if h2 is None else h2)


# ----------------------------------------------------------------------------- public


def path_jet(
    line: Line,
    data: Dataset,
    alphas: Sequence[float] | torch.Tensor,
    *,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    method: JetMethod = "auto",
    batch_size: int | None = None,
    alpha_chunk: int = 8,
) -> PathJet:
    """z, z′ = J·Δθ and z″ = D²f[Δθ, Δθ] at each α, without forming Jacobians or Hessians.

    BatchNorm statistics are held fixed while differentiating (torch's batch norm has no forward
    derivative in them): at each α they are the re-estimated statistics (``recompute``, as the
    reference does), the interpolated statistics at that α (``interpolate``), or θT's (``frozen``).

    Args:
        line: the path.
        data: inputs (targets unused), on the line's device and dtype.
        alphas: where to evaluate.
        bn: BatchNorm policy.
        method: ``taylor`` (one pass; Sequential Linear/BN/activation models), ``nested_jvp``
            (any model), or ``auto`` (Taylor mode where supported).
        batch_size: examples per pass (bounds memory).
        alpha_chunk: α values per vmapped nested-jvp call (bounds memory).
    """
    bn = BNPolicy(bn)
    a = torch.as_tensor(alphas, dtype=line.dtype, device=line.device).reshape(-1)
    use_taylor = method == "taylor" or (method == "auto" and taylor_supported(line))
    if use_taylor and not taylor_supported(line):
        raise ValueError("Taylor mode needs a Sequential of Linear, BatchNorm1d and elementwise activations")
    per_alpha_fixed = line.has_bn and bn != BNPolicy.FROZEN
    zs, d1s, d2s = [], [], []
    with torch.no_grad():
        fixed_const = None if per_alpha_fixed else _fixed_buffers(line, bn, 0.0, data, batch_size)
        step = 1 if (use_taylor or per_alpha_fixed) else max(1, alpha_chunk)
        for i0 in range(0, a.shape[0], step):
            chunk = a[i0 : i0 + step]
            fixed = fixed_const if fixed_const is not None else _fixed_buffers(line, bn, float(chunk[0]), data, batch_size)
            parts = []
            for sl in _batches(data.n, batch_size):
                xb = data.x[sl]
                if use_taylor:
                    z, d1, d2 = _taylor(line, fixed, xb, float(chunk[0]))
                    parts.append((z[None], d1[None], d2[None]))
                else:
                    parts.append(_nested_jvp(line, fixed, xb, chunk))
            zs.append(torch.cat([p[0] for p in parts], dim=1))
            d1s.append(torch.cat([p[1] for p in parts], dim=1))
            d2s.append(torch.cat([p[2] for p in parts], dim=1))
    return PathJet(a, _stack_alphas(zs), _stack_alphas(d1s), _stack_alphas(d2s))


def _stack_alphas(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-α chunks once and shape the result (K, n, k)."""
    t = torch.cat(parts, 0)
    return t.flatten(2) if t.dim() > 2 else t.unsqueeze(-1)


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


def _trapezoid(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.trapezoid(y, x, dim=0)


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
        singular: whether the velocity vanished somewhere (the tangent is then undefined, and the
            turning there is not counted).
        alphas: the final grid.
    """

    mean: float
    per_example: torch.Tensor
    stacked: float
    n_alphas: int
    converged: bool
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
    rounds = 0
    while True:
        per, st, sing = _rates(PathJet(alphas, jet.z, dz, d2z))
        turn_ex = _turning(per, dz, alphas)  # (K−1, n)
        turn_st = _turning(st, dz.reshape(K, -1), alphas)  # (K−1,)
        g_mean, g_st = float(turn_ex.sum(0).mean()), float(turn_st.sum())
        if previous is not None:
            pm, ps = previous
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
    reversal = bool((_chord_angles(dz) > HALF_PI_TURN).any()) or bool((_chord_angles(dz.reshape(K, -1)) > HALF_PI_TURN).any())
    return GaussLength(
        g_mean, turn_ex.sum(0), g_st, K, converged, bool(sing) or reversal, tuple(alphas.tolist())
    )


# a single refined grid step that turns the tangent by more than this is taken as a reversal of
# direction through z′ = 0 (a smooth turn that fast is split by the refinement first)
HALF_PI_TURN = 3.0


def logit_linearity(z: torch.Tensor, alphas: torch.Tensor) -> float:
    """∫₀¹ D(α) dα, D(α) = mean_x ‖w − ⟨w, u⟩u‖², w = z(α) − z(0), u = unit(z(1) − z(0)).

    Args:
        z: outputs (K, n, k) on a grid that includes α = 0 and α = 1.
        alphas: the grid (K,).
    """
    w = z - z[0]
    chord = z[-1] - z[0]
    norm = chord.norm(dim=-1, keepdim=True)
    u = torch.where(norm > 0, chord / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(chord))
    perp = w - (w * u).sum(-1, keepdim=True) * u
    d = perp.pow(2).sum(-1).mean(-1)
    return float(_trapezoid(d.double(), alphas.double()))


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
