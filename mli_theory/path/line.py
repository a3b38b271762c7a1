"""The straight line θ(α) = (1−α)·θ0 + α·θT in parameter space.

Every θ(α) is computed afresh from the two endpoints (never by accumulating steps), so θ(0) and
θ(1) are the endpoint tensors exactly. Models are evaluated with ``torch.func.functional_call`` on a
private copy of the caller's module: the caller's module, state dicts and tensors are never touched.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from enum import Enum
from typing import Mapping

import torch
from torch import nn

from ..errors import InputError
from ..inputs.arch import has_batchnorm
from ..inputs.checkpoint import StateDict, match_state_dict
from .structure import PathKind, PathStructure, analyse


class BNPolicy(str, Enum):
    """How BatchNorm running statistics are set at each α.

    * ``recompute``: reset them and re-estimate with one no-grad pass in train mode over the
      training data (cumulative average over minibatches), then evaluate in eval mode; this is what
      the reference implementation of Lucas et al. (2021) does.
    * ``interpolate``: interpolate them like the parameters.
    * ``frozen``: hold them fixed at the final checkpoint's values for every α, so that the outputs
      are a smooth function of the parameters alone (for differentiation).
    """

    RECOMPUTE = "recompute"
    INTERPOLATE = "interpolate"
    FROZEN = "frozen"


class Motion(str, Enum):
    """How one state-dict entry moves along the path: the one declaration every evaluation reads
    (the loss curve, the jets, the exact decision and the enclosures alike).

    * ``affine``: (1−α)·θ0 + α·θT — every parameter and every other floating buffer;
    * ``end``: held at θT's value — integer entries (``num_batches_tracked``) and, under
      ``bn="frozen"``, BatchNorm running statistics;
    * ``recomputed``: BatchNorm running statistics under ``bn="recompute"``: reset and re-estimated
      at every α by one train-mode pass over the data (:func:`mli_theory.path.recompute_bn_statistics`).
    """

    AFFINE = "affine"
    END = "end"
    RECOMPUTED = "recomputed"


def batchnorm_statistics(model: nn.Module) -> frozenset[str]:
    """State-dict names of the running mean and variance of every BatchNorm layer that tracks them
    (the entries :func:`mli_theory.path.recompute_bn_statistics` resets and re-estimates).

    >>> sorted(batchnorm_statistics(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))))
    ['1.running_mean', '1.running_var']
    """
    out = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            prefix = f"{name}." if name else ""
            out.update((prefix + "running_mean", prefix + "running_var"))
    return frozenset(out)


def motions(start: Mapping[str, torch.Tensor], statistics: frozenset[str], bn: "BNPolicy | str") -> dict[str, Motion]:
    """The declared :class:`Motion` of every entry of ``start`` under the BatchNorm policy ``bn``.

    >>> sd = {"w": torch.zeros(2), "scale": torch.ones(2), "bn.running_mean": torch.zeros(2),
    ...       "bn.num_batches_tracked": torch.tensor(0)}
    >>> {k: v.value for k, v in motions(sd, frozenset({"bn.running_mean"}), "frozen").items()}
    {'w': 'affine', 'scale': 'affine', 'bn.running_mean': 'end', 'bn.num_batches_tracked': 'end'}
    """
    bn = BNPolicy(bn)
    out: dict[str, Motion] = {}
    for k, t in start.items():
        if not t.is_floating_point():
            out[k] = Motion.END
        elif k in statistics:
            out[k] = {BNPolicy.RECOMPUTE: Motion.RECOMPUTED, BNPolicy.INTERPOLATE: Motion.AFFINE, BNPolicy.FROZEN: Motion.END}[bn]
        else:
            out[k] = Motion.AFFINE
    return out


@dataclass(frozen=True)
class Line:
    """Two endpoints of a straight path, cast to one device and dtype.

    Attributes:
        shell: a private deep copy of the caller's module; only used as a function through
            ``functional_call`` (its own tensors are never read).
        start: θ0 state (parameters and buffers), keyed like ``shell.state_dict()``.
        end: θT state, same keys.
        param_names: names of the trainable parameters (the entries that define distance).
        has_bn: whether the model has BatchNorm layers with running statistics.
        structure: what the model computes, traced once (:func:`mli_theory.path.structure.analyse`);
            every method that depends on the model's form reads it from here.
        caveat: why a caller who loads θ(α) into the model may run other weights than the line
            (:func:`loading_differs`), else None: no certificate is given then.
        source: the caller's module itself (never modified), on which the forward is compared with
            its trace (:func:`mli_theory.path.fidelity.line_trace_differs`): a forward can tell a copy
            from the original it was given (by identity: ``self.box is Net.BOX``), and what the
            certificate speaks of is the original.
    """

    shell: nn.Module
    start: StateDict
    end: StateDict
    param_names: tuple[str, ...]
    has_bn: bool
    structure: PathStructure
    source: nn.Module | None = None
    caveat: str | None = None

    @property
    def device(self) -> torch.device:
        return next(iter(self.start.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(v for v in self.start.values() if v.is_floating_point()).dtype

    def at(self, alpha: float, bn: BNPolicy = BNPolicy.INTERPOLATE) -> StateDict:
        """θ(α) for every state entry by its declared motion (:meth:`motions`; re-estimated BatchNorm
        statistics are interpolated here, the caller re-estimates them)."""
        return interpolate(self.start, self.end, alpha, frozen=self._frozen_names(bn))

    @property
    def statistics(self) -> frozenset[str]:
        """Names of the BatchNorm running statistics (:func:`batchnorm_statistics` of the model)."""
        return batchnorm_statistics(self.shell)

    def motions(self, bn: BNPolicy | str) -> dict[str, Motion]:
        """The declared motion of every state entry under ``bn`` (:func:`motions`)."""
        return motions(self.start, self.statistics, bn)

    def _frozen_names(self, bn: BNPolicy | str) -> frozenset[str]:
        """Floating entries held at θT's value under ``bn`` (BatchNorm statistics when frozen)."""
        return frozenset(k for k, m in self.motions(bn).items() if m == Motion.END and self.start[k].is_floating_point())


