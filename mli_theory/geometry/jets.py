"""Jets of the output path: z(α) = f(X; θ(α)), z′ = J(θ(α))·Δθ and z″ = D²f(θ(α))[Δθ, Δθ].

Two ways to get z′ and z″ (they are compared in the tests):

* ``nested_jvp``: forward mode twice with respect to the scalar α (any model);
* ``taylor``: one pass that carries (h, h′, h″) through models whose traced graph is a chain of
  Linear, BatchNorm1d (with fixed statistics) and elementwise activation modules (decided by
  :mod:`mli_theory.path.structure`, never by class names alone), using that θ(α) is affine in α:
  a Linear layer costs W·h, Δ·h, W·h′, Δ·h′, W·h″.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap

from ..inputs.checkpoint import StateDict
from ..inputs.data import Dataset
from ..path import BNPolicy, Line, batches, recompute_bn_statistics

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


def _taylor_layers(line: Line) -> list[tuple[str, nn.Module]] | None:
    """The traced chain of modules if the one-pass Taylor mode handles every one of them, else None.

    Exact types only (a subclass may compute something else), no hooks (the structure analysis
    refuses them), and a graph that is a plain chain of module calls.
    """
    chain = line.structure.chain
    if not chain:
        return None
    modules = dict(line.shell.named_modules())
    layers = [(name, modules[name]) for name in chain]
    ok = all(type(m) in (nn.Linear, nn.BatchNorm1d, nn.Flatten) + _TAYLOR_ACTS for _, m in layers)
    ok = ok and all(m.approximate == "none" for _, m in layers if type(m) is nn.GELU)
    ok = ok and all(m.start_dim == 1 and m.end_dim == -1 for _, m in layers if type(m) is nn.Flatten)
    return layers if ok else None


def taylor_supported(line: Line) -> bool:
    """Whether the one-pass Taylor mode handles this model (a traced chain of supported modules)."""
    return _taylor_layers(line) is not None


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
    layers = _taylor_layers(line)
    if layers is None:
        raise ValueError("the one-pass Taylor mode does not handle this model")
    s, e = line.start, line.end

    def at(key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if key in fixed:
            return fixed[key], torch.zeros_like(fixed[key])
        return (1 - alpha) * s[key] + alpha * e[key], e[key] - s[key]

    h = x
    h1: torch.Tensor | None = None  # h′ (None means zero)
    h2: torch.Tensor | None = None
    for p, layer in layers:
        if isinstance(layer, nn.Flatten):
            h = h.flatten(1)
            h1 = None if h1 is None else h1.flatten(1)
            h2 = None if h2 is None else h2.flatten(1)
        elif isinstance(layer, nn.Linear):
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
        method: ``taylor`` (one pass; traced chains of Linear/BN/activation modules on 2-D inputs), ``nested_jvp``
            (any model), or ``auto`` (Taylor mode where supported).
        batch_size: examples per pass (bounds memory).
        alpha_chunk: α values per vmapped nested-jvp call (bounds memory).
    """
    bn = BNPolicy(bn)
    a = torch.as_tensor(alphas, dtype=line.dtype, device=line.device).reshape(-1)
    supported = taylor_supported(line) and data.x.dim() == 2
    use_taylor = method == "taylor" or (method == "auto" and supported)
    if use_taylor and not supported:
        raise ValueError("method='taylor' needs a traced chain of Linear, BatchNorm1d, Flatten and elementwise activations")
    per_alpha_fixed = line.has_bn and bn != BNPolicy.FROZEN
    zs, d1s, d2s = [], [], []
    with torch.no_grad():
        fixed_const = None if per_alpha_fixed else _fixed_buffers(line, bn, 0.0, data, batch_size)
        step = 1 if (use_taylor or per_alpha_fixed) else max(1, alpha_chunk)
        for i0 in range(0, a.shape[0], step):
            chunk = a[i0 : i0 + step]
            fixed = fixed_const if fixed_const is not None else _fixed_buffers(line, bn, float(chunk[0]), data, batch_size)
            parts = []
            for sl in batches(data.n, batch_size):
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


