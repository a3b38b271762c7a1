"""The standard on-disk data formats and user data factories (``mli_theory.inputs.formats``).

Every format is written here in miniature and checked against the same examples saved as ``.npz``:
the data sets must be equal, the inputs streamed from disk, and loss curves computed batch by batch
from the stream must agree with the in-memory ones. Damaged files must fail with one-line errors.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import struct
import sys

import numpy as np
import pytest
import torch
from torch import nn

from mli_theory.errors import InputError
from mli_theory.inputs.data import load_data
from mli_theory.inputs.examples import Examples, iter_batches
from mli_theory.inputs.formats import Opened, SafeUnpickler, open_source
from mli_theory.path import loss_curve, make_line

ALPHAS = [0.0, 0.3, 0.75, 1.0]
IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


# ------------------------------------------------------------------------------------------------
# writers of tiny data sets
# ------------------------------------------------------------------------------------------------

def idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, IDX_CODES[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, data: bytes, gz: bool = False) -> None:
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def mnist_dir(root, n=7, gz=False, dotted=False, sub="mnist", labels_n=None):
    d = root / sub
    d.mkdir()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=labels_n or n).astype(np.uint8)
    labels[0] = 9
    sep = "." if dotted else "-"
    write(d / f"train-images{sep}idx3-ubyte", idx_bytes(images), gz)
    write(d / f"train-labels{sep}idx1-ubyte", idx_bytes(labels), gz)
    return d, images[:, None], labels.astype(np.int64)


def cifar_dir(root, hundred=False, protocol=2, rows=(2, 3, 1, 2, 2)):
    d = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    d.mkdir()
    rng = np.random.default_rng(2)
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    xs, ys = [], []
    for name, m in zip(names, rows if not hundred else (sum(rows),)):
        data = rng.integers(0, 256, size=(m, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 100 if hundred else 10, size=m)]
        batch = {b"data": data, b"batch_label": b"training batch", b"filenames": [b"a.png"] * m}
        batch[b"fine_labels" if hundred else b"labels"] = labels
        if hundred:
            batch[b"coarse_labels"] = [v // 5 for v in labels]
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        xs.append(data)
        ys += labels
    return d, np.concatenate(xs).reshape(-1, 3, 32, 32), np.asarray(ys, dtype=np.int64)


def image_dir(root, mode, counts=(3, 2), size=(6, 5)):
    from PIL import Image

    d = root / f"img_{mode}"
    rng = np.random.default_rng(3)
    xs, ys = [], []
    for label, (cls, m) in enumerate(zip(("cat", "dog"), counts)):
        (d / cls).mkdir(parents=True)
        for j in range(m):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
            ext = ".PNG" if j == 1 else ".png"
            Image.fromarray(arr, mode).save(d / cls / f"im{j}{ext}")
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(label)
        (d / cls / "notes.txt").write_text("not an image")
    return d, np.stack(xs), np.asarray(ys, dtype=np.int64)


def npy_dir(root, y, x=None, name="npy"):
    d = root / name
    d.mkdir()
    if x is None:
        x = np.random.default_rng(4).normal(size=(len(y), 2, 3))
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    return d, x


def npz(root, x, y, name="ref.npz"):
    """``x`` and ``y`` saved as ``.npz``; ``y`` is a pair (for mse, for ce) where the two differ."""
    path = root / name
    if isinstance(y, tuple):
        np.savez(path, x=x, y=y[0])
        np.savez(root / ("ce_" + name), x=x, y=y[1])
    else:
        np.savez(path, x=x, y=y)
    return str(path)


def labels_for(y):
    """Class labels as the ``.npz`` reference holds them: one-hot for mse, integers for ce."""
    y = np.asarray(y, dtype=np.int64)
    onehot = np.zeros((len(y), int(y.max()) + 1))
    onehot[np.arange(len(y)), y] = 1.0
    return onehot, y


FACTORY = '''
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

rng = np.random.default_rng(5)
X = rng.normal(size=(11, 2, 3))
Y = rng.integers(0, 4, size=11)
Y[0] = 3
T = rng.normal(size=(11, 2))


class Pairs(Dataset):
    def __init__(self, targets="labels"):
        self.targets = targets

    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        if self.targets == "labels":
            return torch.from_numpy(X[i]), int(Y[i]) if i % 2 else torch.tensor(Y[i])
        return torch.from_numpy(X[i]), torch.from_numpy(T[i])


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(len(X)):
            yield torch.from_numpy(X[i]), int(Y[i])


class Noisy(Pairs):
    def __getitem__(self, i):
        return torch.randn(2, 3), int(Y[i])


class Bad(Pairs):
    def __getitem__(self, i):
        x = X[i].copy()
        if i == 7:
            x[0, 0] = np.nan
        return torch.from_numpy(x), int(Y[i])


def dataset():
    return Pairs()


def regression():
    return Pairs("floats")


def loader():
    return DataLoader(Pairs(), batch_size=4, shuffle=True)


def stream_loader():
    return DataLoader(Stream(), batch_size=3)


def batches():
    for i in range(0, len(X), 4):
        yield torch.from_numpy(X[i:i + 4]), torch.from_numpy(Y[i:i + 4])


def pairs_list():
    return [(X[i:i + 5], Y[i:i + 5]) for i in range(0, len(X), 5)]


def arrays():
    print("chatter from the factory")
    return torch.from_numpy(X), Y


def noisy():
    return Noisy()


def with_nan():
    return Bad()


def boom():
    raise TypeError("no data here")


def number():
    return 3


def dropping_loader():
    return DataLoader(Pairs(), batch_size=4, drop_last=True)


def subset_loader():
    return DataLoader(Pairs(), batch_size=2, sampler=[1, 3, 5])


def mixed_shapes():
    return [(X[:3], Y[:3]), (X[3:5, :1], Y[3:5])]


not_callable = 5
'''


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """A user module ``userdata_fmt`` importable from ``tmp_path``; yields the module."""
    (tmp_path / "userdata_fmt.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("userdata_fmt", None)
    import userdata_fmt

    yield userdata_fmt
    sys.modules.pop("userdata_fmt", None)


# ------------------------------------------------------------------------------------------------
# comparison against .npz
# ------------------------------------------------------------------------------------------------

def curves(a, b, loss):
    """Loss curves of a tiny float64 model on ``a`` (batches of 3) and ``b`` (all at once)."""
    d = int(np.prod(b.x.shape[1:]))
    k = int(b.y.shape[1]) if loss == "mse" else int(b.y.max()) + 1
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k)).double()
    init = {key: v.clone() for key, v in model.state_dict().items()}
    final = {key: v + 0.5 * torch.randn_like(v) for key, v in init.items()}
    line = make_line(model, init, final, dtype=torch.float64)
    ca = loss_curve(line, a.to("cpu", torch.float64), ALPHAS, batch_size=3)
    cb = loss_curve(line, b.to("cpu", torch.float64), ALPHAS)
    return np.asarray(ca.losses), np.asarray(cb.losses)


def reference(ref, loss):
    """The reference data set for ``loss`` (the ce twin of a one-hot reference, where written)."""
    twin = os.path.join(os.path.dirname(ref), "ce_" + os.path.basename(ref))
    return load_data(twin if loss == "ce" and os.path.exists(twin) else ref, loss)


def check_same(src, ref, loss, streamed=True):
    a, b = load_data(src, loss), reference(ref, loss)
    assert isinstance(a.x, Examples) == streamed, type(a.x)
    assert tuple(a.x.shape) == tuple(b.x.shape)
    assert torch.equal(a.x[:], b.x)
    assert a.y.dtype == b.y.dtype and torch.equal(a.y, b.y)
    la, lb = curves(a, b, loss)
    assert np.all(np.isfinite(la))
    np.testing.assert_allclose(la, lb, rtol=0, atol=1e-12)
    return a


def check_indexing(x: Examples, ref: torch.Tensor):
    n = len(x)
    assert len(ref) == n and x.dim() == ref.dim()
    assert torch.equal(x[1:4], ref[1:4])
    assert torch.equal(x[::2], ref[::2])
    assert torch.equal(x[n - 1 : 0 : -2], ref.flip(0)[0 : n - 1 : 2])  # torch has no negative steps
    idx = torch.tensor([n - 1, 0, 2, 2, n - 1, 1])
    assert torch.equal(x[idx], ref[idx])
    assert torch.equal(x[-1], ref[-1])
    assert torch.equal(torch.cat(list(iter_batches(x, 3))), ref)


# ------------------------------------------------------------------------------------------------
# each format equals its .npz
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("gz,dotted,prefix", [(False, False, "mnist"), (True, False, "mnist"),
                                              (True, True, "fashion-mnist"), (False, True, "fashion-mnist")])
def test_idx_equals_npz(tmp_path, loss, gz, dotted, prefix):
    d, raw, labels = mnist_dir(tmp_path, gz=gz, dotted=dotted)
    ref = npz(tmp_path, raw.astype(np.float64) / 255, labels_for(labels))
    a = check_same(f"{prefix}:{d}", ref, loss)
    assert tuple(a.x.shape) == (7, 1, 28, 28)
    check_indexing(a.x.to(dtype=torch.float64), reference(ref, loss).x)


def test_idx_in_raw_subfolder_and_other_dtypes(tmp_path):
    """torchvision's ``raw/`` layout; IDX element types other than bytes are used unscaled."""
    d = tmp_path / "MNIST" / "raw"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for dtype in (np.int16, np.float32, np.float64, np.int8, np.int32):
        images = (rng.normal(size=(4, 5, 3)) * 50).astype(dtype)
        write(d / "train-images-idx3-ubyte", idx_bytes(images))
        write(d / "train-labels-idx1-ubyte", idx_bytes(np.array([0, 1, 1, 0], dtype=np.uint8)))
        opened = open_source(f"mnist:{tmp_path / 'MNIST'}")
        assert isinstance(opened, Opened) and opened.task == "classification"
        assert opened.x.scale is None
        assert torch.equal(opened.x[:], torch.from_numpy(images.astype(np.float64)[:, None]))


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("hundred,protocol", [(False, 2), (False, 4), (True, 2), (True, 5)])
def test_cifar_equals_npz(tmp_path, loss, hundred, protocol):
    d, raw, labels = cifar_dir(tmp_path, hundred=hundred, protocol=protocol)
    ref = npz(tmp_path, raw.astype(np.float64) / 255, labels_for(labels))
    # the batches folder itself, or its parent
    folder = d if protocol == 2 else tmp_path
    a = check_same(f"cifar{100 if hundred else 10}:{folder}", ref, loss)
    assert tuple(a.x.shape) == (10, 3, 32, 32)
    check_indexing(a.x, reference(ref, loss).x)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_image_folder_equals_npz(tmp_path, loss, mode):
    d, raw, labels = image_dir(tmp_path, mode)
    ref = npz(tmp_path, raw.astype(np.float64) / 255, labels_for(labels))
    a = check_same(f"images:{d}", ref, loss)
    assert tuple(a.x.shape) == (5, 1 if mode == "L" else 3, 5, 6)
    check_indexing(a.x, reference(ref, loss).x)


