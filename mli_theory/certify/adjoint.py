r"""The kinks' share of L′, bounded backward through the traced graph (an adjoint Clarke bound).

Why. A ReLU neuron whose sign is not proven on a cell (a *mixed* neuron) has derivative
relu′(v)·v′ with relu′ ∈ [0, 1] unknown. Carrying the Clarke set [0, 1]·v′ forward as a remainder
(the plain rule of :mod:`.enclosures`) is sound but loose in deep nets: the remainder of one
neuron is pushed through every later layer with |W| or a spectral norm, although the loss only sees
it through one row of the network's Jacobian. On a 64-512×5-10 MLP near α = 0 that overestimates
the kinks' share of L′ by a factor of about 100.

The identity. Write the derivative walk of a network as a chain v′_l = W_l a′_{l−1} + (ΔW_l a_{l−1}
+ Δb_l), a′_l = D_l v′_l with D_l the true slopes (diagonal; values a_l are the true ones). Let D̃_l
equal D_l on neurons whose sign is proven and the midpoint (1 + s)/2 of the Clarke set [s, 1] on
mixed ones (s the LeakyReLU slope, 0 for ReLU), and let ṽ′, ã′, z̃′ be the walk with D̃ in place of
D. Then e_l = a′_l − ã′_l satisfies e_l = D_l W_l e_{l−1} + (D_l − D̃_l)ṽ′_l, so by induction, for
the loss ℓ(z) of one example,

    ⟨∇_z ℓ, z′ − z̃′⟩ = Σ_l ⟨g_l, (D_l − D̃_l) ṽ′_l⟩,     g_l = ∂ℓ/∂a_l (the true backprop gradient),

and |(D − D̃)ṽ′| ≤ (1 − s)/2·|ṽ′| on mixed neurons, 0 elsewhere. The same holds for any graph of
linear maps, sums and these activations (sums of paths instead of a chain). Hence

    L′ ∈ L̃′ ± Σ_examples Σ_mixed |g| · (1 − s)/2·|ṽ′|                                  (∗)

for almost every α in the cell (where every kink's slope is a true derivative; L is absolutely
continuous, so rises are integrals of L′ over such α). :mod:`.enclosures` computes L̃′ with
remainders that no longer contain the Clarke terms (``EnclosureNumbers.deferred``: the ReLU rule
uses D̃ and records a :class:`~.enclosures.Kink` with w ≥ (1 − s)/2·|ṽ′|); this module encloses
g by a reverse walk of the same traced graph with first-order Taylor models c + s·t ± r per entry
(:class:`_Cot`): at the output g = ∇_z ℓ (cross-entropy: p − e_y, from the value model of the
logits by the mean value theorem; MSE: z − y), through a Linear layer g·W(α) with the t² term
bounded as in the forward rule and |W(α)| ≤ |W(m)| + h|ΔW| for the radius, through a ReLU D·g
with D = D̃ ± (1 − s)/2 on mixed neurons; and adds Σ sup|g|·w to the radius of L′. Every rounding is covered as in
:mod:`.enclosures` (γ bounds of dot products, 4u per elementwise operation, a final 2⁻⁴⁸
inflation).

The layers' input remainders. The derivative of a Linear layer, v′ = W(α)a′ + ΔW·a + Δb, needs the
value a of its input, known as a Taylor model â = ĉ + ĝt with a = â + δ, |δ| ≤ e. Pushed forward
as |ΔW|e and then through every later layer with |W|, that remainder was the second-largest part
of L′'s width on deep MLPs. With the reverse walk on, the forward walk carries ΔW·â alone and
records a :class:`~.enclosures.Source`; the same induction as above then gives

    ⟨∇_z ℓ, z′ − ẑ′⟩ = Σ_l ⟨g_l, (D_l − D̃_l) v̂′_l⟩ + Σ_l ⟨h_l, ΔW_l δ_{l−1}⟩,              (∗∗)

h_l = ∂ℓ/∂v_l the true gradient at the layer's output (the cotangent the reverse walk encloses at
that node), so ⟨|ΔW_l|ᵀ sup|h_l|, e_{l−1}⟩ joins the radius (Conv2d: |ΔW|ᵀ is the transposed
convolution with |ΔW|).

The cotangent's radius in Euclidean norm. The radius r of a cotangent grows at every mixed neuron
by (1 − s)/2·sup|g| and is pushed back through |W(α)|ᵀ, which compounds in wide layers the way the
forward remainders did. Through Linear layers and ReLUs the walk also carries n ≥ ‖δ‖₂ over the
last axis: ‖δW(α)‖₂ ≤ ‖W(α)‖₂‖δ‖₂, each entry at most ‖W(α)_{:,k}‖₂‖δ‖₂ (column norms, convex in
α like the forward rule's row norms), and r ← min(r, that).

The identity needs nothing of the maps between the activations but that the derivative walk be
linear in the incoming derivative with coefficients that do not depend on D: it holds as it stands
for convolutions (v′ = W(α) ∗ a′ + ΔW ∗ a + Δb, the cotangent passing back through the transposed
convolution with W(α)) and for averages (pooling, means over an example's own axes: fixed
non-negative weights, the cotangent passing back through the transposed average).

Supported operations in the reverse walk: Linear (module or ``F.linear``), Conv2d modules (zero
padding, one group), average pooling (``AvgPool2d``/``AdaptiveAvgPool2d`` modules and their
functions, ``mean`` over non-example axes), BatchNorm1d/2d modules in eval mode under every
statistics policy (the cotangent times the per-channel scale ρ(α) = γ(α)·(σ²(α) + ε)^(−1/2):
:func:`_scale_back`; under ``bn=recompute`` the statistics enter this walk as enclosed inputs, and
the re-estimation pass itself keeps the forward Clarke rule unless it is walked backward too,
:func:`statistics_bound`), ReLU and LeakyReLU (module, function or method),
flatten/unflatten/view/reshape, identity and dropout in eval mode, sums and differences of
activations (residual connections), negation, and clamps (ReLU6, Hardtanh, ``clamp``/``clip``
with number bounds: slope 1 between the bounds and 0 outside, so their kinks are recorded and sent
back as a ReLU's, :func:`~.enclosures._clamp_deferred`), max pooling (the cotangent to the entries
that can be a window's maximum on the cell, :func:`_max_pool_back`), and products and quotients by
numbers. A graph with anything else keeps the
plain forward Clarke rule (:func:`unsupported` says why), so the adjoint bound is an optimisation,
never a change of what is certified.

The reverse walk visits only the nodes some kink precedes (:func:`_downstream_of_kinks`): the
cotangent of any other node enters no term of (∗) (the first Linear layer of an MLP and the layers
before its first ReLU are skipped), so the bound is bit for bit that of the full reverse walk.

The kinks' share piece by piece. (∗) holds at every α of the cell with that α's true slopes, and
a mixed neuron's slope is unknown only where its pre-activation's Taylor model does not prove its
sign: inside a window [t_l, t_r] of the cell, outside which D − D̃ = ±(1 − s)/2 is known. So the
walk also records, per mixed neuron, the window and its term g·ṽ′ as an affine function of t
plus a radius (:func:`_kink_pairs`), and :func:`kink_pieces` sorts the window ends and sums the
terms between them: on each piece an affine bound in which the terms of neurons crossing
elsewhere in the cell keep their signs (the Clarke radius charges every one of them
(1 − s)/2·sup|g|·sup|ṽ′| at every t). The partition intersects the two enclosures
(:func:`~.partition.enclose_cells`; proof step O6).
"""

from __future__ import annotations

import math
import operator
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Node
from torch.nn import functional as F

from .enclosures import (_TINY, _UNDER, U, TM, Enclosure, EnclosureNumbers, Kink, Param, PoolKink, Source, _add_tm, _along_cells, _is_zero, _l2,
                         _matrix_norms, _product, _reduced, _scale_inexact, _string_padding, _up, abs_per_cell, batch_norm_factors,
                         batch_norm_scale, broadcast_shape, conv2d_dots, gamma, memo_up32, upper_conv2d_dots, upper_matmul, use_float32,
                         _MIN32, _U32)

_RELU_MODULES = (nn.ReLU, nn.LeakyReLU)
_RELU_FUNCTIONS = {F.relu, torch.relu, F.leaky_relu}
# clamps: slope 1 between the bounds, 0 outside, recorded as a ReLU's kinks (enclosures._clamp_deferred)
_CLAMP_MODULES = (nn.ReLU6, nn.Hardtanh)
_CLAMP_FUNCTIONS = {F.relu6, F.hardtanh, torch.clamp, torch.clip}
_CLAMP_METHODS = {"clamp", "clip", "clamp_", "clip_"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.unflatten, torch.reshape}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "contiguous"}
_SUM_FUNCTIONS = {operator.add, operator.sub, torch.add, torch.sub, operator.neg, torch.neg}
_POOL_MODULES = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_POOL_FUNCTIONS = {F.avg_pool2d, F.adaptive_avg_pool2d}
_NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)