def interpolate(
    start: Mapping[str, torch.Tensor],
    end: Mapping[str, torch.Tensor],
    alpha: float,
    frozen: frozenset[str] = frozenset(),
) -> StateDict:
    """θ(α) = (1−α)·θ0 + α·θT entry by entry.

    Integer entries (such as BatchNorm's ``num_batches_tracked``) and names in ``frozen`` take the
    end value (see :class:`Motion`). The formula is exact at both ends: θ(0) = θ0 and θ(1) = θT bit for bit.

    >>> a, b = {"w": torch.tensor([1.0, 3.0])}, {"w": torch.tensor([5.0, -1.0])}
    >>> interpolate(a, b, 0.25)["w"].tolist()
    [2.0, 2.0]
    """
    out: StateDict = {}
    for k, t0 in start.items():
        t1 = end[k]
        if k in frozen or not t0.is_floating_point():
            out[k] = t1.clone()  # a fresh tensor per α: a forward that writes buffers in place changes no endpoint
        else:
            out[k] = (1.0 - alpha) * t0 + alpha * t1
    return out


def _stacked(start: StateDict, end: StateDict, alphas: torch.Tensor, frozen: frozenset[str]) -> StateDict:
    """θ(α) for a vector of α values, stacked along a new leading axis (for ``vmap``)."""
    out: StateDict = {}
    for k, t0 in start.items():
        t1 = end[k]
        if k in frozen or not t0.is_floating_point():
            out[k] = t1.expand(alphas.shape[0], *t1.shape)
        else:
            a = alphas.to(t0.dtype).reshape(-1, *([1] * t0.dim()))
            out[k] = (1.0 - a) * t0 + a * t1
    return out


