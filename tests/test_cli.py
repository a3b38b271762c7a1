"""End-to-end tests of ``mli-theory`` (the CLI contract of GUIDE §3).

Most run the entry point in-process (same code path, without paying torch's import each time);
the ones about what a fresh process prints (warnings from torch, pickled code, the JSON contract)
run a real subprocess.
"""

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


def cli(*args: str, cwd: str | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run ``mli-theory ARGS``: in a fresh process, or in-process with stdout and stderr captured."""
    if fresh:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
        return subprocess.run([sys.executable, "-m", "mli_theory", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    import contextlib
    import io

    from mli_theory.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


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
    import pickle

    with open(d / "raw_evil.pt", "wb") as f:  # a plain pickle, not written by torch.save
        pickle.dump({"0.weight": Evil()}, f)
    torch.save({k: (10 * v).long() for k, v in init.items()}, d / "int.pt")
    torch.save({k: v > 0 for k, v in init.items()}, d / "bool.pt")
    save_file({k: v.to(torch.float8_e4m3fn).contiguous() for k, v in init.items()}, str(d / "f8.safetensors"))
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    torch.save(bn.state_dict(), d / "bn.pt")
    (d / "tricky.py").write_text(
        "import torch.nn as nn\n\n\n"
        "class Squared(nn.Sequential):\n    def forward(self, x):\n        return super().forward(x) ** 2\n\n\n"
        "def squared():\n    return Squared(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))\n\n\n"
        "def hooked():\n    m = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))\n"
        "    m[1].register_forward_hook(lambda mod, i, o: o * o)\n    return m\n\n\n"
        "def pre_hooked():\n    m = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))\n"
        "    m[0].register_forward_pre_hook(lambda mod, i: (i[0] ** 3,))\n    return m\n\n\n"
        "def bye():\n    raise SystemExit(0)\n\n\n"
        "def chatty():\n    print('hello from the factory')\n"
        "    return nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))\n"
    )
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
    p = cli("check", *base(files), "--certify", "--json", "--dtype", "float64", fresh=True)
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
    cert = obj["certificate"]
    assert obj["conditions"] == []
    # cross-entropy on an MLP is certified by enclosures: a decision with its bound fields
    assert cert["method"] == "enclosure_bisection" and cert["status"] in ("monotone", "non_monotone"), cert
    assert cert["undecided"] == []
    # a monotone proof partitions [0, 1] (8 starting cells at least); a rise may be proven from two
    # point enclosures alone (0 cells)
    assert cert["cells"] >= 8 if cert["status"] == "monotone" else cert["cells"] >= 0
    if cert["status"] == "non_monotone":
        a, b = cert["where"]
        assert a < b and cert["rise"] > obj["tolerance"]


BAD = [
    ("missing keys", {"--init": "missing.pt"}, "1.weight"),
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
    ("plain pickle with code", {"--init": "raw_evil.pt"}, "refusing"),
    ("integer weights", {"--init": "int.pt"}, "init checkpoint"),
    ("bool weights", {"--final": "bool.pt"}, "final checkpoint"),
    ("float8 safetensors", {"--init": "f8.safetensors"}, "float8"),
    ("huge deep_linear spec", {"--arch": "deep_linear:4-10000000000-2"}, "wrong shapes"),
    ("huge mlp spec", {"--arch": "mlp:4-100000000-2"}, "init checkpoint does not match"),
    ("factory raising SystemExit", {"--arch": "tricky:bye"}, "SystemExit"),
]


@pytest.mark.parametrize("label,over,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_line(files, label, over, needle):
    over = {k: (str(files / v) if k in ("--init", "--final", "--data") and not v.startswith("sklearn:") else v) for k, v in over.items()}
    fresh = label in ("unsafe pickle", "plain pickle with code", "factory raising SystemExit")
    p = cli("check", *base(files, **over), "--json", cwd=str(files), fresh=fresh)
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
    ("negative tol in exponent notation", ["--tol", "-1e-9"], "--tol -1e-09: the tolerance must be"),
    ("minus infinity tol", ["--tol", "-inf"], "--tol -inf: the tolerance must be"),
    ("unknown flag", ["--bogus"], "unrecognized"),
    ("non-integer labels for ce", ["--loss", "ce", "--data", "bad_labels.npz"], "integer labels"),
    ("label out of range", ["--loss", "ce", "--data", "range_labels.npz"], "out of range"),
    ("float targets required for mse", ["--data", "labels.npz"], "targets"),
    ("plot folder missing", ["--plot", "/nonexistent-folder/x.png"], "does not exist"),
    ("plot format unknown", ["--plot", "x.xyz"], "unknown image format"),
    ("plot is a directory", ["--plot", "."], "is a directory"),
    ("certify budget nan", ["--certify-budget", "nan"], "--certify-budget nan"),
    ("certify budget negative", ["--certify-budget", "-1"], "--certify-budget"),
    ("tol nan", ["--tol", "nan"], "--tol nan"),
    ("too many alphas", ["--alphas", "10000000"], "--alphas 10000000"),
    ("meta device", ["--device", "meta"], "--device meta"),
    ("mps device", ["--device", "mps"], "--device mps"),
    ("zero batch size", ["--batch-size", "0"], "--batch-size 0"),
]


@pytest.mark.parametrize("label,extra,needle", FLAGS, ids=[f[0] for f in FLAGS])
def test_bad_flags_exit_2(files, label, extra, needle):
    extra = [str(files / e) if e.endswith(".npz") else e for e in extra]
    args = base(files)
    if "--data" in extra:
        i = args.index("--data")
        del args[i : i + 2]
    p = cli("check", *args, *extra, cwd=str(files))
    assert p.returncode == 2, (label, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), p.stderr
    assert p.stdout == ""


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


@pytest.mark.parametrize("factory", ["squared", "hooked", "pre_hooked"])
def test_factories_that_are_not_chains_are_never_certified_exactly(files, factory):
    p = cli("check", *base(files, **{"--arch": f"tricky:{factory}"}), "--certify", "--json", "--dtype", "float64", cwd=str(files))
    assert p.returncode == 0, p.stderr
    cert = json.loads(p.stdout)["certificate"]
    assert cert["status"] == "unknown" and cert["method"] is None, cert


def test_factory_output_stays_off_stdout(files):
    p = cli("check", *base(files, **{"--arch": "tricky:chatty"}), "--json", "--alphas", "3", cwd=str(files), fresh=True)
    assert p.returncode == 0, p.stderr
    json.loads(p.stdout)  # only the JSON object
    assert "hello from the factory" in p.stderr


def test_recompute_with_batch_size_one_is_a_usage_error(files):
    p = cli("check", "--arch", "mlp:4-3-2:bn", "--init", str(files / "bn.pt"), "--final", str(files / "bn.pt"),
            "--data", str(files / "data.npz"), "--batch-size", "1")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "--batch-size 1" in p.stderr and "--bn recompute" in p.stderr


def test_identical_endpoints_in_float32_warn_about_rounding(files):
    p = cli("check", *base(files, **{"--final": str(files / "init.pt")}), "--json", "--no-geometry")
    assert p.returncode == 0, p.stderr
    obj = json.loads(p.stdout)
    assert obj["distance"] == 0.0
    if obj["max_rise"] > 0:  # (1 − α)θ0 + αθ0 is not θ0 in float32: any rise is rounding, and it says so
        assert any("rounding" in w for w in obj["warnings"]), obj["warnings"]


def test_failed_plot_is_a_warning_not_a_lost_verdict(files, tmp_path, monkeypatch):
    """Optional work that fails (here: the plot) is recorded in the result, and the exit code stays 0."""
    from mli_theory.cli import main as cli_main
    import mli_theory.plot as plot

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plot, "plot_curve", broken)
    out = tmp_path / "c.png"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli_main(["check", *base(files), "--json", "--no-geometry", "--plot", str(out), "--quiet"])
    assert code == 0
    obj = json.loads(buf.getvalue())
    assert any("disk full" in w for w in obj["warnings"])


def test_image_data_through_a_cnn_factory(tmp_path):
    """x of shape n×C×H×W from .npz, a user CNN with BatchNorm2d and max pooling: end to end."""
    (tmp_path / "cnnfac.py").write_text(
        "import torch.nn as nn\n\n\ndef make():\n"
        "    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),\n"
        "                         nn.Flatten(), nn.Linear(3 * 4 * 4, 2))\n"
    )
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, 2))
    torch.save(m.state_dict(), tmp_path / "a.pt")
    torch.save({k: (v + 0.2 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in m.state_dict().items()}, tmp_path / "b.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", x=rng.normal(size=(12, 1, 8, 8)), y=rng.normal(size=(12, 2)))
    p = cli("check", "--arch", "cnnfac:make", "--init", str(tmp_path / "a.pt"), "--final", str(tmp_path / "b.pt"),
            "--data", str(tmp_path / "img.npz"), "--json", "--alphas", "9", "--certify", cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    obj = json.loads(p.stdout)
    assert len(obj["losses"]) == 9 and obj["gauss_length"] is not None
    assert obj["info"]["path_kind"] == "piecewise_smooth"
    # max pooling is enclosed (pairwise maxima through the ReLU rule): the rise this path has is
    # proven, and its witness is the measured curve's own (both ends on the 9-point grid here)
    cert = obj["certificate"]
    assert cert["status"] == "non_monotone", cert
    a, b = cert["where"]
    ia, ib = obj["alphas"].index(a), obj["alphas"].index(b)
    assert obj["losses"][ib] - obj["losses"][ia] == pytest.approx(cert["rise"], rel=1e-6) and cert["rise"] > 0


@pytest.mark.parametrize("argv", [["derive", "--latex", "-1"], ["derive", "--", "-1"]])
def test_a_negative_number_after_a_flag_or_dashes_stays_positional(argv, capsys):
    """Negative numbers are attached only to options that take a value (``--tol -1e-9``): after a
    flag or ``--`` they stay positional arguments, as argparse reads them."""
    from mli_theory.cli.main import main

    assert main(argv) == 2
    assert "unknown result '-1'" in capsys.readouterr().err
