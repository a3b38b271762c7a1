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

# names Python or the standard library caches in a class's namespace (``copy`` stores __slotnames__,
# reading __annotations__ creates it): not a change of what the class computes
_CACHED_NAMES = frozenset({"__slotnames__", "__annotations__", "__abstractmethods__", "_abc_impl", "__orig_bases__", "__type_params__"})


def _classes() -> dict[str, type]:
    """The classes whose own names are watched, by label: ``torch.Tensor`` and its base, ``nn.Module``
    and torch's module classes."""
    out: dict[str, type] = {f"{c.__module__}.{c.__qualname__}": c for c in torch.Tensor.__mro__ if c is not object}
    out.update(dict(_module_classes()))
    return out


# the names each of them defines itself at import: a name added later (a ``bias`` property on
# ``nn.Linear``) changes what an attribute read of its instances returns, though every object the
# snapshot holds is intact
_NAMES = MappingProxyType({label: frozenset(vars(cls)) for label, cls in _classes().items()})
_PLAIN_VALUES = (int, float, bool, str, type(None))


def added_names() -> list[tuple[str, str, object]]:
    """(class label, name, value) for every name a class of :data:`_NAMES` defines now but did not at import."""
    out = []
    for label, cls in _classes().items():
        names = _NAMES.get(label)
        if names is None:
            continue
        space = vars(cls)
        out += [(label, name, space[name]) for name in sorted(set(space) - names - _CACHED_NAMES)]
    return out


def shadowed_names(cls: type, names: set[str], added: list[tuple[str, str, object]]) -> list[str]:
    """Which of ``names`` (a module's parameters, buffers and submodules) a plain value added to one
    of torch's classes in ``cls``'s MRO since import now shadows (``added``: :func:`added_names`):
    attribute lookup finds a class attribute before ``nn.Module.__getattr__`` looks in the tables
    (``nn.Linear.bias = 0.0``)."""
    mro = {f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__} | {f"torch.nn.{c.__name__}" for c in cls.__mro__}
    return sorted({name for label, name, _ in added if label in mro and name in names})

# the dispatch keys under which a Python kernel for an aten operator runs on real tensors (torch's
# own Python kernels for aten are Meta kernels, for shape inference, and a CUDA and an MPS kernel)
_REAL_KEYS = ("CPU", "CUDA", "Composite", "Autograd", "Python", "Undefined")


def _aten_kernels() -> frozenset[str]:
    """Python kernels registered for aten operators (``torch.library.Library("aten", "IMPL").impl``)
    under a key that runs on real tensors, as ``"aten/op/key"``."""
    impls = getattr(torch.library, "_impls", ())
    return frozenset(e for e in list(impls) if type(e) is str and e.startswith("aten/") and e.rsplit("/", 1)[-1].startswith(_REAL_KEYS))


_KERNELS = _aten_kernels()


def added_kernels(limit: int = 4) -> list[str]:
    """Python kernels for aten operators that torch did not register itself: added since mli_theory
    was imported, or before it under any such key but CUDA's (torch has one of its own; the trace names
    ``aten::addmm``; a kernel replaced at the dispatcher computes something else under that name).

    >>> added_kernels()
    []
    """
    now = _aten_kernels()
    found = sorted((now - _KERNELS) | {e for e in now if not e.rsplit("/", 1)[-1].startswith("CUDA")})
    return [e.replace("/", "::", 1).replace("/", " under ") for e in found[:limit]]


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
    for label, name, value in added_names():
        if type(value) not in _PLAIN_VALUES:  # a plain value matters only where it shadows a name (shadowed_names)
            found.append(f"{label}.{name} (added)")
            if len(found) >= limit:
                return found
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
