"""Inputs read on demand: the one streaming interface every command reads its data through.

A data set's inputs are either a tensor held in memory or an :class:`Examples`: ``n`` examples of
one shape that are read from their source (a file of fixed-size records, a memory map, a user's
``torch.utils.data.Dataset``, a folder of images) only when a batch of them is asked for. Both
answer the same questions, so code that reads data in batches works on either:

* ``x.shape``, ``len(x)``, ``x.dim()``: the shape ``(n, *example_shape)``;
* ``x[a:b]``, ``x[a:b:s]``, ``x[index_tensor]``, ``x[i]``: a ``torch.Tensor`` of those examples
  on ``x.device`` in ``x.dtype``;
* ``x.to(device, dtype)``: the same examples, delivered elsewhere (nothing is read);
* :func:`iter_batches`: consecutive batches of at most ``batch_size`` examples.

Peak memory is then one batch, whatever ``n``. Decoding is the same for every source, so a batch
read from an IDX file equals, bit for bit, the same examples saved as ``.npz`` after the same
decoding: raw values as float64, divided by ``scale`` (255 for 8-bit pixels, so pixels lie in
[0, 1]), then, per channel (axis 1 of the batch), ``(v - mean[c]) / std[c]`` when a normalisation
is given, and only then cast to the requested dtype and device.

Floating-point sources are checked as they are read: a batch with a NaN or an infinity raises
:class:`~mli_theory.errors.InputError` naming the source and the examples, at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch

from ..errors import InputError

#: Examples per batch when a streamed source is read without an explicit ``batch_size``.
STREAM_BATCH = 1024


class Reader(Protocol):
    """A source of ``n`` raw examples of one shape (private protocol of the on-disk formats).

    ``read(index)`` returns the examples at the sorted, unique, in-range int64 ``index`` as a numpy
    array of shape ``(len(index), *shape)`` (raw values: bytes for images, floats for arrays).
    """

    n: int
    shape: tuple[int, ...]
    dtype: np.dtype
    name: str

    def read(self, index: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(v - mean[c]) / std[c]`` on axis 1 of a batch (after scaling to [0, 1]).

    One value for each of ``mean`` and ``std`` applies to every channel.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise InputError(f"normalize: need as many means as standard deviations, got {len(self.mean)} and {len(self.std)}")
        if any(not np.isfinite(v) for v in self.mean + self.std) or any(s <= 0 for s in self.std):
            raise InputError(f"normalize: means must be finite and standard deviations positive, got {self.mean}, {self.std}")

    @staticmethod
    def parse(text: str) -> "Normalization":
        """``"m,s"`` (every channel) or ``"m1,…,mC,s1,…,sC"`` (C means, then C standard deviations).

        >>> Normalization.parse("0.1307,0.3081")
        Normalization(mean=(0.1307,), std=(0.3081,))
        >>> Normalization.parse("0.5,0.4,0.3,0.2,0.2,0.2").std
        (0.2, 0.2, 0.2)
        """
        try:
            values = [float(v) for v in text.replace(";", ",").replace("/", ",").split(",") if v.strip()]
        except ValueError:
            raise InputError(f"normalize={text!r}: expected comma-separated numbers 'mean,std' or 'm1,..,mC,s1,..,sC'") from None
        if len(values) < 2 or len(values) % 2:
            raise InputError(f"normalize={text!r}: expected an even number of values (C means, then C standard deviations)")
        half = len(values) // 2
        return Normalization(tuple(values[:half]), tuple(values[half:]))

    def apply(self, batch: np.ndarray, name: str) -> np.ndarray:
        if batch.ndim < 2:
            raise InputError(f"{name}: normalize needs examples with a channel axis, got shape {batch.shape[1:]}")
        c = batch.shape[1]
        if len(self.mean) not in (1, c):
            raise InputError(f"{name}: normalize gives {len(self.mean)} channels but the examples have {c}")
        shape = (1, -1) + (1,) * (batch.ndim - 2)
        mean = np.asarray(self.mean, dtype=np.float64).reshape(shape)
        std = np.asarray(self.std, dtype=np.float64).reshape(shape)
        return (batch - mean) / std


class Examples:
    """``n`` examples read from a :class:`Reader` batch by batch (see the module docstring).

    Args:
        reader: the source.
        scale: raw values are divided by it (255 for 8-bit pixels; None: kept).
        normalization: per-channel normalisation after scaling, or None.
        dtype, device: what batches are delivered as.
        check_finite: check every batch read for NaN and infinities (floating-point sources).
    """

    def __init__(
        self,
        reader: Reader,
        *,
        scale: float | None = None,
        normalization: Normalization | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
        check_finite: bool | None = None,
    ) -> None:
        self.reader = reader
        self.scale = scale
        self.normalization = normalization
        self.dtype = dtype
        self.device = torch.device(device)
        self.check_finite = np.issubdtype(reader.dtype, np.floating) if check_finite is None else check_finite
        self.example_shape: tuple[int, ...] = tuple(reader.shape)  # as delivered (see :meth:`flatten`)

    # --- the tensor-like surface -------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.reader.n, *self.example_shape))

    @property
    def name(self) -> str:
        return self.reader.name

    def __len__(self) -> int:
        return self.reader.n

    def dim(self) -> int:
        return 1 + len(self.example_shape)

    def flatten(self, start_dim: int = 1) -> "Examples":
        """The same examples delivered as vectors, shape ``(n, prod(example shape))`` (only
        ``start_dim=1``, the rows a chain of ``nn.Linear`` layers reads)."""
        if start_dim != 1:
            raise ValueError("Examples.flatten only flattens each example (start_dim=1)")
        out = self.to()
        out.example_shape = (int(np.prod(self.reader.shape, dtype=np.int64)),)
        return out

    @property
    def ndim(self) -> int:
        return self.dim()

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def to(self, device: torch.device | str | torch.dtype | None = None, dtype: torch.dtype | None = None) -> "Examples":
        """The same examples delivered on ``device`` in ``dtype`` (nothing is read)."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        out = Examples.__new__(Examples)
        out.__dict__.update(self.__dict__)
        if device is not None:
            out.device = torch.device(device)
        if dtype is not None:
            out.dtype = dtype
        return out

    def double(self) -> "Examples":
        return self.to(dtype=torch.float64)

    def __getitem__(self, key: Any) -> torch.Tensor:
        n = self.reader.n
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"index {i} out of range for {n} examples")
            return self._read(np.array([i % n], dtype=np.int64))[0]
        if isinstance(key, slice):
            index = np.arange(*key.indices(n), dtype=np.int64)  # the batch's rows only, not all n
        elif isinstance(key, (torch.Tensor, np.ndarray, list, tuple, range)):
            arr = key.detach().cpu().numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
            if arr.dtype == np.bool_:
                if arr.shape != (n,):
                    raise IndexError(f"a boolean mask of shape {arr.shape} for {n} examples")
                index = np.flatnonzero(arr).astype(np.int64)
            else:
                index = arr.astype(np.int64).reshape(-1)
                if index.size and (index.min() < -n or index.max() >= n):
                    raise IndexError(f"index out of range for {n} examples")
                index = index % n if index.size else index
        else:
            raise TypeError(f"Examples cannot be indexed by {type(key).__name__}")
        return self._read(index)

    def materialize(self) -> torch.Tensor:
        """Every example at once (memory grows with n: prefer :func:`iter_batches`)."""
        return self[:]

    def __repr__(self) -> str:
        return f"Examples({self.name!r}, shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"

    # --- decoding ---------------------------------------------------------------------------------
    def _read(self, index: np.ndarray) -> torch.Tensor:
        if index.size == 0:
            return torch.empty((0, *self.example_shape), dtype=self.dtype, device=self.device)
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
        unique, inverse = np.unique(sorted_index, return_inverse=True)
        raw = np.asarray(self.reader.read(unique))
        if raw.shape != (unique.size, *self.reader.shape):
            raise InputError(f"{self.name}: the source returned examples of shape {raw.shape[1:]}, expected {self.reader.shape}")
        values = raw.astype(np.float64, copy=False)
        if self.check_finite and not np.all(np.isfinite(values)):
            row_bad = ~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
            bad = int(unique[np.flatnonzero(row_bad)[0]])
            raise InputError(f"{self.name}: example {bad} has non-finite values")
        if self.scale is not None:
            values = values / self.scale
        if self.normalization is not None:
            values = self.normalization.apply(values, self.name)
        # back to the caller's order (duplicates included)
        restore = np.empty_like(order)
        restore[order] = np.arange(order.size)
        values = values[inverse][restore] if unique.size != index.size or not np.array_equal(sorted_index, index) else values
        out = torch.from_numpy(np.ascontiguousarray(values)).reshape(values.shape[0], *self.example_shape)
        return out.to(device=self.device, dtype=self.dtype)


