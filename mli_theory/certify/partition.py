r"""Deciding MLI on all of [0, 1] by enclosing L′ on a partition of the path into cells.

For a partition of [0, 1] into cells C = [a, b] with proven bounds lo_C ≤ L′(α) ≤ hi_C (for
almost every α in C; L is absolutely continuous along α because every supported layer is locally
Lipschitz), the fundamental theorem of calculus gives, for any a < b,

    L(b) − L(a) = ∫_a^b L′ ≤ Σ_C |C|·max(0, hi_C) =: rise_bound          (GUIDE §1)

so "monotone at tolerance T" is proven when rise_bound ≤ T; and for a contiguous run of cells
[a, b], L(b) − L(a) ≥ Σ_{C ⊂ [a, b]} |C|·lo_C, so a run whose sum exceeds T proves a rise > T
("non_monotone", witness [a, b]; the rise is re-evaluated by a plain float64 forward pass).

The enclosures of L′ come from the rigorous number type of :mod:`.enclosures`, one walk of the
traced graph per batch of cells and chunk of examples, summed over the examples with a proven
bound on the summation's rounding:

* MSE (torch's mean over the N = n·k entries): L′ = (2/N) Σ (z − y)·z′;
* cross-entropy (mean over n): with u_k = z_k − z_y (the common shift cancels) and
  p = softmax([0, u]), L′ = (1/n) Σ_i Σ_{k≠y} p_k u′_k; p_k is increasing in u_k and decreasing in
  every other u_j, so interval bounds of u give tight bounds of p_k, whose small size near a
  trained θT makes the enclosure of L′ shrink there.

Adaptive bisection: start with 8 equal cells; each round splits the open cells (hi > 0) with the
largest contribution |C|·hi, in batches evaluated together. When the last cell stays open (a
stationary end: L′(1) ≈ 0, which no first-order cell can decide at tolerance 0), the convex end
(:func:`convex_end`) replaces the cells of [c, 1] by one whose L′ ≤ 0 follows from L″ ≥ 0 there and
L′(1) ≤ 0, with L″ enclosed by the second-order number type of :mod:`.convexity`. Work is cells × (one enclosure
walk ≈ a dozen forward passes); no activation patterns are enumerated.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import torch
from torch.func import functional_call
from torch.fx import GraphModule

from ..exact import BudgetExceeded, check_deadline, expired
from ..exact.dyadic import float_down, float_up
from ..geometry.interpreter import UnsupportedGraph, interpret, plan, reads, trace
from ..inputs.data import Dataset
from ..path import BNPolicy, Line, Motion
from .adjoint import Tape, _cells_of, kink_bound, kink_pieces, statistic_seeds, statistics_bound, unsupported
from .convexity import Curved, SecondNumbers, SecondStatisticsNumbers, loss_second_terms
from .endpoint import rise_between, slope_at_end
from .validation import MEASURED_DIFFERS, Reference, validation_points
from .enclosures import _LIB, _TINY, TM, U, Enclosure, EnclosureNumbers, Param, StatisticsComplete, StatisticsNumbers, _add_tm, _const_enclosure, _imul, _softmax_box, _up, gamma, strict_arithmetic

MIN_WIDTH = 2.0**-40
UNDERFLOW_FLOOR = 2.0**-900  # a rise bound below this is made of the enclosures' underflow guards
STALL_ROUNDS = 4  # at tol = 0, a cell whose L′ enclosure has not narrowed for this many splits in a row ...
STALL_RATIO = 0.9  # ... (each part at least this share of its parent's width) ...
STALL_SCALE = 2.0**-40  # ... and is at most this share of the cells' median |L′| bound (plus 1) is at its rounding floor
ADJOINT_MIN_KINK_LAYERS = 3  # ReLU layers from which the adjoint kink bound is the default (see prepare)
START_CELLS = 8
SCREEN_EXAMPLES = 256


@dataclass(frozen=True)
class CellBound:
    """Proven bounds on one cell [a, b]: lo ≤ L′ ≤ hi almost everywhere on it, and (when the
    enclosure's Taylor form is known) ``low`` ≤ ∫_a^b L′ and ∫_a^b max(0, L′) ≤ ``up``.

    The integrals come from the pointwise model L′(m + t) ∈ C + G·t ± E (|t| ≤ h, m the midpoint,
    h the half-width): ∫ L′ ≥ 2h(C − E) (the slope integrates to zero over the symmetric cell) and
    ∫ max(0, L′) ≤ ∫_{−h}^{h} max(0, C + E + G·t) dt, the positive part of a linear function, which
    is of second order where the interval bound |C|·hi is of first (proof step P).
    """

    a: float
    b: float
    lo: float
    hi: float
    low: float | None = None
    up: float | None = None
    high: float | None = None  # ∫ L′ ≤ high = 2h(C + E)

    @property
    def rise_share(self) -> float:
        """A proven upper bound of ∫ max(0, L′) over the cell (inf when the enclosure is not finite)."""
        if not math.isfinite(self.hi):
            return math.inf
        coarse = float_up((Fraction(self.b) - Fraction(self.a)) * Fraction(max(self.hi, 0.0)))
        return coarse if self.up is None else min(coarse, self.up)

    @property
    def gain_share(self) -> float:
        """A proven upper bound of ∫ L′ over the cell (inf when the enclosure is not finite)."""
        share = self.rise_share
        return share if self.high is None else min(share, self.high)

    @property
    def fall_share(self) -> float:
        """A proven lower bound of ∫ L′ over the cell (−inf when the enclosure is not finite)."""
        if not math.isfinite(self.lo):
            return -math.inf
        coarse = float_down((Fraction(self.b) - Fraction(self.a)) * Fraction(self.lo))
        return coarse if self.low is None else max(coarse, self.low)


def positive_part_integral(a0: Fraction, g: Fraction, h: Fraction) -> Fraction:
    """∫_{−h}^{h} max(0, a0 + g·t) dt exactly (h ≥ 0).

    >>> positive_part_integral(Fraction(1), Fraction(0), Fraction(1))
    Fraction(2, 1)
    >>> positive_part_integral(Fraction(0), Fraction(1), Fraction(1))  # a triangle of height 1
    Fraction(1, 2)
    >>> positive_part_integral(Fraction(-3), Fraction(1), Fraction(1))
    Fraction(0, 1)
    """
    f1, f2 = a0 - g * h, a0 + g * h
    if f1 >= 0 and f2 >= 0:
        return 2 * h * a0
    if f1 <= 0 and f2 <= 0:
        return Fraction(0)
    top = max(f1, f2)
    return top * top / (2 * abs(g))


@dataclass(frozen=True)
class EnclosureVerdict:
    """What the bisection proved.

    Attributes:
        status: ``monotone``, ``non_monotone`` or ``unknown``.
        rise_bound: proven upper bound on sup_{a<b} L(b) − L(a) over [0, 1] (None if no partition
            was completed).
        rise: for ``non_monotone``, L(b) − L(a) at the witness, evaluated in float64.
        rise_lower: for ``non_monotone``, the proven lower bound on that rise (> tol).
        where: the witness [a, b].
        cells: number of cells whose enclosure was evaluated.
        undecided: α-intervals where L′ ≤ 0 is not proven (hi > 0), merged, when unknown.
        reason: one sentence.
        partition: the final partition with its bounds (for plots and tests).
        convex_end: c when the convex-end certificate bounds [c, 1] in place of first-order cells
            (:func:`convex_end`): L″ ≥ k ≥ 0 there and L′(1) ≤ s₁. With s₁ ≤ 0 it proves L′ ≤ 0 on
            [c, 1]; with s₁ > 0 (a sign below the enclosure's resolution, or a rise at the end that
            tol allows) only that the rise inside [c, 1] is at most s₁²/(2k), which ``rise_bound``
            counts and ``reason`` states. None when it was not used.
    """

    status: str
    rise_bound: float | None
    rise: float | None
    rise_lower: float | None
    where: tuple[float, float] | None
    cells: int
    undecided: tuple[tuple[float, float], ...]
    reason: str
    partition: tuple[CellBound, ...] = field(default=(), repr=False)
    convex_end: float | None = None


class Unsupported(ValueError):
    """The model or the settings cannot be enclosed (the message says why)."""


class EnclosuresDisagree(RuntimeError):
    """Two enclosures of the same L′ on a cell do not meet: one of them is wrong (an internal
    error; the certificate says ``unknown`` and why, never a verdict)."""


# ----------------------------------------------------------------------------- preparing the problem


@dataclass
class _Problem:
    gm: GraphModule
    params: dict[str, Any]
    x: torch.Tensor
    y: torch.Tensor
    loss: str
    start: dict[str, torch.Tensor]
    end: dict[str, torch.Tensor]
    shell: Any
    chunk: int
    # bn=recompute: BatchNorm layers whose running statistics are re-estimated at every α
    # (id(module) → name), the line (for the independent float64 re-evaluation) and how many
    # cells share one re-estimation pass over all examples (memory)
    statistics: dict[int, str] = field(default_factory=dict)
    line: Any = None
    statistics_cells: int = 16
    # the Clarke terms of ReLU kinks bounded by a reverse walk (:mod:`.adjoint`) instead of
    # being carried forward; ``reads`` and ``output`` are that walk's graph edges and start
    adjoint: bool = False
    reads: dict = field(default_factory=dict)
    output: Any = None
    # the reverse walk is available but not the default (fewer ReLU layers than
    # ADJOINT_MIN_KINK_LAYERS, adjoint=None): the screening may choose it (see _screen)
    adjoint_optional: bool = False
    # bn=recompute with the reverse walk: the re-estimation pass defers its kinks and input
    # remainders too, and their share is bounded by a reverse walk of that pass seeded with
    # ∂L/∂(statistics) from the evaluation pass's walk (:func:`.adjoint.statistics_bound`)
    statistics_walk: bool = False
    # bn=recompute: each re-estimation pass over cells is anchored at a pass at the cells' midpoints
    # (the statistics' mean value form, :func:`.enclosures._anchored`); on with the statistics walk
    anchored: bool = False
    # the measured computation (:class:`.validation.Reference`): validation and witnesses
    reference: Any = None


def prepare(line: Line, data: Dataset, bn: BNPolicy, *, device: torch.device | None = None, memory_bytes: float | None = None,
            cells_per_batch: int = 16, batch_size: int | None = None, adjoint: bool | None = None,
            statistics_walk: bool | None = None) -> _Problem:
    """Trace the model, choose which entries move along α, and cast everything to float64.

    ``batch_size`` is the minibatch size of the curve's BatchNorm re-estimation (``bn=recompute``);
    only one batch of all the examples is enclosed (None, or ≥ n).

    ``memory_bytes`` sizes the example chunks of one walk (default: 0.4 GB on a CPU, where chunks
    whose tensors stay near the last-level cache run fastest — 784-1000-1000-10 on 2 cores: 5.4 s
    per 16 cells × 1024 examples at 64 examples per chunk against 6.4 s at 256 — and 1.5 GB on
    an accelerator, where larger kernels pay).

    ``adjoint``: bound the ReLU kinks by the reverse walk (:mod:`.adjoint`) — None: when the graph
    supports it and has at least ``ADJOINT_MIN_KINK_LAYERS`` ReLU layers (on 64-256×3-10, 17
    cells against 35, 5.2 s against 6.9 s), and with fewer ReLU layers when the screening of a
    large data set predicts it cheaper (:func:`_screen`: on 64-256-256-10 digits MLPs the cells are
    the same either way and the reverse walk costs about a third more per cell, on a
    784-1000-1000-10 MLP on 10 000 examples it halves the cells; on the digits ResNet, five ReLU
    layers behind convolutions and an average pool, 49 cells decide where the forward rule ran out
    of a 300 s budget); True: whenever the graph supports it; False: never.

    ``statistics_walk`` (``bn=recompute``): True walks the re-estimation pass backward as well
    (:func:`.adjoint.statistics_bound`: its kinks and input remainders are deferred, and bounded by
    a reverse walk seeded with ∂L/∂μ, ∂L/∂σ² from the evaluation pass's), which turns the reverse
    walk on, and anchors each pass's statistics at a pass at the cells' midpoints (their mean value
    form, :func:`.enclosures._anchored`). Not the default: on a trained digits ResNet + BN, cells of
    2⁻⁸, the last variance's value remainder was 4–8 times narrower and L′'s enclosures 11–38 times
    narrower than the forward rule's on cells of 2⁻¹⁰, but cells that narrow are not affordable on
    the whole path; on a digits CNN + BN the decision took 2.3 times as long (three passes per cell).

    Raises:
        Unsupported: the model or settings are outside what the enclosures cover.
    """
    dev = device if device is not None else line.device
    if line.caveat is not None:
        raise Unsupported(line.caveat)
    try:
        gm = trace(line.shell)
    except UnsupportedGraph as exc:
        raise Unsupported(str(exc)) from None
    start = {k: v.to(dev, torch.float64) if v.is_floating_point() else v.to(dev) for k, v in line.start.items()}
    end = {k: v.to(dev, torch.float64) if v.is_floating_point() else v.to(dev) for k, v in line.end.items()}
    # every entry moves as the loss curve moves it: one declaration (Line.motions) read by both
    params: dict[str, Any] = {}
    for k, motion in line.motions(bn).items():
        s, e = start[k], end[k]
        if motion == Motion.AFFINE and (k in line.param_names or not torch.equal(s, e)):
            params[k] = Param(s, e - s)
        else:  # held at θT's (END, or an affine entry equal at both ends), or a running statistic
            params[k] = e  # replaced by its enclosure from the re-estimation pass (RECOMPUTED)
    numbers = EnclosureNumbers(torch.zeros(1, dtype=torch.float64, device=dev), torch.zeros(1, dtype=torch.float64, device=dev))
    missing = plan(gm, numbers)
    if missing:
        raise Unsupported(f"no rigorous enclosure rule for {', '.join(missing[:4])}" + (" …" if len(missing) > 4 else ""))
    x = data.x.to(dev, torch.float64)
    y = data.y.to(dev, torch.float64) if data.loss == "mse" else data.y.to(dev)
    statistics = _recomputed(gm, line, bn, x.shape[0], batch_size)
    if memory_bytes is None:
        memory_bytes = 4e8 if x.device.type == "cpu" else 1.5e9
    widest = _widest_activation(gm, start, x[:1])
    per_example = cells_per_batch * widest * 8 * 48  # bytes for ~48 tensors of the widest activation
    chunk = max(1, min(x.shape[0], int(memory_bytes // max(per_example, 1))))
    if _reads_batch_size(gm) or _mixes_examples(line.shell, start, end, x, names=frozenset(line.param_names)):
        # outputs depend on the other examples in the batch: certify the batches the curve evaluates
        # (all examples at once unless batch_size), never chunks of the enclosure's own choosing
        chunk = x.shape[0] if not batch_size or batch_size <= 0 else min(x.shape[0], batch_size)
    # the re-estimation pass sees every example at once: fewer cells per pass when they do not fit
    stat_cells = max(1, min(cells_per_batch, int(max(memory_bytes, 1.5e9) // max(widest * 8 * 48 * x.shape[0], 1))))
    use, optional, edges, output, walk_stats = False, False, {}, None, False
    if adjoint is not False:
        ready, edges, output, layers = _adjoint_plan(gm, _probe_statistics(params, statistics), x[:1])
        # under bn=recompute the re-estimated statistics' remainders enter every BatchNorm scale ρ,
        # which the reverse walk multiplies into the cotangent layer after layer: on a trained
        # digits ResNet + BN its enclosures were 1.15–10⁶² times wider than the forward rule's on
        # cells of width 2⁻⁸–2⁻⁶ (frozen statistics: 3–8 times narrower on cells of 2⁻⁶), so
        # there it is an option the screening may take, never the default
        walk_stats = bool(statistics) and ready and statistics_walk is True
        use = ready and (adjoint is True or walk_stats or (layers >= ADJOINT_MIN_KINK_LAYERS and not statistics))
        optional = ready and not use
    return _Problem(gm, params, x, y, data.loss, start, end, line.shell, chunk, statistics, line, stat_cells, use, edges, output,
                    adjoint_optional=optional, statistics_walk=walk_stats, anchored=walk_stats)


_SHAPE_ONLY_METHODS = frozenset({"view", "reshape", "expand", "flatten", "unflatten", "new_zeros", "new_ones", "new_empty", "size"})
_SHAPE_ONLY_FUNCTIONS = (torch.reshape, torch.flatten, torch.unflatten)


def _reads_batch_size(gm: GraphModule) -> bool:
    """Whether the traced graph uses a size of a tensor as a number: a ``size()``/``.shape``/``len``
    whose value (or an entry of it) reaches anything but the shape argument of a reshape. Outputs
    of such a graph may depend on how many examples a batch holds (a per-chunk walk would see other
    batch sizes than the curve), so it is enclosed on the curve's own batches."""
    import builtins
    import operator

    def sizes(n) -> bool:
        return (n.op == "call_method" and n.target == "size") or (
            n.op == "call_function" and n.target in (getattr, builtins.len) and (n.target is builtins.len or n.args[1:2] == ("shape",)))

    def shape_only(user, node) -> bool:
        if user.op == "call_function" and user.target is operator.getitem and user.args[0] is node:
            return all(shape_only(u, user) for u in user.users)
        if user.op == "call_method" and user.target in _SHAPE_ONLY_METHODS and user.args[0] is not node:
            return True
        return user.op == "call_function" and user.target in _SHAPE_ONLY_FUNCTIONS and (user.args[:1] != (node,))

    return any(sizes(n) and not all(shape_only(u, n) for u in n.users) for n in gm.graph.nodes)


def _mixes_examples(shell: Any, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], x: torch.Tensor, m: int = 8,
                    names: frozenset[str] | None = None) -> bool:
    """Whether the model's output for one example may depend on the other examples of its batch (a
    reduction or reshape across the batch axis, batch statistics).

    A structural probe, so that neither the data nor the path can hide it: ``m`` examples evaluated
    together and one by one must agree, (1) at θ(½) on ``m`` examples spread over the data, and
    (2) twice at a random point of parameter space (every entry of ``names``, the parameters, drawn
    at its endpoints' scale; buffers at θ(½)) on random inputs of the data's shape and scale —
    where a mixing operation shows generically, even if its effect vanishes along the path or
    on these data (a batch centring of outputs that are 0, identical examples). A failure to
    evaluate one example at a time counts as mixing. Models that mix are certified on the curve's
    own batches; the differential validation (:mod:`.validation`) backs this probe up."""
    n = x.shape[0]
    m = min(m, n)
    if m < 2 and n < 2:
        return False
    mid = {k: (0.5 * s + 0.5 * end[k]) if s.is_floating_point() else end[k] for k, s in start.items()}
    g = torch.Generator(device="cpu").manual_seed(20261204)
    probes = [(mid, x[torch.linspace(0, n - 1, m).round().long()])] if m >= 2 else []
    # the data's scale from at most 4096 evenly spread examples (streamed inputs are never read whole)
    seen = x if n <= 4096 and isinstance(x, torch.Tensor) else x[torch.linspace(0, n - 1, min(n, 4096)).round().long()]
    spread = float(seen.std()) if seen.numel() > 1 else 0.0
    scale_x = spread if spread > 0 else 1.0
    for _ in range(2):
        state = dict(mid)
        for k in (names or ()):
            t = mid[k]
            if t.is_floating_point() and t.numel():
                size = max(float(start[k].abs().max()), float(end[k].abs().max()), 1e-3)
                state[k] = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype) * size
        xr = (torch.randn((max(m, 2), *x.shape[1:]), generator=g, dtype=torch.float64) * scale_x).to(x.device, x.dtype)
        probes.append((state, xr))
    try:
        with torch.no_grad():
            for state, xs in probes:
                together = functional_call(shell, state, (xs,))
                alone = torch.cat([functional_call(shell, state, (xs[i : i + 1],)) for i in range(xs.shape[0])])
                if not isinstance(together, torch.Tensor) or together.shape != alone.shape:
                    return True
                scale = together.abs().nan_to_num().max() + alone.abs().nan_to_num().max() + 1e-300
                same = ((together - alone).abs() <= 1e-9 * scale) | (together.isnan() & alone.isnan())
                if not bool(same.all()):
                    return True
    except Exception:  # cannot be evaluated one example at a time: treat as mixing
        return True
    return False