def test_image_folder_converts_to_the_first_images_mode(tmp_path):
    from PIL import Image

    d = tmp_path / "mixed"
    for cls in ("a", "b"):
        (d / cls).mkdir(parents=True)
    grey = np.arange(20, dtype=np.uint8).reshape(4, 5)
    Image.fromarray(grey, "L").save(d / "a" / "0.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB").save(d / "b" / "0.bmp")
    x = load_data(f"images:{d}", "ce").x
    assert tuple(x.shape) == (2, 1, 4, 5)
    assert torch.equal(x[0], x[1])
    # 16-bit greyscale keeps its depth
    d16 = tmp_path / "deep" / "c"
    d16.mkdir(parents=True)
    deep = (np.arange(20, dtype=np.uint16) * 3000).reshape(4, 5)
    Image.fromarray(deep).save(d16 / "0.png")
    x16 = load_data(f"images:{tmp_path / 'deep'}", "ce").x
    assert torch.equal(x16[0], torch.from_numpy(deep.astype(np.float64)[None] / 65535))


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_npy_pair_equals_npz(tmp_path, loss):
    y = np.array([0, 2, 1, 1, 2, 0, 2])
    d, x = npy_dir(tmp_path, y)
    a = check_same(f"npy:{d}", npz(tmp_path, x, y), loss)  # the same arrays: y as an .npz gives it
    assert a.x.scale is None
    check_indexing(a.x, torch.from_numpy(x))


