"""BatchNorm statistics along the path: re-estimation as the reference implementation does it."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..errors import InputError
from ..inputs.checkpoint import StateDict
from .line import Line


def batches(n: int, batch_size: int | None) -> list[slice]:
    """Slices of ``range(n)`` of at most ``batch_size`` (None or ≤ 0: one slice)."""
    size = n if not batch_size or batch_size <= 0 else batch_size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def recompute_batches(n: int, batch_size: int | None) -> list[slice]:
    """The minibatches of the re-estimation pass: :func:`batches`, with a last batch of one
    example merged into the one before (train-mode BatchNorm needs 2+ examples)."""
    parts = batches(n, batch_size)
    if len(parts) > 1 and parts[-1].stop - parts[-1].start == 1:
        parts = parts[:-2] + [slice(parts[-2].start, parts[-1].stop)]
    return parts


def check_recompute_batch_size(batch_size: int | None) -> None:
    """Train-mode BatchNorm needs 2+ examples per batch: refuse ``batch_size=1`` up front."""
    if batch_size is not None and 0 < batch_size < 2:
        raise InputError(
            f"bn=\"recompute\" re-estimates BatchNorm statistics in train mode, which needs batches of at least "
            f"2 examples; got batch_size={batch_size}"
        )


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
        raise InputError(
            "re-estimating BatchNorm statistics needs at least 2 examples (use bn=\"interpolate\" or \"frozen\")"
        )
    check_recompute_batch_size(batch_size)
    parts = recompute_batches(x.shape[0], batch_size)
    line.shell.train()
    try:
        with torch.no_grad():
            for sl in parts:
                functional_call(line.shell, out, (x[sl],))
    finally:
        line.shell.eval()
    return out