def _adjoint_plan(gm: GraphModule, params: dict[str, Any], x1: torch.Tensor) -> tuple[bool, dict, Any, int]:
    """Whether the kinks' Clarke terms can be bounded by the reverse walk (:mod:`.adjoint`): the
    graph has a ReLU node and a reverse rule for every operation on enclosures (found by a walk on
    one example and one cell). Returns (flag, the walk's edges, the output node, the ReLU nodes)."""
    probe = EnclosureNumbers(torch.full((1,), 0.5, dtype=torch.float64, device=x1.device), torch.full((1,), 0.5, dtype=torch.float64, device=x1.device))
    probe.deferred = []
    tape = Tape(probe)
    try:
        out = interpret(gm, probe, [x1], params, on_node=tape.record)
    except (UnsupportedGraph, NotImplementedError, RuntimeError, TypeError, ValueError):
        return False, {}, None, 0
    edges = reads(gm)
    outs = [n for n in gm.graph.nodes if n.op == "output"]
    target = edges[outs[0]][0][0] if outs else None
    layers = len(tape.kinks)
    if not isinstance(out, Enclosure) or layers < 1 or target not in tape.shapes:
        return False, {}, None, layers
    if unsupported(gm, set(tape.shapes)) is not None:
        return False, {}, None, layers
    z = torch.zeros(out.v.c.shape, dtype=torch.float64, device=x1.device)
    try:  # the reverse walk once on the probe: shapes it does not handle show here
        kink_bound(gm, tape, edges, target, (z, z, z))
    except Exception:  # whatever fails here keeps the forward Clarke rule, which is always available
        return False, {}, None, layers
    return True, edges, target, layers


def _probe_statistics(params: dict[str, Any], statistics: dict[int, str]) -> dict[str, Any]:
    """``params`` with the re-estimated layers' running statistics set to (0, 1) for the planning
    probe: every walk replaces them by their enclosures (:func:`_statistics`), so θT's stored values,
    which may be anything (a negative variance included), must not decide the plan."""
    out = dict(params)
    for name in statistics.values():
        prefix = f"{name}." if name else ""
        for key, fill in (("running_mean", torch.zeros_like), ("running_var", torch.ones_like)):
            if isinstance(params.get(prefix + key), torch.Tensor):  # (a layer without them is refused by its rule)
                out[prefix + key] = fill(params[prefix + key])
    return out


def _recomputed(gm: GraphModule, line: Line, bn: BNPolicy, n: int, batch_size: int | None) -> dict[int, str]:
    """The BatchNorm layers re-estimated under ``bn=recompute`` (id → name), after checking that the
    enclosed re-estimation is the one the curve performs: one train-mode pass over all the data,
    each layer called once, nothing random in train mode."""
    if not (line.has_bn and bn == BNPolicy.RECOMPUTE):
        return {}
    from torch import nn

    if batch_size is not None and 0 < batch_size < n:
        raise Unsupported(
            f"bn=recompute re-estimates the BatchNorm statistics in minibatches of {batch_size} < {n} examples; "
            "only the full-batch re-estimation (batch_size None) is enclosed"
        )
    differs = _train_mode_differs(line.shell, gm)
    if differs is not None:
        raise Unsupported(differs)
    names = {id(m): name for name, m in gm.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}
    for name, m in gm.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            raise Unsupported(f"bn=recompute runs {name} ({type(m).__name__}, p={m.p}) in train mode, which is random")
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            raise Unsupported(f"no re-estimation enclosure for {name} ({type(m).__name__})")
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.momentum is not None:
            raise Unsupported(f"{name} has momentum {m.momentum}, not the cumulative average of the re-estimation")
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in names.values():
            calls[node.target] = calls.get(node.target, 0) + 1
        if node.op == "get_attr" and any(node.target.startswith(f"{t}.") for t in names.values()):
            raise Unsupported(f"the traced model reads {node.target} directly; only BatchNorm modules are re-estimated")
    for name in names.values():
        if calls.get(name, 0) != 1:
            raise Unsupported(f"BatchNorm layer {name} is called {calls.get(name, 0)} times per forward pass (re-estimation needs exactly one)")
    return names


def _train_mode_differs(shell: Any, gm: GraphModule) -> str | None:
    """Why the train-mode pass of the re-estimation computes something the eval-mode graph does not
    show (None when both modes trace to the same graph). The re-estimation pass runs the model in
    train mode; the enclosures walk the eval-mode trace, reading only BatchNorm (and dropout)
    modules' mode, so a ``forward`` that branches on ``self.training`` or passes it to a function
    (``F.dropout(h, p, self.training)``) is refused."""
    from ..path.line import private_copy

    twin = private_copy(shell).train()
    try:
        train_gm = trace(twin)
    except UnsupportedGraph as exc:
        return f"the train-mode pass of the BatchNorm re-estimation cannot be traced ({exc})"
    if train_gm.code != gm.code:
        return (
            "the model computes differently in train mode (the BatchNorm re-estimation pass) than in eval mode: "
            "its forward reads self.training (a branch, or functional dropout/batch norm given the mode)"
        )
    return None


def _statistics(problem: _Problem, mid: torch.Tensor, rad: torch.Tensor, deadline: float | None, *, tapes: list | None = None
                ) -> dict[str, Enclosure]:
    """Enclosures of the re-estimated running statistics on every cell (keyed like the state dict):
    the re-estimation pass over all the examples, a few cells at a time. ``tapes``: a list that
    receives (first cell, end cell, numbers, :class:`.adjoint.Tape`) of each pass, walked with its
    kinks and input remainders deferred (the statistics' derivatives are then no enclosures without
    :func:`.adjoint.statistics_bound`)."""
    parts: dict[str, list[tuple[Enclosure, Enclosure]]] = {}
    # the full-batch re-estimation (the only one enclosed, see _recomputed) reads every example at once
    x = problem.x if isinstance(problem.x, torch.Tensor) else problem.x[:]
    for i in range(0, mid.shape[0], problem.statistics_cells):
        check_deadline(deadline)
        nt = StatisticsNumbers(mid[i : i + problem.statistics_cells], rad[i : i + problem.statistics_cells], problem.statistics)
        if problem.anchored and bool((nt.rad > 0).any()):
            nt.anchors = _anchors(problem, nt.mid, x)
        tape = None
        if tapes is not None:
            if nt.anchors is not None:  # the anchored values first, then the deferred pass reads them
                first = StatisticsNumbers(nt.mid, nt.rad, problem.statistics)
                first.anchors, first.values = nt.anchors, {}
                _re_estimate(problem, first, x)
                nt.values = first.values
            nt.deferred = []
            tape = Tape(nt)
            tapes.append((i, i + nt.mid.shape[0], nt, tape))
        _re_estimate(problem, nt, x, tape)
        for name in problem.statistics.values():
            if name not in nt.record:
                raise Unsupported(f"the re-estimation of BatchNorm layer {name} could not be enclosed (its variance range reaches 0?)")
            parts.setdefault(name, []).append(nt.record[name])
    out: dict[str, Enclosure] = {}
    for name, got in parts.items():
        prefix = f"{name}." if name else ""
        out[prefix + "running_mean"] = _cat([m for m, _ in got])
        out[prefix + "running_var"] = _cat([v for _, v in got])
    return out


def _anchors(problem: _Problem, mid: torch.Tensor, x: torch.Tensor) -> dict:
    """The re-estimation pass at the cells' midpoints (values only): each BatchNorm layer's (μ, v)
    there, at which the cells' pass anchors its statistics (:func:`.enclosures._anchored`)."""
    nt = StatisticsNumbers(mid, torch.zeros_like(mid), problem.statistics)
    nt.values_only = True
    nt.points = True
    nt.anchors = {}
    _re_estimate(problem, nt, x)
    return nt.anchors


def _re_estimate(problem: _Problem, nt: StatisticsNumbers, x: torch.Tensor, tape: Tape | None = None) -> None:
    """One walk of the re-estimation pass (it stops after the last BatchNorm layer); ``nt`` records.

    Each re-estimated layer's running mean enters as an enclosure (which its train-mode rule never
    reads): a layer without moving parameters right on the data would otherwise be folded into a
    constant, evaluated in eval mode with θT's statistics, and record nothing."""
    params = dict(problem.params)
    for name in problem.statistics.values():
        key = f"{name}.running_mean" if name else "running_mean"
        if isinstance(params.get(key), torch.Tensor):
            params[key] = _const_enclosure(nt, params[key].to(torch.float64))
    try:
        interpret(problem.gm, nt, [x], params, on_node=None if tape is None else tape.record)
    except StatisticsComplete:
        pass
    except UnsupportedGraph as exc:
        raise Unsupported(str(exc)) from None


def _cat(encs: list[Enclosure]) -> Enclosure:
    """Enclosures of consecutive groups of cells joined along the cell axis."""
    if len(encs) == 1:
        return encs[0]

    def join(parts: list[TM]) -> TM:
        def field_(f: str) -> torch.Tensor:
            ts = [getattr(t, f) for t in parts]
            return torch.cat([t.expand_as(p.c) for t, p in zip(ts, parts)], 0)

        return TM(field_("c"), field_("g"), field_("e"))

    return Enclosure(join([e.v for e in encs]), join([e.d for e in encs]))


class _Shapes:
    """A number type under which every float tensor is a "number" evaluated as is: records sizes."""

    name = "shape recorder"

    def __init__(self) -> None:
        self.widest = 0

    def is_number(self, obj: object) -> bool:
        return isinstance(obj, torch.Tensor) and obj.is_floating_point()

    def rule(self, kind: str, key: object) -> None:
        return None

    def fallback(self, fn, args, kwargs):
        out = fn(*args, **kwargs)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.widest = max(self.widest, int(t.numel()))
        return out


def _widest_activation(gm: GraphModule, state: dict[str, torch.Tensor], x1: torch.Tensor) -> int:
    """The largest number of entries of any tensor in one plain forward pass on one example."""
    rec = _Shapes()
    try:
        with torch.no_grad():
            interpret(gm, rec, [x1], state)
    except Exception:  # only a memory hint: fall back to the parameter sizes
        return max([int(x1.numel())] + [int(v.shape[0]) for v in state.values() if v.dim() >= 1])
    return max(rec.widest, int(x1.numel()))


# ----------------------------------------------------------------------------- enclosing L′ on cells


