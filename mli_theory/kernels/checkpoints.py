"""Kernel distance and velocity between the saved checkpoints of one training run.

A run folder written by ``mli-theory train --save-every STEPS`` keeps its checkpoints as
``<run>/checkpoints/step_<STEP, zero-padded to 8 digits>.pt`` (state dicts from ``torch.save``).
:func:`list_checkpoints` finds and sorts them; :func:`kernel_between_checkpoints` computes, for
checkpoints θ_{t_0}, θ_{t_1}, … of one run, the distance of each kernel from the first,
S(K_{t_0}, K_{t_i}), and Fort et al.'s velocity S(K_{t_{i−1}}, K_{t_i}) / (t_i − t_{i−1}) per
optimisation step (see :mod:`mli_theory.kernels.distance`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import InputError
from ..inputs.checkpoint import load_state_dict, match_state_dict
from ..path import make_line, recompute_bn_statistics
from ..path.batchnorm import check_recompute_batch_size
from .along import _json_safe, sequence_warnings
from .distance import distance_from_products, step_velocity
from .ntk import DEFAULT_MEMORY, NTKModel, check_kernel, check_recipe
from .sequence import kernel_sequence
from .spectrum import DENSE_EIG_MAX

_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


@dataclass(frozen=True)
class CheckpointFile:
    """One saved checkpoint: its optimisation step and file path."""

    step: int
    path: str


def list_checkpoints(run_dir: str) -> tuple[CheckpointFile, ...]:
    """The ``step_*.pt`` checkpoints of a run folder, sorted by step.

    Looks in ``<run_dir>/checkpoints/`` (or in ``run_dir`` itself when it holds the files directly).

    Raises:
        InputError: no such folder, or no checkpoint files in it.
    """
    if not os.path.isdir(run_dir):
        raise InputError(f"run folder not found: {run_dir}")
    folder = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(folder):
        folder = run_dir
    found = []
    for name in os.listdir(folder):
        m = _STEP_FILE.match(name)
        if m and os.path.isfile(os.path.join(folder, name)):
            found.append(CheckpointFile(int(m.group(1)), os.path.join(folder, name)))
    if not found:
        raise InputError(
            f"no checkpoints (step_XXXXXXXX.pt) in {folder}; train with 'mli-theory train --save-every STEPS'"
        )
    found.sort(key=lambda c: c.step)
    steps = [c.step for c in found]
    if len(set(steps)) != len(steps):
        raise InputError(f"{folder} holds two checkpoint files for one step")
    return tuple(found)


def load_checkpoints(files: Sequence[CheckpointFile]) -> list[dict[str, torch.Tensor]]:
    """Read the state dicts of :func:`list_checkpoints` (``weights_only=True``)."""
    return [load_state_dict(c.path) for c in files]


@dataclass(frozen=True)
class CheckpointKernels:
    """Kernels of a sequence of training checkpoints.

    Attributes:
        steps: the optimisation step of each checkpoint, increasing.
        distance_from_first: S(K_{t_0}, K_{t_i}) per checkpoint (0 for the first).
        consecutive_distance: S(K_{t_{i−1}}, K_{t_i}) for i ≥ 1 (length M−1).
        velocity: consecutive_distance / (t_i − t_{i−1}), the kernel velocity per step of Fort et al.
            (2020) (length M−1).
        pl_lambda_min: λmin(K_{t_i}) per checkpoint (None where not computed).
        kernel_norm: ‖K_{t_i}‖_F.
        kernel, recipe, mode, n_examples: as in :class:`~mli_theory.kernels.KernelPath`.
        warnings: things the user should know.
    """

    steps: tuple[int, ...]
    distance_from_first: tuple[float, ...]
    consecutive_distance: tuple[float, ...]
    velocity: tuple[float, ...]
    pl_lambda_min: tuple[float | None, ...]
    kernel_norm: tuple[float, ...]
    kernel: str
    recipe: str
    mode: str
    n_examples: int
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes null)."""
        return _json_safe(asdict(self))


