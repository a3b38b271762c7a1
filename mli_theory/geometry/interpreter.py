"""One interpreter, many number types: evaluate a traced model on numbers that carry more than a value.

A model f(x; θ) is traced once with :func:`torch.fx.symbolic_trace` into a graph of operations
(``placeholder``, ``get_attr``, ``call_module``, ``call_function``, ``call_method``, ``output``).
:func:`interpret` walks that graph node by node and evaluates every operation on *numbers* of one
number type. The walk knows nothing about what a number is; a :class:`NumberType` supplies

* ``is_number(obj)``: whether a value is one of its numbers (anything else is a plain Python or
  tensor value: shapes, dims, index tensors, constants built in ``forward``);
* ``rule(kind, key)``: the rule for an operation, or None. ``kind`` is ``"module"`` (key: the exact
  ``type`` of the submodule; never ``isinstance``, a subclass may compute something else),
  ``"function"`` (key: the function object, e.g. ``torch.tanh``, ``operator.add``) or
  ``"method"`` (key: the method name, e.g. ``"view"``). Module rules are called as
  ``rule(module, params, *args, **kwargs)`` with ``params`` the module's parameters and buffers
  (local name → number or tensor); function and method rules as ``rule(*args, **kwargs)``, with
  the tensor operands replaced by numbers and the non-tensor arguments (dims, strides, eps, …) as
  in the graph. A rule may return ``NotImplemented`` to decline a call it does not cover
  (BatchNorm in training mode, dropout with ``training=True``, …);
* ``fallback(fn, args, kwargs)``: evaluate an operation that has no rule (or whose rule declined)
  as the plain-tensor function ``fn`` of the tensors inside ``args``/``kwargs``.

Today's number type is the second-order jet of :mod:`mli_theory.geometry.rules`: a number is
(h, h′, h″), the value and first two derivatives in the path parameter α, and the fallback is
nested forward mode for that operation alone. A rigorous enclosure type (intervals or affine
forms in α) can reuse this walk unchanged by supplying its own rule table and fallback.

Walk semantics:

* placeholders take ``inputs`` in order (their defaults when ``inputs`` runs out);
* ``get_attr`` and the parameters/buffers of a called module are looked up by qualified name in
  ``params`` (the caller decides which entries move along the path and which are held fixed); a
  name that is not there is the module's own tensor, a plain value;
* an operation none of whose arguments is a number is evaluated as is (shape arithmetic, masks
  built from ``size()``, a parameter-free module such as ``nn.Unflatten`` applied to the data):
  constant folding; indexing a tuple or list is plain indexing;
* in-place operations (``x.add_(y)``, ``F.relu(x, inplace=True)``, ``nn.ReLU(inplace=True)``)
  are evaluated out of place, and the mutated node is rebound to the result, so later readers of that node see the new value as they would in torch. This is exact when the
  mutated tensor is a fresh result that no earlier view aliases; :func:`check_graph` refuses the
  graphs where that cannot be shown (an in-place op on an input, on a view, or on a tensor viewed
  before the mutation and read after it).
"""

from __future__ import annotations

import inspect
import operator
import warnings
import weakref
from typing import Any, Callable, Iterable, Literal, Mapping, Protocol

import torch
from torch import nn
from torch.fx import GraphModule, Node
from torch.func import functional_call

RuleKind = Literal["module", "function", "method"]


class NumberType(Protocol):
    """What :func:`interpret` needs from a number type (see the module docstring)."""

    name: str

    def is_number(self, obj: object) -> bool: ...

    def rule(self, kind: RuleKind, key: object) -> Callable[..., Any] | None: ...

    def fallback(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any: ...


class UnsupportedGraph(ValueError):
    """The interpreter cannot evaluate this model faithfully (the message says why)."""


# ----------------------------------------------------------------------------- tracing


def trace(module: nn.Module) -> GraphModule:
    """The model's :mod:`torch.fx` graph (raises :class:`UnsupportedGraph` when it cannot be traced).

    Hooks and ``__call__`` overrides are refused here, as :mod:`mli_theory.path.structure` does:
    the traced graph would not show what they do.
    """
    from ..path.structure import opaque_call_reason

    reason = opaque_call_reason(module)
    if reason is not None:
        raise UnsupportedGraph(reason)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():  # the mode every evaluation runs in (a forward may read it)
                gm = torch.fx.symbolic_trace(module)
    except Exception as exc:  # any failure to trace: we cannot tell what the model computes
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UnsupportedGraph(f"torch.fx could not trace the model ({type(exc).__name__}: {msg})") from exc
    check_graph(gm)
    return gm


# ----------------------------------------------------------------------------- labels and in-place ops


def _function_label(fn: object) -> str:
    name = getattr(fn, "__name__", None) or str(fn)
    mod = getattr(fn, "__module__", None) or ""
    if mod.startswith("torch._C._nn") or mod == "torch.nn.functional":
        return f"torch.nn.functional.{name}"
    if mod.startswith("torch") or mod == "":
        return f"torch.{name}" if mod.startswith("torch") else name
    return f"{mod}.{name}"


def node_label(gm: GraphModule, node: Node) -> str:
    """A readable name for an operation: ``layer (Mish)``, ``torch.atan``, ``.cumsum()``."""
    if node.op == "call_module":
        return f"{node.target} ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_function":
        return _function_label(node.target)
    if node.op == "call_method":
        return f".{node.target}()"
    return f"{node.op} {node.target}"


_INPLACE_OPERATORS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ipow: operator.pow,
    operator.imatmul: operator.matmul,
}


