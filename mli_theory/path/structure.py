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
import inspect
import operator
import re
import sys
import types
import warnings
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from .pristine import replaced_functions  # imported with the package: the snapshot predates user code
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
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_forward_hooks_always_called"):
        if getattr(module_mod, attr, None):
            return "global module forward hooks are registered"
    classes = tuple({type(m) for m in model.modules()})
    instances = tuple(model.modules())
    walked: set[type] = set()
    for name, m in model.named_modules():
        label = name or "the model"
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


# modules whose threads and processes run outside the calling thread's torch modes (the comparison
# of :mod:`.fidelity` records what the calling thread reads and runs, no other thread's)
_CONCURRENCY_MODULES = frozenset({"threading", "_thread", "concurrent", "multiprocessing", "subprocess", "asyncio", "_posixsubprocess",
                                  "queue", "sched"})


def _concurrent(obj: object) -> bool:
    """Whether ``obj`` is one of :data:`_CONCURRENCY_MODULES` (or torch's multiprocessing), or a
    function, class or instance defined there."""
    if isinstance(obj, types.ModuleType):
        name = obj.__name__
    else:
        name = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", None) or ""
        if not isinstance(name, str):
            return False
    return name.split(".")[0] in _CONCURRENCY_MODULES or name.startswith("torch.multiprocessing")


# class hooks that make a copy of a module differ from it
_COPY_HOOKS = frozenset({"__deepcopy__", "__copy__", "__reduce__", "__reduce_ex__", "__setstate__", "__getstate__"})


def _copied_differently(values: dict, depth: int = 3) -> str | None:
    """An object among ``values`` (and inside them: containers, the attributes of objects of classes
    outside torch and the standard library) whose deep copy runs code of its own: a class that
    defines a copy hook or ``__new__`` (a deep copy calls ``cls.__new__``), or a type registered with
    :mod:`copyreg` or :mod:`copy`. Such a copy can count its generation, and the certifier's
    comparison runs a copy of the copy that the curve runs. Described, or None."""
    import copy as copy_mod
    import copyreg

    todo = [(k, v, depth) for k, v in values.items()]
    seen: set[int] = set()
    while todo and len(seen) < 4096:
        name, obj, left = todo.pop()
        if id(obj) in seen or isinstance(obj, (torch.Tensor, nn.Module)):
            continue
        seen.add(id(obj))
        t = type(obj)
        if _user_class(t):
            if t in copyreg.dispatch_table or t in copy_mod._deepcopy_dispatch:  # noqa: SLF001
                return f"{name!r}, a {t.__name__} registered with copyreg or copy"
            hooks = sorted({k for c in t.__mro__ if _user_class(c) for k in vars(c)} & (_COPY_HOOKS | {"__new__"}))
            if hooks:
                return f"{name!r}, a {t.__name__} whose class defines {hooks[0]}"
            if left and hasattr(obj, "__dict__"):
                todo += [(f"{name}.{k}", v, left - 1) for k, v in vars(obj).items()]
        elif left and isinstance(obj, dict):
            todo += [(f"{name}[{k!r}]", v, left - 1) for k, v in list(obj.items())[:256]]
        elif left and isinstance(obj, (list, tuple, set, frozenset)):
            todo += [(f"{name}[{i}]", v, left - 1) for i, v in enumerate(list(obj)[:256])]
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
})


# parts of names by which torch's mode stacks and dispatch state are read (there are many:
# ``_len_torch_dispatch_stack``, ``any_torch_dispatch_mode_on_stack``, ``_pop_mode_temporarily``, …)
_PROBE_PARTS = re.compile(r"torch_dispatch|dispatch_mode|dispatch_stack|dispatch_key|dispatch_tls|torch_function|function_mode|mode_stack|current_modes|mode_temporarily|_tls\b|_tls_")