def test_npy_regression_targets_and_integer_inputs(tmp_path):
    t = np.random.default_rng(0).normal(size=(6, 2))
    x = np.arange(36, dtype=np.int32).reshape(6, 6)
    d, _ = npy_dir(tmp_path, t, x=x)
    check_same(f"npy:{d}", npz(tmp_path, x, t), "mse")
    assert open_source(f"npy:{d}").task == "arrays"
    with pytest.raises(InputError, match="labels"):
        load_data(f"npy:{d}", "ce")


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("fn", ["dataset", "loader"])
def test_map_style_factories_stream(tmp_path, factory, loss, fn):
    ref = npz(tmp_path, factory.X, labels_for(factory.Y))
    a = check_same(f"userdata_fmt:{fn}", ref, loss)
    assert a.x.scale is None
    check_indexing(a.x, torch.from_numpy(factory.X))


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("fn", ["batches", "stream_loader", "pairs_list", "arrays"])
def test_iterable_and_array_factories_are_read_into_memory(tmp_path, factory, loss, fn, capsys):
    # (x, y) arrays are read as an .npz is (y as given); batches of a loader carry class labels
    ref = npz(tmp_path, factory.X, factory.Y if fn == "arrays" else labels_for(factory.Y))
    a = check_same(f"userdata_fmt:{fn}", ref, loss, streamed=False)
    if fn == "arrays":  # y of shape (n,) under MSE: read as (n, 1), and said so
        assert a.notes == () if loss == "ce" else len(a.notes) == 1 and "read as (11, 1)" in a.notes[0]
        captured = capsys.readouterr()
        assert "chatter" not in captured.out and "chatter" in captured.err
    else:
        assert len(a.notes) == 1 and "read into memory" in a.notes[0] and "map-style" in a.notes[0]


