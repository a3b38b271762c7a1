"""The straight line θ(α) = (1−α)·θ0 + α·θT in parameter space, and the loss along it.

Every θ(α) is computed afresh from the two endpoints (never by accumulating steps), so θ(0) and
θ(1) are the endpoint tensors exactly. Models are evaluated with ``torch.func.functional_call`` on a
private copy of the caller's module: the caller's module, state dicts and tensors are never touched.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from .arch import has_batchnorm
from .checkpoint import StateDict, match_state_dict
from .data import Dataset
from .errors import InputError

Progress = Callable[[int, int], None]


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
    """

    shell: nn.Module
    start: StateDict
    end: StateDict
    param_names: tuple[str, ...]
    has_bn: bool

    @property
    def device(self) -> torch.device:
        return next(iter(self.start.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(v for v in self.start.values() if v.is_floating_point()).dtype

    def direction(self) -> StateDict:
        """Δθ = θT − θ0 for the trainable parameters."""
        return {k: self.end[k] - self.start[k] for k in self.param_names}

    def at(self, alpha: float, bn: BNPolicy = BNPolicy.INTERPOLATE) -> StateDict:
        """θ(α) for every state entry (BatchNorm statistics by ``bn``, without recomputation)."""
        return interpolate(self.start, self.end, alpha, frozen=self._frozen_names(bn))

    def _frozen_names(self, bn: BNPolicy) -> frozenset[str]:
        if bn == BNPolicy.FROZEN:
            return frozenset(k for k in self.start if k not in self.param_names)
        return frozenset()


def interpolate(
    start: Mapping[str, torch.Tensor],
    end: Mapping[str, torch.Tensor],
    alpha: float,
    frozen: frozenset[str] = frozenset(),
) -> StateDict:
    """θ(α) = (1−α)·θ0 + α·θT entry by entry.

    Integer entries (such as BatchNorm's ``num_batches_tracked``) and names in ``frozen`` take the
    end value. The formula is exact at both ends: θ(0) = θ0 and θ(1) = θT bit for bit.

    >>> a, b = {"w": torch.tensor([1.0, 3.0])}, {"w": torch.tensor([5.0, -1.0])}
    >>> interpolate(a, b, 0.25)["w"].tolist()
    [2.0, 2.0]
    """
    out: StateDict = {}
    for k, t0 in start.items():
        t1 = end[k]
        if k in frozen or not t0.is_floating_point():
            out[k] = t1
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
    shell = copy.deepcopy(model).to(device=device, dtype=dtype)
    shell.eval()
    for m in shell.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average when statistics are re-estimated

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device=device)

    start = {k: cast(v) for k, v in init.items()}
    end = {k: cast(v) for k, v in final.items()}
    for label, state in (("init", start), ("final", end)):
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise InputError(f"{label} checkpoint overflows {dtype} in {', '.join(bad[:6])}")
    names = tuple(n for n, _ in model.named_parameters())
    return Line(shell, start, end, names, has_batchnorm(model))


def distances(line: Line) -> tuple[float, float | None]:
    """‖θT − θ0‖ over the trainable parameters and its ratio to ‖θ0‖ (None when θ0 = 0)."""
    sq_d = sum(float((line.end[k].double() - line.start[k].double()).pow(2).sum()) for k in line.param_names)
    sq_0 = sum(float(line.start[k].double().pow(2).sum()) for k in line.param_names)
    d = math.sqrt(sq_d)
    return d, (d / math.sqrt(sq_0) if sq_0 > 0 else None)


def _batches(n: int, batch_size: int | None) -> list[slice]:
    size = n if not batch_size or batch_size <= 0 else batch_size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def recompute_bn_statistics(line: Line, state: StateDict, x: torch.Tensor, batch_size: int | None) -> StateDict:
    """Reset BatchNorm running statistics and re-estimate them over ``x`` (train mode, no grad).

    Returns a new state: the running statistics are fresh tensors, ``state`` is left unchanged.
    """
    out = dict(state)
    for name, m in line.shell.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            prefix = f"{name}." if name else ""
            out[prefix + "running_mean"] = torch.zeros_like(state[prefix + "running_mean"])
            out[prefix + "running_var"] = torch.ones_like(state[prefix + "running_var"])
            out[prefix + "num_batches_tracked"] = torch.zeros_like(state[prefix + "num_batches_tracked"])
    if x.shape[0] < 2:
        raise InputError("re-estimating BatchNorm statistics needs at least 2 examples (use --bn interpolate or frozen)")
    batches = _batches(x.shape[0], batch_size)
    if len(batches) > 1 and batches[-1].stop - batches[-1].start == 1:  # train-mode BN needs 2+ examples
        batches = batches[:-2] + [slice(batches[-2].start, batches[-1].stop)]
    line.shell.train()
    try:
        with torch.no_grad():
            for sl in batches:
                functional_call(line.shell, out, (x[sl],))
    finally:
        line.shell.eval()
    return out


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


def evaluate(line: Line, state: StateDict, data: Dataset, batch_size: int | None = None) -> tuple[float, float | None]:
    """Mean loss (and accuracy for ``ce``) of one parameter state over the whole data set.

    The mean is exact for any batch size: per-batch sums are accumulated in float64 and divided
    once by the full count.
    """
    total = torch.zeros((), dtype=torch.float64, device=line.device)
    correct = torch.zeros((), dtype=torch.float64, device=line.device)
    with torch.no_grad():
        for sl in _batches(data.n, batch_size):
            out = functional_call(line.shell, state, (data.x[sl],))
            s, c = batch_loss_sums(out, data.y[sl], data.loss)
            total += s.double()
            if c is not None:
                correct += c.double()
    mean = float(total) / loss_normaliser(data)
    return mean, (float(correct) / data.n if data.loss == "ce" else None)


def _evaluate_chunk(
    line: Line, alphas: torch.Tensor, data: Dataset, batch_size: int | None, frozen: frozenset[str]
) -> tuple[list[float], list[float | None]]:
    """Losses at several α at once: ``vmap`` over α of ``functional_call`` (eval mode)."""
    stacked = _stacked(line.start, line.end, alphas, frozen)
    totals = torch.zeros(alphas.shape[0], dtype=torch.float64, device=line.device)
    correct = torch.zeros(alphas.shape[0], dtype=torch.float64, device=line.device)

    def run(p: StateDict, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(line.shell, p, (xb,))

    with torch.no_grad():
        for sl in _batches(data.n, batch_size):
            outs = vmap(run, in_dims=(0, None))(stacked, data.x[sl])
            yb = data.y[sl]
            for i in range(alphas.shape[0]):
                s, c = batch_loss_sums(outs[i], yb, data.loss)
                totals[i] += s.double()
                if c is not None:
                    correct[i] += c.double()
    norm = loss_normaliser(data)
    losses = [float(t) / norm for t in totals.cpu()]
    accs: list[float | None] = [float(c) / data.n if data.loss == "ce" else None for c in correct.cpu()]
    return losses, accs


@dataclass(frozen=True)
class LossCurve:
    """The loss along the path at a grid of α.

    Attributes:
        alphas: the α values, increasing, with both ends 0 and 1 when made by :func:`alpha_grid`.
        losses: mean training loss over the whole data set at each α (torch's mean reduction).
        accuracies: classification accuracy at each α (``ce`` only, else None).
    """

    alphas: tuple[float, ...]
    losses: tuple[float, ...]
    accuracies: tuple[float, ...] | None


def alpha_grid(k: int) -> list[float]:
    """``k`` evenly spaced α in [0, 1], both ends included (exactly 0.0 and 1.0).

    >>> alpha_grid(5)
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if k < 2:
        raise InputError(f"need at least 2 alpha points, got {k}")
    return [i / (k - 1) for i in range(k)]


def loss_curve(
    line: Line,
    data: Dataset,
    alphas: Sequence[float],
    *,
    bn: BNPolicy = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    alpha_chunk: int = 1,
    progress: Progress | None = None,
) -> LossCurve:
    """Mean loss over the whole data set at each α.

    Args:
        line: the path (see :func:`make_line`).
        data: the training data, on the line's device and dtype.
        alphas: where to evaluate.
        bn: BatchNorm statistics policy (ignored for models without BatchNorm).
        batch_size: examples per forward pass (None: all at once). Does not change the result.
        alpha_chunk: α values evaluated together with ``vmap`` (1: a plain loop). Batching helps
            small models on a GPU; it is not used with ``bn=recompute``.
        progress: called with (done, total) after each chunk.
    """
    alist = [float(a) for a in alphas]
    if len(alist) < 2:
        raise InputError(f"need at least 2 alpha points, got {len(alist)}")
    bn = BNPolicy(bn)
    recompute = line.has_bn and bn == BNPolicy.RECOMPUTE
    frozen = line._frozen_names(bn) if line.has_bn else frozenset()
    losses: list[float] = []
    accs: list[float | None] = []
    chunk = 1 if recompute else max(1, int(alpha_chunk))
    for i0 in range(0, len(alist), chunk):
        part = alist[i0 : i0 + chunk]
        if chunk == 1:
            state = interpolate(line.start, line.end, part[0], frozen)
            if recompute:
                state = recompute_bn_statistics(line, state, data.x, batch_size)
            loss, acc = evaluate(line, state, data, batch_size)
            losses.append(loss)
            accs.append(acc)
        else:
            a = torch.tensor(part, dtype=torch.float64, device=line.device)
            ls, acs = _evaluate_chunk(line, a, data, batch_size, frozen)
            losses.extend(ls)
            accs.extend(acs)
        if progress is not None:
            progress(min(i0 + chunk, len(alist)), len(alist))
    bad = [a for a, v in zip(alist, losses) if not math.isfinite(v)]
    if bad:
        raise InputError(f"the loss is not finite along the path (first at alpha={bad[0]:.6g}); try --dtype float64")
    return LossCurve(tuple(alist), tuple(losses), tuple(a for a in accs) if data.loss == "ce" else None)  # type: ignore[arg-type]
