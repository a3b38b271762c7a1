"""Are torch's functions still torch's? Replacements of library functions the trace cannot see.

A traced graph names operations by the function objects it called (``torch.tanh``) or by the
modules it called (``nn.Linear``), and every rule of the jets and enclosures computes what *torch's*
function computes. A process that replaced ``torch.nn.functional.linear`` (which ``nn.Linear``
calls inside its leaf module) or ``torch.Tensor.__add__`` evaluates something else, and the trace
shows nothing of it. So the operations of ``torch`` (its compiled functions and those of
``torch.functional``), ``torch.nn.functional``, ``torch.special``, the methods of ``torch.Tensor``
and the methods of ``nn.Module`` and of every module class torch defines (``nn.Conv2d._conv_forward``,
``nn.Module._call_impl``, …) are compared with the objects they were when mli_theory was
imported (a read-only snapshot), as are the globals through which torch's forward code reaches them
(the modules, functions and classes bound in ``torch.nn.modules.*`` and ``torch.nn.functional``: a
rebound ``F`` inside ``torch.nn.modules.linear`` changes what every ``nn.Linear`` computes), and the public functions that live in those namespaces must come
from torch itself (a replacement made before the import is a function defined outside torch).
"""

from __future__ import annotations

import sys
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
             types.BuiltinMethodType, classmethod, staticmethod)


def _module_classes() -> list[type]:
    """``nn.Module`` and every module class torch defines in ``torch.nn`` (their methods, such as
    ``nn.Conv2d._conv_forward`` or ``nn.Module._call_impl``, run inside the leaves of a trace)."""
    from torch import nn

    out: dict[str, type] = {"torch.nn.Module": nn.Module}
    for name, obj in vars(nn).items():
        if isinstance(obj, type) and issubclass(obj, nn.Module) and str(obj.__module__).startswith("torch."):
            out.setdefault(f"torch.nn.{name}", obj)
            for base in obj.__mro__:
                if isinstance(base, type) and issubclass(base, nn.Module) and str(base.__module__).startswith("torch."):
                    out.setdefault(f"{base.__module__}.{base.__qualname__}", base)
    return list(out.items())  # type: ignore[return-value]


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


def _forward_modules() -> dict[str, types.ModuleType]:
    """The Python modules whose code runs inside a traced leaf (``torch.nn.modules.*`` and
    ``torch.nn.functional``): their globals are what that code calls (``F`` inside
    ``torch.nn.modules.linear``, ``torch`` inside ``torch.nn.functional``)."""
    return {name: mod for name, mod in list(sys.modules.items())
            if isinstance(mod, types.ModuleType) and (name.startswith("torch.nn.modules.") or name == "torch.nn.functional")}


_GLOBAL_KINDS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


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
    for label, cls in _module_classes():
        for name, obj in vars(cls).items():
            if isinstance(obj, _CALLABLE):
                snap[label, name] = obj
    for modname, mod in _forward_modules().items():
        for name, obj in vars(mod).items():
            if not name.startswith("__") and isinstance(obj, _GLOBAL_KINDS):
                snap[f"{modname} (global)", name] = obj
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
    namespaces = dict(_NAMESPACES)
    classes = dict(_module_classes())
    modules = _forward_modules()
    for (label, name), obj in _PRISTINE.items():
        if label == "torch.Tensor":
            current = now.get(name)
        elif label.endswith(" (global)"):
            mod = modules.get(label[: -len(" (global)")])
            current = vars(mod).get(name) if mod is not None else None
            if current is not obj:
                found.append(f"{label[: -len(' (global)')]}.{name}")
                if len(found) >= limit:
                    break
            continue
        elif label in namespaces:
            current = vars(namespaces[label]).get(name)
        else:
            current = vars(classes[label]).get(name) if label in classes else None
        if current is not obj or not _from_torch(name, current):
            found.append(f"{label}.{name}")
            if len(found) >= limit:
                break
    return found
