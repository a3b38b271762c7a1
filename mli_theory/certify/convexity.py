r"""Enclosures of the second derivative L″(α) on cells: the number type of the convex-end certificate.

A first-order enclosure (:mod:`.enclosures`) bounds L′ on a cell [a, b] by a Taylor model whose
remainder is uniform over the cell. At a trained end point L′(1) is 0 or within rounding of it, so
the last cell's upper bound of L′ is always positive and a first-order partition can never prove
``monotone`` at tolerance 0 there. The convex-end argument (``proofs/convex_end.py``) needs, on one
cell [c, 1], a proven lower bound of L″ instead:

    L is C² on [c, 1],  L″ ≥ 0 on [c, 1],  L′(1) ≤ 0   ⇒   L′(α) = L′(1) − ∫_α^1 L″ ≤ 0 on [c, 1].

This module supplies that bound. A number (:class:`Curved`) is a first-order :class:`Enclosure`
of an activation and its α-derivative, exactly as the first-order walk computes it (the wrapper
calls the same rules), plus an interval enclosure of the activation's second α-derivative,
``mid ± rad`` entrywise on every cell. The second-derivative rules, each by the product and chain
rules along α (θ(α) is affine, so θ″ = 0):

* bilinear maps B (Linear, convolutions as unfold + matmul): (B(x, W(α)))″ = B(x″, W(α)) + 2B(x′, ΔW);
  an input x (the data) has x′ = x″ = 0;
* elementwise smooth f: f(v)″ = f″(v)·v′² + f′(v)·v″, with f′(v) ∈ f′(ĉ) ± sup|f″|·R and
  f″(v) ∈ f″(ĉ) ± sup|f‴|·R over the cell's range ĉ ± R of v (mean value theorem; the same sup
  bounds as the first-order rule);
* ReLU/LeakyReLU: linear on a neuron whose range excludes 0 (then (coef·v)″ = coef·v″); a neuron
  whose range reaches 0 may have a kink on the cell, where L″ does not exist: its second
  derivative is unbounded (rad = ∞), so no cell containing a possible kink is ever called convex;
* sums, scalings, moves of entries (reshape, flatten), averages (means, average pooling):
  applied to mid and, with |·|, to rad;
* products: (ab)″ = a″b + 2a′b′ + ab″ in interval arithmetic;
* BatchNorm in eval mode with fixed statistics: y = (x − μ)·r·γ(α) + β(α), y″ = r(γ(α)x″ + 2Δγ·x′);
  with moving statistics (interpolated, or re-estimated by :class:`SecondStatisticsNumbers`
  walking the train-mode pass in this number type) the same composition of subtraction,
  (v + ε)^(−1/2) (a smooth function on v > 0, its range bounded below by ε when v ≥ 0 is proven)
  and products that the first-order rule uses, each to second order.

Anything else has no rule, and the convex-end certificate is not attempted (the first-order
bisection decides as before). Rounding: every rule adds 2γ_{K+16} times an absolute-valued
product dominating the terms it rounded (as in :mod:`.enclosures`) and inflates non-negative
radii by :func:`~.enclosures._up`.

The loss: MSE (mean of N entries) L″ = (2/N)Σ[(z′)² + (z − y)z″]; cross-entropy (mean over n),
with u_k = z_k − z_y and p = softmax([0, u]) over the classes k ≠ y,

    ℓ″ = Σ p_k (u′_k)² − (Σ p_k u′_k)² + Σ p_k u″_k,

whose first part is a variance: ≥ 0, and by Cauchy–Schwarz ≥ (1 − q)·Σ p_k (u′_k)² with
q = Σ_{k≠y} p_k (``proofs/convex_end.py`` checks both identities symbolically).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import enclosures as E
from .enclosures import TM, U, Enclosure, EnclosureNumbers, Param, _imul, _softmax_box, _up, gamma

_INF = math.inf


@dataclass(frozen=True, slots=True)
class Curved:
    """An activation on a batch of cells: its first-order enclosure (value and α-derivative as
    Taylor models) and ``mid ± rad`` ⊇ its second α-derivative, entrywise, on every cell."""

    first: Enclosure
    mid: Tensor
    rad: Tensor

    @property
    def shape(self) -> torch.Size:
        return self.first.shape


# ----------------------------------------------------------------------------- interval helpers


def _outward(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """[lo, hi] widened by a few roundings of its own end points (after a sum of two products)."""
    pad = (lo.abs() + hi.abs()) * (4 * U) + E._TINY
    return lo - pad, hi + pad


def _mid_rad(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """mid ± rad ⊇ [lo, hi]: rad ≥ max(hi − mid, mid − lo), both differences rounded up."""
    mid = (lo + hi) * 0.5
    rad = torch.maximum(hi - mid, mid - lo)
    rad = rad * (1 + 4 * U) + (mid.abs() * (2 * U)) + E._TINY
    rad = torch.where(torch.isnan(rad), torch.full_like(rad, _INF), rad)
    return mid, rad


def _interval(mid: Tensor, rad: Tensor) -> tuple[Tensor, Tensor]:
    return _outward(mid - rad, mid + rad)


def _square(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """{v² : lo ≤ v ≤ hi}, rounded outward."""
    a, b = lo * lo, hi * hi
    top = torch.maximum(a, b) * (1 + 4 * U) + E._TINY
    low = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(a), torch.minimum(a, b) * (1 - 4 * U))
    return low, top


def _full(t: Tensor, shape: torch.Size) -> Tensor:
    return t.expand(shape) if t.shape != shape else t


def _tm_interval(t: TM, h: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor]:
    lo, hi = t.bounds(h)
    return _full(lo, shape), _full(hi, shape)


# ----------------------------------------------------------------------------- the number type


class SecondNumbers(EnclosureNumbers):
    """The number type of :class:`Curved`: every operation first runs the first-order rule of
    :mod:`.enclosures` on the first-order parts (so values and slopes are exactly those of the
    first-order walk), then the second-derivative rule of this module; an operation lacking
    either is unsupported (the interpreter reports it, the caller gives up the convex end)."""

    name = "rigorous enclosure with second derivative"

    def is_number(self, obj: object) -> bool:
        return isinstance(obj, (Curved, Param))

    def rule(self, kind: str, key: object):
        first = super().rule(kind, key)
        table = _MODULE2 if kind == "module" else _FUNCTION2 if kind == "function" else _METHOD2
        second = table.get(key)
        if first is None or second is None:
            return None

        def both(*args: Any, **kwargs: Any) -> Any:
            out = first(*_unwrap(args), **_unwrap(kwargs))
            if out is NotImplemented or not isinstance(out, Enclosure):
                return out
            got = second(self, out, *args, **kwargs)
            if got is NotImplemented:
                return NotImplemented
            mid, rad = got
            shape = out.v.c.shape
            # anything not finite (an unbounded second derivative met a zero weight: ∞·0) is unbounded
            bad = ~(torch.isfinite(mid) & torch.isfinite(rad))
            if bool(bad.any()):
                mid = torch.where(bad, torch.zeros_like(mid), mid)
                rad = torch.where(bad, torch.full_like(rad, _INF), rad)
            return Curved(out, _full(mid, shape), _full(rad, shape))

        return both

    def fallback(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError("no second-derivative enclosure rule for this operation")


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, Curved):
        return obj.first
    if isinstance(obj, tuple):
        return tuple(_unwrap(o) for o in obj)
    if isinstance(obj, list):
        return [_unwrap(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


def _zeros(out: Enclosure) -> tuple[Tensor, Tensor]:
    z = torch.zeros_like(out.v.c)
    return z, z


def _parts(nt: EnclosureNumbers, a: Any, rank: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """(value, derivative, second derivative) intervals of an operand, aligned to ``rank`` axes
    (cell axis included; lower-rank operands get singleton axes after the cell axis)."""
    if isinstance(a, Curved):
        enc, lo2, hi2 = a.first, *_interval(a.mid, a.rad)
    else:
        enc = E._as_enclosure(nt, a)
        if enc is None:
            return None
        lo2 = hi2 = torch.zeros_like(enc.v.c)
    k = rank - enc.v.c.dim()

    def pad(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], *([1] * k), *t.shape[1:]) if k > 0 and t.dim() else t

    nd = enc.v.c.dim() - 1
    h = nt.h(nd)
    shape = enc.v.c.shape
    v = _tm_interval(enc.v, h, shape)
    d = _tm_interval(enc.d, h, shape)
    return (pad(v[0]), pad(v[1])), (pad(d[0]), pad(d[1])), (pad(lo2), pad(hi2))


# ----------------------------------------------------------------------------- bilinear maps


def _bilinear(nt: EnclosureNumbers, x: Curved, w: Param, f: Callable[[Tensor, Tensor], Tensor], k_len: int) -> tuple[Tensor, Tensor]:
    """(B(x, W(α)))″ = B(x″, W(α)) + 2B(x′, ΔW) for B bilinear with non-negative coefficients."""
    nd = x.mid.dim() - 1
    m, h = nt.m(nd), nt.h(nd)
    shape = x.first.v.c.shape
    dmid, drad = _mid_rad(*_tm_interval(x.first.d, h, shape))
    p0, p1 = E._multi(f, x.mid, [w.w0, w.dw])
    q = f(dmid, w.dw)
    mid = p0 + m * p1 + 2.0 * q
    aw0, adw = w.w0.abs(), w.dw.abs()
    r0, r1 = E._multi(f, x.rad, [aw0, adw])
    rad = r0 + (m.abs() + h) * r1 + h * f(x.mid.abs(), adw) + 2.0 * f(drad, adw)
    top = float(nt.mid.abs().max()) + 1.0
    g2 = 2.0 * gamma(k_len + 16)
    rnd = f(x.mid.abs() + 2.0 * dmid.abs(), aw0 + top * adw) * g2
    return mid, _up((rad + rnd) * (1.0 + g2))


def _linear2(nt: EnclosureNumbers, out: Enclosure, x: Any, weight: Any, bias: Any = None) -> Any:
    if not isinstance(x, Curved):
        return _zeros(out)  # the data: W(α)x + b(α) is affine in α
    w = weight if isinstance(weight, Param) else Param(weight.to(torch.float64), torch.zeros_like(weight, dtype=torch.float64))

    def f(a: Tensor, ww: Tensor) -> Tensor:
        return torch.matmul(a, ww.transpose(-1, -2))

    f.multi = E._linear_multi  # type: ignore[attr-defined]
    return _bilinear(nt, x, w, f, int(w.w0.shape[-1]))


def _linear_module2(nt: EnclosureNumbers, out: Enclosure, mod: nn.Linear, p: dict, x: Any) -> Any:
    return _linear2(nt, out, x, p["weight"], p.get("bias"))


def _conv_module2(nt: EnclosureNumbers, out: Enclosure, mod: nn.Module, p: dict, x: Any) -> Any:
    if not isinstance(x, Curved):
        return _zeros(out)
    got = E.conv_map(mod)
    if got is None:
        return NotImplemented
    f, k_len = got
    weight = p["weight"]
    w = weight if isinstance(weight, Param) else Param(weight.to(torch.float64), torch.zeros_like(weight, dtype=torch.float64))
    return _bilinear(nt, x, w, f, k_len)


# ----------------------------------------------------------------------------- elementwise maps


def _smooth2(nt: EnclosureNumbers, s: Any, out: Enclosure, x: Any, *, known_lo: float | None = None) -> Any:
    """f(v)″ = f″(v)v′² + f′(v)v″ with f′, f″ enclosed over the cell's range of v.

    ``known_lo``: a proven lower bound of v (a variance plus ε), used as in the first-order rule
    (:func:`~.enclosures._smooth`): the range [min(ĉ, max(lo, known_lo)), hi] still contains every
    point between ĉ and v(α)."""
    if not isinstance(x, Curved):
        return NotImplemented
    v = x.first.v
    shape = v.c.shape
    h = nt.h(v.c.dim() - 1)
    R = (v.g.abs() * h + v.e) * (1.0 + 4 * U) + E._TINY
    lo, hi = v.c - R, v.c + R
    lo, hi = lo - lo.abs() * (2 * U), hi + hi.abs() * (2 * U)
    if known_lo is not None:
        lo = torch.minimum(torch.clamp(lo, min=known_lo), v.c)
    f1c, f2c = s.f1(v.c), s.f2(v.c)
    m2 = E._sup_at(s.f2, lo, hi, s.peaks2, s.scale2)
    m3 = E._sup_at(s.f3, lo, hi, s.peaks3, s.scale3)
    # f′(v) ∈ f′(ĉ) ± sup|f″|·R and f″(v) ∈ f″(ĉ) ± sup|f‴|·R, plus the library error of the computed
    # f′(ĉ), f″(ĉ) and the rounding of the end points f′(ĉ) ± w
    w1 = (m2 * R + E._lib(f1c, s.scale1)) * (1 + 4 * U) + f1c.abs() * (4 * U)
    w2 = (m3 * R + E._lib(f2c, s.scale2)) * (1 + 4 * U) + f2c.abs() * (4 * U)
    d_lo, d_hi = _tm_interval(x.first.d, h, shape)
    sq = _square(d_lo, d_hi)
    t1 = _imul(_full(f2c - w2, shape), _full(f2c + w2, shape), *sq)
    t2 = _imul(_full(f1c - w1, shape), _full(f1c + w1, shape), *_interval(x.mid, x.rad))
    return _mid_rad(*_outward(t1[0] + t2[0], t1[1] + t2[1]))


def _relu2(nt: EnclosureNumbers, out: Enclosure, x: Any, slope: float = 0.0) -> Any:
    """coef·v″ where the neuron's sign is proven on the cell; unbounded where a kink may lie."""
    if not isinstance(x, Curved):
        return NotImplemented
    v = x.first.v
    h = nt.h(v.c.dim() - 1)
    r = v.g.abs() * h + v.e
    rr = r + (v.c.abs() + r) * (4 * U) + E._TINY
    pos, neg = v.c >= rr, v.c <= -rr
    coef = pos.to(v.c.dtype) + neg.to(v.c.dtype) * slope
    mid = coef * x.mid
    rad = coef * x.rad + mid.abs() * (2 * U)
    rad = torch.where(pos | neg, rad, torch.full_like(rad, _INF))
    return mid, _up(rad)


