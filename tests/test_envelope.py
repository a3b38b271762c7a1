"""One result envelope across commands (GUIDE §3): every command's ``--json`` object carries
``info`` = {arch, data, n, device, dtype, seed, versions, timings, …}, and keeps the keys the guide
requires of it. Every command runs once, in-process, on sklearn:diabetes with a tiny MLP."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time

import pytest
import torch

ARCH = "mlp:10-4-1"
DATA = "sklearn:diabetes"
N = 442
VERSIONS = {"mli_theory", "torch", "numpy", "python"}
ENVELOPE = {"arch", "data", "n", "device", "dtype", "seed", "versions", "timings"}


def run_cli(*args: str) -> tuple[int, str, str, float]:
    from mli_theory.cli import main

    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - t0


def run_json(*args: str) -> dict:
    code, out, err, seconds = run_cli(*args, "--json", "--quiet")
    assert code == 0, err
    assert seconds < 10, (args[0], seconds)
    return json.loads(out)  # the JSON object is the only thing on stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained run folder with checkpoints (the train command's own JSON is checked below)."""
    folder = tmp_path_factory.mktemp("env") / "run"
    obj = run_json("train", "--arch", ARCH, "--data", DATA, "--epochs", "2", "--batch-size", "128",
                   "--save-every", "2", "--out", str(folder))
    return folder, obj


def model_args(run) -> list[str]:
    folder = run[0]
    return ["--arch", ARCH, "--init", str(folder / "init.pt"), "--final", str(folder / "final.pt"), "--data", DATA]


def check_envelope(obj: dict, *, model: bool = True, seed: object = "any") -> dict:
    info = obj["info"]
    assert ENVELOPE <= info.keys(), ENVELOPE - info.keys()
    for key in ("arch", "data", "device", "dtype"):
        assert info[key] is None or isinstance(info[key], str), key
    assert info["n"] is None or (isinstance(info["n"], int) and not isinstance(info["n"], bool))
    assert info["seed"] is None or (isinstance(info["seed"], int) and not isinstance(info["seed"], bool))
    if seed != "any":
        assert info["seed"] == seed
    if model:
        assert info["arch"] == ARCH and info["data"] == DATA and info["n"] == N
        assert info["device"] == "cpu" and info["dtype"] in ("float32", "float64")
    assert set(info["versions"]) == VERSIONS and all(isinstance(v, str) and v for v in info["versions"].values())
    assert info["versions"]["torch"] == torch.__version__
    timings = info["timings"]
    assert isinstance(timings, dict) and "total_s" in timings
    for key, value in timings.items():
        assert key.endswith("_s"), key
        assert isinstance(value, float) and value >= 0, (key, value)
    for stray in ("seconds", "eval_s"):  # one name for timings: info.timings
        assert stray not in obj and stray not in info, stray
    assert "timings" not in obj
    return info


def test_train(run):
    info = check_envelope(run[1], seed=0)
    assert info["dtype"] == "float32" and "train_s" in info["timings"]
    assert {"run", "final_loss", "diverged", "epochs"} <= run[1].keys()


def test_check(run):
    obj = run_json("check", *model_args(run), "--alphas", "5", "--no-geometry")
    assert {"alphas", "losses", "loss", "max_rise", "tolerance", "monotone_on_grid", "distance", "normalized_distance",
            "gauss_length", "certificate", "conditions"} <= obj.keys()
    info = check_envelope(obj, seed=None)
    assert {"load_s", "curve_s"} <= info["timings"].keys()
    assert info["path_kind"]  # the command's own facts stay in info


def test_curvature(run):
    obj = run_json("curvature", *model_args(run), "--alphas", "2", "--trace", "--density", "--seed", "3")
    assert {"alphas", "eigenvalues", "residuals", "trace", "trace_ci", "directional_curvature", "n_parameters",
            "eigen_tol"} <= obj.keys()
    assert "tolerance" not in obj  # renamed: a residual bound is not check's rise tolerance
    info = check_envelope(obj, seed=3)
    assert "curvature_s" in info["timings"] and "seconds" not in info
    for d in obj["density"]:
        assert "trace_stderr" in d and (d["trace_stderr"] is None or d["trace_stderr"] >= 0)


