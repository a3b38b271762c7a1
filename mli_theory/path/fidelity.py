"""Does the traced graph run what the forward runs? One comparison, operation by operation.

Every certificate is a statement about the model's :mod:`torch.fx` graph: its rules enclose what
the graph's operations compute. The loss curve runs the model's own ``forward``. The two agree at the
α where the certifier compares values (:mod:`mli_theory.certify.validation`), but a forward can
compute something else only inside a narrow window of α that no finite set of points meets: it
reads a tensor's value into Python (``float(p)``, ``.item()``, ``bool(t > c)``, ``.numpy()``) and
branches on it, or it asks whether it is being traced (``isinstance(x, torch.Tensor)`` is False for
an fx proxy; a helper calls ``is_fx_tracing()``) and runs other operations, or other constants, when
it is not. Such a difference cannot be caught by comparing values; it can be by comparing what runs.

:func:`trace_differs` runs the forward and the traced graph once each, on the same state and
inputs, under a dispatch mode that records every operation whose inputs depend on the state or the
inputs ("live" tensors: the floating state entries, the inputs, and every result computed from
them), with its non-live arguments (scalars; constant tensors by shape, dtype and a hash of every
bit), and a function mode that sees every read of a tensor's values into Python. It reports a
difference when the forward

* reads any tensor's values into Python (a scalar conversion, ``bool``, ``.item()``, ``.tolist()``,
  ``.numpy()``, ``__array__``, DLPack, ``data_ptr``, ``apply_``/``map_`` callbacks, ``torch.equal``,
  printing), or runs an operation whose output *shape* depends on values (``nonzero``,
  ``masked_select``, ``unique``, boolean-mask indexing): Python control flow can then depend on α.
  Any tensor, not only live ones: a view made outside the dispatcher (``as_subclass``, a DLPack
  round trip) shares the moving values without being recorded as live;
* goes on after an operation raised an error (a domain check, which depends on values: control flow
  through an exception);
* runs other operations, or other constants, than the traced graph (it found out that it was being
  traced; or it depends on the batch's size, which the trace does not have: the comparison runs on
  the loss curve's own first batch);
* changes a plain Python attribute of one of its modules (a number, a string, a flag, a container of
  them): a call counter. What it computes may then depend on how often it has run.

When none happens, the forward's Python code saw nothing of α but shapes, which do not change along
the line: it runs the same operations, with the same constants, at every α, and they are the traced
graph's. What this does not see: Python state outside the modules (a global variable, the clock)
that changes between calls (:meth:`~mli_theory.certify.validation.Reference.consistency` re-evaluates
a point twice), and a forward that tells this comparison from the curve's evaluation by inspecting
its surroundings (the active torch modes, the call stack): :func:`mli_theory.path.structure.opaque_call_reason`
refuses forwards that name those, and hooks and patched methods; a forward that hides such a
question (a computed attribute name, ``eval``) is outside what any check in Python can settle.
Both modes belong to the calling thread: what another thread reads or runs is not recorded, so a
forward that starts threads or processes is refused there too (a read in a thread of its own gave
a false certificate before).
"""

from __future__ import annotations

import hashlib
import sys
import types
import warnings
import weakref
from typing import Any, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["line_trace_differs", "trace_differs"]

