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
* any operation outside the tables below.

Kinds, from the most to the least structured:

* :attr:`PathKind.POLYNOMIAL`: the graph is a chain ``x → A_1 → … → A_L → output`` of exact
  ``nn.Linear`` modules (``nn.Identity`` and eval-mode ``nn.Dropout`` allowed between them). Along
  θ(α) = θ0 + αΔθ the outputs are polynomials of degree ≤ L in α.
* :attr:`PathKind.SMOOTH`: every operation is in the table of C∞ operations (affine layers,
  BatchNorm with fixed statistics, tanh, sigmoid, GELU, softplus, …): z(α) is C² on [0, 1].
* :attr:`PathKind.PIECEWISE_SMOOTH`: as SMOOTH, but with kinks (ReLU, LeakyReLU, max pooling,
  abs, clamp): z(α) is continuous and piecewise C²; z′ may jump at finitely many α.
* :attr:`PathKind.UNKNOWN`: anything else.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn
from torch.nn import functional as F


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
    """

    kind: PathKind
    reason: str
    chain: tuple[str, ...] | None = None
    linear: tuple[tuple[str, bool], ...] = ()

    @property
    def degree(self) -> int | None:
        """Degree bound of z(α) in α for POLYNOMIAL paths (the number of affine layers), else None."""
        return len(self.linear) if self.kind == PathKind.POLYNOMIAL else None


# modules whose forward is smooth in (input, parameters) when evaluated with fixed statistics
_SMOOTH_MODULES: tuple[type, ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.SiLU,
    nn.Softplus,
    nn.ELU,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Dropout,
)
_KINKED_MODULES: tuple[type, ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardtanh,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
_CHAIN_PASSTHROUGH: tuple[type, ...] = (nn.Identity, nn.Dropout)

_SMOOTH_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.getitem,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.tanh, torch.sigmoid, torch.exp,
    torch.flatten, torch.cat, torch.stack, torch.reshape, torch.transpose, torch.permute, torch.matmul,
    torch.softmax, torch.log_softmax,
    F.linear, F.conv1d, F.conv2d, F.gelu, F.silu, F.softplus, F.elu, F.layer_norm, F.group_norm,
    F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.softmax, F.log_softmax,
    F.scaled_dot_product_attention,
}
_KINKED_FUNCTIONS = {torch.relu, F.relu, F.leaky_relu, F.relu6, F.hardtanh, torch.abs, torch.clamp, F.max_pool1d, F.max_pool2d}
_SMOOTH_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "size", "unsqueeze", "squeeze",
    "add", "sub", "mul", "div", "tanh", "sigmoid", "exp", "softmax", "log_softmax", "matmul", "t", "expand",
}
_KINKED_METHODS = {"relu", "abs", "clamp"}


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

    from .pristine import replaced_functions

    replaced = replaced_functions()
    if replaced:
        return f"torch functions have been replaced in this process ({', '.join(replaced)}): the trace cannot show what they compute"
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_forward_hooks_always_called"):
        if getattr(module_mod, attr, None):
            return "global module forward hooks are registered"
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
    return None


def _natural_exponent(node) -> bool:
    """x ** n with a literal natural number n (a polynomial, so smooth); fractional powers are not."""
    exponent = node.args[1] if len(node.args) > 1 else node.kwargs.get("exponent")
    return isinstance(exponent, int) and not isinstance(exponent, bool) and exponent >= 0


def _module_class(m: nn.Module) -> str:
    """``smooth``, ``kinked`` or ``other`` for a leaf module (exact types only: no subclasses)."""
    t = type(m)
    if t in _KINKED_MODULES:
        return "kinked"
    if t in _SMOOTH_MODULES:
        return "smooth"
    return "other"


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
            graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # any failure to trace means we cannot tell what the model computes
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return PathStructure(PathKind.UNKNOWN, f"torch.fx could not trace the model ({type(exc).__name__}: {msg})")
    modules = dict(model.named_modules())
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]

    # classify every operation
    kind = PathKind.SMOOTH
    first_kink = None
    for node in nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "call_module":
            cls = _module_class(modules[node.target])
            label = f"{node.target} ({type(modules[node.target]).__name__})"
        elif node.op == "call_function":
            cls = "kinked" if node.target in _KINKED_FUNCTIONS else ("smooth" if node.target in _SMOOTH_FUNCTIONS else "other")
            if node.target in (operator.pow, torch.pow):
                cls = "smooth" if _natural_exponent(node) else "other"
            label = getattr(node.target, "__name__", str(node.target))
        elif node.op == "call_method":
            cls = "kinked" if node.target in _KINKED_METHODS else ("smooth" if node.target in _SMOOTH_METHODS else "other")
            if node.target == "pow":
                cls = "smooth" if _natural_exponent(node) else "other"
            label = f".{node.target}()"
        elif node.op == "get_attr":
            cls, label = "smooth", node.target
        else:  # pragma: no cover - fx has no other ops today
            cls, label = "other", node.op
        if cls == "other":
            return PathStructure(PathKind.UNKNOWN, f"no smoothness rule for the operation {label}")
        if cls == "kinked" and first_kink is None:
            kind, first_kink = PathKind.PIECEWISE_SMOOTH, label

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
        if linear and all(type(m) is nn.Linear or type(m) in _CHAIN_PASSTHROUGH for m in mods):
            return PathStructure(
                PathKind.POLYNOMIAL,
                f"traced: a chain of {len(linear)} affine layer(s); outputs are polynomials of degree ≤ {len(linear)} in α",
                chain,
                linear,
            )
    if kind == PathKind.PIECEWISE_SMOOTH:
        return PathStructure(kind, f"traced: every operation is smooth or piecewise smooth, first kink at {first_kink}", chain)
    return PathStructure(kind, "traced: every operation is smooth", chain)
