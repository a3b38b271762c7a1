"""Where the runs of a sweep execute: local processes, a Dask cluster, or SLURM through submitit.

Every executor runs the same picklable task, ``run_one(config, folder, alphas, geometry)``, which
needs nothing but the run config (data are loaded inside the worker) and writes its own
``result.json``; the sweep only orders work and collects rows. So the semantics are the same
everywhere: a finished run folder is never redone, a failing run is recorded with its error, and an
interrupted sweep (Ctrl-C) leaves every finished run intact.

* ``local``: :class:`concurrent.futures.ProcessPoolExecutor` in a ``with`` block (no leaked
  workers); ``jobs`` processes (1: in this process).
* ``dask``: Dask distributed; an embedded :class:`distributed.LocalCluster` with ``jobs`` worker
  processes, or a running cluster at ``scheduler`` (``tcp://host:8786``). Needs
  ``pip install mli-theory[dask]``.
* ``slurm``: :mod:`submitit` (``pip install mli-theory[slurm]``), one SLURM job per run with the
  given partition, time limit, GPUs and extra ``slurm_*`` parameters; ``cluster="local"`` runs the
  jobs as local subprocesses (for tests and dry runs) and ``"debug"`` in this process.

Each executor is a generator of finished rows, so the caller's progress bar advances as runs end.
"""

from __future__ import annotations

import importlib
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

from ..errors import InputError

ExecutorName = Literal["local", "dask", "slurm"]
EXECUTORS: tuple[str, ...] = ("local", "dask", "slurm")

Task = tuple[Any, str, int, bool]  # (TrainConfig, folder, alphas, geometry)


@dataclass(frozen=True)
class ExecutorOptions:
    """How to run a sweep's tasks.

    Attributes:
        name: ``local``, ``dask`` or ``slurm``.
        jobs: local processes, or Dask worker processes of the embedded cluster.
        scheduler: address of a running Dask scheduler (None: start a LocalCluster).
        slurm_partition, slurm_time_min, slurm_gpus, slurm_cpus: SLURM resources per run.
        slurm_cluster: submitit's cluster: None (auto: SLURM if available), ``"slurm"``, ``"local"``
            (local subprocesses, for testing) or ``"debug"`` (in this process).
        slurm_extra: further ``slurm_*`` parameters for submitit (e.g. ``{"slurm_account": "x"}``).
        log_folder: where submitit writes its job logs (default: ``ROOT/slurm``).
    """

    name: ExecutorName = "local"
    jobs: int = 2
    scheduler: str | None = None
    slurm_partition: str | None = None
    slurm_time_min: int = 60
    slurm_gpus: int = 0
    slurm_cpus: int = 1
    slurm_cluster: str | None = None
    slurm_extra: dict[str, Any] = field(default_factory=dict)
    log_folder: str | None = None


def _need(module: str, extra: str) -> Any:
    """Import an optional dependency or fail with one clear line."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"the {extra} executor needs the optional dependency {module!r}: pip install 'mli-theory[{extra}]'") from None


def check_available(options: ExecutorOptions) -> None:
    """Fail early (before any work) when the executor's optional dependency is missing."""
    if options.name not in EXECUTORS:
        raise InputError(f"executor={options.name!r}: expected one of {', '.join(EXECUTORS)}")
    if options.jobs < 1:
        raise InputError(f"jobs={options.jobs}: must be at least 1")
    if options.scheduler and options.name != "dask":
        raise InputError(f"scheduler={options.scheduler!r} is an address of a Dask scheduler: it needs executor=\"dask\"")
    for name in ("slurm_time_min", "slurm_cpus"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name}={value!r}: must be an integer ≥ 1")
    if isinstance(options.slurm_gpus, bool) or not isinstance(options.slurm_gpus, int) or options.slurm_gpus < 0:
        raise InputError(f"slurm_gpus={options.slurm_gpus!r}: must be an integer ≥ 0")
    if options.name == "dask":
        _need("distributed", "dask")
        if options.scheduler:
            probe_scheduler(options.scheduler)
    if options.name == "slurm":
        _need("submitit", "slurm")


