r"""The second-order jet number type: rules that carry (h, h′, h″) through every operation.

Along the straight path θ(α) = θ0 + α·Δθ every intermediate tensor of a model is a function h(α);
a :class:`Jet` holds its value and first two α-derivatives (h, h′, h″). ``None`` stands for an
identically zero derivative, so work on inputs, fixed buffers and parameters (whose second
derivative is zero) is skipped. Sources (what :func:`mli_theory.geometry.jets.path_jet` feeds the
interpreter of :mod:`mli_theory.geometry.interpreter`):

* the input x: (x, 0, 0);
* a parameter, affine in α: (θ(α), Δθ, 0) with Δθ = θT − θ0;
* a buffer held fixed (BatchNorm running statistics by policy, integer counters): (b, 0, 0).

Rules (each exact; values are computed by torch's own operation wherever possible, so the value
pass equals a plain forward pass):

* linear maps L (reshape, view, permute, transpose, getitem, cat, stack, sum, mean, average
  pooling, padding, dropout in eval mode, …): (Lh, Lh′, Lh″);
* bilinear maps B (matmul, mul, the weight–input product of linear and convolution layers):
  (B(a,b), B(a′,b) + B(a,b′), B(a″,b) + 2B(a′,b′) + B(a,b″)). For a layer o = W h + b with
  W″ = 0 this is o′ = ΔW h + W h′ + Δb and o″ = 2 ΔW h′ + W h″;
* elementwise f: (f(u), f′(u)·u′, f″(u)·u′² + f′(u)·u″), with f′, f″ in closed form
  (ReLU: 1[u>0], 0; tanh: 1−t², −2t(1−t²); GELU: Φ+uφ, φ(2−u²); …);
* quotient w = u/v: w′ = (u′ − w v′)/v, w″ = (u″ − 2w′v′ − w v″)/v;
* softmax s along a dim, with ⟨a⟩ = Σ_dim a: a = u′ − ⟨s u′⟩, s′ = s a,
  s″ = s′ a + s (u″ − ⟨s′u′⟩ − ⟨s u″⟩); log-softmax l′ = u′ − ⟨s u′⟩, l″ = u″ − ⟨s′u′ + s u″⟩;
* normalisation over a group of entries (LayerNorm, GroupNorm), with m(·) the mean over the
  group: c = u − m(u), σ² = m(c²), r = (σ² + ε)^{−1/2}, y = c r, and
  c′ = u′ − m(u′), c″ = u″ − m(u″), (σ²)′ = 2m(c c′), (σ²)″ = 2m(c′² + c c″),
  r′ = −½ r³ (σ²)′, r″ = ¾ r⁵ (σ²)′² − ½ r³ (σ²)″, y′ = c′r + c r′, y″ = c″r + 2c′r′ + c r″;
  the affine γ y + β then follows the product rule with γ′ = Δγ;
* BatchNorm in eval mode with fixed statistics: γ (h − μ) r + β, μ and r constant;
* max pooling: the argmax of the value pass is held, h′ and h″ are gathered at its indices (the
  derivative torch uses; exact wherever the maximum is unique);
* scaled dot-product attention as its composition softmax(q kᵀ · scale + mask) v.

Anything else falls back to nested forward mode *for that operation alone*: with
g(t) = f(u + t u′ + ½t² u″), g(0) = f(u), g′(0) = Df[u′] and g″(0) = D²f[u′,u′] + Df[u″], so
two nested ``torch.func.jvp`` calls in the scalar t give the jet of f exactly (to rounding). Where
torch lacks forward-over-forward derivatives for the op the same jet is
taken by reverse mode twice (``hardsigmoid``). Caveat: torch's nested forward mode is not exact for every op
(``F.layer_norm``'s second derivative is wrong in torch 2.x), which is one reason the common
layers have their own rules here.

Rules are looked up by exact key (``type(module)``, the function object, or the method name); a
rule returns ``NotImplemented`` to hand a call to the fallback (BatchNorm in training mode,
dropout in training mode, tensor exponents, …).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import jvp
from torch.nn import functional as F
from torch.utils._pytree import tree_flatten, tree_unflatten

Rule = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Jet:
    """A second-order jet (h, h′, h″) in α; ``None`` marks an identically zero derivative.

    Invariant: a derivative that is not None has the value's shape and dtype.
    """

    v: Tensor
    d1: Tensor | None = None
    d2: Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        return self.v.shape

    @property
    def constant(self) -> bool:
        """True when both derivatives are identically zero."""
        return self.d1 is None and self.d2 is None

    def derivatives(self) -> tuple[Tensor, Tensor]:
        """(h′, h″) with zeros in place of None."""
        d1 = self.d1 if self.d1 is not None else torch.zeros_like(self.v)
        d2 = self.d2 if self.d2 is not None else torch.zeros_like(self.v)
        return d1, d2


# ----------------------------------------------------------------------------- helpers


def lift(x: Any) -> Any:
    """A tensor becomes a constant jet; jets and Python scalars are returned as they are."""
    return Jet(x) if isinstance(x, Tensor) else x


def _v(x: Any) -> Any:
    return x.v if isinstance(x, Jet) else x


def strip(obj: Any) -> Any:
    """Replace every jet in a nested structure by its value (for shape-only or index operands)."""
    if isinstance(obj, Jet):
        return obj.v
    if isinstance(obj, tuple) and not isinstance(obj, torch.Size):
        return tuple(strip(o) for o in obj)
    if isinstance(obj, list):
        return [strip(o) for o in obj]
    if isinstance(obj, dict):
        return {k: strip(o) for k, o in obj.items()}
    if isinstance(obj, slice):
        return slice(strip(obj.start), strip(obj.stop), strip(obj.step))
    return obj


def _plus(*terms: Tensor | None) -> Tensor | None:
    out = None
    for t in terms:
        if t is not None:
            out = t if out is None else out + t
    return out


def _fit(d: Tensor | None, v: Tensor) -> Tensor | None:
    """A derivative brought to the value's shape (broadcast) and dtype."""
    if d is None:
        return None
    if d.shape != v.shape:
        d = d.broadcast_to(v.shape)
    if d.dtype != v.dtype:
        d = d.to(v.dtype)
    return d