def _asks_how_it_runs(cls: type, classes: tuple[type, ...] = (), instances: tuple[object, ...] = ()) -> str | None:
    """What the ``forward`` of a module class defined outside torch reaches that asks how it runs, or
    None: a name of :data:`_MODE_PROBES` (or with a part of :data:`_PROBE_PARTS`) in its code, one of
    those objects under any name (:func:`_probe_objects`), threads or processes (:func:`_concurrent`),
    or TorchScript or compiled code (:func:`_compiled`). A forward that asks whether it is being
    traced, or in which mode it runs, can differ between the trace and the measured evaluation
    anywhere, even between the points where the two are compared.

    What it reaches, transitively (:class:`_Reach`): the code of the forward and of the class's
    attribute hooks (``__getattr__``, …); from code, the globals it reads, the modules it imports
    inside, its closure cells, default arguments, and the attributes it reads (``self._look()``,
    ``helper.look(p)``, ``pkg.helpers.look``) of the model's classes and module instances and of the
    modules, classes and objects reached; from a class, everything in its namespace; from an object,
    its class and attributes; from a container, its items; through ``staticmethod``, ``classmethod``,
    bound methods, properties, ``functools.partial`` and ``__wrapped__`` (``lru_cache``,
    ``functools.wraps``). Names built at run time (``getattr`` with computed strings, ``eval``) are
    not followed."""
    if str(cls.__module__).startswith("torch."):
        return None
    forward = getattr(cls, "forward", None)
    if not isinstance(forward, types.FunctionType):
        return None
    hooks = [v for c in cls.__mro__ if _user_class(c) for k, v in vars(c).items() if k in _ATTRIBUTE_HOOKS]
    return _Reach((cls, *classes), instances).walk([forward, *hooks])


# the class hooks that run without being named (attribute access)
_ATTRIBUTE_HOOKS = frozenset({"__getattr__", "__getattribute__", "__setattr__", "__delattr__"})


class _Reach:
    """One walk of what a forward reaches (see :func:`_asks_how_it_runs`), at most ``LIMIT`` objects."""

    LIMIT = 4096

    def __init__(self, classes: tuple[type, ...], instances: tuple[object, ...]):
        self.spaces: list = [c for c in classes if _user_class(c)] + list(instances)  # where attribute names are looked up
        self.attrs: dict[str, None] = {}  # the attribute names read, in the order first read
        self.looked = (0, 0)  # spaces[:i] × attrs[:j] are looked up already
        self.seen: set[int] = set()
        self.kept: list = []  # every object seen stays alive, so that ids are not reused during the walk

    def walk(self, start: list) -> str | None:
        todo = list(start)
        while todo and len(self.seen) < self.LIMIT:
            obj = todo.pop()
            if id(obj) in self.seen:
                continue
            self.seen.add(id(obj))
            self.kept.append(obj)
            hit = self._refused(obj)
            if hit is not None:
                return hit
            found = self._parts(obj)
            if isinstance(found, str):
                return found
            todo.extend(found)
            todo.extend(self._resolve())
        return None

    @staticmethod
    def _refused(obj: object) -> str | None:
        probe = _probe_objects().get(id(obj))
        if probe is not None and probe[0] is obj:
            return probe[1]
        if isinstance(obj, (operator.attrgetter, operator.methodcaller)):  # names held by a C callable
            hit = next((c for c in re.findall(r"'([^']*)'", repr(obj)) if _names_probe(c)), None)
            if hit is not None:
                return hit
        if _concurrent(obj):
            return f"{getattr(obj, '__name__', type(obj).__name__)} (threads or processes)"
        if _compiled(obj):
            return f"{getattr(obj, '__name__', type(obj).__name__)} (TorchScript or compiled code)"
        return None

    def _parts(self, obj: object) -> list | str:
        if isinstance(obj, types.FunctionType):
            root = str(getattr(obj, "__module__", "") or "").split(".")[0]
            if root == "torch" or root in sys.stdlib_module_names:  # torch's and Python's own: checked by identity only
                return []
            return self._function(obj)
        if isinstance(obj, (staticmethod, classmethod, types.MethodType)):
            return [obj.__func__]
        if isinstance(obj, property):
            return [f for f in (obj.fget, obj.fset, obj.fdel) if f is not None]
        if isinstance(obj, functools.partial):
            return [obj.func, *obj.args, *obj.keywords.values()]
        if isinstance(obj, types.ModuleType):
            if obj.__name__.split(".")[0] != "torch":  # the standard library's too (``inspect.stack``: by identity)
                self.spaces.append(obj)
            return []
        if isinstance(obj, type):
            if not _user_class(obj):
                return []
            self.spaces.append(obj)
            meta = [type(obj)] if _user_class(type(obj)) else []  # a metaclass's hooks (``__instancecheck__``)
            return [*meta, *(v for c in obj.__mro__ if _user_class(c) for v in vars(c).values())]
        if isinstance(obj, (dict, types.MappingProxyType)):
            return list(obj.values())[:256] if len(obj) <= 4096 else []
        if isinstance(obj, (list, tuple, set, frozenset)):
            return list(obj)[:256]
        if isinstance(obj, nn.Module):  # one held outside the module tree (a plain list): its class's code
            return [type(obj)] if _user_class(type(obj)) else []
        wrapped = getattr(obj, "__wrapped__", None) if not isinstance(obj, torch.Tensor) else None
        if wrapped is not None:
            return [wrapped]
        if not isinstance(obj, torch.Tensor) and isinstance(getattr(obj, "__dict__", None), dict):
            # an object (a user's, or a namespace of the standard library's): its attributes, and its class
            self.spaces.append(obj)
            return [*([type(obj)] if _user_class(type(obj)) else []), *list(vars(obj).values())[:256]]
        return []

    def _function(self, fn: types.FunctionType) -> list | str:
        scope = fn.__globals__
        found: list = [*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values()]
        for cell in fn.__closure__ or ():
            try:
                found.append(cell.cell_contents)
            except ValueError:  # an empty cell
                pass
        codes = [fn.__code__]
        while codes:
            code = codes.pop()
            hit = _MODE_PROBES.intersection(code.co_names)
            if hit:
                return sorted(hit)[0]
            hit = next((name for name in code.co_names if _PROBE_PARTS.search(name)), None)
            if hit is not None:
                return hit
            # a probe named in a string (``getattr(torch._C, "_len_torch_dispatch_stack")``)
            hit = next((c for c in code.co_consts if isinstance(c, str) and _names_probe(c)), None)
            if hit is not None:
                return hit
            codes.extend(k for k in code.co_consts if isinstance(k, types.CodeType))
            for ins in dis.get_instructions(code):
                kind = _NAME_USES.get(ins.opname)
                if kind is None or not isinstance(ins.argval, str):
                    continue
                if kind == "global":
                    if ins.argval in scope:
                        found.append(scope[ins.argval])
                elif kind == "import":
                    if ins.argval in sys.modules:
                        found.append(sys.modules[ins.argval])
                else:
                    self.attrs[ins.argval] = None
        return found

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


