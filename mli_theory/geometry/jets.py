"""Jets of the output path: z(α) = f(X; θ(α)), z′ = J(θ(α))·Δθ and z″ = D²f(θ(α))[Δθ, Δθ].

Two ways to get z′ and z″ (they are compared in the tests):

* ``taylor``: one pass of the jet interpreter (:mod:`mli_theory.geometry.interpreter` with the
  rules of :mod:`mli_theory.geometry.rules`) over the model's :mod:`torch.fx` graph, carrying
  (h, h′, h″) through every operation with its own second-order rule. Parameters are affine in α,
  so a parameter enters as (θ(α), Δθ, 0) and a Linear layer costs W·h, ΔW·h, W·h′, ΔW·h′, W·h″.
  Operations without a rule are evaluated by nested forward mode for that operation alone, and
  named in :attr:`PathJet.fallbacks`. Any model that traces (no hooks, no ``__call__`` override,
  no untraceable control flow) is handled: :func:`taylor_supported`, :func:`taylor_plan`;
* ``nested_jvp``: forward mode twice with respect to the scalar α through the whole model (any
  model). Caveat: torch's nested forward mode of ``F.layer_norm`` is not second-order exact
  (z″ disagrees with finite differences) and ``F.scaled_dot_product_attention`` has no forward
  mode on CPU; the Taylor rules for both are exact.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap
from torch.fx import GraphModule

from ..inputs.checkpoint import StateDict
from ..inputs.data import Dataset
from ..path import BNPolicy, Line, batches, recompute_bn_statistics
from .interpreter import UnsupportedGraph, interpret, plan, trace
from .rules import JET, Jet
from .statistics import NotOnMeasuredCurve, statistics_jets

JetMethod = Literal["auto", "taylor", "nested_jvp"]


@dataclass(frozen=True)
class PathJet:
    """Outputs and their first two α-derivatives at a grid of α.

    Attributes:
        alphas: shape (K,).
        z: outputs, shape (K, n, k) (trailing output dims flattened).
        dz: z′(α), same shape.
        d2z: z″(α), same shape.
        fallbacks: operations the Taylor mode evaluated by nested forward mode because no rule
            covers them (empty for ``nested_jvp`` and when every operation had a rule).
        off_curve: None when z′, z″ are the derivatives of the curve whose loss is measured;
            otherwise why they are not (BatchNorm statistics that change with α were held fixed
            at each α, see :mod:`mli_theory.geometry.statistics`).
    """

    alphas: torch.Tensor
    z: torch.Tensor
    dz: torch.Tensor
    d2z: torch.Tensor
    fallbacks: tuple[str, ...] = ()
    off_curve: str | None = None


# ----------------------------------------------------------------------------- states along α


def _fixed_buffers(line: Line, bn: BNPolicy, alpha: float, data: Dataset, batch_size: int | None) -> StateDict:
    """Entries held constant when differentiating in α: integer entries and BatchNorm statistics (θT's
    under ``frozen``, re-estimated at α under ``recompute``, interpolated to α under ``interpolate``,
    where nested forward mode cannot follow them). Every other entry, parameters and other floating
    buffers alike, moves by its declared motion (:meth:`mli_theory.path.Line.motions`)."""
    state = line.at(alpha, bn)
    if line.has_bn and bn == BNPolicy.RECOMPUTE:
        state = recompute_bn_statistics(line, state, data.x, batch_size)
    stats = line.statistics
    return {k: v for k, v in state.items() if not v.is_floating_point() or k in stats}


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

    # grad mode on (nothing requires grad, so no graph is kept): with grad disabled torch decomposes
    # silu and mish into *_backward kernels that have no forward derivative, and nested jvp fails
    with torch.enable_grad():
        return vmap(both)(alphas)


# ----------------------------------------------------------------------------- Taylor mode

_GRAPHS: "weakref.WeakKeyDictionary[nn.Module, GraphModule | UnsupportedGraph]" = weakref.WeakKeyDictionary()


def _graph(line: Line) -> GraphModule | UnsupportedGraph:
    """The traced model (cached per shell), or why the interpreter cannot run it."""
    got = _GRAPHS.get(line.shell)
    if got is None:
        try:
            got = trace(line.shell)
        except UnsupportedGraph as exc:
            got = UnsupportedGraph(str(exc))  # without its traceback, which would keep the shell alive
        _GRAPHS[line.shell] = got
    return got


def taylor_supported(line: Line) -> bool:
    """Whether the one-pass Taylor mode handles this model: torch.fx traces it (no hooks, no
    ``__call__`` override, no data-dependent control flow, no in-place update it cannot follow)."""
    return isinstance(_graph(line), GraphModule)


def taylor_plan(line: Line) -> list[str]:
    """Operations the Taylor mode will evaluate by nested forward mode (no rule), in graph order.

    Static: a rule may also decline a call at run time (BatchNorm in training mode, say);
    :attr:`PathJet.fallbacks` records what actually ran.

    Raises:
        ValueError: the model cannot be interpreted (the message says why).
    """
    gm = _graph(line)
    if isinstance(gm, UnsupportedGraph):
        raise ValueError(f"the Taylor mode cannot run this model: {gm}")
    return plan(gm, JET)


def _taylor(gm: GraphModule, params: Mapping[str, Jet], x: torch.Tensor, fallbacks: list[str]):
    """(z, z′, z″) at one α in a single pass of the jet interpreter."""
    out = interpret(gm, JET, [Jet(x)], params, fallbacks=fallbacks)
    if isinstance(out, torch.Tensor):
        out = Jet(out)
    if not isinstance(out, Jet):
        raise ValueError(f"the Taylor mode needs a model that returns one tensor, got {type(out).__name__}")
    d1, d2 = out.derivatives()
    return out.v, d1, d2


class _ParamJets(Mapping):
    """The parameter jets (θ(α), Δθ, 0), built when a layer reads them and dropped after it, so
    that no copy of the whole parameter vector (θ(α) or Δθ) is ever held: the extra memory over a
    plain forward pass is one layer's weights."""

    def __init__(self, line: Line, fixed: Mapping[str, torch.Tensor | Jet], moving: frozenset[str], alpha: float) -> None:
        self.line, self.fixed, self.moving, self.alpha = line, fixed, moving, alpha

    def __getitem__(self, k: str) -> Jet:
        if k in self.fixed:
            got = self.fixed[k]
            return got if isinstance(got, Jet) else Jet(got)
        end = self.line.end[k]  # KeyError for a name the line does not hold
        if k not in self.moving:
            return Jet(end)
        s = self.line.start[k]
        return Jet((1 - self.alpha) * s + self.alpha * end, end - s)

    def __contains__(self, k: object) -> bool:
        return k in self.fixed or k in self.line.start

    def __iter__(self):
        return iter(self.line.start)

    def __len__(self) -> int:
        return len(self.line.start)


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

    The derivatives are those of the curve whose loss ``check`` measures. With BatchNorm that curve
    moves the running statistics by the policy (``frozen``: θT's; ``interpolate``: affine in α;
    ``recompute``, the reference's: re-estimated from the data at each α), and the Taylor mode
    differentiates through them (:mod:`mli_theory.geometry.statistics`). Where it cannot (nested
    forward mode, or a re-estimation pass it cannot follow) the statistics are held fixed at each
    α and :attr:`PathJet.off_curve` says so.

    Args:
        line: the path.
        data: inputs (targets unused), on the line's device and dtype.
        alphas: where to evaluate.
        bn: BatchNorm policy.
        method: ``taylor`` (one pass of the jet interpreter; any model torch.fx can trace, see
            :func:`taylor_supported`), ``nested_jvp`` (any model), or ``auto`` (Taylor mode where supported).
        batch_size: examples per pass (bounds memory), and the minibatches of the re-estimation.
        alpha_chunk: α values per vmapped nested-jvp call (bounds memory).
    """
    bn = BNPolicy(bn)
    a = torch.as_tensor(alphas, dtype=line.dtype, device=line.device).reshape(-1)
    gm = _graph(line)
    supported = isinstance(gm, GraphModule)
    use_taylor = method == "taylor" or (method == "auto" and supported)
    if use_taylor and not supported:
        raise ValueError(f"method='taylor' cannot run this model: {gm}")
    moving_stats = line.has_bn and bn != BNPolicy.FROZEN
    reestimated = line.has_bn and bn == BNPolicy.RECOMPUTE  # interpolated statistics move like parameters
    zs, d1s, d2s = [], [], []
    fallbacks: list[str] = []
    off_curve: str | None = None
    with torch.no_grad():
        if use_taylor:
            moving = frozenset(k for k in line.start if line.start[k].is_floating_point())
            held = {k: v for k, v in line.end.items() if not v.is_floating_point()}
            if line.has_bn and bn == BNPolicy.FROZEN:  # the statistics at θT's, as the loss curve has them
                frozen = line._frozen_names(bn)
                held = {k: v for k, v in line.end.items() if not v.is_floating_point() or k in frozen}
            for alpha in a.tolist():
                fixed: dict[str, torch.Tensor | Jet] = dict(held)
                if reestimated and off_curve is None:
                    try:
                        fixed.update(statistics_jets(line, gm, _ParamJets(line, held, moving, alpha), data, batch_size))  # type: ignore[arg-type]
                    except NotOnMeasuredCurve as exc:
                        off_curve = f"BatchNorm statistics held fixed at each α: {exc}"
                if reestimated and off_curve is not None:
                    fixed = dict(_fixed_buffers(line, bn, alpha, data, batch_size))
                params = _ParamJets(line, fixed, moving, alpha)
                parts = [_taylor(gm, params, data.x[sl], fallbacks) for sl in batches(data.n, batch_size)]  # type: ignore[arg-type]
                zs.append(torch.cat([p[0][None] for p in parts], dim=1))
                d1s.append(torch.cat([p[1][None] for p in parts], dim=1))
                d2s.append(torch.cat([p[2][None] for p in parts], dim=1))
        else:
            if moving_stats:
                off_curve = (
                    "BatchNorm statistics held fixed at each α: nested forward mode cannot differentiate through "
                    "them (torch's eval-mode batch norm has a zero forward derivative in its running statistics)"
                )
            fixed_const = None if moving_stats else _fixed_buffers(line, bn, 0.0, data, batch_size)
            step = 1 if moving_stats else max(1, alpha_chunk)
            for i0 in range(0, a.shape[0], step):
                chunk = a[i0 : i0 + step]
                fixed_buf = fixed_const if fixed_const is not None else _fixed_buffers(line, bn, float(chunk[0]), data, batch_size)
                parts = [_nested_jvp(line, fixed_buf, data.x[sl], chunk) for sl in batches(data.n, batch_size)]
                zs.append(torch.cat([p[0] for p in parts], dim=1))
                d1s.append(torch.cat([p[1] for p in parts], dim=1))
                d2s.append(torch.cat([p[2] for p in parts], dim=1))
    return PathJet(a, _stack_alphas(zs), _stack_alphas(d1s), _stack_alphas(d2s), tuple(fallbacks), off_curve)


def _stack_alphas(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-α chunks once and shape the result (K, n, k)."""
    t = torch.cat(parts, 0)
    return t.flatten(2) if t.dim() > 2 else t.unsqueeze(-1)