def iter_batches(x: torch.Tensor | Examples, batch_size: int | None) -> Iterator[torch.Tensor]:
    """Consecutive batches of at most ``batch_size`` examples of ``x`` (None: all at once for a
    tensor, :data:`STREAM_BATCH` at a time for :class:`Examples`)."""
    n = int(x.shape[0])
    size = stream_batch_size(x, batch_size) or n
    for i in range(0, n, max(size, 1)):
        yield x[i : min(i + size, n)]


def stream_batch_size(x: Any, batch_size: int | None) -> int | None:
    """``batch_size``, or for streamed inputs without one, :data:`STREAM_BATCH` (None: one batch)."""
    if batch_size is not None and batch_size > 0:
        return int(batch_size)
    return STREAM_BATCH if isinstance(x, Examples) else None


class ArrayReader:
    """Examples held in a numpy array or memory map (``.npy`` opened with ``mmap_mode="r"``)."""

    def __init__(self, array: np.ndarray, name: str) -> None:
        if array.ndim < 2:
            raise InputError(f"{name}: x must have shape (n, d), got {tuple(array.shape)}")
        self.array = array
        self.n = int(array.shape[0])
        self.shape = tuple(int(s) for s in array.shape[1:])
        self.dtype = array.dtype
        self.name = name

    def read(self, index: np.ndarray) -> np.ndarray:
        if index.size and index[-1] - index[0] + 1 == index.size:  # a range: one contiguous read
            return np.array(self.array[int(index[0]) : int(index[-1]) + 1])
        return np.array(self.array[index])