def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that shares no tensor with it.

    Modules that keep a *computed* tensor as a plain attribute (``torch.nn.utils.weight_norm``'s
    ``weight``, ``torch.nn.utils.prune``'s masked ``weight``: non-leaf results of a forward
    pre-hook) defeat ``copy.deepcopy``; such attributes are copied detached (the hook recomputes
    them from the parameters at every call, so their value never matters).

    >>> m = nn.utils.weight_norm(nn.Linear(2, 1))
    >>> c = private_copy(m)
    >>> c.weight_v is not m.weight_v and torch.equal(c.weight_v, m.weight_v)
    True
    """
    memo: dict[int, object] = {}
    for m in model.modules():
        for value in vars(m).values():
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
    try:
        return copy.deepcopy(model, memo)
    except Exception as exc:  # a module that cannot be copied cannot be evaluated without touching it
        raise InputError(f"the model cannot be copied for evaluation ({type(exc).__name__}: {str(exc).strip()[:160]})") from None


def tied_entries(model: nn.Module) -> list[tuple[str, ...]]:
    """Groups of state-dict names that are one tensor in ``model`` (tied weights), each in order.

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)); m[1].weight = m[0].weight
    >>> tied_entries(m)
    [('0.weight', '1.weight')]
    """
    groups: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    return [tuple(g) for g in groups.values() if len(g) > 1]


def _untied(shell: nn.Module, tied: list[tuple[str, ...]]) -> nn.Module:
    """``shell`` with every tied entry given a tensor of its own. The checkpoints hold equal values
    under every name of a group, so every θ(α) does too and the computation is unchanged; but
    ``functional_call`` can then take the whole state dict (it refuses two values for one tensor)."""
    for group in tied:
        for name in group[1:]:
            prefix, _, leaf = name.rpartition(".")
            module = shell.get_submodule(prefix)
            t = getattr(module, leaf)
            if isinstance(t, nn.Parameter):
                setattr(module, leaf, nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad))
            else:
                module._buffers[leaf] = t.detach().clone()
    return shell


def make_line(
    model: nn.Module,
    init: StateDict,
    final: StateDict,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Line:
    """Validate two checkpoints against ``model`` and build the path between them.

    Args:
        model: the architecture (its own weights are ignored, and it is not modified).
        init: θ0 state dict.
        final: θT state dict.
        device: where to evaluate.
        dtype: floating dtype for parameters, buffers and data.

    Raises:
        InputError: key or shape mismatch, or non-finite values (naming the entries).
    """
    init = match_state_dict(model, init, "init")
    final = match_state_dict(model, final, "final")
    tied = tied_entries(model)
    for label, state in (("init", init), ("final", final)):
        for group in tied:
            for other in group[1:]:
                if not torch.equal(state[other], state[group[0]]):
                    raise InputError(
                        f"{label} checkpoint: {group[0]} and {other} are one tensor in the model (tied weights) "
                        "but differ in the checkpoint"
                    )
    shell = _untied(private_copy(model), tied)
    if any(t.is_meta for t in itertools.chain(shell.parameters(), shell.buffers())):
        shell = shell.to_empty(device=device)  # built on the meta device: its own tensors are never read
    shell = shell.to(device=device, dtype=dtype)
    shell.eval()
    for m in shell.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average when statistics are re-estimated

    def cast(t: torch.Tensor) -> torch.Tensor:  # always a copy: a forward that writes its buffers never reaches the caller
        t = t.detach()
        return (t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device=device)).clone()

    # an entry the model holds as integers is loaded as integers (``load_state_dict`` copies into the
    # model's tensor, truncating a float checkpoint entry): it never moves affinely along the path
    kinds = {k: t.dtype for k, t in itertools.chain(model.named_parameters(remove_duplicate=False),
                                                  model.named_buffers(remove_duplicate=False))}

    def as_loaded(k: str, t: torch.Tensor) -> torch.Tensor:
        held = kinds.get(k)
        if held is not None and not (held.is_floating_point or held.is_complex) and t.is_floating_point():
            return t.detach().to(held)
        return t

    start = {k: cast(as_loaded(k, v)) for k, v in init.items()}
    end = {k: cast(as_loaded(k, v)) for k, v in final.items()}
    for label, state in (("init", start), ("final", end)):
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise InputError(f"{label} checkpoint overflows {dtype} in {', '.join(bad[:6])}")
    names = tuple(n for n, _ in model.named_parameters())
    structure = analyse(shell)
    caveat = loading_differs(model, shell, start, end)
    if caveat is not None and structure.kind != PathKind.UNKNOWN:
        structure = PathStructure(PathKind.UNKNOWN, caveat)
    return Line(shell, start, end, names, has_batchnorm(model), structure, source=model, caveat=caveat)


def loading_differs(model: nn.Module, shell: nn.Module, start: Mapping[str, torch.Tensor],
                    end: Mapping[str, torch.Tensor]) -> str | None:
    """Why a caller who loads θ(α) into ``model`` (``load_state_dict``) may run other weights than
    the line swaps into its copy (None if nothing is seen): an integer entry that moves (the line
    holds it at θT's value, a caller's interpolation truncates it), or two of the model's tensors
    that share memory without being one tensor (loading one writes the other; the line's copies
    share nothing)."""
    moved = moving_integers(shell, start, end)
    if moved:
        return (f"the integer entry {moved[0]!r} differs between the checkpoints and the path holds it at θT's value; a "
                "caller who interpolates and loads it gets other (truncated) values, which a certificate would not be about")
    shared = _sharing_memory(model)
    if shared is not None:
        a, b = shared
        return (f"{a} and {b} share memory without being one tensor: loading a state dict into the model writes one "
                "through the other, which the line (each entry swapped in on its own) does not")
    return None


def _sharing_memory(model: nn.Module) -> tuple[str, str] | None:
    """Two names of the model's tensors (parameters, buffers, tensor attributes) whose memory
    overlaps though they are different tensor objects (tied entries, one object, are fine)."""
    spans: list[tuple[int, int, str, int]] = []
    seen: set[int] = set()
    for prefix, m in model.named_modules(remove_duplicate=False):
        for key, t in vars(m).items():
            tensors = t.items() if key in ("_parameters", "_buffers") and isinstance(t, dict) else [(key, t)]
            for name, v in tensors:
                if not isinstance(v, torch.Tensor) or v.is_meta or v.layout != torch.strided or id(v) in seen:
                    continue
                seen.add(id(v))
                try:
                    storage = v.untyped_storage()
                except (RuntimeError, NotImplementedError):
                    continue
                if storage.nbytes() == 0 or v.numel() == 0:
                    continue
                lo = storage.data_ptr() + v.storage_offset() * v.element_size()
                hi = lo + (sum((n - 1) * st for n, st in zip(v.shape, v.stride())) + 1) * v.element_size()
                spans.append((lo, hi, f"{prefix + '.' if prefix else ''}{name}", id(v)))
    spans.sort()
    reach = None  # the span reaching furthest so far: (end, name)
    for lo, hi, name, _ in spans:
        if reach is not None and lo < reach[0]:
            return reach[1], name
        if reach is None or hi > reach[0]:
            reach = (hi, name)
    return None


def moving_integers(shell: nn.Module, start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor]) -> list[str]:
    """The integer entries that differ between θ0 and θT, except BatchNorm's own counters
    ``num_batches_tracked`` (read by torch's own BatchNorm classes in training mode only, where the
    statistics are re-estimated from a counter reset to 0)."""
    counters = {f"{n}.num_batches_tracked" if n else "num_batches_tracked" for n, m in shell.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and type(m).__module__.startswith("torch.")}
    return [k for k, t in start.items() if not (t.is_floating_point() or t.is_complex()) and k not in counters
            and k in end and not torch.equal(t, end[k])]


def distances(line: Line) -> tuple[float, float | None]:
    """‖θT − θ0‖ over the trainable parameters and its ratio to ‖θ0‖ (None when θ0 = 0)."""
    sq_d = sum(float((line.end[k].double() - line.start[k].double()).pow(2).sum()) for k in line.param_names)
    sq_0 = sum(float(line.start[k].double().pow(2).sum()) for k in line.param_names)
    d = math.sqrt(sq_d)
    return d, (d / math.sqrt(sq_0) if sq_0 > 0 else None)


