"""Sweeps: train and check a grid of runs in parallel (local processes, Dask or SLURM), resumably.

Each run lives in ``ROOT/runs/<id>/`` (``id`` is a hash of its config). A run whose
``result.json`` exists is never redone, so an interrupted sweep continues where it stopped.
``ROOT/results.csv`` has one row per run: the config, the training outcome and every scalar metric
of ``check`` (failed or diverged runs included, marked as such).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from typing import Any, Iterable, TextIO

from tqdm.auto import tqdm

from .config import TrainConfig
from .executors import ExecutorOptions, check_available, execute

RESULT = "result.json"


# fields added after sweeps had been run: left out of the id at their default, so old ids stay valid
_LATER_FIELDS = {"anneal": 0.0, "min_distance": 0.0, "normalize": None}


def run_id(config: TrainConfig) -> str:
    """Stable short id of a config."""
    fields = {k: v for k, v in asdict(config).items() if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
    blob = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def grid(base: dict[str, Any], axes: dict[str, Iterable[Any]]) -> list[TrainConfig]:
    """The cross product of ``axes`` (field name -> values) over ``base`` fields."""
    names = list(axes)
    return [TrainConfig(**{**base, **dict(zip(names, values))}) for values in itertools.product(*(list(axes[n]) for n in names))]


def _flat_check(result: dict[str, Any]) -> dict[str, Any]:
    cert = result.get("certificate") or {}
    row = {
        "max_rise": result["max_rise"],
        "monotone_on_grid": result["monotone_on_grid"],
        "initial_loss": result["initial_loss"],
        "final_loss_path": result["final_loss"],
        "distance": result["distance"],
        "normalized_distance": result["normalized_distance"],
        "gauss_length": result["gauss_length"],
        "logit_linearity": result["logit_linearity"],
        "certificate": cert.get("status"),
        "certificate_method": cert.get("method"),
        "certified_rise": cert.get("rise"),
        "rise_bound": cert.get("rise_bound"),
        "certificate_cells": cert.get("cells"),
        "rise_at": (result.get("rise_where") or [None, None])[1],
    }
    for c in result.get("conditions") or []:
        row[f"cond_{c['name']}"] = c["holds"]  # proven verdicts only (null: not proven)
        row[f"cond_{c['name']}_on_grid"] = c.get("on_grid")  # grid evidence
    return row


def library_fingerprint() -> str:
    """sha1 (12 hex digits) of every .py file of the installed mli_theory package, path and content:
    which version of the library produced a row, also between commits."""
    h = hashlib.sha1()
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for dirpath, dirnames, filenames in os.walk(pkg):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, pkg).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:12]


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what :mod:`platform` knows."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def environment(threads: int) -> dict[str, Any]:
    """What a run's numbers depend on besides its config: torch, the BLAS, the CPU, the threads.

    >>> sorted(environment(1))
    ['env_blas', 'env_cpu', 'env_library', 'env_simd', 'env_torch', 'threads']
    """
    import torch

    blas = "unknown"
    for line in torch.__config__.show().splitlines():
        if "BLAS_INFO=" in line:
            blas = line.split("BLAS_INFO=", 1)[1].split(",")[0].strip()
            break
    cpu = cpu_name()
    try:  # the vector instructions the CPU kernels dispatch to (they change float32 rounding)
        simd = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        simd = "unknown"
    return {"env_torch": torch.__version__, "env_blas": blas, "env_cpu": cpu, "env_simd": simd, "env_library": library_fingerprint(),
            "threads": int(threads)}


def run_one(
    config: TrainConfig,
    folder: str,
    alphas: int = 50,
    geometry: bool = True,
    tols: tuple[float, ...] = (0.0,),
    certify_budget: float = 30.0,
    threads: int = 1,
    certify_below: float | None = None,
) -> dict[str, Any]:
    """Train, check, and write ``result.json`` (also for a failed or diverged run).

    The row holds the grid metrics of ``check`` (float32, ``alphas`` points, BatchNorm statistics
    re-estimated at every α), the rise statistics of :func:`~mli_theory.connectivity.path_statistics`
    (``interior_bump``, ``end_rise``, ``final_run_rise``/``final_run_steps``) and, for every
    tolerance T in ``tols``, the certificate at T: ``cert@T`` (status), ``rise_bound@T``,
    ``witness@T`` ("a,b" or empty), ``cells@T`` and ``cert_s@T`` (seconds). The first tolerance is
    also the certificate of the ``certificate`` columns.
    """
    import torch

    from ..check import check
    from ..connectivity.pathstats import path_statistics
    from ..inputs.arch import build_model, parse_arch
    from ..inputs.checkpoint import load_state_dict
    from ..inputs.data import load_data
    from ..path.curve import LossCurve
    from .config import run_training

    torch.set_num_threads(threads)
    row: dict[str, Any] = {"id": os.path.basename(folder), **{k: v for k, v in asdict(config).items() if k != "extra"}, **config.extra}
    row["batchnorm"] = config.batchnorm
    row.update(environment(threads))
    t0 = time.perf_counter()
    try:
        res = run_training(config, folder)
        row.update(train_loss=res.final_loss, diverged=res.diverged, status="diverged" if res.diverged else "ok")
        if not res.diverged:
            model = build_model(parse_arch(config.arch))
            init = load_state_dict(os.path.join(folder, "init.pt"))
            final = load_state_dict(os.path.join(folder, "final.pt"))
            data = load_data(config.data, config.loss)
            first = tols[0] if tols else 0.0
            in_check = bool(tols) and certify_below is None
            result = check(model, init, final, data, alphas=alphas, geometry=geometry, tol=first,
                           certify=in_check,  # the certifier decides from the traced model what it can prove
                           certify_budget=certify_budget, dtype=torch.float32).to_dict()
            row.update(_flat_check(result))
            stats = path_statistics(result["losses"], alphas=result["alphas"])
            row.update(interior_bump=stats.interior_bump, end_rise=stats.end_rise,
                       final_run_rise=stats.final_run_rise, final_run_steps=stats.final_run_steps)
            cert = result.get("certificate") or {}
            certs = {first: (cert, (result.get("info") or {}).get("timings", {}).get("certify_s"))} if in_check else {}
            later = tols[1:] if in_check else tols
            if certify_below is not None and not (result["final_loss"] < certify_below):
                reason = f"not certified: path loss at alpha = 1 is {result['final_loss']:.4g} >= {certify_below:g}"
                certs = {tol: ({"status": None, "reason": reason}, None) for tol in tols}
                later = ()
            if later:
                # the check's own curve: the certifier validates at its grid (and its largest rise)
                curve = LossCurve(tuple(result["alphas"]), tuple(result["losses"]), None)
                for tol, (c, secs) in certify_path(model, init, final, data, later, certify_budget, curve).items():
                    certs[tol] = (asdict(c), secs)
            if certify_below is not None and tols:
                c0 = certs[first][0]
                row.update(certificate=c0.get("status"), certificate_method=c0.get("method"), certified_rise=c0.get("rise"),
                           rise_bound=c0.get("rise_bound"), certificate_cells=c0.get("cells"))
            for tol, (c, secs) in certs.items():
                key = f"{tol:g}"
                row[f"cert@{key}"] = c.get("status")
                row[f"rise_bound@{key}"] = c.get("rise_bound")
                row[f"witness@{key}"] = witness_text(c.get("status"), c.get("where"))
                row[f"cells@{key}"] = c.get("cells")
                row[f"cert_s@{key}"] = secs
                row[f"cert_reason@{key}"] = (c.get("reason") or "")[:200]
            with open(os.path.join(folder, "curve.json"), "w") as f:
                json.dump({"alphas": result["alphas"], "losses": result["losses"]}, f)
    except Exception as exc:  # recorded, never dropped
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=3))
    row["seconds"] = round(time.perf_counter() - t0, 3)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, RESULT), "w") as f:
        json.dump(row, f)
    return row


def certify_path(model: Any, init: dict, final: dict, data: Any, tols: Iterable[float], budget: float, curve: Any = None) -> dict[float, tuple[Any, float]]:
    """Certify the path init → final of ``model`` on ``data`` at each tolerance as the sweep does
    (float32 line, BatchNorm statistics re-estimated at every α, no conditions, ``budget`` seconds
    each; ``curve``: the check's loss curve for the validation): {tol: (Certificate, seconds)}."""
    import torch

    from ..certify import certify
    from ..path import make_line
    from ..path.curve import data_on_line

    line = make_line(model, init, final, dtype=torch.float32)
    on_line = data_on_line(line, data, "recompute")
    out = {}
    for tol in tols:
        o = certify(line, on_line, tol=tol, budget_s=budget, conditions=False, bn="recompute", curve=curve)
        out[tol] = (o.certificate, o.seconds)
    return out


def witness_text(status: str | None, where: Any) -> str:
    """A certificate's witness as the rows store it: "a,b" for ``non_monotone``, else ""."""
    return ",".join(f"{w:.6g}" for w in where) if status == "non_monotone" and where else ""


def _worker(args: tuple) -> dict[str, Any]:
    from .allocator import keep_freed_memory

    keep_freed_memory()  # a worker process of the sweep's own (forked workers inherit it already)
    return run_one(*args)


def run_sweep(
    configs: list[TrainConfig],
    root: str,
    *,
    jobs: int = 2,
    alphas: int = 50,
    geometry: bool = True,
    log: TextIO | None = sys.stderr,
    executor: ExecutorOptions | str = "local",
    tols: tuple[float, ...] = (0.0,),
    certify_budget: float = 30.0,
    threads: int = 1,
    certify_below: float | None = None,
) -> list[dict[str, Any]]:
    """Run every config not finished yet under ``root``; return all rows (and write results.csv).

    Args:
        configs: the runs.
        root: the sweep folder (``runs/<id>/`` per run, ``results.csv``).
        jobs: parallel local processes (``local``) or Dask worker processes (embedded cluster).
        alphas, geometry: what ``check`` computes for every run.
        tols: the tolerances T at which every run is certified (empty: no certificate).
        certify_budget: seconds of proof work per run and tolerance.
        threads: torch threads per run (recorded in the row with the environment).
        certify_below: certify only runs whose path loss at α = 1 is under this (None: all).
        log: where progress goes (None: silent).
        executor: ``local``, ``dask``, ``slurm`` or full :class:`ExecutorOptions`.

    A run whose folder has ``result.json`` is never redone. A task the executor loses (a killed
    worker, a failed SLURM job) is recorded as failed with the error. Ctrl-C stops the sweep and
    leaves every finished run intact; ``results.csv`` is rebuilt from the run folders on every call.
    """
    options = executor if isinstance(executor, ExecutorOptions) else ExecutorOptions(name=executor, jobs=jobs)  # type: ignore[arg-type]
    check_available(options)
    os.makedirs(os.path.join(root, "runs"), exist_ok=True)
    todo = []
    for cfg in configs:
        folder = os.path.join(root, "runs", run_id(cfg))
        if not os.path.isfile(os.path.join(folder, RESULT)):
            todo.append((cfg, folder, alphas, geometry, tuple(tols), certify_budget, threads, certify_below))
    done, total = len(configs) - len(todo), len(configs)
    if log:
        where = f"{options.jobs} process(es)" if options.name == "local" else options.name
        log.write(f"sweep {root}: {total} runs, {done} already done, {len(todo)} to run on {where}\n")
    try:
        if todo:
            with tqdm(total=total, initial=done, desc="sweep", unit="run", file=log or sys.stderr, disable=log is None) as bar:
                not_ok = 0
                for task, row in execute(_worker, todo, options, root):
                    if isinstance(row, BaseException):
                        row = _lost(task, row)
                    not_ok += row.get("status") != "ok"
                    bar.set_postfix(not_ok=not_ok, refresh=False)
                    bar.update(1)
    finally:  # also after Ctrl-C: the table reflects every finished run
        rows = collect(root, configs)
        write_csv(rows, os.path.join(root, "results.csv"))
    return rows


def _lost(task: tuple, exc: BaseException) -> dict[str, Any]:
    """Record a run whose worker was lost by the executor (never silently dropped)."""
    cfg, folder = task[0], task[1]
    row: dict[str, Any] = {"id": os.path.basename(folder), **{k: v for k, v in asdict(cfg).items() if k != "extra"}, **cfg.extra}
    row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, RESULT), "w") as f:
        json.dump(row, f)
    return row


def collect(root: str, configs: list[TrainConfig]) -> list[dict[str, Any]]:
    """The result rows of ``configs`` (those that have one)."""
    rows = []
    for cfg in configs:
        path = os.path.join(root, "runs", run_id(cfg), RESULT)
        if os.path.isfile(path):
            with open(path) as f:
                rows.append(json.load(f))
    return rows


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    """One row per run; the union of all keys as columns (tracebacks left out)."""
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys and k != "traceback":
                keys.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
