"""Training data: ``.npz`` files, data sets that ship with scikit-learn, the standard on-disk
formats (MNIST IDX, CIFAR python batches, image folders, ``.npy`` pairs) and users' own
``torch.utils.data`` data sets.

A data set is a pair ``(x, y)``: ``x`` has the examples along its first axis, either as a tensor in
memory or as :class:`~mli_theory.inputs.examples.Examples` read batch by batch from their source
(the on-disk formats and user data sets: memory does not grow with ``n``); ``y`` is held in memory,
``n x k`` floats for mean squared error or ``n`` integer labels for cross-entropy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from ..errors import InputError
from .examples import Examples, Normalization

LossName = Literal["mse", "ce"]
LOSSES: tuple[str, ...] = ("mse", "ce")

# name -> (sklearn loader, task). Regression targets and all features are standardised.
_BUILTIN = {
    "diabetes": ("load_diabetes", "regression"),
    "digits": ("load_digits", "classification"),
    "wine": ("load_wine", "classification"),
    "breast_cancer": ("load_breast_cancer", "classification"),
    "iris": ("load_iris", "classification"),
    "digits_autoencoder": ("load_digits", "autoencoder"),
}
BUILTIN_DATASETS: tuple[str, ...] = tuple(f"sklearn:{k}" for k in _BUILTIN) + ("synthetic:teacher",)


def _teacher_student(n: int = 512, d: int = 16, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x ~ N(0, I_d); y = a fixed random tanh teacher network 16-32-4 of x, plus 5% noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w1 = rng.normal(size=(d, 32)) / np.sqrt(d)
    w2 = rng.normal(size=(32, k)) / np.sqrt(32)
    y = np.tanh(x @ w1) @ w2
    y = y + 0.05 * y.std() * rng.normal(size=y.shape)
    return x, (y - y.mean(0)) / y.std(0)


@dataclass(frozen=True)
class Dataset:
    """Inputs and targets, validated for one loss.

    Attributes:
        x: inputs, shape ``(n, ...)``, floating point: a tensor, or :class:`Examples` read on
            demand (index it by batches; see :mod:`mli_theory.inputs.examples`).
        y: targets: ``(n, k)`` floats for ``mse``; ``(n,)`` int64 labels for ``ce``.
        loss: the loss the targets were validated for.
        name: where the data came from (a path or a built-in name).
        notes: what the reading changed or assumed, for the result's warnings.
        inputs_given_as: the dtype the inputs were given in when it was neither float32 nor float64
            (integers, float16, bfloat16; they are held as float32/float64 here), else None: a
            forward may compute otherwise on the inputs as given (integer wrapping, a branch on
            the dtype), so no certificate speaks for them.
        loader_batch_size: the batch size of the DataLoader the data came from, else None (the
            command line evaluates in its batches unless told otherwise).
    """

    x: torch.Tensor | Examples
    y: torch.Tensor
    loss: LossName
    name: str
    notes: tuple[str, ...] = ()
    inputs_given_as: str | None = None
    loader_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.inputs_given_as is None and isinstance(self.x, torch.Tensor) and self.x.dtype not in (torch.float32, torch.float64):
            object.__setattr__(self, "inputs_given_as", str(self.x.dtype).replace("torch.", ""))

    @property
    def streamed(self) -> bool:
        """Whether the inputs are read from their source batch by batch (not held in memory)."""
        return isinstance(self.x, Examples)

    @property
    def n(self) -> int:
        """Number of examples."""
        return int(self.x.shape[0])

    def flattened(self) -> "Dataset":
        """The same data with each example as a vector ``(n, d)`` (what the built-in ``linear``,
        ``deep_linear`` and ``mlp`` specs read); itself when the examples already are vectors."""
        if self.x.dim() <= 2:
            return self
        d = int(np.prod(tuple(self.x.shape[1:]), dtype=np.int64))
        note = f"the inputs of shape {tuple(self.x.shape[1:])} are read as vectors of {d} values (a built-in spec)"
        return replace(self, x=self.x.flatten(1), notes=self.notes + (note,))

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "Dataset":
        """Inputs (and float targets) on ``device`` in ``dtype``; labels stay int64."""
        y = self.y.to(device=device, dtype=dtype) if self.loss == "mse" else self.y.to(device)
        x = self.x.to(device=device, dtype=dtype)
        for label, before, after in (("x", self.x, x), ("y", self.y, y)):
            if (isinstance(after, torch.Tensor) and after.is_floating_point() and isinstance(before, torch.Tensor)
                    and before.dtype != after.dtype and not bool(torch.isfinite(after).all())
                    and bool(torch.isfinite(before).all())):
                big = float(before.abs().max())
                raise InputError(
                    f"data {label} has values beyond the range of {str(dtype).replace('torch.', '')} (largest "
                    f'magnitude {big:.3g}); use dtype="float64" or rescale the data'
                )
        return replace(self, x=x, y=y)


def _standardise(a: np.ndarray) -> np.ndarray:
    mu = a.mean(axis=0)
    sd = a.std(axis=0)
    return (a - mu) / np.where(sd > 0, sd, 1.0)


def _load_builtin(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    key = name.split(":", 1)[1]
    if key not in _BUILTIN:
        raise InputError(f"unknown built-in data set {name!r} (known: {', '.join(BUILTIN_DATASETS)})")
    loader, task = _BUILTIN[key]
    try:
        import sklearn.datasets as skd
    except ImportError:
        raise InputError("built-in data sets need scikit-learn (pip install scikit-learn)") from None
    bunch = getattr(skd, loader)()
    x = np.asarray(bunch.data, dtype=np.float64)
    if key.startswith("digits"):
        x = x / 16.0  # pixel intensities 0..16 -> [0, 1]
    else:
        x = _standardise(x)
    if task == "regression":
        y = _standardise(np.asarray(bunch.target, dtype=np.float64).reshape(-1, 1))
    elif task == "autoencoder":
        y = x.copy()
    else:
        y = np.asarray(bunch.target, dtype=np.int64)
    return x, y, task


def _one_hot(labels: np.ndarray) -> np.ndarray:
    k = int(labels.max()) + 1
    out = np.zeros((labels.shape[0], k))
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    if y.ndim != 1:
        raise InputError(f"{name}: cross-entropy needs y as n integer labels, got shape {tuple(y.shape)}")
    if np.issubdtype(y.dtype, np.integer):
        labels = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.bool_):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise InputError(f"{name}: cross-entropy needs integer labels, y has non-integer values")
        labels = y.astype(np.int64)
    else:
        raise InputError(f"{name}: cross-entropy needs integer labels, y has dtype {y.dtype}")
    if labels.size and labels.min() < 0:
        raise InputError(f"{name}: labels must be non-negative, found {int(labels.min())}")
    return labels


def load_data(source: str, loss: str, *, normalize: str | Normalization | None = None,
              model: torch.nn.Module | None = None) -> Dataset:
    """Load and validate a data set for ``loss`` (``mse`` or ``ce``).

    Args:
        source: one of
            - a path to an ``.npz`` file with arrays ``x`` and ``y``;
            - a built-in name: ``sklearn:diabetes`` (regression), ``sklearn:digits`` (10 classes;
              one-hot targets under ``mse``), ``sklearn:digits_autoencoder`` (targets equal
              inputs), ``synthetic:teacher`` (512 × 16 Gaussian inputs, a fixed tanh teacher);
            - a standard on-disk format, read batch by batch: ``mnist:DIR`` / ``fashion-mnist:DIR``
              (IDX files, ``.gz`` or not), ``cifar10:DIR`` / ``cifar100:DIR`` (the "python
              version" batches, read without executing pickled code), ``images:DIR`` (one
              sub-folder per class), ``npy:DIR`` (``x.npy`` and ``y.npy``, memory-mapped);
            - ``package.module:factory``: a callable returning a ``torch.utils.data.Dataset``, a
              ``DataLoader``, an iterable of ``(x, y)`` batches, or ``(x, y)`` arrays/tensors.
            Images are float pixels in [0, 1] in (C, H, W) order, labels integers.
        loss: ``mse`` (class labels become one-hot targets) or ``ce``.
        normalize: per-channel ``(x - mean) / std`` applied to the inputs as read, given as
            ``"mean,std"`` or ``"m1,..,mC,s1,..,sC"`` (see :class:`Normalization`), or None.
        model: the model the data is for: a factory's arrays that share memory with its
            parameters or buffers are refused (loading weights into it would change the data).

    Raises:
        InputError: unreadable or truncated file, missing arrays, empty data, non-finite values,
            a factory that raises or returns the wrong type, or targets that do not fit the loss.
    """
    if loss not in LOSSES:
        raise InputError(f"loss={loss!r}: unknown loss (expected one of: {', '.join(LOSSES)})")
    norm = Normalization.parse(normalize) if isinstance(normalize, str) else normalize
    notes: tuple[str, ...] = ()
    loader_batch: int | None = None
    if source == "synthetic:teacher":
        if loss != "mse":
            raise InputError("synthetic:teacher is a regression data set: use loss=\"mse\"")
        x, y = _teacher_student()
    elif source.startswith("sklearn:"):
        x, y, task = _load_builtin(source)
        if loss == "mse" and task == "classification":
            y = _one_hot(y)
        if loss == "ce" and task != "classification":
            raise InputError(f"{source} is a {task} data set: use loss=\"mse\"")
    elif source.lower().endswith(".npz") or os.path.isfile(source):
        x, y = _read_npz(source)
    else:
        from .formats import open_source

        opened = open_source(source, model)
        x, y, notes = opened.x, np.asarray(opened.y), tuple(opened.notes)
        loader_batch = opened.batch_size
        if loss == "mse" and opened.task == "classification":
            y = _one_hot(_labels(y, source))
        if loss == "ce" and opened.task == "regression" and not np.issubdtype(y.dtype, np.integer):
            raise InputError(f"{source} has float targets (a regression data set): use loss=\"mse\"")
    if norm is not None:
        if isinstance(x, Examples):
            x = Examples(x.reader, scale=x.scale, normalization=norm, dtype=x.dtype, device=x.device,
                         check_finite=x.check_finite)
        else:
            x = norm.apply(np.asarray(x, dtype=np.float64), source)
    data = _validate(x, y, loss, source)
    if loader_batch is not None:
        data = replace(data, loader_batch_size=loader_batch)
    return replace(data, notes=notes + data.notes) if notes else data


def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        raise InputError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise InputError(f"{path}: missing array(s) {', '.join(missing)} (found: {', '.join(f.files) or 'none'})")
            return np.asarray(f["x"]), np.asarray(f["y"])
    except InputError:
        raise
    except ValueError as exc:
        with open(path, "rb") as f:
            head = f.read(6)
        if not (head.startswith(b"PK") or head.startswith(b"\x93NUMPY")):  # neither a zip (.npz) nor an .npy array
            raise InputError(f"{path}: not an .npz archive (np.savez writes one with arrays x and y)") from None
        raise InputError(f"{path}: refusing to read pickled object arrays ({exc})") from None
    except Exception as exc:
        raise InputError(f"cannot read data file {path}: {type(exc).__name__}: {exc}") from None


def _validate(x: np.ndarray | Examples, y: np.ndarray, loss: str, name: str) -> Dataset:
    streamed = isinstance(x, Examples)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not streamed and (x.dtype == object or y.dtype == object):
        raise InputError(f"{name}: object arrays are not supported")
    if y.dtype == object:
        raise InputError(f"{name}: object arrays are not supported")
    if not streamed and not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InputError(f"{name}: x must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise InputError(f"{name}: x must have shape (n, d), got {tuple(x.shape)}")
    n = x.shape[0]
    if n == 0:
        raise InputError(f"{name}: the data set is empty")
    if y.shape[:1] != (n,):
        raise InputError(f"{name}: x has {n} examples but y has shape {tuple(y.shape)}")
    integer = None  # the inputs' own dtype where it is neither float32 nor float64
    if not streamed and x.dtype not in (np.float32, np.float64):
        integer = str(x.dtype)
    if not streamed:
        x = x.astype(np.float64)
        if not np.all(np.isfinite(x)):
            raise InputError(f"{name}: x contains non-finite values")
    column = False
    if loss == "mse":
        if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
            raise InputError(f"{name}: mse needs float targets, y has dtype {y.dtype}")
        column = y.ndim == 1
        if column:
            y = y.reshape(-1, 1)
        if y.ndim != 2:
            raise InputError(f"{name}: mse needs y of shape (n, k), got {tuple(y.shape)}")
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            raise InputError(f"{name}: y contains non-finite values")
        yt = torch.from_numpy(y)
    else:
        yt = torch.from_numpy(_labels(y, name))
    xt = x if streamed else torch.from_numpy(x)
    notes = (f"the inputs x are given as {integer}, read as float32/float64: the curve is about those values",) if integer else ()
    if loss == "mse" and column:
        notes += (f"the targets y of shape ({n},) are read as ({n}, 1), one target per example (torch's mse_loss "
                  f"would broadcast ({n}, 1) outputs against ({n},) targets to ({n}, {n}) pairs)",)
    return Dataset(xt, yt, loss, name, notes, integer)  # type: ignore[arg-type]
