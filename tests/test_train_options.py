"""Training options of round 2: learning-rate decay, the bounded push, conv nets for 1×8×8 digits."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from torch import nn

import mli_theory as mt
from mli_theory.errors import InputError
from mli_theory.inputs import convnets
from mli_theory.inputs.arch import build_model
from mli_theory.runs import TrainConfig, run_training
from mli_theory.runs.sweep import run_id, run_one
from mli_theory.runs.train import train


def _toy(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return mt.Dataset(x, (x[:, :1] - x[:, 1:2]).clone(), "mse", "toy")


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))


def test_annealing_decays_the_learning_rate_linearly_over_the_last_fraction(monkeypatch):
    seen = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    train(_net(), _toy(), optimizer="sgd", lr=0.1, epochs=4, batch_size=16, anneal=0.5)  # 16 steps, the last 8 decay
    assert len(seen) == 16
    assert seen[:8] == [0.1] * 8
    want = [0.1 * (16 - s) / 8 for s in range(8, 16)]
    assert seen[8:] == pytest.approx(want)
    assert seen[-1] == pytest.approx(0.1 / 8) and seen[-1] > 0


def test_annealing_off_leaves_training_unchanged():
    a = train(_net(), _toy(), optimizer="adam", lr=1e-2, epochs=3, batch_size=16)
    b = train(_net(), _toy(), optimizer="adam", lr=1e-2, epochs=3, batch_size=16, anneal=0.0)
    assert all(torch.equal(a.final[k], b.final[k]) for k in a.final)


def test_the_bounded_push_keeps_the_distance_and_still_trains():
    data = _toy(128)
    net = _net()
    theta0 = torch.cat([p.detach().flatten() for p in net.parameters()])
    res = train(net, data, optimizer="sgd", lr=0.05, epochs=60, batch_size=32, min_distance=2.0)
    theta = torch.cat([res.final[k].flatten() for k in res.final])
    d = float((theta - theta0).norm())
    assert d >= 2.0 * float(theta0.norm()) * (1 - 1e-6)
    free = train(_net(), data, optimizer="sgd", lr=0.05, epochs=60, batch_size=32)
    d_free = float((torch.cat([free.final[k].flatten() for k in free.final]) - theta0).norm())
    assert d_free < 2.0 * float(theta0.norm())  # without the push it stays closer: the constraint acted
    assert math.isfinite(res.final_loss) and res.final_loss < res.history[0]  # the objective is bounded: it trains


def test_the_push_does_not_touch_the_callers_tensors():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = train(net, _toy(), optimizer="sgd", lr=0.05, epochs=2, batch_size=32, min_distance=1.0)
    assert all(torch.equal(res.init[k], before[k]) for k in before)


@pytest.mark.parametrize("kw", [{"anneal": -0.1}, {"anneal": 1.5}, {"min_distance": -1.0}, {"min_distance": float("inf")}])
def test_bad_schedule_options_are_input_errors_before_any_work(kw, tmp_path):
    cfg = TrainConfig(arch="mlp:10-4-1", data="sklearn:diabetes", **kw)
    with pytest.raises(InputError):
        run_training(cfg, str(tmp_path / "r"))
    assert not os.path.exists(tmp_path / "r")


def test_cli_train_rejects_a_negative_push_radius(tmp_path):
    p = subprocess.run([sys.executable, "-m", "mli_theory", "train", "--arch", "mlp:10-4-1", "--data", "sklearn:diabetes",
                        "--min-distance", "-1", "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert p.returncode == 2 and "--min-distance -1.0" in p.stderr and "Traceback" not in p.stderr


def test_run_ids_of_configs_without_the_new_options_did_not_change():
    cfg = TrainConfig(arch="mlp:10-4-1", data="sklearn:diabetes", seed=3)
    old = {k: v for k, v in asdict(cfg).items() if k not in ("anneal", "min_distance", "normalize")}
    assert run_id(cfg) == hashlib.sha1(json.dumps(old, sort_keys=True).encode()).hexdigest()[:12]
    assert run_id(TrainConfig(arch="mlp:10-4-1", data="sklearn:diabetes", seed=3, anneal=0.25)) != run_id(cfg)


@pytest.mark.parametrize("name", [n for n in convnets.__all__ if n != "image_resnet"])
def test_conv_nets_take_their_inputs(name):
    if not name.startswith("digits_"):
        channels = 1 if name.startswith("mnist") else 3
        model = build_model(f"mli_theory.inputs.convnets:{name}").eval()
        assert model(torch.rand(2, channels, 28, 28)).shape == (2, 10)
        assert ("bn" in name) == any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        return
    model = build_model(f"mli_theory.inputs.convnets:{name}").eval()
    x = torch.randn(3, 64)
    assert model(x).shape == (3, 10)
    assert ("bn" in name) == any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_a_digits_cnn_is_certified_through_unflatten():
    """nn.Unflatten on the data is constant-folded; the enclosures contain the float64 loss."""
    from mli_theory.certify.partition import enclose, plain_loss, prepare

    torch.manual_seed(0)
    model = convnets.digits_cnn().double()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.3 * torch.randn_like(v) for k, v in init.items()}
    data = mt.Dataset(torch.randn(12, 64, dtype=torch.float64), torch.arange(12) % 10, "ce", "t")
    line = mt.make_line(model, init, final, dtype=torch.float64)
    prob = prepare(line, data, mt.BNPolicy.FROZEN)
    a, b = [0.0, 0.5], [0.125, 0.625]
    dl, ll = enclose(prob, a, b)
    for (lo, hi), (llo, lhi), ai, bi in zip(dl, ll, a, b):
        for t in (ai, (ai + bi) / 2, bi):
            assert llo <= plain_loss(prob, t) <= lhi
            eps = 1e-6
            fd = (plain_loss(prob, min(t + eps, bi)) - plain_loss(prob, max(t - eps, ai))) / (min(t + eps, bi) - max(t - eps, ai))
            assert lo - 1e-5 <= fd <= hi + 1e-5
    out = mt.certify(line, data, tol=1e-3, budget_s=60, bn="frozen")
    assert out.certificate.status in ("monotone", "non_monotone"), out.certificate.reason


def test_run_one_certifies_at_every_tolerance_and_records_the_kinds_of_rise(tmp_path):
    cfg = TrainConfig(arch="mlp:10-8-1:tanh", data="sklearn:diabetes", loss="mse", epochs=3, batch_size=64, lr=0.01)
    row = run_one(cfg, str(tmp_path / "r"), alphas=9, geometry=False, tols=(0.0, 1e-3))
    assert row["status"] == "ok", row.get("error")
    for key in ("cert@0", "cert@0.001", "rise_bound@0", "cells@0.001", "interior_bump", "end_rise", "final_run_steps"):
        assert key in row
    assert row["cert@0"] == row["certificate"]
    assert row["cert@0.001"] in ("monotone", "non_monotone", "unknown")
    if row["cert@0"] == "monotone":  # a proof at T = 0 is a proof at every larger T
        assert row["cert@0.001"] == "monotone"
    assert row["max_rise"] == pytest.approx(max(row["interior_bump"], row["end_rise"]))


@pytest.mark.parametrize("name", ["digits_cnn", "digits_resnet"])
def test_conv_net_jets_through_unflatten_equal_nested_jvp(name):
    from mli_theory.geometry import path_jet, taylor_supported

    torch.manual_seed(1)
    model = build_model(f"mli_theory.inputs.convnets:{name}").double()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.2 * torch.randn_like(v) if v.is_floating_point() else v for k, v in init.items()}
    data = mt.Dataset(torch.randn(5, 64, dtype=torch.float64), torch.arange(5), "ce", "t")
    line = mt.make_line(model, init, final, dtype=torch.float64)
    assert taylor_supported(line)
    fast = path_jet(line, data, [0.0, 0.4, 1.0], method="taylor")
    ref = path_jet(line, data, [0.0, 0.4, 1.0], method="nested_jvp")
    for attr in ("z", "dz", "d2z"):
        f, r = getattr(fast, attr), getattr(ref, attr)
        assert torch.allclose(f, r, rtol=1e-10, atol=1e-12 * (1 + float(r.abs().max()))), attr


def test_training_into_a_run_folder_says_it_replaces_the_run(tmp_path):
    import contextlib
    import io
    import json

    from mli_theory.cli import main

    args = ["train", "--arch", "mlp:10-4-1", "--data", "sklearn:diabetes", "--epochs", "1", "--out", str(tmp_path / "r"),
            "--json", "--quiet"]
    outs = []
    for _ in range(2):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert main(args) == 0
        outs.append(json.loads(out.getvalue())["warnings"])
    assert outs[0] == [] and len(outs[1]) == 1 and "its files are replaced" in outs[1][0]