# Tensor methods and functions that hand a tensor's values to Python
_VALUE_READS = frozenset({
    "item", "tolist", "numpy", "__array__", "__float__", "__int__", "__bool__", "__index__", "__complex__",
    "__format__", "__repr__", "__str__", "data_ptr", "untyped_storage", "storage", "_storage", "equal", "allclose",
    "is_nonzero", "__iter__", "__contains__", "apply_", "map_", "map2_", "__dlpack__", "__dlpack_device__",
    "__array_interface__", "__cuda_array_interface__", "__reduce_ex__", "__getstate__", "__setstate__",
    # aliases made outside the dispatcher (their later operations and reads would go unrecorded)
    "as_subclass", "_make_subclass", "_make_wrapper_subclass", "to_dlpack", "_to_dlpack", "from_dlpack",
    "q_scale", "q_zero_point", "q_per_channel_scales", "q_per_channel_zero_points",
})
# aten operations whose result is a Python value, or whose output shape depends on the input's values
_VALUE_OPS = frozenset({
    "_local_scalar_dense", "is_nonzero", "equal", "nonzero", "nonzero_static", "masked_select", "unique_dim",
    "_unique", "_unique2", "unique_consecutive", "argwhere", "_assert_async", "_assert_scalar", "bincount",
    "repeat_interleave", "tensor_split", "q_scale", "q_zero_point", "q_per_channel_scales", "_to_sparse", "to_sparse",
    "_to_sparse_csr", "_to_sparse_csc", "_to_sparse_bsr", "_to_sparse_bsc", "_nnz", "quantize_per_tensor_dynamic",
})
# indexing whose output shape depends on a boolean mask's values
_INDEXING = frozenset({"index", "index_put", "index_put_", "_index_put_impl_", "masked_scatter"})
_MISSING = object()


def _describe(value: Any) -> Any:
    """A comparable description of a non-live argument (tensor constants by content)."""
    if isinstance(value, torch.Tensor):
        if value.is_meta or value.numel() == 0:
            return ("T", tuple(value.shape), str(value.dtype))
        raw = value.detach().reshape(-1).contiguous().cpu().view(torch.uint8)  # every bit of every entry
        return ("T", tuple(value.shape), str(value.dtype), hashlib.sha256(raw.numpy().tobytes()).hexdigest())
    if isinstance(value, (list, tuple)):
        return tuple(_describe(v) for v in value)
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, (int, float, bool, complex, str, type(None))):
        return value
    if isinstance(value, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(value)
    return type(value).__name__  # anything else: by kind


class _Recorder(TorchDispatchMode):
    """Records the operations on live tensors and the reads of their values."""

    def __init__(self, live: list[torch.Tensor]) -> None:
        super().__init__()
        self.span: tuple[int, int] | None = None  # the rows of the batch being run
        self.live_ids: set[int] = {id(t) for t in live}
        self.keep = list(live)  # the seeds stay alive (and their ids theirs) while recording
        self.ops: list[tuple] = []
        self.reads: list[str] = []
        self.raised: list[str] = []  # operations that raised (a forward that catches them branches on values)
        self.changed: list[str] = []  # plain Python attributes of the modules that a call changed

    def seed(self, t: torch.Tensor) -> None:
        """A tensor the caller hands to the forward (a batch): live, kept alive while recording."""
        self.live_ids.add(id(t))
        self.keep.append(t)

    def _mark(self, t: torch.Tensor) -> None:
        """Live from now on; its id is forgotten when it dies (ids are reused), so no reference is kept."""
        if id(t) not in self.live_ids:
            self.live_ids.add(id(t))
            weakref.finalize(t, self.live_ids.discard, id(t))

    def is_live(self, t: object) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self.live_ids

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1] if hasattr(func, "_schema") else str(func)
        try:
            out = func(*args, **kwargs)
        except Exception as exc:
            self.raised.append(f"{name} ({type(exc).__name__})")
            raise
        flat, _ = tree_flatten((args, kwargs))
        if name in _VALUE_OPS and not (name == "_local_scalar_dense" and _batchnorm_counter(tuple(args))):
            self.reads.append(f"{name} (aten)")  # of any tensor: a value reaches Python, or a shape follows values
        elif name in _INDEXING and any(isinstance(a, torch.Tensor) and a.dtype in (torch.bool, torch.uint8) for a in flat):
            self.reads.append(f"{name} with a boolean mask (aten)")
        if any(self.is_live(a) for a in flat):
            self.ops.append((str(func), tuple("live" if self.is_live(a) else _describe(a) for a in flat), self.span))
            for o in tree_flatten(out)[0]:
                if isinstance(o, torch.Tensor):
                    self._mark(o)
        return out


