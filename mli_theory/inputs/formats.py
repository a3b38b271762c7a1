"""Standard on-disk data formats and users' own ``torch.utils.data`` data sets.

:func:`open_source` turns a data source string into inputs, targets and a task, reading the inputs
batch by batch whenever the format allows it (see :mod:`mli_theory.inputs.examples`):

``mnist:DIR``, ``fashion-mnist:DIR`` (also ``fashion_mnist:``, ``kmnist:``)
    The IDX files of the MNIST family, as described on Yann LeCun's MNIST page: a 4-byte magic
    number (two zero bytes, a byte naming the element type, a byte giving the number of
    dimensions), one big-endian 32-bit size per dimension, then the elements in C order, also
    big-endian. Type bytes: 0x08 unsigned byte, 0x09 signed byte, 0x0B 16-bit, 0x0C 32-bit
    integer, 0x0D 32-bit float, 0x0E 64-bit float. ``DIR`` (or ``DIR/raw``, torchvision's layout)
    holds ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``, each optionally gzipped
    (``.gz``), the mirrors' spelling with a dot (``train-images.idx3-ubyte``) accepted too. Pixels
    are read in place from the file (a gzipped file is first decompressed, in bounded memory, into
    a temporary file that lives as long as the reader), as ``(1, H, W)`` examples scaled by 1/255.

``cifar10:DIR``, ``cifar100:DIR`` (also ``cifar-10:``, ``cifar-100:``)
    The "python version" of Alex Krizhevsky's CIFAR data sets: pickled dicts, ``data_batch_1`` to
    ``data_batch_5`` for CIFAR-10 (labels under ``labels``) and ``train`` for CIFAR-100 (labels
    under ``fine_labels``). Each ``data`` is a ``uint8`` array of 3072-byte rows: the 1024 red,
    then 1024 green, then 1024 blue values of a 32×32 image, row by row, which is exactly a
    ``(3, 32, 32)`` array in C order. ``DIR`` is the batches folder or its parent. The pickles are
    read by an unpickler that only reconstructs numpy arrays and refuses everything else, so a
    batch file can never execute code; batches are decoded one at a time into a temporary record
    file the examples are then read from.

``images:DIR``
    One sub-folder of ``DIR`` per class (classes in sorted order, labels 0, 1, ...), image files
    (``.png .jpg .jpeg .bmp .gif .webp .tif .tiff``) in sorted order within each. Images are decoded
    with Pillow only when a batch asks for them: greyscale (1 channel) when the first image is
    greyscale, RGB otherwise; every image must have the first image's size. 8-bit pixels are
    scaled by 1/255 (16-bit greyscale by 1/65535).

``npy:DIR``
    ``DIR/x.npy`` (memory-mapped, values used as stored) and ``DIR/y.npy`` (integer labels of
    shape ``(n,)`` for classification; anything else is a regression target). Pickled object
    arrays are refused.

``package.module:factory``
    An importable callable, called without arguments, that returns a map-style
    ``torch.utils.data.Dataset`` of ``(x, y)`` pairs (streamed: examples are fetched by index when
    a batch needs them), a ``DataLoader`` (its map-style data set is used), an iterable of
    ``(x, y)`` batches (read once, into memory), or a pair ``(x, y)`` of arrays or tensors.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import os
import pickle
import shutil
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

from ..errors import InputError
from .arch import call_factory
from .examples import ArrayReader, Examples, RecordFile

__all__ = ["Opened", "open_source", "SOURCE_FORMS", "IMAGE_EXTENSIONS", "SafeUnpickler"]

#: The accepted forms of a data source, for messages and help texts.
SOURCE_FORMS = ("FILE.npz, sklearn:NAME, synthetic:teacher, mnist:DIR, fashion-mnist:DIR, cifar10:DIR, "
                "cifar100:DIR, images:DIR, npy:DIR or package.module:factory")

#: File name extensions read by ``images:DIR`` (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_CHUNK = 1 << 20  # bytes per step when decompressing


@dataclass(frozen=True)
class Opened:
    """A data source, opened.

    Attributes:
        x: the inputs: :class:`Examples` read on demand, or an array/tensor held in memory.
        y: the targets, in memory: ``(n,)`` integer labels for classification, floats otherwise.
        task: ``"classification"`` (class labels: one-hot targets under MSE), ``"regression"`` or
            ``"arrays"`` (plain ``(x, y)`` arrays: read as an ``.npz`` is, y as given).
        notes: messages for the user (e.g. that an iterable was read into memory).
        batch_size: the batch size of a DataLoader source (a forward that mixes the examples of a
            batch computes otherwise in other batches), else None.
    """

    x: Any
    y: np.ndarray
    task: str
    notes: tuple[str, ...] = ()
    batch_size: int | None = None  # a DataLoader's own batch size (examples per forward pass), else None


def open_source(source: str, model: torch.nn.Module | None = None) -> Opened:
    """Open a data source given by a prefix (see the module docstring for the formats).

    ``model``: the model the data will be fed to; a factory whose arrays share memory with one of
    its parameters or buffers is refused (a caller's ``load_state_dict`` would move the data along
    the path, where the check reads a copy made once).

    Raises:
        InputError: a missing, truncated or malformed file, a pickle that asks for code, a factory
            that cannot be imported, raises or returns something unusable (one line each).
    """
    head, sep, rest = source.partition(":")
    kind = head.strip().lower()
    if sep and kind in _FOLDER_FORMATS:
        folder = _folder(source, rest)
        return _FOLDER_FORMATS[kind](source, folder)
    if sep and rest and _is_dotted(head) and _is_dotted(rest):
        return _open_factory(source, model)
    if os.path.isdir(source):
        raise InputError(f"{source} is a folder: name its format, e.g. images:{source}, npy:{source}, "
                         f"mnist:{source} or cifar10:{source}")
    if sep and len(head) > 1 and head.replace("-", "").replace("_", "").isalnum():
        raise InputError(f"unknown data source {source!r} (expected {SOURCE_FORMS})")
    raise InputError(f"data file not found: {source}")


def _is_dotted(name: str) -> bool:
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def _folder(source: str, rest: str) -> str:
    if not rest.strip():
        head = source.partition(":")[0]
        raise InputError(f"{head}: needs a folder after the colon, e.g. {head}:./data")
    folder = os.path.expanduser(rest)
    if not os.path.isdir(folder):
        what = "not a folder" if os.path.exists(folder) else "no such folder"
        raise InputError(f"{source}: {what}: {folder}")
    return folder


# --------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST, KMNIST)
# --------------------------------------------------------------------------------------------------

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_candidates(folder: str, stem: str, kind: str) -> list[str]:
    """Spellings of one IDX file (``stem="train-images"``, ``kind="idx3"``): ``train-images-idx3-ubyte``
    and ``train-images.idx3-ubyte``, each plain or ``.gz``, in ``folder`` and ``folder/raw``."""
    names = [f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte"]
    names = [n + gz for n in names for gz in ("", ".gz")]
    return [os.path.join(d, n) for d in (folder, os.path.join(folder, "raw")) for n in names]


def _find_idx(source: str, folder: str, stem: str, kind: str) -> str:
    candidates = _idx_candidates(folder, stem, kind)
    for path in candidates:
        if os.path.isfile(path):
            return path
    names = ", ".join(dict.fromkeys(os.path.basename(p) for p in candidates))
    raise InputError(f"{source}: missing {stem}-{kind}-ubyte in {folder} (looked for {names}, also under raw/)")


def _read_exact(f: Any, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = f.read(size - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _idx_header(f: Any, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse an IDX header from a binary stream: (big-endian element dtype, dims, header bytes)."""
    magic = _read_exact(f, 4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES or magic[3] == 0:
        shown = magic.hex(" ") if magic else "an empty file"
        raise InputError(f"{name}: not an IDX file (magic bytes {shown}; expected 00 00, a type byte "
                         "08/09/0b/0c/0d/0e and the number of dimensions)")
    ndim = magic[3]
    raw = _read_exact(f, 4 * ndim)
    if len(raw) < 4 * ndim:
        raise InputError(f"{name}: truncated: the IDX header announces {ndim} dimensions but the file ends inside it")
    dims = struct.unpack(f">{ndim}i", raw)
    if any(d < 0 for d in dims):
        raise InputError(f"{name}: IDX header has a negative size {dims}")
    return np.dtype(_IDX_TYPES[magic[2]]), tuple(int(d) for d in dims), 4 + 4 * ndim


def _gunzip_to_temp(path: str) -> Any:
    """Decompress ``path`` into a temporary file (deleted when the returned object is collected)."""
    tmp = tempfile.NamedTemporaryFile(prefix="mli-idx-", suffix=".raw")
    try:
        with gzip.open(path, "rb") as src:
            shutil.copyfileobj(src, tmp, _CHUNK)
        tmp.flush()
    except (OSError, EOFError, zlib.error) as exc:
        tmp.close()
        raise InputError(f"{path}: not a valid gzip file ({type(exc).__name__}: {_first_line(exc)})") from None
    except BaseException:
        tmp.close()
        raise
    return tmp


def _open_idx(path: str) -> tuple[str, Any]:
    """(path to read in place, object to keep alive): the file itself, or its decompressed copy."""
    if path.endswith(".gz"):
        tmp = _gunzip_to_temp(path)
        return tmp.name, tmp
    return path, None


def _idx_images(path: str) -> Examples:
    local, keep = _open_idx(path)
    try:
        with open(local, "rb") as f:
            dtype, dims, offset = _idx_header(f, path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({_first_line(exc)})") from None
    if len(dims) == 3:
        shape: tuple[int, ...] = (1, dims[1], dims[2])  # (n, H, W) -> (n, 1, H, W)
    elif len(dims) >= 2:
        shape = dims[1:]
    else:
        raise InputError(f"{path}: an images file needs 3 dimensions (n, H, W), the IDX header gives {dims}")
    reader = RecordFile(local, offset, dims[0], shape, dtype, name=path, keep=keep)
    return Examples(reader, scale=255.0 if dtype == np.dtype(">u1") else None)


def _idx_labels(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            dtype, dims, _ = _idx_header(f, path)
            if len(dims) != 1:
                raise InputError(f"{path}: a labels file needs 1 dimension (n,), the IDX header gives {dims}")
            if dtype.kind not in "iu":
                raise InputError(f"{path}: labels must be integers, the IDX header says {dtype.name}")
            want = dims[0] * dtype.itemsize
            payload = _read_exact(f, want)
    except InputError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        what = "not a valid gzip file" if path.endswith(".gz") else "cannot read"
        raise InputError(f"{path}: {what} ({type(exc).__name__}: {_first_line(exc)})") from None
    if len(payload) < want:
        raise InputError(f"{path}: truncated: the header announces {dims[0]} labels ({want} bytes), "
                         f"the file holds {len(payload)}")
    return np.frombuffer(payload, dtype=dtype).astype(np.int64)


def _open_idx_pair(source: str, folder: str) -> Opened:
    images_path = _find_idx(source, folder, "train-images", "idx3")
    labels_path = _find_idx(source, folder, "train-labels", "idx1")
    labels = _idx_labels(labels_path)
    x = _idx_images(images_path)
    if len(x) != labels.shape[0]:
        raise InputError(f"{source}: {images_path} has {len(x)} images but {labels_path} has {labels.shape[0]} labels")
    return Opened(x, labels, "classification")


# --------------------------------------------------------------------------------------------------
# CIFAR (python version)
# --------------------------------------------------------------------------------------------------

class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global that the data format never needs."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles bytes under protocol 2 as _codecs.encode(text, "latin1"): allow exactly that.
    if encoding.replace("_", "-").lower() not in ("latin1", "latin-1", "iso-8859-1") or not isinstance(obj, str):
        raise ForbiddenGlobal("_codecs", f"encode(..., {encoding!r})")
    return codecs.encode(obj, "latin1", errors)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's _reconstruct, wherever it lives
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("_codecs", "encode"): _latin1_encode,
    }
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy's _frombuffer (pickle protocol 5)
    if getattr(frombuffer, "__name__", "") == "_frombuffer":
        allowed[("numpy.core.numeric", "_frombuffer")] = frombuffer
        allowed[("numpy._core.numeric", "_frombuffer")] = frombuffer
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain containers and numpy arrays and nothing else.

    Any other global (a function, a class) raises :class:`ForbiddenGlobal` before it is looked up,
    so loading can never call code the pickle names.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if SafeUnpickler._allowed is None:
            SafeUnpickler._allowed = _numpy_globals()
        try:
            return SafeUnpickler._allowed[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(module, name) from None


def _load_pickle(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, encoding="bytes").load()
    except ForbiddenGlobal as exc:
        raise InputError(f"{path}: refusing to load this pickle: it asks for {exc.module}.{exc.name}, which would "
                         "execute code (a CIFAR batch holds only numpy arrays, lists and strings)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({_first_line(exc)})") from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError from a damaged stream, ...
        raise InputError(f"{path}: not a readable CIFAR batch ({type(exc).__name__}: {_first_line(exc)})") from None


def _get(batch: dict, key: str, path: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    found = ", ".join(k.decode("latin1") if isinstance(k, bytes) else str(k) for k in batch) or "none"
    raise InputError(f"{path}: missing key {key!r} (found: {found})")


def _cifar_folder(source: str, folder: str, inner: str, names: tuple[str, ...]) -> list[str]:
    for d in (folder, os.path.join(folder, inner)):
        if all(os.path.isfile(os.path.join(d, n)) for n in names):
            return [os.path.join(d, n) for n in names]
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    raise InputError(f"{source}: missing {', '.join(missing)} in {folder} (nor found under {inner}/)")


def _open_cifar(source: str, folder: str, *, hundred: bool) -> Opened:
    if hundred:
        paths = _cifar_folder(source, folder, "cifar-100-python", ("train",))
        label_key = "fine_labels"
    else:
        paths = _cifar_folder(source, folder, "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)))
        label_key = "labels"
    tmp = tempfile.NamedTemporaryFile(prefix="mli-cifar-", suffix=".raw")
    labels: list[np.ndarray] = []
    try:
        for path in paths:  # one decoded batch in memory at a time
            batch = _load_pickle(path)
            if not isinstance(batch, dict):
                raise InputError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
            data = _get(batch, "data", path)
            lab = _get(batch, label_key, path)
            del batch
            data = np.asarray(data) if isinstance(data, np.ndarray) else None
            if data is None or data.ndim != 2 or data.shape[1] != 3072 or data.dtype.kind not in "iu":
                got = "not an array" if data is None else f"{data.dtype} of shape {tuple(data.shape)}"
                raise InputError(f"{path}: data must be uint8 rows of 3072 values (3×32×32), got {got}")
            if data.dtype != np.uint8:
                if data.size and (data.min() < 0 or data.max() > 255):
                    raise InputError(f"{path}: data must be bytes 0..255, found values outside")
                data = data.astype(np.uint8)
            try:
                lab_arr = np.asarray(lab)
            except Exception:
                lab_arr = np.asarray([], dtype=object)
            if lab_arr.ndim != 1 or lab_arr.dtype.kind not in "iu":
                raise InputError(f"{path}: {label_key} must be a list of integer labels")
            if lab_arr.shape[0] != data.shape[0]:
                raise InputError(f"{path}: {data.shape[0]} images but {lab_arr.shape[0]} {label_key}")
            tmp.write(np.ascontiguousarray(data).data)
            labels.append(lab_arr.astype(np.int64))
            del data
        tmp.flush()
    except BaseException:
        tmp.close()
        raise
    y = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    reader = RecordFile(tmp.name, 0, y.shape[0], (3, 32, 32), np.uint8, name=source, keep=tmp)
    return Opened(Examples(reader, scale=255.0), y, "classification")


# --------------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------------

_GREY8 = {"L", "1", "LA", "La", "F"}
_GREY16 = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # "I": 16-bit PNGs as older Pillow opens them


class ImageFolderReader:
    """Images in one sub-folder per class, decoded with Pillow when a batch asks for them."""

    def __init__(self, files: list[str], name: str) -> None:
        self.files = files
        self.name = name
        self.n = len(files)
        first = files[0]
        with _pil_open(first) as im:
            mode, size = im.mode, im.size
        if mode in _GREY16:
            self.mode, self.dtype, self.scale = "I;16", np.dtype(np.uint16), 65535.0
        elif mode in _GREY8:
            self.mode, self.dtype, self.scale = "L", np.dtype(np.uint8), 255.0
        else:
            self.mode, self.dtype, self.scale = "RGB", np.dtype(np.uint8), 255.0
        self.size = size  # (width, height), as Pillow gives it
        channels = 3 if self.mode == "RGB" else 1
        self.shape = (channels, size[1], size[0])
        self._decode(0)  # the first image must decode in full

    def _decode(self, i: int) -> np.ndarray:
        path = self.files[i]
        with _pil_open(path) as im:
            if im.size != self.size:
                raise InputError(f"{path}: image is {im.size[0]}×{im.size[1]} but the first image ({self.files[0]}) "
                                 f"is {self.size[0]}×{self.size[1]}; all images must have one size")
            try:
                if self.mode == "I;16":
                    if im.mode not in _GREY16:
                        raise InputError(f"{path}: mode {im.mode}, but the first image is 16-bit greyscale; "
                                         "all images must have one bit depth")
                    arr = np.asarray(im)
                    if arr.size and (arr.min() < 0 or arr.max() > 65535):
                        raise InputError(f"{path}: 16-bit greyscale values outside 0..65535")
                    arr = arr.astype(np.uint16)
                else:
                    arr = np.asarray(im.convert(self.mode), dtype=np.uint8)
            except InputError:
                raise
            except Exception as exc:
                raise InputError(f"{path}: cannot read image ({type(exc).__name__}: {_first_line(exc)})") from None
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def read(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((index.size, *self.shape), dtype=self.dtype)
        for k, i in enumerate(index):
            out[k] = self._decode(int(i))
        return out


def _pil_open(path: str) -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise InputError("images:DIR needs Pillow (pip install pillow)") from None
    try:
        return Image.open(path)
    except Exception as exc:
        raise InputError(f"{path}: cannot read image ({type(exc).__name__}: {_first_line(exc)})") from None


def _image_files(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = [os.path.join(root, f) for f in files
               if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
        out.extend(rel)
    return sorted(out, key=lambda p: os.path.relpath(p, folder))


def _open_images(source: str, folder: str) -> Opened:
    classes = sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))
    if not classes:
        raise InputError(f"{source}: no class sub-folders in {folder} (expected one sub-folder of images per class)")
    files: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        found = _image_files(os.path.join(folder, cls))
        if not found:
            raise InputError(f"{source}: class folder {os.path.join(folder, cls)} has no image files "
                             f"({' '.join(IMAGE_EXTENSIONS)})")
        files.extend(found)
        labels.extend([label] * len(found))
    reader = ImageFolderReader(files, source)
    return Opened(Examples(reader, scale=reader.scale), np.asarray(labels, dtype=np.int64), "classification")


# --------------------------------------------------------------------------------------------------
# .npy pairs
# --------------------------------------------------------------------------------------------------

def _load_npy(path: str, mmap: bool) -> np.ndarray:
    if not os.path.isfile(path):
        raise InputError(f"data file not found: {path}")
    try:
        if mmap:
            try:
                return np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError:
                pass  # object arrays and empty arrays cannot be mapped: the plain load says which
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "object" in str(exc).lower():
            raise InputError(f"{path}: refusing to read a pickled object array (save plain numeric arrays)") from None
        raise InputError(f"{path}: cannot read .npy ({_first_line(exc)})") from None
    except Exception as exc:
        raise InputError(f"{path}: cannot read .npy ({type(exc).__name__}: {_first_line(exc)})") from None


def _open_npy(source: str, folder: str) -> Opened:
    x_path, y_path = os.path.join(folder, "x.npy"), os.path.join(folder, "y.npy")
    missing = [os.path.basename(p) for p in (x_path, y_path) if not os.path.isfile(p)]
    if missing:
        raise InputError(f"{source}: missing {' and '.join(missing)} in {folder}")
    x = _load_npy(x_path, mmap=True)
    y = np.asarray(_load_npy(y_path, mmap=False))
    for path, arr in ((x_path, x), (y_path, y)):
        if arr.dtype.kind not in "biuf":
            raise InputError(f"{path}: must hold numbers, found dtype {arr.dtype}")
    if x.ndim < 2:
        raise InputError(f"{x_path}: x must have shape (n, d), got {tuple(x.shape)}")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise InputError(f"{source}: x.npy has {x.shape[0]} examples but y.npy has shape {tuple(y.shape)}")
    task = "arrays"  # the same arrays as an .npz: y as given
    if isinstance(x, np.memmap) or x.size:
        return Opened(Examples(ArrayReader(x, x_path)), y, task)
    return Opened(x, y, task)


# --------------------------------------------------------------------------------------------------
# package.module:factory
# --------------------------------------------------------------------------------------------------

def _to_numpy(v: Any) -> np.ndarray | None:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return (v.float() if v.dtype == torch.bfloat16 else v).numpy()
    if isinstance(v, np.ndarray):
        return v
    if isinstance(v, (bool, int, float, np.number, np.bool_)):
        return np.asarray(v)
    return None


def _target(v: Any, where: str, target: str) -> np.ndarray:
    arr = _to_numpy(v)
    if arr is None or arr.dtype.kind not in "biuf":
        raise InputError(f"factory {target!r}: {where} has a target of type {type(v).__name__}; "
                         "expected an int, a number or a tensor")
    return arr


def _pair(item: Any, where: str, target: str) -> tuple[Any, Any]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise InputError(f"factory {target!r}: {where} is a {type(item).__name__}, expected an (x, y) pair")


def _example(v: Any, where: str, target: str) -> np.ndarray:
    arr = _to_numpy(v)
    if arr is None or arr.dtype.kind not in "biuf":
        hint = " (add transforms.ToTensor())" if type(v).__module__.startswith("PIL") else ""
        raise InputError(f"factory {target!r}: {where} has an input of type {type(v).__name__}, "
                         f"expected a tensor or an array{hint}")
    return np.asarray(arr, dtype=np.float64)


class DatasetReader:
    """Examples of a map-style data set, fetched by index when a batch asks for them."""

    def __init__(self, dataset: Any, n: int, shape: tuple[int, ...], target: str) -> None:
        self.dataset = dataset
        self.n = n
        self.shape = shape
        self.dtype = np.dtype(np.float64)
        self.target = target
        self.name = f"factory {target!r}"
        self.digests: list[bytes] | None = None  # each input's bytes as first read (set by _open_map_style)

    def get(self, i: int) -> tuple[Any, Any]:
        try:
            with contextlib.redirect_stdout(sys.stderr):
                item = self.dataset[i]
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            raise InputError(f"factory {self.target!r}: dataset[{i}] raised {type(exc).__name__}: "
                             f"{_first_line(exc)[:200]}") from None
        return _pair(item, f"dataset[{i}]", self.target)

    def read(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((index.size, *self.shape), dtype=np.float64)
        for k, i in enumerate(index):
            x = _example(self.get(int(i))[0], f"dataset[{int(i)}]", self.target)
            if x.shape != self.shape:
                raise InputError(f"factory {self.target!r}: dataset[{int(i)}] has an input of shape {x.shape}, "
                                 f"dataset[0] has {self.shape}")
            if self.digests is not None and _digest(x) != self.digests[int(i)]:
                raise InputError(f"factory {self.target!r}: the dataset is not deterministic: dataset[{int(i)}] returned another "
                                 "input than on its first read (random augmentation, or state that changes between reads); "
                                 "evaluation reads every example many times and must get the same one")
            out[k] = x
        return out


def _digest(x: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(x).tobytes()).digest()


def _targets_task(ys: list[np.ndarray], target: str) -> tuple[np.ndarray, str]:
    """Stack per-example targets; integer scalars are class labels, anything else a regression."""
    if all(y.dtype.kind in "biu" and y.size == 1 for y in ys):
        return np.asarray([int(y.reshape(())) for y in ys], dtype=np.int64), "classification"
    shapes = {y.shape for y in ys}
    if len(shapes) != 1:
        raise InputError(f"factory {target!r}: targets of different shapes {sorted(shapes)[:3]}")
    return np.stack([y.astype(np.float64) for y in ys]), "regression"


def _open_map_style(dataset: Any, target: str, notes: tuple[str, ...] = (), batch_size: int | None = None) -> Opened:
    try:
        n = len(dataset)
    except Exception as exc:
        raise InputError(f"factory {target!r}: len(dataset) raised {type(exc).__name__}: {_first_line(exc)}") from None
    if n <= 0:
        raise InputError(f"factory {target!r}: the data set is empty")
    probe = DatasetReader(dataset, n, (), target)
    ys: list[np.ndarray] = []
    digests: list[bytes] = []
    first = last = None
    for i in range(n):  # one pass for the targets (inputs are dropped as soon as they are checked, their digests kept)
        x, y = probe.get(i)
        xa = _example(x, f"dataset[{i}]", target)
        digests.append(_digest(xa))
        if i == 0:
            first = (xa, _target(y, "dataset[0]", target))
        elif xa.shape != first[0].shape:
            raise InputError(f"factory {target!r}: dataset[{i}] has an input of shape {xa.shape}, "
                             f"dataset[0] has {first[0].shape}")
        ys.append(_target(y, f"dataset[{i}]", target))
        if i == n - 1:
            last = (xa, ys[-1])
    assert first is not None and last is not None
    for i, (x0, y0) in ((0, first), (n - 1, last)):
        x, y = probe.get(i)
        x1, y1 = _example(x, f"dataset[{i}]", target), _target(y, f"dataset[{i}]", target)
        if x1.shape != x0.shape or not np.array_equal(x1, x0, equal_nan=True) or not np.array_equal(y1, y0):
            raise InputError(f"factory {target!r}: the dataset is not deterministic: two reads of dataset[{i}] "
                             "differ (random augmentation?); evaluation must not use random augmentation")
    y, task = _targets_task(ys, target)
    reader = DatasetReader(dataset, n, tuple(first[0].shape), target)
    reader.digests = digests  # every later read of an example must give its first read's bytes
    return Opened(Examples(reader), y, task, notes, batch_size)


def _read_iterable(batches: Iterable[Any], target: str, notes: tuple[str, ...] = (), batch_size: int | None = None) -> Opened:
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    single: list[bool] = []
    try:
        with contextlib.redirect_stdout(sys.stderr):
            for b, item in enumerate(batches):
                where = f"item {b} of the iterable"
                x, y = _pair(item, where, target)
                xa, ya = _example(x, where, target), _target(y, where, target)
                if ya.ndim == 0:  # one example, not a batch
                    xa, ya = xa[None], ya[None]
                    single.append(True)
                else:
                    single.append(False)
                if xa.ndim == 0 or xa.shape[0] != ya.shape[0]:
                    raise InputError(f"factory {target!r}: {where} has {xa.shape[:1]} inputs but {ya.shape[0]} targets")
                xs.append(xa)
                ys.append(ya)
    except (InputError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise InputError(f"factory {target!r}: iterating raised {type(exc).__name__}: "
                         f"{_first_line(exc)[:200]}") from None
    if not xs:
        raise InputError(f"factory {target!r}: the iterable gave no examples")
    try:
        x = np.concatenate(xs)
        y = np.concatenate(ys)
    except ValueError:
        shapes = sorted({a.shape[1:] for a in xs} | {a.shape[1:] for a in ys})[:4]
        raise InputError(f"factory {target!r}: batches of different shapes ({shapes})") from None
    task = "classification" if y.ndim == 1 and y.dtype.kind in "biu" else "regression"
    if task == "classification":
        y = y.astype(np.int64)
    note = (f"{target}: {x.shape[0]} examples read into memory: an iterable has no random access; "
            "give a map-style Dataset to stream")
    return Opened(x, y, task, notes + (note,), batch_size)


def _is_map_style(obj: Any) -> bool:
    from torch.utils.data import Dataset, IterableDataset

    if isinstance(obj, IterableDataset):
        return False
    if isinstance(obj, Dataset):
        return True
    if isinstance(obj, (list, tuple, str, bytes, dict, np.ndarray, torch.Tensor)):
        return False
    return hasattr(obj, "__len__") and hasattr(obj, "__getitem__")


def _open_loader(loader: Any, target: str) -> Opened:
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler, default_collate, default_convert

    ds = loader.dataset
    sampler = loader.sampler
    batch_size = loader.batch_size if isinstance(loader.batch_size, int) and loader.batch_size > 0 else None
    # every example once, in any order, read by index as the loader reads it: then the data set may be
    # streamed by index; anything else (another sampler or source, the data set's own batched read,
    # worker processes and their set-up) is read as the loader yields it
    whole = (type(sampler) is SequentialSampler and sampler.data_source is ds) or (
        type(sampler) is RandomSampler and sampler.data_source is ds and not sampler.replacement
        and sampler.num_samples == len(ds))
    plain_batches = loader.batch_sampler is None or type(loader.batch_sampler) is BatchSampler
    plain_collate = loader.collate_fn in (default_collate, default_convert)
    in_process = not loader.num_workers and loader.worker_init_fn is None
    if _is_map_style(ds) and whole and plain_batches and plain_collate and in_process and not _batched_read(ds):
        notes: tuple[str, ...] = ()
        if getattr(loader, "drop_last", False):
            notes = (f"{target}: the DataLoader's drop_last is ignored: every example of its data set is used",)
        return _open_map_style(ds, target, notes, batch_size)
    return _read_iterable(loader, target, batch_size=batch_size)


def _batched_read(ds: Any) -> bool:
    """Whether a DataLoader reads ``ds`` through a ``__getitems__`` of code outside torch (torch's
    ``Subset`` passes the call on to the data set it wraps)."""
    for _ in range(32):
        fn = getattr(type(ds), "__getitems__", None)
        if fn is None:
            return False
        if not str(getattr(fn, "__module__", "")).startswith("torch."):
            return True
        inner = getattr(ds, "dataset", None)
        if inner is None or inner is ds:
            return False
        ds = inner
    return True


def _aliased(arrays: dict[str, Any], model: torch.nn.Module | None, target: str) -> None:
    """Refuse arrays that share memory with the model's parameters or buffers (see :func:`open_source`)."""
    if model is None:
        return
    held = [(n, _bounds(t)) for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]]
    for label, a in arrays.items():
        mine = _bounds(a)
        if mine is None:
            continue
        for name, theirs in held:
            if theirs is not None and mine[0] < theirs[1] and theirs[0] < mine[1]:
                raise InputError(f"factory {target!r} returned {label} sharing memory with the model's {name!r}: loading "
                                 "weights into the model would change the data")


def _byte_bounds(np_: Any) -> Any:
    """NumPy's ``byte_bounds`` (moved to ``numpy.lib.array_utils`` in NumPy 2)."""
    found = getattr(np_, "byte_bounds", None)
    return found if found is not None else np_.lib.array_utils.byte_bounds


def _bounds(a: Any) -> tuple[int, int] | None:
    """The byte range [lo, hi) a CPU tensor or NumPy array spans in memory (None: none, or not known)."""
    if isinstance(a, np.ndarray):
        return tuple(_byte_bounds(np)(a)) if a.size else None  # type: ignore[return-value]
    if not isinstance(a, torch.Tensor) or a.device.type != "cpu" or a.layout != torch.strided or a.numel() == 0:
        return None
    if isinstance(a, torch.nn.parameter.UninitializedTensorMixin):
        return None
    try:
        base = a.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    lo = base + a.storage_offset() * a.element_size()
    return lo, lo + (sum((n - 1) * abs(st) for n, st in zip(a.shape, a.stride())) + 1) * a.element_size()


def _open_factory(target: str, model: torch.nn.Module | None = None) -> Opened:
    from torch.utils.data import DataLoader

    obj = call_factory(target, module_label="data factory module", import_hint=f" (data sources: {SOURCE_FORMS})")
    if isinstance(obj, tuple) and len(obj) == 2 and _to_numpy(obj[0]) is not None and not np.isscalar(obj[0]):
        _aliased({"x": obj[0], "y": obj[1]}, model, target)
        x, y = _to_numpy(obj[0]), _to_numpy(obj[1])
        if y is None:
            try:
                y = np.asarray(obj[1])
            except Exception:
                y = None
        if y is None or y.dtype.kind not in "biuf":
            raise InputError(f"factory {target!r} returned (x, y) with y of type {type(obj[1]).__name__}, "
                             "expected an array or a tensor")
        return Opened(x, y, "arrays")  # the same arrays as an .npz: y as given
    if isinstance(obj, DataLoader):
        return _open_loader(obj, target)
    if _is_map_style(obj):
        return _open_map_style(obj, target)
    if hasattr(obj, "__iter__") and not isinstance(obj, (str, bytes, dict, np.ndarray, torch.Tensor)):
        return _read_iterable(obj, target)
    raise InputError(f"factory {target!r} returned {type(obj).__name__}, expected a Dataset, DataLoader, "
                     "iterable of (x, y) batches or (x, y)")


# --------------------------------------------------------------------------------------------------

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [""])[0]


_FOLDER_FORMATS = {
    "mnist": _open_idx_pair,
    "fashion-mnist": _open_idx_pair,
    "fashion_mnist": _open_idx_pair,
    "kmnist": _open_idx_pair,
    "cifar10": lambda source, folder: _open_cifar(source, folder, hundred=False),
    "cifar-10": lambda source, folder: _open_cifar(source, folder, hundred=False),
    "cifar100": lambda source, folder: _open_cifar(source, folder, hundred=True),
    "cifar-100": lambda source, folder: _open_cifar(source, folder, hundred=True),
    "images": _open_images,
    "npy": _open_npy,
}