def _inplace_method(name: object) -> bool:
    return isinstance(name, str) and name.endswith("_") and not name.startswith("_")


def _truthy(flag: object) -> bool:
    """What ``if flag:`` decides, as torch's functions test ``inplace`` (1, a NumPy bool, any object
    that is true); an object whose truth cannot be read counts as true (the mutation is assumed)."""
    try:
        return bool(flag)
    except Exception:  # noqa: BLE001 - e.g. an array of several entries
        return True


def _inplace_flag(fn: object, args: tuple, kwargs: dict) -> bool:
    """Whether a functional call asks for ``inplace`` (by keyword or position; any true value, as
    torch's ``if inplace:`` reads it)."""
    if "inplace" in kwargs:
        return _truthy(kwargs["inplace"])
    try:
        params = list(inspect.signature(fn).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    if "inplace" in params:
        i = params.index("inplace")
        return i < len(args) and _truthy(args[i])
    return False


def mutated_input(gm: GraphModule, node: Node) -> Node | None:
    """The node an operation modifies in place (its first argument), or None."""
    first = node.args[0] if node.args else None
    if not isinstance(first, Node):
        return None
    if node.op == "call_method" and _inplace_method(node.target):
        return first
    if node.op == "call_function":
        if node.target in _INPLACE_OPERATORS:
            return first
        name = getattr(node.target, "__name__", "")
        if _inplace_method(name) and getattr(node.target, "__module__", "") in ("torch", "torch.nn.functional"):
            return first
        if _inplace_flag(node.target, node.args, node.kwargs):
            return first
    if node.op == "call_module" and _truthy(getattr(gm.get_submodule(node.target), "inplace", False)):
        return first
    return None


# operations whose result is a fresh tensor (never a view of an input): safe to mutate in place
_FRESH_MODULES = (
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.Embedding,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.Softplus, nn.Softmax, nn.LogSoftmax, nn.Mish, nn.Hardswish,
)
_FRESH_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.matmul, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.cat, torch.stack,
    torch.tanh, torch.sigmoid, torch.exp, torch.relu, torch.softmax, torch.log_softmax, torch.nn.functional.linear,
    torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d,
    torch.nn.functional.batch_norm, torch.nn.functional.layer_norm, torch.nn.functional.group_norm,
    torch.nn.functional.gelu, torch.nn.functional.silu, torch.nn.functional.softplus,
}
_FRESH_FUNCTIONS |= {torch.zeros, torch.ones, torch.full, torch.empty, torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like}
_FRESH_METHODS = {
    "add", "sub", "mul", "div", "matmul", "clone", "exp", "tanh", "sigmoid", "softmax", "log_softmax", "pow",
    "new_zeros", "new_ones", "new_full", "new_empty",
}
_NON_TENSOR_METHODS = {"size", "dim", "numel", "ndimension", "nelement", "is_contiguous", "is_floating_point", "get_device"}


def _fresh(gm: GraphModule, node: Node) -> bool:
    if mutated_input(gm, node) is not None:
        return False  # its result aliases the tensor it modified
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        return type(m) in _FRESH_MODULES or type(m) in (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.ELU)
    if node.op == "call_function":
        return node.target in _FRESH_FUNCTIONS
    if node.op == "call_method":
        return node.target in _FRESH_METHODS
    return False


def _non_tensor(node: Node) -> bool:
    if node.op == "call_method":
        return node.target in _NON_TENSOR_METHODS
    return node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim", "dtype", "device")