def test_loader_variants(factory):
    """drop_last does not drop examples from the mean; a sampler choosing a subset is respected."""
    whole = load_data("userdata_fmt:dropping_loader", "ce")
    assert isinstance(whole.x, Examples) and len(whole.x) == 11
    assert any("drop_last" in note for note in whole.notes)
    part = load_data("userdata_fmt:subset_loader", "ce")
    assert not isinstance(part.x, Examples)
    assert torch.equal(part.x, torch.from_numpy(factory.X[[1, 3, 5]]))
    assert torch.equal(part.y, torch.from_numpy(factory.Y[[1, 3, 5]]))


def test_temporary_files_go_with_the_reader(tmp_path):
    import gc

    d, _, _ = mnist_dir(tmp_path, gz=True)
    c, _, _ = cifar_dir(tmp_path)
    for src in (f"mnist:{d}", f"cifar10:{c}"):
        data = load_data(src, "ce")
        path = data.x.reader.path
        assert os.path.isfile(path) and not path.startswith(str(tmp_path))
        del data
        gc.collect()
        assert not os.path.exists(path)


def test_npy_inputs_are_memory_mapped_and_plain_idx_read_in_place(tmp_path):
    d, _ = npy_dir(tmp_path, np.arange(5))
    assert isinstance(load_data(f"npy:{d}", "ce").x.reader.array, np.memmap)
    m, _, _ = mnist_dir(tmp_path)
    reader = load_data(f"mnist:{m}", "ce").x.reader
    assert reader.path == str(m / "train-images-idx3-ubyte") and reader.offset == 16


def test_float_targets_from_a_dataset_are_a_regression(tmp_path, factory):
    check_same("userdata_fmt:regression", npz(tmp_path, factory.X, factory.T), "mse")
    assert open_source("userdata_fmt:regression").task == "regression"


