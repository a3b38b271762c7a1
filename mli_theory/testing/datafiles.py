"""Write data sets in the standard on-disk formats, for tests, benchmarks and examples.

The readers are :mod:`mli_theory.inputs.formats`; these writers produce what the original
distributions hold, so that a file written here reads back as ``mnist:DIR`` or ``cifar10:DIR``:

* IDX (LeCun et al.'s MNIST format): 2 zero bytes, a type byte (0x08 for unsigned bytes), the
  number of dimensions, each dimension as a big-endian 32-bit integer, then the values in C order;
* the CIFAR-10 "python version": five pickled dicts ``data_batch_1`` … ``data_batch_5`` with
  ``b"data"`` (rows of 3072 bytes: the red, green and blue 32×32 planes) and ``b"labels"``.

Large synthetic sets are written in chunks (``make_images``), so memory stays bounded.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from typing import Callable, Iterator

import numpy as np

__all__ = ["make_images", "write_cifar10", "write_idx", "write_mnist"]

_IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
              np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def make_images(n: int, shape: tuple[int, ...], classes: int = 10, seed: int = 0,
                chunk: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``n`` synthetic uint8 images of ``shape`` and their labels, in chunks of ``chunk``.

    Each class has its own mean image; an image is its class mean plus noise (so a network can
    learn something), clipped to 0..255.
    """
    rng = np.random.default_rng(seed)
    means = rng.uniform(40, 215, size=(classes, *shape))
    for i0 in range(0, n, chunk):
        m = min(chunk, n - i0)
        labels = rng.integers(0, classes, size=m)
        images = means[labels] + rng.normal(0, 40, size=(m, *shape))
        yield np.clip(np.rint(images), 0, 255).astype(np.uint8), labels.astype(np.uint8)


def _idx_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, _IDX_CODES[np.dtype(dtype)], len(shape)]) + struct.pack(f">{len(shape)}i", *shape)


def write_idx(path: str, array: np.ndarray, gz: bool = False) -> str:
    """``array`` as an IDX file at ``path`` (``path + ".gz"`` gzip-compressed when ``gz``)."""
    opener: Callable = gzip.open if gz else open  # type: ignore[assignment]
    out = path + ".gz" if gz else path
    with opener(out, "wb") as f:
        f.write(_idx_header(array.dtype, array.shape))
        f.write(array.astype(array.dtype.newbyteorder(">")).tobytes())
    return out


def write_mnist(folder: str, n: int, seed: int = 0, gz: bool = False, shape: tuple[int, int] = (28, 28)) -> str:
    """A synthetic MNIST-shaped training set (``n`` images of 28×28 bytes) in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    opener: Callable = gzip.open if gz else open  # type: ignore[assignment]
    suffix = ".gz" if gz else ""
    with opener(os.path.join(folder, "train-images-idx3-ubyte" + suffix), "wb") as fi, \
            opener(os.path.join(folder, "train-labels-idx1-ubyte" + suffix), "wb") as fl:
        fi.write(_idx_header(np.dtype(np.uint8), (n, *shape)))
        fl.write(_idx_header(np.dtype(np.uint8), (n,)))
        for images, labels in make_images(n, shape, seed=seed):
            fi.write(images.tobytes())
            fl.write(labels.tobytes())
    return folder


def write_cifar10(folder: str, n: int, seed: int = 0, protocol: int = 2) -> str:
    """A synthetic CIFAR-10-shaped training set (``n`` images of 3×32×32 bytes) as the five
    pickled batches of the python version, in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    sizes = [n // 5 + (1 if i < n % 5 else 0) for i in range(5)]
    for i, m in enumerate(sizes, start=1):
        parts = list(make_images(m, (3, 32, 32), seed=seed * 7 + i, chunk=max(m, 1)))
        images = parts[0][0] if parts else np.zeros((0, 3, 32, 32), np.uint8)
        labels = parts[0][1] if parts else np.zeros(0, np.uint8)
        batch = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": [int(v) for v in labels],
                 b"data": images.reshape(m, 3072), b"filenames": [f"img_{i}_{j}.png".encode() for j in range(m)]}
        with open(os.path.join(folder, f"data_batch_{i}"), "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    return folder