def _sum_tm(t: TM, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Σ over every axis but the cells: (Σc, Σg, Σe, Σ magnitude, count) in float."""
    c = t.c.expand_as(t.c).reshape(t.c.shape[0], -1)
    g = t.g.expand(t.c.shape).reshape(t.c.shape[0], -1)
    e = t.e.expand(t.c.shape).reshape(t.c.shape[0], -1)
    hh = h.reshape(-1, 1)
    mag = c.abs() + g.abs() * hh + e
    return c.sum(1), g.sum(1), e.sum(1), mag.sum(1), c.shape[1]


def _mse_terms(z: Enclosure, y: torch.Tensor, h: torch.Tensor, *, derivative: bool = True) -> tuple[TM | None, TM]:
    from .enclosures import _product, _shift

    r = _shift(z.v, -y.unsqueeze(0))
    hv = h.reshape(-1, *([1] * (z.v.c.dim() - 1)))
    return (_product(r, z.d, hv) if derivative else None), _product(r, r, hv)


def _ce_terms(z: Enclosure, y: torch.Tensor, h: torch.Tensor, *, cotangent: bool = False, derivative: bool = True
              ) -> tuple[TM | None, tuple[torch.Tensor, torch.Tensor], Any]:
    """Per example and class: Taylor models whose sum over the classes encloses Σ_k p_k·u′_k (None
    unless ``derivative``), bounds of the per-example loss, and (when ``cotangent``) ∇_z ℓ = p − e_y
    as a Taylor model, the adjoint bound's starting cotangent.

    Per example the narrower of two sums is kept: each entry p_k·u′_k enclosed on its own (p's
    Taylor model carries the logits' remainder e through |J|e per entry), or p's Taylor model at the
    logits' polynomial part plus the remainder's share for the whole example, Σ_j e_j·sup|∂F/∂z_j|
    with F = Σ p_k u′_k (:func:`_picked`), which keeps the cancellation between the classes (on
    a trained digits ResNet, mid-path cells: the terms' remainder 0.34 instead of 0.99)."""
    if z.v.c.dim() != 3:
        raise Unsupported(f"cross-entropy needs (n, classes) outputs, the model gives {tuple(z.shape)}")
    hv = h.reshape(-1, 1, 1)
    cells, n, k = z.v.c.shape
    idx = y.reshape(1, n, 1).expand(cells, n, 1)

    def gather(t: TM) -> TM:
        s = t.c.shape
        return TM(t.c.gather(-1, idx), t.g.expand(s).gather(-1, idx), t.e.expand(s).gather(-1, idx))

    u = _add_tm(z.v, gather(z.v), -1.0)
    lo, hi = u.bounds(hv)
    onehot = torch.zeros(cells, n, k, dtype=torch.bool, device=lo.device).scatter_(-1, idx, True)
    zero = torch.zeros_like(lo)
    vlo, vhi = torch.where(onehot, zero, lo), torch.where(onehot, zero, hi)
    p_lo, p_hi = _softmax_box(vlo, vhi, onehot)
    term = None
    soft = None
    if derivative:
        du = _add_tm(z.d, gather(z.d), -1.0)
        pm = (p_lo + p_hi) * 0.5
        pr = (p_hi - p_lo) * 0.5 * (1 + 4 * U) + _TINY
        s = du.c.shape
        dg = du.g.expand(s)
        dmag = du.magnitude(hv)
        # p as a constant box on the cell: p_k u′_k ∈ pm·u′ ± (pr·|u′| + rounding)
        box = TM(pm * du.c, pm * dg, _up(pm * du.e.expand(s) + pr * dmag + pm * (du.c.abs() + dg.abs()) * (2 * U)))
        # p as a Taylor model P + st ± r (:func:`_softmax_tm`): (P + st + ρ)(a + bt + σ) =
        # Pa + t(Pb + sa) + t²sb + ρ(a + bt + σ) + (P + st)σ, t² = h²/2 ± h²/2; the label's term is 0
        # (u_y = 0 identically). Per entry the narrower of the two enclosures is kept (both are sound)
        # the value remainder's share at once (step K2 of the proof note): p's Taylor model at the
        # logits' polynomial part alone (u's centre and slope, the subtraction's rounding for its
        # remainder), plus Σ_j e_j·sup|∂F/∂z_j| by the mean value theorem
        zt = TM(z.v.c, z.v.g, torch.zeros((), dtype=z.v.c.dtype, device=z.v.c.device))
        soft, free = _softmax_tm(u, hv, onehot, (p_lo, p_hi), bare=_add_tm(zt, gather(zt), -1.0).e)
        term = _picked(_taylor_terms(soft, du, dg, dmag, hv, onehot), box, hv)
        alt = _picked(_taylor_terms(free, du, dg, dmag, hv, onehot), box, hv, value_share=(z.v.e, du, p_lo, p_hi, onehot))
        # per example and cell, either sum encloses its terms (a NaN width keeps the first)
        better = (alt.g.abs() * hv + alt.e).sum(-1, keepdim=True) < (term.g.abs() * hv + term.e).sum(-1, keepdim=True)
        term = TM(torch.where(better, alt.c, term.c), torch.where(better, alt.g, term.g), torch.where(better, alt.e, term.e))
    # loss per example: log Σ_j exp(v_j) is increasing in every v_j; its sum of k terms loses up to
    # γ_k relatively, i.e. γ_k absolutely after the log (more than the library's share past ~4 000 classes)
    l_lo = torch.logsumexp(vlo, -1)
    l_hi = torch.logsumexp(vhi, -1)
    l_lo = l_lo - ((l_lo.abs() + 1.0) * _LIB * 8 + 2 * gamma(k + 2))
    l_hi = l_hi + ((l_hi.abs() + 1.0) * _LIB * 8 + 2 * gamma(k + 2))
    return term, (l_lo, l_hi), _ce_cotangent(u, hv, onehot, (p_lo, p_hi), soft) if cotangent else None


def _taylor_terms(soft: tuple[torch.Tensor, torch.Tensor, torch.Tensor], du: TM, dg: torch.Tensor, dmag: torch.Tensor,
                  hv: torch.Tensor, onehot: torch.Tensor) -> TM:
    """The entries p_k·u′_k (k ≠ y; zero on the label's) with p as the Taylor model ``soft`` =
    P + st ± ρ (:func:`_softmax_tm`) and u′ as ``du`` = a + bt ± σ: (P + st + ρ)(a + bt + σ) =
    Pa + t(Pb + sa) + t²sb + ρ(a + bt + σ) + (P + st)σ, t² = h²/2 ± h²/2."""
    pc, ps, prr = soft
    s = du.c.shape
    hh = hv * hv * 0.5
    sb = ps * dg
    tc = pc * du.c + hh * sb
    tg = pc * dg + ps * du.c
    rnd = (pc.abs() * (du.c.abs() + dg.abs()) + ps.abs() * (du.c.abs() + dg.abs()) + hh * sb.abs()) * (4 * U)
    te = _up(hh * sb.abs() * (1 + 2 * U) + prr * dmag + (pc.abs() + ps.abs() * hv) * du.e.expand(s) * (1 + 4 * U) + rnd)
    zero = torch.zeros((), dtype=tc.dtype, device=tc.device)
    return TM(torch.where(onehot, zero, tc), torch.where(onehot, zero, tg), torch.where(onehot, zero, te))


def _picked(taylor: TM, box: TM, hv: torch.Tensor, value_share: tuple | None = None) -> TM:
    """Per entry the narrower of the Taylor form and the box form (both enclose p_k·u′_k).

    ``value_share`` = (e, du, p_lo, p_hi, onehot): the Taylor form's p was taken at the logits' polynomial
    part ẑ(t) = c + gt alone, without their remainder δ (|δ| ≤ e). With S the entries that keep the
    Taylor form, F(w) = Σ_{k∈S} softmax_k(w)·u′_k at fixed t, and z = ẑ + δ, the mean value theorem
    gives F(z) = F(ẑ) + Σ_j δ_j·∂F/∂w_j(ξ), ξ between ẑ and z (in the cell's box of the logits), with
    ∂F/∂w_j = p_j(1[j∈S]·u′_j − Σ_{k∈S} p_k u′_k) (every class j, u′_y = 0): so the entries of S
    need, besides their own remainders, Σ_j e_j·p̄_j·sup|1[j∈S]·u′_j − Σ_{k∈S} p_k u′_k| over the
    boxes of p and u′, added to the label's entry (proof step K2). The entries outside S use p's
    box, which holds p(z) itself. u′ here is what ``du`` encloses: under the reverse walk the walk
    with the midpoint slopes (the identities of :mod:`.adjoint` then bound the rest)."""
    keep = (taylor.g.abs() * hv + taylor.e) < (box.g.abs() * hv + box.e)
    c, g, e = torch.where(keep, taylor.c, box.c), torch.where(keep, taylor.g, box.g), torch.where(keep, taylor.e, box.e)
    if value_share is None:
        return TM(c, g, e)
    ev, du, p_lo, p_hi, onehot = value_share
    k = e.shape[-1]
    g_k = gamma(k + 4)
    zero = torch.zeros((), dtype=c.dtype, device=c.device)
    dlo, dhi = du.bounds(hv)
    inside = keep & ~onehot
    alo, ahi = torch.where(inside, dlo, zero), torch.where(inside, dhi, zero)  # 1[j∈S]·u′_j
    s_lo, s_hi = _interval_dot(p_lo, p_hi, alo, ahi, g_k)  # Σ_{k∈S} p_k u′_k (p's box is 0 at y)
    sup = torch.maximum(ahi - s_lo, s_hi - alo) * (1 + 4 * U)  # ≥ |a − s| for a ∈ [alo, ahi], s ∈ [s_lo, s_hi]
    p_bar = torch.where(onehot, _label_upper(p_lo, g_k).expand(p_hi.shape), p_hi)
    share = _up((ev.expand(e.shape) * p_bar * sup).sum(-1, keepdim=True) * (1 + g_k))
    return TM(c, g, torch.where(onehot, e + share, e))


def _softmax_tm(u: TM, hv: torch.Tensor, onehot: torch.Tensor, p_cell: tuple[torch.Tensor, torch.Tensor], *,
                second_order: bool = True, bare: torch.Tensor | None = None) -> Any:
    """p = softmax(u) on the entries k ≠ y as a Taylor model on the cells (centre, slope, radius;
    zero on the label's entry).

    Only the value model of u = z − z_y is used (the derivative walk is not an enclosure of u′ when
    kinks are deferred). With u(m + t) = ū + ĝt + δ, |δ| ≤ e, and p smooth in u, the mean value
    theorem gives p(u) = p(ū) + J(ξ)(ĝt + δ) with ξ in the cell's box of u and
    J_kj = p_k(1[k = j] − p_j) (step J/K of the proof note): so p ∈ P(ū) + t·[J]ĝ ± |[J]|e, with
    [J]ĝ = [p]_k(ĝ_k − Σ_j [p]_j ĝ_j) in interval arithmetic and |J|e ≤ p̄_k(e_k + Σ_j p̄_j e_j).

    Per entry the narrower of that and a second-order form is kept (both enclose p with the same
    centre): p(ū + ĝt + δ) = p(ū + ĝt) + (the |J|e term above), and along the line φ(t) = p_k(ū + ĝt),
    Taylor with Lagrange remainder gives φ(t) = p_k(ū) + t·J(ū)ĝ + (t²/2)φ″(τ), |τ| ≤ |t|, where

        φ″ = p_k[(ĝ_k − ⟨p, ĝ⟩)² − Var_p(ĝ)],   Var_p(ĝ) = Σ_j p_j(ĝ_j − ⟨p, ĝ⟩)²

    (d⟨p, ĝ⟩/dt = Var_p(ĝ); sums over every class, ĝ_y = 0) at a point of the cell's box. Both
    bracketed terms are ≥ 0, so |φ″| ≤ p̄_k·max(A_k, V) with A_k = max over ⟨p, ĝ⟩ ∈ [S] of
    (ĝ_k − ⟨p, ĝ⟩)² (an end of the interval S = Σ_j [p]_j ĝ_j) and V = Σ_j p̄_j(ĝ_j − a)² ≥ Var_p(ĝ)
    for any a (the variance minimises Σ_j p_j(ĝ_j − a)² over a; p̄_y = min(1, 1 − Σ_{k≠y} p_k lower)).
    The slope J(ū)ĝ is then taken at the centre's tight box of p: its width, not the cell's, joins
    the radius, which is first order in h where the mean value form's is second order only through
    the cell's box (on a 784-1000-1000-10 MLP the Jacobian share of the radius is 3.7× smaller on
    cells of width 1/16). ``second_order=False``: the mean value form alone (for comparison).
    ``bare``: the remainder of a second model of u with the same centre and slope (the logits'
    polynomial part, its remainder the subtraction's rounding alone): both triples are returned,
    the second computed as if u.e were ``bare`` (everything but the |J|e term is shared)."""
    k = onehot.shape[-1]
    zero = torch.zeros_like(onehot, dtype=u.c.dtype)
    full = onehot.shape
    uc = torch.where(onehot, zero, u.c.expand(full))
    ug = torch.where(onehot, zero, u.g.expand(full))
    ue = torch.where(onehot, zero, u.e.expand(full))
    pad = uc.abs() * (4 * U) + _TINY
    pm_lo, pm_hi = _softmax_box(uc - pad, uc + pad, onehot)
    p_lo, p_hi = p_cell
    g_k = gamma(k + 2)
    s_lo, s_hi, jlo, jhi = _jacobian_times(p_lo, p_hi, ug, g_k)
    jlo, jhi = torch.where(onehot, zero, jlo), torch.where(onehot, zero, jhi)
    def spread(e: torch.Tensor) -> torch.Tensor:  # |J|e ≤ p̄_k(e_k + Σ_j p̄_j e_j)
        return p_hi * (e + (p_hi * e).sum(-1, keepdim=True) * (1 + g_k)) * (1 + 4 * U)

    deltas = [spread(ue)] if bare is None else [spread(ue), spread(torch.where(onehot, zero, bare.expand(full)))]
    c = (pm_lo + pm_hi) * 0.5
    sl = (jlo + jhi) * 0.5
    common = (pm_hi - pm_lo) * 0.5 * (1 + 4 * U) + c.abs() * (2 * U)
    jac = ((jhi - jlo) * 0.5 * (1 + 4 * U) + sl.abs() * (2 * U)) * hv
    if not second_order:
        outs = [(torch.where(onehot, zero, c), torch.where(onehot, zero, sl), torch.where(onehot, zero, _up(common + d + jac))) for d in deltas]
        return outs[0] if bare is None else tuple(outs)
    # the second-order form: the slope J(ū)ĝ on the centre's box of p, then (h²/2)·p̄_k·max(A_k, V)
    _, _, j0lo, j0hi = _jacobian_times(pm_lo, pm_hi, ug, g_k)
    sl0 = (j0lo + j0hi) * 0.5
    a_k = torch.maximum((ug - s_lo).abs(), (ug - s_hi).abs())
    mid_s = (s_lo + s_hi) * 0.5
    p_all = torch.where(onehot, _label_upper(p_lo, g_k).expand(full), p_hi)
    var = (p_all * (ug - mid_s).square()).sum(-1, keepdim=True)
    curve = p_hi * torch.maximum(a_k.square(), var) * (hv * hv * 0.5) * (1 + 2 * gamma(k + 16))
    jac0 = ((j0hi - j0lo) * 0.5 * (1 + 4 * U) + sl0.abs() * (2 * U)) * hv + curve
    c = torch.where(onehot, zero, c)
    outs = []
    for d in deltas:
        base = common + d
        r, r0 = base + jac, base + jac0
        second = r0 < r
        outs.append((c, torch.where(onehot, zero, torch.where(second, sl0, sl)), torch.where(onehot, zero, _up(torch.where(second, r0, r)))))
    return outs[0] if bare is None else tuple(outs)


def _interval_dot(p_lo: torch.Tensor, p_hi: torch.Tensor, a_lo: torch.Tensor, a_hi: torch.Tensor, g_k: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_k p_k a_k over the last axis for p_k ∈ [p_lo, p_hi], a_k ∈ [a_lo, a_hi]: [s_lo, s_hi], the
    interval products rounded outward and their sum widened by γ (``g_k``) of its magnitudes and 2⁻¹⁰⁰⁰."""
    qlo, qhi = _imul(p_lo, p_hi, a_lo, a_hi)
    s_lo = qlo.sum(-1, keepdim=True) - qlo.abs().sum(-1, keepdim=True) * g_k - _TINY
    s_hi = qhi.sum(-1, keepdim=True) + qhi.abs().sum(-1, keepdim=True) * g_k + _TINY
    return s_lo, s_hi


def _label_upper(p_lo: torch.Tensor, g_k: float) -> torch.Tensor:
    """An upper bound of p_y = 1 − Σ_{k≠y} p_k (p_lo is 0 at y): the sum bounded below by γ (``g_k``),
    4u for the product's and the difference's rounding."""
    return (1.0 - p_lo.sum(-1, keepdim=True) * (1 - g_k) + 4 * U).clamp(max=1.0)


def _jacobian_times(p_lo: torch.Tensor, p_hi: torch.Tensor, ug: torch.Tensor, g_k: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For p in the box [p_lo, p_hi]: ⟨p, ĝ⟩ ∈ [s_lo, s_hi] (a sum of K interval products, γ_{K+2}
    and 2⁻¹⁰⁰⁰ outward) and (Jĝ)_k = p_k(ĝ_k − ⟨p, ĝ⟩) ∈ [j_lo, j_hi], all rounded outward."""
    s_lo, s_hi = _interval_dot(p_lo, p_hi, ug, ug, g_k)
    qlo, qhi = ug - s_hi, ug - s_lo
    qpad = (qlo.abs() + qhi.abs()) * U
    jlo, jhi = _imul(p_lo, p_hi, qlo - qpad, qhi + qpad)
    return s_lo, s_hi, jlo, jhi


def _ce_cotangent(u: TM, hv: torch.Tensor, onehot: torch.Tensor, p_cell: tuple[torch.Tensor, torch.Tensor],
                  soft: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """∇_z ℓ = p − e_y as a Taylor model on the cells (centre, slope, radius), for the adjoint bound:
    p on k ≠ y from :func:`_softmax_tm` (``soft``, if already computed), and ∂ℓ/∂z_y = p_y − 1 =
    −Σ_{k≠y} p_k."""
    k = onehot.shape[-1]
    c, sl, r = soft if soft is not None else _softmax_tm(u, hv, onehot, p_cell)
    g_k = gamma(k + 2)
    # the label's entry: minus the sum of the others (centre, slope and radius alike)
    c = torch.where(onehot, -c.sum(-1, keepdim=True), c)
    sl = torch.where(onehot, -sl.sum(-1, keepdim=True), sl)
    mag = (c.abs() + sl.abs()).sum(-1, keepdim=True) * g_k
    r = torch.where(onehot, r.sum(-1, keepdim=True) * (1 + g_k) + mag, r)
    return c, sl, _up(r + _TINY)


def _mse_cotangent(z: Enclosure, y: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z − y as a Taylor model on the cells (centre, slope, radius): L′ = (2/N)Σ(z − y)·z′, so this
    is ∇_z of the summed terms in the units :func:`enclose` scales by 2/N."""
    c = z.v.c - y.unsqueeze(0)
    r = z.v.e + (c.abs() + y.abs().unsqueeze(0)) * (2 * U) + _TINY
    return c, z.v.g, _up(r)


def _chunk_terms(problem: _Problem, numbers: EnclosureNumbers, params: dict[str, Any], xs: torch.Tensor, ys: torch.Tensor,
                 rad: torch.Tensor, *, deferred: bool, seeds: dict | None = None
                 ) -> tuple[TM, torch.Tensor, torch.Tensor, torch.Tensor | None, dict | None] | None:
    """One walk of the graph on a chunk of examples: the per-entry Taylor models of L′'s terms, the
    bounds of the loss terms, (``deferred``) the adjoint bound of the kinks, which the terms then
    need, and that bound's ``parts`` (:func:`.adjoint.kink_bound`; None without it); None when the
    bound's reverse walk fails on this graph. ``seeds``: the statistics' sums of
    :func:`.adjoint.kink_bound`, accumulated over the chunks."""
    tape = None
    if deferred:
        numbers.deferred = []
        tape = Tape(numbers, frozenset(problem.statistics.values()) if seeds is not None else frozenset())
    try:
        out = interpret(problem.gm, numbers, [xs], params, on_node=None if tape is None else tape.record)
    except UnsupportedGraph as exc:
        raise Unsupported(str(exc)) from None
    finally:
        numbers.deferred = None
    if isinstance(out, (tuple, list)) or not isinstance(out, Enclosure):
        raise Unsupported("the model must return one tensor that depends on the parameters")
    if problem.loss == "mse":
        if tuple(out.shape) != tuple(ys.shape):
            raise Unsupported(f"model output shape {tuple(out.shape)} does not match targets {tuple(ys.shape)}")
        dl, ll = _mse_terms(out, ys, rad, derivative=not numbers.values_only)
        lo_l, hi_l = ll.bounds(rad.reshape(-1, *([1] * (ll.c.dim() - 1))))
        lo_l = lo_l.clamp(min=0.0)
        cot = _mse_cotangent(out, ys, rad) if deferred else None
    else:
        dl, (lo_l, hi_l), cot = _ce_terms(out, ys, rad, cotangent=deferred, derivative=not numbers.values_only)
    if tape is None:
        return dl, lo_l, hi_l, None, None
    parts: dict[str, Any] = {}
    try:
        # the statistics' sums only when gathered; the shares apart whenever L′ is asked for
        extra: dict[str, Any] = {} if seeds is None else {"seeds": seeds}
        if dl is not None:
            extra["parts"] = parts
        kb = kink_bound(problem.gm, tape, problem.reads, problem.output, cot, **extra)
    except Exception:  # any failure of the reverse walk: the caller falls back to the forward rule
        return None
    return dl, lo_l, hi_l, kb, parts or None


def cell_numbers(a: list[float], b: list[float], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, h), float64 tensors of the cells' midpoints and radii with [m − h, m + h] ⊇ [a, b] exactly:
    m = fl((a + b)/2) and h the radius about it rounded up (exact for dyadic cells, as the
    bisection's; outward by an ulp for others, e.g. [0.2, 0.45]).

    Raises:
        ValueError: a cell outside [0, 1], or with a > b (the rules' rounding arguments assume |m| ≤ 1:
            enclose a longer line by rescaling it, e.g. the line from θ0 to θ(a) at α = 1).
    """
    mids, rads = [], []
    for ai, bi in zip(a, b):
        if not (0.0 <= ai <= bi <= 1.0):
            raise ValueError(f"cells must lie in [0, 1] (a ≤ b); got [{ai!r}, {bi!r}]")
        m = (ai + bi) / 2
        h = max(Fraction(bi) - Fraction(m), Fraction(m) - Fraction(ai))
        hf = float(h)
        mids.append(m)
        rads.append(hf if Fraction(hf) >= h else math.nextafter(hf, math.inf))
    return (torch.tensor(mids, dtype=torch.float64, device=device), torch.tensor(rads, dtype=torch.float64, device=device))


def enclose(problem: _Problem, a: list[float], b: list[float], deadline: float | None = None) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Proven bounds of L′ and of L on each cell [a_i, b_i]: ([(lo, hi) of L′], [(lo, hi) of L])."""
    d, l, _ = enclose_cells(problem, a, b, deadline)
    return d, l


def enclose_values(problem: _Problem, points: list[float], deadline: float | None = None) -> list[tuple[float, float]]:
    """Proven bounds of L at each point, by a walk for values alone
    (:attr:`~.enclosures.EnclosureNumbers.values_only`: the Linear and ReLU rules skip the
    derivative, every value is computed by the same operations as in :func:`enclose`; about half
    the work on wide layers). Should that walk fail on an operation, the full walk of
    :func:`enclose` answers instead."""
    try:
        return enclose_cells(problem, points, points, deadline, values_only=True)[1]
    except (BudgetExceeded, Unsupported, UnsupportedGraph):
        raise
    except Exception:  # noqa: BLE001 - a rule without a values-only path: the full walk is always available
        return enclose(problem, points, points, deadline)[1]


def enclose_cells(problem: _Problem, a: list[float], b: list[float], deadline: float | None = None, *, values_only: bool = False
                  ) -> tuple[list[tuple[float, float]], list[tuple[float, float]], list[tuple[float, float]]]:
    """:func:`enclose`, and per cell (low, up): proven bounds low ≤ ∫ L′ and ∫ max(0, L′) ≤ up over
    the cell, from the enclosure's Taylor form (see :class:`CellBound`). ``values_only``: the bounds
    of L alone (those of L′ and its integrals are then infinite; see :func:`enclose_values`)."""
    dev = problem.x.device
    if problem.statistics_walk and not values_only and len(a) > problem.statistics_cells and any(bi > ai for ai, bi in zip(a, b)):
        # the re-estimation passes' tapes are kept until every chunk has given its seeds: as many
        # cells at a time as one pass holds
        k = problem.statistics_cells
        parts = [enclose_cells(problem, a[i : i + k], b[i : i + k], deadline) for i in range(0, len(a), k)]
        return tuple([r for part in parts for r in part[j]] for j in range(3))  # type: ignore[return-value]
    mid, rad = cell_numbers(a, b, dev)
    numbers = EnclosureNumbers(mid, rad)
    numbers.values_only = values_only
    numbers.points = values_only and not bool((rad > 0).any()) and not bool((mid.abs() > 1).any())
    cells = len(a)
    acc = torch.zeros(cells, 4, dtype=torch.float64, device=dev)  # Σc, Σg, Σe, Σmag of L′ terms
    lacc = torch.zeros(cells, 2, dtype=torch.float64, device=dev)  # Σ lower / upper of loss terms
    lmag = torch.zeros(cells, dtype=torch.float64, device=dev)
    count = 0
    chunks = 0
    n = problem.x.shape[0]
    params = problem.params
    # points (the validation's α, L′(1)) have no mixed neurons beyond rounding ties: the forward
    # Clarke rule serves them, without the reverse walk's cost
    adjoint = problem.adjoint and bool((rad > 0).any()) and not values_only
    walked = problem.statistics_walk and adjoint and bool(problem.statistics)
    tapes: list | None = [] if walked else None
    seeds: dict | None = {} if walked else None
    if problem.statistics:
        params = {**params, **_statistics(problem, mid, rad, deadline, tapes=tapes)}
    kinks = torch.zeros(cells, dtype=torch.float64, device=dev)  # the adjoint bound of the Clarke terms
    sources = torch.zeros(cells, dtype=torch.float64, device=dev)  # its sources' share alone
    pairs: list | None = []  # the kinks' pairs of every chunk (see kink_pieces), None once one lacks them
    for start in range(0, n, problem.chunk):
        check_deadline(deadline)
        xs = problem.x[start : start + problem.chunk]
        ys = problem.y[start : start + problem.chunk]
        # the adjoint bound first; should its reverse walk fail on this graph, the chunk is walked
        # again with the forward Clarke rule (the deferred walk's L′ is no enclosure without it)
        got = _chunk_terms(problem, numbers, params, xs, ys, rad, deferred=True, seeds=seeds) if adjoint else None
        if got is None and walked:  # the statistics' derivatives were deferred: start again without that
            return enclose_cells(replace(problem, statistics_walk=False), a, b, deadline)
        dl, lo_l, hi_l, kb, parts = got if got is not None else _chunk_terms(problem, numbers, params, xs, ys, rad, deferred=False)
        if kb is not None:
            kinks += kb
        if parts is None or parts.get("pairs") is None:
            pairs = None
        elif pairs is not None:
            sources += parts["sources"]
            pairs.extend(parts["pairs"])
        if dl is not None:
            sc, sg, se, sm, cnt = _sum_tm(dl, rad)
            acc += torch.stack([sc, sg, se, sm], 1)
        else:  # values only: the loss sum alone (n terms per cell)
            cnt = lo_l[0].numel()
        lacc += torch.stack([lo_l.reshape(cells, -1).sum(1), hi_l.reshape(cells, -1).sum(1)], 1)
        lmag += (lo_l.abs() + hi_l.abs()).reshape(cells, -1).sum(1)
        count += cnt
        chunks += 1
    if walked:
        try:
            kinks += _statistics_share(problem, numbers, tapes, seeds)
        except BudgetExceeded:
            raise
        except Exception:  # noqa: BLE001 - any failure of that walk: the statistics again, with their Clarke remainders
            return enclose_cells(replace(problem, statistics_walk=False), a, b, deadline)
        chunks += 1  # one more term in the kinks' sum
    scale = Fraction(2, problem.y.numel()) if problem.loss == "mse" else Fraction(1, n)
    lscale = Fraction(1, problem.y.numel()) if problem.loss == "mse" else Fraction(1, n)
    g_sum = gamma(count + chunks + 4) * 2.0
    out_d: list[tuple[float, float]] = []
    out_l: list[tuple[float, float]] = []
    out_i: list[tuple[float, float]] = []
    rows = acc.tolist()
    krows = _up(kinks * (1 + gamma(chunks + 2))).tolist()
    swept = pairs is not None and adjoint and not walked and not values_only
    srows = _up(sources * (1 + gamma(chunks + 2))).tolist() if swept else None
    lrows = lacc.tolist()
    lm = lmag.tolist()
    pieces = kink_pieces(rad, pairs) if swept else [None] * cells
    for i in range(cells):
        if values_only:
            out_d.append((-math.inf, math.inf))
            out_i.append((-math.inf, math.inf, math.inf))
        else:
            # two enclosures of L′ on the cell, both sound: the kinks' share as one t-independent
            # radius (the Clarke bound), and piece by piece along the cell (kink_pieces); their
            # intersection is kept
            h = Fraction(rad[i].item())
            cands = [_cell_bounds(rows[i], krows[i], None, h, scale, g_sum)]
            if pieces[i] is not None:
                cands.append(_cell_bounds(rows[i], srows[i], pieces[i], h, scale, g_sum))
            d, integrals = _intersect(cands)
            out_d.append(d)
            out_i.append(integrals)
        llo, lhi = lrows[i]
        if not all(math.isfinite(v) for v in (llo, lhi, lm[i])):
            out_l.append((-math.inf, math.inf))
        else:
            pad = Fraction(lm[i]) * Fraction(g_sum)
            out_l.append((float_down(lscale * (Fraction(llo) - pad)), float_up(lscale * (Fraction(lhi) + pad))))
    return out_d, out_l, out_i


_INF_CELL = ((-math.inf, math.inf), (-math.inf, math.inf, math.inf))


def _cell_bounds(row: list[float], extra: float, swept: tuple[torch.Tensor, ...] | None, h: Fraction, scale: Fraction,
                 g_sum: float) -> tuple[tuple[float, float], tuple[float, float, float]]:
    """One enclosure of L′ on a cell and of its integrals: ((lo, hi), (low ≤ ∫L′, up ≥ ∫max(0, L′),
    up ≥ ∫L′)), from the summed terms ``row`` = (C, G, E, Σ magnitudes) — L′(mid + t) ∈
    scale·(C + G·t ± E′) for |t| ≤ h, E′ = E plus ``extra`` (a t-independent share: the kinks' and
    the sources', or the sources' alone with ``swept``) plus the sums' rounding (|t|·γΣ|g| ≤ γΣ mag) — and, when
    ``swept`` (pieces of :func:`.adjoint.kink_pieces`) is given, the kinks' share piece by piece."""
    c, g, e, m = row
    if not all(math.isfinite(v) for v in (c, g, e, m, extra)):
        return _INF_CELL
    err = (Fraction(e) + Fraction(extra)) * (1 + Fraction(g_sum)) + Fraction(m) * Fraction(g_sum) * 2
    centre, slope = Fraction(c), Fraction(g)
    if swept is None:
        width = abs(slope) * h + err
        low = scale * 2 * h * (centre - err)
        up = scale * positive_part_integral(centre + err, slope, h)
        return ((float_down(scale * (centre - width)), float_up(scale * (centre + width))),
                (float_down(low), float_up(up), float_up(scale * 2 * h * (centre + err))))
    a, b, s_up, b_up, s_lo, b_lo = swept
    if not all(bool(torch.isfinite(t).all()) for t in (s_up, b_up, s_lo, b_lo)):
        return _INF_CELL
    # per piece [a, b] of [−h, h]: L′ ≤ scale·(C + E′ + A_up + (G + B_up)·t) and
    # ≥ scale·(C − E′ + A_lo + (G + B_lo)·t), affine on the piece: its ends, its integral
    # (trapezoid) and that of its positive part, in float64; each value padded by 8u times the sum
    # of its terms' magnitudes (a handful of roundings), each sum of K values by γ_{K+4} times the
    # sum of their magnitudes
    cf, gf, ef = float(centre), float(slope), float_up(err)
    hf = float(h)
    top_a, top_b = (cf + ef) + s_up + (gf + b_up) * a, (cf + ef) + s_up + (gf + b_up) * b
    bot_a, bot_b = (cf - ef) + s_lo + (gf + b_lo) * a, (cf - ef) + s_lo + (gf + b_lo) * b
    size = abs(cf) + ef + abs(gf) * hf
    pad_up = (size + s_up.abs() + b_up.abs() * hf) * (8 * U) + _TINY
    pad_lo = (size + s_lo.abs() + b_lo.abs() * hf) * (8 * U) + _TINY
    top_a, top_b = top_a + pad_up, top_b + pad_up
    bot_a, bot_b = bot_a - pad_lo, bot_b - pad_lo
    hi = float(torch.maximum(top_a, top_b).max())
    lo = float(torch.minimum(bot_a, bot_b).min())
    diff = b - a  # within a relative u of the piece's length
    long, short = diff * (1 + 2 * U), diff * (1 - 2 * U)  # ≥ and ≤ the length
    k = diff.numel()
    g_k = gamma(k + 4)

    def total(t: torch.Tensor, up_side: bool) -> float:
        s, mag = float(t.sum()), float(t.abs().sum())
        if mag == 0.0:  # every term exactly zero: so is the sum
            return 0.0
        return s + mag * g_k + _TINY if up_side else s - mag * g_k - _TINY

    # an affine function's integral is its length times its mean (each product rounded: 4u)
    mean_up, mean_lo = (top_a + top_b) * 0.5, (bot_a + bot_b) * 0.5
    trap_up = torch.where(mean_up >= 0, long, short) * mean_up
    trap_lo = torch.where(mean_lo >= 0, short, long) * mean_lo
    trap_up, trap_lo = trap_up + trap_up.abs() * (4 * U), trap_lo - trap_lo.abs() * (4 * U)
    # its positive part: the trapezoid where both ends are ≥ 0, else at most length·max(ends, 0)/2
    # (the triangle length·top²/(2(|f1| + |f2|)), bounded)
    both = (top_a >= 0) & (top_b >= 0)
    tri = long * torch.maximum(top_a, top_b).clamp(min=0.0) * 0.5
    pos = torch.where(both, trap_up, tri * (1 + 4 * U))
    low = total(trap_lo, False)
    up = total(pos, True)
    up3 = total(trap_up, True)
    return ((float_down(scale * Fraction(lo)), float_up(scale * Fraction(hi))),
            (float_down(scale * Fraction(low)), float_up(scale * Fraction(up)), float_up(scale * Fraction(up3))))


def _intersect(cands: list[tuple[tuple[float, float], tuple[float, float, float]]]
               ) -> tuple[tuple[float, float], tuple[float, float, float]]:
    """The intersection of enclosures of the same L′ and its integrals on one cell (each sound, so
    their intersection is). Disjoint ones would mean that one of them is wrong: that raises
    :class:`EnclosuresDisagree`."""
    lo = max(c[0][0] for c in cands)
    hi = min(c[0][1] for c in cands)
    low = max(c[1][0] for c in cands)
    up = min(c[1][1] for c in cands)
    up3 = min(c[1][2] for c in cands)
    if lo > hi or low > up3:
        raise EnclosuresDisagree(f"the enclosures of L′ on a cell disagree: {cands}")
    return (lo, hi), (low, up, up3)


def _statistics_share(problem: _Problem, numbers: EnclosureNumbers, tapes: list, sums: dict) -> torch.Tensor:
    """The re-estimation passes' deferred share of L′ per cell (:func:`.adjoint.statistics_bound`),
    seeded with ∂L/∂(statistics) from the evaluation pass's sums over every chunk."""
    seeds = statistic_seeds(numbers, problem.gm, sums)  # a layer the walk needs without a seed raises there
    out = torch.zeros(numbers.mid.shape[0], dtype=torch.float64, device=numbers.mid.device)
    for i, j, nt, tape in tapes:
        part = {name: (_cells_of(da, i, j), _cells_of(db, i, j)) for name, (da, db) in seeds.items()}
        out[i:j] += statistics_bound(problem.gm, tape, problem.reads, part)
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError("the statistics walk's bound is not finite")
    return out


class _NoSecond(Exception):
    """The model has an operation without a second-derivative rule (or the walk failed)."""


def second_walks(problem: _Problem, a: list[float], b: list[float], deadline: float | None = None):
    """The Curved outputs (:mod:`.convexity`) on the cells [a_i, b_i], chunk by chunk of examples:
    yields (outputs, targets of the chunk). Under ``bn=recompute`` the re-estimation pass over all
    the examples is walked in the same number type first (:class:`.convexity.SecondStatisticsNumbers`).

    Raises:
        _NoSecond: an operation without a second-derivative rule.
    """
    dev = problem.x.device
    mid, rad = cell_numbers(a, b, dev)
    params = problem.params
    if problem.statistics:
        check_deadline(deadline)
        stats = SecondStatisticsNumbers(mid, rad, problem.statistics)
        x_all = problem.x if isinstance(problem.x, torch.Tensor) else problem.x[:]
        try:
            interpret(problem.gm, stats, [x_all], problem.params)
        except StatisticsComplete:
            pass
        except (UnsupportedGraph, NotImplementedError) as exc:
            raise _NoSecond(str(exc)) from None
        params = dict(params)
        for name in problem.statistics.values():
            if name not in stats.record:
                raise _NoSecond(f"the re-estimation of {name} was not enclosed")
            prefix = f"{name}." if name else ""
            params[prefix + "running_mean"], params[prefix + "running_var"] = stats.record[name]
    numbers = SecondNumbers(mid, rad)
    for start in range(0, problem.x.shape[0], problem.chunk):
        check_deadline(deadline)
        xs = problem.x[start : start + problem.chunk]
        ys = problem.y[start : start + problem.chunk]
        try:
            out = interpret(problem.gm, numbers, [xs], params)
        except (UnsupportedGraph, NotImplementedError) as exc:
            raise _NoSecond(str(exc)) from None
        if not isinstance(out, Curved):
            raise _NoSecond("the model must return one tensor that depends on the parameters")
        yield out, ys


def enclose_second(problem: _Problem, a: list[float], b: list[float], deadline: float | None = None) -> list[tuple[float, float]] | None:
    """Proven bounds (lo, hi) of L″ on each cell [a_i, b_i] (:mod:`.convexity`): lo ≤ L″ ≤ hi at every
    α of the cell, and L is C² on the cell, whenever lo or hi is finite (±∞ where a possible ReLU
    kink or an overflow leaves L″ unbounded). None when the model has an operation without a
    second-derivative rule."""
    dev = problem.x.device
    rad = cell_numbers(a, b, dev)[1]
    acc = torch.zeros(len(a), 3, dtype=torch.float64, device=dev)
    count = chunks = 0
    n = problem.x.shape[0]
    try:
        for out, ys in second_walks(problem, a, b, deadline):
            lo, hi, mag = loss_second_terms(out, ys, rad, problem.loss)
            acc += torch.stack([lo, hi, mag], 1)
            count += int(out.mid[0].numel()) if problem.loss == "mse" else int(out.mid.shape[1])
            chunks += 1
    except (_NoSecond, ValueError):
        return None
    scale = Fraction(2, problem.y.numel()) if problem.loss == "mse" else Fraction(1, n)
    g_sum = Fraction(gamma(count + chunks + 4)) * 2
    out_b: list[tuple[float, float]] = []
    for lo, hi, mag in acc.tolist():
        if not all(math.isfinite(v) for v in (lo, hi, mag)):
            out_b.append((-math.inf, math.inf))
            continue
        pad = Fraction(mag) * g_sum + Fraction(_TINY)
        out_b.append((float_down(scale * (Fraction(lo) - pad)), float_up(scale * (Fraction(hi) + pad))))
    return out_b


@dataclass(frozen=True)
class ConvexEnd:
    """What :func:`convex_end` proved on the last stretch [c, 1] of the path.

    Attributes:
        c: the left end (1 − 2⁻ᵏ).
        bound: the cell [c, 1] with its proven bounds: hi = min(0, hi of L′(1)) and ∫ max(0, L′) = 0
            (``monotone`` use), or None.
        witness: a ``non_monotone`` verdict when L′(1) > 0 is proven (a rise just before 1), or an
            ``unknown`` one when the measured curve contradicts the enclosure of L″.
        slope: the proven (lo, hi) of L′(1).
    """

    c: float | None
    bound: CellBound | None
    witness: EnclosureVerdict | None
    slope: tuple[float, float]


END_EXPONENTS = tuple(3 + 2 * i for i in range(16))  # the candidate widths 2⁻ᵏ of [c, 1]
HIGHER_BITS = (1024, 4096)  # L′(1) again at these precisions where 256 bits leave its sign open ...
HIGHER_BITS_TERMS = 5e8  # ... on nets of at most this many multiply-adds per loss × (256 / bits)² (a few seconds each)


def end_slope(problem: _Problem, deadline: float | None) -> tuple[float, float]:
    """Proven bounds of L′(1): the float64 point enclosure, narrowed by a ball evaluation at
    α = 1 (:func:`.endpoint.slope_at_end`) where that enclosure leaves the sign open (lo ≤ 0 < hi:
    a network trained to convergence, whose L′(1) is below float64's resolution of the outputs)
    and the graph is one the ball evaluation covers. Both are proven, so their intersection is;
    where they do not overlap the two models of the computation differ, and the float64
    enclosure (the one validated against the measured curve) stands alone."""
    lo, hi = enclose(problem, [1.0], [1.0], deadline)[0][0]
    args = _ball_args(problem)
    if not (lo <= 0.0 < hi) or args is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return lo, hi
    got = slope_at_end(*args, prec=BALL_BITS, deadline=deadline)
    for bits in HIGHER_BITS:  # a sign below 256 bits (saturated tanh units: L′(1) ~ 10⁻⁶⁹⁷): more bits, on small nets
        if got is None or not (got[0] <= 0.0 < got[1]):
            break
        got = slope_at_end(*args, prec=bits, deadline=deadline, max_terms=HIGHER_BITS_TERMS * (BALL_BITS / bits) ** 2) or got
    if got is None or got[1] < lo or got[0] > hi:
        return lo, hi
    return max(lo, got[0]), min(hi, got[1])


def convex_end(problem: _Problem, tol: float, deadline: float | None, evaluated: int = 0, *, screening: bool = False,
               slope: tuple[float, float] | None = None) -> ConvexEnd | None:
    """The convex-end certificate (``proofs/convex_end.py``): with L′(1) enclosed at the single
    point α = 1 and L″ enclosed on the cells [1 − 2⁻ᵏ, 1] (k in :data:`END_EXPONENTS`),

    * L″ ≥ 0 on [c, 1] and L′(1) ≤ 0 prove L′(α) = L′(1) − ∫_α^1 L″ ≤ 0 on [c, 1] (L is C² there:
      the enclosure of L″ is finite only on cells free of ReLU kinks): no rise inside [c, 1];
    * L′(1) ≥ s₁ > 0 and L″ ≤ U on [1 − w, 1] prove L′(α) ≥ s₁ − (1 − α)U there, hence
      L(1) − L(1 − s) ≥ s₁s − Us²/2 > 0 for 0 < s ≤ min(w, s₁/U): a witness just before 1;
    * L′(1) > 0 proven but no rise above ``tol`` > 0: L″ ≥ k > 0 on [1 − w, 1] and L′(1) ≤ s₁ still
      bound that cell's share of any rise by s₁²/(2k) (:func:`_rising_end`), so a rise at the end
      below tol can be proven to be below it without first-order cells there.

    The enclosure of L″ is also checked against the measured curve: the second difference
    (L(1) − 2L(1 − h) + L(1 − 2h))/h² equals L″(ξ) for some ξ in the cell, so it must lie in the
    enclosure up to 4·(measurement slack)/h²; otherwise the certified model differs from the
    measured one and the answer is ``unknown``. None when L″ has no enclosure for this model.

    ``screening``: ``problem`` is a subsample whose cells only seed the partition of the full data:
    no witness and no comparison with the measured curve (which is the full data's). ``slope``: L′(1)'s
    point enclosure, if already computed."""
    if slope is None:
        slope = end_slope(problem, deadline)
    lo1, hi1 = slope
    if not (math.isfinite(lo1) and math.isfinite(hi1)):
        return None
    # the widest cells first (where a convex end usually is), the narrow ones only if none of those serves
    widths, second = [], []
    half = len(END_EXPONENTS) // 2
    for part in (END_EXPONENTS[:half], END_EXPONENTS[half:]):
        ws = [2.0**-k for k in part]
        got = enclose_second(problem, [1.0 - w for w in ws], [1.0] * len(ws), deadline)
        if got is None:
            return None
        widths += ws
        second += got
        if any(lo2 >= 0 and (hi1 <= 0 or lo2 > 0) for lo2, _ in got) or (lo1 > 0 and any(math.isfinite(h2) for _, h2 in got)):
            break
    differs = None if screening else _check_second(problem, widths, second)
    if differs is not None:
        verdict = EnclosureVerdict("unknown", None, None, None, None, evaluated, ((0.0, 1.0),), differs)
        return ConvexEnd(None, None, verdict, slope)
    if lo1 <= 0:
        for w, (lo2, hi2) in zip(widths, second):
            if lo2 >= 0 and (hi1 <= 0 or lo2 > 0):
                return ConvexEnd(1.0 - w, _end_cell(w, slope, (lo2, hi2)), None, slope)
        return ConvexEnd(None, None, None, slope)
    if screening:
        return ConvexEnd(None, None, None, slope)
    # L′(1) > 0 proven: the largest dyadic s with the rise bound s₁s − Us²/2 positive and above tol;
    # failing that (a rise at the end that may be within tol), the end cell that bounds it
    for w, (lo2, hi2) in zip(widths, second):
        if not math.isfinite(hi2):
            continue
        top = Fraction(max(hi2, 0.0)) + Fraction(_TINY)
        s1 = Fraction(lo1)
        limit = min(Fraction(w), s1 / top)
        s = Fraction(1, 2 ** math.ceil(-math.log2(float(limit)))) if limit < 1 else Fraction(1, 2)
        while s > limit:
            s /= 2
        if s < _LAST_STEP:  # 1 − s is not a double: the nearest witness is the last float64 step before 1
            return ConvexEnd(None, None, _last_step_rise(problem, tol, evaluated, lo1, hi2, w), slope)
        rise = s1 * s - top * s * s / 2
        if rise > Fraction(tol):
            a = float(1 - s)
            found = _confirmed(problem, a, 1.0, rise, tol, evaluated, None, (),
                               f"L′(1) ≥ {lo1:.3g} > 0 and L″ ≤ {hi2:.3g} on [{_alpha_text(1 - w)}, 1] prove a rise of at least "
                               f"{float_down(rise):.3g} > tol on [{_alpha_text(a)}, 1]")
            return ConvexEnd(None, None, found, slope)
    if tol > 0:
        cell = _rising_end(widths, second, slope)
        if cell is not None and cell.rise_share <= tol:  # a larger share could only block the cells that find a rise
            return ConvexEnd(cell.a, cell, None, slope)
    return ConvexEnd(None, None, None, slope)


_LAST_STEP = Fraction(1, 2**53)  # 1 − 2⁻⁵³ is the largest double below 1


def _last_step_rise(problem: _Problem, tol: float, evaluated: int, lo1: float, hi2: float, w: float) -> EnclosureVerdict:
    """L′(1) ≥ lo1 > 0 proves a rise just before α = 1, but where L″ ≤ hi2 only lets the bound
    s·lo1 − s²·hi2/2 be positive for s below the last float64 step (2⁻⁵³): the witness [1 − 2⁻⁵³, 1]
    is checked directly, L(1) − L(1 − 2⁻⁵³) in ball arithmetic (:func:`_ball_rise`); ``unknown``
    where that does not prove it above ``tol`` (the rise lies between doubles)."""
    a = float(1 - _LAST_STEP)
    ball = _ball_rise(problem, a, 1.0)
    proof = f"L′(1) ≥ {lo1:.3g} > 0 and L″ ≤ {hi2:.3g} on [{_alpha_text(1 - w)}, 1] prove a rise just before α = 1"
    if ball is not None and ball[0] > tol:
        return _confirmed(problem, a, 1.0, Fraction(ball[0]), tol, evaluated, None, (), f"{proof}; on the last float64 step", ball=ball)
    return EnclosureVerdict("unknown", None, None, None, None, evaluated, ((float(1 - 4 * _LAST_STEP), 1.0),),
                            f"{proof}, but within the last float64 step before 1: no witness [a, b] with float64 ends shows it"
                            + ("" if ball is not None else " (the ball evaluation does not cover this model)"))


def _alpha_text(a: float, other: float | None = None) -> str:
    """α with six significant digits, or all of them where six would round it to an end of [0, 1]
    or to the text of ``other`` (the witness's other end), so a witness never reads as [a, 1] or
    [a, a] when it is not.

    >>> _alpha_text(0.4489795918367347), _alpha_text(1 - 2**-30), _alpha_text(1.0)
    ('0.44898', '0.9999999990686774', '1')
    >>> _alpha_text(0.5000001, 0.5000002)
    '0.5000001'
    """
    short = f"{a:.6g}"
    if short in ("0", "1") and a != float(short):
        return repr(a)
    if other is not None and other != a and f"{other:.6g}" == short:
        return repr(a)
    return short


def _rising_end(widths: list[float], second: list[tuple[float, float]], slope: tuple[float, float]) -> CellBound | None:
    """The end cell [1 − w, 1] that bounds a rise at the end when L′(1) > 0 is proven but no rise
    above tol is: with L″ ≥ k > 0 there, L′(α) ≤ s₁ − (1 − α)k (s₁ the upper bound of L′(1)), so the
    cell's share of any rise is at most s₁²/(2k), the whole positive part of that bound when
    s₁/k ≤ w (:func:`_end_cell`, proof steps "pinned cell"). Of the cells with k > 0, those holding
    the whole positive part, the one with the smallest share; else the widest (the first-order cells
    before it bound the rest). None when no cell has k > 0."""
    cells = [(w, k, _end_cell(w, slope, (k, hi2))) for w, (k, hi2) in zip(widths, second) if math.isfinite(k) and k > 0]
    if not cells:
        return None
    s1 = Fraction(slope[1])  # > 0 here
    whole = [c for w, k, c in cells if s1 / Fraction(k) <= Fraction(w)]
    if whole:
        return min(whole, key=lambda c: c.up)  # widths descend: ties keep the widest
    return max(cells, key=lambda t: t[0])[2]


def _end_cell(w: float, slope: tuple[float, float], second: tuple[float, float]) -> CellBound:
    """The cell [1 − w, 1] from L′(1) ∈ [lo1, hi1] and L″ ∈ [lo2, hi2] on it (lo2 ≥ 0, and lo2 > 0
    when hi1 > 0): L′(α) ≤ hi1 − (1 − α)·lo2, so ∫ max(0, L′) ≤ hi1²/(2·lo2) (0 when hi1 ≤ 0) and
    ∫ L′ ≤ hi1·w − lo2·w²/2; L′(α) ≥ lo1 − w·max(hi2, 0)."""
    (lo1, hi1), (lo2, hi2) = slope, second
    W, s1, k = Fraction(w), Fraction(hi1), Fraction(lo2)
    high = s1 * W - k * W * W / 2
    if s1 <= 0:
        up = Fraction(0)
    elif s1 / k >= W:
        up = high
    else:
        up = s1 * s1 / (2 * k)
    lo = float_down(Fraction(lo1) - W * Fraction(max(hi2, 0.0))) if math.isfinite(hi2) else -math.inf
    return CellBound(1.0 - w, 1.0, lo, hi1, None, float_up(up), float_up(high))


def _check_second(problem: _Problem, widths: list[float], second: list[tuple[float, float]]) -> str | None:
    """Why the enclosure of L″ contradicts the measured curve (None when it does not): on the widest
    cell with a finite enclosure, the measured second difference at step h = width/2."""
    for w, (lo2, hi2) in zip(widths, second):
        if math.isfinite(lo2) and math.isfinite(hi2):
            h = w / 2
            alphas = [1.0 - 2 * h, 1.0 - h, 1.0]
            vals = _measured(problem, alphas)
            if not all(math.isfinite(v) for v in vals):
                return None
            ref = problem.reference
            slack = sum(ref.slack(a, v) for a, v in zip(alphas, vals)) if ref is not None else 1e-12 * sum(abs(v) for v in vals)
            fd = (vals[2] - 2 * vals[1] + vals[0]) / (h * h)
            pad = (2 * slack + 4 * U * sum(abs(v) for v in vals)) / (h * h)
            if fd < lo2 - pad or fd > hi2 + pad:
                return (f"the certified model {MEASURED_DIFFERS}: its L″ on [{_alpha_text(1 - w)}, 1] is enclosed in [{lo2:.6g}, {hi2:.6g}] "
                        f"but the measured second difference there is {fd:.6g} (± {pad:.3g})")
            return None
    return None


# ----------------------------------------------------------------------------- the decision


def _best_run(cells: list[CellBound]) -> tuple[Fraction, int, int]:
    """The contiguous run of cells maximising Σ |C|·lo_C (Kadane), as (sum, first, last).

    ``cells`` are sorted by their left end; a run never spans a gap between two cells, so
    Σ |C|·lo_C over the run is a lower bound on L(b) − L(a) = ∫_a^b L′ for the run's ends a, b.
    """
    best, best_i, best_j = Fraction(-1), 0, -1
    cur, cur_i = Fraction(0), 0
    for j, c in enumerate(cells):
        if j and c.a != cells[j - 1].b:  # a gap: a run never spans it
            cur, cur_i = Fraction(0), j
        share = c.fall_share
        if not math.isfinite(share):
            cur, cur_i = Fraction(0), j + 1
            continue
        term = Fraction(share)
        if cur <= 0:
            cur, cur_i = term, j
        else:
            cur += term
        if cur > best:
            best, best_i, best_j = cur, cur_i, j
    return best, best_i, best_j


def _rise_bound(cells: list[CellBound]) -> Fraction | None:
    """A proven bound on sup_{a<b} L(b) − L(a) over a partition sorted by position: for a in cell i
    and b in cell j > i, ∫_a^b L′ ≤ P_i + Σ_{i<k<j} G_k + P_j (P the bound of ∫ max(0, L′) on a cell,
    which bounds the integral over any part of it; G the bound of ∫ L′ on a whole cell), and ≤ P_i
    when both lie in cell i; maximised over i ≤ j by one pass (Kadane). Never above Σ P, the bound
    on the total increase, and equal to it when the path rises only once."""
    best = Fraction(0)
    open_run: Fraction | None = None  # max over i < j of P_i + Σ_{i<k<j} G_k, for the current j
    for c in cells:
        share, gain = c.rise_share, c.gain_share
        if not (math.isfinite(share) and math.isfinite(gain)):
            return None
        p, g = Fraction(share), Fraction(gain)
        best = max(best, p, open_run + p if open_run is not None else p)
        open_run = p if open_run is None else max(p, open_run + g)
    return best


def _merge(intervals: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)


def plain_loss(problem: _Problem, alpha: float) -> float:
    """L(α) by a plain float64 forward pass (independent of the enclosure code: the witness check)."""
    from torch.nn import functional as F

    state = {}
    for k, s in problem.start.items():
        fixed = problem.params[k]
        state[k] = (1.0 - alpha) * s + alpha * problem.end[k] if isinstance(fixed, Param) else fixed
    shell = problem.shell
    if problem.statistics:  # torch's own re-estimation (train-mode batch norm) at this α
        from ..path.batchnorm import recompute_bn_statistics

        state = recompute_bn_statistics(problem.line, state, problem.x, None)
    total = 0.0
    with torch.no_grad():
        for i in range(0, problem.x.shape[0], 4096):
            out = functional_call(shell, state, (problem.x[i : i + 4096],))
            out = out.to(torch.float64)
            ys = problem.y[i : i + 4096]
            total += float(F.mse_loss(out, ys, reduction="sum") if problem.loss == "mse" else F.cross_entropy(out, ys, reduction="sum"))
    return total / (problem.y.numel() if problem.loss == "mse" else problem.x.shape[0])


def decide_by_enclosures(
    line: Line,
    data: Dataset,
    *,
    tol: float = 0.0,
    bn: BNPolicy = BNPolicy.FROZEN,
    deadline: float | None = None,
    cells_per_batch: int = 16,
    device: torch.device | None = None,
    batch_size: int | None = None,
    reference: Reference | None = None,
    convex: bool = True,
    statistics_walk: bool = False,
) -> EnclosureVerdict:
    """Prove ``monotone`` (rise_bound ≤ tol) or ``non_monotone`` (a proven rise > tol), or ``unknown``.

    Before any bisection the certified model is validated against the measured computation
    (``reference``, by default the check's own loss-curve code re-evaluated in float64,
    :mod:`.validation`): the enclosures of L at the validation α (degenerate cells, walked by the
    same rules, motions, statistics and chunks as every cell) must contain the measured values;
    otherwise the answer is ``unknown``, naming the α where they differ. Witnesses are re-evaluated
    by the same reference.

    ``convex``: use the convex-end certificate (:func:`convex_end`) on the last stretch of the path
    when the first-order cells leave it open (False: first-order cells only, as a comparison).

    ``statistics_walk`` (``bn=recompute``): walk the re-estimation pass backward too, with its
    statistics anchored at the cells' midpoints (see :func:`prepare`): narrower enclosures per cell
    on deep BatchNorm nets, at about three passes per cell.

    Raises:
        Unsupported: the model, loss or BatchNorm policy is outside the enclosures (before any work).
    """
    problem = prepare(line, data, bn, device=device, cells_per_batch=cells_per_batch, batch_size=batch_size,
                      statistics_walk=statistics_walk or None)
    with strict_arithmetic(problem.x.device):
        return _decide(problem, line, data, tol, bn, deadline, cells_per_batch, batch_size, reference, convex)


def _decide(problem: _Problem, line: Line, data: Dataset, tol: float, bn: BNPolicy, deadline: float | None, cells_per_batch: int,
            batch_size: int | None, reference: Reference | None, convex: bool) -> EnclosureVerdict:
    problem.reference = reference if reference is not None else Reference(line, data, BNPolicy(bn), batch_size)
    differs, points, values = _validate(problem, cells_per_batch, deadline)
    if differs is not None:
        return EnclosureVerdict("unknown", None, None, None, None, 0, ((0.0, 1.0),), differs)
    found = _point_witness(problem, points, values, tol)
    if found is not None:
        return found
    start = None
    n = problem.x.shape[0]
    if n > 2 * SCREEN_EXAMPLES:
        # screening: the partition that decides on an evenly spread subsample is a good first
        # partition for all the data (it only chooses cells; every bound below is on the full set)
        step = n // SCREEN_EXAMPLES
        sub = replace(problem, x=problem.x[::step], y=problem.y[::step], chunk=max(problem.chunk, 1))
        left = None if deadline is None else deadline - time.perf_counter()
        sub_deadline = None if left is None else time.perf_counter() + 0.3 * left
        screened, adjoint = _screen(sub, tol, sub_deadline, cells_per_batch, convex, n)
        problem = replace(problem, adjoint=adjoint)
        if screened.where is not None:
            # the subsample shows a rise: try to prove it on all the data from the screened cells
            # of that run alone (a rise needs only the cells between its ends), before any
            # partition of the whole interval is paid for
            a, b = screened.where
            run = [(c.a, c.b) for c in screened.partition if a <= c.a and c.b <= b]
            try:
                found = _confirm_rise(problem, run, tol, deadline, cells_per_batch)
            except BudgetExceeded:
                return _unknown({}, len(run), "the proof budget ran out while a rise seen on a subsample was checked on all the data")
            if found is not None:
                return found
        start = [(c.a, c.b) for c in screened.partition] or None
        if start and screened.status == "monotone":  # fewer, wider cells where its margins allow
            cells = list(screened.partition)
            start = _coarsened(cells, screened.convex_end,
                               _growth_exponents(replace(sub, adjoint=adjoint), cells, screened.convex_end, deadline))
    verdict = _bisect(problem, tol, deadline, cells_per_batch, start=start, convex=convex)
    return verdict


ADJOINT_ADVANTAGE = 0.85  # the predicted cost ratio below which the screening switches to the reverse walk
ADJOINT_TRIAL = 8.0  # the second screening is tried when the full data are predicted to cost this many first screenings


def _screen(sub: _Problem, tol: float, deadline: float | None, batch: int, convex: bool, n: int) -> tuple[EnclosureVerdict, bool]:
    """The screening bisection on the subsample ``sub``, and whether the full data use the reverse
    walk (:mod:`.adjoint`). Where that walk is optional (``sub.adjoint_optional``), both bounds screen
    and each is costed as (seconds per cell on the subsample) × (cells of its partition), which is
    what the full data (``n`` examples) will pay, up to the factor n / subsample size; the walk is
    chosen when it is predicted below ``ADJOINT_ADVANTAGE`` of the forward rule's cost. Either bound
    is sound: this only chooses the faster one. The second screening gets no more time than the first
    took, and is tried only when the first does not settle the subsample or the full data are
    predicted to cost at least ``ADJOINT_TRIAL`` times that (the reverse walk costs at least a third
    more per cell, so it must save many cells to pay for its own screening: on the 64-256-256-10
    digits MLPs it saves none)."""
    t0 = time.perf_counter()
    first = _bisect(sub, tol, deadline, batch, max_cells=256, witness=False, convex=convex)
    took = time.perf_counter() - t0
    if not sub.adjoint_optional or sub.adjoint or first.cells == 0:
        return first, sub.adjoint

    def settled(v: EnclosureVerdict) -> bool:  # a partition or a rise: what the full data start from
        return v.status == "monotone" or v.where is not None

    cost = took / first.cells * max(len(first.partition), 1)  # ∝ the full data's cost, times n / subsample
    if settled(first) and cost * n / max(sub.x.shape[0], 1) < ADJOINT_TRIAL * took:
        return first, False
    t1 = time.perf_counter()
    limit = t1 + took if deadline is None else min(deadline, t1 + took)  # _bisect answers unknown when it runs out
    other = _bisect(replace(sub, adjoint=True), tol, limit, batch, max_cells=256, witness=False, convex=convex)
    took_other = time.perf_counter() - t1
    if not settled(other):
        return first, False
    cost_other = took_other / max(other.cells, 1) * max(len(other.partition), 1)
    if not settled(first) or cost_other < ADJOINT_ADVANTAGE * cost:
        return other, True
    return first, False


COARSEN_EXPONENT = 3.0  # the largest growth exponent p assumed: W ∝ (cell width)^p (measured p ≈ 1.1–2.9, see _growth_exponents)
COARSEN_MIN_EXPONENT = 1.0  # the smallest measured exponent believed (the Taylor form's own slope term grows as h)
COARSEN_SAFETY = 1.25  # a coarser cell is proposed only where its predicted width stays below |centre| / this
COARSEN_GRID = 2.0**-12  # new boundaries lie on this grid (exact floats)
COARSEN_MIN_WIDTH = 2.0**-10  # cells narrower than this are kept as they are
PROBE_CELLS = 8  # screened cells whose doubled cell is enclosed on the subsample to measure p there


def _decidable_factor(c: CellBound, exponent: float = COARSEN_EXPONENT) -> float | None:
    """How many times as wide as ``c`` a cell at its place is predicted to decide L′ < 0: (R/S)^(1/p)
    with R = −C/W its margin (L′ ∈ C ± W), S = ``COARSEN_SAFETY``, p = ``exponent`` (see
    :func:`_coarsened`); None where the centre is not negative or the width not finite and positive."""
    centre, width = (c.lo + c.hi) / 2, (c.hi - c.lo) / 2
    if not (math.isfinite(width) and centre < 0 < width):
        return None
    return (-centre / (COARSEN_SAFETY * width)) ** (1.0 / exponent)


def _mergeable(c: CellBound, pinned: float | None) -> bool:
    """Whether :func:`_coarsened` may cover ``c`` again by a wider cell (see there)."""
    return (math.isfinite(c.lo) and c.hi < 0 and c.rise_share <= 0 and c.b - c.a >= COARSEN_MIN_WIDTH
            and (pinned is None or c.a < pinned) and c.b < 1.0)


def _probe_cells(cells: list[CellBound], pinned: float | None = None) -> list[tuple[int, tuple[float, float]]]:
    """Up to ``PROBE_CELLS`` cells of a decided screening partition where the growth exponent matters,
    evenly spread over them by index, each with its doubled cell (same midpoint, twice the width,
    moved inside [0, 1] where it would stick out): the cells :func:`_coarsened` may widen and whose
    allowance at the largest exponent is below its cap of 2 while their margin exceeds the safety
    (there a smaller exponent gives a wider cell).

    >>> cb = [CellBound(i / 8, (i + 1) / 8, -30.0, -10.0) for i in range(8)]  # the last cell is never merged
    >>> [i for i, _ in _probe_cells(cb)]
    [0, 1, 2, 3, 4, 5, 6]
    >>> _probe_cells(cb)[0][1], _probe_cells(cb)[3][1]
    ((0.0, 0.25), (0.3125, 0.5625))
    """
    def matters(c: CellBound) -> bool:
        factor = _decidable_factor(c)
        return _mergeable(c, pinned) and factor is not None and 1.0 < factor < 2.0 and 2 * (c.b - c.a) <= 1.0

    idx = [i for i, c in enumerate(cells) if matters(c)]
    if len(idx) > PROBE_CELLS:  # the first, the last, and evenly between
        step = (len(idx) - 1) / max(PROBE_CELLS - 1, 1)
        idx = sorted({idx[round(j * step)] for j in range(PROBE_CELLS)})
    out = []
    for i in idx:
        c = cells[i]
        w = c.b - c.a
        a2 = max(0.0, min((c.a + c.b) / 2 - w, 1.0 - 2 * w))
        out.append((i, (a2, min(1.0, a2 + 2 * w))))
    return out


def _exponents_from_probes(cells: list[CellBound], probes: list[tuple[int, tuple[float, float]]],
                           doubled: list[tuple[float, float]]) -> list[float]:
    """Per cell of ``cells``, the growth exponent :func:`_coarsened` assumes there: at each probe i,
    p_i = log2(W₂/W₁) (W₁ the half-width of L′'s enclosure on the cell, W₂ on its doubled cell, the
    ``doubled`` bounds (lo, hi) in the order of ``probes``; ``COARSEN_EXPONENT`` where either is not
    finite and positive), clipped to [``COARSEN_MIN_EXPONENT``, ``COARSEN_EXPONENT``]; each cell takes
    the larger of its nearest probes on either side (the one side's at the ends), and every cell
    ``COARSEN_EXPONENT`` when there are no probes.

    >>> cb = [CellBound(i / 8, (i + 1) / 8, -30.0, -10.0) for i in range(8)]  # W₁ = 10
    >>> _exponents_from_probes(cb, [(1, (0.0625, 0.3125)), (5, (0.5625, 0.8125))], [(-60.0, 20.0), (-50.0, 10.0)])
    [2.0, 2.0, 2.0, 2.0, 2.0, 1.584962500721156, 1.584962500721156, 1.584962500721156]
    """
    if not probes:
        return [COARSEN_EXPONENT] * len(cells)
    at: list[tuple[int, float]] = []
    for (i, _), (lo, hi) in zip(probes, doubled):
        w1, w2 = (cells[i].hi - cells[i].lo) / 2, (hi - lo) / 2
        p = COARSEN_EXPONENT
        if math.isfinite(w1) and math.isfinite(w2) and 0 < w1 and 0 < w2:
            p = min(COARSEN_EXPONENT, max(COARSEN_MIN_EXPONENT, math.log2(w2 / w1)))
        at.append((i, p))
    out = []
    for j in range(len(cells)):
        left = [p for i, p in at if i <= j]
        right = [p for i, p in at if i >= j]
        out.append(max(left[-1:] + right[:1]))
    return out


def _growth_exponents(sub: "_Problem", cells: list[CellBound], pinned: float | None, deadline: float | None) -> list[float]:
    """The growth exponents :func:`_coarsened` assumes per cell of the decided screening partition
    ``cells``, measured on the subsample ``sub`` (the bound that screened them) at the cells of
    :func:`_probe_cells` (:func:`_exponents_from_probes`). The exponent varies along a path and
    between nets (measured from cells of 1/64 to 1/32 on 257 examples: about 1.1–1.2 on a
    784-1000-1000-10 MLP, 1.9–2.7 on a 64-512×5-10 MLP, 1.8–2.9 on the digits ResNet), so one fixed
    p either wastes cells or fails them. Only the start partition changes; every bound is proven
    afresh, and a cell that does not decide is split as any other. ``COARSEN_EXPONENT`` everywhere
    when the budget runs out."""
    probes = _probe_cells(cells, pinned)
    if not probes:
        return [COARSEN_EXPONENT] * len(cells)
    try:
        doubled, _, _ = enclose_cells(sub, [p[1][0] for p in probes], [p[1][1] for p in probes], deadline)
    except BudgetExceeded:
        return [COARSEN_EXPONENT] * len(cells)
    return _exponents_from_probes(cells, probes, doubled)


def _coarsened(cells: list[CellBound], pinned: float | None = None, exponents: list[float] | None = None) -> list[tuple[float, float]]:
    """A partition of [0, 1] with fewer cells than ``cells`` (a decided screening partition), predicted
    to decide the same way: it only chooses where the full data's bisection starts (every bound
    there is proven afresh; a cell that does not decide is split as any other, :func:`_parts`).

    Bisection halves cells, and the enclosure's width W of L′ grows about as h^p, so a cell that
    decides with a margin −C/W ≤ 2^p is the widest dyadic one, where a cell (R/S)^(1/p) times as
    wide would still decide (R = −C/W its margin, S = ``COARSEN_SAFETY``, p the cell's entry of
    ``exponents``: measured on the subsample by :func:`_growth_exponents`, ``COARSEN_EXPONENT``,
    above the measured exponents, where not given, so the prediction errs on the narrow side). Runs of consecutive cells
    whose L′ < 0 is proven (rise share 0, at least ``COARSEN_MIN_WIDTH`` wide, not the convex
    end's, nor the last cell: near a stationary end L′ → 0 and a subsample's margin says little, and
    a last cell that does not decide costs the convex end's second walks, on the digits ResNet
    31 s where its halves cost 5) are covered again left to right, each new cell as wide as the
    narrowest allowance of the old cells it overlaps (at most twice theirs: the halves of a parent that did not decide), its
    right end on the grid ``COARSEN_GRID``; then the allowances are scaled down as far as the count
    stays the same, so the cells come out even instead of leaving a sliver at the end; a run keeps
    its cells where that saves none.

    >>> cb = [CellBound(i / 8, (i + 1) / 8, -9.0, -1.0) for i in range(8)]  # C = −5, W = 4: no margin to spare
    >>> len(_coarsened(cb))
    8
    >>> cb = [CellBound(i / 8, (i + 1) / 8, -30.0, -10.0) for i in range(8)]  # C = −20, W = 10: cells 1.17× as wide
    >>> len(_coarsened(cb))
    7
    """
    ps = exponents if exponents is not None else [COARSEN_EXPONENT] * len(cells)

    def allowance(k: int) -> float:
        c = cells[k]
        factor = _decidable_factor(c, ps[k])
        return (c.b - c.a) * (1.0 if factor is None else min(2.0, max(1.0, factor)))

    def mergeable(c: CellBound) -> bool:
        return _mergeable(c, pinned)

    out: list[tuple[float, float]] = []
    i = 0
    while i < len(cells):
        if not mergeable(cells[i]):
            out.append((cells[i].a, cells[i].b))
            i += 1
            continue
        j = i
        while j + 1 < len(cells) and mergeable(cells[j + 1]) and cells[j + 1].a == cells[j].b:
            j += 1
        run = cells[i : j + 1]
        allow = [allowance(k) for k in range(i, j + 1)]
        fresh = _cover(run, allow, 1.0)
        if len(fresh) < len(run):
            # as few cells, as even as they can be: the smallest scale of the allowances that still
            # needs no more cells (no sliver left at the run's end)
            lo, hi = 0.5, 1.0
            for _ in range(20):
                mid = (lo + hi) / 2
                if len(_cover(run, allow, mid)) <= len(fresh):
                    hi = mid
                else:
                    lo = mid
            fresh = _cover(run, allow, hi)
        out.extend(fresh if len(fresh) < len(run) else [(c.a, c.b) for c in run])
        i = j + 1
    return out


def _cover(run: list[CellBound], allow: list[float], scale: float) -> list[tuple[float, float]]:
    """[run[0].a, run[-1].b] covered left to right by cells as wide as ``scale`` times the narrowest
    allowance of the old cells each overlaps, ends on the grid ``COARSEN_GRID`` (see :func:`_coarsened`)."""
    out: list[tuple[float, float]] = []
    x, top = run[0].a, run[-1].b
    while x < top:
        w = scale * next(al for c, al in zip(run, allow) if c.b > x)  # the old cell at x
        while True:  # the narrowest allowance of the old cells [x, x + w) overlaps, to a fixed point
            nw = scale * min(al for c, al in zip(run, allow) if c.b > x and c.a < x + w)
            if nw >= w:
                break
            w = nw
        end = min(top, math.floor((x + w) / COARSEN_GRID) * COARSEN_GRID)
        if end <= x:  # the grid allows no cell here: the old boundary after x
            end = min(c.b for c in run if c.b > x)
        if top - end < COARSEN_GRID:
            end = top
        out.append((x, end))
        x = end
    return out


def _validate(problem: _Problem, batch: int, deadline: float | None) -> tuple[str | None, list[float], list[tuple[float, float]]]:
    """(None when the enclosures of L at the validation α contain the measured values, else why;
    those α; the proven enclosures of L there)."""
    ref = problem.reference
    points = validation_points(ref.curve)
    values: list[tuple[float, float]] = []
    try:
        for i in range(0, len(points), batch):
            part = points[i : i + batch]
            values += enclose_values(problem, part, deadline)
        return ref.compare(points, values), points, values
    except BudgetExceeded:
        return "the proof budget ran out while the certified model was validated against the measured curve", points, []
    except (Unsupported, UnsupportedGraph):
        raise
    except Exception as exc:  # noqa: BLE001 - no validation, no certificate
        return f"the measured curve could not be re-evaluated in float64 ({type(exc).__name__}: {str(exc)[:160]})", points, []


def _point_witness(problem: _Problem, points: list[float], values: list[tuple[float, float]], tol: float) -> EnclosureVerdict | None:
    """``non_monotone`` from two validated point enclosures alone, when they prove a rise > tol.

    The validation walks degenerate cells [α, α] at its points (which include the ends of the
    grid's largest rise, :func:`.validation.validation_points`); each gives a proven enclosure
    [lo(α), hi(α)] ∋ L(α). For a < b, L(b) − L(a) ≥ lo(b) − hi(a) (exact rational arithmetic on
    the float bounds), so the best such pair is a witness without any cell of L′: a rise the L′
    enclosures of wide cells cannot yet resolve (BatchNorm statistics re-estimated along the path,
    distant weights) is still proven by the values at its ends. Checked like every witness
    (:func:`_confirmed`). None when no pair proves a rise > tol."""
    best, where = Fraction(tol), None
    low_hi: tuple[Fraction, float] | None = None  # the smallest upper bound hi(a) so far, and its a
    for a, (lo, hi) in sorted(zip(points, values)):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            continue
        if low_hi is not None and Fraction(lo) - low_hi[0] > best:
            best, where = Fraction(lo) - low_hi[0], (low_hi[1], a)
        if low_hi is None or Fraction(hi) < low_hi[0]:
            low_hi = (Fraction(hi), a)
    if where is None:
        return None
    a, b = where
    return _confirmed(problem, a, b, best, tol, 0, None, (),
                      f"L enclosed at α = {_alpha_text(a, b)} and α = {_alpha_text(b, a)} (the validation's point "
                      f"enclosures) proves L({_alpha_text(b, a)}) − L({_alpha_text(a, b)}) ≥ {float_down(best):.3g} > tol")


def _measured(problem: _Problem, alphas: list[float]) -> list[float]:
    """L at ``alphas`` as the check measures it (the reference; NaN where it is not finite)."""
    if problem.reference is None:
        return [plain_loss(problem, a) for a in alphas]
    try:
        return problem.reference.losses(alphas)
    except Exception:  # noqa: BLE001 - not finite, or not evaluable: no witness is confirmed by it
        return [math.nan] * len(alphas)


CONFIRM_REFINEMENTS = 2  # halvings of a subsample's rise run tried on all the data (see _confirm_rise)


def _confirm_rise(problem: _Problem, run: list[tuple[float, float]], tol: float, deadline: float | None, batch: int) -> EnclosureVerdict | None:
    """Enclose L′ on the contiguous cells ``run`` only and return ``non_monotone`` if they prove a
    rise > tol (checked like every witness); None otherwise. No monotone claim is made here: the
    cells do not cover [0, 1].

    Where the run does not prove the rise on all the data, its cells are halved and tried again,
    up to ``CONFIRM_REFINEMENTS`` times while the run stays within two batches of cells: a tighter
    bound on the subsample (the kinks' reverse walk) can prove its rise on a cell wider than all
    the data allow (digits ResNet: [0.984, 1] on the subsample, [0.992, 1] on all 1 797 images),
    and a few halvings of one run cost far less than the full partition that would otherwise follow.
    Any sub-run of enclosed cells is a valid witness, so halving only adds candidates."""
    evaluated = 0
    for level in range(CONFIRM_REFINEMENTS + 1):
        cells: list[CellBound] = []
        for i in range(0, len(run), batch):
            part = run[i : i + batch]
            bounds, _, shares = enclose_cells(problem, [p[0] for p in part], [p[1] for p in part], deadline)
            cells += [CellBound(a, b, lo, hi, low, up, high) for (a, b), (lo, hi), (low, up, high) in zip(part, bounds, shares)]
        cells.sort(key=lambda c: c.a)
        evaluated += len(cells)
        found = _witness(problem, cells, tol, evaluated, rise_bound=None)
        if found is not None or level == CONFIRM_REFINEMENTS or len(run) > batch:
            return found
        run = [half for a, b in run for half in ((a, (a + b) / 2), ((a + b) / 2, b))]
    return None


def _witness(problem: _Problem, cells: list[CellBound], tol: float, evaluated: int, rise_bound: Fraction | None) -> EnclosureVerdict | None:
    """``non_monotone`` from the best contiguous run of ``cells`` if it proves a rise > tol, after
    an independent float64 re-evaluation of the rise at its ends; None when no run proves one."""
    run, i0, i1 = _best_run(cells)
    if not (i1 >= i0 and run > Fraction(tol)):
        return None
    a, b = cells[i0].a, cells[i1].b
    return _confirmed(problem, a, b, run, tol, evaluated, rise_bound, tuple(cells),
                      f"L′ ≥ lower bounds on [{_alpha_text(a, b)}, {_alpha_text(b, a)}] prove a rise of at least {float_down(run):.3g} > tol")


BALL_BITS = 256  # precision of the ball evaluations at single points (:mod:`.endpoint`)
BALL_CHECK_SHARE = 1e-3  # a witness rising by less than this share of its losses is also checked in ball arithmetic
WITNESS_BALL_TERMS = 5e8  # the witness check runs outside the proof budget: at most about 2–3 s per loss (:mod:`.endpoint`)


def _ball_args(problem: _Problem) -> tuple | None:
    """(graph, θ0, θT, moving entries, x, y, loss) for :mod:`.endpoint`, or None where it cannot
    apply (statistics re-estimated along α, or no traced graph)."""
    if problem.statistics or not isinstance(problem.gm, GraphModule):
        return None
    moving = {k for k, v in problem.params.items() if isinstance(v, Param)}
    return problem.gm, problem.start, problem.end, moving, problem.x, problem.y, problem.loss


def _ball_rise(problem: _Problem, a: float, b: float) -> tuple[float, float] | None:
    """Proven bounds of L(b) − L(a) from ball arithmetic (:func:`.endpoint.rise_between`), or None
    where the graph is outside its rules or statistics are re-estimated."""
    args = _ball_args(problem)
    return None if args is None else rise_between(*args, a, b, prec=BALL_BITS, max_terms=WITNESS_BALL_TERMS)


def _confirmed(problem: _Problem, a: float, b: float, run: Fraction, tol: float, evaluated: int, rise_bound: Fraction | None,
               cells: tuple[CellBound, ...], reason: str, ball: tuple[float, float] | None = None) -> EnclosureVerdict:
    """The proven rise L(b) − L(a) ≥ ``run`` > tol as a ``non_monotone`` verdict, once the measured
    computation (float64) reproduces it; ``unknown`` when it contradicts the proven bound."""
    la, lb = _measured(problem, [a, b])
    rise = lb - la
    slack = 1e-9 * (abs(la) + abs(lb)) + 1e-300
    reproduced = rise >= float(run) - slack  # False also where the measured rise is NaN
    # a rise that is a small part of the losses may be below what float64 resolves of them (their own
    # rounding, e.g. 10⁻²⁹ on losses of 10⁻²⁶): there the losses are evaluated once more in ball
    # arithmetic, independently of the enclosures, and that value is the one reported
    small = not reproduced or rise < BALL_CHECK_SHARE * (abs(la) + abs(lb))
    if not small:
        ball = None
    elif ball is None:
        ball = _ball_rise(problem, a, b)
    if ball is not None and ball[1] < float(run):
        return EnclosureVerdict(
            "unknown", None, None, None, None, evaluated, (),
            f"the certified model {MEASURED_DIFFERS}: the losses in {BALL_BITS}-bit ball arithmetic give L(b) − L(a) ≤ {ball[1]:.3g} "
            f"on [{a}, {b}] where the enclosures prove at least {float_down(run):.3g}",
            cells,
        )
    if ball is not None and ball[0] > tol:
        # float64's value is said to be below its resolution only where it does not reproduce the rise
        where64 = "float64 measures" if reproduced and rise > tol else "below float64's resolution of the losses, where it measures"
        return EnclosureVerdict(
            "non_monotone", float_up(rise_bound) if rise_bound is not None else None, (ball[0] + ball[1]) / 2,
            max(float_down(run), ball[0]), (a, b), evaluated, (),
            f"{reason} (checked in {BALL_BITS}-bit ball arithmetic: L(b) − L(a) ∈ [{ball[0]:.6g}, {ball[1]:.6g}], {where64} {rise:.3g})", cells,
        )
    if not reproduced:
        # an independent float64 evaluation contradicts the proven lower bound: never certify
        return EnclosureVerdict(
            "unknown", None, None, None, None, evaluated, (),
            f"the certified model {MEASURED_DIFFERS}: the measured computation does not reproduce the witness: proven rise ≥ {float_down(run):.3g} on [{a}, {b}] "
            f"but the measured computation (float64) gives {rise:.3g}",
            cells,
        )
    if rise <= tol:  # float64 rounding hides a proven rise just above tol: report the proven bound
        rise = float_down(run)
    return EnclosureVerdict(
        "non_monotone", float_up(rise_bound) if rise_bound is not None else None, rise, float_down(run), (a, b), evaluated, (),
        reason, cells,
    )


def _bisect(
    problem: _Problem,
    tol: float,
    deadline: float | None,
    batch: int,
    *,
    start: list[tuple[float, float]] | None = None,
    max_cells: int | None = None,
    witness: bool = True,
    convex: bool = True,
) -> EnclosureVerdict:
    todo = start or [(i / START_CELLS, (i + 1) / START_CELLS) for i in range(START_CELLS)]
    end: ConvexEnd | None = None  # the convex end, once tried
    slope_at_1: tuple[float, float] | None = None  # L′(1)'s point enclosure, once computed
    done: dict[tuple[float, float], CellBound] = {}
    parents: dict[tuple[float, float], tuple[tuple[float, float], tuple[float, float]]] = {}
    # per part of a split cell: its parent's L′ width and how many splits in a row have not narrowed it
    lineage: dict[tuple[float, float], tuple[float, int]] = {}
    stalled: dict[tuple[float, float], int] = {}
    evaluated = 0
    tol_q = Fraction(tol)
    while True:
        fresh: dict[tuple[float, float], CellBound] = {}
        try:
            for i in range(0, len(todo), batch):
                part = todo[i : i + batch]
                bounds, _, shares = enclose_cells(problem, [p[0] for p in part], [p[1] for p in part], deadline)
                for (a, b), (lo, hi), (low, up, high) in zip(part, bounds, shares):
                    fresh[(a, b)] = CellBound(a, b, lo, hi, low, up, high)
                evaluated += len(part)
                _replace_parents(done, fresh, parents)
        except BudgetExceeded:
            return _unknown(done, evaluated, "the proof budget ran out")
        _replace_parents(done, fresh, parents)
        done.update(fresh)
        cells = sorted(done.values(), key=lambda c: c.a)
        rb = _rise_bound(cells)
        last = cells[-1] if cells else None
        if (end is None and convex and not (rb is not None and rb <= tol_q) and last is not None and last.b == 1.0
                and last.rise_share > 0 and last.b - last.a <= 1.0 / 16 and _last_blocks(cells, tol_q)):
            # the last cell is open after a split and is what stands between the bound and tol (other
            # open cells are split first: the convex end's second walks cost many cells, on the digits
            # ResNet 28–31 s where the cells it waited for cost 5): try it once (L″ ≥ 0 on [c, 1], L′(1) ≤ 0)
            try:
                if slope_at_1 is None:
                    slope_at_1 = end_slope(problem, deadline)
                if not _splitting_decides(last, slope_at_1):
                    end = convex_end(problem, tol, deadline, evaluated, screening=not witness, slope=slope_at_1) or ConvexEnd(None, None, None, (math.nan, math.nan))
            except BudgetExceeded:
                return _unknown(done, evaluated, "the proof budget ran out")
            if end is not None and end.witness is not None:
                if end.witness.status == "unknown":
                    return replace(end.witness, partition=tuple(cells))
                return end.witness
            if end is not None and end.bound is not None:
                c = end.c
                for key in [k for k in done if k[0] >= c]:
                    del done[key]
                for key in [k for k in done if k[0] < c < k[1]]:  # only the last cell can straddle c
                    del done[key]
                    try:
                        bounds, _, shares = enclose_cells(problem, [key[0]], [c], deadline)
                    except BudgetExceeded:
                        return _unknown(done, evaluated, "the proof budget ran out")
                    evaluated += 1
                    (lo, hi), (low, up, high) = bounds[0], shares[0]
                    done[(key[0], c)] = CellBound(key[0], c, lo, hi, low, up, high)
                done[(c, 1.0)] = end.bound
                cells = sorted(done.values(), key=lambda c: c.a)
                rb = _rise_bound(cells)
        if rb is not None and rb <= tol_q:
            pinned = end.c if end is not None and end.bound is not None else None
            how = ""
            if pinned is not None and end.slope[1] <= 0:
                how = f" and L″ ≥ 0 on [{_alpha_text(pinned)}, 1] with L′(1) ≤ {end.slope[1] + 0.0:.3g} (convex end: no rise there)"
            elif pinned is not None:
                how = (f" and L″ > 0 on [{_alpha_text(pinned)}, 1] with L′(1) ≤ {end.slope[1] + 0.0:.3g} (convex end: L may rise there, "
                       f"by at most {end.bound.rise_share:.3g}, counted in the bound)")
            return EnclosureVerdict(
                "monotone", float_up(rb), None, None, None, evaluated, (),
                f"L′ enclosed on the {len(cells)} cells of a partition of [0, 1] ({evaluated} cells enclosed in all){how}: "
                f"every rise L(b) − L(a) is at most {float_up(rb):.3g} ≤ tol",
                tuple(cells), pinned,
            )
        if rb is not None and rb <= UNDERFLOW_FLOOR and evaluated >= 4 * START_CELLS:
            # what is left of the bound is the underflow guards of the enclosures (2⁻¹⁰⁰⁰ per term):
            # bisection cannot shrink it, so do not spend the budget on it
            return _unknown(done, evaluated, f"the proven rise bound {float_up(rb):.3g} is at the enclosures' underflow floor "
                                             f"(the loss varies by less than about {UNDERFLOW_FLOOR:.0e} along the path): no finite "
                                             "partition decides tol below it; give a tolerance of at least that")
        run, i0, i1 = _best_run(cells)
        if i1 >= i0 and run > tol_q and not witness:
            return replace(_unknown(done, evaluated, "screening: a rise was found"), where=(cells[i0].a, cells[i1].b))
        if i1 >= i0 and run > tol_q:
            found = _witness(problem, cells, tol, evaluated, rb)
            if found is not None:
                if found.status == "unknown":
                    return _unknown(done, evaluated, found.reason)
                return found
        infinite = [c for c in cells if not math.isfinite(c.hi)]
        if infinite:
            mid = (infinite[0].a + infinite[0].b) / 2
            if not math.isfinite(_measured(problem, [mid])[0]):
                return _unknown(done, evaluated, f"the loss itself is not finite at α = {mid:.6g} (overflow or undefined values, e.g. a negative BatchNorm variance)")
        blown = [c for c in infinite if c.b - c.a <= 2.0**-10]
        if blown:
            return _unknown(
                done, evaluated,
                f"the enclosures are not finite on [{blown[0].a:.6g}, {blown[0].b:.6g}] even on a cell of width "
                f"{blown[0].b - blown[0].a:.3g} (outputs overflow or are undefined there, e.g. a negative BatchNorm variance)",
            )
        pinned = end.c if end is not None and end.bound is not None else None
        open_cells = [c for c in cells if not (c.rise_share <= 0) and (c.b - c.a) > MIN_WIDTH and c.a != pinned]
        if tol == 0.0:  # see _stalled: splitting such a cell again changes nothing (its share ∝ |C|·hi stays)
            _stalled(cells, lineage, stalled)
            stuck = [c for c in open_cells if stalled.get((c.a, c.b), 0) >= STALL_ROUNDS]
            open_cells = [c for c in open_cells if stalled.get((c.a, c.b), 0) < STALL_ROUNDS]
            if stuck and not open_cells:
                c = max(stuck, key=lambda c: c.hi)
                more = f" and {len(stuck) - 1} other cell(s)" if len(stuck) > 1 else ""
                return _unknown(done, evaluated, f"L′ ∈ [{c.lo:.3g}, {c.hi:.3g}] on [{c.a:.9g}, {c.b:.9g}]{more} does not narrow when "
                                                 f"the cells are halved ({STALL_ROUNDS} times in a row): that is the enclosures' "
                                                 "rounding, and no partition decides the sign of L′ below it (an exactly flat "
                                                 "stretch, or |L′| below float64's resolution); a tolerance of at least the "
                                                 "proven rise bound decides")
        if pinned is not None and not open_cells and end.bound.rise_share > 0:
            lo1, hi1 = end.slope
            return _unknown(done, evaluated, f"L′(1) ∈ [{lo1:.3g}, {hi1:.3g}]: its sign is below the enclosures' resolution, so a rise "
                                             f"of at most {end.bound.rise_share:.3g} just before α = 1 (L″ ≥ 0 on [{_alpha_text(pinned)}, 1]) "
                                             "can be neither excluded nor proven")
        if max_cells is not None and evaluated >= max_cells:
            return _unknown(done, evaluated, "screening: cell limit")
        if not open_cells or expired(deadline):
            why = "the proof budget ran out" if open_cells else "cells reached the minimum width without a decision"
            return _unknown(done, evaluated, why)
        split = _to_split(cells, open_cells, run, i0, i1, max(1, batch // 2))
        todo = []
        parents = {}
        for c in split:  # the parent stays in the partition until all its parts are enclosed
            parts = _parts(c)
            todo += parts
            parents[(c.a, c.b)] = tuple(parts)
            if tol == 0.0:  # only read there (see _stalled)
                for part in parts:
                    lineage[part] = (c.hi - c.lo, stalled.get((c.a, c.b), 0))


SPLIT_MARGIN = 32.0  # splitting the last cell is preferred while its L′ half-width is below this many |L′(1)|


def _splitting_decides(last: CellBound, slope: tuple[float, float]) -> bool:
    """Whether splitting the open last cell is predicted to prove L′ < 0 on it, so that the convex
    end (whose second walks cost many cells: 160 s against 31 s for the whole decision on a digits
    CNN + BN under ``bn=recompute``) is not worth trying yet: L′(1) ≤ hi₁ < 0 is proven, and the
    last cell's L′ enclosure is at most ``SPLIT_MARGIN`` times |hi₁| wide (the width shrinks about as
    h^2.5 per halving, so about two rounds of splits). Only a choice of method; no bound depends on it."""
    lo1, hi1 = slope
    if not (math.isfinite(lo1) and math.isfinite(hi1)) or hi1 >= 0:
        return False
    half = (last.hi - last.lo) / 2
    return math.isfinite(half) and half <= SPLIT_MARGIN * -hi1


def _last_blocks(cells: list[CellBound], tol: Fraction) -> bool:
    """Whether the rise bound would be ≤ tol if the last cell's L′ ≤ 0 were proven (its share 0)."""
    last = cells[-1]
    closed = replace(last, lo=min(last.lo, 0.0), hi=min(last.hi, 0.0), up=None if last.up is None else 0.0,
                     high=None if last.high is None else min(last.high, 0.0))
    rb = _rise_bound(cells[:-1] + [closed])
    return rb is not None and rb <= tol


def _to_split(cells: list[CellBound], open_cells: list[CellBound], run: Fraction, i0: int, i1: int, k: int) -> list[CellBound]:
    """The ``k`` cells to bisect next. By their share of the rise bound (what stands between the
    bound and a ``monotone`` verdict); and, when a run of cells already proves a rise, also the
    cells of that run and its two neighbours whose integral is known least precisely (the gap
    between the bounds of ∫ L′ on them: what stands between the run and a proven rise above tol)."""
    order = sorted(open_cells, key=lambda c: -(c.rise_share if math.isfinite(c.rise_share) else 1e300))
    if not (i1 >= i0 and run > 0) or k < 2:
        return order[:k]
    near = [c for c in cells[max(0, i0 - 1) : i1 + 2] if c.rise_share > 0 and (c.b - c.a) > MIN_WIDTH]
    near.sort(key=lambda c: -(c.rise_share - c.fall_share))
    chosen = near[: k // 2]
    seen = {(c.a, c.b) for c in chosen}
    return chosen + [c for c in order if (c.a, c.b) not in seen][: k - len(chosen)]


SPLIT_MAX_PARTS = 8  # the most parts a cell is split into at once


def _parts(c: CellBound) -> list[tuple[float, float]]:
    """The parts a cell that did not decide is split into: halves, or where its L′ centre is
    negative, as many equal parts as the growth of the enclosure's width predicts (see
    :func:`_coarsened`: width W ∝ h^p, so parts (S·W/|C|)^(1/p) times narrower decide), at most
    ``SPLIT_MAX_PARTS``: a cell far too wide is cut in one round instead of several halvings. Only
    which cells are enclosed changes; every bound is proven as before."""
    k = 2
    factor = _decidable_factor(c)
    if factor is not None:
        k = max(2, min(SPLIT_MAX_PARTS, math.ceil(1.0 / factor)))
    if (c.b - c.a) / k <= MIN_WIDTH:
        k = 2
    cuts = [c.a] + [c.a + (c.b - c.a) * i / k for i in range(1, k)] + [c.b]
    return [(cuts[i], cuts[i + 1]) for i in range(k) if cuts[i] < cuts[i + 1]]


def _stalled(cells: list[CellBound], lineage: dict, stalled: dict) -> None:
    """Count, per cell of ``cells`` that is a part of a split cell (``lineage``: its parent's L′
    width and count), the splits in a row that have not narrowed its L′ enclosure: each part at
    least ``STALL_RATIO`` of its parent's width, and at most ``STALL_SCALE``·(1 + the median over the
    cells of max(|lo|, |hi|)) wide, i.e. the enclosures' rounding, which does not shrink with the
    cell (the median: a few blown-up cells of a deep net must not set the scale). Where L′ is 0 (a flat
    stretch: dead ReLU units, a constant output) or its sign is below float64's resolution, such a
    cell keeps L′ ∈ [−ε, ε] at every width, so its share |C|·max(0, hi) of the rise bound is the
    same however it is split, and at tol = 0 no partition decides. Only when splitting stops; no
    bound depends on it."""
    sizes = sorted(max(abs(c.lo), abs(c.hi)) for c in cells if math.isfinite(c.lo) and math.isfinite(c.hi))
    floor = STALL_SCALE * (1.0 + (sizes[len(sizes) // 2] if sizes else 0.0))
    for c in cells:
        key = (c.a, c.b)
        if key in stalled or key not in lineage:
            continue
        parent_width, count = lineage.pop(key)
        width = c.hi - c.lo
        narrowed = not (math.isfinite(width) and width <= floor and width >= STALL_RATIO * parent_width)
        stalled[key] = 0 if narrowed else count + 1


def _replace_parents(done: dict, fresh: dict, parents: dict) -> None:
    """Move all parts of a split cell from ``fresh`` into ``done`` in place of their parent, as
    soon as all are enclosed (so ``done`` is always a partition of what has been covered)."""
    for parent, parts in list(parents.items()):
        if all(p in fresh for p in parts):
            done.pop(parent, None)
            for p in parts:
                done[p] = fresh.pop(p)
            del parents[parent]


def _unknown(done: dict, evaluated: int, why: str) -> EnclosureVerdict:
    cells = sorted(done.values(), key=lambda c: c.a)
    rb = _rise_bound(cells) if cells and _covers(cells) else None
    # undecided: every part of [0, 1] not covered by a cell with L′ ≤ 0 proven
    undecided: list[tuple[float, float]] = []
    at = 0.0
    for c in cells:
        if c.rise_share <= 0:
            if c.a > at:
                undecided.append((at, c.a))
            at = max(at, c.b)
    if at < 1.0:
        undecided.append((at, 1.0))
    bound = float_up(rb) if rb is not None else None
    text = f"{why}; proven rise bound {bound:.3g}" if bound is not None else why
    return EnclosureVerdict("unknown", bound, None, None, None, evaluated, _merge(undecided), text, tuple(cells))


def _covers(cells: list[CellBound]) -> bool:
    at = 0.0
    for c in cells:
        if c.a != at:
            return False
        at = c.b
    return at == 1.0