class Tape:
    """What the forward walk records for the reverse walk: for every node whose value is an
    :class:`Enclosure`, its shape (with the cell axis); for ReLU nodes their :class:`Kink`; for
    Linear and Conv2d nodes their weight (a :class:`Param` or a tensor) and, where they deferred
    their input's value remainder, its :class:`Source`; for every module node the parameters the
    rule read (BatchNorm's statistics among them). Pass :meth:`record` as ``on_node``."""

    def __init__(self, numbers: EnclosureNumbers, keep_inputs: frozenset[str] = frozenset()) -> None:
        self.numbers = numbers
        self.shapes: dict[Node, torch.Size] = {}
        self.kinks: dict[Node, Kink] = {}
        self.sources: dict[Node, Source] = {}
        self.weights: dict[Node, Any] = {}
        self.params: dict[Node, dict] = {}
        # the input's value Taylor model of the modules named here (re-estimated BatchNorm layers,
        # whose statistics' cotangents the walk forms: see kink_bound's ``seeds``)
        self.keep_inputs = keep_inputs
        self.inputs: dict[Node, TM] = {}

    def record(self, node: Node, out: Any, args: tuple, kwargs: dict) -> None:
        deferred = self.numbers.deferred
        found: list = []
        if deferred:
            found = list(deferred)
            deferred.clear()
            if len(found) != 1:  # one rule per node records at most one deferred term
                raise RuntimeError(f"{len(found)} deferred terms recorded at {node.name}")
            if isinstance(found[0], Source):
                self.sources[node] = found[0]
                found = []
        if found:
            kink = found[0]
            cells = self.numbers.mid.shape[0]
            if kink.pos.shape[0] != cells and isinstance(kink, PoolKink):
                raise RuntimeError(f"max pooling shared by every cell at {node.name}")
            if kink.pos.shape[0] != cells:  # an activation shared by every cell: one record per cell
                pos = kink.pos.expand(cells, *kink.pos.shape[1:])
                neg = kink.neg.expand(cells, *kink.neg.shape[1:])
                idx = (~(pos | neg)).nonzero(as_tuple=True)
                w = kink.w.repeat(cells) if kink.w.numel() else kink.w
                kink = Kink(pos, neg, idx, w, kink.slope)
            self.kinks[node] = kink
        if not isinstance(out, Enclosure):
            return
        self.shapes[node] = out.v.c.shape
        if node.op == "call_module" and type(args[0]) is dict:
            self.params[node] = args[0]
            if node.target in self.keep_inputs and len(args) > 1 and isinstance(args[1], Enclosure):
                self.inputs[node] = args[1].v
            if "weight" in args[0]:
                self.weights[node] = args[0]["weight"]
        elif node.op == "call_function" and node.target is F.linear:
            self.weights[node] = args[1] if len(args) > 1 else kwargs.get("weight")


def unsupported(gm: GraphModule, number_nodes: set[Node]) -> str | None:
    """Why the reverse walk cannot run on this graph (None when it can). ``number_nodes``: the nodes
    whose value is an enclosure in a forward walk (the others are constants or shapes)."""
    from ..geometry.interpreter import node_label

    for node in gm.graph.nodes:
        if node not in number_nodes or node.op in ("placeholder", "get_attr", "output"):
            continue
        if _kind(gm, node) is None:
            return f"no reverse rule for {node_label(gm, node)}"
    return None


def _kind(gm: GraphModule, node: Node) -> str | None:
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        t = type(m)
        if t is nn.Linear:
            return "linear"
        if t in _RELU_MODULES or t in _CLAMP_MODULES:
            return "relu"
        if t is nn.MaxPool2d:
            return "maxpool"
        if t in (nn.Flatten, nn.Unflatten):
            return "reshape"
        if t is nn.Identity or (t is nn.Dropout and not m.training):
            return "pass"
        if t is nn.Conv2d and _conv_geometry(m) is not None:
            return "conv"
        if t in _POOL_MODULES and getattr(m, "divisor_override", None) is None:
            return "average"
        if t in _NORM_MODULES and not m.training and m.running_mean is not None and m.running_var is not None:
            return "scale"  # without running statistics it normalises with the batch's, even in eval mode
        return None
    if node.op == "call_function":
        if node.target is F.linear:
            return "linear"
        if node.target in _POOL_FUNCTIONS or node.target is torch.mean:
            return "average" if _average_op(gm, node) is not None else None
        if node.target in _RELU_FUNCTIONS or node.target in _CLAMP_FUNCTIONS:
            return "relu"
        if node.target is F.max_pool2d:
            return "maxpool"
        if node.target in _RESHAPE_FUNCTIONS:
            return "reshape"
        if node.target is F.dropout and node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True) is False:
            return "pass"
        if node.target in _SUM_FUNCTIONS and "alpha" not in node.kwargs:
            return "sum"
        if _scalar_operand(node) is not None:
            return "times"
        return None
    if node.op == "call_method":
        if node.target in ("relu", "relu_") or node.target in _CLAMP_METHODS:
            return "relu"
        if node.target in _RESHAPE_METHODS:
            return "reshape"
        if node.target in ("add", "sub", "add_", "sub_", "neg", "neg_") and "alpha" not in node.kwargs:
            return "sum"
        if node.target == "mean":
            return "average" if _average_op(gm, node) is not None else None
        if _scalar_operand(node) is not None:
            return "times"
        return None
    return None


_TIMES_FUNCTIONS = {operator.mul: False, torch.mul: False, operator.truediv: True, torch.div: True}
_TIMES_METHODS = {"mul": False, "mul_": False, "div": True, "div_": True}


def _scalar_operand(node: Node) -> tuple[int, float, bool] | None:
    """For a product of an activation with a plain number, or its quotient by one: (the position
    of the activation among the node's arguments, the number, whether it divides); else None. The
    cotangent passes back multiplied (divided) by the number: the map is linear in the activation."""
    if node.kwargs or len(node.args) != 2:
        return None
    if node.op == "call_function" and node.target in _TIMES_FUNCTIONS:
        divide = _TIMES_FUNCTIONS[node.target]
    elif node.op == "call_method" and node.target in _TIMES_METHODS:
        divide = _TIMES_METHODS[node.target]
    else:
        return None
    a, b = node.args

    def plain(v: Any) -> bool:  # Python's own numbers only (the forward rules decline the others)
        return type(v) in (int, float) and math.isfinite(v)

    if isinstance(a, Node) and plain(b) and (b != 0 or not divide):
        return 0, float(b), divide
    if isinstance(b, Node) and plain(a) and not divide:
        return 1, float(a), False
    return None


def _conv_geometry(mod: nn.Module) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None:
    """(stride, padding, dilation) of a Conv2d whose transposed map :func:`_conv_back` computes
    (zero padding, symmetric, one group); None otherwise (the graph keeps the forward rule)."""
    if mod.padding_mode != "zeros" or mod.groups != 1:
        return None
    padding = mod.padding
    if isinstance(padding, str):
        got = _string_padding(2, padding, tuple(mod.kernel_size), tuple(mod.dilation), tuple(mod.stride))
        if got is None or got[1] is not None:
            return None
        padding = got[0]
    return tuple(mod.stride), tuple(padding), tuple(mod.dilation)


def _average_op(gm: GraphModule, node: Node) -> Any:
    """The average of ``node`` as a function of its activation alone (the other arguments are
    constants of the graph), or None: a pooling module or function, or ``mean`` over axes that
    exclude the example axis 0 (as the forward rule requires)."""
    if node.op == "call_module":  # the module's own settings, as the forward rule reads them (no hooks)
        mod = gm.get_submodule(node.target)
        if type(mod) is nn.AvgPool2d:
            return lambda t: F.avg_pool2d(t, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad)
        return lambda t: F.adaptive_avg_pool2d(t, mod.output_size)
    rest, kwargs = node.args[1:], dict(node.kwargs)
    if any(isinstance(a, Node) for a in (*rest, *kwargs.values())):
        return None
    fn = node.target
    if fn in _POOL_FUNCTIONS:
        if kwargs.get("divisor_override") is not None or (fn is F.avg_pool2d and len(rest) >= 6 and rest[5] is not None):
            return None
        return lambda t: fn(t, *rest, **kwargs)
    dim = rest[0] if rest else kwargs.get("dim")
    keepdim = rest[1] if len(rest) > 1 else kwargs.get("keepdim", False)
    if dim is None or kwargs.get("dtype") is not None or len(rest) > 2:
        return None
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if not dims or any(d == 0 for d in dims):  # negative axes are checked against the shape in the walk
        return None
    return lambda t: t.mean(dims, keepdim=bool(keepdim))


