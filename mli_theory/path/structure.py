"""What a model computes, decided from the model itself: the one predicate for "what kind of path".

Every method that depends on the form of f(x; θ) asks this module, never the spec string or a
class name: the exact polynomial decision (a chain of affine maps gives outputs polynomial in α),
whether the one-pass jets may trust the trace (no hooks), the conditions (which hypotheses can hold)
and the sweep. The model is traced with :func:`torch.fx.symbolic_trace`, so an ``nn.Sequential``
subclass with its own ``forward`` shows what that ``forward`` does, and anything the trace cannot
prove is answered conservatively.

Refused (kind :attr:`PathKind.UNKNOWN`, with the reason):

* forward or forward-pre hooks on any submodule, or global module hooks (they change what
  ``module(x)`` returns, and the traced graph does not show them);
* a module class that overrides ``__call__`` or ``_call_impl``, a module object with its own
  ``forward`` (or call method) as an instance attribute, or a ``torch.nn`` class whose
  ``forward`` was replaced (none of these shows in the trace);
* a model that :mod:`torch.fx` cannot trace (data-dependent control flow, for example);
* any operation without an entry in the table of :mod:`mli_theory.path.smoothness`, or whose
  parameter values the table does not classify (random in training mode, ``eps = 0``, …);
* any operation that may make z(α) jump in value (class DISCONTINUOUS of that table: Softplus with
  a finite ``threshold``, Hardshrink, Threshold, comparisons, ``where`` on a condition that varies
  along α, …).

Every operation is classified by that one table, for its parameter values (read from the module or
from the call's arguments); the path's class is the least regular class of its operations, kept in
:attr:`PathStructure.smoothness`. Kinds, from the most to the least structured:

* :attr:`PathKind.POLYNOMIAL`: the graph is a chain ``x → A_1 → … → A_L → output`` of exact
  ``nn.Linear`` modules (``nn.Identity`` and eval-mode ``nn.Dropout`` allowed between them). Along
  θ(α) = θ0 + αΔθ the outputs are polynomials of degree ≤ L in α.
* :attr:`PathKind.SMOOTH`: every operation is C∞ (affine layers, normalisations with ε > 0, tanh,
  sigmoid, GELU, SiLU, Softplus with ``threshold=inf``, …): z(α) is C² on [0, 1] (C∞ wherever it
  is finite).
* :attr:`PathKind.PIECEWISE_SMOOTH`: every operation is continuous and piecewise C∞, some with
  kinks: z(α) is continuous and piecewise C²; z′ may jump at finitely many α (smoothness C0:
  ReLU, LeakyReLU, ELU with alpha ≠ 1, Hardswish, max pooling, abs, clamp, …), or only z″ may
  jump (smoothness C1: ELU with alpha = 1, CELU, Softsign). Not C² in either case.
* :attr:`PathKind.UNKNOWN`: anything else, including a path that may be discontinuous
  (:attr:`PathStructure.smoothness` is then DISCONTINUOUS and the reason names the operation and
  the size of its jump). A path that may jump satisfies no hypothesis of the conditions (each
  needs z continuous), so it needs no kind of its own: the JSON ``path_kind`` keeps its four
  documented values.
"""

from __future__ import annotations

import dis
import functools
import hashlib
import inspect
import operator
import re
import sys
import types
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Callable

import torch
from torch import nn

from .pristine import added_kernels, added_names, replaced_functions, shadowed_names  # imported with the package: the snapshot predates user code
from .smoothness import Smoothness, classify_node, varying_nodes


class PathKind(str, Enum):
    """What the output path z(α) = f(X; θ(α)) is known to be (see the module docstring)."""

    POLYNOMIAL = "polynomial"
    SMOOTH = "smooth"
    PIECEWISE_SMOOTH = "piecewise_smooth"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class PathStructure:
    """The traced structure of a model.

    Attributes:
        kind: the :class:`PathKind`.
        reason: why (the first thing that lowered the kind, or what the trace proved).
        chain: qualified names of the modules, in call order, when the traced graph is a plain
            chain ``x → m_1 → … → m_L → output`` of module calls (each taking the previous output
            as its only argument); None otherwise.
        linear: for POLYNOMIAL, ``(name, has_bias)`` of each ``nn.Linear`` in call order; else ().
        smoothness: the least regular class of the traced operations
            (:class:`~mli_theory.path.smoothness.Smoothness`: SMOOTH for POLYNOMIAL and SMOOTH,
            C0 or C1 for PIECEWISE_SMOOTH, DISCONTINUOUS or UNKNOWN for UNKNOWN); None when it was
            not traced.
    """

    kind: PathKind
    reason: str
    chain: tuple[str, ...] | None = None
    linear: tuple[tuple[str, bool], ...] = ()
    smoothness: Smoothness | None = None

    @property
    def degree(self) -> int | None:
        """Degree bound of z(α) in α for POLYNOMIAL paths (the number of affine layers), else None."""
        return len(self.linear) if self.kind == PathKind.POLYNOMIAL else None


_CHAIN_PASSTHROUGH: tuple[type, ...] = (nn.Identity, nn.Dropout)


def _flattens_rows(m: nn.Module) -> bool:
    """``nn.Flatten()`` (start_dim 1, end_dim −1): each example's entries as one row, the identity on
    the (n, d) activations of a chain of Linear layers (and a reshape of the data before the first)."""
    return type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1


# methods through which module(x) runs; an instance attribute of one of these names overrides it
_CALL_ATTRS = frozenset({"forward", "_call_impl", "_wrapped_call_impl", "__call__"})


# what a caller's ``load_state_dict`` runs besides copying the entries (the line never loads: it
# swaps the interpolated state in with ``functional_call``), and what ``state_dict`` saves
_LOAD_METHODS = frozenset({"_load_from_state_dict", "load_state_dict", "set_extra_state", "get_extra_state",
                           "_save_to_state_dict", "state_dict", "_register_load_state_dict_pre_hook",
                           "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook",
                           # and what the line runs on its copy (cast, move, mode): code of the model's own
                           # there would make the copy the certificate reads differ from the caller's model
                           "_apply", "apply", "to", "to_empty", "float", "double", "half", "bfloat16", "cpu", "cuda",
                           "type", "train", "eval", "requires_grad_", "share_memory"})
_LOAD_HOOK_TABLES = ("_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_state_dict_hooks",
                     "_state_dict_pre_hooks")