class RecordFile:
    """``n`` fixed-size records of ``shape`` and ``dtype`` stored back to back in a file from byte
    ``offset`` on (IDX payloads, decoded CIFAR batches, uncompressed ``.npy``). Reads use ``pread``
    of the rows asked for, so nothing but the batch is ever resident."""

    def __init__(self, path: str, offset: int, n: int, shape: Sequence[int], dtype: Any, name: str | None = None,
                 keep: Any = None) -> None:
        self.path = path
        self.offset = int(offset)
        self.n = int(n)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.name = name or path
        self.record = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._keep = keep  # e.g. a temporary file that must live as long as the reader
        size = os.path.getsize(path)
        if size < self.offset + self.n * self.record:
            raise InputError(f"{self.name}: truncated: {self.n} records of {self.record} bytes need "
                             f"{self.offset + self.n * self.record} bytes, the file has {size}")

    def read(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((index.size, *self.shape), dtype=self.dtype)
        flat = out.reshape(index.size, -1).view(np.uint8).reshape(index.size, self.record)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            i = 0
            while i < index.size:  # one read per run of consecutive rows
                j = i + 1
                while j < index.size and index[j] == index[j - 1] + 1:
                    j += 1
                start = self.offset + int(index[i]) * self.record
                want = (j - i) * self.record
                buf = os.pread(fd, want, start)
                if len(buf) != want:
                    raise InputError(f"{self.name}: truncated: could not read example {int(index[i])}")
                flat[i:j] = np.frombuffer(buf, dtype=np.uint8).reshape(j - i, self.record)
                i = j
        finally:
            os.close(fd)
        return out