class _Cot:
    """A cotangent as a first-order Taylor model on the cells: g(m + t) ∈ c + s·t + δ with |δ| ≤ r
    entrywise for |t| ≤ h (r ≥ 0 proven) and, when ``n`` is not None, ‖δ‖₂ ≤ n over the last axis
    (shape (…, 1)). The slope carries the cotangent's own change along the cell through the linear
    maps exactly, instead of as a radius that |W| would amplify; the norm carries the radius through
    wide Linear layers by ‖W(α)‖₂ instead of entrywise |W(α)|ᵀ, which compounds (as the forward rule
    does with :func:`~.enclosures._with_norm`)."""

    __slots__ = ("c", "s", "r", "n")

    def __init__(self, c: Tensor, s: Tensor, r: Tensor, n: Tensor | None = None) -> None:
        self.c, self.s, self.r, self.n = c, s, r, n

    def norm(self) -> Tensor:
        """A bound of ‖δ‖₂ over the last axis: the tracked one, else from r."""
        return self.n if self.n is not None else _l2(self.r, self.c.shape[-1])

    def plus(self, other: "_Cot") -> "_Cot":
        c, s = self.c + other.c, self.s + other.s
        rnd = (c.abs() + s.abs()) * (2 * U)
        r = _up(self.r + other.r + rnd)
        n = None
        if self.n is not None or other.n is not None:  # ‖δ1 + δ2 + ρ‖ ≤ ‖δ1‖ + ‖δ2‖ + ‖ρ‖
            n = torch.minimum(_up(self.norm() + other.norm() + _l2(rnd, c.shape[-1])), _l2(r, c.shape[-1]))
        return _Cot(c, s, r, n)

    def neg(self) -> "_Cot":
        return _Cot(-self.c, -self.s, self.r, self.n)

    def reshape(self, shape: tuple[int, ...]) -> "_Cot":
        full = broadcast_shape(self.c.shape, self.s.shape, self.r.shape)
        n = self.n if self.n is not None and shape[-1] == full[-1] and tuple(shape[:-1]) == tuple(full[:-1]) else None
        return _Cot(self.c.expand(full).reshape(shape), self.s.expand(full).reshape(shape), self.r.expand(full).reshape(shape), n)

    def magnitude(self, h: Tensor) -> Tensor:
        """An upper bound of |g| on the cell (before the rounding of this sum, and what |s|·h loses to
        underflow, < 2⁻¹⁰²², which callers add where they multiply the bound by something large)."""
        return self.c.abs() + self.s.abs() * h + self.r


def kink_bound(gm: GraphModule, tape: Tape, reads: dict[Node, tuple[tuple, dict]], output: Node, cot: tuple[Tensor, Tensor, Tensor],
               keep: dict[Node, tuple[Tensor, Tensor, Tensor]] | None = None, keep_norms: dict[Node, Tensor] | None = None, *,
               seeds: dict[str, tuple] | None = None, parts: dict[str, Any] | None = None) -> Tensor:
    """Σ over examples and mixed neurons of sup|g|·w, plus over the layers' sources (:class:`Source`)
    of ⟨|ΔW|ᵀ sup|g|, e⟩, per cell ((C,) tensor, rounded up): the radius to add to L′ (in the units of
    the summed per-example terms; see (∗) and (∗∗) in the docstring).

    ``cot``: (centre, slope, radius) of ∇_z ℓ per example at the model output ``output``, a Taylor
    model on the cells like :class:`_Cot`. ``keep``, if given, receives the (centre, slope, radius)
    of the cotangent of every node the walk visits (for tests: each must contain the true gradient
    of the summed loss with respect to that node's output at every α of the cell); ``keep_norms``,
    the bound of the remainder's Euclidean norm over the last axis where the walk tracks one.

    ``seeds``: a dict that receives, for every BatchNorm layer whose input the tape kept
    (``Tape.keep_inputs``: the layers re-estimated under ``bn=recompute``), the per-channel sums
    (Σ g, Σ g·(x − μ)) over the chunk's examples and positions (Taylor models on the cells, added
    to what the dict holds, so that chunks accumulate), g the cotangent at the layer's output:
    :func:`statistic_seeds` turns them into ∂L/∂μ and ∂L/∂σ² for :func:`statistics_bound`.

    ``parts``, if given, receives the sources' share alone, ``"sources"`` ((C,), rounded up), and
    ``"pairs"``: per ReLU node, what :func:`kink_pieces` needs of its mixed neurons to bound the
    kinks' share piece by piece along the cell instead (None where a kink has no window record)."""
    return _walk(gm, tape, reads, {output: _Cot(*cot)}, keep, keep_norms, seeds=seeds, parts=parts)


def statistics_bound(gm: GraphModule, tape: Tape, reads: dict[Node, tuple[tuple, dict]], seeds: dict[str, tuple[TM, TM]],
                     keep: dict[Node, tuple[Tensor, Tensor, Tensor]] | None = None) -> Tensor:
    r"""The share of L′ that the re-estimation pass of ``bn=recompute`` deferred, per cell ((C,),
    rounded up, in the units of :func:`kink_bound`): Σ sup|G|·w over that pass's kinks plus its
    sources' ⟨|ΔW|ᵀ sup|G|, e⟩, G the cotangent of Φ = Σ_layers ⟨∂L/∂μ, μ⟩ + ⟨∂L/∂σ², σ²⟩ at the
    pass's activations (the statistics' own derivatives then need no Clarke remainder).

    Why. The evaluation pass computes L(α) = F(α, s(α)) with s the re-estimated statistics; its
    walk, given derivatives s̃′ of the statistics computed with the kinks' midpoint slopes D̃
    (``EnclosureNumbers.deferred`` in the re-estimation pass), encloses F_α + F_s·s̃′ plus its own
    kinks' share. The re-estimation pass's derivative walk is linear in its incoming derivatives
    with coefficients that depend on values alone — convolutions, sums and averages as in the module
    docstring, and train-mode BatchNorm, whose y′ is ρ(x′ − mean x′ − x̂·mean(x̂x′)) plus terms in
    γ′, β′ — so the induction of (∗) and (∗∗) gives s′ − s̃′ = Σ_l J_l (D_l − D̃_l)ṽ′_l + Σ_l J_l ΔW_l δ_l,
    J_l = ∂s/∂(layer l), and F_s·(s′ − s̃′) = Σ_l ⟨J_lᵀF_s, ·⟩: a reverse walk of that pass seeded
    with F_s = (∂L/∂μ, ∂L/∂σ²) per layer (:func:`statistic_seeds`). Through a train-mode BatchNorm
    layer (N values per channel, x̂ = (x − μ)q, q = (v + ε)^(−1/2), ρ = γq) the cotangent of its input is

        ρ·(g − mean g − x̂·mean(g·x̂)) + (∂L/∂μ)/N + (∂L/∂σ²)·2(x − μ)/(N − 1)

    (torch stores σ² = v·N/(N − 1); ∂v/∂x_j = 2(x_j − μ)/N, the μ term of v vanishing as the mean of
    x − μ is 0): :func:`_normalised_back`. ``seeds``: layer name → (∂L/∂μ, ∂L/∂σ²) Taylor models on
    the tape's cells; the tape is the re-estimation pass's, walked with remainders deferred."""
    return _walk(gm, tape, reads, {}, keep, None, train=seeds)


