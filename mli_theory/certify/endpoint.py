r"""The loss's slope at the end of the path, L′(1), in high-precision ball arithmetic.

The convex-end certificate (:func:`.partition.convex_end`) needs the sign of the single number

    L′(1) = ⟨∇L(θT), θT − θ0⟩ = (1/N) Σ_i ⟨∂ℓ/∂z_i, z′_i(1)⟩,

with z′_i(1) = d/dα f(x_i; θ(α)) at α = 1 (from the left). For a network trained to convergence
this number is tiny: an MSE net that interpolates its data has residuals r_i = z_i − y_i of about
√L(θT) (10⁻¹³ at a loss of 10⁻²⁶), so L′(1) = (2/N)Σ⟨r_i, z′_i⟩ is far below what the float64
enclosures resolve (their radius is the rounding of z itself, about 10⁻¹⁴ to 10⁻¹¹ of its
magnitude). There the certificate could neither prove L′(1) ≤ 0 nor L′(1) > 0.

Here the same network is evaluated once, at α = 1, in arb ball arithmetic (python-flint, the
FLINT/Arb library: every operation returns a ball that contains the exact result) at ``prec``
bits: z(1) and z′(1) by forward-mode differentiation,

* Linear: z = xW(1)ᵀ + b(1), z′ = x′W(1)ᵀ + x(θT − θ0)_Wᵀ + (θT − θ0)_b, with W(1) = θT and
  θT − θ0 formed exactly from the float64 endpoints (a line's Δθ is that real difference; the
  float64 enclosures use fl(Δθ) with its rounding covered);
* ReLU: where the pre-activation v is proven positive (negative) the unit is active (inactive);
  where v is exactly 0 the left derivative is min(v′, 0) (v(1 − s) ≈ −s·v′); where the ball
  contains 0 but is not exact, the value is max(v, 0) and the derivative the hull of 0 and v′,
  which contains every one-sided value;
* tanh, sigmoid and GELU (exact, ``approximate='none'``): their closed forms in arb, and
  f′(v)·v′;
* sums of two values; Identity, and Flatten of an (N, d) value (the identity);
* MSE: L′ = (2/(NK)) Σ (z − y)·z′; cross-entropy: L′ = (1/N) Σ (softmax(z) − e_y)·z′.

Only graphs made of exactly these operations (by the traced module's own type, never a subclass,
with no hooks) are evaluated; anything else returns None and the float64 enclosure stands. The
caller intersects the ball with the float64 enclosure of the same number and uses it only when
they overlap (both are proven; disjoint ones mean the two models of the computation differ).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import Tensor, nn
from torch.fx import GraphModule
from torch.nn import functional as F

from ..exact import check_deadline
from ..geometry.interpreter import _mutations

__all__ = ["MAX_PRODUCT_TERMS", "rise_between", "slope_at_end"]

MAX_PRODUCT_TERMS = 2e9  # multiply-adds of all the Linear layers' products (64-512-512-10 on 1 797 examples: 1.6e9, 8 s)

_RELU = (F.relu, torch.relu)
_TANH = (torch.tanh, F.tanh)
_SIGMOID = (torch.sigmoid, F.sigmoid)


class _Unsupported(Exception):
    """An operation outside the list above: the ball evaluation is not attempted."""


def _balls(t: Tensor) -> Any:
    """An (N, d) float64 tensor as an arb matrix (exact: every double is a dyadic rational)."""
    from flint import arb_mat

    if t.dim() == 1:
        t = t.reshape(1, -1)
    return arb_mat(t.detach().to("cpu", torch.float64).tolist())


def _entries(m: Any) -> list:
    return m.entries()


def _from(entries: list, rows: int, cols: int) -> Any:
    from flint import arb_mat

    return arb_mat(rows, cols, entries)


def _ones_column(rows: int) -> Any:
    from flint import arb_mat

    return arb_mat(rows, 1, [1] * rows)


def _stack_columns(*mats: Any) -> Any:
    """[A | B | …] for arb matrices with the same rows."""
    rows = mats[0].nrows()
    out = []
    lists = [m.tolist() for m in mats]
    for i in range(rows):
        row = []
        for lst in lists:
            row.extend(lst[i])
        out.append(row)
    from flint import arb_mat

    return arb_mat(out)


def _stack_rows(*mats: Any) -> Any:
    from flint import arb_mat

    out = []
    for m in mats:
        out.extend(m.tolist())
    return arb_mat(out)


def _relu(v: Any, d: Any | None) -> tuple[Any, Any | None]:
    from flint import arb

    zero = arb(0)
    ve = _entries(v)
    de = _entries(d) if d is not None else None
    vo, do = [], []
    for i, x in enumerate(ve):
        dx = de[i] if de is not None else zero
        if x > 0:
            vo.append(x)
            do.append(dx)
        elif x < 0:
            vo.append(zero)
            do.append(zero)
        elif x.is_exact() and x.is_zero():
            vo.append(zero)
            do.append(dx.min(zero))
        else:
            vo.append(x.max(zero))
            do.append(dx.union(zero))
    rows, cols = v.nrows(), v.ncols()
    return _from(vo, rows, cols), (_from(do, rows, cols) if de is not None else None)


def _smooth(kind: str, v: Any, d: Any | None) -> tuple[Any, Any | None]:
    from flint import arb

    ve = _entries(v)
    de = _entries(d) if d is not None else None
    vo, do = [], []
    if kind == "gelu":
        root2 = arb(2).sqrt()
        inv_root2pi = 1 / (2 * arb.pi()).sqrt()
    for i, x in enumerate(ve):
        if kind == "tanh":  # tanh′ = sech² directly: 1 − tanh² loses everything where tanh saturates
            f = x.tanh()
            fp = x.sech() ** 2
        elif kind == "sigmoid":  # σ′ = σ(x)·σ(−x), each side without cancellation
            f = 1 / (1 + (-x).exp())
            fp = f / (1 + x.exp())
        else:  # gelu: x·Φ(x), Φ′ = φ
            phi_cdf = (1 + (x / root2).erf()) / 2
            f = x * phi_cdf
            fp = phi_cdf + x * (-(x * x) / 2).exp() * inv_root2pi
        vo.append(f)
        if de is not None:
            do.append(fp * de[i])
    rows, cols = v.nrows(), v.ncols()
    return _from(vo, rows, cols), (_from(do, rows, cols) if de is not None else None)


def _add(a: tuple[Any, Any | None], b: tuple[Any, Any | None]) -> tuple[Any, Any | None]:
    (va, da), (vb, db) = a, b
    if va.nrows() != vb.nrows() or va.ncols() != vb.ncols():
        raise _Unsupported("a sum of differently shaped values")
    d = da if db is None else (db if da is None else da + db)
    return va + vb, d


def _at(t: tuple[Tensor, Tensor | None], alpha: Any, transpose: bool = False) -> tuple[Any, Any | None]:
    """(θ(α), θT − θ0) of one entry as balls, from its (θT, θ0) (θ0 None: held at θT, no motion);
    θ(α) = θ0 + α(θT − θ0), and θT itself at α = 1 (the difference is exact unless the two differ
    by hundreds of binades; otherwise its ball is what arb rounds it to)."""
    e, s = t
    if e.dim() == 1:
        e, s = e.reshape(1, -1), (None if s is None else s.reshape(1, -1))
    elif transpose:
        e, s = e.t(), (None if s is None else s.t())
    end = _balls(e)
    if s is None:
        return end, None
    begin = _balls(s)
    diff = end - begin
    return (end if alpha is None else begin + diff * alpha), diff


def _linear(x: tuple[Any, Any | None], w: tuple[Tensor, Tensor | None], b: tuple[Tensor, Tensor | None] | None, alpha: Any,
            derivative: bool) -> tuple[Any, Any | None]:
    """xW(α)ᵀ + b(α) and (with ``derivative``) its α-derivative x′W(α)ᵀ + x·ΔWᵀ + Δb, each as one
    product of stacked operands (``alpha`` None: α = 1, where W(1) = θT)."""
    v, d = x
    rows = v.nrows()
    if v.ncols() != w[0].shape[1]:
        raise _Unsupported("a Linear layer whose input width differs")
    ones = _ones_column(rows)
    wt, dwt = _at(w, alpha, transpose=True)
    bt, dbt = _at(b, alpha) if b is not None else (None, None)
    value = _stack_columns(v, ones) * _stack_rows(wt, bt) if bt is not None else v * wt
    if not derivative:
        return value, None
    left, right = ([], []) if d is None else ([d], [wt])
    if dwt is not None:
        left.append(v)
        right.append(dwt)
    if dbt is not None:
        left.append(ones)
        right.append(dbt)
    if not left:
        return value, None
    return value, _stack_columns(*left) * _stack_rows(*right)


def _down(b: Any) -> float:
    """The largest double ≤ the exact arb ``b``."""
    from flint import arb

    f = float(b)
    return f if arb(f) <= b else math.nextafter(f, -math.inf)


def _up(b: Any) -> float:
    """The smallest double ≥ the exact arb ``b``."""
    from flint import arb

    f = float(b)
    return f if arb(f) >= b else math.nextafter(f, math.inf)


def slope_at_end(gm: GraphModule, start: dict[str, Tensor], end: dict[str, Tensor], moving: set[str], x: Tensor, y: Tensor,
                 loss: str, *, prec: int = 256, deadline: float | None = None,
                 max_terms: float = MAX_PRODUCT_TERMS) -> tuple[float, float] | None:
    """Proven bounds (lo, hi) of L′(1) (from the left) for the traced model ``gm`` on the path from
    ``start`` to ``end`` (entries named in ``moving`` move, the others are held at ``end``), on the
    examples ``x`` (N, d) with targets ``y``, for ``loss`` "mse" or "ce"; None when the graph holds an
    operation outside this module's list, the data are not a matrix, or the work would exceed
    ``max_terms`` (default :data:`MAX_PRODUCT_TERMS`). Raises :class:`~mli_theory.exact.BudgetExceeded`
    past ``deadline``.

    >>> import torch
    >>> from torch import nn
    >>> from mli_theory.geometry.interpreter import trace
    >>> net = nn.Sequential(nn.Linear(1, 1))
    >>> s = {"0.weight": torch.tensor([[0.0]]), "0.bias": torch.tensor([0.0])}
    >>> e = {"0.weight": torch.tensor([[2.0]]), "0.bias": torch.tensor([0.0])}
    >>> x, y = torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)
    >>> slope_at_end(trace(net), s, e, {"0.weight", "0.bias"}, x, y, "mse")  # L = (2α − 2)², L′(1) = 0
    (0.0, 0.0)
    """
    got = _balled(lambda: _loss(gm, start, end, moving, x, y, loss, None, True, deadline, max_terms)[1], x, prec)
    return None if got is None else (_down(got.lower()), _up(got.upper()))


def rise_between(gm: GraphModule, start: dict[str, Tensor], end: dict[str, Tensor], moving: set[str], x: Tensor, y: Tensor,
                 loss: str, a: float, b: float, *, prec: int = 256, deadline: float | None = None,
                 max_terms: float = MAX_PRODUCT_TERMS) -> tuple[float, float] | None:
    """Proven bounds (lo, hi) of L(b) − L(a), each loss evaluated in ball arithmetic at the exact
    α (a double); None as for :func:`slope_at_end` (with ``max_terms`` multiply-adds per loss). A witness whose rise is below what float64
    resolves of the losses (a net trained to a loss of 10⁻²⁶ rises by 10⁻³⁰ just before α = 1) is
    checked here, independently of the enclosures that found it.

    >>> import torch
    >>> from mli_theory.geometry.interpreter import trace
    >>> net = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False))  # w(α) = 2α on x = 1, y = 1
    >>> ends = [{"0.weight": torch.tensor([[w]])} for w in (0.0, 2.0)]
    >>> one = torch.ones(1, 1, dtype=torch.float64)
    >>> rise_between(trace(net), *ends, {"0.weight"}, one, one, "mse", 0.5, 1.0)  # L = (2α − 1)²: 0 → 1
    (1.0, 1.0)
    """
    def diff():
        from flint import arb

        lb = _loss(gm, start, end, moving, x, y, loss, None if b == 1.0 else arb(b), False, deadline, max_terms)[0]
        la = _loss(gm, start, end, moving, x, y, loss, None if a == 1.0 else arb(a), False, deadline, max_terms)[0]
        return lb - la

    got = _balled(diff, x, prec)
    return None if got is None else (_down(got.lower()), _up(got.upper()))


def _balled(fn: Any, x: Tensor, prec: int) -> Any:
    """``fn()`` at ``prec`` bits (restored afterwards), or None where it is not supported."""
    try:
        from flint import ctx
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    if x.dim() != 2:
        return None
    saved = ctx.prec
    ctx.prec = prec
    try:
        got = fn()
    except _Unsupported:
        return None
    finally:
        ctx.prec = saved
    return got if got.is_finite() else None


def _loss(gm: GraphModule, start: dict[str, Tensor], end: dict[str, Tensor], moving: set[str], x: Tensor, y: Tensor,
          loss: str, alpha: Any, derivative: bool, deadline: float | None, max_terms: float = MAX_PRODUCT_TERMS) -> tuple[Any, Any]:
    """(L(α), L′(α) or None) as balls; ``alpha`` None is α = 1 (θT exactly)."""
    from flint import arb

    z, dz = _walk(gm, start, end, moving, x, alpha, derivative, deadline, max_terms)
    rows, cols = z.nrows(), z.ncols()
    ze = _entries(z)
    de = _entries(dz) if dz is not None else None
    value, slope = arb(0), arb(0)
    if loss == "mse":
        if y.dim() == 1:
            y = y.reshape(-1, 1)
        if tuple(y.shape) != (rows, cols):
            raise _Unsupported("targets of another shape than the outputs")
        ye = _entries(_balls(y))
        for i in range(rows * cols):
            r = ze[i] - ye[i]
            value += r * r
            if de is not None:
                slope += r * de[i]
        return value / (rows * cols), 2 * slope / (rows * cols)
    if loss != "ce":
        raise _Unsupported(f"loss {loss!r}")
    labels = y.reshape(-1).tolist()
    if len(labels) != rows:
        raise _Unsupported("labels of another length than the outputs")
    for i in range(rows):
        row = ze[i * cols : (i + 1) * cols]
        k = int(labels[i])
        if not 0 <= k < cols:
            raise _Unsupported("a label outside the outputs")
        top = max(row, key=lambda v: float(v.mid()))
        ex = [(v - top).exp() for v in row]
        norm = sum(ex[1:], ex[0])
        value += top + norm.log() - row[k]
        if de is not None:
            for j in range(cols):
                slope += (ex[j] / norm - (1 if j == k else 0)) * de[i * cols + j]
    return value / rows, slope / rows


def _rule(gm: GraphModule, node: torch.fx.Node) -> str:
    """The ball rule of one operation node ("linear", "relu", "tanh", "sigmoid", "gelu", "same",
    "add"), from the traced module's own type or the function itself; raises :class:`_Unsupported`
    for anything else (so a graph is declined before any ball is formed)."""
    if node.kwargs and dict(node.kwargs) != {"inplace": False}:  # F.relu(x) traces with inplace=False
        raise _Unsupported(f"keyword arguments of {node.target}")
    op = node.op
    if op == "call_module":
        m = gm.get_submodule(node.target)
        if m._forward_hooks or m._forward_pre_hooks or getattr(m, "_backward_hooks", None):
            raise _Unsupported("a module with hooks")
        if len(node.args) != 1:
            raise _Unsupported(f"{node.target} called with other arguments")
        kind = type(m)
        if kind is nn.Linear:
            return "linear"
        if kind is nn.GELU and m.approximate == "none":
            return "gelu"
        if kind is nn.Identity or (kind is nn.Flatten and m.start_dim == 1 and m.end_dim == -1):
            return "same"
        named = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}.get(kind)
        if named is None:
            raise _Unsupported(f"no ball rule for {kind.__name__}")
        return named
    if op == "call_function":
        fn = node.target
        if len(node.args) == 1:
            for fns, name in ((_RELU, "relu"), (_TANH, "tanh"), (_SIGMOID, "sigmoid")):
                if fn in fns:
                    return name
        if fn in (operator.add, torch.add) and len(node.args) == 2 and all(isinstance(a, torch.fx.Node) for a in node.args):
            return "add"
        raise _Unsupported(f"no ball rule for {getattr(fn, '__name__', fn)}")
    if op == "call_method" and node.target in ("relu", "tanh", "sigmoid") and len(node.args) == 1:
        return node.target
    raise _Unsupported(f"no ball rule for {op} {node.target}")


def _walk(gm: GraphModule, start: dict[str, Tensor], end: dict[str, Tensor], moving: set[str], x: Tensor, alpha: Any,
          derivative: bool, deadline: float | None, max_terms: float = MAX_PRODUCT_TERMS) -> tuple[Any, Any]:
    """The network's outputs z(α) and (with ``derivative``) z′(α) on ``x``, as ball matrices."""
    n = x.shape[0]
    # every rule and the work first, before any ball is formed
    rules: dict[torch.fx.Node, str] = {}
    terms = 0.0
    placeholders = 0
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            placeholders += 1
        elif node.op != "output":
            rules[node] = _rule(gm, node)
            if rules[node] == "linear":
                m = gm.get_submodule(node.target)
                terms += 3.0 * n * m.in_features * m.out_features
    if placeholders != 1:
        raise _Unsupported("not one input")
    if terms > max_terms:
        raise _Unsupported("too large for the ball evaluation")

    def entry(key: str) -> tuple[Tensor, Tensor | None]:
        """(θT, θ0) of an entry, θ0 None where it is held at θT."""
        if key not in end or (key in moving and key not in start):
            raise _Unsupported(f"{key} is not an entry of the path")
        e = end[key].to(torch.float64)
        return (e, start[key].to(torch.float64)) if key in moving else (e, None)

    env: dict[Any, Any] = {}
    out = None
    mutations = _mutations(gm)  # an in-place operation (ReLU(inplace=True)) rebinds what it modified
    for node in gm.graph.nodes:
        check_deadline(deadline)
        if node.op == "placeholder":
            env[node] = (_balls(x), None)
            continue
        if node.op == "output":
            out = node.args[0]
            break
        args = [env[a] if isinstance(a, torch.fx.Node) else a for a in node.args]
        if not all(isinstance(a, tuple) for a in args):
            raise _Unsupported(f"{node.target} reads something other than values")
        rule = rules[node]
        if rule == "linear":
            m = gm.get_submodule(node.target)
            bias = entry(f"{node.target}.bias") if m.bias is not None else None
            env[node] = _linear(args[0], entry(f"{node.target}.weight"), bias, alpha, derivative)
        elif rule == "relu":
            env[node] = _relu(*args[0])
        elif rule in ("tanh", "sigmoid", "gelu"):
            env[node] = _smooth(rule, *args[0])
        elif rule == "same":
            env[node] = args[0]
        else:  # add
            env[node] = _add(args[0], args[1])
        if node in mutations:
            env[mutations[node]] = env[node]
    if not isinstance(out, torch.fx.Node) or not isinstance(env.get(out), tuple):
        raise _Unsupported("the output is not one value")
    return env[out]