def test_normalization_applies_to_streamed_images(tmp_path):
    d, raw, labels = cifar_dir(tmp_path)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ref = (raw.astype(np.float64) / 255 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    spec = ",".join(str(v) for v in mean + std)
    a = load_data(f"cifar10:{d}", "ce", normalize=spec)
    assert isinstance(a.x, Examples)
    np.testing.assert_allclose(a.x[:].numpy(), ref, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# bad data: one-line InputErrors
# ------------------------------------------------------------------------------------------------

def fails(source, needle, loss="ce"):
    with pytest.raises(InputError) as info:
        load_data(source, loss)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert needle.lower() in msg.lower(), msg
    return msg


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx(tmp_path, gz):
    d, _, _ = mnist_dir(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    data = idx_bytes(np.zeros((7, 28, 28), dtype=np.uint8))[:-100]
    os.remove(d / name)
    write(d / "train-images-idx3-ubyte", data, gz)
    msg = fails(f"mnist:{d}", "truncated")
    assert name in msg


def test_truncated_labels_and_header(tmp_path):
    d, _, _ = mnist_dir(tmp_path)
    write(d / "train-labels-idx1-ubyte", idx_bytes(np.zeros(7, dtype=np.uint8))[:-2])
    fails(f"mnist:{d}", "truncated")
    write(d / "train-labels-idx1-ubyte", bytes([0, 0, 8, 1, 0]))
    fails(f"mnist:{d}", "header")


def test_idx_count_mismatch(tmp_path):
    d, _, _ = mnist_dir(tmp_path, labels_n=6)
    msg = fails(f"mnist:{d}", "7 images")
    assert "6 labels" in msg


def test_idx_wrong_magic_and_bad_gzip(tmp_path):
    d, _, _ = mnist_dir(tmp_path)
    write(d / "train-images-idx3-ubyte", b"\x89PNG\r\n\x1a\n" + bytes(100))
    fails(f"mnist:{d}", "not an IDX file")
    e, _, _ = mnist_dir(tmp_path, sub="gz", gz=True)
    (e / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data at all")
    fails(f"mnist:{e}", "gzip")
    (e / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((7, 28, 28), np.uint8)))[:-30])
    fails(f"mnist:{e}", "gzip")


def test_missing_files_and_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    msg = fails(f"mnist:{tmp_path / 'empty'}", "train-images-idx3-ubyte")
    assert "train-images.idx3-ubyte.gz" in msg
    fails(f"fashion-mnist:{tmp_path / 'nowhere'}", "no such folder")
    fails(f"cifar10:{tmp_path / 'empty'}", "data_batch_1")
    fails(f"cifar100:{tmp_path / 'empty'}", "train")
    fails(f"npy:{tmp_path / 'empty'}", "x.npy and y.npy")
    fails(f"images:{tmp_path / 'empty'}", "no class sub-folders")
    fails("mnist:", "needs a folder")
    fails(str(tmp_path / "absent.npy"), "data file not found")
    fails(str(tmp_path / "empty"), "is a folder")
    fails("ftp:/some/where", "unknown data source")


def test_cifar_missing_batch(tmp_path):
    d, _, _ = cifar_dir(tmp_path)
    os.remove(d / "data_batch_3")
    fails(f"cifar10:{d}", "data_batch_3")


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_pickle_with_code_is_refused_and_not_run(tmp_path, capfd, protocol):
    d, _, _ = cifar_dir(tmp_path)
    marker = tmp_path / "marker"
    with open(d / "data_batch_2", "wb") as f:
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": Evil(marker)}
        pickle.dump(batch, f, protocol=protocol)
    msg = fails(f"cifar10:{d}", "execute code")
    assert "system" in msg and "data_batch_2" in msg
    assert not marker.exists()
    out = capfd.readouterr()
    assert "pwned" not in out.out + out.err


def test_safe_unpickler_refuses_codec_tricks():
    payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x04\x00\x00\x00zlib\x86R."
    with pytest.raises(pickle.UnpicklingError):
        SafeUnpickler(io.BytesIO(payload)).load()
    ok = pickle.dumps(np.arange(5, dtype=np.uint8), protocol=2)
    assert np.array_equal(SafeUnpickler(io.BytesIO(ok), encoding="bytes").load(), np.arange(5))


def test_cifar_bad_shapes_and_counts(tmp_path):
    d, _, _ = cifar_dir(tmp_path)
    with open(d / "data_batch_4", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    fails(f"cifar10:{d}", "3072")
    with open(d / "data_batch_4", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1, 1]}, f, protocol=2)
    fails(f"cifar10:{d}", "2 images but 3 labels")
    with open(d / "data_batch_4", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, f, protocol=2)
    fails(f"cifar10:{d}", "missing key 'labels'")
    (d / "data_batch_4").write_bytes(b"\x80\x02}q\x00(")
    fails(f"cifar10:{d}", "not a readable CIFAR batch")


def test_image_folder_errors(tmp_path):
    d, _, _ = image_dir(tmp_path, "L")
    (d / "zebra").mkdir()
    fails(f"images:{d}", "no image files")
    (d / "zebra" / "broken.png").write_bytes(b"not a png")
    data = load_data(f"images:{d}", "ce")  # only the first image is decoded at open
    with pytest.raises(InputError) as info:
        data.x[len(data.x) - 1]
    msg = str(info.value)
    assert "\n" not in msg and "broken.png" in msg and "cannot read image" in msg
    from PIL import Image

    os.remove(d / "zebra" / "broken.png")
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(d / "zebra" / "wide.png")
    data = load_data(f"images:{d}", "ce")  # sizes are checked when an image is read
    assert torch.equal(data.x[:2], data.x[:2])
    with pytest.raises(InputError) as info:
        data.x[:]
    msg = str(info.value)
    assert "\n" not in msg and "wide.png" in msg and "7×5" in msg and "6×5" in msg
    (d / "cat" / "im0.png").write_bytes(b"not a png either")  # the first image is read at open
    fails(f"images:{d}", "im0.png")


def test_npy_errors(tmp_path):
    d, _ = npy_dir(tmp_path, np.arange(7))
    np.save(d / "y.npy", np.arange(6))
    fails(f"npy:{d}", "y.npy has shape (6,)")
    np.save(d / "y.npy", np.array([{"a": 1}] * 7, dtype=object), allow_pickle=True)
    fails(f"npy:{d}", "pickled object array")
    np.save(d / "y.npy", np.arange(7))
    np.save(d / "x.npy", np.array([[None, 1]] * 7, dtype=object), allow_pickle=True)
    fails(f"npy:{d}", "pickled object array")
    os.remove(d / "y.npy")
    fails(f"npy:{d}", "missing y.npy")


def test_non_finite_values_are_found_while_streaming(tmp_path):
    x = np.random.default_rng(0).normal(size=(9, 4))
    x[5, 2] = np.inf
    d, _ = npy_dir(tmp_path, np.arange(9) % 2, x=x)
    data = load_data(f"npy:{d}", "ce")  # nothing read yet
    assert torch.equal(data.x[:5], torch.from_numpy(x[:5]))
    with pytest.raises(InputError, match="example 5 has non-finite values"):
        data.x[3:7]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2)).double()
    line = make_line(model, model.state_dict(), model.state_dict(), dtype=torch.float64)
    with pytest.raises(InputError, match="example 5"):
        loss_curve(line, data.to("cpu", torch.float64), [0.0, 1.0], batch_size=3)