def _walk(gm: GraphModule, tape: Tape, reads: dict[Node, tuple[tuple, dict]], cots: dict[Node, "_Cot"],
          keep: dict | None, keep_norms: dict | None, *, seeds: dict | None = None, train: dict | None = None,
          parts: dict[str, Any] | None = None) -> Tensor:
    """The reverse walk of :func:`kink_bound` (``seeds``: also the statistics' sums; ``parts``: the
    sources' share and the kinks' pairs) and of :func:`statistics_bound` (``train``: the re-estimated layers' seeds; their
    nodes pass cotangents back as train-mode BatchNorm)."""
    nt = tape.numbers
    total = torch.zeros(nt.mid.shape[0], dtype=torch.float64, device=nt.mid.device)
    count = 0
    src_total = torch.zeros_like(total)  # the sources' share alone, for ``parts``
    pairs: list | None = [] if parts is not None else None

    tag = "downstream-of-kinks" if not tape.keep_inputs else "downstream-of-kinks-and-statistics"
    wanted = nt.memo(gm, tag, lambda: _downstream_of_kinks(gm, tape, reads))  # once per batch of cells
    def wants(target: Any) -> bool:
        # a constant, a parameter, a shape, or a node no kink lies upstream of (its cotangent would
        # only feed bounds of kinks, and there are none before it): no cotangent needed
        return isinstance(target, Node) and target in tape.shapes and target in wanted

    def send(target: Any, g: _Cot) -> None:
        if not wants(target):
            return
        have = cots.get(target)
        cots[target] = g if have is None else have.plus(g)

    unpaid = set(tape.sources)  # every deferred source with a cotangent must be bounded here
    # every kink the seeded nodes depend on (along the same edges) must receive a cotangent: one that
    # does not is a kink share left out of L′, never to pass silently (see _downstream_of_kinks)
    owed = _upstream(reads, list(cots)) & set(tape.kinks)
    for node in reversed(list(gm.graph.nodes)):
        g = cots.pop(node, None)
        normalised = train is not None and node.op == "call_module" and node.target in getattr(nt, "names", {}).values()
        if (g is None and not normalised) or node.op in ("placeholder", "get_attr", "output"):
            if g is None and node in owed:
                raise RuntimeError(f"the kinks of {node.name} received no cotangent")
            continue
        if keep is not None and g is not None:
            keep[node] = (g.c, g.s, g.r)
        if keep_norms is not None and g is not None and g.n is not None:
            keep_norms[node] = g.n
        args, kwargs = reads[node]
        if normalised:  # a train-mode BatchNorm layer of the re-estimation pass, with its statistics' seeds
            if wants(args[0]):
                rec = nt.normalised.get(node.target)
                if node.target not in train or rec is None:
                    raise RuntimeError(f"no statistics seed or record for {node.name}")
                send(args[0], _normalised_back(nt, g, rec, *train[node.target]))
            continue
        kind = _kind(gm, node)
        if kind == "linear":
            x = args[0] if node.op == "call_module" else (args[0] if args else kwargs["input"])
            src = tape.sources.get(node)
            if src is not None:
                sb = _source_bound(nt, g, src, tape.weights[node], None)
                total = total + sb
                src_total = src_total + sb
                count += 1
                unpaid.discard(node)
            if wants(x):
                send(x, _linear_back(nt, g, tape.weights[node]))
        elif kind in ("relu", "maxpool"):
            kink = tape.kinks.get(node)
            if kink is None or (kind == "maxpool") != isinstance(kink, PoolKink):
                raise RuntimeError(f"no kink record for {node.name}")
            hh = nt.h(g.c.dim() - 1)
            if kink.idx[0].numel():
                mag = (g.magnitude(hh) * (1 + 4 * U)).expand(kink.pos.shape)[kink.idx] + _UNDER  # underflow: see magnitude
                total = total.index_add(0, kink.idx[0], mag * kink.w)
                count += int(kink.idx[0].numel())
                if pairs is not None:
                    pairs = None if kink.window is None else pairs + [_kink_pairs(g, kink, nt.rad)]
            x = args[0] if args else kwargs.get("input")
            if wants(x):
                send(x, _max_pool_back(g, kink, hh, tape.shapes[x]) if kind == "maxpool" else _relu_back(g, kink, hh))
        elif kind == "conv":
            x = args[0]
            src = tape.sources.get(node)
            if src is not None:
                sb = _source_bound(nt, g, src, tape.weights[node], (gm.get_submodule(node.target), tape.shapes[x]))
                total = total + sb
                src_total = src_total + sb
                count += 1
                unpaid.discard(node)
            if wants(x):
                send(x, _conv_back(nt, g, gm.get_submodule(node.target), tape.weights[node], tape.shapes[x]))
        elif kind == "average":
            x = args[0]
            if wants(x):
                send(x, _average_back(g, _average_op(gm, node), tape.shapes[x]))
        elif kind == "scale":
            x = args[0]
            if seeds is not None and node in tape.inputs:
                _add_seeds(nt, seeds, node, g, tape)
            if wants(x):
                nd = len(tape.shapes[x]) - 1
                rho = nt.memo(node, "normaliser", lambda: batch_norm_scale(nt, gm.get_submodule(node.target), tape.params[node], nd))
                if rho is None:
                    raise RuntimeError(f"no enclosure of the scale of {node.name}")
                send(x, _scale_back(g, rho, nt.h(g.c.dim() - 1)))
        elif kind in ("pass", "reshape"):
            x = args[0]
            shape = tape.shapes.get(x) if isinstance(x, Node) else None
            if shape is not None:
                send(x, g.reshape((g.c.shape[0], *shape[1:])))
        elif kind == "sum":
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
            negate_second = name in ("sub", "sub_")
            if name in ("neg", "neg_"):
                send(args[0], g.neg())
            else:
                for i, a in enumerate(args[:2]):
                    if isinstance(a, Node) and a in tape.shapes:
                        if tape.shapes[a][1:] != g.c.shape[1:]:
                            raise RuntimeError(f"broadcast sum at {node.name}")
                        send(a, g.neg() if (negate_second and i == 1) else g)
        elif kind == "times":
            pos, k, divide = _scalar_operand(node)
            x = args[pos]
            if wants(x):
                send(x, _times_back(g, k, divide))
        else:
            raise RuntimeError(f"no reverse rule for {node.name}")
        if node in unpaid:  # a rule that deferred a source this walk does not bound: no enclosure
            raise RuntimeError(f"a deferred input remainder at {node.name} has no reverse rule")
    factor = 1.0 + 2.0 * gamma(count + 4)
    if parts is not None:
        parts["sources"] = _up(src_total * factor + _TINY)
        parts["pairs"] = pairs
    return _up(total * factor + _TINY)


def _kink_pairs(g: "_Cot", kink: Kink, rad: Tensor) -> tuple[Tensor, ...]:
    """For the mixed neurons of one ReLU node: (cell index, t_l, t_r, then for the states before,
    inside and after the window [t_l, t_r] the upper and lower bounds of the kink's term
    (D − D̃)·g·ṽ′ as affine functions of t, A + B·t: A_up, B_up, A_lo, B_lo each) — see
    :func:`kink_pieces`. Outside the window the neuron's sign, hence D, is known: v(m + t) ∈ ĉ + ĝt ± e
    is non-zero where |ĉ + ĝt| > e; D − D̃ = ∓(1 − s)/2 before and ±(1 − s)/2 after a rising
    (ĝ > 0) crossing, the other way round for a falling one; inside, either. With g = g_c + g_s·t ± g_r
    (the cotangent's Taylor model) and ṽ′ = d_c + d_g·t ± d_e, g·ṽ′ = p0 + p1·t ± ρ, p0 = g_c·d_c,
    p1 = g_c·d_g + g_s·d_c, ρ = |g_s·d_g|h² + g_r(|d_c| + |d_g|h) + d_e(|g_c| + |g_s|h) + g_r·d_e plus
    the rounding of p0 and p1."""
    idx = kink.idx
    vc, vg, ve, dc, dg, de = kink.window
    cell = idx[0]
    h = rad[cell]
    shape = kink.pos.shape
    gc = g.c.expand(shape)[idx]
    gs = g.s.expand(shape)[idx]
    gr = g.r.expand(shape)[idx]
    dg = dg.expand(dc.shape)
    p0 = gc * dc
    p1 = gc * dg + gs * dc
    gmag, dmag = gc.abs() + gs.abs() * h, dc.abs() + dg.abs() * h
    rho = (gs * dg).abs() * h * h + gr * dmag + de * gmag + gr * de
    rho = (rho + (p0.abs() + ((gc * dg).abs() + (gs * dc).abs()) * h) * (4 * U)) * (1 + 8 * U) + _UNDER
    half = (1.0 - kink.slope) * 0.5
    a0, a1 = half * p0, half * p1
    rho = (half * rho + (a0.abs() + a1.abs() * h) * (2 * U)) * (1 + 4 * U) + _TINY
    rising = vg > 0
    sign = torch.where(rising, -1.0, 1.0).to(p0.dtype)  # D − D̃ before the window, over (1 − s)/2
    inside = (a0.abs() + a1.abs() * h) * (1 + 2 * U) + rho
    zero = torch.zeros_like(a0)
    states = (sign * a0 + rho, sign * a1, sign * a0 - rho, sign * a1,  # before the window
              inside, zero, -inside, zero,  # inside: either slope
              -sign * a0 + rho, -sign * a1, -sign * a0 - rho, -sign * a1)  # after it
    t1 = (-vc - ve) / vg
    t2 = (-vc + ve) / vg
    pad = (t1.abs() + t2.abs()) * (4 * U) + _TINY
    # no crossing to place (or no finite one): the window is the whole cell
    flat = (vg == 0) | ~torch.isfinite(t1) | ~torch.isfinite(t2)
    inf = torch.full_like(t1, math.inf)
    tl = torch.where(flat, -inf, torch.minimum(t1, t2) - pad)
    tr = torch.where(flat, inf, torch.maximum(t1, t2) + pad)
    return (cell, tl, tr, *states)