def opaque_call_reason(model: nn.Module) -> str | None:
    """Why ``model(x)`` may compute something its traced graph does not show (None if nothing).

    Hooks (module and global), ``__call__`` overrides, instance-level ``forward`` or call methods,
    ``torch.nn`` forwards replaced from outside torch, and torch functions replaced process-wide
    (:mod:`.pristine`). Shared by :func:`analyse` and the jet
    interpreter.
    """
    from torch.nn.modules import module as module_mod

    replaced = replaced_functions()
    if replaced:
        return f"torch functions have been replaced in this process ({', '.join(replaced)}): the trace cannot show what they compute"
    ambient = _ambient_torch()
    if ambient is not None:
        return ambient
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_forward_hooks_always_called"):
        table = vars(module_mod).get(attr)
        if table is not None and type(table) not in _PLAIN_TABLES:
            return f"torch's {attr} is a {type(table).__name__}, not a plain table (what a read of it returns is its own code's choice)"
        if table:
            return "global module forward hooks are registered"
    classes = tuple({type(m) for m in model.modules()})
    instances = tuple(model.modules())
    walked: set[type] = set()
    added = added_names()  # once for the model: names added to torch's classes since import
    for name, m in model.named_modules():
        label = name or "the model"
        own = instance_dict(m) or {}
        table = next((k for k in _TORCH_TABLES if k in own and type(own[k]) not in _PLAIN_TABLES), None)
        if table is not None:  # a dict subclass as _parameters or _forward_hooks: its own code decides what a read returns
            return (f"{label}'s {table} is a {type(own[table]).__name__}, not a plain table: what the module reads from it "
                    "is that class's choice, which the trace does not show")
        shadowed = shadowed_names(type(m), {*own.get("_parameters", {}), *own.get("_buffers", {}), *own.get("_modules", {})}, added)
        if shadowed:
            return f"{label}: a value added to its torch class shadows its {shadowed[0]!r} (what the module reads is not the state)"
        if getattr(m, "_forward_hooks", None) or getattr(m, "_forward_pre_hooks", None):
            return f"{label} has forward hooks (they change its output and are not traced)"
        cls = type(m)
        if cls.__call__ is not nn.Module.__call__ or getattr(cls, "_call_impl", None) is not nn.Module._call_impl:
            return f"{label} ({cls.__name__}) overrides __call__"
        patched = sorted(_CALL_ATTRS & set(vars(m)))
        if patched:  # an instance attribute replaces the method for this object only: fx never sees it
            return f"{label} has its own instance attribute {patched[0]!r} (a patched method the trace cannot see)"
        if cls.__module__.startswith("torch.nn.") and not str(getattr(cls.forward, "__module__", "")).startswith("torch."):
            return f"{label}: {cls.__name__}.forward has been replaced by code outside torch"
        copying = sorted((_COPY_HOOKS | {"__new__"}) & set(vars(cls))) if not str(cls.__module__).startswith("torch.") else []
        if copying:  # every evaluation runs a private copy of the model: it must be the model
            return f"{label} ({cls.__name__}) defines {copying[0]}: its copies, which are what is evaluated, may differ from it"
        loading = sorted(_LOAD_METHODS & {k for c in cls.__mro__ if not str(c.__module__).startswith("torch.") for k in vars(c)})
        if loading:  # the caller loads θ(α) with load_state_dict; the line swaps it in as it is
            return (f"{label} ({cls.__name__}) defines {loading[0]}: loading, casting or switching the mode of the model runs "
                    "that code, so the model a caller runs may not be the copy the certificate is about")
        hooked = next((k for k in _LOAD_HOOK_TABLES if own.get(k)), None)
        if hooked is not None:
            return (f"{label} has state-dict hooks ({hooked}): a caller's load_state_dict runs them, so the weights the "
                    "model runs with may not be the interpolated ones the certificate is about")
        held = _copied_differently({k: v for k, v in vars(m).items() if k not in ("_parameters", "_buffers", "_modules")})
        if held is not None:  # copied with the module: a copy of a copy may differ from the copy the curve runs
            return f"{label} holds {held}: its copies, which are what is evaluated, may differ from it"
        if _compiled(m):
            return f"{label} ({cls.__name__}) is TorchScript or compiled code: what it reads of a tensor no Python check sees"
        asks = _asks_how_it_runs(cls, classes, instances) if cls not in walked else None
        walked.add(cls)  # a class's code is walked once, however many of its modules the model holds
        if asks is not None:
            return f"{label} ({cls.__name__}) reads {asks} in its forward: it may compute one thing when traced and another when run"
        thread = next((k for k, v in vars(m).items() if _concurrent(v)), None)
        if thread is not None:
            return (f"{label} holds {thread!r}, a {type(vars(m)[thread]).__name__} (a thread or process: what it reads of a tensor "
                    f"no check of the calling thread sees)")
    return None


_PLAIN_TABLES = (dict, OrderedDict, set)  # the types of torch's own tables of a module (parameters, buffers, hooks, …)
_TORCH_TABLES = tuple(sorted(k for k, v in vars(nn.Module()).items() if isinstance(v, (dict, set))))  # their names


def _ambient_torch() -> str | None:
    """Process-wide torch machinery that runs under every operation and that no trace shows: a
    Python dispatch or function mode left active (entered at import and never left; the default
    device's mode excepted, which only places new tensors), or a Python kernel registered for an aten
    operator (:func:`.pristine.added_kernels`)."""
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._device import DeviceContext
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    modes = [m for m in _get_current_function_mode_stack() if type(m) is not DeviceContext] + list(_get_current_dispatch_mode_stack())
    if modes:
        return (f"a torch mode is active in this process ({type(modes[0]).__name__}): every operation runs through its code, "
                "which the trace does not show")
    kernels = added_kernels()
    if kernels:
        return f"Python kernels replace torch's for {', '.join(kernels)}: the trace names the operator, not what now computes it"
    return None


# modules whose threads and processes run outside the calling thread's torch modes (the comparison
# of :mod:`.fidelity` records what the calling thread reads and runs, no other thread's)
_CONCURRENCY_MODULES = frozenset({"threading", "_thread", "concurrent", "multiprocessing", "subprocess", "asyncio", "_posixsubprocess",
                                  "queue", "sched"})


def _concurrent(obj: object) -> bool:
    """Whether ``obj`` is one of :data:`_CONCURRENCY_MODULES` (or torch's multiprocessing), or a
    function, class or instance defined there."""
    if type(obj) in _SYNCHRONISATION:  # a lock an object holds (a logger's) starts nothing
        return False
    name = _module_of(obj)
    return name.split(".")[0] in _CONCURRENCY_MODULES or name.startswith("torch.multiprocessing")


def _module_of(obj: object) -> str:
    """The module that defines ``obj`` (a module's own name), read without running its code: a
    function's or class's ``__module__``, else its class's."""
    t = type(obj)
    if issubclass(t, types.ModuleType):
        name = (instance_dict(obj) or {}).get("__name__")
    elif t in (types.FunctionType, types.BuiltinFunctionType):
        name = obj.__module__
    elif issubclass(t, type):
        name = _TYPE_MODULE.__get__(obj)
    else:
        name = _TYPE_MODULE.__get__(t)
    return name if isinstance(name, str) else ""


def _name_of(obj: object) -> str:
    t = type(obj)
    if t in (types.FunctionType, types.BuiltinFunctionType) or issubclass(t, (type, types.ModuleType)):
        return str(obj.__name__ if not issubclass(t, types.ModuleType) else _module_of(obj))
    return t.__name__


# modules that look at the running program rather than compute: its stack (faulthandler, the
# debuggers and profilers), its memory and references (tracemalloc, gc, weakref), its resources and
# clock (resource, psutil, timeit). A forward that reaches any of their objects could tell the
# comparison from the curve without naming a probe
_INSPECTING_MODULES = frozenset({"faulthandler", "tracemalloc", "gc", "weakref", "_weakref", "_weakrefset", "pdb", "bdb",
                                 "trace", "cProfile", "profile", "_lsprof", "cgitb", "timeit", "resource", "psutil",
                                 "inspect", "traceback", "code", "codeop", "dis", "linecache", "tokenize", "_tracemalloc",
                                 "sysconfig", "atexit"})


# what a forward may reach of the standard library: computation (math, operator, functools, the
# containers), typing and declarations, warnings and logging. Anything else (os, sys, io, random,
# time, builtins' module, the file system, the interpreter's settings) is state of the process that a
# forward could count in, or read, where no comparison of the forward with its trace looks
_ALLOWED_STDLIB = frozenset({"math", "cmath", "operator", "_operator", "functools", "_functools", "itertools",
                             "collections", "_collections", "_collections_abc", "typing", "typing_extensions",
                             "dataclasses", "enum", "numbers", "abc", "_abc", "types", "warnings", "_warnings",
                             "logging", "contextlib", "copy", "re", "_sre", "sre_compile", "sre_parse", "string",
                             "textwrap", "fractions", "statistics", "heapq", "_heapq", "bisect",
                             "_bisect", "keyword", "__future__", "builtins"})
# and of the builtins: the pure functions and the types (``open``, ``vars``, ``setattr``, ``__import__``,
# ``globals``, ``eval``, ``exec``, ``compile``, ``input``, ``id`` and ``hash`` are not among them)
_ALLOWED_BUILTINS = frozenset({"abs", "all", "any", "ascii", "bin", "callable", "chr", "divmod", "format", "getattr",
                               "hasattr", "hex", "isinstance", "issubclass", "iter", "len", "max", "min", "next", "oct",
                               "ord", "pow", "print", "repr", "round", "sorted", "sum", "zip", "map", "filter",
                               "enumerate", "reversed", "range", "super", "__build_class__"})
