"""Devices and dtypes named by the caller (never guessed beyond ``auto``)."""

from __future__ import annotations

import torch

from ..errors import InputError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu``; ``cuda[:i]`` (an input error without a GPU).

    Other device types (``meta``, ``mps``, …) are refused: the toolkit computes real numbers on the
    CPU or on CUDA.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device={device!r}: unknown device (expected auto, cpu or cuda)") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device={device!r}: not supported (expected auto, cpu or cuda)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device={device!r} was asked for, but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """``float32`` or ``float64`` (a name or the torch dtype)."""
    if isinstance(name, torch.dtype):
        if name in DTYPES.values():
            return name
        raise InputError(f"dtype {name} is not supported (expected float32 or float64)")
    if name not in DTYPES:
        raise InputError(f"dtype={name!r}: unknown dtype (expected float32 or float64)")
    return DTYPES[name]