def kink_pieces(rad: Tensor, pairs: list[tuple[Tensor, ...]]) -> list[tuple[Tensor, ...] | None]:
    r"""The kinks' share of L′ on each cell (radii ``rad``), piece by piece along it: per cell,
    (a, b, A_up, B_up, A_lo, B_lo) per piece [a, b] of [−h, h] (t from the cell's midpoint), with
    A_lo + B_lo·t ≤ Σ_mixed (D − D̃)·g·ṽ′ ≤ A_up + B_up·t at every t inside the piece but its ends
    (finitely many points, where L′ need not be bounded: rises are integrals of L′); None for a cell
    without pieces to form. ``pairs``: what :func:`kink_bound` gathered (``parts["pairs"]``), of
    any number of chunks.

    The Clarke bound of :func:`kink_bound` charges every mixed neuron (1 − s)/2·sup|g|·sup|ṽ′| at
    every t of the cell. But a neuron's pre-activation v(m + t) ∈ ĉ + ĝt ± e has a known sign
    wherever |ĉ + ĝt| > e: outside a window [t_l, t_r] (``_kink_pairs``) its slope D is known, and
    its term is ±(1 − s)/2·g·ṽ′, an affine function of t of either sign, up to a radius; only inside
    the window is it either sign. The sum over neurons at a given t is a sum of one of three
    affine bounds per neuron, which changes only at the windows' ends: sorting them gives the bound
    on every piece between consecutive ends, and the terms of neurons whose windows lie elsewhere
    keep their signs, so they cancel as they do in L′ itself. Sums are in float64; each piece is
    padded by 2γ_{2M+4}(Σ|A| + hΣ|B|) over the M neurons' states (the prefix sums' rounding)."""
    cells = rad.shape[0]
    if not pairs:
        return [None] * cells
    cols = [torch.cat([p[i] for p in pairs]) for i in range(15)]
    order = torch.argsort(cols[0], stable=True)  # the neurons cell by cell
    cols = [c[order] for c in cols]
    counts = torch.bincount(cols[0], minlength=cells).tolist()
    out: list[tuple[Tensor, ...] | None] = []
    start = 0
    for i, k in enumerate(counts):
        out.append(_pieces(float(rad[i]), [c[start : start + k] for c in cols[1:]]) if k else None)
        start += k
    return out


def _pieces(h: float, cols: list[Tensor]) -> tuple[Tensor, ...] | None:
    """:func:`kink_pieces` on one cell of radius ``h``: ``cols`` = (t_l, t_r, the twelve states)."""
    tl, tr = cols[0].clamp(-h, h), cols[1].clamp(-h, h)
    before, inside, after = cols[2:6], cols[6:10], cols[10:14]
    pos = torch.cat([tl, tr])
    order = torch.argsort(pos, stable=True)
    pos = pos[order]
    m = tl.numel()
    mag = float(sum(c.abs().sum() * (h if i % 2 else 1.0) for i, c in enumerate(cols[2:])))
    pad = 2.0 * mag * 2.0 * gamma(2 * m + 4) + _TINY
    out = []
    for j in range(4):  # A_up, B_up, A_lo, B_lo
        first = before[j].sum()
        steps = torch.cat([inside[j] - before[j], after[j] - inside[j]])[order]
        run = torch.cat([first.reshape(1), first + torch.cumsum(steps, 0)])
        if j == 0:
            run = run + pad
        elif j == 2:
            run = run - pad
        out.append(run)
    edges = torch.cat([pos.new_tensor([-h]), pos, pos.new_tensor([h])])
    a, b = edges[:-1], edges[1:]
    keep = b > a  # pieces of length zero are single points
    if not bool(keep.any()):
        return None
    return (a[keep], b[keep], *(t[keep] for t in out))


def _tm_reduce(a: TM, dims: tuple[int, ...], k: int, *, mean: bool = False) -> TM:
    """Σ (or the mean) of a Taylor model over ``dims`` (kept as size-1 axes), k terms per entry,
    rounding covered as in :func:`~.enclosures._reduced`."""
    full = broadcast_shape(a.c.shape, a.g.shape, a.e.shape)
    red = (lambda t: t.mean(dims, keepdim=True)) if mean else (lambda t: t.sum(dims, keepdim=True))
    return _reduced(TM(a.c.expand(full), a.g if _is_zero(a.g) else a.g.expand(full), a.e.expand(full)), red, k)


def _cells_of(a: TM, i: int, j: int) -> TM:
    """The cells i…j − 1 of a Taylor model with a leading cell axis (0-dim parts stay)."""
    return TM(*(t if t.dim() == 0 else t[i:j] for t in (a.c, a.g, a.e)))


def _add_seeds(nt: EnclosureNumbers, seeds: dict, node: Node, g: "_Cot", tape: Tape) -> None:
    """Adds this chunk's per-channel (Σ g, Σ g·(x − μ)) at a re-estimated BatchNorm layer to ``seeds``
    (see :func:`kink_bound`): x the layer's input (its value Taylor model, kept by the tape), μ its
    running mean's enclosure, sums over examples and positions (every axis but the channel's)."""
    mu = tape.params[node].get("running_mean")
    if not isinstance(mu, Enclosure):
        raise RuntimeError(f"{node.name}: the statistics walk needs re-estimated statistics")
    full = broadcast_shape(g.c.shape, g.s.shape, g.r.shape)
    nd = len(full) - 1
    h = nt.h(nd)
    dims = (1,) + tuple(range(3, len(full)))
    k = int(math.prod(full[d] for d in dims))
    gt = TM(g.c.expand(full), g.s.expand(full), g.r.expand(full))
    xc = _add_tm(tape.inputs[node], mu.v, -1.0)
    s1 = _tm_reduce(gt, dims, k)
    s2 = _tm_reduce(_product(xc, gt, h), dims, k)
    have = seeds.get(node.target)
    if have is None:
        seeds[node.target] = (s1, s2, tape.params[node], nd)
    else:
        seeds[node.target] = (_add_tm(have[0], s1), _add_tm(have[1], s2), have[2], have[3])


def statistic_seeds(nt: EnclosureNumbers, gm: GraphModule, sums: dict) -> dict[str, tuple[TM, TM]]:
    """Layer name → (∂L/∂μ, ∂L/∂σ²) per channel, Taylor models on the cells of ``nt`` (the
    evaluation pass's), from the sums :func:`kink_bound` gathered over every chunk: the eval-mode
    layer is y = (x − μ)ρ + β with ρ = γq, q = (σ² + ε)^(−1/2), so ∂y/∂μ = −ρ and
    ∂y/∂σ² = −½(x − μ)ρq², and ∂L/∂μ = −ρ·Σg, ∂L/∂σ² = −½ρq²·Σg(x − μ) (ρ, q per channel)."""
    out: dict[str, tuple[TM, TM]] = {}
    for name, (s1, s2, params, nd) in sums.items():
        got = batch_norm_factors(nt, gm.get_submodule(name), params, nd)
        if got is None:
            raise RuntimeError(f"no enclosure of the scale of {name}")
        rho, q = got
        h = nt.h(nd)
        a = _product(rho, s1, h)
        b = _product(_product(_product(rho, q, h), q, h), s2, h)
        # negation and halving are exact in floating point
        out[name] = (TM(-a.c, -a.g, a.e), TM(b.c * -0.5, b.g * -0.5, b.e * 0.5))
    return out


def _normalised_back(nt: EnclosureNumbers, g: "_Cot | None", rec: Any, a: TM, b: TM) -> "_Cot":
    """The cotangent of a train-mode BatchNorm layer's input (see :func:`statistics_bound`):
    ρ·g + K1 + (x − μ)·K2 with the per-channel K1 = (∂L/∂μ)/N − ρ·mean g and
    K2 = (∂L/∂σ²)·2/(N − 1) − ρq²·mean(g·(x − μ)) (ρ·x̂·mean(g·x̂) = ρq²(x − μ)·mean(g·(x − μ))), g the
    cotangent of its output (None: the pass's last layer, whose output nothing reads). Every product
    is the forward rule's (:func:`~.enclosures._product`), constants 1/N and 2/(N − 1) rounded
    quotients (:func:`~.enclosures._scale_inexact`)."""
    xc = rec.centred
    full = xc.c.shape
    h = nt.h(len(full) - 1)
    n = rec.count
    k1 = _scale_inexact(a, 1.0 / n)
    k2 = _scale_inexact(b, 2.0 / (n - 1))
    if g is None:
        out = _add_tm(_product(xc, k2, h), k1)
    else:
        gt = TM(g.c.expand(full), g.s.expand(full), g.r.expand(full))
        mg = _tm_reduce(gt, rec.dims, n, mean=True)
        mgx = _tm_reduce(_product(xc, gt, h), rec.dims, n, mean=True)
        k1 = _add_tm(k1, _product(rec.scale, mg, h), -1.0)
        k2 = _add_tm(k2, _product(_product(_product(rec.scale, rec.root, h), rec.root, h), mgx, h), -1.0)
        out = _add_tm(_add_tm(_product(rec.scale, gt, h), k1), _product(xc, k2, h))
    shape = broadcast_shape(out.c.shape, out.g.shape, out.e.shape, full)
    return _Cot(out.c.expand(shape), out.g.expand(shape), out.e.expand(shape))