# of the numerical libraries: everything but their random generators, files and global settings
_REFUSED_LIBRARY_MODULES = ("numpy.random", "numpy.lib.npyio", "numpy.lib._npyio_impl", "numpy.testing", "numpy.ctypeslib",
                            "scipy.io", "scipy.misc")


@functools.lru_cache(maxsize=1)
def _uninitialised_makers() -> dict[int, tuple[object, str]]:
    """The allocators that hand out memory as it was left (and numpy's stride trick, which reads
    memory outside an array) where the dispatcher does not see them: a freed tensor's values can come
    back through them as a constant, which the comparison checks by value at one α only (torch's own
    ``empty`` and kin are refused by the comparison, :mod:`.fidelity`)."""
    out: dict[int, tuple[object, str]] = {}
    found = [(torch, "UntypedStorage"), (torch, "TypedStorage"), (torch, "Storage"), (torch, "FloatStorage"),
             (torch, "DoubleStorage"), (torch, "HalfStorage"), (torch, "BFloat16Storage")]
    np = sys.modules.get("numpy")
    if np is not None:
        found += [(np, "empty"), (np, "empty_like")]  # (not the ndarray type: any array held by a module reaches it)
        tricks = sys.modules.get("numpy.lib.stride_tricks")
        if tricks is not None:
            found.append((tricks, "as_strided"))
    for space, name in found:
        obj = getattr(space, name, None)
        if obj is not None:
            out.setdefault(id(obj), (obj, f"{space.__name__}.{name}"))
    return out


def _not_allowed(obj: object) -> str | None:
    """Why a forward may not reach ``obj``, an object of the standard library or of a well-known
    library (see :data:`_ALLOWED_STDLIB`), or None."""
    made = _uninitialised_makers().get(id(obj))
    if made is not None and made[0] is obj:
        return f"{made[1]} (memory as it was left: values that are not a function of the weights and inputs)"
    t = type(obj)
    if t is types.BuiltinFunctionType and _module_of(obj) == "builtins":
        name = obj.__name__
        return None if name in _ALLOWED_BUILTINS else f"the builtin {name}"
    module = _module_of(obj)
    root = module.split(".")[0]
    if issubclass(t, types.ModuleType) and module == "builtins":  # every builtin, the refused ones too, and a place to write
        return "the builtins module"
    if root in sys.stdlib_module_names and root not in _ALLOWED_STDLIB and root != "torch":
        return f"{_name_of(obj)} from the standard library's {root} (state of the process outside what is compared)"
    if root in _IDENTITY_ONLY and (root not in _NUMERIC_LIBRARIES or module.startswith(_REFUSED_LIBRARY_MODULES)):
        return f"{_name_of(obj)} from {module}"
    return None


def _in_mro(t: type, name: str) -> bool:
    return any(name in _NAMESPACE.__get__(c) for c in t.__mro__ if c is not object)


def _hands_out(t: type) -> bool:
    """Whether a library class's objects hand out what they hold without a name being read
    (subscripting, iterating, calling)."""
    return any(_in_mro(t, name) for name in ("__getitem__", "__iter__", "__next__", "__call__"))


def _inspecting(obj: object) -> bool:
    """Whether ``obj`` is one of :data:`_INSPECTING_MODULES`, or a function, class or instance defined there."""
    return _module_of(obj).split(".")[0] in _INSPECTING_MODULES


def _catches(code: types.CodeType) -> str | None:
    """Why ``code`` catches exceptions, or None: a ``try``/``except`` (any type; a bare ``except``;
    ``except*``). Control flow through an error can measure the surroundings without naming
    anything (the recursion room left, a warning filter that raises in some callers only), so a
    forward that catches is refused. ``with`` blocks and ``try``/``finally`` (which re-raise) pass;
    a context manager whose ``__exit__`` may swallow the error is refused where its class is met."""
    ops = [ins.opname for ins in dis.get_instructions(code)]
    if "CHECK_EXC_MATCH" in ops or "CHECK_EG_MATCH" in ops:
        return f"try/except in {code.co_qualname if hasattr(code, 'co_qualname') else code.co_name}"
    for k, op in enumerate(ops[:-1]):
        if op == "PUSH_EXC_INFO" and ops[k + 1] == "POP_TOP":  # a bare ``except:``
            return f"a bare except in {code.co_name}"
    return None


def _suppressing_exit(cls: type) -> str | None:
    """Why a class's ``__exit__`` may swallow an exception (it returns something other than None),
    or None."""
    for name in ("__exit__", "__aexit__"):
        fn = _namespace(cls).get(name)
        if type(fn) is not types.FunctionType:
            continue
        prev = None
        for ins in dis.get_instructions(fn):
            if ins.opname == "RETURN_CONST" and ins.argval is not None:
                return f"{cls.__qualname__}.{name}, which may swallow an exception"
            if ins.opname == "RETURN_VALUE" and not (prev is not None and prev.opname == "LOAD_CONST" and prev.argval is None):
                return f"{cls.__qualname__}.{name}, which may swallow an exception"
            prev = ins
    return None


# well-known libraries, checked by identity like torch's and the standard library's, never walked:
# numerical ones a forward may call on constants (their code catches exceptions for its own reasons),
# and the test runner, notebook kernel and progress bars whose objects (log handlers, streams) a
# logger or ``print`` in a forward reaches
_NUMERIC_LIBRARIES = frozenset({"numpy", "scipy", "einops", "opt_einsum"})
_IDENTITY_ONLY = _NUMERIC_LIBRARIES | {"pytest", "_pytest", "pluggy", "ipykernel", "IPython", "tqdm", "matplotlib"}

# standard-library classes that are plain holders of user data (their fields are compared)
_NAMESPACES = (types.SimpleNamespace,)
_BOOKKEEPING = frozenset({"logging", "warnings"})  # libraries whose objects' fields are their own bookkeeping (see _Reach._parts)


def _synchronisation() -> tuple[type, ...]:
    import threading

    return (type(threading.Lock()), type(threading.RLock()), threading.Condition, threading.Event, threading.Semaphore,
            threading.local)


_SYNCHRONISATION = _synchronisation()


# class hooks that make a copy of a module differ from it
_COPY_HOOKS = frozenset({"__deepcopy__", "__copy__", "__reduce__", "__reduce_ex__", "__setstate__", "__getstate__"})


def _copied_differently(values: dict, depth: int = 16) -> str | None:
    """An object among ``values`` (and inside them: containers, the attributes of objects of classes
    outside torch and the standard library) whose deep copy runs code of its own: a class that
    defines a copy hook or ``__new__`` (a deep copy calls ``cls.__new__``), or a type registered with
    :mod:`copyreg` or :mod:`copy`. Such a copy can count its generation, and the certifier's
    comparison runs a copy of the copy that the curve runs. Described, or None; what is held deeper
    than ``depth`` levels or beyond 4 096 objects is refused as unchecked."""
    import copy as copy_mod
    import copyreg

    todo = [(k, v, depth) for k, v in values.items()]
    seen: set[int] = set()
    while todo:
        if len(seen) >= 4096:
            return f"{todo[-1][0]!r} among more than 4096 objects (not all of them checked)"
        name, obj, left = todo.pop()
        if id(obj) in seen or issubclass(type(obj), (torch.Tensor, nn.Module)) or type(obj) in _IMMUTABLE:
            continue
        seen.add(id(obj))
        t = type(obj)
        if not left and (_user_class(t) or issubclass(t, (dict, list, tuple, set, frozenset))):
            return f"{name!r}, held more than {depth} levels deep (not checked)"
        if _user_class(t):
            if t in copyreg.dispatch_table or t in copy_mod._deepcopy_dispatch:  # noqa: SLF001
                return f"{name!r}, a {t.__name__} registered with copyreg or copy"
            hooks = sorted({k for c in t.__mro__ if _user_class(c) for k in _NAMESPACE.__get__(c)} & (_COPY_HOOKS | {"__new__"}))
            if hooks:
                return f"{name!r}, a {t.__name__} whose class defines {hooks[0]}"
            fields = object_fields(obj)  # read without running the object's own code
            if left and fields is not None:
                todo += [(f"{name}.{k}", v, left - 1) for k, v in fields.items()]
        elif left and issubclass(t, dict):
            todo += [(f"{name}[{k!r}]", v, left - 1) for k, v in list(dict.items(obj))]
        elif left and issubclass(t, (list, tuple, set, frozenset)):
            base = next(b for b in (list, tuple, set, frozenset) if issubclass(t, b))
            todo += [(f"{name}[{i}]", v, left - 1) for i, v in enumerate(list(base.__iter__(obj)))]
    return None

