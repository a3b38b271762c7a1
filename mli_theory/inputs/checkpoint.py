"""Checkpoints: state dicts from ``torch.save`` (read with ``weights_only=True``) or safetensors."""

from __future__ import annotations

import os
import pickle
import re
import warnings

import torch
from torch import nn

from ..errors import InputError

StateDict = dict[str, torch.Tensor]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


def load_state_dict(path: str) -> StateDict:
    """Read a state dict without executing pickled code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(..., weights_only=True)``. A dict that wraps the state dict under ``state_dict``,
    ``model_state_dict`` or ``model`` is unwrapped.

    Raises:
        InputError: missing or unreadable file, a pickle that needs arbitrary code, or content that
            is not a mapping from names to tensors.
    """
    if os.path.isdir(path):
        raise InputError(f"checkpoint {path} is a folder, not a file (for a run folder use --run)")
    if not os.path.isfile(path):
        raise InputError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise InputError("reading .safetensors needs the safetensors package") from None
        try:
            obj = load_file(path, device="cpu")
        except Exception as exc:
            raise InputError(f"cannot read safetensors file {path}: {exc}") from None
    else:
        try:
            with warnings.catch_warnings():  # torch warns about legacy files; our one line says it all
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"unsupported global:? (?:GLOBAL )?([\w.]+)", str(exc), flags=re.IGNORECASE)
            name = found.group(1) if found else _pickled_global(path)
            if name is None:
                raise InputError(f"cannot read checkpoint {path}: not a torch.save state dict (corrupt or another format)") from None
            raise InputError(
                f"refusing to load {path}: it needs arbitrary pickled code (global {name}), which "
                "weights_only=True forbids; save a plain state_dict (or .safetensors) instead"
            ) from None
        except (KeyError, EOFError, ValueError) as exc:  # a text file, a truncated pickle: bytes that are no pickle
            raise InputError(f"cannot read checkpoint {path}: not a torch.save file or .safetensors ({type(exc).__name__}: "
                             f"{str(exc)[:120]})") from None
        except Exception as exc:
            raise InputError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise InputError(f"{path} does not hold a state dict (a mapping from names to tensors)")
    return dict(obj)


def _pickled_global(path: str) -> str | None:
    """The first global a plain pickle file imports (never executing it), or None.

    ``torch.load`` reports the forbidden global only for files written by ``torch.save``; a file
    written with ``pickle.dump`` must still be refused as code, not called corrupt.
    """
    import pickletools

    try:
        with open(path, "rb") as f:
            strings: list[str] = []
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    return str(arg).replace(" ", ".")
                if isinstance(arg, str):
                    strings.append(arg)
                if op.name == "STACK_GLOBAL":
                    return ".".join(strings[-2:]) if len(strings) >= 2 else "unknown"
    except Exception:  # not a pickle at all
        return None
    return None


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def match_state_dict(model: nn.Module, state: StateDict, label: str) -> StateDict:
    """Check ``state`` against ``model``'s own state dict: same keys, same shapes, finite values.

    Returns a new dict (the caller's tensors are never modified) with every floating entry kept in
    its stored dtype; casting happens later, once.

    Raises:
        InputError: naming the missing, unexpected, mis-shaped or non-finite entries.
    """
    expected = model.state_dict()
    lazy = [k for k, v in expected.items() if isinstance(v, nn.parameter.UninitializedTensorMixin)]
    if lazy:
        raise InputError(f"the model's entries {_names(lazy)} are not initialised (a lazy module): build the model with its "
                         "shapes known, or run it once on an input, before checking")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_names(unexpected)}")
        raise InputError(f"{label} checkpoint does not match the model: {'; '.join(parts)}")
    not_tensor = [k for k in expected if not isinstance(expected[k], torch.Tensor) or not isinstance(state[k], torch.Tensor)]
    if not_tensor:
        raise InputError(
            f"{label} checkpoint: {_names(not_tensor)} is not a tensor (a module's extra state, from get_extra_state); "
            "only tensor entries can be interpolated along the path"
        )
    floating = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    params = {n for n, _ in model.named_parameters()}
    bad_dtype = [f"{k} ({state[k].dtype})" for k in expected if (k in params or expected[k].is_floating_point()) and state[k].dtype not in floating]
    if bad_dtype:
        raise InputError(
            f"{label} checkpoint has entries that are not float16/bfloat16/float32/float64: {_names(bad_dtype, 3)}"
        )
    bad_shape = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape
    ]
    if bad_shape:
        raise InputError(f"{label} checkpoint has wrong shapes: {_names(bad_shape, 3)}")
    not_finite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if not_finite:
        raise InputError(f"{label} checkpoint has non-finite values in {_names(not_finite)}")
    return {k: state[k] for k in expected}


def save_state_dict(state: StateDict, path: str) -> None:
    """Save a state dict as ``.safetensors`` (by extension) or with ``torch.save``."""
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save(state, path)