def _read_nodes(reads: dict[Node, tuple[tuple, dict]], node: Node) -> list[Node]:
    """The nodes ``node`` reads along the reverse walk's edges (``reads``: in-place changes rebound)."""
    out: list[Node] = []
    torch.fx.node.map_arg(reads[node], out.append)
    return out


def _upstream(reads: dict[Node, tuple[tuple, dict]], seeds: list[Node]) -> set[Node]:
    """The nodes ``seeds`` read, directly or not, along the reverse walk's edges (``reads``)."""
    out: set[Node] = set()
    stack = list(seeds)
    while stack:
        for a in _read_nodes(reads, stack.pop()):
            if a not in out:
                out.add(a)
                stack.append(a)
    return out


def _downstream_of_kinks(gm: GraphModule, tape: Tape, reads: dict[Node, tuple[tuple, dict]]) -> set[Node]:
    """The nodes with a recorded kink or source upstream of them (that node included): the only ones
    whose cotangent enters the bound. The reverse walk stops at the others, e.g. the first Linear
    layer of an MLP and its input, which no kink precedes (its input is exact: no source).

    Upstream along the edges the walk sends cotangents on (``reads``: a node changed in place is
    read through the operation that changed it). The graph's own edges name the tensor before the
    change: with them, ``h.clamp_(0, 1); h * 2`` had the product read a node no kink precedes, its
    cotangent was dropped, the clamp's kinks got none, and a rise of 4 was certified away."""
    out: set[Node] = set()
    for node in gm.graph.nodes:  # topological order (the layers whose input the tape keeps: see kink_bound's seeds)
        if node in tape.kinks or node in tape.sources or node in tape.inputs or any(a in out for a in _read_nodes(reads, node)):
            out.add(node)
    return out


def _source_bound(nt: EnclosureNumbers, g: _Cot, src: Source, weight: Any, conv: tuple[nn.Module, torch.Size] | None) -> Tensor:
    """Σ over examples of ⟨|ΔW|ᵀ sup|g|, e⟩ per cell ((C,), rounded up): a bound of |⟨g, ΔW·δ⟩| for
    the input remainder |δ| ≤ e that the layer left out of its derivative (:class:`Source`), g the
    loss gradient at the layer's output; ``conv``: (module, input shape) of a Conv2d, whose |ΔW|ᵀ is
    the transposed convolution with |ΔW|. Rounding: the non-negative products of |ΔW|ᵀ (γ_K, K
    their length), the products with e and the sum of N terms (γ_{N+2}) — one factor 1 + 2γ_{K+N+4}."""
    w = weight if isinstance(weight, Param) else Param(weight, torch.zeros_like(weight))
    cells = nt.mid.shape[0]
    mag = g.magnitude(nt.h(g.c.dim() - 1)) * (1 + 4 * U) + _UNDER  # underflow: see _Cot.magnitude
    adw = nt.memo(weight, "abs-dw", lambda: w.dw.abs())
    if conv is None:
        k_len = w.w0.shape[0]
        back = upper_matmul(mag, adw, memo_up32(nt, weight, "abs-dw-32", adw, k_len))
    else:
        mod, in_shape = conv
        stride, padding, dilation = _conv_geometry(mod)
        k_len = int(w.w0.shape[0] * w.w0.shape[2] * w.w0.shape[3])
        full = broadcast_shape(mag.shape, (cells,) + mag.shape[1:])
        back = transposed_conv2d(mag.expand(full), adw, stride, padding, dilation, tuple(in_shape[-2:]), upper=True)
        back = back + k_len * _UNDER  # what its products lose to underflow (then multiplied by e)
    full = broadcast_shape(back.shape, src.e.shape, (cells,) + back.shape[1:])
    terms = back.expand(full) * src.e.expand(full)
    n = terms[0].numel()
    part = terms.reshape(cells, -1).sum(1)
    return _up(part * (1.0 + 2.0 * gamma(k_len + n + 4)))


def _linear_back(nt: EnclosureNumbers, g: _Cot, weight: Any) -> _Cot:
    """g·W(α) on the cell, with g = c + st ± r and W(α) = W(m) + tΔW:
    (c + st)(W_m + tΔW) = cW_m + t(sW_m + cΔW) + t²sΔW, t² = h²/2 ± h²/2, so the centre is
    cW_m + (h²/2)sΔW, the slope sW_m + cΔW, and the radius r·|W(α)| + (h²/2)|s||ΔW| with
    |W(α)| ≤ |W_m| + h|ΔW| + 4u(|W0| + |ΔW|) (:func:`abs_per_cell`), plus the rounding of the
    products (γ bounds, via column sums of |W0| + |ΔW|)."""
    w = weight if isinstance(weight, Param) else Param(weight, torch.zeros_like(weight))
    k_len = w.w0.shape[0]  # the dot products run over the output axis
    g2 = gamma(k_len + 16) * 2.0
    nd = g.c.dim() - 1
    m, h = nt.m(nd), nt.h(nd)
    hh = h * h * 0.5
    full = broadcast_shape(g.c.shape, g.s.shape)
    gc, gs = g.c.expand(full), g.s.expand(full)
    n_in = w.w0.shape[-1]
    products = _products32(nt, weight, w, gc, gs, n_in, k_len) if use_float32(k_len, gc.device) else None
    if products is not None:
        # the centre and slope are a choice (only the radius is a claim): computed in float32, their
        # error |fl32(fl32(g)·fl32(W)) − g·W| ≤ γ_{K+3}(float32)·|g||W| joins the rounding term
        # below, and what underflows (flushed or gradual) the absolute term ``floor``
        (c0, c1, s0, s1), floor = products
        g_prod = (k_len + 16) * _U32 / (1.0 - (k_len + 16) * _U32)
    else:
        stacked = nt.memo(weight, "stacked-back", lambda: torch.cat([w.w0, w.dw], -1))  # (out, 2·in)
        c0, c1 = torch.matmul(gc, stacked).split(n_in, -1)
        s0, s1 = torch.matmul(gs, stacked).split(n_in, -1)
        g_prod, floor = gamma(k_len + 16), 0.0
    c = c0 + m * c1 + hh * s1
    s = s0 + m * s1 + c1
    a = abs_per_cell(nt, weight, w)  # (C, out, in)
    cells = nt.mid.shape[0]
    mags = gc.abs() + gs.abs()
    lead = full[1:-1]
    rr = g.r.expand(cells, *full[1:]).reshape(cells, -1, full[-1])
    r = upper_matmul(rr, a, memo_up32(nt, weight, "abs-per-cell-back-32", a, k_len)).reshape(cells, *lead, -1)  # an upper bound, rounding included
    colsum = nt.memo(weight, "abs-col-sums", lambda: (w.w0.abs() + w.dw.abs()).sum(0))  # (in,)
    # rounding of c0, c1, s0, s1 (γ_K each) and of the few elementwise operations combining them;
    # then the t² term (h²/2)|s||ΔW| (a non-negative product, γ_K)
    extra = mags.amax(-1, keepdim=True) * colsum * (4 * g_prod + 16 * U) + floor
    if not nt.memo(weight, "dw-is-zero", lambda: bool((w.dw == 0).all())):
        adw = nt.memo(weight, "abs-dw", lambda: w.dw.abs())
        extra = extra + hh * upper_matmul(gs.abs(), adw, memo_up32(nt, weight, "abs-dw-32", adw, k_len))
    r = r * (1.0 + g2) + extra
    if not (isinstance(weight, Param) and weight.w0.dim() == 2):
        return _Cot(c, s, _up(r))
    # the radius in Euclidean norm: ‖δW(α)‖₂ ≤ ‖W(α)‖₂‖δ‖₂ and |(δW(α))_k| ≤ ‖W(α)_{:,k}‖₂‖δ‖₂
    # (column norms), both convex in α (:func:`~.enclosures._along_cells`); γ_K covers the rounding
    # of the products in the centre and slope, which ``extra`` bounds entrywise
    nb = _matrix_norms(weight)
    mc, hc = nt.mid.reshape(-1, 1), nt.rad.reshape(-1, 1)
    s_w = _along_cells(nb["s0"], nb["sT"], nb["sD"], mc, hc).reshape(cells, *([1] * nd))
    c_w = _along_cells(nb["c0"], nb["cT"], nb["cD"], mc, hc)  # (C, in)
    c_w = c_w.reshape(cells, *([1] * (nd - 1)), c_w.shape[-1])
    n_in = g.norm()
    r = torch.minimum(r, c_w * n_in * (1.0 + g2) + extra)
    width = r.shape[-1]
    n = torch.minimum(_up(s_w * n_in * (1.0 + g2) + _l2(extra, width)), _l2(r, width))
    return _Cot(c, s, _up(r), _up(n))


