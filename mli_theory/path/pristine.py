"""Are torch's functions still torch's? Replacements of library functions the trace cannot see.

A traced graph names operations by the function objects it called (``torch.tanh``) or by the
modules it called (``nn.Linear``), and every rule of the jets and enclosures computes what *torch's*
function computes. A process that replaced ``torch.nn.functional.linear`` (which ``nn.Linear``
calls inside its leaf module) or ``torch.Tensor.__add__`` evaluates something else, and the trace
shows nothing of it. So the operations of ``torch`` (its compiled functions and those of
``torch.functional``), ``torch.nn.functional``, ``torch.special`` and the methods of ``torch.Tensor``
are compared with the objects they were when mli_theory was
imported (a read-only snapshot), and the public functions that live in those namespaces must come
from torch itself (a replacement made before the import is a function defined outside torch).
"""

from __future__ import annotations

import types
from types import MappingProxyType
from typing import Mapping

import torch
from torch.nn import functional as F

_NAMESPACES: tuple[tuple[str, object], ...] = (
    ("torch", torch),
    ("torch.nn.functional", F),
    ("torch.special", torch.special),
)
_CALLABLE = (types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType,
             types.BuiltinMethodType)


def _tensor_attributes() -> dict[str, object]:
    """The raw (unbound) objects behind ``torch.Tensor``'s callable attributes, nearest class first."""
    out: dict[str, object] = {}
    for klass in torch.Tensor.__mro__:
        if klass is object:
            continue
        for name, obj in vars(klass).items():
            if name not in out and isinstance(obj, _CALLABLE):
                out[name] = obj
    return out


def _snapshot() -> Mapping[tuple[str, str], object]:
    snap: dict[tuple[str, str], object] = {}
    for label, mod in _NAMESPACES:
        for name, obj in vars(mod).items():
            if name.startswith("__") or not isinstance(obj, _CALLABLE):
                continue
            if label == "torch" and isinstance(obj, types.FunctionType) and obj.__module__ != "torch.functional":
                continue  # torch's Python-level utilities (seeding, loading, …), not operations of a forward pass
            snap[label, name] = obj
    for name, obj in _tensor_attributes().items():
        snap["torch.Tensor", name] = obj
    return MappingProxyType(snap)


# taken once, when mli_theory is imported; never written afterwards
_PRISTINE = _snapshot()


def _from_torch(name: str, obj: object) -> bool:
    """Whether a public function comes from torch (private names include typing re-exports)."""
    if isinstance(obj, types.FunctionType) and not name.startswith("_"):
        return str(getattr(obj, "__module__", "") or "").startswith("torch")
    return True  # builtins and descriptors are compiled into torch (or Python) itself


def replaced_functions(limit: int = 4) -> list[str]:
    """Qualified names of torch functions that differ from the snapshot, or that are functions
    defined outside torch (at most ``limit``; empty when all are pristine).

    >>> replaced_functions()
    []
    """
    found: list[str] = []
    now = _tensor_attributes()
    for (label, name), obj in _PRISTINE.items():
        if label == "torch.Tensor":
            current = now.get(name)
        else:
            current = vars(dict(_NAMESPACES)[label]).get(name)
        if current is not obj or not _from_torch(name, current):
            found.append(f"{label}.{name}")
            if len(found) >= limit:
                break
    return found