# what a forward can read to behave differently under the trace than when the curve runs it
_MODE_PROBES = frozenset({
    "is_fx_tracing", "is_fx_symbolic_tracing", "_is_fx_tracing_flag", "is_scripting", "is_tracing", "is_compiling",
    "is_dynamo_compiling", "is_grad_enabled", "is_inference_mode_enabled", "is_inference", "_get_tracing_state",
    # the torch modes a checker runs under, and the Python call stack
    "_is_torch_function_mode_enabled", "_get_current_dispatch_mode", "_get_current_function_mode",
    "_get_current_dispatch_mode_stack", "_get_current_function_mode_stack", "_len_torch_function_stack",
    "_len_torch_dispatch_stack", "_get_function_stack_at", "_get_dispatch_stack_at", "_get_dispatch_mode",
    "_getframe", "currentframe", "getouterframes", "extract_stack", "walk_stack", "getframeinfo",
    # memory read around torch (a DLPack capsule or an address handed to ctypes)
    "to_dlpack", "_to_dlpack", "from_address", "from_buffer", "from_buffer_copy", "string_at", "memmove",
    "PyCapsule_GetPointer", "pythonapi",
    # how the tensors it is given are held (a forward that tells the comparison's call from the curve's)
    "getrefcount", "getweakrefcount", "getweakrefs", "get_referrers", "get_referents", "storage_offset", "_base",
    "_version", "_cdata", "is_view",
    # whether a torch function or dispatch mode is active, weak references, the garbage collector's view
    "has_torch_function", "_has_torch_function", "_has_torch_function_unary", "_has_torch_function_variadic",
    "is_in_torch_dispatch_mode", "_dispatch_tls_is_dispatch_key_included", "_dispatch_tls_local_include_set",
    "_dispatch_tls_local_exclude_set", "__weakref__", "get_objects",
    # the Python call stack reached through frames and tracebacks (an exception's ``__traceback__``)
    "tb_frame", "tb_next", "f_back", "f_code", "f_locals", "f_globals", "f_lineno", "f_lasti", "f_trace", "gi_frame",
    "cr_frame", "ag_frame", "__traceback__", "_current_frames", "exc_info", "settrace", "setprofile", "gettrace",
    "getprofile",
    # functorch's transforms (the curve may run the forward under vmap over α)
    "is_batchedtensor", "is_functorch_wrapped_tensor", "maybe_get_level", "maybe_get_bdim", "current_level",
    "is_gradtrackingtensor", "_functorch", "get_unwrapped",
    # the settings the certifier's arithmetic changes for its duration (autocast off, one thread where
    # torch's pool flushes subnormals, TF32 off on CUDA: certify/enclosures.strict_arithmetic), which a
    # forward could otherwise tell the certifier's runs from the curve's by
    "is_autocast_enabled", "is_autocast_cpu_enabled", "get_autocast_dtype", "get_autocast_cpu_dtype", "get_autocast_gpu_dtype",
    "is_autocast_cache_enabled", "get_num_threads", "allow_tf32", "get_float32_matmul_precision", "fp32_precision",
    # other threads and processes (what they read no torch mode of the calling thread sees), by the
    # names of their starts (modules and their objects bound to any name: see _concurrent)
    "start_new_thread", "_start_new_thread", "ThreadPoolExecutor", "ProcessPoolExecutor", "fork", "forkpty", "posix_spawn",
    "posix_spawnp", "Popen", "run_in_executor", "to_thread", "apply_async",
    # clocks and the process's resource counters: a forward can time itself (the comparison's recording
    # modes make every operation slower) or watch allocations, and so tell the comparison from the curve
    # without keeping any state (``time.time`` and the like, whose names are too common, by identity)
    "perf_counter", "perf_counter_ns", "process_time", "process_time_ns", "thread_time", "thread_time_ns", "monotonic",
    "monotonic_ns", "time_ns", "clock_gettime", "clock_gettime_ns", "now", "utcnow", "today", "getrusage", "getloadavg",
    "getallocatedblocks", "get_count", "get_stats", "get_freeze_count", "tracemalloc", "get_traced_memory", "take_snapshot",
    "psutil", "timeit", "default_timer", "elapsed_time", "memory_allocated", "max_memory_allocated", "memory_reserved",
    "max_memory_reserved", "memory_stats", "memory_snapshot",
    # the stack reached through the standard library's reports (a log record's caller and stack, a
    # warning's stack level read back through its filters or record), and the recursion room left
    "findCaller", "stack_info", "stacklevel", "catch_warnings", "filterwarnings", "simplefilter", "showwarning",
    "formatwarning", "_showwarnmsg", "_showwarnmsg_impl", "resetwarnings", "warn_explicit", "getrecursionlimit",
    "setrecursionlimit", "RecursionError", "_getframemodulename", "addaudithook", "audit", "monitoring",
    "dump_traceback", "dump_traceback_later", "format_exc", "print_exc", "format_exception", "print_exception",
    "print_last", "__hash__", "__repr__", "faulthandler", "tracemalloc",
    # torch's process-wide state (random generators, defaults, thread and printing settings: each a
    # counter a forward could keep, or a setting it could read), an lru_cache's hit counters, the
    # attributes of an object or tensor read as a dict, and a view's own flag
    "manual_seed", "initial_seed", "seed", "get_rng_state", "set_rng_state", "fork_rng", "default_generator",
    "set_default_dtype", "get_default_dtype", "set_default_device", "get_default_device", "set_default_tensor_type",
    "use_deterministic_algorithms", "are_deterministic_algorithms_enabled", "set_num_threads", "set_num_interop_threads",
    "get_num_interop_threads", "set_printoptions", "set_flush_denormal", "set_warn_always", "is_warn_always_enabled",
    "cache_info", "cache_clear", "cache_parameters", "__dict__", "_is_view", "seterr", "geterr", "seterrcall",
    "geterrcall", "errstate", "get_printoptions", "printoptions",
    # logging's registry and settings (each a place to count in), and its records' clock
    "getLogger", "manager", "loggerDict", "setLevel", "addHandler", "removeHandler", "addFilter", "removeFilter",
    "disable", "basicConfig", "setLoggerClass", "setLogRecordFactory", "getLogRecordFactory", "captureWarnings",
    "makeLogRecord", "LogRecord", "created", "msecs", "relativeCreated", "_startTime", "formatTime", "converter",
    "callHandlers", "profiler", "record_function", "_record_function_enter", "_record_function_enter_new",
    # an object's own torch protocol: it runs inside every torch call it is an argument of, where the
    # recording function mode is popped
    "__torch_function__", "__torch_dispatch__",
    # registries a call can add to (an ABC's, a singledispatch function's, torch's hook handles) and
    # torch's C++ settings and backend flags: counters behind a call, in state no fingerprint reads
    "register", "registry", "dispatch_cache", "_abc_registry", "_abc_data", "_abc_cache", "_abc_negative_cache",
    "RemovableHandle", "next_id", "_C", "backends", "getcontext", "setcontext", "localcontext",
    # storages made in the forward: their bytes as they were left (a freed tensor's values among them),
    # outside the dispatcher the comparison records (see _uninitialised_makers for numpy's)
    "UntypedStorage", "TypedStorage", "_UntypedStorage", "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage",
    "ByteStorage", "CharStorage", "ShortStorage", "IntStorage", "LongStorage", "BoolStorage",
    # numpy's array constructors called directly (``np.ndarray(shape)`` hands out memory as it was left;
    # an array merely held by a module reaches the type without naming it, and is not refused)
    "ndarray", "recarray",
})