def check_graph(gm: GraphModule) -> None:
    """Refuse (:class:`UnsupportedGraph`) in-place operations whose effect rebinding cannot reproduce.

    An in-place op on node ``a`` is evaluated out of place and ``a`` is rebound to the result. That
    is exact when ``a`` is a fresh tensor (the output of a layer or arithmetic, not a view or an
    input) and no view of ``a`` taken before the mutation is read after it.
    """
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    for n in nodes:
        if n.op not in ("call_module", "call_function", "call_method"):
            continue
        a = mutated_input(gm, n)
        if a is None:
            continue
        label = node_label(gm, n)
        if not _fresh(gm, a):
            raise UnsupportedGraph(f"{label} modifies {a.name} in place, which may alias another tensor")
        for u in a.users:
            if u is n or order[u] > order[n] or _fresh(gm, u) or _non_tensor(u):
                continue
            if any(order[w] > order[n] for w in u.users):
                raise UnsupportedGraph(f"{label} modifies {a.name} in place after {u.name} may have aliased it")


# ----------------------------------------------------------------------------- plan


def _fetch_attr(gm: GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _module_tensors(m: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(m.named_parameters(remove_duplicate=False)) + list(m.named_buffers(remove_duplicate=False))


def _rule_for(gm: GraphModule, node: Node, numbers: NumberType):
    if node.op == "call_module":
        return numbers.rule("module", type(gm.get_submodule(node.target)))
    if node.op == "call_function":
        target = _INPLACE_OPERATORS.get(node.target, node.target)
        return numbers.rule("function", target)
    name = node.target
    rule = numbers.rule("method", name)
    if rule is None and _inplace_method(name):
        rule = numbers.rule("method", name[:-1])
    return rule


def plan(gm: GraphModule, numbers: NumberType) -> list[str]:
    """Labels of the operations that would be evaluated by ``numbers.fallback`` (no rule), in graph order.

    Static: operations that only see plain values (shape arithmetic) are not listed, and a rule can
    still decline a particular call at run time (``interpret(..., fallbacks=...)`` records those).
    """
    depends: set[Node] = set()
    out: list[str] = []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            depends.add(node)
            continue
        if node.op == "output":
            continue
        inputs = node.all_input_nodes
        dep = node.op == "call_module" or any(i in depends for i in inputs)
        if _non_tensor(node):
            dep = False
        if dep:
            depends.add(node)
            if node.op == "call_function" and node.target in (operator.getitem, getattr):
                continue  # indexing a tuple or reading an attribute: always handled by the walk or a rule
            if _rule_for(gm, node, numbers) is None:
                label = node_label(gm, node)
                if label not in out:
                    out.append(label)
    return out


# ----------------------------------------------------------------------------- the walk


def _has_number(obj: Any, numbers: NumberType) -> bool:
    if numbers.is_number(obj):
        return True
    if isinstance(obj, (list, tuple)):
        return any(_has_number(o, numbers) for o in obj)
    if isinstance(obj, dict):
        return any(_has_number(o, numbers) for o in obj.values())
    if isinstance(obj, slice):
        return any(_has_number(o, numbers) for o in (obj.start, obj.stop, obj.step))
    return False


def _method_fn(name: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, name)(*args, **kwargs)

    return call


def _module_fn(m: nn.Module) -> Callable[..., Any]:
    def call(state: dict, *args: Any, **kwargs: Any) -> Any:
        return functional_call(m, state, args, kwargs)

    return call


_MUTATIONS: "weakref.WeakKeyDictionary[GraphModule, dict[Node, Node]]" = weakref.WeakKeyDictionary()


def _mutations(gm: GraphModule) -> dict[Node, Node]:
    """In-place operation → the node it modifies, computed once per graph."""
    got = _MUTATIONS.get(gm)
    if got is None:
        got = {}
        for n in gm.graph.nodes:
            if n.op in ("call_module", "call_function", "call_method"):
                a = mutated_input(gm, n)
                if a is not None:
                    got[n] = a
        _MUTATIONS[gm] = got
    return got


def interpret(
    gm: GraphModule,
    numbers: NumberType,
    inputs: Iterable[Any],
    params: Mapping[str, Any],
    *,
    fallbacks: list[str] | None = None,
    on_node: Callable[[Node, Any, tuple, dict], None] | None = None,
) -> Any:
    """Evaluate the traced model on numbers of type ``numbers`` (see the module docstring).

    Args:
        gm: the traced model (:func:`trace`).
        numbers: the number type: predicates, rule table, fallback.
        inputs: values of the placeholders, in order (numbers or plain values).
        params: numbers (or plain tensors) for parameters and buffers, keyed by qualified name as in
            ``gm.state_dict()``; a name that is missing is the module's own tensor.
        fallbacks: if given, the label of every operation evaluated by ``numbers.fallback`` is
            appended once (first-seen order).
        on_node: if given, called as ``on_node(node, out, args, kwargs)`` after every operation
            node, with the values it read (for a submodule, ``args`` starts with its parameters
            dict, as module rules receive them): a tape for a reverse walk (see :func:`reads`).

    Returns:
        What the graph returns, with numbers in place of tensors.
    """
    env: dict[Node, Any] = {}
    it = iter(inputs)
    mutations = _mutations(gm)
    free_after = _last_uses(gm)

    def load(a: Any) -> Any:
        return torch.fx.node.map_arg(a, lambda n: env[n])

    def fall_back(node: Node, fn: Callable[..., Any], args: tuple, kwargs: dict, declined: bool = False) -> Any:
        label = node_label(gm, node)
        if fallbacks is not None and label not in fallbacks:
            fallbacks.append(label)
        try:
            return numbers.fallback(fn, args, kwargs)
        except (NotImplementedError, RuntimeError) as exc:
            msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            if declined:
                why = getattr(numbers, "declined", None)
                said = f" ({why})" if why else ""
                raise UnsupportedGraph(f"{label}: the {numbers.name} rule declines these arguments{said}, and the fallback failed: {msg}") from exc
            raise UnsupportedGraph(f"{label} has no {numbers.name} rule and its fallback failed: {msg}") from exc

    for node in gm.graph.nodes:
        op = node.op
        if op == "placeholder":
            try:
                env[node] = next(it)
            except StopIteration:
                if not node.args:
                    raise TypeError(f"missing input for {node.target}") from None
                env[node] = node.args[0]
            continue
        if op == "get_attr":
            env[node] = params[node.target] if node.target in params else _fetch_attr(gm, node.target)
            continue
        if op == "output":
            return load(node.args[0])
        args, kwargs = load(node.args), load(node.kwargs)
        if op == "call_module":
            m = gm.get_submodule(node.target)
            p = {k: params.get(f"{node.target}.{k}", t) for k, t in _module_tensors(m)}
            rule = None
            if not _has_number((p, args, kwargs), numbers):  # constant folding, as for functions
                out = _module_fn(m)(p, *args, **kwargs)
            else:
                rule = numbers.rule("module", type(m))
                out = NotImplemented if rule is None else rule(m, p, *args, **kwargs)
            if out is NotImplemented:
                out = fall_back(node, _module_fn(m), (p, *args), kwargs, declined=rule is not None)
        elif op == "call_function":
            fn = _INPLACE_OPERATORS.get(node.target, node.target)
            if fn is operator.getitem and isinstance(args[0], (tuple, list, dict, torch.Size)):
                out = args[0][args[1]]
            elif not _has_number((args, kwargs), numbers):
                out = node.target(*args, **kwargs)
            else:
                rule = numbers.rule("function", fn)
                out = NotImplemented if rule is None else rule(*args, **kwargs)
                if out is NotImplemented:
                    out = fall_back(node, fn, args, kwargs, declined=rule is not None)
        elif op == "call_method":
            if not _has_number((args, kwargs), numbers):
                out = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                name = node.target
                rule = numbers.rule("method", name)
                if rule is None and _inplace_method(name):
                    name = name[:-1]
                    rule = numbers.rule("method", name)
                out = NotImplemented if rule is None else rule(*args, **kwargs)
                if out is NotImplemented:
                    out = fall_back(node, _method_fn(name), args, kwargs, declined=rule is not None)
        else:  # pragma: no cover - fx has no other ops
            raise UnsupportedGraph(f"unknown graph op {op}")
        env[node] = out
        if on_node is not None:
            on_node(node, out, (p, *args) if op == "call_module" else args, kwargs)
        target = mutations.get(node)
        if target is not None:
            env[target] = out
        for dead in free_after.get(node, ()):  # values no later node reads: memory as in a plain forward
            env.pop(dead, None)
    raise UnsupportedGraph("the graph has no output")  # pragma: no cover


def reads(gm: GraphModule) -> dict[Node, tuple[tuple, dict]]:
    """The (args, kwargs) each node reads, as :func:`interpret` resolves them: a node modified in
    place earlier in the walk is replaced by the operation that modified it (the value a later
    reader sees). A reverse walk sends cotangents along these edges."""
    mutations = _mutations(gm)
    bound: dict[Node, Node] = {}
    out: dict[Node, tuple[tuple, dict]] = {}

    def rebind(a: Node) -> Node:
        return bound.get(a, a)

    for node in gm.graph.nodes:
        out[node] = (torch.fx.node.map_arg(node.args, rebind), torch.fx.node.map_arg(node.kwargs, rebind))
        target = mutations.get(node)
        if target is not None:
            bound[target] = node
    return out


def _last_uses(gm: GraphModule) -> dict[Node, list[Node]]:
    """For each node, the values read for the last time by it (and itself, if nothing reads it)."""
    last: dict[Node, Node] = {}
    for node in gm.graph.nodes:
        last.setdefault(node, node)
        for a in node.all_input_nodes:
            last[a] = node
    out: dict[Node, list[Node]] = {}
    for value, node in last.items():
        if node.op != "output":
            out.setdefault(node, []).append(value)
    return out