def _products32(nt: EnclosureNumbers, weight: Any, w: Param, gc: Tensor, gs: Tensor, n_in: int, k_len: int
                ) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], float] | None:
    """((g_c·W0, g_c·ΔW, g_s·W0, g_s·ΔW), floor) computed in float32, or None when a product is not
    finite there (an operand or a sum beyond float32's range: the caller computes in float64).

    Each product's error is at most γ_{K+3}(float32)·|g||W| (the caller's relative term) plus what
    underflow loses: the conversions to float32 lose less than 2⁻¹²⁶ per entry where flushed
    (2⁻¹⁵⁰ where gradual), each product and sum less than 2⁻¹²⁶, so a sum of K terms loses less
    than K·2⁻¹²⁶(2 + max|g| + max|W|). The Taylor model combines three products for its centre
    (c0 + m·c1 + (h²/2)·s1) and three for its slope (h ≤ 1): ``floor`` = 8K·2⁻¹²⁶(2 + max|g| +
    max|W|), rounded up, bounds it all."""
    stacked = nt.memo(weight, "stacked-back-32", lambda: torch.cat([w.w0, w.dw], -1).to(torch.float32))
    wmax = nt.memo(weight, "stacked-back-max", lambda: float(torch.cat([w.w0, w.dw], -1).abs().max()) if w.w0.numel() else 0.0)
    pc = torch.matmul(gc.to(torch.float32), stacked)
    ps = torch.matmul(gs.to(torch.float32), stacked)
    if not (bool(torch.isfinite(pc).all()) and bool(torch.isfinite(ps).all())):
        return None
    gmax = max(float(gc.abs().max()), float(gs.abs().max())) if gc.numel() else 0.0
    floor = 8.0 * k_len * _MIN32 * (2.0 + gmax + wmax) * (1.0 + 2.0**-40)
    c0, c1 = pc.to(torch.float64).split(n_in, -1)
    s0, s1 = ps.to(torch.float64).split(n_in, -1)
    return (c0, c1, s0, s1), floor


