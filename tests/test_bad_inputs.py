"""Bad input is refused before any work: exit code 2, one line on stderr, nothing on stdout, fast.

Unwritable places are made without relying on permissions (which root ignores): a path under a
regular file (``file.txt/sub``) cannot be created by anyone, and ``/proc`` is an existing folder
nobody can create files in. A chmod 0o500 folder is used as well where chmod takes effect."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import time

import pytest
import torch

ARCH = "mlp:10-4-1"
DATA = "sklearn:diabetes"


def run_cli(*args: str) -> tuple[int, str, str, float]:
    from mli_theory.cli import main

    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - t0


def refused(*args: str, needle: str) -> str:
    code, out, err, seconds = run_cli(*args)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("mli-theory: error:"), err
    assert needle.lower() in lines[0].lower(), lines[0]
    assert out == ""
    assert seconds < 5, seconds
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from mli_theory.inputs import build_model

    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    m = build_model(ARCH)
    torch.save(m.state_dict(), d / "a.pt")
    torch.save({k: v + 0.1 for k, v in m.state_dict().items()}, d / "b.pt")
    (d / "file.txt").write_text("a regular file: nothing can be created under it\n")
    (d / "spec.json").write_text('{"base": {"data": "sklearn:diabetes", "epochs": 1}, "axes": {"arch": ["mlp:10-4-1"]}}')
    return d


def model_args(d) -> list[str]:
    return ["--arch", ARCH, "--init", str(d / "a.pt"), "--final", str(d / "b.pt"), "--data", DATA]


def unwritable_folders(d) -> list[str]:
    """Existing folders this process cannot create a file in."""
    found = []
    locked = d / "locked"
    locked.mkdir(exist_ok=True)
    os.chmod(locked, stat.S_IRUSR | stat.S_IXUSR)  # 0o500
    if not os.access(locked, os.W_OK):  # root ignores the mode
        found.append(str(locked))
    if os.path.isdir("/proc"):
        try:
            open("/proc/mli-theory-probe", "w").close()
        except OSError:
            found.append("/proc")
    return found


def test_train_out_under_a_file(files):
    refused("train", "--arch", ARCH, "--data", DATA, "--epochs", "500", "--out", str(files / "file.txt" / "sub"), needle="--out")


def test_train_out_in_an_unwritable_folder(files):
    folders = unwritable_folders(files)
    if not folders:
        pytest.skip("no unwritable folder available")
    for folder in folders:
        refused("train", "--arch", ARCH, "--data", DATA, "--epochs", "500", "--out", os.path.join(folder, "run"), needle="--out")


def test_sweep_out_under_a_file(files):
    refused("sweep", str(files / "spec.json"), "--out", str(files / "file.txt" / "sweep"), needle="--out")


def test_sweep_unreachable_scheduler(files):
    pytest.importorskip("distributed")
    line = refused("sweep", str(files / "spec.json"), "--out", str(files / "sweep"), "--executor", "dask",
                   "--scheduler", "tcp://127.0.0.1:1", needle="--scheduler tcp://127.0.0.1:1")
    assert "reachable" in line


def test_demo_out_under_a_file(files):
    refused("demo", "--out", str(files / "file.txt" / "demo"), needle="--out")


@pytest.mark.parametrize("command", ["check", "curvature", "kernel", "surface", "roughness"])
def test_plot_under_a_file(files, command):
    refused(command, *model_args(files), "--plot", str(files / "file.txt" / "x.png"), needle="--plot")


def test_check_plot_into_an_unwritable_folder(files):
    folders = unwritable_folders(files)
    if not folders:
        pytest.skip("no unwritable folder available")
    for folder in folders:
        refused("check", *model_args(files), "--plot", os.path.join(folder, "curve.png"), needle="cannot write")


def test_curvature_plot_unwritable(files):
    folders = unwritable_folders(files) or [None]
    for folder in folders:
        target = os.path.join(folder, "c.png") if folder else str(files / "file.txt" / "c.png")
        refused("curvature", *model_args(files), "--plot", target, needle="--plot")


def test_barrier_plot_unwritable(files):
    folders = unwritable_folders(files) or [None]
    for folder in folders:
        target = os.path.join(folder, "b.png") if folder else str(files / "file.txt" / "b.png")
        refused("barrier", "--arch", ARCH, "--a", str(files / "a.pt"), "--b", str(files / "b.pt"), "--data", DATA,
                "--plot", target, needle="--plot")


def test_kernel_checkpoints_missing_folder(files):
    refused("kernel", *model_args(files), "--checkpoints", str(files / "no-such-run"), needle="--checkpoints")


def test_surface_plot_bad_extension(files):
    refused("surface", *model_args(files), "--plot", str(files / "s.xyz"), needle="unknown image format")


def test_loss_hessian_casts_the_data_to_the_line():
    """The Python API: a float32 line and data as load_data returns them (float64) just work."""
    from mli_theory import build_model, load_data, make_line
    from mli_theory.curvature import loss_hessian

    torch.manual_seed(0)
    m = build_model(ARCH)
    a = m.state_dict()
    b = {k: v + 0.1 for k, v in a.items()}
    line = make_line(build_model(ARCH), a, b)
    data = load_data(DATA, "mse")
    assert line.dtype == torch.float32 and data.x.dtype != line.dtype
    op = loss_hessian(line, data, 0.5)
    hv = op.matvec(torch.ones(op.size))
    ref = loss_hessian(line, data.to(line.device, line.dtype), 0.5).matvec(torch.ones(op.size))
    assert hv.dtype == torch.float32 and torch.allclose(hv, ref)


def test_data_beyond_float32_is_named_not_a_non_finite_loss(files):
    import numpy as np

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 10)), rng.normal(size=(20, 1))
    x[3, 2] = 1e39  # finite in float64, inf in float32
    np.savez(files / "big.npz", x=x, y=y)
    args = ["check", "--arch", ARCH, "--init", str(files / "a.pt"), "--final", str(files / "b.pt"),
            "--data", str(files / "big.npz")]
    line = refused(*args, needle="beyond the range of float32")
    assert "--dtype float64" in line
    code, out, err, _ = run_cli(*args, "--dtype", "float64", "--json")
    assert code == 0, err


def test_a_model_whose_train_mode_forward_fails_is_refused_under_recompute():
    import mli_theory as mt
    from mli_theory.errors import InputError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4, eps=0.0), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    end = {k: v + 0.1 if v.is_floating_point() else v for k, v in start.items()}
    data = mt.Dataset(torch.randn(8, 3), torch.randint(0, 2, (8,)), "ce", "t")
    with pytest.raises(InputError, match="train-mode forward fails: batch_norm eps"):
        mt.check(model, start, end, data, alphas=5, geometry=False)
    for bn in ("interpolate", "frozen"):  # evaluation mode alone: eps = 0 is the caller's business
        assert mt.check(model, start, end, data, alphas=5, geometry=False, bn=bn).certificate.status == "unknown"


def test_json_stays_the_only_thing_on_stdout_when_the_models_forward_prints(files, monkeypatch):
    import json

    (files / "printing_model.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.l = torch.nn.Linear(10, 1)\n"
        "    def forward(self, x):\n"
        "        print('forward ran')\n"
        "        return self.l(x)\n"
        "def net():\n"
        "    return Net()\n"
    )
    monkeypatch.syspath_prepend(str(files))
    torch.manual_seed(0)
    m = torch.nn.Linear(10, 1)
    torch.save({f"l.{k}": v for k, v in m.state_dict().items()}, files / "p0.pt")
    torch.save({f"l.{k}": v + 0.1 for k, v in m.state_dict().items()}, files / "p1.pt")
    code, out, err, _ = run_cli("check", "--arch", "printing_model:net", "--init", str(files / "p0.pt"), "--final",
                                str(files / "p1.pt"), "--data", DATA, "--alphas", "5", "--json")
    assert code == 0, err
    assert json.loads(out)["alphas"][-1] == 1.0  # one JSON object, nothing else
    assert "forward ran" in err  # what the model prints is not lost


@pytest.mark.parametrize("args", [
    ["check", "--arch", ARCH, "--init", "a", "--final", "b", "--data", DATA, "--alphas", "1.5"],
    ["check", "--arch", ARCH, "--init", "a", "--final", "b", "--data", DATA, "--tol", "abc"],
])
def test_argument_errors_of_a_command_carry_the_one_prefix(args):
    line = refused(*args, needle="invalid")
    assert line.startswith("mli-theory: error: check: argument")


@pytest.mark.parametrize("flag,value,needle", [
    ("--lr", "nan", "--lr nan: must be a finite number"),
    ("--lr", "inf", "--lr inf"),
    ("--momentum", "-1", "--momentum -1.0: must be ≥ 0"),
    ("--distance-reward", "-1", "--distance-reward -1.0"),
    ("--init-scale", "nan", "--init-scale nan"),
])
def test_train_refuses_numbers_out_of_range(files, flag, value, needle):
    refused("train", "--arch", ARCH, "--data", DATA, "--epochs", "1", "--out", str(files / "t_run"), flag, value, needle=needle)
    assert not (files / "t_run" / "final.pt").exists()


@pytest.mark.parametrize("spec,needle", [
    ("[1, 2]", "expected a JSON object"),
    ('{"base": {"data": "sklearn:diabetes", "arch": "mlp:10-4-1"}, "axis": {"seed": [0, 1]}}', "unknown key(s) 'axis'"),
    ('{"base": {"data": "sklearn:diabetes", "arch": "mlp:10-4-1", "epochs": -1}}', "epochs=-1"),
    ('{"base": {"data": "sklearn:diabetes", "arch": "mlp:10-4-1", "lr": "abc"}}', "lr='abc'"),
    ('{"base": {"data": "sklearn:diabetes", "arch": "nosuch:1-2"}}', "unknown arch spec"),
    ('{"base": {"data": "sklearn:diabetes", "arch": "mlp:10-4-1"}, "axes": {"seed": 5}}', "non-empty list"),
])
def test_a_sweep_spec_is_checked_whole_before_any_run_trains(files, spec, needle):
    path = files / "bad_spec.json"
    path.write_text(spec)
    refused("sweep", str(path), "--out", str(files / "sw_bad"), needle=needle)
    assert not (files / "sw_bad").exists() or not any((files / "sw_bad").iterdir())


def test_sweep_options_are_checked_before_any_run_trains(files):
    spec = str(files / "spec.json")
    refused("sweep", spec, "--out", str(files / "sw_a"), "--alphas", "1", needle="--alphas 1")
    refused("sweep", spec, "--out", str(files / "sw_b"), "--scheduler", "tcp://127.0.0.1:1", needle="executor")


def test_a_folder_or_a_text_file_as_a_checkpoint_or_data_is_named(files):
    (files / "adir.pt").mkdir(exist_ok=True)
    (files / "text.pt").write_text("hello\n")
    (files / "text.npz").write_text("hello\n")
    args = ["check", "--arch", ARCH, "--final", str(files / "b.pt"), "--data", DATA]
    refused(*args, "--init", str(files / "adir.pt"), needle="is a folder")
    refused(*args, "--init", str(files / "text.pt"), needle="not a torch.save file")
    refused("check", "--arch", ARCH, "--init", str(files / "a.pt"), "--final", str(files / "b.pt"), "--data",
            str(files / "text.npz"), needle="not an .npz archive")


class _FirstReadDiffers(torch.utils.data.Dataset):
    def __init__(self):
        self.seen = set()

    def __len__(self):
        return 8

    def __getitem__(self, i):
        first = i not in self.seen
        self.seen.add(i)
        x = torch.tensor([1.0 + i]) * (-10.0 if first and 0 < i < 7 else 1.0)
        return x, torch.tensor([1.0 + i])


class _OwnBatchedRead(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor([1.0 + i]), torch.tensor([1.0 + i])

    def __getitems__(self, idx):
        return [(-10.0 * self[i][0] if 0 < i < 7 else self[i][0], self[i][1]) for i in idx]


def test_data_sources_are_read_as_a_caller_reads_them(monkeypatch):
    import sys
    import types

    from torch.utils.data import DataLoader, SequentialSampler, TensorDataset

    from mli_theory.errors import InputError
    from mli_theory.inputs import load_data

    mod = types.ModuleType("source_factories")
    x8 = torch.arange(1.0, 9.0).reshape(-1, 1)
    mod.first = lambda: _FirstReadDiffers()
    mod.batched = lambda: DataLoader(_OwnBatchedRead(), batch_size=4)
    mod.half = lambda: DataLoader(TensorDataset(x8, x8.clone()), batch_size=2, sampler=SequentialSampler(range(4)))
    monkeypatch.setitem(sys.modules, "source_factories", mod)
    data = load_data("source_factories:first", "mse")  # streamed by index: a later read must give the first one
    with pytest.raises(InputError, match=r"dataset\[1\] returned another input than on its first read"):
        data.x[:8]
    batched = load_data("source_factories:batched", "mse")  # through the data set's own __getitems__, as the loader does
    assert batched.x[1, 0].item() == -20.0 and batched.loader_batch_size == 4
    half = load_data("source_factories:half", "mse")  # the loader's sampler picks 4 of the 8 examples
    assert half.n == 4 and half.loader_batch_size == 2


def test_a_dataloaders_batches_are_the_evaluations_and_float64_checkpoints_set_the_dtype(files, monkeypatch):
    import json

    _loader_module(monkeypatch, "loader_factory", "data", n=20, batch_size=8, seed=0)
    code, out, err, _ = run_cli("check", "--arch", ARCH, "--init", str(files / "a.pt"), "--final", str(files / "b.pt"),
                                "--data", "loader_factory:data", "--alphas", "3", "--json")
    result = json.loads(out)
    assert code == 0 and any("batches of 8" in w for w in result["warnings"]), err
    assert result["info"]["dtype"] == "float32"
    torch.save({k: v.double() for k, v in torch.load(files / "b.pt").items()}, files / "b64.pt")
    code, out, err, _ = run_cli("check", "--arch", ARCH, "--init", str(files / "a.pt"), "--final", str(files / "b64.pt"),
                                "--data", DATA, "--alphas", "3", "--json")
    assert code == 0 and json.loads(out)["info"]["dtype"] == "float64", err


@pytest.mark.parametrize("command", [
    ["surface", "--dims", "1", "--steps", "3"],
    ["kernel", "--alphas", "2"],
    ["train", "--epochs", "1"],
])
def test_a_seed_beyond_64_bits_or_negative_is_refused(files, command):
    args = [command[0], "--arch", ARCH, "--data", DATA, *command[1:]]
    if command[0] == "train":
        args += ["--out", str(files / "seed_run")]
    else:
        args += ["--init", str(files / "a.pt"), "--final", str(files / "b.pt")]
    refused(*args, "--seed", "99999999999999999999999", needle="--seed")
    refused(*args, "--seed", "-1", needle="out of range")


def test_one_roughness_slice_is_refused_and_other_commands_carry_the_inputs_notes(files, monkeypatch):
    import json


    refused("roughness", "--arch", ARCH, "--init", str(files / "a.pt"), "--final", str(files / "b.pt"), "--data", DATA,
            "--slices", "1", needle="at least 2")
    _loader_module(monkeypatch, "notes_factory", "loader", n=21, batch_size=7, seed=1)
    code, out, err, _ = run_cli("barrier", "--arch", ARCH, "--a", str(files / "a.pt"), "--b", str(files / "b.pt"),
                                "--data", "notes_factory:loader", "--alphas", "3", "--json")
    assert code == 0, err
    assert any("batches of 7" in w for w in json.loads(out)["warnings"])


def test_a_forward_that_raises_on_the_data_is_one_line(files, monkeypatch):
    import sys
    import types

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(10, 1)

        def forward(self, x):
            return self.l(x) * x.no_such_attribute

    mod = types.ModuleType("broken_model")
    mod.net = Broken
    monkeypatch.setitem(sys.modules, "broken_model", mod)
    torch.manual_seed(0)
    m = torch.nn.Linear(10, 1)
    torch.save({f"l.{k}": v for k, v in m.state_dict().items()}, files / "k0.pt")
    refused("check", "--arch", "broken_model:net", "--init", str(files / "k0.pt"), "--final", str(files / "k0.pt"),
            "--data", DATA, needle="the model's forward raised AttributeError")


def _loader_module(monkeypatch, module: str, name: str, *, n: int, batch_size: int, seed: int) -> None:
    """Register a module ``module`` whose ``name()`` returns a DataLoader of n random (x, y) pairs
    (10 inputs, 1 target) in batches of ``batch_size``."""
    import sys
    import types

    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 10, generator=g), torch.randn(n, 1, generator=g)
    mod = types.ModuleType(module)
    setattr(mod, name, lambda: DataLoader(TensorDataset(x, y), batch_size=batch_size))
    monkeypatch.setitem(sys.modules, module, mod)
