"""End-to-end tests of ``mli-theory`` through a subprocess (the CLI contract of GUIDE §3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

REQUIRED = {
    "alphas", "losses", "loss", "max_rise", "tolerance", "monotone_on_grid", "distance",
    "normalized_distance", "gauss_length", "certificate", "conditions",
}


def cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "mli_theory", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    init = m.state_dict()
    final = {k: v + 0.3 * torch.randn_like(v) for k, v in init.items()}
    torch.save(init, d / "init.pt")
    torch.save(final, d / "final.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in final.items()}, str(d / "final.safetensors"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    np.savez(d / "data.npz", x=x, y=rng.normal(size=(30, 2)))
    np.savez(d / "labels.npz", x=x, y=rng.integers(0, 2, size=30))
    np.savez(d / "bad_labels.npz", x=x, y=rng.normal(size=30))
    np.savez(d / "range_labels.npz", x=x, y=np.full(30, 7))
    np.savez(d / "wide.npz", x=rng.normal(size=(30, 5)), y=rng.normal(size=(30, 2)))
    np.savez(d / "ywide.npz", x=x, y=rng.normal(size=(30, 3)))
    np.savez(d / "nan.npz", x=np.where(np.arange(120).reshape(30, 4) == 5, np.nan, x), y=rng.normal(size=(30, 2)))
    np.savez(d / "empty.npz", x=np.zeros((0, 4)), y=np.zeros((0, 2)))
    np.savez(d / "noy.npz", x=x)
    torch.save({"0.weight": init["0.weight"]}, d / "missing.pt")
    torch.save({**init, "0.weight": torch.zeros(5, 4)}, d / "shape.pt")
    torch.save({**final, "1.weight": torch.full((2, 3), float("inf"))}, d / "inf.pt")
    torch.save([1, 2, 3], d / "list.pt")
    (d / "garbage.pt").write_bytes(b"not a checkpoint at all")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"0.weight": Evil()}, d / "evil.pt")
    (d / "userfactory.py").write_text(
        "import torch.nn as nn\n\n\ndef make():\n"
        "    return nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))\n"
    )
    return d


def base(files, **over):
    args = {"--arch": "deep_linear:4-3-2", "--init": str(files / "init.pt"), "--final": str(files / "final.pt"), "--data": str(files / "data.npz")}
    args.update(over)
    out = []
    for k, v in args.items():
        if v is not None:
            out += [k, v]
    return out


def test_json_contract_and_certificate(files):
    p = cli("check", *base(files), "--certify", "--json", "--dtype", "float64")
    assert p.returncode == 0, p.stderr
    obj = json.loads(p.stdout)  # the JSON object is the only thing on stdout
    assert REQUIRED <= obj.keys()
    assert obj["alphas"][0] == 0.0 and obj["alphas"][-1] == 1.0 and len(obj["alphas"]) == 50
    assert len(obj["losses"]) == 50 and obj["loss"] == "mse"
    cert = obj["certificate"]
    assert cert["status"] in ("monotone", "non_monotone") and cert["method"] == "exact_polynomial"
    if cert["status"] == "non_monotone":
        a, b = cert["where"]
        assert a < b and cert["rise"] > obj["tolerance"]
    assert isinstance(obj["gauss_length"], float)
    for c in obj["conditions"]:
        assert {"name", "holds", "value", "threshold", "statement"} <= c.keys()


def test_table_plot_and_safetensors(files, tmp_path):
    png = tmp_path / "curve.png"
    p = cli("check", *base(files, **{"--final": str(files / "final.safetensors")}), "--plot", str(png))
    assert p.returncode == 0, p.stderr
    assert "max rise on grid" in p.stdout and "certificate" in p.stdout
    assert png.stat().st_size > 1000


def test_user_factory_from_the_working_directory(files):
    p = cli("check", *base(files, **{"--arch": "userfactory:make"}), "--json", "--alphas", "5", cwd=str(files))
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)["losses"]) == 5


def test_builtin_data_and_cross_entropy(tmp_path):
    torch.manual_seed(0)
    from mli_theory.inputs import build_model

    m = build_model("mlp:4-8-3")
    torch.save(m.state_dict(), tmp_path / "a.pt")
    torch.save({k: v + 0.1 for k, v in m.state_dict().items()}, tmp_path / "b.pt")
    p = cli("check", "--arch", "mlp:4-8-3", "--init", str(tmp_path / "a.pt"), "--final", str(tmp_path / "b.pt"),
            "--data", "sklearn:iris", "--loss", "ce", "--json", "--alphas", "7", "--certify")
    assert p.returncode == 0, p.stderr
    obj = json.loads(p.stdout)
    assert obj["loss"] == "ce" and len(obj["accuracies"]) == 7
    assert obj["certificate"]["status"] == "unknown" and obj["conditions"] == []


BAD = [
    ("missing keys", {"--init": "missing.pt"}, "missing keys 0.weight" if False else "1.weight"),
    ("wrong shape", {"--init": "shape.pt"}, "0.weight"),
    ("non-finite weights", {"--final": "inf.pt"}, "non-finite"),
    ("non-finite data", {"--data": "nan.npz"}, "non-finite"),
    ("x does not fit the model", {"--data": "wide.npz"}, "does not fit"),
    ("y does not fit the outputs", {"--data": "ywide.npz"}, "targets"),
    ("empty data", {"--data": "empty.npz"}, "empty"),
    ("missing array", {"--data": "noy.npz"}, "missing array"),
    ("missing data file", {"--data": "nope.npz"}, "not found"),
    ("missing checkpoint", {"--init": "nope.pt"}, "not found"),
    ("unreadable checkpoint", {"--init": "garbage.pt"}, "cannot read"),
    ("not a state dict", {"--init": "list.pt"}, "state dict"),
    ("unsafe pickle", {"--init": "evil.pt"}, "refusing"),
    ("unknown arch", {"--arch": "resnet:9"}, "unknown arch"),
    ("bad widths", {"--arch": "mlp:4-x-2"}, "integers"),
    ("unknown activation", {"--arch": "mlp:4-3-2:swish"}, "unknown or repeated option"),
    ("unimportable factory", {"--arch": "no_such_module_xyz:make"}, "cannot import"),
    ("unknown built-in data", {"--data": "sklearn:nope"}, "unknown built-in"),
]


@pytest.mark.parametrize("label,over,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_line(files, label, over, needle):
    over = {k: (str(files / v) if k in ("--init", "--final", "--data") and not v.startswith("sklearn:") else v) for k, v in over.items()}
    p = cli("check", *base(files, **over), "--json")
    assert p.returncode == 2, (label, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mli-theory: error:"), p.stderr
    assert needle.lower() in lines[0].lower()
    assert p.stdout == ""
    assert "pwned" not in p.stdout + p.stderr


FLAGS = [
    ("one alpha", ["--alphas", "1"], "at least 2"),
    ("unknown loss", ["--loss", "hinge"], "unknown loss"),
    ("unknown bn", ["--bn", "magic"], "--bn magic"),
    ("unknown dtype", ["--dtype", "float16"], "--dtype float16"),
    ("negative tol", ["--tol", "-1"], "tol"),
    ("unknown flag", ["--bogus"], "unrecognized"),
    ("non-integer labels for ce", ["--loss", "ce", "--data", "bad_labels.npz"], "integer labels"),
    ("label out of range", ["--loss", "ce", "--data", "range_labels.npz"], "out of range"),
    ("float targets required for mse", ["--data", "labels.npz"], "targets"),
    ("plot folder missing", ["--plot", "/nonexistent-folder/x.png"], "does not exist"),
]


@pytest.mark.parametrize("label,extra,needle", FLAGS, ids=[f[0] for f in FLAGS])
def test_bad_flags_exit_2(files, label, extra, needle):
    extra = [str(files / e) if e.endswith(".npz") else e for e in extra]
    args = base(files)
    if "--data" in extra:
        i = args.index("--data")
        del args[i : i + 2]
    p = cli("check", *args, *extra)
    assert p.returncode == 2, (label, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), p.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu(files):
    p = cli("check", *base(files), "--device", "cuda")
    assert p.returncode == 2 and "cuda" in p.stderr.lower()


def test_derive_lists_and_prints_results():
    p = cli("derive")
    assert p.returncode == 0 and "stationary_curvature" in p.stdout
    p = cli("derive", "integral_identity", "--json")
    obj = json.loads(p.stdout)
    assert obj["name"] == "integral_identity" and all(s["checked"] in (True, None) for s in obj["steps"])
    p = cli("derive", "nope")
    assert p.returncode == 2