# bytecode operations by the kind of name they use (Python 3.10–3.13)
_NAME_USES = {"LOAD_GLOBAL": "global", "LOAD_NAME": "global", "LOAD_ATTR": "attr", "LOAD_METHOD": "attr",
              "LOAD_SUPER_ATTR": "attr", "IMPORT_NAME": "import", "IMPORT_FROM": "attr"}


def _names_probe(text: str) -> bool:
    """Whether a string names a probe (``"_len_torch_dispatch_stack"``, ``"_C._len_torch_dispatch_stack"``)."""
    if len(text) > 200 or not _DOTTED.fullmatch(text):  # a name or a dotted path, not prose (docstrings, messages)
        return False
    return any(part in _MODE_PROBES or _PROBE_PARTS.search(part) for part in text.split("."))


_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _user_class(c: object) -> bool:
    """A class defined outside torch and the standard library (``object`` and builtins excluded)."""
    if not isinstance(c, type):
        return False
    name = str(getattr(c, "__module__", "") or "").split(".")[0]
    return name not in ("torch", "builtins") and name not in sys.stdlib_module_names


@functools.lru_cache(maxsize=1)
def _probe_objects() -> dict[int, tuple[object, str]]:
    """The objects behind the probe names, wherever torch and the standard library define them (by
    id, with the object and its name): a forward that reaches one under another name
    (``from torch._C import _len_torch_dispatch_stack as depth``) asks the same question."""
    import ctypes
    import gc
    import traceback
    import weakref

    spaces = [torch, torch._C, torch.overrides, torch.fx, torch.jit, torch.compiler, torch.autograd, sys, inspect, gc, weakref,  # noqa: SLF001
              ctypes, traceback]
    for mod in ("torch.utils._python_dispatch", "torch.fx._symbolic_trace", "torch._C._functorch", "torch._jit_internal",
                "torch.utils.dlpack", "torch._dynamo"):
        if mod in sys.modules:
            spaces.append(sys.modules[mod])
    out: dict[int, tuple[object, str]] = {}
    for space, names in ((inspect, ("stack", "trace", "getinnerframes", "getouterframes", "currentframe", "getframeinfo")),
                         (traceback, ("extract_stack", "walk_stack", "format_stack", "print_stack", "extract_tb", "walk_tb",
                                      "format_tb", "print_tb", "TracebackException", "StackSummary", "FrameSummary")),
                         (sys, ("_getframe", "_current_frames", "exc_info", "exception", "settrace", "setprofile"))):
        for name in names:
            obj = getattr(space, name, None)
            if obj is not None:
                out.setdefault(id(obj), (obj, f"{space.__name__}.{name}"))
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
    if isinstance(obj, jit):
        return True
    return hasattr(obj, "_torchdynamo_orig_callable") or type(obj).__name__ == "OptimizedModule"


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
