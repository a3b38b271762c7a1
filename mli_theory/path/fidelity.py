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
* runs other operations, or other constants, than the traced graph, or returns other tensors from
  the same operations (it found out that it was being traced; or it depends on the batch's size,
  which the trace does not have: the comparison runs on the loss curve's own first batch);
* writes values of the state or the inputs into memory no operation of the call made with torch's
  own allocator (a tensor it keeps, NumPy's memory, a file mapped shared): whatever else holds that
  memory reads them with nothing recorded;
* changes a plain Python attribute of one of its modules (a number, a string, a flag, a container of
  them), or anything outside its modules that it reaches (a global it reads or writes, a closure
  variable, a default argument, a class's or an object's attributes, a container, an iterator, an
  attribute of a module it names, the input tensor's own attributes:
  :func:`mli_theory.path.structure.reached_state`): a call counter. What it computes may then
  depend on how often it has run.

In-place arithmetic is traced out of place: fx has no in-place operators on a proxy, so
``out += identity`` (torchvision's residual blocks) is ``aten.add_`` in the forward and ``aten.add``
in the trace. The record names an in-place operation on a tensor the forward made by its
out-of-place form, with every output's shape and dtype, and follows the write: the tensor written
is from then on that operation's result, and any other tensor on the written memory (a second name
for it, a view or a detached copy taken before the write, the base of a written slice) carries the
write in its origin. The two records are then equal exactly when every later read sees what the
out-of-place form gives it. A write into the state's or the input's memory (which outlives the call)
keeps its in-place name, and differs.

Under all the named checks, one net: the forward runs again on the state of a second α and must
take the same constants there (:func:`_constants_move`); a value that reached it unrecorded, by any
route, is a constant that moves (unless it is equal at both α).

When none happens, the forward's Python code saw nothing of α but shapes, which do not change along
the line: it runs the same operations, with the same constants, at every α, and they are the traced
graph's.

The evaluation-mode comparison runs the caller's own module (the line's ``source``) on the caller's
own input tensor, as the caller would (its state swapped in by ``functional_call``, its attributes
put back after), wherever that module has the line's dtypes and devices: a forward can tell a copy
from the original it was given by identity alone (a list it shares with its class, the order in
which a set that once grew iterates), and the certificate speaks of the original.

A caller's own evaluation need not run as the curve does: it loads θ(α) into the model
(``load_state_dict``: the parameters stay ``nn.Parameter`` objects, with their identities), it may
record autograd, it may have set another default dtype. The forward is run once more that way, on
a private copy (:func:`_caller_run`), and must run the same operations (floating constants compared
by their float32 values, so that ``torch.tensor(0.5)`` is the same under either default); it must
draw no random numbers (any operation torch tags ``nondeterministic_seeded``).

What this does not see: a forward that tells this comparison from the caller's own calls by its
surroundings (the active torch modes, the call stack, the clock, process state):
:func:`mli_theory.path.structure.opaque_call_reason` refuses forwards that reach those (by name, by
identity, and by an allow-list of the standard library and the builtins), and hooks and patched
methods; a forward that hides such a question (a computed attribute name, ``eval``), or changes
state and puts it back within one call, is outside what any check in Python can settle. Both
recording modes belong to the calling thread: what another thread reads or runs is not recorded,
so a forward that starts threads or processes is refused there too (a read in a thread of its own
gave a false certificate before). Nothing here runs code of the objects it reads (their
``__getattr__``, a ``__class__`` property), and the recorder registers no finaliser a forward could
find.
"""

from __future__ import annotations

import functools
import hashlib
import re
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

from ..inputs.formats import _byte_bounds
from .batchnorm import recompute_batches
from .structure import _NAMESPACES, _TYPE_MODULE, _user_class, instance_dict, object_fields, reached_state, state_repr

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
    "fbgemm_linear_quantize_weight", "_choose_qparams_per_tensor",
})
# indexing whose output shape depends on a boolean mask's values
_INDEXING = frozenset({"index", "index_put", "index_put_", "_index_put_impl_", "masked_scatter"})
_MISSING = object()
# aten operations that return their input's values as another tensor object (no copy, no change)
_TRANSPARENT = frozenset({"detach", "alias", "lift_fresh"})
# operations whose result holds whatever memory held before (torch.empty, x.new(n), resize_ growing a
# tensor, set_ onto a fresh storage): freed tensors' values can come back through them as "constants",
# which the record compares by value at one α only
_UNINITIALISED = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted",
                            "resize_", "resize_as_", "_resize_output_", "set_", "empty_quantized", "_empty_affine_quantized",
                            "_empty_per_channel_affine_quantized", "sparse_resize_", "sparse_resize_and_clear_"})
# torch's dispatch and decorator machinery between an allocation and the function that asked for it
_MACHINERY = ("/torch/utils/_python_dispatch.py", "/torch/_ops.py", "/torch/overrides.py", "/torch/_dynamo/eval_frame.py",
              "/torch/_compile.py")


def _bits(value: torch.Tensor) -> str:
    """A hash of every bit of every entry (whatever the strides: copied to a dense buffer first)."""
    if value.is_meta or value.numel() == 0:
        return ""
    dense = torch.empty(value.numel(), dtype=value.dtype, device="cpu")
    dense.copy_(value.detach().reshape(-1))
    return hashlib.sha256(dense.view(torch.uint8).numpy().tobytes()).hexdigest()


def _storage_bits(value: torch.Tensor) -> str:
    """A hash of every byte of the storage under ``value`` (not only its view's entries)."""
    if value.is_meta or value.layout != torch.strided:
        return ""
    try:
        raw = value.untyped_storage()
        whole = torch.empty(0, dtype=torch.uint8, device=value.device).set_(raw, 0, (raw.nbytes(),), (1,))
    except (RuntimeError, NotImplementedError, TypeError):  # a tensor without a storage of its own
        return ""
    copy = torch.empty(whole.shape, dtype=torch.uint8)  # numpy() of the storage itself would pin it (no resize_)
    copy.copy_(whole)
    return hashlib.sha256(copy.numpy().tobytes()).hexdigest()


def _tensor_state(value: torch.Tensor, depth: int = 0) -> tuple:
    """Everything a forward can keep in a tensor that outlives its call: contents, shape, strides,
    storage offset and size, dtype, device, the autograd flags (``requires_grad``, ``retains_grad``),
    its gradient and its own attributes."""
    try:
        storage = (value.storage_offset(), value.untyped_storage().nbytes()) if not value.is_meta else ()
    except (RuntimeError, NotImplementedError):  # a tensor without a storage of its own
        storage = ()
    grad = value.grad if value.is_leaf else None
    storage = (*storage, _storage_bits(value))  # beyond the view too: ``view.as_strided(…, offset)`` reaches it
    return (tuple(value.shape), tuple(value.stride()) if value.layout == torch.strided else (), storage, str(value.dtype),
            str(value.device), bool(value.requires_grad), bool(value.retains_grad), _bits(value),
            None if grad is None or depth else _tensor_state(grad, 1), _plain(instance_dict(value) or {}, 1))


def _loose(value: Any) -> Any:
    """:func:`_describe`, with floating tensor constants by their values rounded to float32 and
    without their dtype: what a constant made with the default dtype (``torch.tensor(0.5)``) gives
    under either default, so that only a forward that *branches* on the default differs."""
    if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.is_meta and value.numel():
        return ("T", tuple(value.shape), _bits(value.detach().to(torch.float32)))
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return ("T", tuple(value.shape))
    if isinstance(value, (list, tuple)):
        return tuple(_loose(v) for v in value)
    if isinstance(value, torch.dtype) and value.is_floating_point:
        return "float"
    return _describe(value)


def _describe(value: Any) -> Any:
    """A comparable description of a non-live argument (tensor constants by content)."""
    if isinstance(value, torch.Tensor):
        if value.is_meta or value.numel() == 0:
            return ("T", tuple(value.shape), str(value.dtype))
        return ("T", tuple(value.shape), str(value.dtype), _bits(value))
    if isinstance(value, (list, tuple)):
        return tuple(_describe(v) for v in value)
    if isinstance(value, float):  # by its bits: -0.0 is not 0.0 (1/x tells them apart), nor any NaN another
        return ("float", value.hex()) if value == value else "nan"
    if isinstance(value, (int, float, bool, complex, str, type(None))):
        return value
    if isinstance(value, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(value)
    return type(value).__name__  # anything else: by kind


def _made_by_a_filler() -> bool:
    """Whether the allocation being dispatched was asked for by one of torch's own functions that
    write every entry of what they allocate (:func:`_fillers`): the nearest Python frame outside
    this module and torch's dispatch machinery runs that function's code object itself."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        if path != __file__ and not path.endswith(_MACHINERY):
            return frame.f_code in _fillers()
        frame = frame.f_back
    return False


@functools.lru_cache(maxsize=1)
def _fillers() -> frozenset:
    """The code objects of torch's functions that fill what they allocate: ``F.pad`` (mode "circular"
    makes its output with ``new_empty`` in C++ and writes every entry)."""
    import inspect

    from torch.nn import functional as F  # noqa: N812

    return frozenset({inspect.unwrap(F.pad).__code__})


def _geometry(t: torch.Tensor) -> tuple:
    """(memory, offset, shape, strides, dtype) of a tensor: where its values lie."""
    try:
        layout = (t.storage_offset(), tuple(t.shape), tuple(t.stride())) if t.layout == torch.strided else (tuple(t.shape),)
    except (RuntimeError, NotImplementedError):
        layout = (tuple(t.shape),)
    return (_storage_key(t), *layout, str(t.dtype))


def _storage_span(t: torch.Tensor) -> tuple | None:
    """(device, first byte, end) of a tensor's storage, or None where it has none to read (meta,
    sparse, empty). Read with torch function modes off: the recorder's own bookkeeping is no read
    of the forward's."""
    try:
        with torch._C.DisableTorchFunction():
            raw = t.untyped_storage()
            ptr, size = raw.data_ptr(), raw.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return (str(t.device), ptr, ptr + size) if ptr else None


def _storage_key(t: torch.Tensor) -> tuple | None:
    """(device, address) of a tensor's storage, or None where it has none to read (meta, sparse, empty)."""
    span = _storage_span(t)
    return span[:2] if span is not None else None


def _resizable(t: torch.Tensor) -> bool:
    """Whether torch's own allocator holds ``t``'s memory (NumPy's and other buffers cannot be resized)."""
    try:
        with torch._C.DisableTorchFunction():
            return bool(t.untyped_storage().resizable())
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def _overlap(a: tuple | None, b: tuple | None) -> bool:
    """Whether two storage spans share a byte (two storages made over one buffer from outside torch,
    ``torch.as_tensor`` of two NumPy views, start at different addresses on the same memory)."""
    return a is not None and b is not None and a[0] == b[0] and a[1] < b[2] and b[1] < a[2]


def _written_arguments(func: Any, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors an operation writes in place: the arguments its schema marks written
    (``Tensor(a!)``: ``self`` of ``add_``, ``out`` of ``add.out``, BatchNorm's running statistics)."""
    schema = getattr(func, "_schema", None)
    if schema is None:
        return []

    def value(i: int, a: Any) -> Any:
        return kwargs.get(a.name, args[i] if i < len(args) and not a.kwarg_only else None)

    # (``native_batch_norm`` writes its running statistics in training mode, which its schema does not say)
    training = any(a.name == "training" and value(i, a) is True for i, a in enumerate(schema.arguments))
    found = []
    for i, a in enumerate(schema.arguments):
        if (a.alias_info is None or not a.alias_info.is_write) and not (training and a.name in ("running_mean", "running_var")):
            continue
        found.extend(t for t in tree_flatten(value(i, a))[0] if isinstance(t, torch.Tensor))
    return found


@functools.lru_cache(maxsize=None)
def _out_of_place(func: Any) -> str | None:
    """``aten.f.overload`` for ``aten.f_.overload`` (an operation that writes its first argument), when
    it exists and takes the same arguments; else None."""
    schema = func._schema
    base = schema.name.split("::")[-1]
    if not schema.name.startswith("aten::") or not base.endswith("_") or base.startswith("_") or not schema.arguments:
        return None
    first = schema.arguments[0].alias_info
    if first is None or not first.is_write:
        return None
    other = getattr(getattr(torch.ops.aten, base[:-1], None), func._overloadname, None)
    if other is None or [(a.name, str(a.type)) for a in other._schema.arguments] != \
            [(a.name, str(a.type)) for a in schema.arguments]:
        return None
    return str(other)


class _Recorder(TorchDispatchMode):
    """Records the operations on live tensors and the reads of their values."""

    def __init__(self, live: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.span: tuple[int, int] | None = None  # the rows of the batch being run
        # live tensors by id, each with a weak reference that confirms it is still that tensor (ids are
        # reused after death; no finaliser is registered anywhere a forward could look for it) and
        # where it comes from: a state entry by name, the input, or the operation (index, output) that
        # made it; two forwards that run the same operations on differently wired tensors differ here
        self.live: dict[int, tuple[weakref.ref, tuple]] = {id(t): (weakref.ref(t), ("state", k)) for k, t in live.items()}
        # the memory of live tensors, by (device, address of its storage): its first live owner and origin
        # (its end too: memory is live wherever a live storage's bytes are, whatever storage object
        # another tensor reaches them through)
        self.storages: dict[tuple, tuple[weakref.ref, tuple, int]] = {}
        for k, t in live.items():
            span = _storage_span(t)
            if span is not None:
                self.storages.setdefault(span[:2], (weakref.ref(t), ("state", k), span[2]))
        self.keep = list(live.values())  # the seeds stay alive while recording
        self.ops: list[tuple] = []
        self.reads: list[str] = []
        self.raised: list[str] = []  # operations that raised (a forward that catches them branches on values)
        self.changed: list[str] = []  # plain Python attributes of the modules that a call changed
        self.outside: list[str] = []  # places outside the modules (globals, closures, classes, …) that a call changed
        self.refused: str | None = None  # why the walk of what the forward reaches refuses it
        self.random: list[str] = []  # random draws (operations torch tags nondeterministic_seeded), on any tensor
        self.loose: list[tuple] = []  # the operations again, float constants by their float32 values (see _loose)
        self.returned: list[tuple] = []  # per batch, what the forward returned: live tensors by origin
        self.uninitialised: list[str] = []  # operations that made non-empty tensors of uninitialised memory
        # in-place writes: the index of the last operation that wrote each live memory, and for each live
        # tensor the write it has seen (the last one when it was made, or its own); a tensor on memory
        # written since it was made holds values its origin does not say (a view taken before the write)
        self.writes: dict[tuple, int] = {}
        self.seen: dict[int, int | None] = {}
        # the memory of the seeds (state, input): an in-place write there outlives the call
        self.seeds: set[tuple] = {k for k in (_storage_key(t) for t in live.values()) if k is not None}
        # where each live tensor's values lie (memory, offset, shape, strides) when it got its origin:
        # a tensor pointed at other memory without an operation (``u.data = w``) no longer holds them
        self.where: dict[int, tuple] = {}
        # memory made by an operation of this call (by weak references to tensors on it), and the
        # operations that wrote moving values into memory made before it (an attribute tensor, NumPy's
        # memory): whatever else holds that memory reads them with no operation recorded
        self.fresh: dict[tuple, list[weakref.ref]] = {}
        self.kept_writes: list[str] = []
        for t in live.values():
            self.seen[id(t)] = None
            self.where[id(t)] = _geometry(t)

    def seed(self, t: torch.Tensor) -> None:
        """A tensor the caller hands to the forward (a batch): live, kept alive while recording."""
        self._mark(t, ("input",))
        self.keep.append(t)
        key = _storage_key(t)
        if key is not None:
            self.seeds.add(key)

    def _mark(self, t: torch.Tensor, origin: tuple) -> None:
        """Live from now on (no strong reference is kept: intermediates die when the forward drops them),
        and so is every tensor on its memory (:meth:`is_live`)."""
        key = _storage_key(t)
        if not self._own(t):
            self._set_origin(t, origin, self.writes.get(key) if key is not None else None)
        if key is not None and self._live_memory(t) is None:
            self.storages[key] = (weakref.ref(t), origin, _storage_span(t)[2])

    def _set_origin(self, t: torch.Tensor, origin: tuple, seen: int | None) -> None:
        """``t`` holds the values ``origin`` says, as they were after write ``seen`` to its memory, where
        it lies now (:meth:`_origin` reads all three)."""
        self.live[id(t)] = (weakref.ref(t), origin)
        self.seen[id(t)] = seen
        self.where[id(t)] = _geometry(t)

    def _own(self, t: torch.Tensor) -> bool:
        held = self.live.get(id(t))
        return held is not None and held[0]() is t

    def _live_memory(self, t: torch.Tensor) -> tuple | None:
        """The key of the live memory ``t``'s storage lies on (its own storage's, or one whose bytes
        it shares), or None. Entries whose owner died, or moved, are not live memory."""
        span = _storage_span(t)
        if span is None:
            return None
        held = self.storages.get(span[:2])
        if held is not None and self._holds(span[:2], held):
            return span[:2]
        for key, entry in list(self.storages.items()):
            if _overlap(span, (*key, entry[2])) and self._holds(key, entry):
                return key
        return None

    def _holds(self, key: tuple, entry: tuple) -> bool:
        owner = entry[0]()
        if owner is None or _storage_key(owner) != key:
            del self.storages[key]  # freed (or pointed elsewhere): its memory may be reused
            return False
        return True

    def _live_keys(self, t: torch.Tensor) -> list[tuple]:
        """The keys of every live memory that ``t``'s storage shares a byte with, its own included."""
        span = _storage_span(t)
        return [key for key, entry in list(self.storages.items()) if _overlap(span, (*key, entry[2])) and self._holds(key, entry)]

    def _note_fresh(self, name: str, flat: list, out: Any) -> None:
        """Register the outputs on memory this operation made with torch's own allocator (a storage
        none of its arguments has; ``lift_fresh`` of one: ``torch.tensor``'s own), or on memory made
        earlier in this call (a view of it, the written tensor of an in-place operation)."""
        inputs = {_storage_key(a) for a in flat if isinstance(a, torch.Tensor)}
        for o in tree_flatten(out)[0]:
            if not isinstance(o, torch.Tensor):
                continue
            key = _storage_key(o)
            if key is None:
                continue
            # (torch's allocator only: ``from_file(shared=True)`` maps a file another reader sees)
            made = (key not in inputs or name == "lift_fresh") and _resizable(o)
            if made or self._is_fresh(o):
                self.fresh.setdefault(key, []).append(weakref.ref(o))

    def _is_fresh(self, t: torch.Tensor) -> bool:
        """Whether ``t`` lies on memory an operation of this call made (one of the tensors registered
        on it still alive there: a freed address may come back as another allocator's memory)."""
        key = _storage_key(t)
        return key is not None and any((o := r()) is not None and _storage_key(o) == key for r in self.fresh.get(key, ()))

    def is_live(self, t: object) -> bool:
        """A live tensor itself, or any tensor on a live tensor's memory: a view taken of a constant
        before an in-place operation wrote live values into it (``v = buf.view(-1); buf.add_(h)``)
        holds those values, although no operation on a live tensor made it."""
        if not isinstance(t, torch.Tensor):
            return False
        return self._own(t) or self._live_memory(t) is not None

    def _origin(self, t: object) -> tuple:
        """Where a live tensor's values come from: the operation (or seed) that made it, and, when its
        memory was written in place since (by another tensor on it), that write too; a tensor only on
        live memory by that memory's first owner, the last write to it and where in it the tensor lies."""
        key = _storage_key(t)
        if self._own(t):
            origin = ("live", *self.live[id(t)][1])
            if _geometry(t) != self.where.get(id(t)):
                return (*origin, "pointed at other memory since", _geometry(t)[1:])
            last = self.writes.get(key) if key is not None else None
            return origin if last == self.seen.get(id(t)) else (*origin, "memory written since by operation", last)
        base = self._live_memory(t)
        at = _storage_span(t)[1] + t.storage_offset() * t.element_size() - base[1]  # in bytes, from that memory's start
        return ("live", "memory of", *self.storages[base][1], self.writes.get(base), at, tuple(t.shape), tuple(t.stride()),
                str(t.dtype))

    def _written(self, index: int, written: list[torch.Tensor], out: Any) -> None:
        """After operation ``index`` wrote tensors in place (arguments its schema marks written): their
        memory was written by it, and the tensor objects written are from now on that operation's
        result; every other tensor on that memory holds values its origin no longer says."""
        outs = tree_flatten(out)[0]
        for j, t in enumerate(written):
            key = _storage_key(t)
            for other in {*self._live_keys(t), *([key] if key is not None else [])}:
                self.writes[other] = index  # every live memory sharing a written byte's storage
            at = next((i for i, o in enumerate(outs) if o is t), f"argument {j}")  # as _mark numbers outputs
            self._set_origin(t, ("op", index, at), index if key is not None else None)
            if key is not None and self._live_memory(t) is None:
                self.storages[key] = (weakref.ref(t), ("op", index, at), _storage_span(t)[2])

    def _functional_name(self, func: Any, args: tuple, kwargs: dict, written: list[torch.Tensor]) -> str | None:
        """The name of the out-of-place form of an in-place operation on a live tensor of the forward's
        own (``aten.add.Tensor`` for ``aten.add_.Tensor``: ``out += identity``, which fx traces as
        ``out + identity``), or None where the two are not interchangeable in this record: the written
        tensor is not live, or is (on) a seed's memory (the write outlives the call), or the operation
        writes anything else. With the writes' effects on origins (:meth:`_written`), the record of
        the in-place form equals the out-of-place form's exactly when every later read gets the values
        the out-of-place form gives it (the written tensor's own reads are the new result; any other
        tensor on that memory differs), and the outputs' shapes and dtypes (recorded for every
        operation) are the same. ``written``: the operation's written arguments (:func:`_written_arguments`)."""
        if len(written) != 1 or not args or written[0] is not args[0] or not self._own(args[0]):
            return None
        key = _storage_key(args[0])
        if key is None or key in self.seeds:
            return None
        # an argument on the memory it writes: in place, entries written early are read later (overlapping
        # views torch cannot tell apart), except a pointwise operation's argument that is the written
        # tensor itself entry for entry (``out *= out``: each entry is read before it is written)
        others = [a for a in tree_flatten((args[1:], kwargs))[0] if isinstance(a, torch.Tensor)]
        pointwise = torch.Tag.pointwise in getattr(func, "tags", ())
        span = _storage_span(args[0])
        if any(_overlap(_storage_span(a), span) and not (pointwise and _geometry(a) == _geometry(args[0])) for a in others):
            return None
        return _out_of_place(func)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1] if hasattr(func, "_schema") else str(func)
        try:
            out = func(*args, **kwargs)
        except Exception as exc:
            self.raised.append(f"{name} ({type(exc).__name__})")
            raise
        flat, _ = tree_flatten((args, kwargs))  # keyword arguments by name too (see the record below)
        if torch.Tag.nondeterministic_seeded in getattr(func, "tags", ()):  # a generator's state moves: a counter
            self.random.append(name)
        if name in _UNINITIALISED and any(isinstance(o, torch.Tensor) and o.numel() > 0 for o in tree_flatten(out)[0]) \
                and not _made_by_a_filler():
            self.uninitialised.append(name)  # (torch's batch_norm makes an empty reserve of 0 entries: not counted)
        if name in _VALUE_OPS and not (name == "_local_scalar_dense" and _batchnorm_counter(tuple(args))):
            self.reads.append(f"{name} (aten)")  # of any tensor: a value reaches Python, or a shape follows values
        elif name in _INDEXING and any(isinstance(a, torch.Tensor) and a.dtype in (torch.bool, torch.uint8) for a in flat):
            self.reads.append(f"{name} with a boolean mask (aten)")
        if name in _TRANSPARENT and len(flat) >= 1 and self._own(flat[0]) and isinstance(out, torch.Tensor):
            # the same values under another tensor object (autograd adds these where it saves a
            # tensor for backward): one origin, nothing recorded, whether autograd records or not;
            # the write its source had seen too (a detached view taken before a write is as stale)
            self._mark(out, self.live[id(flat[0])][1])
            if self._own(out) and out is not flat[0]:
                self.seen[id(out)] = self.seen.get(id(flat[0]))
            return out
        self._note_fresh(name, flat, out)
        origins = [self._origin(a) if self.is_live(a) else None for a in flat]  # (before the write moves them)
        if any(o is not None for o in origins):
            index = len(self.ops)
            written = _written_arguments(func, args, kwargs)
            self.kept_writes += [name for t in written if not self.is_live(t) and not self._is_fresh(t)]
            label = self._functional_name(func, args, kwargs, written) or str(func)
            # what each output is (shape, dtype): an in-place form keeps its input's, the out-of-place
            # form promotes and broadcasts
            shapes = tuple((tuple(o.shape), str(o.dtype)) for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor))
            self.ops.append((label, tuple(_describe(a) if o is None else o for a, o in zip(flat, origins)),
                             tuple(sorted(kwargs)), self.span, shapes))
            self.loose.append((label, tuple(_loose(a) if o is None else o for a, o in zip(flat, origins)),
                               tuple(sorted(kwargs)), self.span))
            self._written(index, written, out)
            for j, o in enumerate(tree_flatten(out)[0]):
                if isinstance(o, torch.Tensor):
                    self._mark(o, ("op", index, j))
        return out


class _Reads(TorchFunctionMode):
    """Records Python-level reads of live values (``.numpy()``, ``.tolist()``, ``float(t)``, …),
    some of which never reach the dispatcher."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name == "__set__" and getattr(getattr(func, "__self__", None), "__name__", "") in ("data", "grad"):
            self.recorder.reads.append(f".{func.__self__.__name__} set: memory swapped in without an operation")
        if name in _VALUE_READS and not _batchnorm_counter(args):  # of any tensor: one made outside the dispatcher
            self.recorder.reads.append(name)  # (a subclass view, a DLPack round trip) shares the moving values
        # (a tensor subclass too: a forward can make one without any operation, ``t.__class__ = C``)
        foreign = [t for t in types if not issubclass(t, torch.Tensor) or t not in _PLAIN_TENSORS]
        if foreign:  # an argument's own __torch_function__ runs next, where this mode is popped: it may read anything
            self.recorder.reads.append(f"{func.__name__ if hasattr(func, '__name__') else func} with a {foreign[0].__name__} "
                                       "argument that has its own __torch_function__")
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
_PLAIN = (int, float, bool, str, bytes, type(None), complex)


_PLAIN_DEPTH = 32  # levels of nested containers and objects read into one comparable value


def _plain(value: Any, depth: int = 0) -> Any:
    """A comparable copy of a value made of numbers, strings and containers of them, of the fields of
    objects, of array contents, of a generator's position (None: not such a value, and not
    compared). Types are read with ``type()`` and fields through C descriptors, so no code of the
    value's own runs (a hook run by this comparison could tell the forward that it is compared)."""
    t = type(value)
    if t in _PLAIN or issubclass(t, _PLAIN) and not _user_class(t):
        return value
    if issubclass(t, torch.Tensor):  # a tensor kept as a plain attribute: everything it can hold
        return ("tensor", _tensor_state(value))
    if depth >= _PLAIN_DEPTH:  # deeper containers are places of their own where the walk reaches them
        return None
    if issubclass(t, (set, frozenset)):  # read through the base type's own methods, never an override; in
        members = set.__iter__(value) if issubclass(t, set) else frozenset.__iter__(value)  # order: order is state
        return (t.__name__, tuple(repr(_plain(v, depth + 1)) for v in members))
    if issubclass(t, (list, tuple)):
        items = list(list.__iter__(value) if issubclass(t, list) else tuple.__iter__(value))
        return (t.__name__, tuple(_plain(v, depth + 1) for v in items), _sharing(items))
    if issubclass(t, dict):
        pairs = list(dict.items(value))
        items = [(repr(k) if type(k) in _PLAIN else repr(_plain(k, depth + 1)), _plain(v, depth + 1)) for k, v in pairs]
        # in insertion order, which a forward can change and read; which entries are one object
        return ("dict", tuple(items), _sharing([v for _, v in pairs]), _sharing([k for k, _ in pairs]))
    if issubclass(t, type):  # a class (a dict's key, a list's item): by where it is defined
        return ("class", _TYPE_MODULE.__get__(value), type.__dict__["__qualname__"].__get__(value),
                id(value))
    if t in (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType) or issubclass(t, nn.Module):
        return None  # code, classes, modules: their state is compared where it is reached
    if t is functools.partial:  # what it holds, which a forward reaches through it
        return ("partial", _plain(value.args, depth + 1), _plain(dict(value.keywords), depth + 1))
    if t is memoryview:  # the bytes it shows (its repr shows an address only)
        try:
            return ("memoryview", hashlib.sha256(value.tobytes()).hexdigest())
        except ValueError:  # released
            return ("memoryview", None)
    if t is torch.Generator:  # a random generator's position (its repr shows an address only)
        return ("torch.Generator", _bits(torch.Generator.get_state(value)))
    if t is types.GeneratorType:  # a counter kept in a generator's frame
        frame = value.gi_frame
        return ("generator", None if frame is None else (frame.f_lasti, _plain(dict(frame.f_locals), depth + 1)))
    np_ = sys.modules.get("numpy")
    if np_ is not None and isinstance(value, np_.ndarray) and value.dtype.hasobject:  # references: what they hold
        return ("ndarray", value.shape, "object", tuple(_plain(v, depth + 1) for v in value.reshape(-1).tolist()))
    array = _array_bytes(value)
    if array is not None:
        return array
    fields = object_fields(value)
    if fields is not None and (_user_class(t) or t in _NAMESPACES):  # a user's object, a namespace: its attributes
        return (t.__qualname__, _plain(fields, depth + 1))
    if fields is not None:  # a library's object (a logger): its plain fields, not its caches, which other code fills
        return (t.__qualname__, tuple(sorted((k, v) for k, v in fields.items() if type(v) in _PLAIN)))
    if not _user_class(t):  # an object of a C type that shows its state in its repr (itertools.count, a deque)
        r = state_repr(value)
        return None if r is None else ("repr", t.__qualname__, r)
    return None


def _sharing(items: list) -> tuple:
    """Which items of a container are one object (each item's first position with the same identity):
    a forward can count by making entries the same object, with equal values throughout."""
    first: dict[int, int] = {}
    return tuple(first.setdefault(id(v), i) for i, v in enumerate(items))


def _array_bytes(value: Any) -> Any:
    """A NumPy array's shape, strides, dtype, where it lies in the buffer it views, and a hash of
    that whole buffer (the array's own memory when it views none) (None for anything else)."""
    np = sys.modules.get("numpy")
    if np is None or not isinstance(value, np.ndarray):
        return None
    root = value
    while isinstance(root.base, np.ndarray):
        root = root.base
    try:
        raw = np.ascontiguousarray(root).view(np.uint8).tobytes() if root.size else b""
        offset = _byte_bounds(np)(value)[0] - _byte_bounds(np)(root)[0] if value.size and root.size else 0
    except (TypeError, ValueError):  # object arrays: references, not values
        return ("ndarray", value.shape, str(value.dtype), "references", id(value))
    return ("ndarray", value.shape, value.strides, offset, str(value.dtype), hashlib.sha256(raw).hexdigest())


def _python_state(module: nn.Module, swapped: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The plain Python attributes of every submodule (a call counter, a cached length, a flag), and
    its parameter, buffer and submodule tables, with the tensors the call does not get from the state
    (``swapped``: the entries ``functional_call`` puts in for the call and takes out after, which the
    forward never sees; a non-persistent buffer is not among them, and a forward can count in it)."""
    out: dict[str, Any] = {}
    for name, m in module.named_modules(remove_duplicate=False):
        prefix = name + "." if name else ""
        own = instance_dict(m) or {}
        for k, v in own.items():
            if k not in _BOOKKEEPING:
                p = _plain(v)
                if p is not None:
                    out[f"{prefix}{k}"] = p
        for kind in ("_parameters", "_buffers", "_modules"):
            held = own.get(kind) or {}
            out[f"{prefix}{kind}"] = tuple((k, id(v)) for k, v in held.items())
            if kind != "_modules":
                out.update({f"{prefix}{k}": _plain(v) for k, v in held.items()
                            if isinstance(v, torch.Tensor) and f"{prefix}{k}" not in swapped})
    return out


def _outside_state(places: list) -> dict[str, Any]:
    """The value of every place outside the modules where a forward can keep state (see
    :func:`~mli_theory.path.structure.reached_state`), comparable."""
    out: dict[str, Any] = {}
    for label, get in places:
        out.setdefault(label, [])
        out[label].append(_plain(get()))
    return out


def _run(module: nn.Module, state: Mapping[str, torch.Tensor], x: Any, spans: list[tuple[int, int]], train: bool,
         outside: bool = False, original: bool = False, flipped: tuple[bool, bool] = (False, False),
         loaded: bool = False) -> _Recorder:
    """The module on every batch ``x[lo:hi]`` of ``spans`` (views of a private copy of ``x`` when it is
    a tensor, as the curve hands its batches over), one recorder for all of them. ``outside``: also
    compare, before and after, the state outside the modules that the forward reaches, and the
    input's own attributes. ``original``: ``module`` and ``x`` are the caller's own objects, run as
    the caller runs them (``x`` itself when one batch holds every row); :class:`_Kept` puts them back.
    ``flipped``: (grad, dtype): run with autograd recording, and under the other floating default
    dtype (float64 for float32 and back): process settings a caller's own evaluation may have where
    the curve's has not; both are put back after. ``loaded``: the state copied into the module's own
    parameters and buffers, as ``load_state_dict`` does (they stay the same objects, ``nn.Parameter``
    among them), and the module called as it is, where the other runs swap the state in
    (``functional_call``); only for a private copy."""
    from torch.func import functional_call

    names = set(dict(module.named_parameters(remove_duplicate=False))) | set(dict(module.named_buffers(remove_duplicate=False)))
    # fresh copies: a forward that writes its state or its input writes these, and both runs start equal
    own = {k: v.detach().clone() for k, v in state.items() if k in names}
    source = x if original or not isinstance(x, torch.Tensor) else x.detach().clone()
    if loaded:  # into the module's own tensors, in place; those are then the state the forward reads
        held = {**dict(module.named_parameters(remove_duplicate=False)), **dict(module.named_buffers(remove_duplicate=False))}
        with torch.no_grad():
            for k, v in own.items():
                held[k].copy_(v)
        own = {k: held[k] for k in own}
    # live: the floating entries (they move along α) and the inputs; integer entries hold θT's value
    rec = _Recorder({k: t for k, t in own.items() if t.is_floating_point() or t.is_complex()})
    modes = [(m, m.training) for m in module.modules()]
    try:
        module.train(train)
        # the caller's warnings filters, untouched: the curve runs the forward under them, and a
        # forward may read them (``warnings.filters``; a catch_warnings block even swaps the list)
        rec.refused, places = reached_state(module) if outside else (None, [])
        if outside and isinstance(source, torch.Tensor):  # a mark kept on the input tensor itself
            places = [*places, ("the input tensor's own attributes", functools.partial(instance_dict, source))]
        default = torch.get_default_dtype()
        if flipped[1]:
            torch.set_default_dtype(torch.float64 if default == torch.float32 else torch.float32)
        with torch.set_grad_enabled(flipped[0]):
            swapped = frozenset(own)
            before = _python_state(module, swapped)
            held = _outside_state(places)
            for lo, hi in spans:
                whole = original and isinstance(source, torch.Tensor) and (lo, hi) == (0, len(source))
                batch = source if whole else source[lo:hi]
                rec.seed(batch)
                rec.span = (lo, hi)
                with _Reads(rec), rec:  # tied entries (the caller's own module) each take the line's own tensor
                    if loaded:
                        out = module(batch)
                    else:
                        out = functional_call(module, own, (batch,), strict=False, tie_weights=not original)
                leaves = tree_flatten(out)[0]
                rec.returned.append(tuple(rec._origin(t) if rec.is_live(t) else _describe(t) for t in leaves))
                rec.reads += [f"a returned {type(t).__name__}, whose own __torch_function__ runs in every operation on it "
                              "(the loss's too)" for t in leaves if _runs_own_code(t)]
                del batch, out
            after = _python_state(module, swapped)
            now = _outside_state(places)
        rec.changed = sorted(k for k in set(before) | set(after) if before.get(k, _MISSING) != after.get(k, _MISSING))
        rec.outside = [k for k in held if held[k] != now.get(k)]
    finally:
        if flipped[1]:
            torch.set_default_dtype(default)
        for m, was in modes:
            m.training = was
    return rec


class _Kept:
    """The caller's module and input as they were before the comparison ran the forward on them, put
    back after it (a forward that changes them is refused; the caller's objects are left as found):
    every module's attributes, its parameter, buffer and submodule tables, the contents, shape,
    strides and autograd flag of every tensor the call can reach (not the entries of the state, which
    are swapped out for it), and the input's."""

    def __init__(self, module: nn.Module, x: Any, swapped: frozenset[str]):
        self.dicts = []
        self.tensors: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
        seen: set[int] = set()
        for name, m in module.named_modules(remove_duplicate=False):
            d = instance_dict(m)
            if d is None:
                continue
            prefix = name + "." if name else ""
            tables = {k: dict(d[k]) for k in ("_parameters", "_buffers", "_modules") if isinstance(d.get(k), dict)}
            self.dicts.append((d, dict(d), tables))
            # the entries of the state are swapped out for the call: the forward reaches those tensors
            # only through a plain attribute, which ``d.values()`` covers
            held = [v for k in ("_parameters", "_buffers") for n, v in tables.get(k, {}).items() if f"{prefix}{n}" not in swapped]
            for v in [*d.values(), *held]:
                if isinstance(v, torch.Tensor) and not v.is_meta and id(v) not in seen:
                    seen.add(id(v))
                    self.tensors.append((v, _saved(v), bool(v.requires_grad)))
        if isinstance(x, torch.Tensor) and id(x) not in seen:
            self.tensors.append((x, _saved(x), bool(x.requires_grad)))
        self.x_attrs = dict(instance_dict(x) or {}) if isinstance(x, torch.Tensor) else None
        self.x = x

    def restore(self) -> None:
        for d, attrs, tables in self.dicts:
            if d.keys() != attrs.keys() or any(d[k] is not v for k, v in attrs.items()):
                d.clear()
                d.update(attrs)
            for k, table in tables.items():
                if d[k].keys() != table.keys() or any(d[k][n] is not v for n, v in table.items()):
                    d[k].clear()
                    d[k].update(table)
        with torch.no_grad():
            for t, saved, grad in self.tensors:
                if (t.size() != saved.size() or t.stride() != saved.stride() or t.dtype != saved.dtype
                        or t.storage_offset() != saved.storage_offset() or not torch.equal(t, saved)):
                    t.set_(saved.untyped_storage(), saved.storage_offset(), saved.size(), saved.stride())
                if t.requires_grad != grad and t.is_leaf:
                    t.requires_grad_(grad)
        if self.x_attrs is not None:
            d = instance_dict(self.x)
            if d is not None and d != self.x_attrs:
                d.clear()
                d.update(self.x_attrs)


def _saved(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` with its own storage, shape, strides and offset."""
    storage = t.untyped_storage()
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(storage.clone() if storage.nbytes() else storage,
                                                               t.storage_offset(), t.size(), t.stride())


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
             spans: list[tuple[int, int]], train: bool, original: nn.Module | None = None,
             second: Mapping[str, torch.Tensor] | None = None) -> str | None:
    """One comparison of the forward (on the caller's ``original`` module and input when given, else on
    a private copy of ``model``) with the traced graph ``gm``; and, given the state at a second α
    (``second``), of the forward there with the forward here (:func:`_constants_move`)."""
    from .line import private_copy

    # the caller's own module and input are put back before the traced graph runs on ``x``; a copy
    # runs on a clone of ``x`` (_run), so ``x`` is as it was in both cases
    kept = _Kept(original, x, frozenset(state)) if original is not None else None
    try:
        subject = original if original is not None else private_copy(model)  # a copy of its own: untouched by the trace
        forward = _run(subject, state, x, spans, train, outside=True, original=original is not None)
        # the caller's module and input once more: a mark the first call left anywhere (seen or not by
        # the fingerprints) changes what a later call runs
        again = _run(subject, state, x, spans, train, original=True) if original is not None else forward
        # and with the process settings a caller's evaluation may differ in (autograd recording, the default dtype)
        flipped = _caller_run(model, state, x, spans, train, original)
    except Exception as exc:  # noqa: BLE001 - the forward itself fails on these inputs: nothing to compare
        return f"the forward could not be run to compare it with its trace ({type(exc).__name__}: {str(exc)[:120]})"
    finally:
        if kept is not None:
            kept.restore()
    try:  # the same module on the weights of a second α (see _constants_move)
        moved = _run(subject, second, x, spans, train, original=original is not None) if second is not None else None
    except Exception as exc:  # noqa: BLE001 - it runs at one α and fails at another: values decide
        return f"the forward fails on the weights of a second α ({type(exc).__name__}: {str(exc)[:120]})"
    finally:
        if kept is not None:
            kept.restore()
    if forward.changed:
        return (f"the forward changes its module's Python attribute {forward.changed[0]!r} when it runs: what it "
                "computes may depend on how often it has run, which no trace shows")
    if forward.outside:
        return (f"the forward changes {forward.outside[0]} when it runs (state outside its modules): what it computes "
                "may depend on how often it has run, which no trace shows")
    if forward.raised:
        return (f"an operation raised an error inside the forward, which went on ({forward.raised[0]}): whether it "
                "raises depends on values, so what the forward computes may change along α")
    if forward.reads:
        where = " in training mode" if train else ""
        return (f"the forward{where} reads tensor values into Python ({', '.join(sorted(set(forward.reads))[:4])}): "
                "what it computes may change along α in ways its trace does not show")
    if forward.random:
        return (f"the forward draws random numbers ({forward.random[0]}): what it computes is not a function of the "
                "weights and inputs alone (a generator's position can count its calls)")
    uninitialised = forward.uninitialised or again.uninitialised or flipped.uninitialised
    if uninitialised:
        return (f"the forward reads uninitialised memory ({uninitialised[0]}): its values are whatever memory held "
                "before (freed tensors among them), not a function of the weights and inputs")
    held = forward.kept_writes or again.kept_writes or flipped.kept_writes
    if held:
        return (f"the forward writes values of its weights or inputs into memory it did not make ({held[0]} into a tensor "
                "it keeps, or NumPy's memory): whatever else holds that memory reads them with no operation compared, "
                "and they outlive the call")
    if again.ops != forward.ops or again.reads != forward.reads or again.returned != forward.returned:
        return ("the forward runs other operations the second time it is called on the same module and input: it "
                "keeps a mark between calls, so what it computes depends on how often it has run")
    if _unread_clones_dropped(flipped.loose, flipped.returned) != _unread_clones_dropped(forward.loose, forward.returned) \
            or flipped.reads != forward.reads or flipped.random:
        return ("the forward runs other operations with its weights loaded into it (load_state_dict, where the curve swaps "
                "them in), with autograd recording or under the other default dtype (torch.set_default_dtype): what it "
                "computes depends on how a caller loads and runs it")
    try:
        traced = _run(gm, state, x, spans, train)
    except Exception as exc:  # noqa: BLE001
        return f"the traced graph could not be run on the forward's inputs ({type(exc).__name__}: {str(exc)[:120]})"
    if traced.kept_writes:
        return (f"the traced graph writes values of the weights or inputs into memory it did not make ({traced.kept_writes[0]} "
                "into one of its constants): it is not a function of its inputs")
    if traced.ops == forward.ops and traced.returned != forward.returned:
        return ("the forward returns other tensors than its traced graph, from the same operations (it found out that "
                "it was being traced, or it depends on the batch's size): it computes something else when traced than "
                "when run")
    if traced.ops == forward.ops:
        if forward.refused is not None:  # what it reaches could tell this run from the curve's
            return (f"the forward of {forward.refused}: it may compute one thing when compared with its trace and "
                    "another when run")
        return _constants_move(forward, moved, train) if moved is not None else None
    k = next((i for i, (f, t) in enumerate(zip(forward.ops, traced.ops)) if f != t), min(len(forward.ops), len(traced.ops)))
    a = forward.ops[k][0] if k < len(forward.ops) else "nothing"
    b = traced.ops[k][0] if k < len(traced.ops) else "nothing"
    detail = " (with other arguments: other constants, or other tensors of the state, input or earlier operations)" if a == b else ""
    longer = forward.ops if k < len(forward.ops) else traced.ops
    span = longer[k][3]
    if span is not None and len(spans) > 1:
        detail += f", on the curve's batch of rows {span[0]}–{span[1] - 1}"
    where = " in training mode (the statistics' re-estimation pass)" if train else ""
    return (f"the forward{where} runs other operations than its traced graph: operation {k + 1} is {a} in the forward and "
            f"{b} in the trace{detail} ({len(forward.ops)} against {len(traced.ops)} operations): it computes "
            "something else when traced than when run")


def _constants_move(forward: _Recorder, other: _Recorder, train: bool) -> str | None:
    """Why the forward run on the state of a second α (``other``: the same module on the same
    inputs) differs from ``forward``'s record, or None. Everything the record holds besides origins does not
    depend on α where the forward sees the weights and inputs only through recorded operations:
    the operations, their constant arguments (tensors bit for bit, numbers), the shapes, what is
    returned. A constant that moves with α reached the forward some other way (memory read back
    without an operation, a value carried outside the dispatcher): whatever the route, known or not,
    it shows here, where the comparison at one α compares such a constant with itself."""
    if other.ops == forward.ops and other.returned == forward.returned and other.reads == forward.reads \
            and not other.random and not other.uninitialised:
        return None
    k = next((i for i, (f, o) in enumerate(zip(forward.ops, other.ops)) if f != o), min(len(forward.ops), len(other.ops)))
    where = f"operation {k + 1} ({forward.ops[k][0] if k < len(forward.ops) else 'nothing'})" \
        if k < max(len(forward.ops), len(other.ops)) else "what it returns"
    mode = " in training mode" if train else ""
    return (f"the forward{mode} runs with other constants on the weights of another α ({where} differs): values of "
            "its weights or inputs reach it other than through the operations compared, so the comparison at one α "
            "does not speak for the others")


def _unread_clones_dropped(ops: list[tuple], returned: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """``ops`` (a recorder's operations) without the copies that no later operation reads and the
    forward does not return, the other references (``returned`` too) renumbered. Autograd adds such
    a copy where an in-place operation's backward needs its input (``hardtanh_``, so
    ``ReLU6(inplace=True)``, under autograd recording): the same operations on the same values, which
    the comparison of a caller's settings must not count as another computation. A copy that is read
    or returned stays: a copy and the original changed in place after it hold different values."""
    def ref(a: Any) -> bool:
        return isinstance(a, tuple) and len(a) == 4 and a[:2] == ("live", "op")

    read = {a[2] for op in ops for a in op[1] if ref(a)} | {a[2] for out in returned for a in out if ref(a)}
    keep = [i for i, op in enumerate(ops) if not (op[0] == "aten.clone.default" and i not in read)]
    if len(keep) == len(ops):
        return ops, returned
    new = {old: k for k, old in enumerate(keep)}

    def renumber(a: Any) -> Any:
        return ("live", "op", new[a[2]], a[3]) if ref(a) else a

    return ([(op[0], tuple(renumber(a) for a in op[1]), *op[2:]) for op in (ops[i] for i in keep)],
            [tuple(renumber(a) for a in out) for out in returned])


def _caller_run(model: nn.Module, state: Mapping[str, torch.Tensor], x: Any, spans: list[tuple[int, int]],
                train: bool, original: nn.Module | None = None) -> _Recorder:
    """The forward as a caller may run it where the curve does not: on a private copy of ``model``
    with the state loaded into its own parameters (``load_state_dict``: ``nn.Parameter`` objects,
    identities kept), with autograd recording, under the other default dtype; where that fails on
    mixed dtypes (a tensor made with the default dtype meets the model's), under the same default.
    A setting under which the forward raises that way gives a caller no curve, so none to differ
    from; any other failure is raised (the comparison then refuses). ``original``: the caller's
    module compared in the other runs, whose BatchNorm momentum (an argument of every BatchNorm
    operation, unused in evaluation mode) the copy takes instead of the line's."""
    from .line import private_copy

    def copy() -> nn.Module:
        c = private_copy(model)
        if original is not None:
            for a, b in zip(c.modules(), original.modules()):
                if isinstance(a, nn.modules.batchnorm._BatchNorm) and type(a) is type(b):
                    a.momentum = b.momentum
        return c

    try:
        return _run(copy(), state, x, spans, train, flipped=(True, True), loaded=True)
    except (RuntimeError, TypeError) as exc:
        text = str(exc)
        if not any(k in text for k in ("dtype", "scalar type", "should be the same")):
            raise
    return _run(copy(), state, x, spans, train, flipped=(True, False), loaded=True)


def trace_differs(model: nn.Module, state: Mapping[str, torch.Tensor], x: Any, *, train: bool = False,
                  batch_size: int | None = None, modes: tuple[bool, ...] | None = None,
                  original: nn.Module | None = None, second: Mapping[str, torch.Tensor] | None = None) -> str | None:
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
    ``x``). ``original``: the caller's own module of which ``model`` is a copy (the line's
    ``source``); where it runs on ``state`` as ``model`` does (the same modules, the same dtypes and
    devices, no tied entries), the evaluation-mode comparison runs it, on ``x`` itself, as the caller
    would, and puts its attributes back after: a forward that tells a copy from the original by
    identity is then compared where it matters. ``second``: the state at another α, where the
    forward must run with the same constants (:func:`_constants_move`). A model that :mod:`torch.fx`
    cannot trace gives None here: every method that needs the trace refuses it.

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
    # the re-estimation pass merges a last batch of one example into the one before
    train_spans = [(sl.start, sl.stop) for sl in recompute_batches(n, batch_size)] if n else spans
    same = original if original is not None and _runs_as(original, model, state) else None
    # the caller's module is compared with its own trace: the line's copy differs from it only where
    # the line sets it up (BatchNorm's momentum, which evaluation mode does not use); and that trace
    # must be the graph the certifier reads, the line's copy's (a forward that reads how its module was
    # copied, moved or untied traces to another)
    traced_original = _traced(original) if original is not None else None
    if original is not None and (traced_original is None or not _same_graph(gm, traced_original)):
        return ("the line's copy of the model (in the line's dtype and device, tied weights untied), whose trace is "
                "what the certificate reads, traces to another graph than the caller's module: its forward depends "
                "on how the module was copied or moved")
    traced_same = traced_original if same is not None else None
    for mode in modes if modes is not None else (train,):
        if mode or traced_same is None:
            # training mode on a copy: the line's BatchNorm re-estimates with momentum None, which the
            # caller's module need not have
            differs = _compare(model, gm, state, x, train_spans if mode else spans, mode, second=second)
        else:
            differs = _compare(model, traced_same, state, x, spans, mode, same, second=second)
        if differs is not None:
            return differs
    return None


def _same_graph(a: torch.fx.GraphModule, b: torch.fx.GraphModule) -> bool:
    """Whether two traces are one graph: the same code (operations, constants written into it,
    leaf modules called) and the same tensor constants, bit for bit. The constants' names are
    compared by order of appearance: fx names them after the attributes its root already has (a
    module traced before holds ``_tensor_constant0``, and its next trace names one
    ``_tensor_constant1``)."""
    code_a, names_a = _constants_renamed(a.code)
    code_b, names_b = _constants_renamed(b.code)
    if code_a != code_b:
        return False
    for p, q in zip(names_a, names_b):
        u, v = getattr(a, p, None), getattr(b, q, None)
        if not (isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor)) or _describe(u) != _describe(v):
            return False
    return True


def _constants_renamed(code: str) -> tuple[str, list[str]]:
    """``code`` with every ``_tensor_constantN`` renamed by its order of first appearance, and the
    original names in that order."""
    names: list[str] = []

    def rename(match: re.Match) -> str:
        if match.group(0) not in names:
            names.append(match.group(0))
        return f"_tensor_constant#{names.index(match.group(0))}"

    return re.sub(r"_tensor_constant\d+\b", rename, code), names


def _runs_as(original: nn.Module, model: nn.Module, state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``functional_call`` of the caller's ``original`` on the line's ``state`` runs what it
    runs on ``model`` (the line's copy of it): the same module classes, no entry tied to another
    (the line unties them), every parameter and buffer either swapped in from ``state`` (its own
    dtype, device, even the meta device, then never read) or of ``model``'s dtype and device, and
    so every tensor kept as a plain attribute."""
    mods, copies = list(original.modules()), list(model.modules())
    if len(mods) != len(copies) or any(type(a) is not type(b) for a, b in zip(mods, copies)):
        return False
    for kind in ("named_parameters", "named_buffers"):
        if len(dict(getattr(original, kind)(remove_duplicate=False))) != len(dict(getattr(original, kind)())):
            return False
    theirs = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    for name, t in [*original.named_parameters(remove_duplicate=False), *original.named_buffers(remove_duplicate=False)]:
        if name not in state and not _alike(t, theirs.get(name)):
            return False
    for a, b in zip(mods, copies):
        da, db = instance_dict(a) or {}, instance_dict(b) or {}
        if not all(_alike(da.get(k), v) for k, v in db.items() if isinstance(v, torch.Tensor)):
            return False
    return True


def _alike(u: Any, v: Any) -> bool:
    return (isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor) and u.dtype == v.dtype and u.device == v.device
            and not u.is_meta)


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
        if isinstance(v, torch.Tensor) and _runs_own_code(v):
            return (f"{label} is a {type(v).__name__}, a tensor subclass: its own code runs inside every operation on it, "
                    "where no trace or comparison sees what it reads")
    return None


# the comparison runs at one α (any α: what it compares does not depend on it), the forward once more
# at 1 − PROBE_ALPHA (its constants must not move)
PROBE_ALPHA = 0.7071067811865476


def _runs_own_code(value: Any) -> bool:
    """Whether operations on ``value`` run code of its own: a tensor subclass (made in the forward
    without any operation, ``t.__class__ = C``), or another object with a ``__torch_function__``."""
    if isinstance(value, torch.Tensor):
        return type(value) not in _PLAIN_TENSORS
    return hasattr(type(value), "__torch_function__")


def line_trace_differs(line: Any, x: Any, bn: Any = "recompute", batch_size: int | None = None) -> str | None:
    """:func:`trace_differs` of a line's model at θ(:data:`PROBE_ALPHA`) (every state entry
    interpolated) on every batch the loss curve evaluates (``batch_size`` rows of the inputs ``x``,
    a tensor or :class:`~mli_theory.inputs.Examples`; None: all of them at once), in the line's
    dtype and on its device; also in training mode when BatchNorm statistics are re-estimated along
    the line (``bn`` recompute); the forward once more at θ(1 − :data:`PROBE_ALPHA`), where its
    constants must be the same. One pass over the data for each of the runs: a small part of the
    curve's own cost."""
    if isinstance(x, torch.Tensor):
        x = x.to(line.device, line.dtype)
    retrains = line.has_bn and str(getattr(bn, "value", bn)) == "recompute" and len(x) > 1
    return trace_differs(line.shell, line.at(PROBE_ALPHA), x, batch_size=batch_size, modes=(False, True) if retrains else (False,),
                         original=getattr(line, "source", None), second=line.at(1 - PROBE_ALPHA))
