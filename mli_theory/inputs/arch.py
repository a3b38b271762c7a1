"""Architecture specs: strings that name a ``torch.nn`` model.

Grammar (see ``shared/GUIDE.md`` §3 of the project):

* ``linear:IN-OUT``: ``nn.Sequential(nn.Linear(IN, OUT))``.
* ``deep_linear:D0-D1-...-DL``: ``nn.Sequential`` of ``nn.Linear(Di, Di+1, bias=False)``.
* ``mlp:D0-...-DL[:ACT][:bn]``: ``nn.Sequential(Linear, [BatchNorm1d,] ACT, ..., Linear)`` with
  biases; ``ACT`` is one of ``relu`` (default), ``tanh``, ``sigmoid``, ``gelu``.
* ``package.module:factory``: an importable callable that returns an ``nn.Module``.

State dicts saved from plain PyTorch modules of these shapes load into the built models
(``0.weight``, ``1.weight``, ... for ``deep_linear``).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from ..errors import InputError

ArchKind = Literal["linear", "deep_linear", "mlp", "factory"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


@dataclass(frozen=True)
class ArchSpec:
    """A parsed architecture spec.

    Attributes:
        text: the spec as the user wrote it.
        kind: ``linear``, ``deep_linear``, ``mlp`` or ``factory``.
        dims: layer widths ``D0..DL`` (empty for a factory).
        activation: activation name for ``mlp`` (else ``None``).
        batchnorm: whether an ``mlp`` has BatchNorm1d after each hidden Linear.
        target: ``module:attr`` of a factory (else ``None``).
    """

    text: str
    kind: ArchKind
    dims: tuple[int, ...] = ()
    activation: str | None = None
    batchnorm: bool = False
    target: str | None = None


def _parse_dims(text: str, spec: str, minimum: int) -> tuple[int, ...]:
    parts = text.split("-")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"arch spec {spec!r}: widths must be integers joined by '-'") from None
    if len(dims) < minimum:
        raise InputError(f"arch spec {spec!r}: needs at least {minimum} widths")
    if any(d <= 0 for d in dims):
        raise InputError(f"arch spec {spec!r}: widths must be positive")
    return dims


def parse_arch(spec: str) -> ArchSpec:
    """Parse an architecture spec string (see the module docstring for the grammar).

    >>> parse_arch("mlp:10-64-1:tanh:bn")
    ArchSpec(text='mlp:10-64-1:tanh:bn', kind='mlp', dims=(10, 64, 1), activation='tanh', batchnorm=True, target=None)
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("empty arch spec")
    head, _, rest = spec.partition(":")
    if head == "linear":
        dims = _parse_dims(rest, spec, 2)
        if len(dims) != 2:
            raise InputError(f"arch spec {spec!r}: linear takes exactly IN-OUT")
        return ArchSpec(spec, "linear", dims)
    if head == "deep_linear":
        return ArchSpec(spec, "deep_linear", _parse_dims(rest, spec, 2))
    if head == "mlp":
        fields = rest.split(":")
        dims = _parse_dims(fields[0], spec, 2)
        act, bn = "relu", False
        seen_act = False
        for opt in fields[1:]:
            if opt == "bn" and not bn:
                bn = True
            elif opt in _ACTIVATIONS and not seen_act:
                act, seen_act = opt, True
            else:
                raise InputError(
                    f"arch spec {spec!r}: unknown or repeated option {opt!r} "
                    f"(activations: {', '.join(_ACTIVATIONS)}; or 'bn')"
                )
        return ArchSpec(spec, "mlp", dims, activation=act, batchnorm=bn)
    if rest and _is_dotted(head) and _is_dotted(rest):
        return ArchSpec(spec, "factory", target=spec)
    raise InputError(
        f"unknown arch spec {spec!r} (expected linear:IN-OUT, deep_linear:D0-..-DL, "
        "mlp:D0-..-DL[:act][:bn] or package.module:factory)"
    )


def _is_dotted(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def build_model(spec: ArchSpec | str) -> nn.Module:
    """Build a fresh ``nn.Module`` from a spec (float32, CPU, default initialisation)."""
    if isinstance(spec, str):
        spec = parse_arch(spec)
    d = spec.dims
    if spec.kind == "linear":
        return nn.Sequential(nn.Linear(d[0], d[1]))
    if spec.kind == "deep_linear":
        return nn.Sequential(*[nn.Linear(a, b, bias=False) for a, b in zip(d[:-1], d[1:])])
    if spec.kind == "mlp":
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(d[:-1], d[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(d) - 2:
                if spec.batchnorm:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(_ACTIVATIONS[spec.activation or "relu"]())
        return nn.Sequential(*layers)
    return _call_factory(spec.target or spec.text)


def call_factory(target: str, *, module_label: str = "factory module", import_hint: str = "") -> Any:
    """Import ``package.module`` of ``target`` (``"package.module:attr.path"``), call the attribute with
    no arguments and return what it returns. User code runs with stdout sent to stderr (stdout
    belongs to ``--json`` output); anything it raises (``SystemExit`` too) becomes a one-line
    :class:`InputError` naming ``target``."""
    mod_name, _, attr = target.partition(":")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            module = importlib.import_module(mod_name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # ImportError, or anything raised while importing user code
        raise InputError(f"cannot import {module_label} {mod_name!r}: {_first_line(exc)}{import_hint}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"factory {target!r} is not callable")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return obj()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: a factory must not end the program
        raise InputError(f"factory {target!r} raised {type(exc).__name__}: {_first_line(exc)[:200]}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def _call_factory(target: str) -> nn.Module:
    model = call_factory(target)
    if not isinstance(model, nn.Module):
        raise InputError(f"factory {target!r} returned {type(model).__name__}, not an nn.Module")
    return model


def has_batchnorm(model: nn.Module) -> bool:
    """Whether the model contains any BatchNorm layer with running statistics."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules()
    )