# parts of names by which torch's mode stacks and dispatch state are read (there are many:
# ``_len_torch_dispatch_stack``, ``any_torch_dispatch_mode_on_stack``, ``_pop_mode_temporarily``, …)
_PROBE_PARTS = re.compile(r"torch_dispatch|dispatch_mode|dispatch_stack|dispatch_key|dispatch_tls|torch_function|function_mode|mode_stack|current_modes|mode_temporarily|_tls\b|_tls_|^register_.*hook|^_jit_")


def _asks_how_it_runs(cls: type, classes: tuple[type, ...] = (), instances: tuple[object, ...] = ()) -> str | None:
    """What the ``forward`` of a module class defined outside torch reaches that asks how it runs, or
    None: a name of :data:`_MODE_PROBES` (or with a part of :data:`_PROBE_PARTS`) in its code, one of
    those objects under any name (:func:`_probe_objects`: clocks, ``id``, ``hash``, …), threads or
    processes (:func:`_concurrent`), TorchScript or compiled code (:func:`_compiled`), a module that
    inspects the running program (:func:`_inspecting`), anything of the standard library, the
    builtins or the numerical libraries outside their allow-lists (:func:`_not_allowed`: process
    state), a ``try``/``except`` or a swallowing context manager (:func:`_catches`,
    :func:`_suppressing_exit`), a model module held outside the model, or more than
    :attr:`_Reach.LIMIT` objects. A forward that asks whether it is being traced, or in which mode
    it runs, can differ between the trace and the measured evaluation anywhere, even between the
    points where the two are compared.

    What it reaches, transitively (:class:`_Reach`): the code of the forward and of the class's
    attribute hooks (``__getattr__``, …); from code, the globals it reads, the modules it imports
    inside, its closure cells, default arguments, and the attributes it reads (``self._look()``,
    ``helper.look(p)``, ``pkg.helpers.look``) of the model's classes and module instances and of the
    modules, classes and objects reached; from a class, everything in its namespace; from an object,
    its class and attributes; from a container, its items; through ``staticmethod``, ``classmethod``,
    bound methods, properties, ``functools.partial`` and ``__wrapped__`` (``lru_cache``,
    ``functools.wraps``). Names built at run time (``getattr`` with computed strings, ``eval``) are
    not followed."""
    walked = _walked(cls, classes, instances)
    return None if walked is None else walked[0]


def _walked(cls: type, classes: tuple[type, ...], instances: tuple[object, ...]) -> tuple[str | None, _Reach] | None:
    """The walk of what the ``forward`` of a module class defined outside torch reaches (and of the
    class's attribute hooks): (why it is refused or None, the walk); None for torch's classes and
    forwards that are not Python functions."""
    if str(cls.__module__).startswith("torch."):
        return None
    forward = getattr(cls, "forward", None)
    if not isinstance(forward, types.FunctionType):
        return None
    hooks = [v for c in cls.__mro__ if _user_class(c) for k, v in _namespace(c).items() if k in _ATTRIBUTE_HOOKS]
    reach = _Reach((cls, *classes), instances)
    return reach.walk([forward, *hooks]), reach


# the class hooks that run without being named (attribute access)
_ATTRIBUTE_HOOKS = frozenset({"__getattr__", "__getattribute__", "__setattr__", "__delattr__"})


