"""REPAIR along the line: rescale hidden units to the interpolated statistics of the endpoints.

Jordan, Sedghi, Saukh, Entezari & Neyshabur 2022, "REPAIR: REnormalizing Permuted Activations for
Interpolation Repair" observe that the hidden units of an interpolated network θ(α) have collapsed
variance, and restore, channel by channel, the statistics that interpolating the endpoints'
*activations* would give. What is done here, exactly:

Repaired units ("targets"), found in the traced graph of the model:

* every affine ``BatchNorm`` layer (its output, channel c);
* every ``Linear``/``Conv`` layer whose output is not consumed only by BatchNorm and is not the
  model's output (its output units / channels).

Target statistics: over the whole data set, with each endpoint evaluated as stored (eval mode), the
per-channel mean μ_A, μ_B and standard deviation σ_A, σ_B (population, i.e. divided by the count) of
each target's output (for a Linear, over the batch axis; for a convolution, over batch and spatial
axes). At α the targets are μ(α) = (1−α)·μ_A + α·μ_B and σ(α) = (1−α)·σ_A + α·σ_B.

Correction at α: starting from θ(α) with BatchNorm statistics interpolated, the targets are repaired
one at a time in graph order (each repair changes what later ones see). For each, one pass over the
data measures the current per-channel mean m and variance v (population) of

* a Linear/Conv output z: the layer is replaced by z' = s·(z − m) + μ(α), s = σ(α)/√v, by
  scaling its weight rows by s and setting its bias to s·(b − m) + μ(α) (without a bias only
  the scale is corrected);
* a BatchNorm layer's input x: its eval-mode map is set to y = s·(x − m) + μ(α) with
  s = sign(γ(α))·σ(α)/√v, by running_mean = m, running_var = v, weight = s·√(v + ε),
  bias = μ(α).

A channel with v = 0 gets s = 0 (BatchNorm) or is only shifted (Linear/Conv). At α = 0 and α = 1
the repaired network computes exactly what A and B compute as stored (eval mode, their own running
statistics), up to rounding: the BatchNorm entries are rewritten, the function is not. So the
repaired path joins A and B — unlike ``recompute``, whose endpoints use re-estimated statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn
from torch.func import functional_call

from ..errors import InputError
from ..inputs.checkpoint import StateDict
from ..inputs.data import Dataset
from ..path import Line, interpolate
from ..path.batchnorm import batches

__all__ = ["RepairContext", "prepare_repair", "repaired_state", "repair_targets"]


@dataclass(frozen=True)
class RepairContext:
    """What REPAIR needs at every α of one line.

    Attributes:
        line: the path.
        data: the data the statistics are measured on (on the line's device and dtype).
        batch_size: examples per forward pass (None: all).
        targets: (module name, ``"bn"`` | ``"affine"``) in graph order.
        stats_a, stats_b: module name → (per-channel mean, per-channel std) of the target's
            output at endpoint A and at endpoint B.
    """

    line: Line
    data: Dataset
    batch_size: int | None
    targets: tuple[tuple[str, str], ...]
    stats_a: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    stats_b: Mapping[str, tuple[torch.Tensor, torch.Tensor]]


def repair_targets(model: nn.Module) -> tuple[tuple[str, str], ...]:
    """The units REPAIR rescales, in graph order (see the module docstring).

    Raises:
        InputError: the model cannot be traced, or has BatchNorm without affine parameters.
    """
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InputError(f'bn="repair" needs a model torch.fx can trace ({type(exc).__name__}: {first})') from None
    mods = dict(gm.named_modules())
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target in seen:
            continue
        name = str(node.target)
        m = mods[name]
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if not m.affine or not m.track_running_stats:
                raise InputError(f'bn="repair" needs affine BatchNorm with running statistics; {name} has none')
            out.append((name, "bn"))
            seen.add(name)
        elif isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            users = list(node.users)
            only_bn = bool(users) and all(
                u.op == "call_module" and isinstance(mods[str(u.target)], nn.modules.batchnorm._BatchNorm) for u in users
            )
            to_output = any(u.op == "output" for u in users)
            if not only_bn and not to_output:
                out.append((name, "affine"))
                seen.add(name)
    return tuple(out)


def _channel_axis(m: nn.Module) -> int:
    return -1 if isinstance(m, nn.Linear) else 1


def _moments(line: Line, state: StateDict, data: Dataset, batch_size: int | None, names: list[str], use_input: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel population mean and variance of the outputs (or inputs) of modules ``names``."""
    mods = dict(line.shell.named_modules())
    acc: dict[str, list] = {n: [None, None, 0] for n in names}
    handles = []

    def hook(name: str):
        axis = _channel_axis(mods[name])

        def f(module, inputs, output):
            t = (inputs[0] if use_input else output).detach().to(torch.float64)
            t = t.movedim(axis, 0).reshape(t.shape[axis], -1)
            s, q = t.sum(1), (t * t).sum(1)
            a = acc[name]
            a[0] = s if a[0] is None else a[0] + s
            a[1] = q if a[1] is None else a[1] + q
            a[2] += t.shape[1]

        return f

    try:
        for n in names:
            handles.append(mods[n].register_forward_hook(hook(n)))
        with torch.no_grad():
            for sl in batches(data.n, batch_size):
                functional_call(line.shell, state, (data.x[sl],))
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, (s, q, c) in acc.items():
        mean = s / c
        var = (q / c - mean * mean).clamp_min(0.0)
        out[n] = (mean, var)
    return out


def prepare_repair(line: Line, data: Dataset, *, batch_size: int | None = None) -> RepairContext:
    """Find the targets and measure the endpoints' statistics (two passes over ``data``)."""
    if data.n < 2:
        raise InputError('bn="repair" measures statistics over the data and needs at least 2 examples')
    targets = repair_targets(line.shell)
    names = [n for n, _ in targets]
    ends = []
    for state in (line.start, line.end):
        mom = _moments(line, state, data, batch_size, names, use_input=False)
        ends.append({n: (m, v.sqrt()) for n, (m, v) in mom.items()})
    return RepairContext(line, data, batch_size, targets, ends[0], ends[1])


def repaired_state(ctx: RepairContext, alpha: float) -> StateDict:
    """θ(α) with every target rescaled to the interpolated endpoint statistics (module docstring)."""
    line = ctx.line
    state = dict(interpolate(line.start, line.end, alpha))
    mods = dict(line.shell.named_modules())
    for name, kind in ctx.targets:
        m = mods[name]
        prefix = f"{name}." if name else ""
        mean_a, std_a = ctx.stats_a[name]
        mean_b, std_b = ctx.stats_b[name]
        mu = (1.0 - alpha) * mean_a + alpha * mean_b
        sigma = (1.0 - alpha) * std_a + alpha * std_b
        (m_cur, v_cur), = _moments(line, state, ctx.data, ctx.batch_size, [name], use_input=(kind == "bn")).values()
        dtype = state[prefix + "weight"].dtype
        positive = v_cur > 0
        scale = torch.where(positive, sigma / v_cur.clamp_min(1e-300).sqrt(), torch.zeros_like(v_cur))
        if kind == "bn":
            gamma = state[prefix + "weight"].to(torch.float64)
            sign = torch.where(gamma < 0, -torch.ones_like(gamma), torch.ones_like(gamma))
            s = sign * scale
            eps = float(m.eps)
            state[prefix + "running_mean"] = m_cur.to(dtype)
            state[prefix + "running_var"] = v_cur.to(dtype)
            state[prefix + "weight"] = (s * (v_cur + eps).sqrt()).to(dtype)
            state[prefix + "bias"] = mu.to(dtype)
        else:
            s = torch.where(positive, scale, torch.ones_like(scale))
            w = state[prefix + "weight"]
            shape = (-1,) + (1,) * (w.dim() - 1)
            state[prefix + "weight"] = (w.to(torch.float64) * s.reshape(shape)).to(dtype)
            if getattr(m, "bias", None) is not None:
                b = state[prefix + "bias"].to(torch.float64)
                state[prefix + "bias"] = (s * (b - m_cur) + mu).to(dtype)
        if not all(math.isfinite(float(t)) for t in (mu.sum(), sigma.sum())):
            raise InputError(f'bn="repair": non-finite statistics at {name}')
    return state
