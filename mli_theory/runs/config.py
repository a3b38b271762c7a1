"""Run folders: what ``mli-theory train`` writes and ``check --run`` reads.

A run folder holds ``init.pt``, ``final.pt`` (state dicts) and ``config.json`` with the arch,
data, loss, optimiser, learning rate, epochs, batch size, seed, BatchNorm flag, the loss history,
the final training loss, and the torch version and thread count it trained with (training is
bit-for-bit repeatable for a fixed thread count, not across thread counts: the summation order of
the matrix products changes, and near the stability edge the difference grows over the epochs). With ``save_every=STEPS`` it also holds
``checkpoints/step_<STEP, zero-padded to 8 digits>.pt``: the state dict at step 0 and after every
STEPS optimiser steps.

Forks (instability analysis, Frankle et al. 2020; :func:`run_forks`): ``<out>/`` holds the trunk —
``init.pt`` (θ0), ``fork_point.pt`` (θ_k, the state after ``fork_at`` optimiser steps with the base
seed), ``forks.json`` (what was done) and, with ``save_every``, ``checkpoints/`` for steps ≤ k —
and one ordinary run folder ``<out>/fork_<S>/`` per fork seed S: ``init.pt`` = the original θ0,
``final.pt`` = the end of the fork, ``config.json`` (``extra`` records ``fork_at`` and
``fork_seed``; ``history`` is the trunk's epochs followed by the fork's) and, with ``save_every``,
``checkpoints/`` for the fork's steps after k. Each fork continues from θ_k with the trunk's
optimiser state; its data order comes from a generator seeded with S (the examples not yet seen in
the current epoch are reshuffled with it, and every later epoch is drawn from it). So
``mli-theory check --run <out>/fork_S`` checks MLI of a fork and ``mli-theory barrier --a
<out>/fork_S1/final.pt --b <out>/fork_S2/final.pt`` measures its instability.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..inputs.arch import build_model, has_batchnorm, parse_arch
from ..inputs.checkpoint import save_state_dict
from ..inputs.data import load_data
from ..inputs.examples import Normalization
from ..errors import InputError
from ..results import json_safe
from .train import TrainResult, check_schedule, train, train_forks


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run.

    Attributes:
        arch: architecture spec.
        data: data source (as for :func:`~mli_theory.inputs.load_data`).
        loss: ``mse`` or ``ce``.
        optimizer: ``sgd`` (with momentum) or ``adam``.
        lr: learning rate.
        epochs: passes over the data.
        batch_size: minibatch size.
        seed: seeds the initialisation and the minibatch order.
        momentum: SGD momentum.
        distance_reward: λ of the −λ‖θ − θ0‖²/2 term that pushes weights away from θ0.
        init_scale: multiplies the default initialisation.
        anneal: fraction of the steps at the end over which the learning rate decays linearly
            (0: constant learning rate).
        min_distance: ρ of the bounded push: θ is kept in {‖θ − θ0‖ ≥ ρ·‖θ0‖} by projection (0: off).
        normalize: per-channel input normalisation ``"mean,std"`` (see
            :class:`~mli_theory.inputs.examples.Normalization`), or None.
    """

    arch: str
    data: str
    loss: str = "mse"
    optimizer: str = "sgd"
    lr: float = 0.05
    epochs: int = 50
    batch_size: int = 64
    seed: int = 0
    momentum: float = 0.9
    distance_reward: float = 0.0
    init_scale: float = 1.0
    anneal: float = 0.0
    min_distance: float = 0.0
    normalize: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batchnorm(self) -> bool:
        """Whether the model has BatchNorm layers (for a factory: read from the built model)."""
        spec = parse_arch(self.arch)
        if spec.kind != "factory":
            return spec.batchnorm
        return has_batchnorm(build_model(spec))


def _real(value: Any, name: str, *, low: float | None = None, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name}={value!r}: must be a finite number")
    if positive and not value > 0:
        raise InputError(f"{name}={value!r}: must be positive")
    if low is not None and value < low:
        raise InputError(f"{name}={value!r}: must be ≥ {low:g}")