class _Reach:
    """One walk of what a forward reaches (see :func:`_asks_how_it_runs`), at most ``LIMIT`` objects."""

    LIMIT = 4096

    def __init__(self, classes: tuple[type, ...], instances: tuple[object, ...]):
        self.spaces: list = [c for c in classes if _user_class(c)] + list(instances)  # where attribute names are looked up
        self.instances = instances  # the model's own modules
        self.torch_spaces: list = []  # torch's modules reached: places for state only
        self.deferred: str | None = None  # a reason reported only when nothing more specific is found
        self.attrs: dict[str, None] = {}  # the attribute names read, in the order first read
        self.looked = (0, 0)  # spaces[:i] × attrs[:j] are looked up already
        self.seen: dict[int, bool] = {}  # id → reached only through a library's fields
        self.kept: list = []  # every object seen stays alive, so that ids are not reused during the walk
        self.places: list[tuple[str, Callable[[], object]]] = []  # where the forward can keep state (see places())
        self.scopes: dict[int, tuple[str, dict, set[str]]] = {}  # global namespaces: (module, namespace, names used)

    def walk(self, start: list) -> str | None:
        # (object, reached through a library object's fields): a library's own bookkeeping (a
        # logger's caches) is not where a forward keeps state, and changes as other code runs
        todo = [(o, False) for o in start]
        while todo:
            if len(self.seen) >= self.LIMIT:  # unchecked beyond: refused rather than passed
                return f"more than {self.LIMIT} objects (not all of them checked)"
            obj, library = todo.pop()
            before = self.seen.get(id(obj))
            if before is not None and (library or not before):  # seen already (and not only through a library's fields)
                continue
            self.seen[id(obj)] = library
            self.kept.append(obj)
            hit = self._refused(obj, library)
            if hit is not None:
                return hit
            found = self._parts(obj, library)
            if isinstance(found, str):
                return found
            todo.extend(found)
            todo.extend((o, False) for o in self._resolve())
        return self.deferred

    def _refused(self, obj: object, library: bool = False) -> str | None:
        # every test reads ``type(obj)``: nothing here runs code of the object's own (a ``__class__``
        # property, ``__getattr__``), which could tell the forward that it is being checked.
        # ``library``: reached only through a library object's fields (``logging.Formatter.converter``
        # is ``time.localtime``): the forward can use it only by naming it, which reaches it again
        t = type(obj)
        probe = _probe_objects().get(id(obj))
        if probe is not None and probe[0] is obj and not library:
            return probe[1]
        if t in (operator.attrgetter, operator.methodcaller):  # names held by a C callable
            hit = next((c for c in re.findall(r"'([^']*)'", t.__repr__(obj)) if _names_probe(c)), None)
            if hit is not None:
                return hit
        if _concurrent(obj):
            return f"{_name_of(obj)} (threads or processes)"
        if t is types.FunctionType and {"registry", "dispatch"} <= (instance_dict(obj) or {}).keys():
            return f"{_name_of(obj)}, a singledispatch function (its registry is state a call can add to)"
        if t.__name__ == "_lru_cache_wrapper" and _module_of(t) == "functools":
            return f"{_name_of(obj)}, a cached function (what it returns is kept between calls, where no comparison looks)"
        if _compiled(obj):
            return f"{_name_of(obj)} (TorchScript or compiled code)"
        if _inspecting(obj) and not library:
            why = f"{_name_of(obj)} (a module that inspects the running program: the stack, memory, references or time)"
            if not issubclass(t, types.ModuleType):
                return why
            self.deferred = self.deferred or why  # the module itself: what it uses of it is more telling
        if not library:  # reached by name: the standard library's and well-known libraries' objects must be allowed
            why = _not_allowed(obj)
            if why is not None:
                if not issubclass(t, types.ModuleType):
                    return why
                self.deferred = self.deferred or why  # the module itself: what it uses of it is more telling
        if issubclass(t, nn.Module) and not any(obj is m for m in self.instances):
            return (f"a {t.__name__} module outside the model (a global or a container holding a model: the curve and "
                    "this check run copies, which a forward can tell from the original by identity)")
        return None

    def _parts(self, obj: object, library: bool) -> list | str:
        t = type(obj)
        if library and (t is types.FunctionType or issubclass(t, type)):
            # code reached only through a library's bookkeeping (a log handler of another package): what
            # the library runs on the forward's behalf is outside this walk (see the README's limits)
            return []
        if t is types.FunctionType:
            root = str(obj.__module__ or "").split(".")[0]
            if root == "torch" or root in sys.stdlib_module_names or root in _IDENTITY_ONLY:  # checked by identity only
                return []
            if _library_code(obj):  # a library's wrapper (``functools.wraps`` gave it the user's module name):
                wrapped = (instance_dict(obj) or {}).get("__wrapped__")  # what it wraps is the user's
                return [] if wrapped is None else [(wrapped, library)]
            found = self._function(obj)
            return found if isinstance(found, str) else [(o, False) for o in found]
        if t in (staticmethod, classmethod):
            self._own_attributes(obj, library)
            return [(obj.__func__, library)]
        if t is types.MethodType:  # a bound method: its function and the object it is bound to
            return [(obj.__func__, library), (obj.__self__, library)]
        if t is property:
            return [(f, library) for f in (obj.fget, obj.fset, obj.fdel) if f is not None]
        if t is functools.partial:
            self._own_attributes(obj, library)
            return [(o, library) for o in (obj.func, *obj.args, *obj.keywords.values(), *(instance_dict(obj) or {}).values())]
        if issubclass(t, types.ModuleType):
            if _module_of(obj).split(".")[0] != "torch":  # the standard library's too (``inspect.stack``: by identity)
                self.spaces.append(obj)
                # a module's own __getattr__ (PEP 562) answers the names its namespace lacks, by code of its own
                d = instance_dict(obj) or {}
                return [(d[k], library) for k in ("__getattr__", "__dir__") if k in d]
            # torch's: not searched for code (its functions are checked by identity), but a place for state
            self.torch_spaces.append(obj)
            return []
        if issubclass(t, type):
            if not _user_class(obj):
                if _module_of(obj) != "builtins":  # a library's class (``nn.Linear.calls += 1``)
                    self.places.append((f"the attributes of class {obj.__qualname__}", functools.partial(_namespace, obj)))
                return []
            self.spaces.append(obj)
            self.places.append((f"the attributes of class {obj.__qualname__}", functools.partial(_namespace, obj)))
            if self.deferred is None:
                self.deferred = _suppressing_exit(obj)
            meta = [(t, False)] if _user_class(t) else []  # a metaclass's hooks (``__instancecheck__``)
            return [*meta, *((v, False) for c in obj.__mro__ if _user_class(c) for v in _namespace(c).values())]
        if t is types.BuiltinFunctionType or t is types.MethodWrapperType:  # a bound builtin method: its object
            owner = getattr(obj, "__self__", None)
            return [] if owner is None or issubclass(type(owner), types.ModuleType) else [(owner, library)]
        if _user_class(t) and {"__torch_function__", "__torch_dispatch__"} & _NAMESPACE.__get__(t).keys():
            return f"{t.__qualname__}, a class with its own torch protocol (__torch_function__ runs where no mode records)"
        # a container's items, every one (the walk's own limit refuses what is too large to check), and
        # the class of a user's container type: its own __getitem__ or __lt__ runs on every read
        own_class = [(t, library)] if _user_class(t) else []
        if issubclass(t, (dict, types.MappingProxyType)):
            if issubclass(t, dict) and not library:
                self.places.append((f"a dict it reaches (keys {_keys(obj)})", functools.partial(_itself, obj)))
            if (dict.__len__(obj) if issubclass(t, dict) else len(obj)) > self.LIMIT:
                return f"a dict of more than {self.LIMIT} entries (not all of them checked)"
            items = list(dict.items(obj)) if issubclass(t, dict) else list(obj.items())
            # keys too: a dict keyed by a model object is a test of its identity
            return [*own_class, *((o, library) for kv in items for o in kv if type(o) not in _IMMUTABLE)]
        if issubclass(t, (list, tuple, set, frozenset)):
            if issubclass(t, (list, set)) and not library:
                self.places.append((f"a {t.__name__} it reaches", functools.partial(_itself, obj)))
            base = next(b for b in (list, tuple, set, frozenset) if issubclass(t, b))
            return [*own_class, *((o, library) for o in list(base.__iter__(obj)) if type(o) not in _IMMUTABLE)]
        if issubclass(t, nn.Module):  # one of the model's modules: its class's code
            return [(t, False)] if _user_class(t) else []
        if issubclass(t, torch.Tensor):  # a tensor a forward can count in (in place, or in its attributes)
            if not library:
                self.places.append(("a tensor it reaches", functools.partial(_itself, obj)))
            return []
        # read without running the object's own code (``__getattr__``, properties): a hook run by
        # this walk could tell the forward that it is being checked
        own = instance_dict(obj)
        wrapped = own.get("__wrapped__") if own is not None else None
        if wrapped is not None:
            return [(wrapped, library)]
        if own is not None or _slots(t):
            # an object (a user's, or a namespace of the standard library's): its attributes, and its class
            self.spaces.append(obj)
            # a library's container or callable (a ChainMap) hands out what it holds without a name, and
            # so does any library object but logging's and warnings' (a ``contextlib.nullcontext(box)``
            # hands ``box`` to ``with``): only their bookkeeping (a logger's caches, its manager's
            # registry, which change as other code runs) is not a place where a forward keeps state
            mine = _user_class(t) or t in _NAMESPACES or _hands_out(t) or _module_of(t).split(".")[0] not in _BOOKKEEPING
            if mine and not library:
                self.places.append((f"the attributes of a {t.__qualname__} object it reaches", functools.partial(object_fields, obj)))
            fields = object_fields(obj) or {}
            if len(fields) > self.LIMIT:
                return f"a {t.__qualname__} object of more than {self.LIMIT} attributes (not all of them checked)"
            return [*own_class, *((v, library or not mine) for v in fields.values() if type(v) not in _IMMUTABLE)]
        if not library and (t is types.GeneratorType or not _user_class(t) and _counts_by_repr(obj)):
            self.places.append((f"a {t.__name__} it reaches", functools.partial(_itself, obj)))
        elif not library and t is not types.GeneratorType and _in_mro(t, "__next__"):
            return f"a {t.__name__}, an iterator whose position no comparison can read"
        return own_class  # an object of a user's class without fields (a float subclass): its class's code

    def _own_attributes(self, obj: object, library: bool) -> None:
        """A function's or wrapper's own attributes (``f.calls += 1``): a place for state."""
        if not library and instance_dict(obj) is not None:
            label = getattr(obj, "__qualname__", type(obj).__name__)
            self.places.append((f"the attributes of {label}", functools.partial(_attributes, obj)))

    def _function(self, fn: types.FunctionType) -> list | str:
        scope = fn.__globals__
        builtins_ = scope.get("__builtins__", {})
        builtins_ = builtins_ if type(builtins_) is dict else instance_dict(builtins_) or {}
        found: list = [*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values(), *(instance_dict(fn) or {}).values()]
        label = getattr(fn, "__qualname__", "a function")
        self.places.append((f"the default arguments of {label}", functools.partial(_defaults, fn)))
        self._own_attributes(fn, False)
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            self.places.append((f"the variable {name!r} that {label} closes over", functools.partial(_cell, cell)))
            try:
                found.append(cell.cell_contents)
            except ValueError:  # an empty cell
                pass
        used = self.scopes.setdefault(id(scope), (str(scope.get("__name__", "?")), scope, set()))[2]
        codes = [fn.__code__]
        while codes:
            code = codes.pop()
            # a probe by name, by a part of its name, named in a string (``getattr(torch._C,
            # "_len_torch_dispatch_stack")``) or as a keyword argument (``log.debug(m, stack_info=True)``:
            # a tuple of names among the constants); the most specific one is reported (``_C`` last)
            strings = [c for c in code.co_consts if type(c) is str]
            strings += [n for c in code.co_consts if type(c) is tuple for n in c if type(n) is str]
            hits = [*_MODE_PROBES.intersection(code.co_names), *(n for n in code.co_names if _PROBE_PARTS.search(n)),
                    *(c for c in strings if _names_probe(c))]
            if hits:
                return min(hits, key=lambda n: (-len(n), n))
            if self.deferred is None:  # reported only when nothing more specific is found
                self.deferred = _catches(code)
            codes.extend(k for k in code.co_consts if isinstance(k, types.CodeType))
            for ins in dis.get_instructions(code):
                kind = _NAME_USES.get(ins.opname)
                if kind is None or not isinstance(ins.argval, str):
                    continue
                if kind == "global":
                    used.add(ins.argval)
                    if ins.argval in scope:
                        found.append(scope[ins.argval])
                    elif ins.argval in builtins_:  # ``id``, ``hash``: checked by identity
                        found.append(builtins_[ins.argval])
                elif kind == "store":  # ``global n; n += 1``: a name of the module's namespace it writes
                    used.add(ins.argval)
                elif kind == "import":
                    if ins.argval in sys.modules:
                        found.append(sys.modules[ins.argval])
                else:
                    self.attrs[ins.argval] = None
        return found

    def state_places(self) -> list[tuple[str, Callable[[], object]]]:
        """Every place reached where the forward can keep state between calls: the global names its
        code reads or writes (in each module namespace), the variables it closes over, its default
        arguments, and the classes, objects, lists, sets and dicts it reaches, and the attributes it
        names of the modules it reaches. Each as (description, a function that returns its value
        now, without running the object's own code)."""
        out = []
        for module, scope, names in self.scopes.values():
            out += [(f"the global {name!r} of {module}", functools.partial(_entry, scope, name)) for name in sorted(names)]
        spaces = [s for s in self.spaces if issubclass(type(s), types.ModuleType)]
        torch_spaces = list(self.torch_spaces)
        for space in torch_spaces:  # torch's modules named through torch's (``torch.nn``), and the classes named in them
            d = instance_dict(space) or {}
            for name in self.attrs:
                v = d.get(name)
                if issubclass(type(v), types.ModuleType) and _module_of(v).startswith("torch") and v not in torch_spaces:
                    torch_spaces.append(v)
                elif issubclass(type(v), type):
                    out.append((f"the attributes of class {v.__qualname__}", functools.partial(_namespace, v)))
        for space in spaces + torch_spaces:
            d = instance_dict(space) or {}
            out += [(f"{_module_of(space)}.{name}", functools.partial(_entry, d, name)) for name in self.attrs]
        return out + self.places

    def _resolve(self) -> list:
        """The attribute names read so far, looked up in every space found so far (new pairs only:
        the new spaces with every name, the old spaces with the new names)."""
        i, j = self.looked
        names = list(self.attrs)
        pairs = [(space, name) for space in self.spaces[i:] for name in names]
        pairs += [(space, name) for space in self.spaces[:i] for name in names[j:]]
        self.looked = (len(self.spaces), len(names))
        out = []
        for space, name in pairs:
            try:
                out.append(inspect.getattr_static(space, name))
            except AttributeError:
                continue
        return out


