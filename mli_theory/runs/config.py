"""Run folders: what ``mli-theory train`` writes and ``check --run`` reads.

A run folder holds ``init.pt``, ``final.pt`` (state dicts) and ``config.json`` with the arch,
data, loss, optimiser, learning rate, epochs, batch size, seed, BatchNorm flag, the loss history and
the final training loss.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..inputs.arch import build_model, parse_arch
from ..inputs.checkpoint import save_state_dict
from ..inputs.data import load_data
from ..errors import InputError
from ..results import json_safe
from .train import TrainResult, train


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run.

    Attributes:
        arch: architecture spec.
        data: data source (an ``.npz`` path or a built-in name).
        loss: ``mse`` or ``ce``.
        optimizer: ``sgd`` (with momentum) or ``adam``.
        lr: learning rate.
        epochs: passes over the data.
        batch_size: minibatch size.
        seed: seeds the initialisation and the minibatch order.
        momentum: SGD momentum.
        distance_reward: λ of the −λ‖θ − θ0‖²/2 term that pushes weights away from θ0.
        init_scale: multiplies the default initialisation.
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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batchnorm(self) -> bool:
        return parse_arch(self.arch).batchnorm


def run_training(config: TrainConfig, out: str) -> TrainResult:
    """Train from ``config`` and write the run folder ``out``."""
    if config.optimizer not in ("sgd", "adam"):
        raise InputError(f"unknown optimizer {config.optimizer!r} (expected sgd or adam)")
    if config.lr <= 0 or config.epochs < 1 or config.batch_size < 1:
        raise InputError("lr must be positive, epochs and batch size at least 1")
    data = load_data(config.data, config.loss).to("cpu", torch.float32)
    torch.manual_seed(config.seed)
    model = build_model(parse_arch(config.arch))
    if config.init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(config.init_scale)
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
    )
    os.makedirs(out, exist_ok=True)
    save_state_dict(result.init, os.path.join(out, "init.pt"))
    save_state_dict(result.final, os.path.join(out, "final.pt"))
    meta = asdict(config)
    meta.update(batchnorm=config.batchnorm, history=list(result.history), final_loss=result.final_loss, diverged=result.diverged)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(json_safe(meta), f, indent=1)
    return result


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
