"""Minimal, deterministic training loops that record θ0 and θT (for demos and experiments)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from ..inputs.checkpoint import StateDict
from ..inputs.data import Dataset
from ..inputs.examples import stream_batch_size
from ..path.losses import batch_loss_sums, loss_normaliser

Optimizer = Literal["sgd", "adam"]
#: called after every epoch with (epochs done, epochs in all, loss=mean training loss)
EpochProgress = Callable[..., None]


@dataclass(frozen=True)
class TrainResult:
    """θ0, θT and the training history.

    Attributes:
        init: state dict before training (a copy).
        final: state dict after training (a copy).
        history: mean training loss over the whole set after each epoch.
        final_loss: the last entry of ``history`` (inf if training diverged).
        diverged: whether the loss became non-finite (training stops there).
        n_examples: examples in the training set (None when not recorded).
    """

    init: StateDict
    final: StateDict
    history: tuple[float, ...]
    final_loss: float
    diverged: bool
    n_examples: int | None = None


def _snapshot(model: nn.Module) -> StateDict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def full_loss(model: nn.Module, data: Dataset, batch_size: int | None = None) -> float:
    """Mean loss of ``model`` (in eval mode, on a copy) over the whole data set."""
    m = copy.deepcopy(model).eval()
    total, size = 0.0, stream_batch_size(data.x, batch_size) or data.n
    with torch.no_grad():
        for i in range(0, data.n, size):
            s, _ = batch_loss_sums(m(data.x[i : i + size]), data.y[i : i + size], data.loss)
            total += float(s)
    return total / loss_normaliser(data)


class _Trainer:
    """The training loop as explicit state, so that it can stop at a step and be forked.

    One optimiser step per minibatch; an epoch visits every example once, in an order drawn from
    ``gen``. ``step`` counts optimiser steps taken so far; ``pos`` is the position inside the
    current epoch's ``order`` (None between epochs).
    """

    def __init__(self, model: nn.Module, data: Dataset, *, optimizer: Optimizer, lr: float, epochs: int,
                 batch_size: int | None, momentum: float, seed: int, distance_reward: float,
                 checkpoints: str | None, save_every: int, anneal: float = 0.0, min_distance: float = 0.0,
                 progress: EpochProgress | None = None) -> None:
        self.model, self.data, self.epochs = model, data, epochs
        self.progress = progress
        self.gen = torch.Generator().manual_seed(seed)
        self.init = _snapshot(model)
        self.theta0 = [p.detach().clone() for p in model.parameters()]
        self.opt_name, self.lr, self.momentum = optimizer, lr, momentum
        self.opt = self._optimizer(model)
        self.size = batch_size or data.n
        self.norm = loss_normaliser(data) / data.n  # per-example normaliser (k for mse, 1 for ce)
        self.distance_reward = distance_reward
        self.anneal = anneal
        # the radius r = min_distance·‖θ0‖ of the constraint ‖θ − θ0‖ ≥ r (0: no constraint)
        self.radius = min_distance * math.sqrt(sum(float(p.pow(2).sum()) for p in self.theta0)) if min_distance else 0.0
        self.history: list[float] = []
        self.diverged = False
        self.step, self.epoch = 0, 0
        self.order: torch.Tensor | None = None
        self.pos = 0
        self.checkpoints, self.save_every = checkpoints, save_every
        self._save()

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        params = list(model.parameters())
        if self.opt_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        return torch.optim.Adam(params, lr=self.lr)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.data.n / self.size)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def _save(self) -> None:
        if self.checkpoints and self.save_every and self.step % self.save_every == 0:
            import os

            from ..inputs.checkpoint import save_state_dict

            os.makedirs(self.checkpoints, exist_ok=True)
            save_state_dict(_snapshot(self.model), os.path.join(self.checkpoints, f"step_{self.step:08d}.pt"))

    def run(self, until_step: int | None = None) -> None:
        """Train until ``until_step`` optimiser steps (None: to the end) or divergence."""
        data, model = self.data, self.model
        params = list(model.parameters())
        while self.epoch < self.epochs and not self.diverged:
            if self.order is None:
                self.order = torch.randperm(data.n, generator=self.gen).to(data.x.device)
                self.pos = 0
            model.train()
            while self.pos < data.n:
                if until_step is not None and self.step >= until_step:
                    return
                idx = self.order[self.pos : self.pos + self.size]
                s, _ = batch_loss_sums(model(data.x[idx]), data.y[idx], data.loss)
                loss = s / (idx.numel() * self.norm)
                if self.distance_reward:
                    loss = loss - 0.5 * self.distance_reward * sum((p - q).pow(2).sum() for p, q in zip(params, self.theta0))
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self._set_lr()
                self.opt.step()
                if self.radius:
                    self._project(params)
                self.pos += idx.numel()
                self.step += 1
                self._save()
            value = full_loss(model, data)
            self.history.append(value)
            self.order, self.epoch = None, self.epoch + 1
            if not math.isfinite(value):
                self.diverged = True
            if self.progress is not None:
                self.progress(self.epochs if self.diverged else self.epoch, self.epochs, loss=value)
        model.eval()

    def _set_lr(self) -> None:
        """Constant lr, then (with ``anneal`` = a > 0) linear decay over the last fraction a of the
        steps: lr·min(1, (S − s)/(a·S)) at step s of S, reaching lr/(a·S) at the last step."""
        if not self.anneal:
            return
        total = self.total_steps
        scale = min(1.0, (total - self.step) / (self.anneal * total))
        for g in self.opt.param_groups:
            g["lr"] = self.lr * scale

    @torch.no_grad()
    def _project(self, params: list[torch.Tensor]) -> None:
        """Project onto {θ : ‖θ − θ0‖ ≥ r}: scale θ − θ0 up to length r when it is shorter (and
        non-zero). The set is closed, so training inside it is bounded, unlike a distance reward."""
        d2 = sum(float((p - q).pow(2).sum()) for p, q in zip(params, self.theta0))
        if 0.0 < d2 < self.radius**2:
            c = self.radius / math.sqrt(d2)
            for p, q in zip(params, self.theta0):
                p.sub_(q).mul_(c).add_(q)

    def fork(self, seed: int, checkpoints: str | None) -> "_Trainer":
        """A copy of the current state (weights, optimiser state, position) whose data order is
        drawn from a new generator seeded with ``seed``: the examples not yet visited in the current
        epoch are reshuffled with it, and every later epoch's order is drawn from it."""
        twin = copy.copy(self)
        twin.model = copy.deepcopy(self.model)
        twin.opt = self._optimizer(twin.model)
        twin.opt.load_state_dict(copy.deepcopy(self.opt.state_dict()))
        twin.gen = torch.Generator().manual_seed(seed)
        twin.history = list(self.history)
        twin.theta0 = [t.clone() for t in self.theta0]
        if self.order is not None:
            rest = self.order[self.pos :]
            twin.order = torch.cat([self.order[: self.pos], rest[torch.randperm(rest.numel(), generator=twin.gen).to(rest.device)]])
        twin.checkpoints = checkpoints
        return twin

    def result(self) -> TrainResult:
        h = tuple(self.history)
        return TrainResult(self.init, _snapshot(self.model), h, h[-1] if h else math.nan, self.diverged, self.data.n)