_ABSENT = "<absent>"


def _itself(obj: object) -> object:
    return obj


def _entry(space: dict, name: str) -> object:
    return space.get(name, _ABSENT)


def _cell(cell: types.CellType) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return _ABSENT


def _defaults(fn: types.FunctionType) -> object:
    return (fn.__defaults__, fn.__kwdefaults__)


def _attributes(obj: object) -> object:
    return dict(instance_dict(obj) or {})


_NAMESPACE = type.__dict__["__dict__"]  # a class's own namespace, read past any metaclass hook
_TYPE_MODULE = type.__dict__["__module__"]  # a class's module (C types' too)


def _namespace(cls: type) -> dict:
    return dict(_NAMESPACE.__get__(cls))


def _keys(d: dict) -> str:
    keys = [repr(k) for k in list(d)[:3] if isinstance(k, str)]
    return ", ".join(keys) + (", …" if len(d) > 3 else "") if keys else f"{len(d)} entries"


def instance_dict(obj: object) -> dict | None:
    """``obj.__dict__`` read through the C descriptor of its class, running none of the object's own
    code (``__getattribute__``, ``__getattr__``, a ``__dict__`` property: None then)."""
    t = type(obj)
    for c in t.__mro__:
        d = _NAMESPACE.__get__(c)
        if "__dict__" in d:
            desc = d["__dict__"]
            if type(desc) not in (types.GetSetDescriptorType, types.MemberDescriptorType):
                return None
            try:
                v = desc.__get__(obj, t)
            except Exception:  # noqa: BLE001
                return None
            return v if type(v) is dict else None
    return None


def _slots(t: type) -> list[tuple[str, object]]:
    """The ``__slots__`` fields of a user class (name, C member descriptor)."""
    out = []
    for c in t.__mro__:
        if not _user_class(c):
            continue
        d = _NAMESPACE.__get__(c)
        for name in d.get("__slots__", ()) if not isinstance(d.get("__slots__"), str) else (d["__slots__"],):
            desc = d.get(name)
            if type(desc) is types.MemberDescriptorType:
                out.append((name, desc))
    return out


def object_fields(obj: object) -> dict | None:
    """An object's attributes (its ``__dict__`` and ``__slots__`` fields), read without running its
    own code; None when it has neither."""
    own = instance_dict(obj)
    slots = _slots(type(obj))
    if own is None and not slots:
        return None
    out = dict(own or {})
    for name, desc in slots:
        try:
            out[name] = desc.__get__(obj, type(obj))
        except AttributeError:  # an unset slot
            out[name] = _ABSENT
    return out


_IMMUTABLE = frozenset({int, float, complex, bool, str, bytes, type(None), range, slice, type(Ellipsis), type(NotImplemented)})


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def state_repr(obj: object) -> str | None:
    """The repr of an object whose type shows its state there (``itertools.count(3)``, a deque), by
    the type's own ``__repr__``, its addresses masked (a deque of objects still shows how many it
    holds), a long one by a hash of it; None where the repr is nothing but the object's own address
    (no state shown), or fails."""
    try:
        r = type(obj).__repr__(obj)
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(r, str):
        return None
    if r.startswith("<") and r.endswith(">") and r.count(" at 0x") == 1 and r.rstrip(">").split(" at 0x")[1].isalnum():
        return None  # "<foo object at 0x…>": the default repr, which shows no state
    r = _ADDRESS.sub("0x?", r)
    return r if len(r) < 100_000 else "sha256:" + hashlib.sha256(r.encode("utf-8", "surrogatepass")).hexdigest()


def _counts_by_repr(obj: object) -> bool:
    """Whether an object of a C type shows its state in its repr (and has any state to show)."""
    t = type(obj)
    if t in _IMMUTABLE or issubclass(t, (types.BuiltinFunctionType, types.FunctionType, types.MethodType, type,
                                         types.ModuleType, torch.dtype, torch.device)):
        return False
    return state_repr(obj) is not None


def reached_state(model: nn.Module) -> tuple[str | None, list[tuple[str, Callable[[], object]]]]:
    """Where the ``forward`` of ``model``'s module classes defined outside torch can keep state
    between calls (:meth:`_Reach.state_places`, one walk per class): each as (description, a function
    that returns its value now). A forward that changes one of them when it runs can count its calls,
    and so compute one thing when its trace is compared with it and another when the curve runs it
    (:mod:`.fidelity` compares them before and after it runs). With the first reason a walk refuses
    the forward for (:func:`_asks_how_it_runs`; None if none): ``model`` is the copy that runs, so
    the caller's own modules held in globals are outside it."""
    classes = tuple({type(m) for m in model.modules()})
    instances = tuple(model.modules())
    out: list[tuple[str, Callable[[], object]]] = []
    refused: str | None = None
    for cls in classes:
        walked = _walked(cls, classes, instances)
        if walked is None:
            continue
        why, reach = walked
        if why is not None and refused is None:
            refused = f"{cls.__name__} reads {why}"
        out += reach.state_places()
    return refused, out


# bytecode operations by the kind of name they use (Python 3.10–3.13)
_NAME_USES = {"LOAD_GLOBAL": "global", "LOAD_NAME": "global", "LOAD_ATTR": "attr", "LOAD_METHOD": "attr",
              "LOAD_SUPER_ATTR": "attr", "IMPORT_NAME": "import", "IMPORT_FROM": "attr", "STORE_GLOBAL": "store",
              "DELETE_GLOBAL": "store", "STORE_NAME": "store", "DELETE_NAME": "store", "STORE_ATTR": "attr",
              "DELETE_ATTR": "attr"}


def _names_probe(text: str) -> bool:
    """Whether a string names a probe (``"_len_torch_dispatch_stack"``, ``"_C._len_torch_dispatch_stack"``)."""
    if len(text) > 200 or not _DOTTED.fullmatch(text):  # a name or a dotted path, not prose (docstrings, messages)
        return False
    return any(part in _MODE_PROBES or _PROBE_PARTS.search(part) for part in text.split("."))