def _floating(t: Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _jet(v: Tensor, d1: Tensor | None, d2: Tensor | None) -> Jet:
    if not _floating(v):
        return Jet(v)
    return Jet(v, _fit(d1, v), _fit(d2, v))


def _pack(v: Any, d1: Any, d2: Any) -> Any:
    """Jets from an operation's value and derivative outputs (tensors or tuples/lists of tensors)."""
    if isinstance(v, (tuple, list)):
        n = len(v)
        d1 = [None] * n if d1 is None else d1
        d2 = [None] * n if d2 is None else d2
        out = [_pack(a, b, c) for a, b, c in zip(v, d1, d2)]
        return out if isinstance(v, list) else tuple(out)
    if isinstance(v, Tensor):
        return _jet(v, d1, d2)
    return v


def linear(fn: Callable[..., Any], x: Any, *args: Any, **kwargs: Any) -> Any:
    """A map linear in its first operand: (L h, L h′, L h″); other arguments are shape/index data."""
    x = lift(x)
    args, kwargs = strip(args), strip(kwargs)
    v = fn(x.v, *args, **kwargs)
    d1 = None if x.d1 is None else fn(x.d1, *args, **kwargs)
    d2 = None if x.d2 is None else fn(x.d2, *args, **kwargs)
    return _pack(v, d1, d2)


def linear_n(fn: Callable[..., Any], xs: Any, *args: Any, **kwargs: Any) -> Any:
    """A map linear in a list of operands (cat, stack)."""
    xs = [lift(x) for x in xs]
    args, kwargs = strip(args), strip(kwargs)
    v = fn([x.v for x in xs], *args, **kwargs)

    def part(name: str) -> Any:
        ds = [getattr(x, name) for x in xs]
        if all(d is None for d in ds):
            return None
        return fn([d if d is not None else torch.zeros_like(x.v) for d, x in zip(ds, xs)], *args, **kwargs)

    return _pack(v, part("d1"), part("d2"))


def unary(x: Any, fn: Callable[[Tensor], Tensor], derivs: Callable[[Tensor, Tensor], tuple[Any, Any]]) -> Jet:
    """Chain rule for an elementwise f: (f(u), f′ u′, f″ u′² + f′ u″).

    ``derivs(u, f(u))`` returns (f′(u), f″(u)); f″ may be None (identically zero). h″ is built in
    one fresh buffer: f′ u″, then + (f″ u′) u′ by a fused multiply-add (:func:`_chain2`).
    """
    x = lift(x)
    v = fn(x.v)
    if x.constant:
        return Jet(v)
    f1, f2 = derivs(x.v, v)
    d1 = None if x.d1 is None else f1 * x.d1
    return _jet(v, d1, _chain2(f1, f2, x.d1, x.d2))


def _chain2(f1: Any, f2: Any, u1: Tensor | None, u2: Tensor | None) -> Tensor | None:
    """f″ u′² + f′ u″ for elementwise f′, f″ (tensors of u's shape, Python numbers, or f″ None).

    At most one temporary: f′ u″ is a fresh tensor, f″ u′ a second one, and the rest is an in-place
    ``addcmul_`` into the first (never into an operand, which other nodes may still read)."""
    curv = None if (u1 is None or f2 is None) else f2 * u1  # f″ u′ (fresh)
    if u2 is None:
        if curv is None:
            return None
        return curv.mul_(u1) if curv.shape == u1.shape and curv.dtype == u1.dtype else curv * u1
    out = f1 * u2
    if curv is None:
        return out
    if out.shape == torch.broadcast_shapes(out.shape, curv.shape) and out.dtype == torch.result_type(curv, u1):
        return out.addcmul_(curv, u1)
    return torch.addcmul(out, curv, u1)


def bilinear(f: Callable[[Tensor, Tensor], Tensor], a: Any, b: Any, value: Tensor | None = None) -> Jet:
    """Product rule for a bilinear f: (f(a,b), f(a′,b) + f(a,b′), f(a″,b) + 2f(a′,b′) + f(a,b″)).

    ``value``, when given, is f(a, b) already computed (possibly with a bias folded in).
    """
    a, b = lift(a), lift(b)
    v = f(a.v, b.v) if value is None else value
    d1 = _plus(
        None if a.d1 is None else f(a.d1, b.v),
        None if b.d1 is None else f(a.v, b.d1),
    )
    d2 = _plus(None if a.d2 is None else f(a.d2, b.v), None if b.d2 is None else f(a.v, b.d2))
    if a.d1 is not None and b.d1 is not None:
        cross = f(a.d1, b.d1)
        d2 = 2 * cross if d2 is None else torch.add(d2, cross, alpha=2)
    return _jet(v, d1, d2)


def _with_bias(out: Jet, bias: Any, shape: tuple[int, ...] | None = None) -> Jet:
    """Add the derivatives of a bias (already folded into the value) to a layer output."""
    bias = lift(bias)
    if not isinstance(bias, Jet) or bias.constant:
        return out
    b1, b2 = bias.d1, bias.d2
    if shape is not None:
        b1 = None if b1 is None else b1.reshape(shape)
        b2 = None if b2 is None else b2.reshape(shape)
    return _jet(out.v, _plus(out.d1, b1), _plus(out.d2, b2))


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (int, float, bool)) and not isinstance(x, Jet)


# ----------------------------------------------------------------------------- arithmetic


def _addsub(a: Any, b: Any, alpha: Any, sign: int) -> Any:
    a, b = lift(a), lift(b)
    if not isinstance(a, Jet) and not isinstance(b, Jet):
        return NotImplemented
    av, bv = _v(a), _v(b)
    if alpha == 1:
        v = av + bv if sign > 0 else av - bv
    else:
        v = torch.add(av, bv, alpha=alpha) if sign > 0 else torch.sub(av, bv, alpha=alpha)
    c = sign * alpha

    def part(name: str) -> Tensor | None:
        da = getattr(a, name) if isinstance(a, Jet) else None
        db = getattr(b, name) if isinstance(b, Jet) else None
        if db is not None and c != 1:
            db = db * c
        return _plus(None if da is None else _fit(da, v), None if db is None else _fit(db, v))

    return _jet(v, part("d1"), part("d2"))


def add(input: Any, other: Any, *, alpha: Any = 1, out: Any = None) -> Any:
    if out is not None:
        return NotImplemented
    return _addsub(input, other, alpha, 1)


def sub(input: Any, other: Any, *, alpha: Any = 1, out: Any = None) -> Any:
    if out is not None:
        return NotImplemented
    return _addsub(input, other, alpha, -1)


def mul(input: Any, other: Any, *, out: Any = None) -> Any:
    if out is not None:
        return NotImplemented
    a, b = lift(input), lift(other)
    if not isinstance(a, Jet):
        return linear(lambda t: a * t, b)
    if not isinstance(b, Jet):
        return linear(lambda t: t * b, a)
    return bilinear(torch.mul, a, b)


def div(input: Any, other: Any, *, rounding_mode: Any = None, out: Any = None) -> Any:
    if rounding_mode is not None or out is not None:
        return NotImplemented
    a, b = lift(input), lift(other)
    if not isinstance(b, Jet):
        return linear(lambda t: t / b, a)
    if b.constant and isinstance(a, Jet):
        return linear(lambda t: t / b.v, a)
    av = _v(a)
    w = av / b.v
    a1 = a.d1 if isinstance(a, Jet) else None
    a2 = a.d2 if isinstance(a, Jet) else None
    w1 = _plus(a1, None if b.d1 is None else -(w * b.d1))
    w1 = None if w1 is None else w1 / b.v
    w2 = _plus(
        a2,
        None if (w1 is None or b.d1 is None) else -2 * (w1 * b.d1),
        None if b.d2 is None else -(w * b.d2),
    )
    w2 = None if w2 is None else w2 / b.v
    return _jet(w, w1, w2)


def neg(input: Any, *, out: Any = None) -> Any:
    return linear(torch.neg, input) if out is None else NotImplemented


def pow_(input: Any, exponent: Any) -> Any:
    if isinstance(input, (Jet, Tensor)) and _is_scalar(exponent):
        p = exponent
        if p == 0:
            return Jet(torch.pow(_v(input), p))

        def derivs(u: Tensor, v: Tensor) -> tuple[Any, Any]:
            if p == 1:
                return 1.0, None
            if p == 2:
                return 2 * u, 2.0
            return p * torch.pow(u, p - 1), p * (p - 1) * torch.pow(u, p - 2)

        return unary(input, lambda u: torch.pow(u, p), derivs)
    if _is_scalar(input) and isinstance(exponent, (Jet, Tensor)) and input > 0:
        c = float(input)
        lc = math.log(c)
        return unary(exponent, lambda u: torch.pow(c, u), lambda u, v: (v * lc, v * (lc * lc)))
    return NotImplemented


def _matrix_product(fn: Callable[[Tensor, Tensor], Tensor]) -> Rule:
    """The rule of ``fn`` (matmul, mm, bmm): :func:`_bmm_jet` for a plain batched product of two
    jets, the general :func:`bilinear` otherwise."""

    def product(input: Any, other: Any = None, *, out: Any = None, mat2: Any = None) -> Any:
        if out is not None:
            return NotImplemented
        a, b = lift(input), lift(other if mat2 is None else mat2)
        if isinstance(a, Jet) and isinstance(b, Jet) and _batched_alike(a.v, b.v):
            return _bmm_jet(a, b)
        return bilinear(fn, a, b)

    return product


_matmul, _mm, _bmm = _matrix_product(torch.matmul), _matrix_product(torch.mm), _matrix_product(torch.bmm)


def _batched_alike(a: Tensor, b: Tensor) -> bool:
    """Whether a @ b is a plain (batched) matrix product: both at least 2-D, one floating dtype,
    the same batch shape (no broadcasting) and matching inner dimensions."""
    return (
        a.dim() >= 2 and a.dim() == b.dim() and a.shape[:-2] == b.shape[:-2] and a.shape[-1] == b.shape[-2]
        and a.dtype == b.dtype and a.is_floating_point() and not a.is_complex()
    )


