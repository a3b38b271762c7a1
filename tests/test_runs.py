import json
import os
import subprocess
import sys

import pytest

from mli_theory.runs import TrainConfig, read_run, run_training
from mli_theory.runs.sweep import grid, run_id, run_sweep


def test_train_writes_a_run_folder_that_check_reads(tmp_path):
    cfg = TrainConfig(arch="mlp:10-8-1:tanh", data="sklearn:diabetes", loss="mse", epochs=3, batch_size=64, lr=0.01)
    res = run_training(cfg, str(tmp_path / "run"))
    meta = read_run(str(tmp_path / "run"))
    assert meta["arch"] == cfg.arch and meta["batchnorm"] is False and len(meta["history"]) == 3
    assert meta["final_loss"] == pytest.approx(res.final_loss)
    import torch

    assert meta["torch_threads"] == torch.get_num_threads() and meta["torch_version"] == torch.__version__
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.run([sys.executable, "-m", "mli_theory", "check", "--run", str(tmp_path / "run"), "--json", "--alphas", "5"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["losses"][-1] == pytest.approx(res.final_loss, rel=1e-5)


def test_sweep_is_resumable_and_records_failures(tmp_path):
    base = {"data": "sklearn:diabetes", "loss": "mse", "epochs": 2, "batch_size": 128}
    cfgs = grid(base, {"arch": ["mlp:10-4-1", "linear:3-1"], "seed": [0]})  # the second does not fit the data
    rows = run_sweep(cfgs, str(tmp_path), jobs=1, alphas=5, geometry=False, log=None)
    status = {r["arch"]: r["status"] for r in rows}
    assert status == {"mlp:10-4-1": "ok", "linear:3-1": "failed"}
    assert os.path.isfile(tmp_path / "results.csv")
    stamp = os.path.getmtime(tmp_path / "runs" / run_id(cfgs[0]) / "result.json")
    run_sweep(cfgs, str(tmp_path), jobs=1, alphas=5, geometry=False, log=None)  # nothing is redone
    assert os.path.getmtime(tmp_path / "runs" / run_id(cfgs[0]) / "result.json") == stamp


def test_demo_runs_and_certifies_the_deep_linear_network(tmp_path):
    from mli_theory.runs import run_demo

    summary = run_demo(str(tmp_path), epochs=15)
    dl = summary["runs"]["deep_linear"]["check"]
    assert dl["certificate"]["status"] in ("monotone", "non_monotone")
    assert os.path.isfile(summary["runs"]["mlp"]["plot"])
    assert summary["runs"]["mlp"]["check"]["gauss_length"] is not None


def test_keep_freed_memory_takes_effect_under_glibc():
    import platform

    from mli_theory.runs import keep_freed_memory

    applied = keep_freed_memory()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