def train(
    model: nn.Module,
    data: Dataset,
    *,
    optimizer: Optimizer = "sgd",
    lr: float = 0.05,
    epochs: int = 100,
    batch_size: int | None = 64,
    momentum: float = 0.9,
    seed: int = 0,
    distance_reward: float = 0.0,
    save_every: int = 0,
    checkpoint_dir: str | None = None,
    anneal: float = 0.0,
    min_distance: float = 0.0,
    progress: EpochProgress | None = None,
) -> TrainResult:
    """Train ``model`` in place from its current weights and return both endpoints.

    Args:
        model: the network (its current weights are θ0; it is trained in place).
        data: training data on the model's device and dtype.
        optimizer: ``sgd`` (with ``momentum``) or ``adam``.
        lr: learning rate.
        epochs: passes over the data.
        batch_size: minibatch size (None: full batch).
        momentum: SGD momentum.
        seed: seeds the minibatch order.
        distance_reward: λ ≥ 0; adds −λ·‖θ − θ0‖² / 2 to the loss, which pushes the weights away
            from initialisation (the systematic way to produce MLI violations).
        save_every: STEPS > 0: save the state dict at step 0 and after every STEPS optimiser steps
            to ``checkpoint_dir/step_<step, 8 digits>.pt`` (0: no checkpoints).
        checkpoint_dir: folder for those checkpoints (required with ``save_every``).
        anneal: a ∈ [0, 1]: the learning rate decays linearly over the last fraction a of the steps
            (0: constant), the learning-rate-decay control of end rises.
        min_distance: ρ ≥ 0: after every step, θ is projected onto {‖θ − θ0‖ ≥ ρ·‖θ0‖} (0: off).
            A bounded way to push weights away from initialisation: unlike ``distance_reward``
            it does not make the objective unbounded below, so pushed runs can converge.
        progress: called after every epoch with (epochs done, ``epochs``, loss=mean training loss).
    """
    _check_save_every(save_every, checkpoint_dir)
    check_schedule(anneal, min_distance)
    t = _Trainer(model, data, optimizer=optimizer, lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum,
                 seed=seed, distance_reward=distance_reward, checkpoints=checkpoint_dir, save_every=save_every,
                 anneal=anneal, min_distance=min_distance, progress=progress)
    t.run()
    return t.result()