def transposed_conv2d(t: Tensor, w: Tensor, stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                      spatial: tuple[int, int], *, per_cell: bool = False, via: Literal["auto", "fold"] = "auto",
                      upper: bool = False) -> Tensor:
    """Wᵀt: the adjoint of ``F.conv2d(·, w, None, stride, padding, dilation)`` on inputs of spatial
    size ``spatial``, applied to t of shape (…, Cout, OH, OW); w is (Cout, Ci, kh, kw), or with
    ``per_cell``, a (C, Cout, Ci, kh, kw) weight per cell applied to t of shape (C, …).

    Computed as plain sums of products, so that K = Cout·kh·kw bounds the terms of each entry:
    on CPU in float64 as a stride-1 convolution (im2col + gemm,
    :func:`mli_theory.certify.enclosures.conv2d_dots`) of t with zeros inserted between its entries
    (stride), padded by d(k − 1) − p (cropped where negative) and by the rows the forward
    convolution left unread, with the kernel transposed and flipped; elsewhere (no FFT or Winograd
    algorithm of a vendor library may be chosen) as a matmul of each output column with Wᵀ summed
    back by ``F.fold`` (the adjoint of unfold); ``via="fold"`` takes that route everywhere.
    ``upper`` (t, w ≥ 0): on the CPU float64 route, an upper bound of the exact product with its
    rounding (:func:`~mli_theory.certify.enclosures.upper_conv2d_dots`, float32 where sound); the
    other routes compute the product itself, whose rounding the callers' factors cover either way."""
    lead = t.shape[:-3]
    cout, oh, ow = t.shape[-3:]
    kh, kw = w.shape[-2:]
    ci = w.shape[-3]
    if via == "auto" and t.device.type == "cpu" and t.dtype == torch.float64:
        if stride != (1, 1):
            z = t.new_zeros(*lead, cout, (oh - 1) * stride[0] + 1, (ow - 1) * stride[1] + 1)
            z[..., :: stride[0], :: stride[1]] = t
            t = z
        lo = [dilation[i] * (k - 1) - padding[i] for i, k in enumerate((kh, kw))]
        extra = [spatial[i] - ((o - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k - 1) + 1) for i, (o, k) in enumerate(((oh, kh), (ow, kw)))]
        pads = (lo[0], lo[0] + extra[0], lo[1], lo[1] + extra[1])  # (top, bottom, left, right)
        tb = t.reshape(-1, *t.shape[-3:])
        if min(pads) < 0:  # a crop: F.pad takes negative padding, the convolution below does not
            tb = F.pad(tb, (pads[2], pads[3], pads[0], pads[1]))
            pads = (0, 0, 0, 0)
        wt = w.transpose(-4, -3).flip(-2, -1)  # (…, Ci, Cout, kh, kw)
        dots = upper_conv2d_dots if upper else conv2d_dots
        if per_cell:  # cell i's entries against cell i's kernel, in one batched product
            tb = tb.reshape(wt.shape[0], -1, *tb.shape[-3:])
        out = dots(tb, wt, (1, 1), pads, tuple(dilation))
        return out.reshape(*lead, ci, *spatial)
    kk = ci * kh * kw
    mat = (w.reshape(*w.shape[:-3], kk) if not per_cell else w.reshape(w.shape[0], cout, kk).unsqueeze(1)).transpose(-1, -2)
    tt = t.reshape(*lead, cout, oh * ow)
    if not per_cell:
        tt = tt.reshape(-1, cout, oh * ow)
    else:
        tt = tt.reshape(w.shape[0], -1, cout, oh * ow)
    per = max(1, int(2**25 // max(1, kk * oh * ow * (1 if not per_cell else w.shape[0]))))
    outs = []
    axis = 0 if not per_cell else 1
    for i in range(0, tt.shape[axis], per):
        part = tt[i : i + per] if not per_cell else tt[:, i : i + per]
        cols = torch.matmul(mat, part)  # (…, K, L)
        img = F.fold(cols.reshape(-1, kk, oh * ow), spatial, (kh, kw), dilation=dilation, padding=padding, stride=stride)
        outs.append(img.reshape(*cols.shape[:-2], ci, *spatial))
    return torch.cat(outs, axis).reshape(*lead, ci, *spatial)


def _conv_back(nt: EnclosureNumbers, g: _Cot, mod: nn.Module, weight: Any, in_shape: torch.Size) -> _Cot:
    """g·W(α) for a Conv2d: :func:`_linear_back` with the transposed convolution
    (:func:`transposed_conv2d`) in place of the matrix product, W(α) = W_m + tΔW. Every input entry
    is a sum of at most K = Cout·kh·kw products, so γ_{K+16} covers each product as in the Linear
    rule; the rounding term bounds Σ|W||g| by max|g| over the example's output times the sums of
    |W0| + |ΔW| per input channel. The radius uses |W(α)| ≤ |W_m| + h|ΔW| + 4u(|W0| + |ΔW|) per
    cell (:func:`abs_per_cell`)."""
    stride, padding, dilation = _conv_geometry(mod)
    w = weight if isinstance(weight, Param) else Param(weight, torch.zeros_like(weight))
    cout, cin, kh, kw = w.w0.shape
    g2 = gamma(cout * kh * kw + 16) * 2.0
    nd = g.c.dim() - 1
    m, h = nt.m(nd), nt.h(nd)
    hh = h * h * 0.5
    cells = nt.mid.shape[0]
    full = broadcast_shape(g.c.shape, g.s.shape, g.r.shape, (cells,) + g.c.shape[1:])
    spatial = tuple(in_shape[-2:])

    def back(wt: Tensor, t: Tensor, per_cell: bool = False, upper: bool = False) -> Tensor:
        return transposed_conv2d(t, wt, stride, padding, dilation, spatial, per_cell=per_cell, upper=upper)

    stacked = nt.memo(weight, "stacked-conv-back", lambda: torch.cat([w.w0, w.dw], 1))  # (Cout, 2·Cin, kh, kw)
    both = back(stacked, torch.stack([g.c.expand(full), g.s.expand(full)]))  # (2, C, n, 2·Cin, H, W)
    c0, c1, s0, s1 = both[0, :, :, :cin], both[0, :, :, cin:], both[1, :, :, :cin], both[1, :, :, cin:]
    c = c0 + m * c1 + hh * s1
    s = s0 + m * s1 + c1
    r = back(abs_per_cell(nt, weight, w), g.r.expand(full), per_cell=True, upper=True)  # non-negative products
    if not bool((w.dw == 0).all()):
        r = r + hh * back(w.dw.abs(), g.s.abs().expand(full), upper=True)
    colsum = nt.memo(weight, "abs-col-sums", lambda: (w.w0.abs() + w.dw.abs()).sum((0, 2, 3)).reshape(-1, 1, 1))  # (Cin, 1, 1)
    mags = (g.c.abs() + g.s.abs()).expand(full).flatten(-3).amax(-1).reshape(*full[:-3], 1, 1, 1)
    r = r * (1.0 + g2) + mags * colsum * (2 * g2 + 16 * U)
    return _Cot(c, s, _up(r))


def _average_back(g: _Cot, op: Any, in_shape: torch.Size) -> _Cot:
    """Aᵀg for an average A (fixed non-negative weights, the same on every cell): centre and slope
    pass through Aᵀ, the radius through Aᵀ too (A ≥ 0). Aᵀ is the vector-Jacobian product of the
    op itself (``torch.func.vjp``: each input entry receives a sum of g/divisor over the windows
    holding it, at most as many terms as the op has outputs per channel, plus one division), so
    γ_{K+4}·Aᵀ(|c| + |s|) covers the rounding of centre and slope."""
    full = broadcast_shape(g.c.shape, g.s.shape, g.r.shape)
    cells = full[0]
    lead = cells * full[1]
    k_out = int(torch.Size(full[2:]).numel()) or 1
    g2 = gamma(k_out + 4) * 2.0
    parts = [t.expand(full).reshape(lead, *full[2:]) for t in (g.c, g.s, g.r, g.c.abs() + g.s.abs())]
    primal = torch.zeros((4 * lead, *in_shape[2:]), dtype=g.c.dtype, device=g.c.device)
    out, vjp_fn = torch.func.vjp(op, primal)
    if out.shape[0] != 4 * lead or out.shape[1:] != full[2:]:
        raise RuntimeError("an average whose output shape differs from the forward walk's")
    back = vjp_fn(torch.cat(parts, 0))[0].reshape(4, cells, full[1], *in_shape[2:])
    c, s, r, mag = back.unbind(0)
    return _Cot(c, s, _up(r * (1.0 + g2) + mag * g2))


def _scale_back(g: _Cot, rho: TM, h: Tensor) -> _Cot:
    """ρ(α)·g for an eval-mode BatchNorm layer, y = (x − μ(α))·ρ(α) + β(α) per channel: its
    derivative y′ = ρ·x′ + (x − μ)·ρ′ − μ′·ρ + β′ is linear in x′ with the coefficient ρ, which
    depends on α alone (the statistics are inputs of the eval-mode graph, enclosed by their own
    pass under ``bn=recompute``), never on the kinks' slopes, so the identities (∗) and (∗∗) of the
    module docstring pass through it with the cotangent ρ·g. ``rho``: ρ's value Taylor model
    (:func:`~.enclosures.batch_norm_scale`); the elementwise product of the two Taylor models is
    the forward rule's (:func:`~.enclosures._product`, rounding included), which also carries the
    Euclidean norm of the remainder (max|ρ̂|·n plus the new parts) where the cotangent tracks one."""
    out = _product(rho, TM(g.c, g.s, g.r, g.n), h, norm_of_b=g.n is not None)
    return _Cot(out.c, out.g, out.e, out.n)


def _max_pool_back(g: _Cot, kink: PoolKink, h: Tensor, in_shape: torch.Size) -> _Cot:
    """The cotangent of max pooling's input: each entry receives Σ_windows P_k·g over the windows
    it lies in, P_k ∈ P̃_k ± u_k on candidates (u_k = max(P̃_k, 1 − P̃_k)) and 0 elsewhere
    (:func:`~.enclosures._max_pool2d_deferred`): centre Σ P̃_k·c, slope Σ P̃_k·s, radius
    Σ (P̃_k·r + u_k·(|c| + |s|h + r)). Windows are strided slices of the input padded with copies of
    its edge entries; sums over windows are added slice by slice, then the padding's copies onto
    their edge entries (``index_add``). The rounding of every sum is covered by 2γ_n (n terms per
    entry at most) times the sum of magnitudes, and the radius's own sum inflated likewise."""
    (k0, k1), (s0, s1), (p0, p1), (d0, d1), hgt, wid = kink.geometry
    shape = kink.pos.shape  # (cells, …, oh, ow)
    oh, ow = shape[-2], shape[-1]
    gc, gs, gr = g.c.expand(shape), g.s.expand(shape), g.r.expand(shape)
    gmag = gc.abs() + gs.abs() * h + gr
    lead = shape[:-2]
    hp, wp = hgt + 2 * p0, wid + 2 * p1
    c = gc.new_zeros((*lead, hp, wp))
    sl, r, mag = torch.zeros_like(c), torch.zeros_like(c), torch.zeros_like(c)
    for k in range(k0 * k1):
        i, j = divmod(k, k1)
        pk, ck = kink.p[k], kink.cand[k].to(gc.dtype)
        uk = ck * torch.maximum(pk, 1.0 - pk)
        r0, c0 = i * d0, j * d1
        at = (..., slice(r0, r0 + s0 * (oh - 1) + 1, s0), slice(c0, c0 + s1 * (ow - 1) + 1, s1))
        tc, ts = pk * gc, pk * gs
        c[at] += tc
        sl[at] += ts
        r[at] += pk * gr + uk * gmag
        mag[at] += tc.abs() + ts.abs()
    if p0 or p1:  # the padding's copies summed onto the edge entries they copy (enclosures._max_pool2d)
        rows = torch.arange(-p0, hgt + p0, device=c.device).clamp(0, hgt - 1)
        cols = torch.arange(-p1, wid + p1, device=c.device).clamp(0, wid - 1)

        def fold(t: Tensor) -> Tensor:
            t = t.new_zeros((*lead, hgt, wp)).index_add_(-2, rows, t)
            return t.new_zeros((*lead, hgt, wid)).index_add_(-1, cols, t)

        c, sl, r, mag = fold(c), fold(sl), fold(r), fold(mag)
    n = k0 * k1 * (2 * p0 + 1) * (2 * p1 + 1) + 2  # terms summed into one entry, at most
    grow = 2.0 * gamma(n)
    r = _up((r + mag * grow) * (1 + grow) + _UNDER)
    full = torch.Size((*shape[:1], *in_shape[1:]))
    return _Cot(c.reshape(full), sl.reshape(full), r.reshape(full))


def _times_back(g: _Cot, k: float, divide: bool) -> _Cot:
    """k·g (or g/k): the cotangent of y = k·x (x/k). Each computed product or quotient is correctly
    rounded, |fl(k·c) − k·c| ≤ u|k·c|, so (|k·c| + |k·s|)·2u (from the rounded results) covers the
    centre's and the slope's rounding (h ≤ 1); the radius scales by |k| (one more rounding)."""
    if divide:
        c, s, mag = g.c / k, g.s / k, 1.0 / abs(k)
    else:
        c, s, mag = g.c * k, g.s * k, abs(k)
    rnd = (c.abs() + s.abs()) * (2 * U)
    r = _up(g.r * mag * (1 + 4 * U) + rnd)
    if g.n is None:
        return _Cot(c, s, r)
    width = r.shape[-1]
    n = torch.minimum(_up(g.n * mag * (1 + 4 * U) + _l2(rnd, width)), _l2(r, width))
    return _Cot(c, s, r, n)


def _relu_back(g: _Cot, kink: Kink, h: Tensor) -> _Cot:
    """D·g with D = 1 where v > 0 is proven, s where v < 0 is proven, and D = D̃ + (D − D̃) on mixed
    neurons, D̃ = (1 + s)/2, |D − D̃| ≤ (1 − s)/2: the slope-D̃ Taylor model plus (1 − s)/2·sup|g|."""
    sl = kink.slope
    shape = kink.pos.shape
    gc, gs, gr = g.c.expand(shape), g.s.expand(shape), g.r.expand(shape)
    coef = kink.pos.to(gc.dtype)
    if sl:
        coef = coef + kink.neg.to(gc.dtype) * sl
    mixed = ~(kink.pos | kink.neg)
    coef = coef + mixed.to(gc.dtype) * ((1.0 + sl) * 0.5)
    half = mixed.to(gc.dtype) * ((1.0 - sl) * 0.5)
    extra = half * (gc.abs() + gs.abs() * h + gr)
    c, s = coef * gc, coef * gs
    rnd = (gc.abs() + gs.abs()) * (2 * U)  # (products with s, D̃ round)
    r = _up(coef * gr + extra * (1 + 4 * U) + rnd)
    if g.n is None:
        return _Cot(c, s, r)
    # δ' = Dδ + (D − D̃)(c + st) + rounding with |D| ≤ 1: ‖δ'‖ ≤ ‖δ‖ + ‖(1 − s)/2·(|c| + |s|h)‖ on mixed + ‖rounding‖
    width = r.shape[-1]
    fresh = half * (gc.abs() + gs.abs() * h) * (1 + 4 * U) + rnd
    n = torch.minimum(_up(g.n * (1 + 4 * U) + _l2(fresh, width)), _l2(r, width))
    return _Cot(c, s, r, n)
