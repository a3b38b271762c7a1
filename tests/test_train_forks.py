"""``train --save-every`` and ``train --fork-at/--fork-seeds`` (instability analysis)."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os

import pytest
import torch

from mli_theory.inputs import build_model, load_data, parse_arch
from mli_theory.path.losses import batch_loss_sums, loss_normaliser
from mli_theory.runs import TrainConfig, read_run, run_training, train
from mli_theory.runs.config import fork_folder, run_forks
from mli_theory.runs.train import full_loss, train_forks

ARCH, DATA = "mlp:10-6-1", "sklearn:diabetes"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread is faster, and far faster on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _reference_train(model, data, *, lr, epochs, batch_size, momentum, seed):
    """The plain loop (SGD with momentum), written out: the refactored trainer must match it bit for bit."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    norm = loss_normaliser(data) / data.n
    history = []
    for _ in range(epochs):
        order = torch.randperm(data.n, generator=gen)
        model.train()
        for i in range(0, data.n, batch_size):
            idx = order[i : i + batch_size]
            s, _ = batch_loss_sums(model(data.x[idx]), data.y[idx], data.loss)
            opt.zero_grad()
            (s / (idx.numel() * norm)).backward()
            opt.step()
        history.append(full_loss(model, data))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, history


def _fresh(seed=0):
    torch.manual_seed(seed)
    return build_model(parse_arch(ARCH))


@pytest.fixture(scope="module")
def data():
    return load_data(DATA, "mse").to("cpu", torch.float32)


def test_trainer_matches_the_plain_loop(data):
    m1, m2 = _fresh(), _fresh()
    ref, hist = _reference_train(m1, data, lr=0.02, epochs=2, batch_size=64, momentum=0.9, seed=3)
    res = train(m2, data, lr=0.02, epochs=2, batch_size=64, momentum=0.9, seed=3)
    assert all(torch.equal(ref[k], res.final[k]) for k in ref)
    assert list(res.history) == hist


def test_save_every_writes_step_checkpoints(tmp_path, data):
    steps_per_epoch = math.ceil(data.n / 64)  # 7
    m = _fresh()
    res = train(m, data, lr=0.02, epochs=2, batch_size=64, seed=0, save_every=7, checkpoint_dir=str(tmp_path / "ck"))
    names = sorted(os.listdir(tmp_path / "ck"))
    assert names == [f"step_{s:08d}.pt" for s in range(0, 2 * steps_per_epoch + 1, 7)]
    first = torch.load(tmp_path / "ck" / names[0], weights_only=True)
    last = torch.load(tmp_path / "ck" / names[-1], weights_only=True)
    assert all(torch.equal(first[k], res.init[k]) for k in first)
    assert all(torch.equal(last[k], res.final[k]) for k in last)
    # a checkpoint does not change the training
    plain = train(_fresh(), data, lr=0.02, epochs=2, batch_size=64, seed=0)
    assert all(torch.equal(plain.final[k], res.final[k]) for k in res.final)
    with pytest.raises(Exception, match="save_every"):
        train(_fresh(), data, epochs=1, save_every=-1)


def test_forks_share_the_trunk_and_differ_after_it(tmp_path, data):
    k = 5  # inside the first epoch
    ck = str(tmp_path / "trunk")
    # the trunk is the plain run up to step k
    train(_fresh(), data, lr=0.02, epochs=2, batch_size=64, seed=0, save_every=k, checkpoint_dir=ck)
    plain_k = torch.load(os.path.join(ck, f"step_{k:08d}.pt"), weights_only=True)
    m = _fresh()
    theta0 = copy.deepcopy(m.state_dict())
    theta_k, (r1, r2) = train_forks(m, data, fork_at=k, fork_seeds=(1, 2), lr=0.02, epochs=2, batch_size=64, seed=0)
    assert all(torch.equal(theta_k[key], plain_k[key]) for key in plain_k)
    assert all(torch.equal(r1.init[key], theta0[key]) and torch.equal(r2.init[key], theta0[key]) for key in theta0)
    assert any(not torch.equal(r1.final[key], r2.final[key]) for key in theta0)
    assert len(r1.history) == len(r2.history) == 2
    # the same fork seed gives the same end (deterministic)
    _, (r1b, _) = train_forks(_fresh(), data, fork_at=k, fork_seeds=(1, 7), lr=0.02, epochs=2, batch_size=64, seed=0)
    assert all(torch.equal(r1.final[key], r1b.final[key]) for key in theta0)
    with pytest.raises(Exception, match="fork_at"):
        train_forks(_fresh(), data, fork_at=14, fork_seeds=(1, 2), epochs=2, batch_size=64)
    with pytest.raises(Exception, match="fork_seeds"):
        train_forks(_fresh(), data, fork_at=1, fork_seeds=(1, 1), epochs=2, batch_size=64)


def test_run_forks_writes_run_folders(tmp_path):
    cfg = TrainConfig(arch=ARCH, data=DATA, loss="mse", epochs=2, batch_size=64, lr=0.02)
    out = str(tmp_path / "forks")
    res = run_forks(cfg, out, fork_at=3, fork_seeds=(4, 5), save_every=7)
    plain = run_training(cfg, str(tmp_path / "plain"))
    for s in (4, 5):
        meta = read_run(fork_folder(out, s))
        assert meta["extra"]["fork_at"] == 3 and meta["extra"]["fork_seed"] == s
        init = torch.load(meta["init"], weights_only=True)
        assert all(torch.equal(init[key], plain.init[key]) for key in init)
        assert meta["final_loss"] == pytest.approx(res[s].final_loss)
        assert sorted(os.listdir(os.path.join(fork_folder(out, s), "checkpoints"))) == ["step_00000007.pt", "step_00000014.pt"]
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["step_00000000.pt"]
    assert os.path.isfile(os.path.join(out, "fork_point.pt")) and json.load(open(os.path.join(out, "forks.json")))["fork_at"] == 3


def _cli(*args):
    from mli_theory.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_cli_train_forks_then_check_and_barrier(tmp_path):
    out = str(tmp_path / "f")
    code, stdout, err = _cli("train", "--arch", ARCH, "--data", DATA, "--epochs", "1", "--out", out,
                             "--fork-at", "2", "--fork-seeds", "1,2", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert set(summary["forks"]) == {"1", "2"}
    code, stdout, err = _cli("check", "--run", fork_folder(out, 1), "--alphas", "3", "--no-geometry", "--json", "--quiet")
    assert code == 0, err
    code, stdout, err = _cli("barrier", "--arch", ARCH, "--data", DATA, "--a", os.path.join(fork_folder(out, 1), "final.pt"),
                             "--b", os.path.join(fork_folder(out, 2), "final.pt"), "--alphas", "3", "--alpha-tol", "0.1",
                             "--json", "--quiet")
    assert code == 0, err and "loss_chord" in json.loads(stdout)["barriers"]


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--fork-at", "2"], "--fork-seeds"),
        (["--fork-at", "2", "--fork-seeds", "1"], "--fork-seeds"),
        (["--fork-at", "2", "--fork-seeds", "1,x"], "--fork-seeds"),
        (["--fork-at", "999", "--fork-seeds", "1,2"], "--fork-at"),
        (["--save-every", "-3"], "--save-every"),
    ],
)
def test_cli_train_bad_fork_options(tmp_path, extra, flag):
    code, stdout, err = _cli("train", "--arch", ARCH, "--data", DATA, "--epochs", "1", "--out", str(tmp_path / "x"), *extra)
    lines = err.strip().splitlines()
    assert code == 2 and stdout == "" and len(lines) == 1 and flag in lines[0], err
