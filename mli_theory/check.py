"""The MLI check: loss curve, grid metrics, geometry, conditions and certificate in one call."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from .errors import InputError
from .inputs.checkpoint import StateDict
from .inputs.data import Dataset
from .inputs.devices import resolve_device, resolve_dtype
from .inputs.examples import stream_batch_size
from .path import BNPolicy, PathKind, Progress, alpha_grid, data_on_line, distances, loss_curve, make_line, max_rise
from .path.line import moving_integers
from .results import Certificate, CheckResult, Condition

# the most α points a check evaluates (each is a pass over the whole data set)
MAX_ALPHAS = 100_000
# a grid rise below this many float epsilons of the largest loss is reported as possibly rounding
_ROUNDING_EPS = 64


def validate_options(
    *,
    alphas: int,
    tol: float,
    bn: BNPolicy | str,
    batch_size: int | None,
    alpha_chunk: int | None,
    certify_budget: float | None,
) -> BNPolicy:
    """Check the scalar options of :func:`check` before any work; return the BatchNorm policy.

    Raises:
        InputError: naming the parameter.
    """
    if isinstance(alphas, bool) or not isinstance(alphas, int) or alphas < 2:
        raise InputError(f"alphas={alphas!r}: need an integer of at least 2 α points")
    if alphas > MAX_ALPHAS:
        raise InputError(f"alphas={alphas}: more than the {MAX_ALPHAS} α points a check evaluates")
    if not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise InputError(f"tol={tol!r}: the tolerance must be a finite number ≥ 0")
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size <= 0):
        raise InputError(f"batch_size={batch_size!r}: must be a positive integer")
    if alpha_chunk is not None and (isinstance(alpha_chunk, bool) or alpha_chunk <= 0):
        raise InputError(f"alpha_chunk={alpha_chunk!r}: must be a positive integer")
    if certify_budget is not None and not (isinstance(certify_budget, (int, float)) and math.isfinite(certify_budget) and certify_budget > 0):
        raise InputError(f"certify_budget={certify_budget!r}: must be a finite number of seconds > 0")
    try:
        policy = BNPolicy(bn)
    except ValueError:
        raise InputError(f"bn={bn!r}: unknown BatchNorm policy (expected recompute, interpolate or frozen)") from None
    return policy


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _cast_changes(line: Any, init: Any, final: Any) -> str | None:
    """Which floating checkpoint entries the cast to the line's dtype changed (a count and a first
    name), or None: the line holds the cast values, which are what is evaluated and certified."""
    count, first = 0, None
    for given, cast in ((init, line.start), (final, line.end)):
        for k, v in given.items():
            got = cast.get(k)
            if not (isinstance(v, torch.Tensor) and isinstance(got, torch.Tensor) and v.is_floating_point()):
                continue
            if v.dtype == got.dtype or v.shape != got.shape:
                continue
            same = torch.equal(v.detach().to("cpu", torch.float64), got.detach().to("cpu", torch.float64))
            if not same:
                count += 1
                first = first or k
    return None if count == 0 else f"{count} entr{'y' if count == 1 else 'ies'} rounded, first {first!r}"


def _witness_curve(reference: Any, where: tuple[float, float], warnings: list[str]) -> dict[str, list[float]] | None:
    """The measured loss around a witness, in float64 (a rise below float32 rounding shows), from
    the reference the certificate was validated against."""
    from .plot import witness_alphas

    try:
        alphas = witness_alphas(where)
        return {"alphas": alphas, "losses": reference.losses(alphas)}
    except Exception as exc:  # optional work: a warning, never a lost verdict
        warnings.append(f"the loss around the witness could not be evaluated ({_first_line(exc)})")
        return None


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
    dtype: torch.dtype | str = torch.float32,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    alpha_chunk: int | None = None,
    geometry: bool = True,
    certify_budget: float | None = 30.0,
    progress: Progress | None = None,
    info: dict[str, Any] | None = None,
    witness_curve: bool = False,
) -> CheckResult:
    """Check monotonic linear interpolation from ``init`` to ``final`` on ``data``.

    Args:
        model: the architecture (not modified; its own weights are ignored).
        init, final: state dicts of θ0 and θT (not modified).
        data: training data (any device/dtype; it is cast to ``device``/``dtype``).
        alphas: number of evenly spaced α in [0, 1], both ends included (2 … :data:`MAX_ALPHAS`);
            also the base grid of the geometry.
        tol: a rise ≤ tol still counts as monotone.
        certify: prove a verdict for all of [0, 1] where a method exists (see
            :mod:`mli_theory.certify`). The MSE conditions on polynomial paths are proven with or
            without it (without: within min(5 s, ``certify_budget``)).
        device: ``cpu``, ``cuda[:i]`` or ``auto``.
        dtype: ``torch.float32`` or ``torch.float64`` (or their names).
        bn: BatchNorm statistics policy.
        batch_size: examples per forward pass (None: all of an in-memory data set,
            :data:`~mli_theory.inputs.examples.STREAM_BATCH` of a streamed one).
        alpha_chunk: α values per vmapped evaluation (None: 8 on CUDA without BatchNorm, else 1).
        geometry: compute the output-path geometry (Gauss length, logit linearity, conditions).
        certify_budget: seconds for *all* proof work of this check (None: no limit).
        progress: called with (done, total) while the loss curve is computed.
        info: extra facts to record in the result's ``info``.
        witness_curve: with a ``non_monotone`` certificate, also evaluate the loss (float64, the
            check's own code) at ~50 α around the witness, for the plot's inset
            (``info["witness_curve"]`` = {alphas, losses}).

    Returns:
        A :class:`~mli_theory.results.CheckResult`. Failures of optional work (geometry,
        conditions, proofs) are recorded in its ``warnings``; they never lose the verdicts.

    Raises:
        InputError: bad options, checkpoints or data (before any heavy work).
    """
    bn = validate_options(alphas=alphas, tol=tol, bn=bn, batch_size=batch_size, alpha_chunk=alpha_chunk, certify_budget=certify_budget)
    batch_size = stream_batch_size(data.x, batch_size)  # streamed inputs: a batch at a time, never whole
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    grid = alpha_grid(alphas)
    line = make_line(model, init, final, device=device, dtype=dtype)
    data = data_on_line(line, data, bn, batch_size)
    if alpha_chunk is None:
        alpha_chunk = 8 if device.type == "cuda" and not line.has_bn else 1
    warnings: list[str] = list(data.notes)
    changed = _cast_changes(line, init, final)
    if changed:
        warnings.append(
            f"the checkpoints do not fit {str(dtype).replace('torch.', '')} exactly ({changed}): the curve and every "
            "certificate are about the weights as cast; use --dtype float64 for the given weights"
        )
    moved = moving_integers(line.shell, line.start, line.end)
    if moved:
        warnings.append(
            f"integer entries differ between the checkpoints ({', '.join(moved[:4])}): the path holds them at θT's value"
        )
    t0 = time.perf_counter()
    curve = loss_curve(line, data, grid, bn=bn, batch_size=batch_size, alpha_chunk=alpha_chunk, progress=progress)
    t_curve = time.perf_counter() - t0
    rise = max_rise(curve.losses)
    where = (grid[rise.start], grid[rise.end]) if rise.start is not None and rise.end is not None else None
    dist, ndist = distances(line)
    rounding = _ROUNDING_EPS * torch.finfo(dtype).eps * max(abs(v) for v in curve.losses)
    if rise.value > tol and rise.value <= rounding:
        warnings.append(
            f"the grid rise {rise.value:.3g} is within the rounding of a {str(dtype).replace('torch.', '')} evaluation "
            f"(about {rounding:.2g}); give tol or use float64 to tell them apart"
        )

    gauss: float | None = None
    extra: dict[str, Any] = {}
    linearity: float | None = None
    conditions: tuple[Condition, ...] = ()
    timings = {"curve_s": round(t_curve, 4)}
    if geometry:
        t1 = time.perf_counter()
        try:
            from .theory import evaluate_conditions

            # grid evidence here; the proofs (polynomial paths) come after the certificate, below
            geo = evaluate_conditions(line, data, alphas=grid, bn=bn, batch_size=batch_size, prove=False)
            gauss, linearity, conditions = geo.gauss_length, geo.logit_linearity, geo.conditions
            extra = {
                "gauss_length_stacked": geo.gauss.stacked,
                "gauss_length_max_example": float(geo.gauss.per_example.max()),
                "gauss_alphas": geo.gauss.n_alphas,
                # the reported Gauss length is the mean: its own error and convergence (the stacked
                # path of many examples has far more kinks, and its error is reported apart)
                "gauss_converged": geo.gauss.mean_converged,
                "gauss_error": geo.gauss.mean_error if geo.gauss.mean_error is not None else geo.gauss.error,
                "gauss_error_stacked": geo.gauss.stacked_error,
                "gauss_singular": geo.gauss.singular,
            }
            if geo.blocks > 1:
                extra["geometry_blocks"] = geo.blocks
                extra["geometry_examples_per_block"] = geo.examples_per_block
                warnings.append(
                    f"the output path of all {data.n} examples does not fit the geometry's memory budget: it was computed "
                    f"in {geo.blocks} blocks of {geo.examples_per_block} examples; the Gauss length (mean over examples), "
                    "its largest example and the logit linearity are exact over all examples, while the stacked Gauss "
                    "length and the conditions, which need every example at once, are not reported"
                )
            if geo.jet.off_curve is not None:
                warnings.append(f"the Gauss length and the conditions describe another curve: {geo.jet.off_curve}")
            if not geo.gauss.mean_converged:
                warnings.append(
                    f"the Gauss length did not reach its relative tolerance on {geo.gauss.n_alphas} α "
                    f"(error estimate {extra['gauss_error']:.3g})"
                )
            st, st_err = geo.gauss.stacked, geo.gauss.stacked_error
            if st is not None and st_err is not None and geo.gauss.rtol is not None and st_err > geo.gauss.rtol * max(st, 1e-12):
                warnings.append(
                    f"the stacked Gauss length (info.gauss_length_stacked, {st:.4g}) did not reach its relative tolerance on "
                    f"{geo.gauss.n_alphas} α (error estimate {st_err:.3g}): its path has the kinks of every example"
                )
        except Exception as exc:  # optional work: recorded, never a lost verdict
            warnings.append(f"geometry failed ({_first_line(exc)}); Gauss length and conditions are missing")
        timings["geometry_s"] = round(time.perf_counter() - t1, 4)

    certificate = Certificate.unknown("not requested (certify=False)")
    reference = None  # the measured computation in float64, shared by the proofs
    if certify:
        from .certify import certify as _certify

        try:
            outcome = _certify(line, data, tol=tol, budget_s=certify_budget, conditions=geometry, bn=bn, batch_size=batch_size, curve=curve)
            certificate = outcome.certificate
            reference = outcome.reference
            warnings.extend(outcome.notes)
            if witness_curve and certificate.status == "non_monotone" and certificate.where is not None and outcome.reference is not None:
                extra["witness_curve"] = _witness_curve(outcome.reference, certificate.where, warnings)
            if outcome.proven_conditions and conditions:
                from .theory import with_proofs

                conditions = with_proofs(conditions, outcome.proven_conditions, geo.lprime1)
            timings["certify_s"] = outcome.seconds
        except Exception as exc:  # a bug in proof work must not cost the grid verdict
            certificate = Certificate.unknown(f"proof work failed: {_first_line(exc)}")
            warnings.append(f"certification failed ({_first_line(exc)})")

    if conditions:
        from .theory import DEFAULT_PROOF_BUDGET_S, complete_proofs, overrule

        # polynomial MSE paths: the conditions are proven, without certify too (a few seconds, within
        # certify_budget); under certify the certifier proved them with the shared budget, and only
        # the grid statement (it needs the grid) is left for what remains of that budget
        if certify:
            left = None if certify_budget is None else certify_budget - timings.get("certify_s", certify_budget)
            names: tuple[str, ...] | None = ("grid_slope",)
        else:
            left = DEFAULT_PROOF_BUDGET_S if certify_budget is None else min(DEFAULT_PROOF_BUDGET_S, certify_budget)
            names = None
        try:
            conditions, notes, proof_s = complete_proofs(
                conditions, line, data, alphas=grid, lprime1=geo.lprime1, budget_s=left, names=names, measured=curve.losses,
                batch_size=batch_size, reference=reference,
            )
            warnings.extend(notes)
            if proof_s is not None:
                timings["condition_proofs_s"] = proof_s
        except Exception as exc:  # optional work: the conditions stay grid evidence
            warnings.append(f"the condition proofs failed ({_first_line(exc)}); the conditions are grid evidence only")
        from .certify.conditions import PROVERS

        wanted = [c.name for c in conditions if c.name in PROVERS and c.applicable and not c.proven]
        if certify and data.loss == "mse" and line.structure.kind != PathKind.POLYNOMIAL and wanted:
            # nonlinear paths: the conditions by enclosures of L′, L″ and z, z′, z″, within what is left of the budget
            t2 = time.perf_counter()
            left = None if certify_budget is None else certify_budget - timings.get("certify_s", 0.0)
            if left is None or left > 0:
                try:
                    from .certify.conditions import prove_by_enclosures
                    from .exact import deadline_after
                    from .theory import with_proofs

                    verdicts, why = prove_by_enclosures(line, data, grid, names=wanted, bn=bn, batch_size=batch_size,
                                                        deadline=deadline_after(left), reference=reference)
                    conditions = with_proofs(conditions, verdicts, geo.lprime1, method="enclosures", reasons=why)
                except Exception as exc:  # optional work
                    warnings.append(f"the enclosure proofs of the conditions failed ({_first_line(exc)}); they stay grid evidence")
                timings["condition_enclosures_s"] = round(time.perf_counter() - t2, 4)
        # every condition is sufficient for MLI: a proven rise disproves all of them, and a measured
        # rise above rounding withdraws what the grid showed (on_grid)
        conditions = overrule(
            conditions,
            grid_rise=rise.value,
            rounding=rounding,
            certificate_status=certificate.status,
            witness=certificate.where,
        )

    facts = {
        "n_examples": data.n,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "bn": bn.value if line.has_bn else None,
        "batch_size": batch_size,
        "path_kind": line.structure.kind.value,
        "path_structure": line.structure.reason,
        "rounding_level": rounding,
        "timings": timings,
        **extra,
    }
    facts.update(info or {})
    return CheckResult(
        alphas=tuple(grid),
        losses=curve.losses,
        accuracies=curve.accuracies,
        loss=data.loss,
        max_rise=rise.value,
        rise_where=where,
        tolerance=float(tol) + 0.0,  # -0.0 reads as 0
        monotone_on_grid=rise.value <= tol,
        initial_loss=curve.losses[0],
        final_loss=curve.losses[-1],
        distance=dist,
        normalized_distance=ndist,
        gauss_length=gauss,
        logit_linearity=linearity,
        certificate=certificate,
        conditions=conditions,
        warnings=tuple(warnings),
        info=facts,
    )