def _integer(value: Any, name: str, low: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        raise InputError(f"{name}={value!r}: must be an integer" + (f" ≥ {low}" if low is not None else ""))


def validate_config(config: TrainConfig) -> None:
    """Every field of ``config`` checked for its type and range, before any work (a sweep checks all
    its runs this way before training the first).

    Raises:
        InputError: naming the field.
    """
    for name in ("arch", "data", "loss", "optimizer"):
        if not isinstance(getattr(config, name), str):
            raise InputError(f"{name}={getattr(config, name)!r}: must be a string")
    parse_arch(config.arch)
    if config.loss not in ("mse", "ce"):
        raise InputError(f"loss={config.loss!r}: unknown loss (expected mse or ce)")
    if config.optimizer not in ("sgd", "adam"):
        raise InputError(f"unknown optimizer {config.optimizer!r} (expected sgd or adam)")
    _real(config.lr, "lr", positive=True)
    _integer(config.epochs, "epochs", 1)
    _integer(config.batch_size, "batch_size", 1)
    _integer(config.seed, "seed", 0)
    if config.seed > 2**63 - 1:
        raise InputError(f"seed={config.seed!r}: must be an integer in [0, 2^63 - 1]")
    _real(config.momentum, "momentum", low=0.0)
    _real(config.distance_reward, "distance_reward", low=0.0)
    _real(config.init_scale, "init_scale")
    check_schedule(config.anneal, config.min_distance)
    if config.normalize is not None:
        if not isinstance(config.normalize, str):
            raise InputError(f"normalize={config.normalize!r}: must be a string such as \"0.5,0.25\"")
        Normalization.parse(config.normalize)


def _validate(config: TrainConfig, save_every: int) -> None:
    validate_config(config)
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 0:
        raise InputError(f"save_every={save_every!r}: must be an integer ≥ 0 (0: no checkpoints)")


def _setup(config: TrainConfig):
    data = load_data(config.data, config.loss, normalize=config.normalize).to("cpu", torch.float32)
    spec = parse_arch(config.arch)
    if spec.kind != "factory":
        data = data.flattened()  # built-in specs read vectors: images become their pixel rows
    torch.manual_seed(config.seed)
    model = build_model(spec)
    if config.init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(config.init_scale)
    return data, model


def _write_run(out: str, config: TrainConfig, result: TrainResult, extra: dict[str, Any]) -> None:
    os.makedirs(out, exist_ok=True)
    save_state_dict(result.init, os.path.join(out, "init.pt"))
    save_state_dict(result.final, os.path.join(out, "final.pt"))
    meta = asdict(config)
    meta["extra"] = {**meta.get("extra", {}), **extra}
    meta.update(batchnorm=config.batchnorm, history=list(result.history), final_loss=result.final_loss, diverged=result.diverged,
                torch_threads=torch.get_num_threads(), torch_version=torch.__version__)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(json_safe(meta), f, indent=1)


def run_training(config: TrainConfig, out: str, *, save_every: int = 0, progress: Any = None) -> TrainResult:
    """Train from ``config`` and write the run folder ``out``.

    Args:
        config: the run.
        out: the run folder.
        save_every: STEPS > 0: also save ``out/checkpoints/step_<STEP:08d>.pt`` at step 0 and after
            every STEPS optimiser steps (0: none). It does not change the training.
        progress: called after every epoch with (epochs done, epochs, loss=mean training loss).
    """
    _validate(config, save_every)
    data, model = _setup(config)
    result = train(
        model,
        data,
        optimizer=config.optimizer,  # type: ignore[arg-type]
        lr=config.lr,
        epochs=config.epochs,
        batch_size=config.batch_size,
        momentum=config.momentum,
        seed=config.seed,
        distance_reward=config.distance_reward,
        save_every=save_every,
        checkpoint_dir=os.path.join(out, "checkpoints") if save_every else None,
        anneal=config.anneal,
        min_distance=config.min_distance,
        progress=progress,
    )
    _write_run(out, config, result, {"save_every": save_every} if save_every else {})
    return result


def fork_folder(out: str, seed: int) -> str:
    """The run folder of the fork with data-order seed ``seed`` inside ``out``."""
    return os.path.join(out, f"fork_{seed}")


def run_forks(config: TrainConfig, out: str, *, fork_at: int, fork_seeds: tuple[int, ...], save_every: int = 0,
              progress: Any = None) -> dict[int, TrainResult]:
    """Train to step ``fork_at`` with ``config.seed``, then one fork per seed to the end (module docstring).

    Returns:
        fork seed → :class:`TrainResult` (``init`` = θ0, ``final`` = the fork's end).

    Raises:
        InputError: bad options (``fork_at`` outside [0, total steps), fewer than two distinct seeds).
    """
    _validate(config, save_every)
    if config.anneal or config.min_distance:
        raise InputError("anneal and min_distance are not supported for forked runs")
    seeds = tuple(int(s) for s in fork_seeds)
    data, model = _setup(config)
    theta_k, results = train_forks(
        model,
        data,
        fork_at=fork_at,
        fork_seeds=seeds,
        optimizer=config.optimizer,  # type: ignore[arg-type]
        lr=config.lr,
        epochs=config.epochs,
        batch_size=config.batch_size,
        momentum=config.momentum,
        seed=config.seed,
        distance_reward=config.distance_reward,
        save_every=save_every,
        checkpoint_dir=os.path.join(out, "checkpoints") if save_every else None,
        fork_checkpoint_dirs=tuple(os.path.join(fork_folder(out, s), "checkpoints") if save_every else None for s in seeds),
        progress=progress,
    )
    os.makedirs(out, exist_ok=True)
    save_state_dict(results[0].init, os.path.join(out, "init.pt"))
    save_state_dict(theta_k, os.path.join(out, "fork_point.pt"))
    for s, r in zip(seeds, results):
        _write_run(fork_folder(out, s), config, r, {"fork_at": fork_at, "fork_seed": s, **({"save_every": save_every} if save_every else {})})
    summary = {
        "config": asdict(config), "fork_at": fork_at, "fork_seeds": list(seeds), "save_every": save_every,
        "forks": {str(s): {"folder": fork_folder(out, s), "final_loss": r.final_loss, "diverged": r.diverged} for s, r in zip(seeds, results)},
    }
    with open(os.path.join(out, "forks.json"), "w") as f:
        json.dump(json_safe(summary), f, indent=1)
    return dict(zip(seeds, results))


def read_run(folder: str) -> dict[str, Any]:
    """The config of a run folder, with absolute ``init`` and ``final`` paths added."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        raise InputError(f"not a run folder (no config.json): {folder}")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {cfg_path}: {exc}") from None
    for key in ("arch", "data", "loss"):
        if key not in cfg:
            raise InputError(f"{cfg_path} lacks {key!r}")
    cfg["init"] = os.path.join(folder, "init.pt")
    cfg["final"] = os.path.join(folder, "final.pt")
    return cfg