def _softplus2(nt: EnclosureNumbers, out: Enclosure, x: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
    if float(beta) != 1.0:
        return NotImplemented
    return _smooth2(nt, E._SOFTPLUS, out, x)


# ----------------------------------------------------------------------------- sums and products


def _add2(nt: EnclosureNumbers, out: Enclosure, a: Any, b: Any, *, alpha: Any = 1, sign: float = 1.0) -> Any:
    rank = out.v.c.dim()
    terms = []
    for t in (a, b):
        if isinstance(t, (int, float)):
            continue
        got = _parts(nt, t, rank)
        if got is None:
            return NotImplemented
        terms.append(got[2])
    if not terms:
        return _zeros(out)
    lo, hi = terms[0]
    if len(terms) == 2:
        blo, bhi = terms[1]
        lo, hi = (lo + blo, hi + bhi) if sign > 0 else (lo - bhi, hi - blo)
    elif sign < 0 and isinstance(a, (int, float)):
        lo, hi = -hi, -lo
    return _mid_rad(*_outward(lo, hi))


def _sub2(nt: EnclosureNumbers, out: Enclosure, a: Any, b: Any, *, alpha: Any = 1) -> Any:
    return _add2(nt, out, a, b, alpha=alpha, sign=-1.0)


def _mul2(nt: EnclosureNumbers, out: Enclosure, a: Any, b: Any) -> Any:
    if isinstance(b, Curved) and not isinstance(a, Curved):
        a, b = b, a
    if not isinstance(a, Curved):
        return NotImplemented
    if isinstance(b, (int, float)) or (isinstance(b, Tensor) and not isinstance(b, Param)):
        s = float(b) if isinstance(b, (int, float)) else b.to(torch.float64)
        mid = a.mid * s
        sa = abs(s) if isinstance(s, float) else s.abs()
        return mid, _up(a.rad * sa + mid.abs() * (2 * U))
    rank = out.v.c.dim()
    pa, pb = _parts(nt, a, rank), _parts(nt, b, rank)
    if pa is None or pb is None:
        return NotImplemented
    (av, ad, a2), (bv, bd, b2) = pa, pb
    t1 = _imul(*a2, *bv)
    t2 = _imul(*ad, *bd)
    t3 = _imul(*av, *b2)
    lo = t1[0] + 2.0 * t2[0] + t3[0]
    hi = t1[1] + 2.0 * t2[1] + t3[1]
    return _mid_rad(*_outward(lo, hi))


def _neg2(nt: EnclosureNumbers, out: Enclosure, a: Any) -> Any:
    return (-a.mid, a.rad) if isinstance(a, Curved) else NotImplemented


def _truediv2(nt: EnclosureNumbers, out: Enclosure, a: Any, b: Any) -> Any:
    if not (isinstance(a, Curved) and isinstance(b, (int, float)) and b != 0):
        return NotImplemented
    mid = a.mid / float(b)
    return mid, _up(a.rad / abs(float(b)) + mid.abs() * (4 * U))


# ----------------------------------------------------------------------------- moves and averages


def _moved(nt: EnclosureNumbers, out: Enclosure, x: Any, *args: Any, **kwargs: Any) -> Any:
    """Operations that only move entries (reshape, view, flatten, unflatten, identity, eval-mode
    dropout): the first-order rule already produced the output's shape, in the same order."""
    if not isinstance(x, Curved):
        return NotImplemented
    shape = out.v.c.shape
    mid, rad = x.mid.expand(x.first.v.c.shape), x.rad.expand(x.first.v.c.shape)
    return mid.reshape(shape), rad.reshape(shape)


def _moved_module(nt: EnclosureNumbers, out: Enclosure, mod: nn.Module, p: dict, x: Any) -> Any:
    return _moved(nt, out, x)


def _averaged(x: Curved, pool: Callable[[Tensor], Tensor], k: int) -> tuple[Tensor, Tensor]:
    """A map with non-negative weights summing to at most 1 (means, average pooling)."""
    mid = pool(x.mid)
    return mid, _up(pool(x.rad) + pool(x.mid.abs() + x.rad) * (2.0 * gamma(k + 4)))  # rad: its own average's rounding


def _mean2(nt: EnclosureNumbers, out: Enclosure, x: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Any:
    if not isinstance(x, Curved):
        return NotImplemented
    nd = len(x.shape)
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    cdims = tuple(d % nd + 1 for d in dims)
    k = int(math.prod(x.mid.shape[d] for d in cdims))
    return _averaged(x, lambda t: t.mean(cdims, keepdim=keepdim), k)


def _pool(x: Curved, fn: Callable[[Tensor], Tensor], k: int | None) -> tuple[Tensor, Tensor]:
    def ap(t: Tensor) -> Tensor:
        s = t.shape
        y = fn(t.reshape(-1, *s[-3:]))
        return y.reshape(*s[:-3], *y.shape[-3:])

    return _averaged(x, ap, k if k is not None else int(math.prod(x.mid.shape[-2:])))


def _avg_pool_module2(nt: EnclosureNumbers, out: Enclosure, mod: nn.Module, p: dict, x: Any) -> Any:
    if not isinstance(x, Curved):
        return NotImplemented
    if type(mod) is nn.AvgPool2d:
        return _pool(x, lambda t: F.avg_pool2d(t, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad),
                     E._prod2(mod.kernel_size))
    return _pool(x, lambda t: F.adaptive_avg_pool2d(t, mod.output_size), None)


def _avg_pool_fn2(nt: EnclosureNumbers, out: Enclosure, x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                  count_include_pad: bool = True, divisor_override: Any = None) -> Any:
    if not isinstance(x, Curved):
        return NotImplemented
    return _pool(x, lambda t: F.avg_pool2d(t, kernel_size, stride, padding, ceil_mode, count_include_pad), E._prod2(kernel_size))


def _adaptive_avg_pool_fn2(nt: EnclosureNumbers, out: Enclosure, x: Any, output_size: Any) -> Any:
    if not isinstance(x, Curved):
        return NotImplemented
    return _pool(x, lambda t: F.adaptive_avg_pool2d(t, output_size), None)


# ----------------------------------------------------------------------------- normalisation


def _batch_norm2(nt: EnclosureNumbers, out: Enclosure, mod: nn.Module, p: dict, x: Any) -> Any:
    """Eval mode with fixed statistics: y″ = r·(γ(α)x″ + 2Δγ·x′), r = (σ² + ε)^(−1/2)."""
    if not isinstance(x, Curved):
        return NotImplemented
    mean, var = p.get("running_mean"), p.get("running_var")
    if isinstance(mean, (Param, Curved)) or isinstance(var, (Param, Curved)):
        return _batch_norm_moving2(nt, mod, p, x, mean, var)
    if not isinstance(mean, Tensor) or not isinstance(var, Tensor):
        return NotImplemented
    nd = x.mid.dim() - 1
    view = E._channel_view(nd)
    m, h = nt.m(nd), nt.h(nd)
    r = view(1.0 / torch.sqrt(var.to(torch.float64) + mod.eps))
    weight = p.get("weight")
    if weight is None:
        mid = r * x.mid
        return mid, _up(r * x.rad + mid.abs() * (8 * U))
    w = weight if isinstance(weight, Param) else Param(weight.to(torch.float64), torch.zeros_like(weight, dtype=torch.float64))
    g0, gd = view(w.w0), view(w.dw)
    gm = g0 + m * gd
    shape = x.first.v.c.shape
    dmid, drad = _mid_rad(*_tm_interval(x.first.d, h, shape))
    mid = r * (gm * x.mid + 2.0 * gd * dmid)
    rad = r * ((gm.abs() + h * gd.abs()) * x.rad + h * gd.abs() * x.mid.abs() + 2.0 * gd.abs() * drad)
    rnd = r * ((g0.abs() + gd.abs() * 2.0) * x.mid.abs() + 2.0 * gd.abs() * dmid.abs()) * (16 * U)
    return mid, _up(rad + rnd)


def _op(nt: EnclosureNumbers, fn: Any, *args: Any) -> Curved:
    """``fn`` applied to Curved numbers through the number type's own rules (first and second order)."""
    got = nt.rule("function", fn)(*args)
    if not isinstance(got, Curved):
        raise NotImplementedError(f"no second-order rule result for {fn}")
    return got


def _curved_channel(nt: EnclosureNumbers, t: Any, view: Callable[[Tensor], Tensor], nd: int) -> Curved:
    """A per-channel parameter or constant (θ″ = 0) as a Curved number shaped against (C, n, F, …)."""
    if isinstance(t, Curved):
        return t
    enc = E._bias_enclosure(nt, t, view, nd)
    z = torch.zeros_like(enc.v.c)
    return Curved(enc, z, z)


def _unbounded(x: Curved) -> Curved:
    inf = torch.full_like(x.mid, _INF)
    return Curved(E._undefined(E._full(x.first)), torch.zeros_like(x.mid), inf)


def _normalise2(nt: EnclosureNumbers, mod: nn.Module, p: dict, centred: Curved, var: Curved, view, nd: int, *, nonnegative: bool) -> Curved:
    """(x − μ)·(var + ε)^(−1/2)·γ + β in Curved numbers, operation by operation as the first-order
    :func:`~.enclosures._normalise` computes it (same first-order values)."""
    eps = float(mod.eps)
    known = eps * (1 - 2 * U) if nonnegative else None
    shifted = Enclosure(E._shift(var.first.v, eps), var.first.d)
    r1 = E._smooth(nt, E._RSQRT, shifted, domain_lo=0.0, known_lo=known)
    if r1 is NotImplemented:
        return _unbounded(centred)
    r2 = _smooth2(nt, E._RSQRT, r1, Curved(shifted, var.mid, var.rad), known_lo=known)
    out = _op(nt, operator.mul, centred, Curved(r1, *r2))
    weight, bias = p.get("weight"), p.get("bias")
    if weight is not None:
        out = _op(nt, operator.mul, out, _curved_channel(nt, weight, view, nd))
    if bias is not None:
        out = _op(nt, operator.add, out, _curved_channel(nt, bias, view, nd))
    return out


def _batch_norm_moving2(nt: EnclosureNumbers, mod: nn.Module, p: dict, x: Curved, mean: Any, var: Any) -> Any:
    """Eval mode with moving statistics: interpolated (Param, affine in α) or re-estimated (Curved,
    from :class:`SecondStatisticsNumbers`)."""
    nd = x.mid.dim() - 1
    view = E._channel_view(nd)
    mu, v = _curved_channel(nt, mean, view, nd), _curved_channel(nt, var, view, nd)
    out = _normalise2(nt, mod, p, _op(nt, operator.sub, x, mu), v, view, nd, nonnegative=isinstance(var, Curved))
    return out.mid, out.rad


def _averaged_curved(x: Curved, cdims: tuple[int, ...]) -> Curved:
    """The mean over ``cdims`` (kept as size-1 axes) in Curved numbers."""
    full = Curved(E._full(x.first), x.mid, x.rad)
    k = int(math.prod(full.mid.shape[d] for d in cdims))
    mid, rad = _averaged(full, lambda t: t.mean(cdims, keepdim=True), k)
    return Curved(E._mean_over(full.first, cdims), mid, rad)


class SecondStatisticsNumbers(SecondNumbers):
    """The re-estimation pass of ``bn=recompute`` (one batch of all the data) in Curved numbers:
    BatchNorm layers named in ``names`` normalise with their batch statistics and record
    (running_mean, running_var) as Curved numbers in ``record`` (as
    :class:`~.enclosures.StatisticsNumbers` does to first order)."""

    name = "rigorous enclosure with second derivative (re-estimation pass)"

    def __init__(self, mid: Tensor, rad: Tensor, names: dict[int, str]):
        super().__init__(mid, rad)
        self.names = names
        self.record: dict[str, tuple[Curved, Curved]] = {}

    def rule(self, kind: str, key: object):
        if kind == "module" and key in (nn.BatchNorm1d, nn.BatchNorm2d):
            return lambda mod, p, x: self._batch_norm(mod, p, x)
        return super().rule(kind, key)

    def _batch_norm(self, mod: nn.Module, p: dict, x: Any) -> Any:
        name = self.names.get(id(mod))
        if name is None or not isinstance(x, Curved):
            return super().rule("module", type(mod))(mod, p, x)
        full = Curved(E._full(x.first), x.mid, x.rad)
        nd = full.mid.dim()
        cdims = (1,) + tuple(range(3, nd))
        count = int(math.prod(full.mid.shape[d] for d in cdims))
        if count < 2:
            return NotImplemented
        mu = _averaged_curved(full, cdims)
        centred = _op(self, operator.sub, full, mu)
        var_b = _averaged_curved(_op(self, operator.mul, centred, centred), cdims)
        factor = count / (count - 1)
        var_u = Curved(Enclosure(E._scale_inexact(var_b.first.v, factor), E._scale_inexact(var_b.first.d, factor)),
                       var_b.mid * factor, _up(var_b.rad * factor + (var_b.mid * factor).abs() * (4 * U)))
        self.record[name] = (mu, var_u)
        E.StatisticsNumbers.stop_if_complete(self)  # nothing after the last BatchNorm layer changes the statistics
        inner = nd - 1
        return _normalise2(self, mod, p, centred, var_b, E._channel_view(inner), inner, nonnegative=True)


# ----------------------------------------------------------------------------- rule tables


def _module_smooth(s: Any) -> Callable[..., Any]:
    return lambda nt, out, m, p, x: _smooth2(nt, s, out, x)


def _fn_smooth(s: Any) -> Callable[..., Any]:
    return lambda nt, out, x: _smooth2(nt, s, out, x)


_MODULE2: dict[type, Callable[..., Any]] = {
    nn.Linear: _linear_module2,
    nn.Conv1d: _conv_module2,
    nn.Conv2d: _conv_module2,
    nn.ReLU: lambda nt, out, m, p, x: _relu2(nt, out, x),
    nn.LeakyReLU: lambda nt, out, m, p, x: _relu2(nt, out, x, float(m.negative_slope)),
    nn.Tanh: _module_smooth(E._TANH),
    nn.Sigmoid: _module_smooth(E._SIGMOID),
    nn.GELU: _module_smooth(E._GELU),  # the first-order rule declines approximate="tanh"
    nn.Softplus: lambda nt, out, m, p, x: _softplus2(nt, out, x, m.beta, m.threshold),
    nn.BatchNorm1d: _batch_norm2,
    nn.BatchNorm2d: _batch_norm2,
    nn.Flatten: _moved_module,
    nn.Unflatten: _moved_module,
    nn.Identity: _moved_module,
    nn.Dropout: _moved_module,
    nn.AvgPool2d: _avg_pool_module2,
    nn.AdaptiveAvgPool2d: _avg_pool_module2,
}

_FUNCTION2: dict[object, Callable[..., Any]] = {
    F.linear: _linear2,
    torch.relu: lambda nt, out, x, inplace=False: _relu2(nt, out, x),
    F.relu: lambda nt, out, x, inplace=False: _relu2(nt, out, x),
    F.leaky_relu: lambda nt, out, x, negative_slope=0.01, inplace=False: _relu2(nt, out, x, float(negative_slope)),
    torch.tanh: _fn_smooth(E._TANH),
    F.tanh: _fn_smooth(E._TANH),
    torch.sigmoid: _fn_smooth(E._SIGMOID),
    F.sigmoid: _fn_smooth(E._SIGMOID),
    F.gelu: lambda nt, out, x, approximate="none": _smooth2(nt, E._GELU, out, x),
    F.softplus: _softplus2,
    operator.add: _add2,
    torch.add: _add2,
    operator.sub: _sub2,
    torch.sub: _sub2,
    operator.mul: _mul2,
    torch.mul: _mul2,
    operator.neg: _neg2,
    operator.truediv: _truediv2,
    torch.flatten: _moved,
    torch.reshape: _moved,
    torch.mean: _mean2,
    F.avg_pool2d: _avg_pool_fn2,
    F.adaptive_avg_pool2d: _adaptive_avg_pool_fn2,
    getattr: lambda nt, out, *a, **k: NotImplemented,  # returns shapes, never an enclosure
    F.dropout: _moved,
}

_METHOD2: dict[str, Callable[..., Any]] = {
    "view": _moved,
    "reshape": _moved,
    "flatten": _moved,
    "size": lambda nt, out, *a, **k: NotImplemented,
    "dim": lambda nt, out, *a, **k: NotImplemented,
    "relu": lambda nt, out, x: _relu2(nt, out, x),
    "tanh": _fn_smooth(E._TANH),
    "sigmoid": _fn_smooth(E._SIGMOID),
    "add": _add2,
    "sub": _sub2,
    "mul": _mul2,
    "neg": _neg2,
    "contiguous": _moved,
    "mean": _mean2,
}


# ----------------------------------------------------------------------------- the loss


def loss_second_terms(z: Curved, y: Tensor, h: Tensor, loss: str) -> tuple[Tensor, Tensor, Tensor]:
    """Per cell: (Σ lower, Σ upper, Σ magnitude) of the per-entry (MSE) or per-example (CE) terms
    of L″ before the loss's 1/N or 1/n scale (MSE: also before its factor 2). The sums are
    computed in floating point; the caller covers their rounding by γ_count·Σ magnitude."""
    cells = z.mid.shape[0]
    nd = z.mid.dim() - 1
    hv = h.reshape(-1, *([1] * nd))
    shape = z.first.v.c.shape
    if loss == "mse":
        if tuple(shape[1:]) != tuple(y.shape):
            raise ValueError(f"model output shape {tuple(shape[1:])} does not match targets {tuple(y.shape)}")
        vlo, vhi = _tm_interval(z.first.v, hv, shape)
        dlo, dhi = _tm_interval(z.first.d, hv, shape)
        rlo, rhi = _outward(vlo - y.unsqueeze(0), vhi - y.unsqueeze(0))
        s_lo, s_hi = _square(dlo, dhi)
        p_lo, p_hi = _imul(rlo, rhi, *_interval(z.mid, z.rad))
        lo, hi = s_lo + p_lo, s_hi + p_hi
    else:
        if z.mid.dim() != 3:
            raise ValueError(f"cross-entropy needs (n, classes) outputs, the model gives {tuple(shape[1:])}")
        _, n, k = shape
        idx = y.reshape(1, n, 1).expand(cells, n, 1)
        onehot = torch.zeros(cells, n, k, dtype=torch.bool, device=z.mid.device).scatter_(-1, idx, True)

        def rel(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
            """The interval of u = z − z_y from intervals of z (entries k ≠ y; 0 at y)."""
            ylo, yhi = lo.gather(-1, idx), hi.gather(-1, idx)
            a, b = _outward(lo - yhi, hi - ylo)
            zero = torch.zeros_like(a)
            return torch.where(onehot, zero, a), torch.where(onehot, zero, b)

        ulo, uhi = rel(*_tm_interval(z.first.v, hv, shape))
        wlo, whi = rel(*_tm_interval(z.first.d, hv, shape))
        s2lo, s2hi = rel(*_interval(z.mid, z.rad))
        p_lo, p_hi = _softmax_box(ulo, uhi, onehot)
        q_hi = p_hi.sum(-1) * (1 + gamma(k + 2)) + E._TINY
        sq_lo, sq_hi = _square(wlo, whi)
        g_k = gamma(k + 4)
        a_hi = (p_hi * sq_hi).sum(-1) * (1 + g_k) + E._TINY  # Σ p_k (u′_k)² ≤ a_hi
        a_lo = (p_lo * sq_lo).sum(-1) * (1 - g_k)
        # the variance two ways: (1 − q)·Σ p_k(u′_k)² ≤ Var (Cauchy–Schwarz, tight when q is small)
        # and Σ p_k(u′_k)² − (Σ p_k u′_k)² in interval arithmetic (tight on narrow cells)
        b_lo, b_hi = _imul(p_lo, p_hi, wlo, whi)
        m_lo = b_lo.sum(-1) - (b_lo.abs() + b_hi.abs()).sum(-1) * g_k
        m_hi = b_hi.sum(-1) + (b_lo.abs() + b_hi.abs()).sum(-1) * g_k
        bb_lo, bb_hi = _square(m_lo, m_hi)
        direct_lo = (a_lo - bb_hi) - (a_lo.abs() + bb_hi) * (2 * U)
        direct_hi = (a_hi - bb_lo) + (a_hi.abs() + bb_lo) * (2 * U)
        var_lo = torch.maximum((a_lo * (1 - q_hi)).clamp(min=0.0) * (1 - 4 * U), direct_lo)
        var_hi = torch.minimum(a_hi, direct_hi)
        r_lo, r_hi = _imul(p_lo, p_hi, s2lo, s2hi)
        res_mag = (r_lo.abs() + r_hi.abs()).sum(-1) * gamma(k + 4)
        lo = var_lo + r_lo.sum(-1) - res_mag
        hi = var_hi + r_hi.sum(-1) + res_mag
    lo, hi = lo.reshape(cells, -1), hi.reshape(cells, -1)
    bad = ~(torch.isfinite(lo) & torch.isfinite(hi))
    lo = torch.where(bad, torch.full_like(lo, -_INF), lo)
    hi = torch.where(bad, torch.full_like(hi, _INF), hi)
    mag = torch.where(bad, torch.zeros_like(lo), lo.abs() + hi.abs())
    return lo.sum(1), hi.sum(1), mag.sum(1)
