"""The MLI check: loss curve, grid metrics, geometry, conditions and certificate in one call."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from .checkpoint import StateDict
from .data import Dataset
from .errors import InputError
from .monotonicity import max_rise
from .path import BNPolicy, Progress, alpha_grid, distances, loss_curve, make_line
from .report import Certificate, CheckResult, Condition


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an input error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r} (expected auto, cpu or cuda)") from None


def resolve_dtype(name: str) -> torch.dtype:
    """``float32`` or ``float64``."""
    table = {"float32": torch.float32, "float64": torch.float64}
    if name not in table:
        raise InputError(f"unknown dtype {name!r} (expected float32 or float64)")
    return table[name]


def _probe(line, data: Dataset) -> None:
    """Run the model on two examples so that a shape mismatch becomes a clear input error."""
    from torch.func import functional_call

    try:
        with torch.no_grad():
            out = functional_call(line.shell, line.start, (data.x[:2],))
    except (RuntimeError, ValueError, IndexError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"data x of shape {tuple(data.x.shape)} does not fit the model: {msg[:200]}") from None
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


def check(
    model: nn.Module,
    init: StateDict,
    final: StateDict,
    data: Dataset,
    *,
    alphas: int = 50,
    tol: float = 0.0,
    certify: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    alpha_chunk: int | None = None,
    geometry: bool = True,
    certify_budget: float = 30.0,
    progress: Progress | None = None,
    info: dict[str, Any] | None = None,
) -> CheckResult:
    """Check monotonic linear interpolation from ``init`` to ``final`` on ``data``.

    Args:
        model: the architecture (not modified).
        init, final: state dicts of θ0 and θT.
        data: training data (any device/dtype; it is cast to ``device``/``dtype``).
        alphas: number of evenly spaced α in [0, 1], both ends included.
        tol: a rise ≤ tol still counts as monotone.
        certify: try to prove a verdict for all of [0, 1] (see :mod:`mli_theory.certify`).
        device, dtype: where and in which precision to evaluate.
        bn: BatchNorm statistics policy.
        batch_size: examples per forward pass (None: all).
        alpha_chunk: α values per vmapped evaluation (None: 8 on CUDA without BatchNorm, else 1).
        geometry: compute the output-path geometry (Gauss length, conditions).
        certify_budget: seconds the exact certifier may spend before answering "unknown".
        progress: called with (done, total) while the loss curve is computed.
        info: extra facts to record in the result's ``info``.

    Returns:
        A :class:`~mli_theory.report.CheckResult`.
    """
    if not (tol >= 0.0) or tol != tol or tol == float("inf"):
        raise InputError(f"--tol must be a finite number >= 0, got {tol}")
    device = torch.device(device)
    grid = alpha_grid(alphas)
    line = make_line(model, init, final, device=device, dtype=dtype)
    data = data.to(device, dtype)
    _probe(line, data)
    bn = BNPolicy(bn)
    if alpha_chunk is None:
        alpha_chunk = 8 if device.type == "cuda" and not line.has_bn else 1
    t0 = time.perf_counter()
    curve = loss_curve(line, data, grid, bn=bn, batch_size=batch_size, alpha_chunk=alpha_chunk, progress=progress)
    t_curve = time.perf_counter() - t0
    rise = max_rise(curve.losses)
    where = (grid[rise.start], grid[rise.end]) if rise.start is not None and rise.end is not None else None
    dist, ndist = distances(line)

    gauss: float | None = None
    gauss_info: dict[str, Any] = {}
    linearity: float | None = None
    conditions: tuple[Condition, ...] = ()
    timings = {"curve_s": round(t_curve, 4)}
    if geometry:
        from .conditions import evaluate_conditions

        t1 = time.perf_counter()
        geo = evaluate_conditions(line, data, bn=bn, batch_size=batch_size)
        gauss, linearity, conditions = geo.gauss_length, geo.logit_linearity, geo.conditions
        timings["geometry_s"] = round(time.perf_counter() - t1, 4)
        gauss_info = {
            "gauss_length_stacked": geo.gauss.stacked,
            "gauss_length_max_example": float(geo.gauss.per_example.max()),
            "gauss_alphas": geo.gauss.n_alphas,
            "gauss_converged": geo.gauss.converged,
            "gauss_singular": geo.gauss.singular,
        }

    certificate = Certificate.unknown("not requested (use --certify)")
    if certify:
        from .certify import certify as _certify

        t2 = time.perf_counter()
        certificate = _certify(line, data, tol=tol, conditions=conditions, budget_s=certify_budget)
        timings["certify_s"] = round(time.perf_counter() - t2, 4)

    facts = {
        "n_examples": data.n,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "bn": bn.value if line.has_bn else None,
        "batch_size": batch_size,
        "timings": timings,
        **gauss_info,
    }
    facts.update(info or {})
    return CheckResult(
        alphas=tuple(grid),
        losses=curve.losses,
        accuracies=curve.accuracies,
        loss=data.loss,
        max_rise=rise.value,
        rise_where=where,
        tolerance=tol,
        monotone_on_grid=rise.value <= tol,
        initial_loss=curve.losses[0],
        final_loss=curve.losses[-1],
        distance=dist,
        normalized_distance=ndist,
        gauss_length=gauss,
        logit_linearity=linearity,
        certificate=certificate,
        conditions=conditions,
        info=facts,
    )