def test_kernel(run):
    obj = run_json("kernel", *model_args(run), "--alphas", "3", "--examples", "16", "--checkpoints", str(run[0]))
    assert {"alphas", "kernel_distance_from_init", "kernel_velocity", "pl_lambda_min", "kernel", "n_examples",
            "checkpoints"} <= obj.keys()
    for moved in ("arch", "data", "device", "dtype", "seed", "n_data"):  # now in info
        assert moved not in obj, moved
    info = check_envelope(obj, seed=0)
    assert obj["n_examples"] == 16 and info["n"] == N
    assert {"path_kernels_s", "checkpoint_kernels_s"} <= info["timings"].keys()


def test_barrier(run):
    folder = run[0]
    obj = run_json("barrier", "--arch", ARCH, "--a", str(folder / "init.pt"), "--b", str(folder / "final.pt"),
                   "--data", DATA, "--alphas", "5", "--align", "weights")
    assert {"alphas", "losses", "errors", "barriers", "barriers_before_alignment"} <= obj.keys()
    check_envelope(obj, seed=None)


def test_surface(run):
    obj = run_json("surface", *model_args(run), "--dims", "1", "--steps", "5", "--seed", "2")
    info = check_envelope(obj, seed=2)
    assert "eval_s" in info["timings"] and "eval_s" not in info


def test_roughness(run):
    obj = run_json("roughness", *model_args(run), "--slices", "2", "--steps", "5", "--alphas", "5")
    check_envelope(obj, seed=0)
    assert "roughness_index" in obj and "path" in obj


def test_sweep(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"base": {"data": DATA, "epochs": 1, "batch_size": 128}, "axes": {"arch": [ARCH], "seed": [0]}}))
    threads = torch.get_num_threads()
    try:  # one job runs in this process, and a run sets one torch thread
        obj = run_json("sweep", str(spec), "--out", str(tmp_path / "sweep"), "--jobs", "1", "--alphas", "5", "--no-geometry")
    finally:
        torch.set_num_threads(threads)
    info = check_envelope(obj, model=False, seed=0)
    assert info["arch"] == ARCH and info["data"] == DATA and info["n"] is None
    assert obj["runs"] == 1 and obj["ok"] == 1 and os.path.isfile(obj["results"])


def test_demo(tmp_path, monkeypatch):
    import mli_theory.runs.demo as demo

    real = demo.check
    monkeypatch.setattr(demo, "check", lambda *a, **k: real(*a, **{**k, "certify": False, "geometry": False}))  # fast
    obj = run_json("demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--seed", "4")
    info = check_envelope(obj, model=False, seed=4)
    assert info["data"] == DATA and info["n"] == N and isinstance(info["arch"], str)
    assert set(obj["runs"]) == {"mlp", "deep_linear"}


def test_derive():
    obj = run_json("derive")
    info = check_envelope(obj, model=False, seed=None)
    assert info["arch"] is None and info["n"] is None
    obj = run_json("derive", "integral_identity")
    check_envelope(obj, model=False, seed=None)
    assert obj["name"] == "integral_identity"


def test_every_subcommand_has_a_description():
    import argparse

    from mli_theory.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        assert p.description, name


# ----------------------------------------------------------------------------- progress and stderr


def test_training_reports_every_epoch_with_its_loss(tmp_path):
    from mli_theory.runs import TrainConfig, run_training

    calls = []
    run_training(TrainConfig(arch=ARCH, data=DATA, epochs=3, batch_size=128), str(tmp_path / "r"),
                 progress=lambda done, total, **post: calls.append((done, total, post)))
    assert [c[:2] for c in calls] == [(1, 3), (2, 3), (3, 3)]
    assert all(isinstance(c[2]["loss"], float) for c in calls)


def test_barrier_progress_ends_at_its_total(run):
    from mli_theory.connectivity import barrier
    from mli_theory.inputs import build_model, load_data

    folder = run[0]
    calls = []
    barrier(build_model(ARCH), torch.load(folder / "init.pt"), torch.load(folder / "final.pt"), load_data(DATA, "mse"),
            alphas=5, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1]
    assert all(d <= t for d, t in calls)


def test_torch_future_warnings_stay_off_stderr(monkeypatch):
    import importlib
    import warnings

    cli_main = importlib.import_module("mli_theory.cli.main")  # the module (the package exports a function of that name)

    real = cli_main._cmd_derive

    def noisy(args):
        warnings.warn_explicit("`torch.foo` is deprecated", FutureWarning, "torch/foo.py", 1, module="torch.foo")
        warnings.warn("torch.bar will change", FutureWarning)
        return real(args)

    monkeypatch.setattr(cli_main, "_cmd_derive", noisy)
    code, out, err, _ = run_cli("derive", "--json")
    assert code == 0 and "FutureWarning" not in err, err
    json.loads(out)
