"""The loss along the path at a grid of α (exact full-set means, vmapped α chunks)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch.func import functional_call, vmap

from ..errors import InputError
from ..inputs.checkpoint import StateDict
from ..inputs.data import Dataset
from .batchnorm import batches, check_recompute_batch_size, recompute_bn_statistics
from .line import BNPolicy, Line, _stacked, interpolate
from .losses import batch_loss_sums, loss_normaliser

Progress = Callable[[int, int], None]


def probe(line: Line, data: Dataset) -> None:
    """Run the model on two examples so that a shape mismatch becomes a one-line :class:`InputError`.

    Checks that the model returns one tensor, that MSE targets have its per-example shape, and that
    cross-entropy labels index its (n, classes) outputs.
    """
    try:
        with torch.no_grad():
            out = functional_call(line.shell, line.start, (data.x[:2],))
    except InputError:  # the data's own reader (a streamed source) says what is wrong
        raise
    except (RuntimeError, ValueError, IndexError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"data x of shape {tuple(data.x.shape)} does not fit the model: {msg[:200]}") from None
    except Exception as exc:  # noqa: BLE001 - the user's forward fails on its own: one line, not a traceback
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"the model's forward raised {type(exc).__name__} on two examples of the data: {msg[:200]}") from None
    if not isinstance(out, torch.Tensor):
        raise InputError(f"the model returns {type(out).__name__}, not a tensor")
    if data.loss == "mse" and tuple(out.shape[1:]) != tuple(data.y.shape[1:]):
        raise InputError(
            f"model outputs have shape {tuple(out.shape[1:])} per example but targets y have "
            f"{tuple(data.y.shape[1:])}"
        )
    if data.loss == "ce":
        if out.dim() != 2:
            raise InputError(f"cross-entropy needs (n, classes) outputs, the model gives {tuple(out.shape)}")
        if int(data.y.max()) >= out.shape[1]:
            raise InputError(f"label {int(data.y.max())} out of range for a model with {out.shape[1]} outputs")


def data_on_line(line: Line, data: Dataset, bn: BNPolicy | str, batch_size: int | None = None) -> Dataset:
    """``data`` cast to the line's device and dtype, after the checks every evaluation along the line
    needs: BatchNorm re-estimation (``bn="recompute"``) needs batches and a data set of 2+ examples,
    and the model must accept the data (:func:`probe`).

    Raises:
        InputError: naming the parameter, before any heavy work.
    """
    if line.has_bn and BNPolicy(bn) == BNPolicy.RECOMPUTE:
        check_recompute_batch_size(batch_size)
        if data.n < 2:
            raise InputError('bn="recompute" re-estimates BatchNorm statistics and needs at least 2 examples')
    data = data.to(line.device, line.dtype)
    probe(line, data)
    if line.has_bn and BNPolicy(bn) == BNPolicy.RECOMPUTE:
        _probe_train_mode(line, data)
        if batch_size is not None and 1 < batch_size < data.n and data.n % batch_size == 1:
            note = (f'bn="recompute": the last re-estimation batch of one example is merged into the one before '
                    f"({batch_size + 1} examples), since train-mode BatchNorm needs 2+ examples per batch")
            data = replace(data, notes=data.notes + (note,))
    return data


def _probe_train_mode(line: Line, data: Dataset) -> None:
    """Run the re-estimation pass on two examples, so that a model whose train-mode forward fails
    (torch refuses ``BatchNorm(eps=0)`` in training, for one) is refused in one line up front."""
    try:
        recompute_bn_statistics(line, line.start, data.x[:2], None)
    except InputError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f'bn="recompute" re-estimates BatchNorm statistics with the model in train mode, and its train-mode '
            f'forward fails: {msg[:200]} (use bn="interpolate" or bn="frozen")'
        ) from None


def evaluate(line: Line, state: StateDict, data: Dataset, batch_size: int | None = None) -> tuple[float, float | None]:
    """Mean loss (and accuracy for ``ce``) of one parameter state over the whole data set.

    The mean is exact for any batch size: per-batch sums are accumulated in float64 and divided
    once by the full count.
    """
    total = torch.zeros((), dtype=torch.float64, device=line.device)
    correct = torch.zeros((), dtype=torch.float64, device=line.device)
    with torch.no_grad():
        for sl in batches(data.n, batch_size):
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
        for sl in batches(data.n, batch_size):
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
    frozen = line._frozen_names(bn)  # the declared motion of every entry (Line.motions)
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
        hint = " (evaluate in float64 with dtype=torch.float64)" if line.dtype != torch.float64 else ""
        raise InputError(f"the loss is not finite along the path (first at alpha={bad[0]:.6g}){hint}")
    return LossCurve(tuple(alist), tuple(losses), tuple(a for a in accs) if data.loss == "ce" else None)  # type: ignore[arg-type]