def _bmm_jet(a: Jet, b: Jet) -> Jet:
    """The jet of the batched matrix product C = A B (same batch shape, see :func:`_batched_alike`):
    C′ = A′B + AB′, C″ = A″B + 2A′B′ + AB″.

    Each component is brought to (batch, m, k) / (batch, k, n) once (a copy only where the batch
    dims cannot be merged by a view; every component is read by two or three products), each of
    C′, C″ is one ``bmm`` followed by in-place ``baddbmm_`` accumulations. The value is ``mm`` of
    two matrices, else ``bmm`` of the same (batch, m, k), (batch, k, n) operands: what
    ``torch.matmul`` computes for them."""
    out_shape = a.v.shape[:-1] + b.v.shape[-1:]

    def as3(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.reshape((math.prod(t.shape[:-2]),) + tuple(t.shape[-2:]))

    A, A1, A2 = as3(a.v), as3(a.d1), as3(a.d2)
    B, B1, B2 = as3(b.v), as3(b.d1), as3(b.d2)
    value = torch.mm(a.v, b.v) if a.v.dim() == 2 else torch.bmm(A, B).view(out_shape)

    def acc(pairs: list[tuple[Tensor | None, Tensor | None, float]]) -> Tensor | None:
        out = None
        for x, y, c in pairs:
            if x is None or y is None:
                continue
            if out is None:
                out = torch.bmm(x, y) if c == 1 else torch.bmm(x, y).mul_(c)
            else:
                out.baddbmm_(x, y, alpha=c)
        return None if out is None else out.view(out_shape)

    d1 = acc([(A1, B, 1), (A, B1, 1)])
    d2 = acc([(A2, B, 1), (A1, B1, 2), (A, B2, 1)])
    return _jet(value, d1, d2)


def addmm(input: Any, mat1: Any, mat2: Any, *, beta: Any = 1, alpha: Any = 1, out: Any = None) -> Any:
    if out is not None:
        return NotImplemented
    value = torch.addmm(_v(input), _v(mat1), _v(mat2), beta=beta, alpha=alpha)
    prod = bilinear(torch.mm, mat1, mat2, value=value)
    if alpha != 1:
        prod = Jet(value, None if prod.d1 is None else alpha * prod.d1, None if prod.d2 is None else alpha * prod.d2)
    bias = lift(input)
    if isinstance(bias, Jet) and beta != 1 and not bias.constant:
        bias = Jet(bias.v, None if bias.d1 is None else beta * bias.d1, None if bias.d2 is None else beta * bias.d2)
    return _jet(value, _plus(prod.d1, None if bias.d1 is None else _fit(bias.d1, value)),
                _plus(prod.d2, None if bias.d2 is None else _fit(bias.d2, value)))


def einsum(equation: str, *operands: Any) -> Any:
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if len(operands) == 1:
        return linear(lambda t: torch.einsum(equation, t), operands[0])
    if len(operands) == 2:
        return bilinear(lambda a, b: torch.einsum(equation, a, b), operands[0], operands[1])
    return NotImplemented


# ----------------------------------------------------------------------------- layers


def linear_layer(input: Any, weight: Any, bias: Any = None) -> Jet:
    """F.linear: value by torch (bias folded in), derivatives by the product rule.

    o = a Wᵀ + b gives o′ = a W′ᵀ + b′ + a′ Wᵀ and o″ = a″ Wᵀ + 2 a′ W′ᵀ + a W″ᵀ + b″; each of o′, o″
    is one ``F.linear`` (with b′ or b″ folded in) followed by in-place ``addmm_`` accumulations into
    its (N, out) view, so no product is materialised apart from its sum (:func:`_gemm_sum`).
    """
    a, w, b = lift(input), lift(weight), lift(bias)
    value = F.linear(a.v, w.v, _v(b))
    if not isinstance(w, Jet) or w.v.dim() != 2 or a.v.dim() == 0 or a.v.dtype != w.v.dtype:
        out = bilinear(lambda x, m: F.linear(x, m), a, w, value=value)
        return _with_bias(out, bias)
    b1 = b.d1 if isinstance(b, Jet) else None
    b2 = b.d2 if isinstance(b, Jet) else None
    d1 = _gemm_sum([(a.v, w.d1, 1), (a.d1, w.v, 1)], b1)
    d2 = _gemm_sum([(a.d2, w.v, 1), (a.d1, w.d1, 2), (a.v, w.d2, 1)], b2)
    return _jet(value, d1, d2)


def _gemm_sum(terms: list[tuple[Tensor | None, Tensor | None, float]], bias: Tensor | None) -> Tensor | None:
    """Σ c·x Wᵀ (+ bias) over the terms (x, W, c) whose x and W are both present.

    The first present term is ``F.linear(x, c W, bias)`` (a fresh tensor; c W is exact for c = 2);
    the others are accumulated into its (N, out) view by ``addmm_(x, Wᵀ, alpha=c)``. A bias alone
    is returned as it is (``_jet`` broadcasts it)."""
    out = flat = None
    for x, w, c in terms:
        if x is None or w is None:
            continue
        if out is None:
            out = F.linear(x, w if c == 1 else w * c, bias)
            if not out.is_contiguous():
                out = out.contiguous()
            flat = out.view(-1, out.shape[-1]) if out.dim() != 1 else out.view(1, -1)
            bias = None
        else:
            flat.addmm_(x.reshape(-1, x.shape[-1]), w.t(), alpha=c)
    return bias if out is None else out


def _conv(fn: Callable[..., Tensor]) -> Rule:
    def conv(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: Any = 1) -> Jet:
        value = fn(_v(input), _v(weight), _v(bias), stride, padding, dilation, groups)
        out = bilinear(lambda a, w: fn(a, w, None, stride, padding, dilation, groups), input, weight, value=value)
        return _with_bias(out, bias, (-1,) + (1,) * (_v(weight).dim() - 2))  # (C_out, 1, …) over the spatial dims

    return conv


conv1d, conv2d, conv3d = _conv(F.conv1d), _conv(F.conv2d), _conv(F.conv3d)


def _channel(t: Any, ndim: int) -> Any:
    """A per-channel vector shaped (1, C, 1, …) to broadcast against an (N, C, …) tensor."""
    if t is None or _is_scalar(t):
        return t
    return linear(lambda s: s.reshape((1, -1) + (1,) * (ndim - 2)), t)


def batch_norm(
    input: Any,
    running_mean: Any,
    running_var: Any,
    weight: Any = None,
    bias: Any = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Any:
    """Eval-mode batch norm, statistics fixed: out = x·s + t with s = γ r, t = β − μ s, r = (σ² + ε)^{−1/2}."""
    if training or running_mean is None or running_var is None:
        return NotImplemented
    x = lift(input)
    value = F.batch_norm(x.v, _v(running_mean), _v(running_var), _v(weight), _v(bias), False, momentum, eps)
    var = lift(running_var)
    if var.constant:
        r: Any = Jet(torch.rsqrt(var.v + eps))
    else:
        r = unary(var, lambda u: torch.rsqrt(u + eps), lambda u, v: (-0.5 * v**3, 0.75 * v**5))
    scale = r if weight is None else mul(weight, r)
    shift = neg(mul(running_mean, scale))
    if bias is not None:
        shift = add(bias, shift)
    n = x.v.dim()
    return _scaled_shift(x, lift(_channel(scale, n)), lift(_channel(shift, n)), value)


def _scaled_shift(x: Jet, s: Any, t: Any, value: Tensor) -> Jet:
    """The derivatives of x·s + t for a large x and small broadcast s, t (value already computed):
    (x s + t)′ = x′ s + x s′ + t′ and (x s + t)″ = x″ s + 2 x′ s′ + x s″ + t″, each as one chain of
    fused multiply-adds over the large tensor (the first allocates, the rest update it in place)."""
    fresh: set[int] = set()  # accumulators allocated here (safe to update in place)

    def fma(acc: Tensor | None, a: Tensor | None, b: Tensor | None, c: float = 1.0) -> Tensor | None:
        if a is None or b is None:
            return acc
        if acc is None:
            out = a * b if c == 1.0 else (a * b).mul_(c)
        elif id(acc) in fresh and acc.shape == value.shape and acc.dtype == torch.result_type(a, b):
            return acc.addcmul_(a, b, value=c)
        else:
            out = torch.addcmul(acc, a, b, value=c)
        fresh.add(id(out))
        return out

    s = s if isinstance(s, Jet) else Jet(torch.as_tensor(s, dtype=x.v.dtype, device=x.v.device))
    t = t if isinstance(t, Jet) else Jet(torch.as_tensor(t, dtype=x.v.dtype, device=x.v.device))
    d1 = fma(fma(t.d1, x.d1, s.v), x.v, s.d1)
    d2 = fma(fma(fma(t.d2, x.d2, s.v), x.d1, s.d1, 2.0), x.v, s.d2)
    return _jet(value, d1, d2)


def _normalized(x: Jet, dims: tuple[int, ...], eps: float) -> Jet:
    """y = (u − m(u)) (m(c²) + ε)^{−1/2} over ``dims`` with its exact first and second derivatives.

    With c = u − m(u), r = (m(c²) + ε)^{−1/2}, c′ = u′ − m(u′), c″ = u″ − m(u″),
    (σ²)′ = 2m(c c′), (σ²)″ = 2m(c′² + c c″), r′ = −½ r³ (σ²)′, r″ = ¾ r⁵ (σ²)′² − ½ r³ (σ²)″:
    y′ = c′r + c r′ and y″ = c″r + 2c′r′ + c r″. The reduced quantities (r, r′, r″) are small; the
    full-size c, c′, c″ are fresh buffers that become y, y′, y″ in place (y″ first: it reads c′)."""
    u = x.v

    def m(t: Tensor) -> Tensor:
        return t.mean(dims, keepdim=True)

    c = u - m(u)
    r = torch.rsqrt(m(c * c) + eps)
    if x.constant:
        return Jet(c.mul_(r))
    c1 = None if x.d1 is None else x.d1 - m(x.d1)
    c2 = None if x.d2 is None else x.d2 - m(x.d2)
    s1 = None if c1 is None else 2 * m(c * c1)
    s2 = _plus(None if c1 is None else 2 * m(c1 * c1), None if c2 is None else 2 * m(c * c2))
    r3 = r * r * r
    r1 = None if s1 is None else -0.5 * r3 * s1
    r2 = _plus(None if s1 is None else 0.75 * (r3 * r * r) * (s1 * s1), None if s2 is None else -0.5 * r3 * s2)
    y2 = None if c2 is None else c2.mul_(r)
    if c1 is not None:  # then r1 is not None too
        y2 = c1 * (2 * r1) if y2 is None else y2.addcmul_(c1, r1, value=2.0)
    if r2 is not None:
        y2 = c * r2 if y2 is None else y2.addcmul_(c, r2)
    y1 = None if c1 is None else c1.mul_(r).addcmul_(c, r1)
    return _jet(c.mul_(r), y1, y2)


def _affine(y: Jet, weight: Any, bias: Any) -> Jet:
    out: Any = y
    if weight is not None:
        out = mul(out, weight)
    if bias is not None:
        out = add(out, bias)
    return out


def layer_norm(input: Any, normalized_shape: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> Jet:
    x = lift(input)
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    value = F.layer_norm(x.v, normalized_shape, _v(weight), _v(bias), eps)
    dims = tuple(range(-len(normalized_shape), 0))
    y = _normalized(x, dims, eps)
    if weight is None:
        out = _affine(y, weight, bias)
        return _jet(value, out.d1, out.d2)
    return _scaled_shift(y, lift(weight), 0.0 if bias is None else lift(bias), value)  # γ y + β, fused


def group_norm(input: Any, num_groups: int, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> Jet:
    x = lift(input)
    value = F.group_norm(x.v, num_groups, _v(weight), _v(bias), eps)
    shape = x.v.shape
    grouped = linear(lambda t: t.reshape(shape[0], num_groups, -1), x)
    y = linear(lambda t: t.reshape(shape), _normalized(grouped, (-1,), eps))
    n = len(shape)
    out = _affine(y, _channel(weight, n), _channel(bias, n))
    return _jet(value, out.d1, out.d2)


def rms_norm(input: Any, normalized_shape: Any, weight: Any = None, eps: float | None = None) -> Jet:
    x = lift(input)
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    value = F.rms_norm(x.v, normalized_shape, _v(weight), eps)
    e = torch.finfo(x.v.dtype).eps if eps is None else eps
    dims = tuple(range(-len(normalized_shape), 0))
    ms = linear(lambda t: t.mean(dims, keepdim=True), unary(x, torch.square, lambda u, v: (2 * u, 2.0)))
    r = unary(ms, lambda u: torch.rsqrt(u + e), lambda u, v: (-0.5 * v**3, 0.75 * v**5))
    out = _affine(mul(x, r), weight, None)
    return _jet(value, out.d1, out.d2)


def embedding(input: Any, weight: Any, padding_idx: Any = None, max_norm: Any = None, norm_type: float = 2.0,
              scale_grad_by_freq: bool = False, sparse: bool = False) -> Any:
    if max_norm is not None:
        return NotImplemented  # renormalises the weight in place
    idx = _v(input)
    return linear(lambda w: F.embedding(idx, w, padding_idx), weight)


# ----------------------------------------------------------------------------- elementwise
#
# Each rule gives f′ and f″ of the function torch computes, for every value of its parameters, at
# every input off the break points listed by the smoothness table (mli_theory/path/smoothness.py):
# the kinks of relu, leaky_relu (any slope), relu6, hardtanh, clamp, abs and of elu with alpha ≠ 1,
# where f′ jumps; the point 0 of elu with alpha = 1, where only f″ jumps (1 below, 0 above); and
# softplus's threshold βu = threshold, above which torch returns u itself (f′ = 1, f″ = 0 there), a
# jump in *value* that no jet can carry. At a break point the rules return one one-sided
# derivative. So the jets are the derivatives of the measured curve between the breaks, and the
# breaks are what the path kind records: a path through a kink is piecewise smooth (z′ or z″ may
# jump: the C² conditions are not applicable), one through softplus's threshold may be
# discontinuous (kind unknown: no condition is applicable). tests/test_smoothness.py checks each
# rule against finite differences for the parameter values above.


def _where(mask: Tensor, a: float, b: float, like: Tensor) -> Tensor:
    return torch.where(mask, like.new_tensor(a), like.new_tensor(b))


def relu(input: Any, inplace: bool = False) -> Jet:
    """(relu u, 1[u > 0] u′, 1[u > 0] u″): the derivatives selected by one mask (relu″ = 0 off the kink)."""
    x = lift(input)
    v = torch.relu(x.v)
    if x.constant:
        return Jet(v)
    mask = x.v > 0
    zero = x.v.new_zeros(())
    d1 = None if x.d1 is None else torch.where(mask, x.d1, zero)
    d2 = None if x.d2 is None else torch.where(mask, x.d2, zero)
    return _jet(v, d1, d2)


def leaky_relu(input: Any, negative_slope: float = 0.01, inplace: bool = False) -> Jet:
    return unary(input, lambda u: F.leaky_relu(u, negative_slope), lambda u, v: (_where(u > 0, 1.0, negative_slope, u), None))


def hardtanh(input: Any, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Jet:
    return unary(input, lambda u: F.hardtanh(u, min_val, max_val), lambda u, v: (((u > min_val) & (u < max_val)).to(u.dtype), None))


def relu6(input: Any, inplace: bool = False) -> Jet:
    return hardtanh(input, 0.0, 6.0)


def elu(input: Any, alpha: float = 1.0, inplace: bool = False) -> Jet:
    def derivs(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        pos = u > 0
        neg_part = torch.where(pos, torch.zeros_like(v), v + alpha)  # α e^u for u ≤ 0
        return torch.where(pos, torch.ones_like(v), neg_part), neg_part

    return unary(input, lambda u: F.elu(u, alpha), derivs)


_SQRT_2PI = math.sqrt(2 * math.pi)
_K_TANH = math.sqrt(2 / math.pi)
_C_TANH = 0.044715


def gelu(input: Any, approximate: str = "none") -> Any:
    if approximate == "none":
        return _gelu_erf(lift(input))
    if approximate == "tanh":
        def derivs(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            u2 = u * u
            t = torch.tanh(_K_TANH * (u + _C_TANH * u2 * u))
            sech2 = 1 - t * t
            g1 = _K_TANH * (1 + 3 * _C_TANH * u2)
            g2 = 6 * _K_TANH * _C_TANH * u
            return 0.5 * (1 + t) + 0.5 * u * sech2 * g1, sech2 * (g1 + 0.5 * u * (g2 - 2 * t * g1 * g1))
    else:
        return NotImplemented
    return unary(input, lambda u: F.gelu(u, approximate=approximate), derivs)


def _gelu_erf(x: Jet) -> Jet:
    """GELU(u) = u Φ(u) with f′ = Φ + uφ and f″ = φ (2 − u²), φ(u) = e^{−u²/2}/√(2π).

    f′ is torch's fused ``gelu_backward`` kernel at a unit cotangent (one pass, the same closed
    form); h″ = f′ u″ is a fresh tensor, then f′ becomes h′ = f′ u′ in place. f″ u′² is built in
    one temporary e (and one g): e = 2 − u², g = e^{e/2} = e·e^{−u²/2}, e ← e g u′ = e√(2π) f″ u′,
    and h″ += e u′ / (e√(2π)) (five passes over the tensor instead of the ten of f″ and u′² taken
    apart)."""
    u = x.v
    v = F.gelu(u)
    if x.constant:
        return Jet(v)
    f1 = torch.ops.aten.gelu_backward(u.new_ones(()).expand_as(u), u)  # f′(u), fresh
    d2 = None if x.d2 is None else f1 * x.d2
    if x.d1 is not None:
        e = torch.addcmul(u.new_full((), 2.0), u, u, value=-1.0)  # 2 − u²
        g = torch.mul(e, 0.5).exp_()  # e^{1 − u²/2}
        e.mul_(g).mul_(x.d1)
        del g
        c = 1 / (math.e * _SQRT_2PI)
        d2 = e.mul_(x.d1).mul_(c) if d2 is None else d2.addcmul_(e, x.d1, value=c)
        del e
    d1 = None if x.d1 is None else f1.mul_(x.d1)
    return _jet(v, d1, d2)


def silu(input: Any, inplace: bool = False) -> Jet:
    def derivs(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.sigmoid(u)
        return s * (1 + u * (1 - s)), s * (1 - s) * (2 + u * (1 - 2 * s))

    return unary(input, F.silu, derivs)


def tanh(input: Any, *, out: Any = None) -> Any:
    if out is not None:
        return NotImplemented

    def derivs(u: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        d1 = 1 - t * t
        return d1, -2 * t * d1

    return unary(input, torch.tanh, derivs)


def sigmoid(input: Any, *, out: Any = None) -> Any:
    if out is not None:
        return NotImplemented

    def derivs(u: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        d1 = s * (1 - s)
        return d1, d1 * (1 - 2 * s)

    return unary(input, torch.sigmoid, derivs)


def softplus(input: Any, beta: float = 1.0, threshold: float = 20.0) -> Jet:
    def derivs(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        below = (u * beta) <= threshold
        s = torch.sigmoid(u * beta)
        return torch.where(below, s, torch.ones_like(s)), torch.where(below, beta * s * (1 - s), torch.zeros_like(s))

    return unary(input, lambda u: F.softplus(u, beta, threshold), derivs)


def _elementwise(fn: Callable[[Tensor], Tensor], derivs: Callable[[Tensor, Tensor], tuple[Any, Any]]) -> Rule:
    def rule(input: Any, *, out: Any = None) -> Any:
        return NotImplemented if out is not None else unary(input, fn, derivs)

    return rule


exp = _elementwise(torch.exp, lambda u, v: (v, v))
log = _elementwise(torch.log, lambda u, v: (1 / u, -1 / (u * u)))
sqrt = _elementwise(torch.sqrt, lambda u, v: (0.5 / v, -0.25 / (v * u)))
rsqrt = _elementwise(torch.rsqrt, lambda u, v: (-0.5 * v**3, 0.75 * v**5))
reciprocal = _elementwise(torch.reciprocal, lambda u, v: (-(v * v), 2 * v**3))
square = _elementwise(torch.square, lambda u, v: (2 * u, 2.0))
sin = _elementwise(torch.sin, lambda u, v: (torch.cos(u), -v))
cos = _elementwise(torch.cos, lambda u, v: (-torch.sin(u), -v))
erf = _elementwise(torch.erf, lambda u, v: ((2 / math.sqrt(math.pi)) * torch.exp(-u * u), (-4 / math.sqrt(math.pi)) * u * torch.exp(-u * u)))
log1p = _elementwise(torch.log1p, lambda u, v: (1 / (1 + u), -1 / ((1 + u) * (1 + u))))
expm1 = _elementwise(torch.expm1, lambda u, v: (torch.exp(u), torch.exp(u)))
abs_ = _elementwise(torch.abs, lambda u, v: (torch.sign(u), None))


def clamp(input: Any, min: Any = None, max: Any = None, *, out: Any = None) -> Any:  # noqa: A002 - torch's names
    if out is not None or not all(b is None or _is_scalar(b) for b in (min, max)):
        return NotImplemented

    def derivs(u: Tensor, v: Tensor) -> tuple[Tensor, None]:
        keep = torch.ones_like(u, dtype=torch.bool)
        if min is not None:
            keep = keep & (u >= min)
        if max is not None:
            keep = keep & (u <= max)
        return keep.to(u.dtype), None

    return unary(input, lambda u: torch.clamp(u, min, max), derivs)


# ----------------------------------------------------------------------------- softmax family


def _softmax_jet(x: Jet, dim: int, s: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(s′, s″, ⟨s′u′ + s u″⟩) for s = softmax(u) along ``dim``."""
    def tot(t: Tensor) -> Tensor:
        return t.sum(dim, keepdim=True)

    a = None if x.d1 is None else x.d1 - tot(s * x.d1)
    s1 = None if a is None else s * a
    inner = _plus(None if s1 is None else tot(s1 * x.d1), None if x.d2 is None else tot(s * x.d2))
    b = _plus(x.d2, None if inner is None else -inner)
    s2 = _plus(None if s1 is None else s1 * a, None if b is None else s * b)
    return s1, s2, inner


def _softmax_input(x: Any, dim: Any, dtype: Any) -> Any:
    """The lifted, dtype-cast input of softmax/log_softmax (NotImplemented for torch's legacy implicit dim)."""
    if dim is None:
        return NotImplemented
    x = lift(x)
    return x if dtype is None else linear(lambda t: t.to(dtype), x)


def _softmax(x: Any, dim: Any, dtype: Any) -> Any:
    x = _softmax_input(x, dim, dtype)
    if x is NotImplemented:
        return x
    s = torch.softmax(x.v, dim)
    if x.constant:
        return Jet(s)
    s1, s2 = _softmax_derivatives(x, dim, s)
    return _jet(s, s1, s2)


def _softmax_derivatives(x: Jet, dim: int, s: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """(s′, s″) of s = softmax(u) in fused form: with a = u′ − ⟨s u′⟩ and i = ⟨s′u′⟩ + ⟨s u″⟩,
    s′ = s a and s″ = s′a + s (u″ − i) = s (a² + u″ − i); a is a fresh buffer that becomes s″ in
    place (three full-size tensors in all: a, s′ and the products under ⟨·⟩)."""
    def tot(t: Tensor) -> Tensor:
        return t.sum(dim, keepdim=True)

    if x.d1 is None:
        b = x.d2 - tot(s * x.d2)
        return None, b.mul_(s)
    a = x.d1 - tot(s * x.d1)
    s1 = s * a
    inner = tot(s1 * x.d1)
    if x.d2 is not None:
        inner = inner + tot(s * x.d2)
    s2 = a.mul_(a)
    if x.d2 is not None:
        s2 = s2.add_(x.d2)
    return s1, s2.sub_(inner).mul_(s)


def _log_softmax(x: Any, dim: Any, dtype: Any) -> Any:
    x = _softmax_input(x, dim, dtype)
    if x is NotImplemented:
        return x
    lv = torch.log_softmax(x.v, dim)
    if x.constant:
        return Jet(lv)
    s = torch.exp(lv)
    _, _, inner = _softmax_jet(x, dim, s)
    l1 = None if x.d1 is None else x.d1 - (s * x.d1).sum(dim, keepdim=True)
    l2 = _plus(x.d2, None if inner is None else -inner)
    return _jet(lv, l1, l2)


def softmax_f(input: Any, dim: Any = None, _stacklevel: int = 3, dtype: Any = None) -> Any:
    return _softmax(input, dim, dtype)


def softmax_t(input: Any, dim: Any, dtype: Any = None) -> Any:
    return _softmax(input, dim, dtype)


def log_softmax_f(input: Any, dim: Any = None, _stacklevel: int = 3, dtype: Any = None) -> Any:
    return _log_softmax(input, dim, dtype)


def log_softmax_t(input: Any, dim: Any, dtype: Any = None) -> Any:
    return _log_softmax(input, dim, dtype)


def logsumexp(input: Any, dim: Any, keepdim: bool = False, *, out: Any = None) -> Any:
    if out is not None:
        return NotImplemented
    x = lift(input)
    v = torch.logsumexp(x.v, dim, keepdim)
    if x.constant:
        return Jet(v)
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    s = torch.exp(x.v - torch.logsumexp(x.v, dims, True))

    def tot(t: Tensor) -> Tensor:
        return t.sum(dims, keepdim=keepdim)

    l1 = None if x.d1 is None else tot(s * x.d1)
    # l″ = ⟨s′u′ + s u″⟩ with s′ = s (u′ − l′)
    s1 = None if x.d1 is None else s * (x.d1 - (s * x.d1).sum(dims, keepdim=True))
    l2 = _plus(None if s1 is None else tot(s1 * x.d1), None if x.d2 is None else tot(s * x.d2))
    return _jet(v, l1, l2)


# ----------------------------------------------------------------------------- pooling, dropout, attention


def _max_pool(with_indices: Callable[..., tuple[Tensor, Tensor]], flat: int) -> Rule:
    def pool(input: Any, *args: Any, return_indices: bool = False, **kwargs: Any) -> Any:
        x = lift(input)
        v, idx = with_indices(x.v, *args, **kwargs, return_indices=True)

        def take(d: Tensor | None) -> Tensor | None:
            if d is None:
                return None
            return d.flatten(-flat).gather(-1, idx.flatten(-flat)).view(idx.shape)

        out = _jet(v, take(x.d1), take(x.d2))
        return (out, idx) if return_indices else out

    return pool


def _max_pool_positional(with_indices: Callable[..., tuple[Tensor, Tensor]], flat: int, n_args: int) -> Rule:
    """``return_indices`` may also come positionally (after ``n_args`` pooling arguments)."""
    inner = _max_pool(with_indices, flat)

    def pool(input: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) > n_args:
            kwargs = dict(kwargs, return_indices=args[n_args])
            args = args[:n_args]
        return inner(input, *args, **kwargs)

    return pool


def _with_indices(fn: Callable[..., tuple[Tensor, Tensor]], flat: int) -> Rule:
    """The ``*_with_indices`` functions themselves (what fx records when ``return_indices=True``)."""
    inner = _max_pool(fn, flat)

    def pool(input: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("return_indices", None)
        return inner(input, *args, return_indices=True, **kwargs)

    return pool


max_pool1d = _max_pool_positional(F.max_pool1d_with_indices, 1, 5)
max_pool2d = _max_pool_positional(F.max_pool2d_with_indices, 2, 5)
adaptive_max_pool1d = _max_pool_positional(F.adaptive_max_pool1d_with_indices, 1, 1)
adaptive_max_pool2d = _max_pool_positional(F.adaptive_max_pool2d_with_indices, 2, 1)


def _reduce_with_indices(fn: Callable[..., Any]) -> Rule:
    """torch.max / torch.min along a dim: values with derivatives gathered at the indices."""
    def rule(input: Any, dim: Any = None, keepdim: bool = False, *, out: Any = None) -> Any:
        if dim is None or out is not None or not isinstance(dim, int):
            return NotImplemented
        x = lift(input)
        res = fn(x.v, dim, keepdim)
        idx = res.indices if keepdim else res.indices.unsqueeze(dim)

        def take(d: Tensor | None) -> Tensor | None:
            if d is None:
                return None
            g = d.gather(dim, idx)
            return g if keepdim else g.squeeze(dim)

        return type(res)((_jet(res.values, take(x.d1), take(x.d2)), res.indices))

    return rule


def dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
    if training and p > 0:
        return NotImplemented  # random: left to the fallback
    return lift(input)


def scaled_dot_product_attention(
    query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0, is_causal: bool = False,
    scale: float | None = None, enable_gqa: bool = False,
) -> Any:
    """softmax(q kᵀ·scale + mask) v by the rules of its parts; the value is torch's own."""
    if dropout_p > 0:
        return NotImplemented
    q, k, v = lift(query), lift(key), lift(value)
    out_v = F.scaled_dot_product_attention(
        q.v, k.v, v.v, attn_mask=_v(attn_mask), dropout_p=0.0, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
    )
    if q.constant and k.constant and v.constant and (not isinstance(attn_mask, Jet) or attn_mask.constant):
        return Jet(out_v)
    L, S = q.v.shape[-2], k.v.shape[-2]
    s = 1 / math.sqrt(q.v.shape[-1]) if scale is None else scale
    if enable_gqa and q.v.dim() >= 3 and k.v.shape[-3] != q.v.shape[-3]:
        rep = q.v.shape[-3] // k.v.shape[-3]
        k = linear(lambda t: t.repeat_interleave(rep, -3), k)
        v = linear(lambda t: t.repeat_interleave(rep, -3), v)
    scores = mul(_matmul(q, linear(lambda t: t.transpose(-2, -1), k)), s)
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=q.v.device).tril(0)
        scores = masked_fill(scores, ~keep, float("-inf"))
    if attn_mask is not None:
        m = lift(attn_mask)
        if m.v.dtype == torch.bool:
            scores = masked_fill(scores, ~m.v, float("-inf"))
        else:
            scores = add(scores, m)
    out = _matmul(softmax_t(scores, -1), v)
    return _jet(out_v, out.d1, out.d2)


# ----------------------------------------------------------------------------- structure


def masked_fill(input: Any, mask: Any, value: Any) -> Any:
    if isinstance(value, Jet) and not value.constant:
        return NotImplemented
    x, m, val = lift(input), _v(mask), _v(value)
    v = x.v.masked_fill(m, val)
    return _jet(v, None if x.d1 is None else x.d1.masked_fill(m, 0), None if x.d2 is None else x.d2.masked_fill(m, 0))


def where(condition: Any, input: Any = None, other: Any = None, *, out: Any = None) -> Any:
    if input is None or out is not None:
        return NotImplemented
    c = _v(condition)
    a, b = lift(input), lift(other)
    v = torch.where(c, _v(a), _v(b))

    def part(name: str) -> Tensor | None:
        da = getattr(a, name) if isinstance(a, Jet) else None
        db = getattr(b, name) if isinstance(b, Jet) else None
        if da is None and db is None:
            return None
        return torch.where(c, da if da is not None else 0.0, db if db is not None else 0.0)

    return _jet(v, part("d1"), part("d2"))


def pad(input: Any, pad: Any, mode: str = "constant", value: Any = None) -> Jet:
    x = lift(input)
    v = F.pad(x.v, pad, mode, value)
    zero = 0.0 if mode == "constant" else None
    return _jet(v, None if x.d1 is None else F.pad(x.d1, pad, mode, zero), None if x.d2 is None else F.pad(x.d2, pad, mode, zero))


def getitem(obj: Any, idx: Any) -> Any:
    return linear(operator.getitem, obj, idx)


_SHAPE_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad", "is_sparse"}


def getattr_(obj: Any, name: str, *default: Any) -> Any:
    if not isinstance(obj, Jet):
        return getattr(obj, name, *default)
    if name in _SHAPE_ATTRS:
        return getattr(obj.v, name)
    if name in ("T", "mT"):
        return linear(lambda t: getattr(t, name), obj)
    return NotImplemented


def detach(input: Any) -> Jet:
    """Detached tensors have zero derivative (as in torch's forward mode)."""
    return Jet(_v(input).detach())


def _constant(fn: Callable[..., Any]) -> Rule:
    """Piecewise constant or value-only results (comparisons, argmax, zeros_like): no derivatives."""
    def rule(*args: Any, **kwargs: Any) -> Any:
        out = fn(*strip(args), **strip(kwargs))
        return Jet(out) if isinstance(out, Tensor) and _floating(out) else out

    return rule


def _linear_method(name: str) -> Rule:
    def rule(self: Any, *args: Any, **kwargs: Any) -> Any:
        return linear(lambda t, *a, **k: getattr(t, name)(*a, **k), self, *args, **kwargs)

    return rule


def _linear_function(fn: Callable[..., Any]) -> Rule:
    def rule(input: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("out") is not None:
            return NotImplemented
        return linear(fn, input, *args, **kwargs)

    return rule


def _structural_method(name: str) -> Rule:
    def rule(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(_v(self), name)(*strip(args), **strip(kwargs))

    return rule


def cat(tensors: Any, dim: int = 0, *, out: Any = None) -> Any:
    return linear_n(torch.cat, tensors, dim) if out is None else NotImplemented


def stack(tensors: Any, dim: int = 0, *, out: Any = None) -> Any:
    return linear_n(torch.stack, tensors, dim) if out is None else NotImplemented


def _sum(input: Any, *args: Any, **kwargs: Any) -> Any:
    return linear(torch.sum, input, *args, **kwargs)


def _mean(input: Any, *args: Any, **kwargs: Any) -> Any:
    return linear(torch.mean, input, *args, **kwargs)


# ----------------------------------------------------------------------------- module rules


def _m_identity(m: nn.Module, p: dict, input: Any, *args: Any, **kwargs: Any) -> Any:
    return lift(input)


def _m_linear_forward(m: nn.Module, p: dict, input: Any) -> Any:
    """A parameter-free module whose forward is linear in its input (pooling, flatten, padding)."""
    return linear(m.forward, input)


def _m_conv(fn: Rule, n: int) -> Rule:
    def rule(m: Any, p: dict, input: Any) -> Jet:
        padding = m.padding
        if m.padding_mode != "zeros":
            input = pad(input, m._reversed_padding_repeated_twice, mode=m.padding_mode)
            padding = (0,) * n
        return fn(input, p["weight"], p.get("bias"), m.stride, padding, m.dilation, m.groups)

    return rule


def _m_batch_norm(m: Any, p: dict, input: Any) -> Any:
    if m.training or p.get("running_mean") is None or p.get("running_var") is None:
        return NotImplemented  # batch statistics: they depend on the input
    m._check_input_dim(_v(input))
    return batch_norm(input, p["running_mean"], p["running_var"], p.get("weight"), p.get("bias"), False, 0.0, m.eps)


def _m_dropout(m: Any, p: dict, input: Any) -> Any:
    return NotImplemented if (m.training and m.p > 0) else lift(input)


def _m_max_pool(fn: Rule) -> Rule:
    def rule(m: Any, p: dict, input: Any) -> Any:
        return fn(input, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=m.return_indices)

    return rule


def _m_adaptive_max_pool(fn: Rule) -> Rule:
    def rule(m: Any, p: dict, input: Any) -> Any:
        return fn(input, m.output_size, return_indices=m.return_indices)

    return rule


def _m_softmax(fn: Callable[..., Any]) -> Rule:
    def rule(m: Any, p: dict, input: Any) -> Any:
        return fn(input, m.dim)

    return rule


MODULE_RULES: dict[type, Rule] = {
    nn.Linear: lambda m, p, input: linear_layer(input, p["weight"], p.get("bias")),
    nn.Conv1d: _m_conv(conv1d, 1),
    nn.Conv2d: _m_conv(conv2d, 2),
    nn.Conv3d: _m_conv(conv3d, 3),
    nn.BatchNorm1d: _m_batch_norm,
    nn.BatchNorm2d: _m_batch_norm,
    nn.BatchNorm3d: _m_batch_norm,
    nn.LayerNorm: lambda m, p, input: layer_norm(input, m.normalized_shape, p.get("weight"), p.get("bias"), m.eps),
    nn.GroupNorm: lambda m, p, input: group_norm(input, m.num_groups, p.get("weight"), p.get("bias"), m.eps),
    nn.Embedding: lambda m, p, input: embedding(input, p["weight"], m.padding_idx, m.max_norm, m.norm_type),
    nn.ReLU: lambda m, p, input: relu(input),
    nn.LeakyReLU: lambda m, p, input: leaky_relu(input, m.negative_slope),
    nn.ReLU6: lambda m, p, input: relu6(input),
    nn.Hardtanh: lambda m, p, input: hardtanh(input, m.min_val, m.max_val),
    nn.ELU: lambda m, p, input: elu(input, m.alpha),
    nn.GELU: lambda m, p, input: gelu(input, m.approximate),
    nn.SiLU: lambda m, p, input: silu(input),
    nn.Tanh: lambda m, p, input: tanh(input),
    nn.Sigmoid: lambda m, p, input: sigmoid(input),
    nn.Softplus: lambda m, p, input: softplus(input, m.beta, m.threshold),
    nn.Softmax: _m_softmax(softmax_f),
    nn.LogSoftmax: _m_softmax(log_softmax_f),
    nn.Identity: _m_identity,
    nn.Dropout: _m_dropout,
    nn.Dropout1d: _m_dropout,
    nn.Dropout2d: _m_dropout,
    nn.Dropout3d: _m_dropout,
    nn.AlphaDropout: _m_dropout,
    nn.MaxPool1d: _m_max_pool(max_pool1d),
    nn.MaxPool2d: _m_max_pool(max_pool2d),
    nn.AdaptiveMaxPool1d: _m_adaptive_max_pool(adaptive_max_pool1d),
    nn.AdaptiveMaxPool2d: _m_adaptive_max_pool(adaptive_max_pool2d),
    nn.ConstantPad1d: lambda m, p, input: pad(input, m.padding, "constant", m.value),
    nn.ConstantPad2d: lambda m, p, input: pad(input, m.padding, "constant", m.value),
    nn.ZeroPad1d: lambda m, p, input: pad(input, m.padding, "constant", 0.0),
    nn.ZeroPad2d: lambda m, p, input: pad(input, m.padding, "constant", 0.0),
}
if hasattr(nn, "RMSNorm"):
    MODULE_RULES[nn.RMSNorm] = lambda m, p, input: rms_norm(input, m.normalized_shape, p.get("weight"), m.eps)
for _cls in (
    nn.Flatten, nn.Unflatten, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d, nn.Upsample, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d,
    nn.PixelShuffle, nn.PixelUnshuffle,
):
    MODULE_RULES[_cls] = _m_linear_forward


# ----------------------------------------------------------------------------- function and method rules

FUNCTION_RULES: dict[Any, Rule] = {
    # arithmetic
    operator.add: lambda a, b: _addsub(a, b, 1, 1),
    operator.sub: lambda a, b: _addsub(a, b, 1, -1),
    operator.mul: lambda a, b: mul(a, b),
    operator.truediv: lambda a, b: div(a, b),
    operator.neg: neg,
    operator.pos: lambda a: lift(a),
    operator.pow: pow_,
    operator.matmul: lambda a, b: _matmul(a, b),
    operator.getitem: getitem,
    getattr: getattr_,
    torch.add: add,
    torch.sub: sub,
    torch.subtract: sub,
    torch.mul: mul,
    torch.multiply: mul,
    torch.div: div,
    torch.divide: div,
    torch.true_divide: div,
    torch.neg: neg,
    torch.negative: neg,
    torch.pow: pow_,
    torch.matmul: _matmul,
    torch.mm: _mm,
    torch.bmm: _bmm,
    torch.addmm: addmm,
    torch.einsum: einsum,
    # layers
    F.linear: linear_layer,
    F.conv1d: conv1d,
    F.conv2d: conv2d,
    F.conv3d: conv3d,
    F.batch_norm: batch_norm,
    F.layer_norm: layer_norm,
    F.group_norm: group_norm,
    F.embedding: embedding,
    F.scaled_dot_product_attention: scaled_dot_product_attention,
    # elementwise
    torch.relu: relu,
    torch.relu_: relu,
    F.relu: relu,
    F.relu_: relu,
    F.leaky_relu: leaky_relu,
    F.relu6: relu6,
    F.hardtanh: hardtanh,
    F.elu: elu,
    F.gelu: gelu,
    F.silu: silu,
    torch.tanh: tanh,
    F.tanh: lambda input: tanh(input),
    torch.sigmoid: sigmoid,
    F.sigmoid: lambda input: sigmoid(input),
    F.softplus: softplus,
    torch.exp: exp,
    torch.log: log,
    torch.sqrt: sqrt,
    torch.rsqrt: rsqrt,
    torch.reciprocal: reciprocal,
    torch.square: square,
    torch.sin: sin,
    torch.cos: cos,
    torch.erf: erf,
    torch.log1p: log1p,
    torch.expm1: expm1,
    torch.abs: abs_,
    torch.clamp: clamp,
    torch.clip: clamp,
    # softmax family
    torch.softmax: softmax_t,
    F.softmax: softmax_f,
    torch.log_softmax: log_softmax_t,
    F.log_softmax: log_softmax_f,
    torch.logsumexp: logsumexp,
    # pooling, dropout
    F.avg_pool1d: _linear_function(F.avg_pool1d),
    F.avg_pool2d: _linear_function(F.avg_pool2d),
    F.avg_pool3d: _linear_function(F.avg_pool3d),
    F.adaptive_avg_pool1d: _linear_function(F.adaptive_avg_pool1d),
    F.adaptive_avg_pool2d: _linear_function(F.adaptive_avg_pool2d),
    F.adaptive_avg_pool3d: _linear_function(F.adaptive_avg_pool3d),
    F.max_pool1d: max_pool1d,
    F.max_pool2d: max_pool2d,
    F.adaptive_max_pool1d: adaptive_max_pool1d,
    F.adaptive_max_pool2d: adaptive_max_pool2d,
    F.max_pool1d_with_indices: _with_indices(F.max_pool1d_with_indices, 1),
    F.max_pool2d_with_indices: _with_indices(F.max_pool2d_with_indices, 2),
    F.adaptive_max_pool1d_with_indices: _with_indices(F.adaptive_max_pool1d_with_indices, 1),
    F.adaptive_max_pool2d_with_indices: _with_indices(F.adaptive_max_pool2d_with_indices, 2),
    F.dropout: dropout,
    F.dropout1d: dropout,
    F.dropout2d: dropout,
    F.dropout3d: dropout,
    F.alpha_dropout: lambda input, p=0.5, training=False, inplace=False: dropout(input, p, training),
    F.pad: pad,
    F.interpolate: _linear_function(F.interpolate),
    torch.max: _reduce_with_indices(torch.max),
    torch.min: _reduce_with_indices(torch.min),
    # structure
    torch.cat: cat,
    torch.concat: cat,
    torch.concatenate: cat,
    torch.stack: stack,
    torch.sum: _sum,
    torch.mean: _mean,
    torch.where: where,
    torch.masked_fill: masked_fill,
    torch.detach: detach,
}
if hasattr(F, "rms_norm"):
    FUNCTION_RULES[F.rms_norm] = rms_norm
for _fn in (
    torch.reshape, torch.flatten, torch.transpose, torch.swapaxes, torch.permute, torch.movedim, torch.unsqueeze,
    torch.squeeze, torch.narrow, torch.select, torch.t, torch.chunk, torch.split, torch.unbind, torch.flip, torch.roll,
    torch.tile, torch.tril, torch.triu, torch.diagonal, torch.cumsum, torch.unflatten, F.pixel_shuffle, F.pixel_unshuffle,
):
    FUNCTION_RULES[_fn] = _linear_function(_fn)
for _fn in (
    torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like, torch.rand_like, torch.randn_like,
    torch.gt, torch.lt, torch.ge, torch.le, torch.eq, torch.ne, torch.argmax, torch.argmin, torch.argsort,
    torch.sign, torch.floor, torch.ceil, torch.round, torch.isnan, torch.isfinite, torch.isinf, torch.logical_not,
    operator.gt, operator.lt, operator.ge, operator.le, operator.eq, operator.ne, operator.invert,
    operator.and_, operator.or_, operator.xor,
):
    FUNCTION_RULES[_fn] = _constant(_fn)

METHOD_RULES: dict[str, Rule] = {
    "add": add,
    "sub": sub,
    "subtract": sub,
    "mul": mul,
    "multiply": mul,
    "div": div,
    "divide": div,
    "true_divide": div,
    "neg": neg,
    "negative": neg,
    "pow": pow_,
    "matmul": _matmul,
    "mm": _mm,
    "bmm": _bmm,
    "addmm": addmm,
    "relu": relu,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "exp": exp,
    "log": log,
    "sqrt": sqrt,
    "rsqrt": rsqrt,
    "reciprocal": reciprocal,
    "square": square,
    "sin": sin,
    "cos": cos,
    "erf": erf,
    "log1p": log1p,
    "expm1": expm1,
    "abs": abs_,
    "clamp": clamp,
    "clip": clamp,
    "softmax": softmax_t,
    "log_softmax": log_softmax_t,
    "logsumexp": logsumexp,
    "sum": _sum,
    "mean": _mean,
    "masked_fill": masked_fill,
    "detach": detach,
    "max": _reduce_with_indices(torch.max),
    "min": _reduce_with_indices(torch.min),
}
for _name in (
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute", "transpose", "swapaxes", "movedim",
    "t", "contiguous", "unsqueeze", "squeeze", "expand", "expand_as", "repeat", "repeat_interleave", "narrow", "select",
    "flip", "roll", "tile", "chunk", "split", "unbind", "cumsum", "tril", "triu", "diagonal", "clone",
    "to", "type", "type_as", "float", "double", "half", "bfloat16",
):
    METHOD_RULES[_name] = _linear_method(_name)
for _name in ("size", "dim", "numel", "ndimension", "nelement", "is_contiguous", "is_floating_point", "get_device"):
    METHOD_RULES[_name] = _structural_method(_name)
for _name in (
    "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "gt", "lt", "ge", "le", "eq", "ne", "argmax",
    "argmin", "argsort", "sign", "floor", "ceil", "round", "isnan", "isfinite", "logical_not", "bool", "long", "int",
):
    METHOD_RULES[_name] = _constant(lambda self, *a, _n=_name, **k: getattr(self, _n)(*a, **k))


# ----------------------------------------------------------------------------- the number type


class JetNumbers:
    """The jet number type for :func:`mli_theory.geometry.interpreter.interpret`."""

    name = "jet"

    def __init__(self, modules: dict[type, Rule], functions: dict[Any, Rule], methods: dict[str, Rule]) -> None:
        self._rules = {"module": modules, "function": functions, "method": methods}

    def is_number(self, obj: object) -> bool:
        return isinstance(obj, Jet)

    def rule(self, kind: str, key: object) -> Rule | None:
        try:
            return self._rules[kind].get(key)  # type: ignore[call-overload]
        except TypeError:  # unhashable target
            return None

    def fallback(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """The jet of g(t) = fn(u + t u′ + ½t² u″) at t = 0, for one operation without a rule.

        Nested forward mode (``torch.func.jvp`` twice, under grad mode: with grad disabled torch
        decomposes ``silu`` and ``mish`` into ``*_backward`` kernels that have no forward
        derivative); where torch still has no forward derivative (``hardsigmoid``), reverse mode
        twice instead (:func:`_reverse_jet`).
        """
        leaves, spec = tree_flatten((args, kwargs))
        live = [i for i, a in enumerate(leaves) if isinstance(a, Jet) and not a.constant]
        plain = [a.v if isinstance(a, Jet) else a for a in leaves]
        if not live:
            a, k = tree_unflatten(plain, spec)
            flat, ospec = tree_flatten(fn(*a, **k))
            return tree_unflatten([Jet(o) if isinstance(o, Tensor) and _floating(o) else o for o in flat], ospec)
        ref = leaves[live[0]].v
        layout: dict[str, Any] = {}

        def g(t: Tensor) -> tuple[Tensor, ...]:
            vals = list(plain)
            for i in live:
                j = leaves[i]
                x = j.v
                if j.d1 is not None:
                    x = x + t * j.d1
                if j.d2 is not None:
                    x = x + (0.5 * t * t) * j.d2
                vals[i] = x
            a, k = tree_unflatten(vals, spec)
            flat, ospec = tree_flatten(fn(*a, **k))
            layout["spec"] = ospec
            layout["other"] = [None if isinstance(o, Tensor) else o for o in flat]
            return tuple(o for o in flat if isinstance(o, Tensor))

        t0 = torch.zeros((), dtype=ref.dtype, device=ref.device)
        try:
            vals, d1s, d2s = _forward_jet(g, t0)
        except (NotImplementedError, RuntimeError) as exc:
            if "forward AD" not in str(exc) and "forward grad" not in str(exc):
                raise
            vals, d1s, d2s = _reverse_jet(g, t0)
        it = iter(zip(vals, d1s, d2s))
        flat = []
        for o in layout["other"]:
            if o is not None:
                flat.append(o)
                continue
            v, d1, d2 = next(it)
            flat.append(Jet(v, d1, d2) if _floating(v) else v)
        return tree_unflatten(flat, layout["spec"])


def _forward_jet(g: Callable[[Tensor], tuple[Tensor, ...]], t0: Tensor) -> tuple[tuple[Tensor, ...], ...]:
    """(g(0), g′(0), g″(0)) by forward mode over forward mode in the scalar t."""
    one = torch.ones_like(t0)

    def first(t: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        return jvp(g, (t,), (one,))

    with torch.enable_grad():  # nothing requires grad, so no graph is recorded
        (vals, d1s), (_, d2s) = jvp(first, (t0,), (one,))
    return vals, d1s, d2s


def _reverse_jet(g: Callable[[Tensor], tuple[Tensor, ...]], t0: Tensor) -> tuple[tuple[Tensor, ...], ...]:
    """(g(0), g′(0), g″(0)) by reverse mode only (double backward, as Hessians use).

    For a scalar t and vector y(t): with a dummy cotangent w, s(w) = wᵀ ∂y/∂t is one backward pass
    and linear in w, so ∂y/∂t = ∇_w s (a second pass); applied twice this gives y′ and y″.
    """
    with torch.enable_grad():
        t = t0.detach().requires_grad_(True)
        ys = g(t)

        def d_dt(outs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            res = [torch.zeros_like(o) for o in outs]
            idx = [i for i, o in enumerate(outs) if o.requires_grad and _floating(o)]
            if idx:
                ws = [torch.zeros_like(outs[i], requires_grad=True) for i in idx]
                (s,) = torch.autograd.grad([outs[i] for i in idx], t, ws, create_graph=True, allow_unused=True, materialize_grads=True)
                if s.requires_grad:
                    grads = torch.autograd.grad(s, ws, create_graph=True, allow_unused=True, materialize_grads=True)
                    for i, gr in zip(idx, grads):
                        res[i] = gr
            return tuple(res)

        d1s = d_dt(ys)
        d2s = d_dt(d1s)
    return tuple(y.detach() for y in ys), tuple(d.detach() for d in d1s), tuple(d.detach() for d in d2s)


JET = JetNumbers(MODULE_RULES, FUNCTION_RULES, METHOD_RULES)
"""The jet number type with the full rule table."""