_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _library_code(fn: types.FunctionType) -> bool:
    """Whether ``fn``'s code is that of a module of the standard library, torch or an identity-checked
    library: its globals are that module's and its code comes from that module's file. A wrapper a
    library makes (``dataclasses``' recursion guard around a generated ``__repr__``) carries the
    user's ``__module__``, copied by ``functools.wraps``, and its own module's globals (``_thread``);
    code compiled by a user against a library's namespace (``exec(code, vars(dataclasses))``) does
    not come from that module's file."""
    name = str(fn.__globals__.get("__name__", ""))
    root = name.split(".")[0]
    if not (root == "torch" or root in sys.stdlib_module_names or root in _IDENTITY_ONLY):
        return False
    module = sys.modules.get(name)
    path = (instance_dict(module) or {}).get("__file__") if module is not None else None
    return type(path) is str and fn.__code__.co_filename == path


def _user_class(c: object) -> bool:
    """A class defined outside torch and the standard library (``object`` and builtins excluded)."""
    if not isinstance(c, type):
        return False
    name = _TYPE_MODULE.__get__(c)  # read past any metaclass hook
    name = (name if isinstance(name, str) else "").split(".")[0]
    return name not in ("torch", "builtins") and name not in sys.stdlib_module_names and name not in _IDENTITY_ONLY


@functools.lru_cache(maxsize=1)
def _probe_objects() -> dict[int, tuple[object, str]]:
    """The objects behind the probe names, wherever torch and the standard library define them (by
    id, with the object and its name): a forward that reaches one under another name
    (``from torch._C import _len_torch_dispatch_stack as depth``) asks the same question."""
    import ctypes
    import datetime
    import gc
    import os
    import time
    import timeit
    import traceback
    import weakref

    spaces = [torch, torch._C, torch.overrides, torch.fx, torch.jit, torch.compiler, torch.autograd, sys, inspect, gc, weakref,  # noqa: SLF001
              ctypes, traceback, time, os, datetime, timeit, torch.cuda]
    for mod in ("torch.utils._python_dispatch", "torch.fx._symbolic_trace", "torch._C._functorch", "torch._jit_internal",
                "torch.utils.dlpack", "torch._dynamo", "resource", "tracemalloc", "psutil"):
        if mod in sys.modules:
            spaces.append(sys.modules[mod])
    out: dict[int, tuple[object, str]] = {}
    for space, names in ((inspect, ("stack", "trace", "getinnerframes", "getouterframes", "currentframe", "getframeinfo")),
                         (traceback, ("extract_stack", "walk_stack", "format_stack", "print_stack", "extract_tb", "walk_tb",
                                      "format_tb", "print_tb", "TracebackException", "StackSummary", "FrameSummary")),
                         (sys, ("_getframe", "_current_frames", "exc_info", "exception", "settrace", "setprofile")),
                         (time, ("time", "localtime", "gmtime", "ctime", "asctime", "strftime")), (os, ("times",))):
        for name in names:
            obj = getattr(space, name, None)
            if obj is not None:
                out.setdefault(id(obj), (obj, f"{space.__name__}.{name}"))
    import builtins
    import contextlib

    for obj, name in ((builtins.id, "id"), (builtins.hash, "hash"), (object.__repr__, "object.__repr__"),
                      (object.__hash__, "object.__hash__"), (contextlib.suppress, "contextlib.suppress"),
                      (contextlib.ExitStack, "contextlib.ExitStack"), (contextlib.AsyncExitStack, "contextlib.AsyncExitStack")):
        out.setdefault(id(obj), (obj, name))
    for space in spaces:
        for name in dir(space):
            if name in _MODE_PROBES or _PROBE_PARTS.search(name):
                obj = getattr(space, name, None)
                if obj is not None and not isinstance(obj, (bool, int, float, str, types.ModuleType)):
                    out.setdefault(id(obj), (obj, name))
    return out


def _compiled(obj: object) -> bool:
    """TorchScript functions and modules, and ``torch.compile``'d callables: code that reads tensor
    values (``tolist`` in TorchScript) without passing through torch's dispatcher or Python modes."""
    jit = (torch.jit.ScriptFunction, torch.jit.ScriptModule, torch._C.ScriptMethod)  # noqa: SLF001
    t = type(obj)
    if issubclass(t, jit):
        return True
    # read without running the object's own ``__getattr__`` (a hook run by this check would tell the
    # forward that it is being checked)
    return "_torchdynamo_orig_callable" in (instance_dict(obj) or {}) or t.__name__ == "OptimizedModule"


def analyse(model: nn.Module) -> PathStructure:
    """Trace ``model`` and classify the path it gives (never raises; UNKNOWN says why).

    The model is not modified (tracing only reads it).

    >>> analyse(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1, bias=False))).kind.value
    'polynomial'
    >>> analyse(nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))).kind.value
    'smooth'
    >>> analyse(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))).kind.value
    'piecewise_smooth'
    """
    reason = opaque_call_reason(model)
    if reason is not None:
        return PathStructure(PathKind.UNKNOWN, reason)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():  # the mode every evaluation runs in (a forward may read it)
                graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # any failure to trace means we cannot tell what the model computes
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return PathStructure(PathKind.UNKNOWN, f"torch.fx could not trace the model ({type(exc).__name__}: {msg})")
    modules = dict(model.named_modules())
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]

    # classify every operation by the one table (mli_theory.path.smoothness), for its parameters
    varying = varying_nodes(graph, model)
    least, culprit = Smoothness.SMOOTH, None
    for node in nodes:
        if node.op in ("placeholder", "output"):
            continue
        verdict, label = classify_node(node, modules, varying)
        if verdict.smoothness == Smoothness.UNKNOWN:
            why = "" if verdict.why.startswith("no smoothness rule") else f" ({verdict.why})"
            return PathStructure(PathKind.UNKNOWN, f"no smoothness rule for the operation {label}{why}", smoothness=Smoothness.UNKNOWN)
        if verdict.smoothness < least:
            least, culprit = verdict.smoothness, (label, verdict.why)
    if least == Smoothness.DISCONTINUOUS:
        return PathStructure(
            PathKind.UNKNOWN, f"traced: z(α) may be discontinuous at {culprit[0]}: {culprit[1]}", smoothness=least
        )

    # is it a plain chain of module calls?
    chain: tuple[str, ...] | None = None
    body = [n for n in nodes if n.op not in ("placeholder", "output")]
    outputs = [n for n in nodes if n.op == "output"]
    if len(placeholders) == 1 and len(outputs) == 1 and all(n.op == "call_module" for n in body):
        prev, ok = placeholders[0], True
        for n in body:
            if n.args != (prev,) or n.kwargs or len(prev.users) != 1:
                ok = False
                break
            prev = n
        if ok and outputs[0].args == (prev,) and len(prev.users) == 1:
            chain = tuple(n.target for n in body)
    if chain is not None and chain:
        mods = [modules[name] for name in chain]
        linear = tuple((name, m.bias is not None) for name, m in zip(chain, mods) if type(m) is nn.Linear)
        if linear and all(type(m) is nn.Linear or type(m) in _CHAIN_PASSTHROUGH or _flattens_rows(m) for m in mods):
            return PathStructure(
                PathKind.POLYNOMIAL,
                f"traced: a chain of {len(linear)} affine layer(s); outputs are polynomials of degree ≤ {len(linear)} in α",
                chain,
                linear,
                Smoothness.SMOOTH,
            )
    if least == Smoothness.C0:
        return PathStructure(
            PathKind.PIECEWISE_SMOOTH,
            f"traced: continuous and piecewise smooth, z′ may jump; first kink at {culprit[0]}: {culprit[1]}",
            chain,
            smoothness=least,
        )
    if least == Smoothness.C1:
        return PathStructure(
            PathKind.PIECEWISE_SMOOTH,
            f"traced: C¹ and piecewise smooth, not C² (z″ may jump) at {culprit[0]}: {culprit[1]}",
            chain,
            smoothness=least,
        )
    return PathStructure(PathKind.SMOOTH, "traced: every operation is smooth", chain, smoothness=Smoothness.SMOOTH)