def kernel_between_checkpoints(
    model: nn.Module,
    states: Sequence[Mapping[str, torch.Tensor]],
    x: torch.Tensor,
    *,
    steps: Sequence[int] | None = None,
    kernel: str = "full",
    recipe: str = "auto",
    recompute_bn: bool = False,
    bn_x: torch.Tensor | None = None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    memory_bytes: int = DEFAULT_MEMORY,
    lambda_min: bool = True,
    dense_eig_max: int = DENSE_EIG_MAX,
    progress: Callable[[int, int], None] | None = None,
) -> CheckpointKernels:
    """Kernel distances from the first checkpoint and consecutive velocities.

    Args:
        model: the architecture (not modified; its own weights are ignored).
        states: state dicts of the checkpoints, in training order (not modified).
        x: the kernel's examples.
        steps: optimisation step of each state (default 0, 1, 2, …).
        kernel, recipe, memory_bytes, dense_eig_max: as for
            :func:`~mli_theory.kernels.kernel_along_path`.
        recompute_bn: re-estimate BatchNorm statistics of each checkpoint over ``bn_x`` (default
            ``x``) before its kernel; otherwise each checkpoint's stored statistics are used.
        batch_size: examples per pass of that re-estimation.
        device, dtype: where and how to compute.
        lambda_min: also compute λmin of each kernel.
        progress: called with (done, total).

    Raises:
        InputError: fewer than 2 states, mismatched checkpoints, bad steps or options.
    """
    if not isinstance(x, torch.Tensor):  # streamed inputs: the kernel's n examples (its n² blocks dominate)
        x = x[:]
    check_kernel(kernel)
    check_recipe(recipe)
    if len(states) < 2:
        raise InputError(f"need at least 2 checkpoints to compare kernels, got {len(states)}")
    step_list = list(range(len(states))) if steps is None else [int(s) for s in steps]
    if len(step_list) != len(states) or any(b <= a for a, b in zip(step_list, step_list[1:])):
        raise InputError("checkpoint steps must be strictly increasing, one per checkpoint")
    for i, sd in enumerate(states):  # validate every checkpoint before any heavy work, naming its step
        match_state_dict(model, dict(sd), f"step {step_list[i]}")
    line = make_line(model, states[0], states[-1], device=device, dtype=dtype)
    x = x.to(device=line.device, dtype=line.dtype)
    bx = x if bn_x is None else bn_x.to(device=line.device, dtype=line.dtype)
    recompute = recompute_bn and line.has_bn
    if recompute:
        check_recompute_batch_size(batch_size)

    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.to(device=line.device, dtype=line.dtype) if t.is_floating_point() else t.to(line.device)

    def state(i: int) -> dict[str, torch.Tensor]:
        if i == 0:
            s = dict(line.start)
        elif i == len(states) - 1:
            s = dict(line.end)
        else:
            s = {k: cast(v) for k, v in match_state_dict(model, dict(states[i]), f"step {step_list[i]}").items()}
        return recompute_bn_statistics(line, s, bx, batch_size) if recompute else s

    net = NTKModel.from_module(line.shell, shell=line.shell)
    stats = kernel_sequence(
        net, state, len(states), x, kernel=kernel, recipe=recipe, memory_bytes=memory_bytes,
        lambda_min=lambda_min, dense_eig_max=dense_eig_max, progress=progress,
    )
    sq0 = stats.sq_norms[0]
    dist = tuple(0.0 if i == 0 and sq0 > 0 else distance_from_products(stats.inner_first[i], sq0, stats.sq_norms[i])
                 for i in range(len(states)))
    cons = tuple(distance_from_products(stats.inner_prev[i - 1], stats.sq_norms[i - 1], stats.sq_norms[i])
                 for i in range(1, len(states)))
    plan = stats.plan
    return CheckpointKernels(
        steps=tuple(step_list),
        distance_from_first=dist,
        consecutive_distance=cons,
        velocity=step_velocity(step_list, cons),
        pl_lambda_min=tuple(None if lm is None else lm.value for lm in stats.lambda_min),
        kernel_norm=tuple(math.sqrt(max(s, 0.0)) for s in stats.sq_norms),
        kernel=kernel,
        recipe=plan.recipe,
        mode=stats.mode,
        n_examples=plan.n,
        warnings=tuple(sequence_warnings(plan.n, plan.k, plan.p, kernel, stats.sq_norms)),
    )