class _Reads(TorchFunctionMode):
    """Records Python-level reads of live values (``.numpy()``, ``.tolist()``, ``float(t)``, …),
    some of which never reach the dispatcher."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _VALUE_READS and not _batchnorm_counter(args):  # of any tensor: one made outside the dispatcher
            self.recorder.reads.append(name)  # (a subclass view, a DLPack round trip) shares the moving values
        return func(*args, **(kwargs or {}))


def _batchnorm_counter(args: tuple) -> bool:
    """Whether this read is torch's own BatchNorm reading its integer counter ``num_batches_tracked``
    (``1 / float(num_batches_tracked)`` with momentum None, as in the curve's re-estimation pass):
    an integer entry, read by pristine torch code (:mod:`.pristine`), never a moving value."""
    if not (len(args) == 1 and isinstance(args[0], torch.Tensor) and not args[0].is_floating_point()
            and not args[0].is_complex() and args[0].numel() == 1):
        return False
    f = sys._getframe(2)
    for _ in range(8):  # the frame that called float() on the counter, past torch's own dispatch helpers
        if f is None:
            return False
        if f.f_code.co_filename == _BATCHNORM_FILE and f.f_code.co_name == "forward":
            return True
        f = f.f_back
    return False


_BATCHNORM_FILE = nn.modules.batchnorm.__file__


# a module's own bookkeeping, not state a forward computes with
_BOOKKEEPING = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_forward_hooks",
                          "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
                          "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks",
                          "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
                          "_is_full_backward_hook"})
_PLAIN = (int, float, bool, str, bytes, type(None))


def _plain(value: Any, depth: int = 0) -> Any:
    """A comparable copy of a value made of numbers, strings and containers of them (None: not such
    a value, and not compared)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, torch.Tensor):  # a tensor kept as a plain attribute: its shape and every bit
        return ("tensor", _describe(value))
    if depth < 3 and isinstance(value, (set, frozenset)):
        return (type(value).__name__, tuple(sorted(repr(_plain(v, depth + 1)) for v in value)))
    if depth < 3 and isinstance(value, (list, tuple)):
        items = [_plain(v, depth + 1) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value)) else (type(value).__name__, tuple(items))
    if depth < 3 and isinstance(value, dict):
        items = {k: _plain(v, depth + 1) for k, v in value.items() if isinstance(k, _PLAIN)}
        return ("dict", tuple(sorted((repr(k), v) for k, v in items.items())))
    # an object that is neither a module nor a tensor nor code (a namespace, a dataclass, a user
    # object): its attributes, which a forward can keep a counter in as well
    if (depth < 3 and hasattr(value, "__dict__") and not isinstance(value, (nn.Module, type, types.ModuleType))
            and not callable(value)):
        return (type(value).__qualname__, _plain(dict(vars(value)), depth + 1))
    return None


def _python_state(module: nn.Module) -> dict[str, Any]:
    """The plain Python attributes of every submodule (a call counter, a cached length, a flag)."""
    out: dict[str, Any] = {}
    for name, m in module.named_modules(remove_duplicate=False):
        for k, v in vars(m).items():
            if k not in _BOOKKEEPING:
                p = _plain(v)
                if p is not None:
                    out[f"{name + '.' if name else ''}{k}"] = p
    return out