def test_factory_errors(factory, tmp_path):
    fails("userdata_fmt:boom", "factory 'userdata_fmt:boom' raised TypeError: no data here")
    msg = fails("userdata_fmt:number", "returned int")
    assert "expected a Dataset, DataLoader, iterable of (x, y) batches or (x, y)" in msg
    fails("userdata_fmt:noisy", "not deterministic")
    fails("userdata_fmt:not_callable", "not callable")
    fails("userdata_fmt:absent", "has no attribute")
    fails("userdata_fmt:mixed_shapes", "different shapes")
    fails("no_such_module_xyz:make", "cannot import data factory module 'no_such_module_xyz'")
    data = load_data("userdata_fmt:with_nan", "ce")
    assert isinstance(data.x, Examples)
    with pytest.raises(InputError, match="example 7 has non-finite"):
        data.x[:]


def test_cli_reports_a_truncated_mnist_file_in_one_line(tmp_path):
    from mli_theory.cli.main import main

    d, _, _ = mnist_dir(tmp_path)
    write(d / "train-images-idx3-ubyte", idx_bytes(np.zeros((7, 28, 28), np.uint8))[:-5])
    model = nn.Sequential(nn.Linear(784, 10))
    torch.save(model.state_dict(), tmp_path / "a.pt")
    torch.save(model.state_dict(), tmp_path / "b.pt")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check", "--arch", "linear:784-10", "--init", str(tmp_path / "a.pt"),
                     "--final", str(tmp_path / "b.pt"), "--data", f"mnist:{d}", "--loss", "ce"])
    assert code == 2, err.getvalue()
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "truncated" in lines[0] and "train-images-idx3-ubyte" in lines[0], lines
    assert out.getvalue() == ""