#: seconds to wait for a TCP connection to a Dask scheduler before calling it unreachable
SCHEDULER_PROBE_S = 2.0


def probe_scheduler(address: str, timeout: float = SCHEDULER_PROBE_S) -> None:
    """Fail fast (one line) when a ``tcp://`` or ``tls://`` Dask scheduler cannot be reached: a plain
    socket connection with a short timeout, before any work (Dask itself waits 30 s). Other
    protocols (``inproc://``, ``ucx://``, …) are left to Dask.

    Raises:
        InputError: a malformed address, or no connection within ``timeout`` seconds.
    """
    import socket
    from urllib.parse import urlsplit

    text = address if "://" in address else f"tcp://{address}"
    parts = urlsplit(text)
    if parts.scheme not in ("tcp", "tls"):
        return
    try:
        host, port = parts.hostname, parts.port or 8786
    except ValueError:
        raise InputError(f"scheduler={address!r}: not an address of the form tcp://HOST:PORT") from None
    if not host:
        raise InputError(f"scheduler={address!r}: not an address of the form tcp://HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise InputError(f"scheduler={address!r}: no Dask scheduler reachable ({reason} within {timeout:g} s)") from None


def execute(work: Callable[[Task], dict[str, Any]], tasks: list[Task], options: ExecutorOptions, root: str) -> Iterator[tuple[Task, dict[str, Any] | BaseException]]:
    """Run ``work`` on every task; yield (task, row) as each finishes, or (task, exception) when the
    executor itself lost the task (a killed worker, a failed SLURM job)."""
    check_available(options)
    if options.name == "local":
        yield from _local(work, tasks, options.jobs)
    elif options.name == "dask":
        yield from _dask(work, tasks, options)
    else:
        yield from _slurm(work, tasks, options, root)


def _local(work, tasks, jobs):
    if jobs <= 1:
        for t in tasks:
            yield t, _outcome(lambda: work(t))
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(work, t): t for t in tasks}
        try:
            for fut in as_completed(futures):
                yield futures[fut], _outcome(fut.result)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise


def _dask(work, tasks, options):
    distributed = _need("distributed", "dask")
    if options.scheduler:
        cluster = None
        try:
            client = distributed.Client(options.scheduler)
        except Exception as exc:  # noqa: BLE001 - whatever answered there is not a usable scheduler
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise InputError(f"scheduler={options.scheduler!r}: cannot connect to a Dask scheduler there "
                             f"({type(exc).__name__}: {first})") from None
    else:
        cluster = distributed.LocalCluster(n_workers=options.jobs, threads_per_worker=1, processes=True, dashboard_address=None)
        client = distributed.Client(cluster)
    try:
        futures = {}
        for t in tasks:
            futures[client.submit(work, t, pure=False, key=f"mli-run-{os.path.basename(t[1])}")] = t
        try:
            for fut in distributed.as_completed(list(futures)):
                yield futures[fut], _outcome(fut.result)
        except BaseException:
            client.cancel(list(futures))
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _slurm(work, tasks, options, root):
    submitit = _need("submitit", "slurm")
    folder = options.log_folder or os.path.join(root, "slurm")
    executor = submitit.AutoExecutor(folder=folder, cluster=options.slurm_cluster)
    params: dict[str, Any] = {"timeout_min": options.slurm_time_min, "cpus_per_task": options.slurm_cpus}
    if options.slurm_gpus:
        params["gpus_per_node"] = options.slurm_gpus
    if options.slurm_partition:
        params["slurm_partition"] = options.slurm_partition
    params.update(options.slurm_extra)
    executor.update_parameters(name="mli-theory", **params)
    jobs = {}
    for t in tasks:
        jobs[executor.submit(work, t)] = t
    try:
        for job in submitit.helpers.as_completed(list(jobs), poll_frequency=0.5):
            yield jobs[job], _outcome(job.result)
    except BaseException:
        for job in jobs:
            if not job.done():
                job.cancel(check=False)
        raise


def _outcome(get: Callable[[], dict[str, Any]]) -> dict[str, Any] | BaseException:
    try:
        return get()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the executor lost the task: the caller records it
        return exc