def _run(module: nn.Module, state: Mapping[str, torch.Tensor], x: Any, spans: list[tuple[int, int]], train: bool) -> _Recorder:
    """The module on every batch ``x[lo:hi]`` of ``spans`` (views of a private copy of ``x`` when it is
    a tensor, as the curve hands its batches over), one recorder for all of them."""
    from torch.func import functional_call

    names = set(dict(module.named_parameters(remove_duplicate=False))) | set(dict(module.named_buffers(remove_duplicate=False)))
    # fresh copies: a forward that writes its state or its input writes these, and both runs start equal
    own = {k: v.detach().clone() for k, v in state.items() if k in names}
    source = x.detach().clone() if isinstance(x, torch.Tensor) else x
    # live: the floating entries (they move along α) and the inputs; integer entries hold θT's value
    rec = _Recorder([t for t in own.values() if t.is_floating_point() or t.is_complex()])
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.train(train)
        # the caller's warnings filters, untouched: the curve runs the forward under them, and a
        # forward may read them (``warnings.filters``; a catch_warnings block even swaps the list)
        with torch.no_grad():
            before = _python_state(module)
            for lo, hi in spans:
                batch = source[lo:hi]
                rec.seed(batch)
                rec.span = (lo, hi)
                with _Reads(rec), rec:
                    functional_call(module, own, (batch,), strict=False)
                del batch
            after = _python_state(module)
        rec.changed = sorted(k for k in set(before) | set(after) if before.get(k, _MISSING) != after.get(k, _MISSING))
    finally:
        for m, was in modes:
            m.training = was
    return rec


def _traced(model: nn.Module) -> torch.fx.GraphModule | None:
    """The evaluation-mode fx trace of a private copy of ``model`` (the trace may write proxies into
    the copy's attributes), or None when it cannot be traced."""
    from .line import private_copy

    copy = private_copy(model)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            copy.eval()  # the graph the certifier reads is the evaluation-mode trace
            return torch.fx.symbolic_trace(copy)
    except Exception:  # noqa: BLE001 - untraceable models are refused where the trace is needed
        return None


def _compare(model: nn.Module, gm: torch.fx.GraphModule, state: Mapping[str, torch.Tensor], x: Any,
             spans: list[tuple[int, int]], train: bool) -> str | None:
    """One comparison of the forward (on a private copy of ``model``) with the traced graph ``gm``."""
    from .line import private_copy

    try:
        forward = _run(private_copy(model), state, x, spans, train)  # a copy of its own: untouched by the trace
    except Exception as exc:  # noqa: BLE001 - the forward itself fails on these inputs: nothing to compare
        return f"the forward could not be run to compare it with its trace ({type(exc).__name__}: {str(exc)[:120]})"
    if forward.changed:
        return (f"the forward changes its module's Python attribute {forward.changed[0]!r} when it runs: what it "
                "computes may depend on how often it has run, which no trace shows")
    if forward.raised:
        return (f"an operation raised an error inside the forward, which went on ({forward.raised[0]}): whether it "
                "raises depends on values, so what the forward computes may change along α")
    if forward.reads:
        where = " in training mode" if train else ""
        return (f"the forward{where} reads tensor values into Python ({', '.join(sorted(set(forward.reads))[:4])}): "
                "what it computes may change along α in ways its trace does not show")
    try:
        traced = _run(gm, state, x, spans, train)
    except Exception as exc:  # noqa: BLE001
        return f"the traced graph could not be run on the forward's inputs ({type(exc).__name__}: {str(exc)[:120]})"
    if traced.ops == forward.ops:
        return None
    k = next((i for i, (f, t) in enumerate(zip(forward.ops, traced.ops)) if f != t), min(len(forward.ops), len(traced.ops)))
    a = forward.ops[k][0] if k < len(forward.ops) else "nothing"
    b = traced.ops[k][0] if k < len(traced.ops) else "nothing"
    detail = " (with other constants)" if a == b else ""
    longer = forward.ops if k < len(forward.ops) else traced.ops
    span = longer[k][2]
    if span is not None and len(spans) > 1:
        detail += f", on the curve's batch of rows {span[0]}–{span[1] - 1}"
    where = " in training mode (the statistics' re-estimation pass)" if train else ""
    return (f"the forward{where} runs other operations than its traced graph: operation {k + 1} is {a} in the forward and "
            f"{b} in the trace{detail} ({len(forward.ops)} against {len(traced.ops)} operations): it computes "
            "something else when traced than when run")


