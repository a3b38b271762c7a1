r"""How smooth each operation is, for its parameter values: the one table.

Every method that depends on the smoothness of the output path z(α) = f(X; θ(α)) reads it from
here, through :func:`mli_theory.path.structure.analyse`: the path kind (which hypotheses of the
conditions can hold), and, by the checks in ``tests/test_smoothness.py``, the rules of the jets
(:mod:`mli_theory.geometry.rules`) and of the enclosures (:mod:`mli_theory.certify.enclosures`).

An entry classifies an operation *and its parameter values*, read from the module instance
(``nn.ELU(alpha=0.5).alpha``) or from the call's positional and keyword arguments
(``F.elu(x, alpha=0.5)``, ``F.softplus(x, 2, threshold=5)``, ``x.clamp(min=0)``). A parameter that
is not a literal (computed in ``forward``) is taken to be any value. The class is a guarantee for
*every* value of the inputs, as a function of the inputs that vary along α (:class:`Smoothness`,
ordered from the least to the most regular):

* :attr:`Smoothness.UNKNOWN` — no entry, or parameter values for which nothing is claimed
  (random in training mode, a singular normalisation with ``eps = 0``, ...);
* :attr:`Smoothness.DISCONTINUOUS` — the value itself may jump: Softplus with a finite
  ``threshold`` (above βx = threshold torch returns x, not log(1 + e^{βx})/β: a jump of
  log(1 + e^{−threshold})/β, ≈ 2·10⁻⁹ at the default 20), Hardshrink, Threshold with
  ``value ≠ threshold``, and every step (comparisons, sign, floor, argmax, the indices of
  ``max(dim)``, ``where`` / ``masked_fill`` / indexing whose condition or index varies along α);
* :attr:`Smoothness.C0` — continuous and piecewise C∞, with a kink: the first derivative jumps
  (ReLU, LeakyReLU with slope ≠ 1, PReLU, ReLU6, Hardtanh, Hardswish, Hardsigmoid, ELU with
  alpha ≠ 1, SELU, Softshrink, abs, clamp, maximum/minimum, max/min reductions, max pooling);
* :attr:`Smoothness.C1` — C¹ and piecewise C∞: the first derivative is continuous and the second
  jumps (ELU with alpha = 1: f″ is e^x → 1 below 0 and 0 above; CELU for every alpha:
  f″ = e^{x/α}/α → 1/α below 0 and 0 above; Softsign: f″ = −2 sign(x)/(1 + |x|)³ jumps from 2
  to −2);
* :attr:`Smoothness.SMOOTH` — C∞ wherever the computed value is finite (affine and bilinear
  layers, normalisations with ε > 0, tanh, sigmoid, GELU exact and tanh-approximated, SiLU, Mish
  (torch computes x·tanh(log1p(eˣ)) with no threshold), softmax, average pooling, products,
  quotients, natural powers, reshapes and indexing by constants).

A composition is at least as regular as its least regular operation, so the class of a traced
graph is the minimum over its nodes. Each :class:`Verdict` also lists the input values where an
elementwise operation is not C∞ (``breaks``), for the tests that probe them.

How :mod:`~mli_theory.path.structure` maps a class to a :class:`~mli_theory.path.PathKind`
(the JSON ``path_kind``): SMOOTH → ``smooth`` (or ``polynomial`` for a chain of affine layers),
C0 and C1 → ``piecewise_smooth`` (continuous, piecewise C²: z′ may jump for C0, only z″ for C1),
DISCONTINUOUS and UNKNOWN → ``unknown``: a path that may jump in value satisfies no hypothesis of
the conditions (all need z continuous), so it is reported with the other unclassified paths, and
:attr:`~mli_theory.path.PathStructure.smoothness` and the reason say which.

Variation along α. Only the inputs that vary along α matter: a comparison of the data with a
constant is constant along the path (a fixed mask), not a step. A value varies along α if it is
computed from a parameter or buffer of the model (every state entry moves, or may move, with α);
the data, tensor constants that are not state entries, and sizes and shapes do not.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F


class Smoothness(IntEnum):
    """The regularity an operation guarantees, least to most regular (see the module docstring)."""

    UNKNOWN = -2
    DISCONTINUOUS = -1
    C0 = 0
    C1 = 1
    SMOOTH = 100  # C∞

    @property
    def words(self) -> str:
        return _WORDS[self]


_WORDS = {
    Smoothness.UNKNOWN: "of unknown smoothness",
    Smoothness.DISCONTINUOUS: "possibly discontinuous (the value may jump)",
    Smoothness.C0: "continuous with kinks (C⁰: the first derivative may jump)",
    Smoothness.C1: "C¹ (the second derivative may jump)",
    Smoothness.SMOOTH: "C∞",
}


@dataclass(frozen=True)
class Verdict:
    """The class of one operation with its parameter values.

    Attributes:
        smoothness: the :class:`Smoothness`.
        why: the reason in words, with the parameter values (e.g. ``ELU(alpha=0.5): f′ jumps from
            0.5 to 1 at 0``).
        breaks: for an elementwise operation, the inputs where it is not C∞ (empty otherwise).
    """

    smoothness: Smoothness
    why: str
    breaks: tuple[float, ...] = ()


class Args:
    """The parameters of one use of an operation, by name.

    ``values`` holds the module's attributes or the call's bound arguments; ``varies(v)`` says
    whether an argument value varies along α (for module attributes and literals it is False).
    ``indices_used``: for operations that return (values, indices), whether the indices are read.
    """

    def __init__(self, values: Mapping[str, Any], varies: Callable[[Any], bool] | None = None, *, indices_used: bool = True,
                 module: nn.Module | None = None) -> None:
        self.values = dict(values)
        self._varies = varies or (lambda v: False)
        self.indices_used = indices_used
        self.module = module

    def get(self, name: str, default: Any = None) -> Any:
        if self.module is not None:
            return getattr(self.module, name, default)
        return self.values.get(name, default)

    def has(self, name: str) -> bool:
        return hasattr(self.module, name) if self.module is not None else name in self.values

    def number(self, name: str, default: float | None = None) -> float | None:
        """The parameter as a float when it is a literal number (or absent: ``default``); else None."""
        v = self.get(name, default) if self.has(name) else default
        if isinstance(v, bool):
            return float(v)
        if isinstance(v, (int, float)):
            return float(v)
        return None

    def varies(self, name: str) -> bool:
        return self.has(name) and self._varies(self.get(name))

    def any_varies(self) -> bool:
        return any(self._varies(v) for v in self.values.values())


Classify = Callable[[Args], Verdict]


@dataclass(frozen=True, eq=False)
class Op:
    """One entry of the table: an operation, its class as a function of its parameters, and the
    module classes, functions and tensor methods that compute it (with their positional parameter
    names, the input first, so that arguments can be read by name)."""

    name: str
    classify: Classify
    modules: tuple[type, ...] = ()
    functions: Mapping[Any, tuple[str, ...]] = field(default_factory=dict)
    methods: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def _fmt(x: float) -> str:
    return f"{x:g}"


def _smooth(why: str = "C∞") -> Verdict:
    return Verdict(Smoothness.SMOOTH, why)


# ----------------------------------------------------------------------------- classifiers


def _elu(a: Args) -> Verdict:
    alpha = a.number("alpha", 1.0)
    if alpha is None:
        return Verdict(Smoothness.C0, "ELU with a computed alpha: f′ may jump at 0", (0.0,))
    if alpha == 1.0:
        return Verdict(Smoothness.C1, "ELU(alpha=1) is C¹ only: f″ jumps from 1 (eˣ below 0) to 0 at 0", (0.0,))
    return Verdict(Smoothness.C0, f"ELU(alpha={_fmt(alpha)}): f′ jumps from {_fmt(alpha)} (alpha·eˣ below 0) to 1 at 0", (0.0,))


def _celu(a: Args) -> Verdict:
    alpha = a.number("alpha", 1.0)
    if alpha == 0.0:
        return Verdict(Smoothness.UNKNOWN, "CELU(alpha=0) is undefined")
    inv = "1/alpha" if alpha is None else _fmt(1.0 / alpha)
    return Verdict(Smoothness.C1, f"CELU is C¹ only: f″ = e^(x/alpha)/alpha jumps from {inv} to 0 at 0", (0.0,))


def _selu(a: Args) -> Verdict:
    s, al = 1.0507009873554805, 1.6732632423543772
    return Verdict(Smoothness.C0, f"SELU: f′ jumps from scale·alpha ≈ {s * al:.4f} to scale ≈ {s:.4f} at 0", (0.0,))


def _softplus(a: Args) -> Verdict:
    beta, threshold = a.number("beta", 1.0), a.number("threshold", 20.0)
    if beta is None or beta == 0.0:
        return Verdict(Smoothness.UNKNOWN, "Softplus with a zero or computed beta")
    if threshold is None:
        return Verdict(Smoothness.DISCONTINUOUS, "Softplus with a computed threshold: it returns x above βx = threshold, a jump")
    if threshold == math.inf:
        return _smooth("Softplus(threshold=inf) is log(1 + e^(βx))/β everywhere: C∞")
    if math.isnan(threshold):
        return Verdict(Smoothness.UNKNOWN, "Softplus(threshold=nan)")
    jump = math.log1p(math.exp(-threshold)) / abs(beta) if threshold > -700 else math.inf
    size = f"≈ {jump:.3g}" if jump > 0 else "> 0 (below the float range)"
    return Verdict(
        Smoothness.DISCONTINUOUS,
        f"Softplus(beta={_fmt(beta)}, threshold={_fmt(threshold)}) returns x where βx > threshold, not log(1 + e^(βx))/β: "
        f"the value jumps by log(1 + e^(−threshold))/|β| {size} at x = {_fmt(threshold / beta)}",
        (threshold / beta,),
    )


def _leaky(a: Args) -> Verdict:
    s = a.number("negative_slope", 0.01)
    if s == 1.0:
        return _smooth("LeakyReLU(negative_slope=1) is the identity")
    slope = "the slope" if s is None else _fmt(s)
    return Verdict(Smoothness.C0, f"LeakyReLU(negative_slope={slope}): f′ jumps from {slope} to 1 at 0", (0.0,))


def _prelu(a: Args) -> Verdict:
    return Verdict(Smoothness.C0, "PReLU: f′ jumps from the learned slope a(α) to 1 at 0", (0.0,))


def _rrelu(a: Args) -> Verdict:
    training = a.get("training", False)
    if training is not False:
        return Verdict(Smoothness.UNKNOWN, "RReLU in training mode draws random slopes")
    lo, hi = a.number("lower", 1.0 / 8), a.number("upper", 1.0 / 3)
    if lo is not None and hi is not None and (lo + hi) / 2 == 1.0:
        return _smooth("RReLU with slope 1 in eval mode is the identity")
    return Verdict(Smoothness.C0, "RReLU in eval mode (slope (lower + upper)/2): f′ jumps at 0", (0.0,))


def _relu(a: Args) -> Verdict:
    return Verdict(Smoothness.C0, "ReLU: f′ jumps from 0 to 1 at 0", (0.0,))


def _relu6(a: Args) -> Verdict:
    return Verdict(Smoothness.C0, "ReLU6: f′ jumps at 0 and at 6", (0.0, 6.0))


def _hardtanh(a: Args) -> Verdict:
    lo, hi = a.number("min_val", -1.0), a.number("max_val", 1.0)
    if lo is not None and hi is not None and lo >= hi:
        return _smooth(f"Hardtanh(min_val={_fmt(lo)}, max_val={_fmt(hi)}) is constant")
    breaks = tuple(v for v in (lo, hi) if v is not None)
    where = " and ".join(_fmt(v) for v in breaks) or "min_val and max_val"
    return Verdict(Smoothness.C0, f"Hardtanh: f′ jumps between 0 and 1 at {where}", breaks)


def _hardswish(a: Args) -> Verdict:
    return Verdict(Smoothness.C0, "Hardswish: f′ jumps from 0 to −1/2 at −3 and from 3/2 to 1 at 3", (-3.0, 3.0))


def _hardsigmoid(a: Args) -> Verdict:
    return Verdict(Smoothness.C0, "Hardsigmoid: f′ jumps between 0 and 1/6 at −3 and at 3", (-3.0, 3.0))


def _softsign(a: Args) -> Verdict:
    return Verdict(Smoothness.C1, "Softsign is C¹ only: f″ = −2 sign(x)/(1 + |x|)³ jumps from 2 to −2 at 0", (0.0,))


def _softshrink(a: Args) -> Verdict:
    lam = a.number("lambd", 0.5)
    if lam == 0.0:
        return _smooth("Softshrink(lambd=0) is the identity")
    if lam is None:
        return Verdict(Smoothness.C0, "Softshrink: f′ jumps at ±lambd")
    return Verdict(Smoothness.C0, f"Softshrink(lambd={_fmt(lam)}): f′ jumps at ±{_fmt(lam)}", (-lam, lam))


def _hardshrink(a: Args) -> Verdict:
    lam = a.number("lambd", 0.5)
    if lam == 0.0:
        return _smooth("Hardshrink(lambd=0) is the identity")
    if lam is None:
        return Verdict(Smoothness.DISCONTINUOUS, "Hardshrink: the value jumps by lambd at ±lambd")
    return Verdict(Smoothness.DISCONTINUOUS, f"Hardshrink(lambd={_fmt(lam)}): the value jumps by {_fmt(lam)} at ±{_fmt(lam)}", (-lam, lam))


def _threshold(a: Args) -> Verdict:
    t, v = a.number("threshold"), a.number("value")
    if t is not None and v is not None and t == v:
        return Verdict(Smoothness.C0, f"Threshold({_fmt(t)}, {_fmt(v)}): continuous, f′ jumps at {_fmt(t)}", (t,))
    if t is None or v is None:
        return Verdict(Smoothness.DISCONTINUOUS, "Threshold: the value jumps from value to threshold at x = threshold")
    return Verdict(Smoothness.DISCONTINUOUS, f"Threshold({_fmt(t)}, {_fmt(v)}): the value jumps by {_fmt(abs(t - v))} at {_fmt(t)}", (t,))


def _abs(a: Args) -> Verdict:
    return Verdict(Smoothness.C0, "abs: f′ jumps from −1 to 1 at 0", (0.0,))


def _clamp(a: Args) -> Verdict:
    has_lo = a.get("min") is not None
    has_hi = a.get("max") is not None
    if not (has_lo or has_hi):
        return Verdict(Smoothness.UNKNOWN, "clamp without bounds")
    lo = a.number("min") if has_lo else None
    hi = a.number("max") if has_hi else None
    if lo is not None and hi is not None and lo >= hi:
        return _smooth(f"clamp(min={_fmt(lo)}, max={_fmt(hi)}) is constant")
    breaks = tuple(v for v in (lo, hi) if v is not None)
    return Verdict(Smoothness.C0, "clamp: continuous in all its arguments, f′ jumps at the bounds", breaks)


def _clamp_one(a: Args) -> Verdict:
    b = next((a.number(k) for k in ("bound", "min", "max") if a.get(k) is not None), None)
    return Verdict(Smoothness.C0, "clamp_min/clamp_max: f′ jumps at the bound", () if b is None else (b,))


def _pairwise(a: Args) -> Verdict:
    return Verdict(Smoothness.C0, "elementwise maximum/minimum: continuous, a kink where the two arguments cross")


def _reduce_extremum(a: Args) -> Verdict:
    return Verdict(Smoothness.C0, "max/min reduction: continuous, a kink where the largest entries cross")


def _max_min(a: Args) -> Verdict:
    """torch.max / torch.min: a reduction, an elementwise maximum, or (with dim) (values, indices)."""
    other = a.get("other")
    with_dim = a.has("dim") and isinstance(a.get("dim"), (int, list, tuple)) or isinstance(other, int)
    if with_dim and a.indices_used:
        return Verdict(Smoothness.DISCONTINUOUS, "max/min along a dim: its indices are a step function of α (they are read)")
    if other is None and not with_dim:
        return _all_entries("max/min")
    return _reduce_extremum(a) if with_dim else _pairwise(a)


def _all_entries(what: str) -> Verdict:
    # like sum and mean (left out of the table): a reduction over every entry, the examples' axis
    # included, makes each output depend on the whole batch
    return Verdict(Smoothness.UNKNOWN, f"{what} over all entries (the examples' axis included) is not classified")


def _amax(a: Args) -> Verdict:
    dim = a.get("dim", ())
    if dim is None or dim == () or dim == []:
        return _all_entries("amax/amin")
    return _reduce_extremum(a)


def _max_pool(a: Args) -> Verdict:
    if a.get("return_indices", False) is not False and a.indices_used:
        return Verdict(Smoothness.DISCONTINUOUS, "max pooling with return_indices: the indices are a step function of α")
    return Verdict(Smoothness.C0, "max pooling: continuous, a kink where the largest entries of a window cross")


def _step(what: str) -> Classify:
    def classify(a: Args) -> Verdict:
        if a.any_varies():
            return Verdict(Smoothness.DISCONTINUOUS, f"{what} of values that vary along α: a step function")
        return _smooth(f"{what} of constants along α (data and literals): constant")

    return classify


def _where(a: Args) -> Verdict:
    if a.varies("condition"):
        return Verdict(Smoothness.DISCONTINUOUS, "where with a condition that varies along α: it switches branches, the value may jump")
    return _smooth("where with a condition fixed along α: a fixed selection")


def _masked_fill(a: Args) -> Verdict:
    if a.varies("mask"):
        return Verdict(Smoothness.DISCONTINUOUS, "masked_fill with a mask that varies along α: the value may jump")
    return _smooth("masked_fill with a mask fixed along α")


def _getitem(a: Args) -> Verdict:
    if a.varies("index"):
        return Verdict(Smoothness.DISCONTINUOUS, "indexing by a tensor that varies along α: the selection may jump")
    return _smooth("indexing by constants: a linear map")


def _div(a: Args) -> Verdict:
    if a.get("rounding_mode") is not None:
        return _step(f"division with rounding_mode={a.get('rounding_mode')!r}")(a)
    return _smooth("division: C∞ where the divisor is nonzero")


def _pow(a: Args) -> Verdict:
    e = a.get("exponent")
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not (e >= 0 and float(e).is_integer()):
        return Verdict(Smoothness.UNKNOWN, f"power with exponent {e!r}: only literal natural exponents are classified (smooth)")
    return _smooth(f"x ** {e}: a polynomial")


def _random_unless(flag: str, p: str, what: str, default_training: bool) -> Classify:
    def classify(a: Args) -> Verdict:
        training = a.get(flag, default_training)
        rate = a.number(p, 0.5)
        if training is not False and (rate is None or rate > 0):
            return Verdict(Smoothness.UNKNOWN, f"{what} is random in training mode")
        return _smooth(f"{what} in eval mode (or with p = 0) is the identity")

    return classify


def _normalisation(a: Args) -> Verdict:
    if a.get("eps", 1e-5) is None:  # RMSNorm's default: the dtype's machine epsilon
        return _smooth("normalisation with the default ε > 0: C∞")
    eps = a.number("eps", 1e-5)
    if eps is not None and eps > 0:
        return _smooth(f"normalisation with ε = {_fmt(eps)} > 0: C∞")
    return Verdict(Smoothness.UNKNOWN, f"normalisation with eps={a.get('eps')!r}: (σ² + ε)^(−1/2) is singular where the variance vanishes")


def _gelu(a: Args) -> Verdict:
    approx = a.get("approximate", "none")
    if approx in ("none", "tanh"):
        return _smooth(f"GELU(approximate={approx!r}): C∞")
    return Verdict(Smoothness.UNKNOWN, f"GELU(approximate={approx!r})")


def _sdpa(a: Args) -> Verdict:
    p = a.number("dropout_p", 0.0)
    if p != 0.0:
        return Verdict(Smoothness.UNKNOWN, "scaled_dot_product_attention with dropout_p > 0 is random")
    return _smooth("attention (softmax of scaled products; a boolean mask is a fixed selection or comes from a classified step)")


def _const(why: str) -> Classify:
    return lambda a: _smooth(why)


# ----------------------------------------------------------------------------- the table


def _fns(names: tuple[str, ...], *fns: Any) -> dict[Any, tuple[str, ...]]:
    return {f: names for f in fns}


_IN = ("input",)
_BIN = ("input", "other")

_ELEMENTWISE_SMOOTH_FNS = [
    torch.tanh, F.tanh, torch.sigmoid, F.sigmoid, torch.exp, F.silu, F.mish, F.logsigmoid, F.tanhshrink,
]

TABLE: tuple[Op, ...] = (
    # ---- affine and bilinear layers, shape and structure (C∞: polynomial in their inputs)
    Op("affine layer", _const("an affine or bilinear map of its inputs and parameters"),
       modules=(nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d),
       functions=_fns(("input", "weight", "bias"), F.linear, F.conv1d, F.conv2d, F.conv3d, F.bilinear)),
    # (sum and mean are left out on purpose: a reduction over the examples' axis makes each output
    # depend on the whole batch, which the per-example methods do not follow)
    Op("structure", _const("a linear map (reshape, copy, concatenation)"),
       modules=(nn.Identity, nn.Flatten, nn.Unflatten),
       functions={**_fns(_IN, torch.flatten, torch.reshape, torch.transpose, torch.permute,
                         torch.squeeze, torch.unsqueeze),
                  **_fns(("tensors",), torch.cat, torch.stack), getattr: ("obj", "name")},
       methods=_fns((), "view", "reshape", "flatten", "permute", "transpose", "contiguous", "size", "unsqueeze",
                    "squeeze", "t", "expand", "dim")),
    Op("indexing", _getitem, functions={operator.getitem: ("input", "index")}),
    Op("arithmetic", _const("sums, products and negation: polynomial"),
       functions=_fns(_BIN, operator.add, operator.sub, operator.mul, operator.neg, operator.matmul, torch.add, torch.sub,
                      torch.mul, torch.neg, torch.matmul),
       methods=_fns(("other",), "add", "sub", "mul", "neg", "matmul")),
    Op("division", _div, functions=_fns(("input", "other", "rounding_mode"), operator.truediv, torch.div, torch.divide),
       methods={"div": ("other", "rounding_mode")}),
    Op("power", _pow, functions=_fns(("input", "exponent"), operator.pow, torch.pow), methods={"pow": ("exponent",)}),
    Op("normalisation", _normalisation, modules=(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm),
       functions={F.layer_norm: ("input", "normalized_shape", "weight", "bias", "eps"),
                  F.group_norm: ("input", "num_groups", "weight", "bias", "eps"),
                  F.batch_norm: ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")}),
    Op("softmax", _const("softmax / log-softmax: C∞"), modules=(nn.Softmax, nn.LogSoftmax, nn.Softmin),
       functions=_fns(("input", "dim"), torch.softmax, torch.log_softmax, F.softmax, F.log_softmax, F.softmin),
       methods=_fns(("dim",), "softmax", "log_softmax")),
    Op("attention", _sdpa,
       functions={F.scaled_dot_product_attention: ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")}),
    Op("average pooling", _const("average pooling: a linear map"),
       modules=(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d),
       functions=_fns(_IN, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                      F.adaptive_avg_pool3d)),
    Op("dropout", _random_unless("training", "p", "dropout", True),
       modules=(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout),
       functions=_fns(("input", "p", "training", "inplace"), F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)),
    # ---- smooth activations
    Op("smooth activation", _const("C∞ (tanh, sigmoid, exp, SiLU, Mish, log-sigmoid, tanhshrink)"),
       modules=(nn.Tanh, nn.Sigmoid, nn.SiLU, nn.Mish, nn.LogSigmoid, nn.Tanhshrink),
       functions=_fns(_IN, *_ELEMENTWISE_SMOOTH_FNS), methods=_fns((), "tanh", "sigmoid", "exp")),
    Op("gelu", _gelu, modules=(nn.GELU,), functions={F.gelu: ("input", "approximate")}),
    Op("softplus", _softplus, modules=(nn.Softplus,), functions={F.softplus: ("input", "beta", "threshold")}),
    # ---- C¹
    Op("elu", _elu, modules=(nn.ELU,), functions=_fns(("input", "alpha", "inplace"), F.elu, F.elu_)),
    Op("celu", _celu, modules=(nn.CELU,), functions=_fns(("input", "alpha", "inplace"), F.celu, F.celu_)),
    Op("softsign", _softsign, modules=(nn.Softsign,), functions=_fns(_IN, F.softsign)),
    # ---- C⁰ kinks
    Op("relu", _relu, modules=(nn.ReLU,), functions=_fns(_IN, torch.relu, torch.relu_, F.relu, F.relu_), methods={"relu": ()}),
    Op("leaky_relu", _leaky, modules=(nn.LeakyReLU,),
       functions=_fns(("input", "negative_slope", "inplace"), F.leaky_relu, F.leaky_relu_)),
    Op("prelu", _prelu, modules=(nn.PReLU,), functions=_fns(("input", "weight"), F.prelu, torch.prelu)),
    Op("rrelu", _rrelu, modules=(nn.RReLU,), functions=_fns(("input", "lower", "upper", "training", "inplace"), F.rrelu)),
    Op("selu", _selu, modules=(nn.SELU,), functions=_fns(("input", "inplace"), F.selu, torch.selu)),
    Op("relu6", _relu6, modules=(nn.ReLU6,), functions=_fns(("input", "inplace"), F.relu6)),
    Op("hardtanh", _hardtanh, modules=(nn.Hardtanh,), functions=_fns(("input", "min_val", "max_val", "inplace"), F.hardtanh, F.hardtanh_)),
    Op("hardswish", _hardswish, modules=(nn.Hardswish,), functions=_fns(("input", "inplace"), F.hardswish)),
    Op("hardsigmoid", _hardsigmoid, modules=(nn.Hardsigmoid,), functions=_fns(("input", "inplace"), F.hardsigmoid)),
    Op("softshrink", _softshrink, modules=(nn.Softshrink,), functions=_fns(("input", "lambd"), F.softshrink)),
    Op("abs", _abs, functions=_fns(_IN, torch.abs, torch.absolute, operator.abs, abs), methods={"abs": ()}),
    Op("clamp", _clamp, functions=_fns(("input", "min", "max"), torch.clamp, torch.clip),
       methods=_fns(("min", "max"), "clamp", "clip")),
    Op("clamp_min/clamp_max", _clamp_one, functions=_fns(("input", "bound"), torch.clamp_min, torch.clamp_max),
       methods=_fns(("bound",), "clamp_min", "clamp_max")),
    Op("maximum/minimum", _pairwise, functions=_fns(_BIN, torch.maximum, torch.minimum, torch.fmax, torch.fmin),
       methods=_fns(("other",), "maximum", "minimum")),
    Op("max/min", _max_min, functions=_fns(("input", "other", "keepdim"), torch.max, torch.min),
       methods=_fns(("other", "keepdim"), "max", "min")),
    Op("amax/amin", _amax, functions=_fns(("input", "dim", "keepdim"), torch.amax, torch.amin),
       methods=_fns(("dim", "keepdim"), "amax", "amin")),
    Op("max pooling", _max_pool,
       modules=(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d),
       functions={**_fns(("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                         F.max_pool1d, F.max_pool2d, F.max_pool3d),
                  **_fns(("input", "output_size", "return_indices"), F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                         F.adaptive_max_pool3d)}),
    Op("max pooling with indices", lambda a: _max_pool(Args(dict(a.values, return_indices=True), indices_used=a.indices_used)),
       functions=_fns(_IN, F.max_pool1d_with_indices, F.max_pool2d_with_indices, F.max_pool3d_with_indices,
                      F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool2d_with_indices, F.adaptive_max_pool3d_with_indices)),
    # ---- value jumps
    Op("hardshrink", _hardshrink, modules=(nn.Hardshrink,), functions=_fns(("input", "lambd"), F.hardshrink)),
    Op("threshold", _threshold, modules=(nn.Threshold,), functions=_fns(("input", "threshold", "value", "inplace"), F.threshold, F.threshold_)),
    Op("where", _where, functions={torch.where: ("condition", "input", "other")}, methods={"where": ("condition", "other")}),
    Op("masked_fill", _masked_fill, functions={torch.masked_fill: ("input", "mask", "value")}, methods={"masked_fill": ("mask", "value")}),
    Op("comparison", _step("a comparison"),
       functions=_fns(_BIN, operator.gt, operator.lt, operator.ge, operator.le, operator.eq, operator.ne, torch.gt, torch.lt,
                      torch.ge, torch.le, torch.eq, torch.ne, torch.greater, torch.less, torch.greater_equal, torch.less_equal),
       methods=_fns(("other",), "gt", "lt", "ge", "le", "eq", "ne")),
    Op("step function", _step("a step function (sign, rounding, argmax, integer division)"),
       functions=_fns(_BIN, torch.sign, torch.sgn, torch.heaviside, torch.floor, torch.ceil, torch.round, torch.trunc,
                      torch.argmax, torch.argmin, torch.argsort, operator.floordiv, operator.mod, torch.floor_divide,
                      torch.remainder, torch.fmod),
       methods=_fns(("other",), "sign", "floor", "ceil", "round", "trunc", "argmax", "argmin", "argsort")),
)
if hasattr(nn, "RMSNorm"):
    TABLE += (Op("rms normalisation", _normalisation, modules=(nn.RMSNorm,),
                 functions={F.rms_norm: ("input", "normalized_shape", "weight", "eps")}),)

_BY_MODULE: dict[type, Op] = {}
_BY_FUNCTION: dict[Any, tuple[Op, tuple[str, ...]]] = {}
_BY_METHOD: dict[str, tuple[Op, tuple[str, ...]]] = {}
for _op in TABLE:
    for _cls in _op.modules:
        assert _cls not in _BY_MODULE, _cls
        _BY_MODULE[_cls] = _op
    for _fn, _names in _op.functions.items():
        assert _fn not in _BY_FUNCTION or _BY_FUNCTION[_fn][0] is _op, _fn
        _BY_FUNCTION[_fn] = (_op, _names)
    for _name, _names in _op.methods.items():
        assert _name not in _BY_METHOD, _name
        _BY_METHOD[_name] = (_op, ("input", *_names))


def _bind(names: tuple[str, ...], args: Iterable[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(zip(names, args))
    out.update(kwargs)
    return out


def op_of(kind: str, key: Any) -> Op | None:
    """The table entry for a ``module`` class, a ``function`` object or a ``method`` name."""
    try:
        if kind == "module":
            return _BY_MODULE.get(key)
        entry = (_BY_FUNCTION if kind == "function" else _BY_METHOD).get(key)
    except TypeError:  # unhashable
        return None
    return entry[0] if entry else None


def of_module(m: nn.Module, *, indices_used: bool = True) -> Verdict:
    """The class of a module instance, with its parameters read from its attributes (exact type
    only: a subclass may compute something else).

    >>> [of_module(m).smoothness.name for m in (nn.ELU(), nn.ELU(alpha=0.5), nn.Softplus(), nn.Softplus(threshold=float("inf")))]
    ['C1', 'C0', 'DISCONTINUOUS', 'SMOOTH']
    """
    op = _BY_MODULE.get(type(m))
    if op is None:
        return Verdict(Smoothness.UNKNOWN, f"no smoothness rule for {type(m).__name__}")
    return op.classify(Args({}, module=m, indices_used=indices_used))


def of_function(fn: Any, args: tuple = (), kwargs: Mapping[str, Any] | None = None, *, varies: Callable[[Any], bool] | None = None,
                indices_used: bool = True) -> Verdict:
    """The class of ``fn(*args, **kwargs)``, parameters read by name from the arguments."""
    try:
        entry = _BY_FUNCTION.get(fn)
    except TypeError:
        entry = None
    if entry is None:
        return Verdict(Smoothness.UNKNOWN, f"no smoothness rule for {getattr(fn, '__name__', fn)}")
    op, names = entry
    return op.classify(Args(_bind(names, args, kwargs or {}), varies, indices_used=indices_used))


def of_method(name: str, args: tuple = (), kwargs: Mapping[str, Any] | None = None, *, varies: Callable[[Any], bool] | None = None,
              indices_used: bool = True) -> Verdict:
    """The class of ``args[0].name(*args[1:], **kwargs)``."""
    entry = _BY_METHOD.get(name)
    if entry is None:
        return Verdict(Smoothness.UNKNOWN, f"no smoothness rule for .{name}()")
    op, names = entry
    return op.classify(Args(_bind(names, args, kwargs or {}), varies, indices_used=indices_used))


# ----------------------------------------------------------------------------- traced graphs


def _indices_used(node: torch.fx.Node) -> bool:
    """Whether anything reads the second output of a (values, indices) node (False if only values)."""
    for u in node.users:
        if u.op == "call_function" and u.target is operator.getitem and (u.args[1] == 0 or not u.users):
            continue  # the values, or an unpacked output that nothing reads
        if u.op == "call_function" and u.target is getattr and u.args[1] == "values":
            continue
        return True
    return False


def _shape_only(node: torch.fx.Node) -> bool:
    """Whether a node reads only the shape, dtype or device of its input (constant along α)."""
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    return node.op == "call_function" and node.target is getattr and node.args[1] in _SHAPE_ATTRS


_SHAPE_METHODS = frozenset({"size", "dim", "numel", "ndimension", "nelement", "get_device"})
_SHAPE_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda"})


def varying_nodes(graph: torch.fx.Graph, model: nn.Module) -> set[torch.fx.Node]:
    """The nodes of a traced graph whose values vary along α.

    A parameter or buffer of ``model`` varies (every state entry moves, or may move, with α); a
    module call varies if its module holds state or an input varies; any other operation varies if
    one of its inputs does. Placeholders (the data) and tensor constants that are not state entries
    do not.
    """
    state = {n for n, _ in model.named_parameters(remove_duplicate=False)} | {n for n, _ in model.named_buffers(remove_duplicate=False)}
    modules = dict(model.named_modules(remove_duplicate=False))
    out: set[torch.fx.Node] = set()
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        inputs = node.all_input_nodes
        if node.op == "get_attr":
            if node.target in state:
                out.add(node)
            continue
        if _shape_only(node):
            continue  # sizes do not move with α
        if node.op == "call_module":
            m = modules.get(node.target)
            if m is None or any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
                out.add(node)
                continue
        if any(n in out for n in inputs):
            out.add(node)
    return out


def classify_node(node: torch.fx.Node, modules: Mapping[str, nn.Module], varying: set[torch.fx.Node]) -> tuple[Verdict, str]:
    """The class of one node of a traced graph, and a label for messages."""

    def varies(v: Any) -> bool:
        found = [False]

        def visit(n: torch.fx.Node) -> torch.fx.Node:
            found[0] = found[0] or n in varying
            return n

        torch.fx.node.map_arg(v, visit)
        return found[0]

    if node.op == "call_module":
        m = modules[node.target]
        return of_module(m, indices_used=_indices_used(node)), f"{node.target} ({type(m).__name__})"
    if node.op == "call_function":
        label = getattr(node.target, "__name__", str(node.target))
        return of_function(node.target, node.args, node.kwargs, varies=varies, indices_used=_indices_used(node)), label
    if node.op == "call_method":
        return of_method(node.target, node.args, node.kwargs, varies=varies, indices_used=_indices_used(node)), f".{node.target}()"
    if node.op == "get_attr":
        return _smooth("a parameter, buffer or constant (affine in α)"), node.target
    return Verdict(Smoothness.UNKNOWN, f"fx op {node.op}"), node.op  # pragma: no cover - fx has no other ops