def check_schedule(anneal: float, min_distance: float) -> None:
    from ..errors import InputError

    if not (isinstance(anneal, (int, float)) and 0.0 <= anneal <= 1.0):
        raise InputError(f"anneal={anneal!r}: must be a fraction of the steps in [0, 1]")
    if not (isinstance(min_distance, (int, float)) and math.isfinite(min_distance) and min_distance >= 0.0):
        raise InputError(f"min_distance={min_distance!r}: must be a finite number ≥ 0")


def _check_save_every(save_every: int, checkpoint_dir: str | None) -> None:
    from ..errors import InputError

    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 0:
        raise InputError(f"save_every={save_every!r}: must be an integer ≥ 0 (0: no checkpoints)")
    if save_every and not checkpoint_dir:
        raise InputError("save_every needs a checkpoint_dir")


def train_forks(
    model: nn.Module,
    data: Dataset,
    *,
    fork_at: int,
    fork_seeds: tuple[int, ...],
    optimizer: Optimizer = "sgd",
    lr: float = 0.05,
    epochs: int = 100,
    batch_size: int | None = 64,
    momentum: float = 0.9,
    seed: int = 0,
    distance_reward: float = 0.0,
    save_every: int = 0,
    checkpoint_dir: str | None = None,
    fork_checkpoint_dirs: tuple[str | None, ...] | None = None,
    progress: EpochProgress | None = None,
) -> tuple[StateDict, tuple[TrainResult, ...]]:
    """Instability analysis (Frankle et al. 2020): train to step ``fork_at`` with ``seed``, then
    continue one copy per entry of ``fork_seeds`` from the same θ_k (and optimiser state) to the
    end, each with its own data order (see :meth:`_Trainer.fork`).

    ``model`` is trained in place up to θ_k and left there. Checkpoints (``save_every``) of steps
    ≤ ``fork_at`` go to ``checkpoint_dir``, those after it to each fork's entry of
    ``fork_checkpoint_dirs``.

    Returns:
        (θ_k, one :class:`TrainResult` per fork seed, each with ``init`` = the original θ0).
    """
    from ..errors import InputError

    _check_save_every(save_every, checkpoint_dir)
    t = _Trainer(model, data, optimizer=optimizer, lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum,
                 seed=seed, distance_reward=distance_reward, checkpoints=checkpoint_dir, save_every=save_every,
                 progress=progress)
    if isinstance(fork_at, bool) or not isinstance(fork_at, int) or not 0 <= fork_at < t.total_steps:
        raise InputError(f"fork_at={fork_at!r}: must be an integer step in [0, {t.total_steps - 1}] "
                         f"({epochs} epochs of {t.steps_per_epoch} steps)")
    if len(fork_seeds) < 2 or len(set(fork_seeds)) != len(fork_seeds):
        raise InputError(f"fork_seeds={list(fork_seeds)}: need at least two different seeds")
    dirs = tuple(fork_checkpoint_dirs) if fork_checkpoint_dirs is not None else (None,) * len(fork_seeds)
    t.run(until_step=fork_at)
    theta_k = _snapshot(t.model)
    results = []
    for s, d in zip(fork_seeds, dirs):
        twin = t.fork(s, d)
        twin.run()
        results.append(twin.result())
    return theta_k, tuple(results)