def trace_differs(model: nn.Module, state: Mapping[str, torch.Tensor], x: Any, *, train: bool = False,
                  batch_size: int | None = None, modes: tuple[bool, ...] | None = None) -> str | None:
    """Why the traced graph of ``model`` may not compute what its ``forward`` computes at other α
    (None when, on ``state`` and inputs ``x``, both run the same operations with the same constants
    and the forward reads no value of the state or inputs into Python). See the module docstring.

    ``x`` is taken in batches of ``batch_size`` rows (None: all at once), each handed over as the loss
    curve hands it (a view of the rows when ``x`` is a tensor), so that a forward that depends on
    the batch's size or position is compared on every batch the curve runs.

    ``train``: compare the forward in training mode (the pass that re-estimates BatchNorm statistics)
    with the graph traced in evaluation mode run in training mode (its BatchNorm leaves on batch
    statistics), which is what the certifier models for that pass. ``modes``: the training flags to
    compare in turn, on one trace (None: ``(train,)``).

    ``model`` is not modified (both runs use a private copy of it and fresh copies of ``state`` and
    ``x``). A model that :mod:`torch.fx` cannot trace gives None here: every method that needs the
    trace refuses it.

    >>> m = nn.Sequential(nn.Linear(3, 2), nn.Tanh())
    >>> trace_differs(m, m.state_dict(), torch.ones(4, 3)) is None
    True
    """
    foreign = _subclass_tensor(model, state)
    if foreign is not None:
        return foreign
    gm = _traced(model)
    if gm is None:
        return None
    n = len(x)
    b = min(batch_size or n, n) if n else 1
    spans = [(lo, min(lo + b, n)) for lo in range(0, n, b)]
    for mode in modes if modes is not None else (train,):
        differs = _compare(model, gm, state, x, spans, mode)
        if differs is not None:
            return differs
    return None


_PLAIN_TENSORS = (torch.Tensor, nn.Parameter, getattr(nn, "Buffer", torch.Tensor))


def _subclass_tensor(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """Why a tensor of ``state`` or of ``model`` (its parameters, buffers and tensors kept as plain
    attributes) that is a subclass of :class:`torch.Tensor` (other than a parameter) stops the
    comparison, or None: its own ``__torch_function__`` runs inside every operation on it, where
    the recording function mode is popped, and may read its values there."""
    where = [(f"state entry {k!r}", v) for k, v in state.items()]
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        where += [(f"the model's {prefix}{k}", v) for k, v in vars(m).items() if isinstance(v, torch.Tensor)]
        where += [(f"the model's {prefix}{k}", v) for d in (m._parameters, m._buffers) for k, v in d.items() if v is not None]  # noqa: SLF001
    for label, v in where:
        if isinstance(v, torch.Tensor) and type(v) not in _PLAIN_TENSORS:
            return (f"{label} is a {type(v).__name__}, a tensor subclass: its own code runs inside every operation on it, "
                    "where no trace or comparison sees what it reads")
    return None


# the comparison runs at one α (any α: what it compares does not depend on it)
PROBE_ALPHA = 0.7071067811865476


def line_trace_differs(line: Any, x: Any, bn: Any = "recompute", batch_size: int | None = None) -> str | None:
    """:func:`trace_differs` of a line's model at θ(:data:`PROBE_ALPHA`) (every state entry
    interpolated) on every batch the loss curve evaluates (``batch_size`` rows of the inputs ``x``,
    a tensor or :class:`~mli_theory.inputs.Examples`; None: all of them at once), in the line's
    dtype and on its device; also in training mode when BatchNorm statistics are re-estimated along
    the line (``bn`` recompute). One pass over the data for each of the two runs, one α: a small part
    of the curve's own cost."""
    if isinstance(x, torch.Tensor):
        x = x.to(line.device, line.dtype)
    retrains = line.has_bn and str(getattr(bn, "value", bn)) == "recompute" and len(x) > 1
    return trace_differs(line.shell, line.at(PROBE_ALPHA), x, batch_size=batch_size, modes=(False, True) if retrains else (False,))
