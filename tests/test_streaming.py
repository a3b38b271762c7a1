"""Every computation reads streamed inputs (:class:`Examples`) batch by batch and gets the numbers
it gets from the same data held in memory; nothing reads the whole input at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mli_theory.check import check
from mli_theory.errors import InputError
from mli_theory.inputs.data import Dataset, load_data
from mli_theory.inputs.examples import STREAM_BATCH, ArrayReader, Examples, Normalization, RecordFile, iter_batches

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class _Counting(ArrayReader):
    """An array reader that records the largest number of examples read at once."""

    def __init__(self, array: np.ndarray, name: str) -> None:
        super().__init__(array, name)
        self.largest = 0

    def read(self, index: np.ndarray) -> np.ndarray:
        self.largest = max(self.largest, int(index.size))
        return super().read(index)


def _pair(loss: str = "ce", n: int = 120, seed: int = 0) -> tuple[Dataset, Dataset, _Counting]:
    base = load_data("sklearn:digits", loss)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(base.n, generator=g)[:n]
    x, y = base.x[idx].contiguous(), base.y[idx].contiguous()
    reader = _Counting(x.numpy(), "digits-streamed")
    return Dataset(x, y, loss, "mem"), Dataset(Examples(reader), y, loss, "stream"), reader


def _endpoints(model: nn.Module, scale: float = 0.4, seed: int = 1):
    torch.manual_seed(seed)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: (v + scale * torch.randn_like(v)) if v.is_floating_point() else v.clone() for k, v in init.items()}
    return init, final


def _mlp(bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    mid: list[nn.Module] = [nn.BatchNorm1d(24)] if bn else []
    return nn.Sequential(nn.Linear(64, 24), *mid, nn.Tanh(), nn.Linear(24, 10))


# --- the interface -------------------------------------------------------------------------------


def test_examples_index_like_a_tensor():
    x = torch.randn(37, 3, 4, dtype=torch.float64)
    ex = Examples(ArrayReader(x.numpy(), "a"))
    assert ex.shape == x.shape and len(ex) == 37 and ex.dim() == 3
    for key in (slice(None), slice(5, 9), slice(1, None, 4), slice(30, 100), 0, -1,
                torch.tensor([5, 2, 2, 36, 0]), np.array([3, 3]), torch.zeros(37, dtype=torch.bool).index_fill(0, torch.tensor([4, 7]), True)):
        assert torch.equal(ex[key], x[key]), key
    moved = ex.to("cpu", torch.float32)
    assert moved.dtype == torch.float32 and ex.dtype == torch.float64  # nothing of ex changed
    assert torch.equal(moved[3:5], x[3:5].float())
    assert [b.shape[0] for b in iter_batches(ex, 10)] == [10, 10, 10, 7]
    with pytest.raises(IndexError):
        ex[37]


def test_scale_and_normalization_match_the_npz_decoding():
    raw = np.random.default_rng(0).integers(0, 256, size=(6, 3, 2, 2), dtype=np.uint8)
    norm = Normalization.parse("0.5,0.4,0.3,0.2,0.25,0.3")
    ex = Examples(ArrayReader(raw, "img"), scale=255.0, normalization=norm)
    ref = raw.astype(np.float64) / 255.0
    ref = (ref - np.array([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1)) / np.array([0.2, 0.25, 0.3]).reshape(1, 3, 1, 1)
    assert np.array_equal(ex[:].numpy(), ref)
    for bad in ("1", "a,b", "0.1,0.2,0,0.3", "1,2,3", "0.5,-1"):
        with pytest.raises(InputError):
            Normalization.parse(bad)


def test_record_file_reads_only_what_is_asked(tmp_path):
    a = np.random.default_rng(1).normal(size=(9, 2, 3)).astype(">f4")
    path = tmp_path / "rec.bin"
    path.write_bytes(b"HEADER" + a.tobytes())
    ex = Examples(RecordFile(str(path), 6, 9, (2, 3), ">f4"))
    assert np.array_equal(ex[torch.tensor([8, 0, 4, 5])].numpy(), a[[8, 0, 4, 5]].astype(np.float64))
    with pytest.raises(InputError, match="truncated"):
        RecordFile(str(path), 6, 10, (2, 3), ">f4")


def test_non_finite_values_stop_the_read():
    x = np.zeros((10, 4))
    x[7, 2] = np.nan
    ex = Examples(ArrayReader(x, "bad.npy"))
    assert torch.equal(ex[:5], torch.zeros(5, 4, dtype=torch.float64))
    with pytest.raises(InputError, match="bad.npy: example 7 has non-finite values"):
        ex[4:9]


# --- every command's computation ---------------------------------------------------------------


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_check_streams_and_agrees(loss):
    mem, stream, reader = _pair(loss)
    model = _mlp()
    init, final = _endpoints(model)
    kw = dict(alphas=9, certify=True, dtype="float64", certify_budget=20)
    a = check(model, init, final, mem, batch_size=32, **kw)
    b = check(model, init, final, stream, **kw)  # default: STREAM_BATCH at a time
    assert b.info["batch_size"] == STREAM_BATCH
    c = check(model, init, final, stream, batch_size=32, **kw)
    assert np.allclose(a.losses, b.losses, rtol=1e-12, atol=0) and a.losses == c.losses
    assert a.gauss_length == pytest.approx(c.gauss_length, rel=1e-12)
    assert a.certificate.status == c.certificate.status != "unknown" or a.certificate.status == "unknown"
    assert [(k.name, k.holds) for k in a.conditions] == [(k.name, k.holds) for k in c.conditions]


def test_check_never_reads_more_than_a_batch():
    mem, stream, reader = _pair("ce", n=600)
    model = _mlp()
    init, final = _endpoints(model)
    a = check(model, init, final, mem, alphas=9, dtype="float64", batch_size=32)
    b = check(model, init, final, stream, alphas=9, dtype="float64", batch_size=32)
    assert a.losses == b.losses and a.gauss_length == b.gauss_length
    assert 2 <= reader.largest <= 32


def test_check_streams_batchnorm_recompute():
    mem, stream, reader = _pair("ce")
    model = _mlp(bn=True)
    init, final = _endpoints(model)
    a = check(model, init, final, mem, alphas=5, dtype="float64", batch_size=40, geometry=True)
    b = check(model, init, final, stream, alphas=5, dtype="float64", batch_size=40, geometry=True)
    assert a.losses == b.losses
    assert a.gauss_length == pytest.approx(b.gauss_length, rel=1e-12)
    assert reader.largest <= 40


def test_linear_exact_method_reads_streamed_inputs():
    base = load_data("sklearn:diabetes", "mse")
    stream = Dataset(Examples(ArrayReader(base.x.numpy(), "diabetes")), base.y, "mse", "s")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 1))
    init, final = _endpoints(model, 1.0)
    a = check(model, init, final, base, alphas=7, certify=True, dtype="float64")
    b = check(model, init, final, stream, alphas=7, certify=True, dtype="float64")
    assert a.certificate.status == b.certificate.status != "unknown"
    assert a.certificate.method == b.certificate.method == "exact_polynomial"


def test_curvature_kernel_barrier_surface_stream():
    from mli_theory.connectivity.barrier import barrier
    from mli_theory.connectivity.surface import loss_surface
    from mli_theory.curvature import curvature_along
    from mli_theory.kernels import kernel_along_path
    from mli_theory.path import make_line

    mem, stream, reader = _pair("ce", n=60)
    model = _mlp()
    init, final = _endpoints(model)
    line = make_line(model, init, final, dtype=torch.float64)
    ca = curvature_along(line, mem.to("cpu", torch.float64), [0.0, 1.0], top_k=2, batch_size=16)
    cb = curvature_along(line, stream.to("cpu", torch.float64), [0.0, 1.0], top_k=2, batch_size=16)
    assert np.allclose([p.directional_curvature for p in ca.points], [p.directional_curvature for p in cb.points], rtol=1e-8)
    assert reader.largest <= 16
    ka = kernel_along_path(line, mem.x, [0.0, 1.0], bn_x=mem.x, batch_size=16)
    kb = kernel_along_path(line, stream.x, [0.0, 1.0], bn_x=stream.x, batch_size=16)
    assert np.allclose(ka.kernel_distance_from_init, kb.kernel_distance_from_init, rtol=1e-10)
    reader.largest = 0  # the kernel holds its n examples (n² blocks dominate); the rest stream
    ba = barrier(model, init, final, mem, alphas=5, dtype="float64", batch_size=16)
    bb = barrier(model, init, final, stream, alphas=5, dtype="float64", batch_size=16)
    assert ba.to_dict() == bb.to_dict()
    sa = loss_surface(model, init, final, mem, steps=3, dtype="float64", batch_size=16)
    sb = loss_surface(model, init, final, stream, steps=3, dtype="float64", batch_size=16)
    assert sa.losses == sb.losses
    assert reader.largest <= 16


def test_training_streams(monkeypatch):
    from mli_theory.runs.train import train

    monkeypatch.setattr("mli_theory.inputs.examples.STREAM_BATCH", 16)  # the epoch losses' batches

    mem, stream, reader = _pair("ce", n=64)
    ra = train(_mlp(), mem.to("cpu", torch.float32), epochs=2, batch_size=16, seed=3)
    rb = train(_mlp(), stream.to("cpu", torch.float32), epochs=2, batch_size=16, seed=3)
    for k in ra.final:
        assert torch.equal(ra.final[k], rb.final[k]), k
    assert reader.largest <= 16


def test_batchnorm_recompute_certificate_on_streamed_inputs():
    mem, stream, _ = _pair("ce", n=80)
    model = _mlp(bn=True)
    init, final = _endpoints(model, 0.2)
    kw = dict(alphas=9, certify=True, dtype="float64", certify_budget=20, geometry=False)
    a = check(model, init, final, mem, **kw)  # one batch of all 80 examples
    b = check(model, init, final, stream, **kw)  # STREAM_BATCH ≥ 80: the same single batch
    assert a.losses == b.losses
    assert a.certificate.status == b.certificate.status
    assert not any("certification failed" in w for w in b.warnings)


def test_geometry_in_blocks_of_examples():
    from mli_theory.path import make_line
    from mli_theory.theory import evaluate_conditions
    from mli_theory.theory.conditions import GEOMETRY_COPIES, GeometryTooLarge

    mem, stream, reader = _pair("mse", n=90)
    model = _mlp()
    init, final = _endpoints(model)
    line = make_line(model, init, final, dtype=torch.float64)
    data = stream.to("cpu", torch.float64)
    whole = evaluate_conditions(line, data, alphas=11, batch_size=16, max_alphas=129, prove=False)
    budget = GEOMETRY_COPIES * 129 * 10 * 8 * 40  # 40 examples per block
    blocks = evaluate_conditions(line, data, alphas=11, batch_size=16, max_alphas=129, prove=False, memory_bytes=budget)
    assert whole.blocks == 1 and blocks.blocks == 3 and blocks.examples_per_block == 40
    assert blocks.gauss.stacked is None and blocks.conditions == () and whole.conditions
    assert blocks.gauss.converged and blocks.gauss.n_alphas <= whole.gauss.n_alphas  # the mean alone sets each block's grid
    # each example's own path: the per-example lengths agree within the quadrature tolerance
    assert torch.allclose(blocks.gauss.per_example, whole.gauss.per_example, rtol=1e-3)
    assert blocks.gauss_length == pytest.approx(whole.gauss_length, rel=1e-3)
    assert blocks.logit_linearity == pytest.approx(whole.logit_linearity, rel=1e-12)
    assert blocks.lprime1 == pytest.approx(whole.lprime1, rel=1e-12)
    assert reader.largest <= 40
    bn_model = _mlp(bn=True)
    i2, f2 = _endpoints(bn_model)
    bn_line = make_line(bn_model, i2, f2, dtype=torch.float64)
    with pytest.raises(GeometryTooLarge):
        evaluate_conditions(bn_line, data, alphas=11, batch_size=16, max_alphas=129, prove=False, memory_bytes=budget)


def test_check_reports_geometry_blocks(monkeypatch):
    monkeypatch.setattr("mli_theory.theory.conditions.GEOMETRY_MEMORY", 20 * 513 * 10 * 8 * 50.0)
    mem, stream, _ = _pair("ce", n=120)
    model = _mlp()
    init, final = _endpoints(model)
    r = check(model, init, final, stream, alphas=9, dtype="float64", batch_size=32)
    assert r.info["geometry_blocks"] == 3 and r.info["gauss_length_stacked"] is None
    assert r.gauss_length is not None and any("blocks of 50 examples" in w for w in r.warnings)


# --- through the command line ------------------------------------------------------------------


def _cli(args, capsys):
    import json

    from mli_theory.cli.main import main

    code = main(args)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in args else out), err


def test_cli_trains_and_checks_on_mnist_and_cifar_folders(tmp_path, capsys):
    from mli_theory.testing.datafiles import write_cifar10, write_mnist

    mnist = write_mnist(str(tmp_path / "mnist"), 40, gz=True)
    cifar = write_cifar10(str(tmp_path / "cifar-10-batches-py"), 30)
    run = str(tmp_path / "run")
    code, _, err = _cli(["train", "--arch", "mlp:784-16-10", "--data", f"mnist:{mnist}", "--loss", "ce",
                         "--epochs", "2", "--batch-size", "8", "--normalize", "0.1307,0.3081", "--out", run], capsys)
    assert code == 0, err
    code, out, err = _cli(["check", "--run", run, "--alphas", "5", "--json", "--quiet"], capsys)
    assert code == 0, err
    assert out["info"]["n_examples"] == 40 and len(out["losses"]) == 5
    assert any("read as vectors of 784" in w for w in out["warnings"])
    # the same check on the in-memory data set: the same curve
    d = load_data(f"mnist:{mnist}", "ce", normalize="0.1307,0.3081")
    np.savez(tmp_path / "m.npz", x=d.x[:].flatten(1).numpy(), y=d.y.numpy())
    code, ref, err = _cli(["check", "--run", run, "--data", str(tmp_path / "m.npz"), "--alphas", "5", "--json",
                           "--quiet", "--batch-size", "7"], capsys)
    assert code == 0, err
    assert np.allclose(ref["losses"], out["losses"], rtol=1e-6)
    code, _, err = _cli(["train", "--arch", "mli_theory.inputs.convnets:cifar_resnet", "--data", f"cifar10:{cifar}",
                         "--loss", "ce", "--epochs", "1", "--batch-size", "10", "--out", str(tmp_path / "r2")], capsys)
    assert code == 0, err
    code, out, err = _cli(["check", "--run", str(tmp_path / "r2"), "--alphas", "3", "--json", "--quiet",
                           "--no-geometry", "--batch-size", "8"], capsys)
    assert code == 0, err and out["info"]["batch_size"] == 8


@pytest.mark.parametrize("case", ["truncated", "count", "normalize", "labels"])
def test_cli_bad_data_is_one_line_and_exit_2(tmp_path, capsys, case):
    import os

    from mli_theory.testing.datafiles import write_mnist

    mnist = write_mnist(str(tmp_path / "mnist"), 12)
    arch = "mlp:784-8-10"
    extra: list[str] = []
    if case == "truncated":
        path = os.path.join(mnist, "train-images-idx3-ubyte")
        os.truncate(path, os.path.getsize(path) - 100)
    elif case == "count":
        from mli_theory.testing.datafiles import write_idx

        write_idx(os.path.join(mnist, "train-labels-idx1-ubyte"), np.zeros(11, dtype=np.uint8))
    elif case == "normalize":
        extra = ["--normalize", "0.1,0.2,0.3,0.4"]  # two channels for 1-channel images
    else:
        arch = "mlp:784-8-5"  # labels 0..9 for 5 outputs
    torch.manual_seed(0)
    from mli_theory.inputs import build_model, save_state_dict

    m = build_model(arch)
    save_state_dict(m.state_dict(), str(tmp_path / "a.pt"))
    code, out, err = _cli(["check", "--arch", arch, "--init", str(tmp_path / "a.pt"), "--final", str(tmp_path / "a.pt"),
                           "--data", f"mnist:{mnist}", "--loss", "ce", "--json", "--quiet", *extra], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (code, err)
    assert {"truncated": "truncated", "count": "12 images but", "normalize": "channels",
            "labels": "out of range"}[case] in err


def test_exact_method_is_not_tried_beyond_its_size(monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module("mli_theory.certify.certificate"), "exact_fits", lambda x: False)
    base = load_data("sklearn:diabetes", "mse")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 1))
    init, final = _endpoints(model, 1.0)
    r = check(model, init, final, base, alphas=7, certify=True, dtype="float64", geometry=False)
    assert r.certificate.method != "exact_polynomial"
    assert any("exact method was not tried" in w for w in r.warnings)
