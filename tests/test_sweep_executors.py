"""Sweeps on every executor: local processes, a real Dask LocalCluster, submitit's local executor.

The same four runs (three that train, one whose architecture does not fit the data and fails)
must give the same results.csv everywhere; an interrupted sweep redoes nothing finished."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from mli_theory.errors import InputError
from mli_theory.runs import ExecutorOptions
from mli_theory.runs.sweep import grid, run_id, run_sweep

BASE = {"data": "sklearn:diabetes", "loss": "mse", "epochs": 2, "batch_size": 128}
AXES = {"arch": ["mlp:10-4-1", "linear:10-1", "linear:3-1"], "seed": [0]}  # linear:3-1 does not fit: it fails
EXTRA = {"arch": ["mlp:10-4-1"], "seed": [1]}
VOLATILE = {"seconds", "traceback"}  # and the proof times cert_s@T


def _configs():
    return grid(BASE, AXES) + grid(BASE, EXTRA)


def _table(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE and not k.startswith("cert_s@")} for r in rows), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def local_table(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    rows = run_sweep(_configs(), str(root), jobs=2, alphas=5, geometry=False, log=None, executor="local")
    assert sorted(r["status"] for r in rows) == ["failed", "ok", "ok", "ok"]
    return _table(root / "results.csv")


def _close(a, b):
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for ra, rb in zip(a, b):
        assert set(ra) == set(rb)
        for k in ra:
            try:
                assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-9, abs=1e-12), k
            except ValueError:
                assert ra[k] == rb[k], k


def test_dask_local_cluster_gives_the_local_results(tmp_path, local_table):
    pytest.importorskip("distributed")
    rows = run_sweep(_configs(), str(tmp_path), alphas=5, geometry=False, log=None, executor=ExecutorOptions("dask", jobs=2))
    assert len(rows) == 4
    _close(_table(tmp_path / "results.csv"), local_table)


def test_submitit_local_executor_gives_the_local_results(tmp_path, local_table):
    pytest.importorskip("submitit")
    opts = ExecutorOptions("slurm", slurm_cluster="local", slurm_time_min=10)
    rows = run_sweep(_configs(), str(tmp_path), alphas=5, geometry=False, log=None, executor=opts)
    assert len(rows) == 4 and os.path.isdir(tmp_path / "slurm")
    _close(_table(tmp_path / "results.csv"), local_table)


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_an_interrupted_sweep_redoes_nothing_finished(tmp_path, executor):
    if executor == "dask":
        pytest.importorskip("distributed")
    cfgs = _configs()
    first = cfgs[:2]  # the part that finished before the interruption
    run_sweep(first, str(tmp_path), jobs=2, alphas=5, geometry=False, log=None, executor=executor)
    stamps = {run_id(c): os.path.getmtime(tmp_path / "runs" / run_id(c) / "result.json") for c in first}
    rows = run_sweep(cfgs, str(tmp_path), jobs=2, alphas=5, geometry=False, log=None, executor=executor)
    assert len(rows) == 4
    for rid, t in stamps.items():
        assert os.path.getmtime(tmp_path / "runs" / rid / "result.json") == t
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and "linear:3-1" == failed[0]["arch"] and failed[0]["error"]


def test_a_lost_worker_is_recorded_and_the_rest_finish(tmp_path, monkeypatch):
    """A task the executor itself loses (here: the worker function raises) becomes a failed row."""
    from mli_theory.runs import sweep

    real = sweep._worker

    def flaky(task):
        if task[0].arch == "linear:10-1":
            raise RuntimeError("worker killed")
        return real(task)

    monkeypatch.setattr(sweep, "_worker", flaky)
    rows = run_sweep(_configs(), str(tmp_path), jobs=1, alphas=5, geometry=False, log=None)
    lost = [r for r in rows if r["arch"] == "linear:10-1"]
    assert lost[0]["status"] == "failed" and "worker killed" in lost[0]["error"]
    assert sum(r["status"] == "ok" for r in rows) == 2
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_missing_optional_dependency_and_bad_options_are_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_dask(name, *args, **kwargs):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError("no module named distributed")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    monkeypatch.delitem(sys.modules, "distributed", raising=False)
    with pytest.raises(InputError, match=r"pip install 'mli-theory\[dask\]'"):
        run_sweep(_configs(), "unused", log=None, executor="dask")
    with pytest.raises(InputError, match="jobs=0"):
        run_sweep(_configs(), "unused", log=None, executor=ExecutorOptions("local", jobs=0))


def test_cli_sweep_on_dask(tmp_path):
    pytest.importorskip("distributed")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": BASE, "axes": {"arch": ["linear:10-1"], "seed": [0, 1]}}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "mli_theory", "sweep", str(spec), "--out", str(tmp_path / "s"), "--executor", "dask",
                        "--jobs", "2", "--alphas", "5", "--no-geometry"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "2 runs (2 ok)" in p.stdout and os.path.isfile(tmp_path / "s" / "results.csv")
