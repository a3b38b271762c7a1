"""Permutation alignment by weight matching (Ainsworth, Hayase & Srinivasa 2022, "Git Re-Basin", §3.2).

Hidden units of a network can be permuted without changing the function it computes: if a layer's
outputs are permuted by P, the next layer's inputs are permuted by Pᵀ, and everything that acts
unit by unit in between (biases, BatchNorm, elementwise activations, pooling) is permuted by P
too. Two checkpoints A and B of one architecture may therefore sit in different "copies" of one
basin. Weight matching picks, for every independent permutation group, the permutation π of B's
units that maximises the summed inner products of the weights,

    max_π  Σ_ℓ ⟨W_ℓ^A, π_ℓ W_ℓ^B π_{ℓ−1}ᵀ⟩ ,

by coordinate ascent: each group in turn (random order) solves a linear assignment problem with
``scipy.optimize.linear_sum_assignment`` on C[i, j] = Σ over the tensors touching the group of
⟨A's unit i, B's unit j with every other group's current permutation applied⟩, until a full sweep
improves nothing. The similarity uses the trainable parameters only; BatchNorm running statistics
are permuted with their channels but do not enter C. Coordinate ascent finds a local optimum: every
sweep keeps or raises the similarity, but which optimum it reaches can depend on the order in
which the groups are visited (``seed``), so an exact copy of A with several permuted groups is not
always recovered (the similarity then stays below ‖A‖², which a recovered copy attains).

The permutation groups are derived from the model itself (:func:`permutation_groups`): the model is
traced with :func:`torch.fx.symbolic_trace` and every tensor in the graph is given a "unit space".
``Linear``/``Conv`` outputs open a new space; BatchNorm, LayerNorm over the last axis, elementwise
activations, dropout and pooling keep their input's space; an addition or elementwise product of
two tensors (a residual connection) merges their spaces into one shared permutation; ``flatten``
of a feature map makes the next ``Linear`` see each channel as a block of spatial positions. The
model's input and output spaces are fixed (no permutation). Anything else raises
``InputError("cannot align: <reason>")``: untraceable models, grouped convolutions, parameters
used outside modules, reshapes, concatenations, outputs that are not one tensor.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError
from ..inputs.checkpoint import StateDict, match_state_dict

__all__ = [
    "AlignmentResult",
    "PermutationGroup",
    "apply_permutation",
    "permutation_groups",
    "weight_matching",
]


@dataclass(frozen=True)
class PermutationGroup:
    """One set of hidden units that must be permuted together.

    Attributes:
        name: the first module whose outputs open this group (e.g. ``"0"`` or ``"layer1.conv2"``).
        size: number of units (channels).
        axes: (state key, axis, repeat): the tensor ``key`` carries this group's units along
            ``axis``, each unit as a block of ``repeat`` consecutive entries (repeat > 1 for a
            ``Linear`` after ``flatten`` of a feature map with ``repeat`` spatial positions).
    """

    name: str
    size: int
    axes: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class AlignmentResult:
    """Weight matching of checkpoint B onto checkpoint A.

    Attributes:
        state: B with its units permuted (a new state dict; same function as B).
        perms: group name → permutation π (π[i] = the unit of B placed at position i).
        groups: the permutation groups of the model.
        iterations: full sweeps over the groups until none improved.
        similarity_before: Σ ⟨A, B⟩ over the trainable parameters before matching.
        similarity_after: the same with B permuted (≥ similarity_before).
        is_identity: every permutation found is the identity.
    """

    state: StateDict
    perms: Mapping[str, tuple[int, ...]]
    groups: tuple[PermutationGroup, ...]
    iterations: int
    similarity_before: float
    similarity_after: float
    is_identity: bool


# --------------------------------------------------------------------------- graph analysis

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.SELU, nn.CELU,
    nn.Softplus, nn.Mish, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.AlphaDropout,
)
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.selu, F.softplus, F.mish, F.hardtanh, F.dropout,
    torch.relu, torch.tanh, torch.sigmoid, torch.nn.functional.tanh, torch.nn.functional.sigmoid,
}
_POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
}
_ELEMENTWISE_METHODS = {"relu", "tanh", "sigmoid", "contiguous", "clone"}
_MERGE_FUNCTIONS = {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul, operator.iadd}

FIXED = 0  # the unit space of the model's input and output (never permuted)


class _Spaces:
    """Union-find over unit spaces; space 0 is FIXED."""

    def __init__(self) -> None:
        self.parent = [0]
        self.size: list[int | None] = [None]
        self.opener: list[str] = ["<input/output>"]

    def new(self, size: int, opener: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.opener.append(opener)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        sa, sb = self.size[ra], self.size[rb]
        if sa is not None and sb is not None and sa != sb:
            raise InputError(f"cannot align: {where} joins unit spaces of sizes {sa} and {sb}")
        if rb == FIXED or (ra != FIXED and rb < ra):
            ra, rb = rb, ra
        self.parent[rb] = ra  # the root is FIXED, or the older space (its opener names the group)
        if self.size[ra] is None and ra != FIXED:
            self.size[ra] = sb
        return ra


@dataclass
class _T:
    """What the analysis knows of one tensor: its unit space and its layout."""

    space: int
    layout: str  # "vec": units on the last axis; "img": units on axis 1; "flat": flattened feature map; "any": the input


def permutation_groups(model: nn.Module) -> tuple[PermutationGroup, ...]:
    """The permutation groups of ``model``, derived from its traced graph (see the module docstring).

    Raises:
        InputError: ``cannot align: <reason>`` for structure the analysis does not support.
    """
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # torch.fx raises many types for untraceable code
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InputError(f"cannot align: torch.fx cannot trace the model ({type(exc).__name__}: {first})") from None
    mods = dict(gm.named_modules())
    sp = _Spaces()
    info: dict[Any, _T | None] = {}
    records: list[tuple[int, str, int, Any]] = []  # (space, key, axis, repeat or ("flat", in_features))
    module_space: dict[str, int] = {}
    module_input: dict[str, _T] = {}

    def arg(node: Any, what: str) -> _T:
        t = info.get(node)
        if t is None:
            raise InputError(f"cannot align: {what} takes an input the analysis cannot follow")
        return t

    def key(name: str, p: str) -> str:
        return f"{name}.{p}" if name else p

    def tensor_args(node: Any) -> list[Any]:
        return [a for a in node.args if isinstance(a, torch.fx.Node) and info.get(a) is not None]

    for node in gm.graph.nodes:
        where = f"{node.op} {node.target} ({node.name})"
        if node.op == "placeholder":
            info[node] = _T(FIXED, "any")
        elif node.op == "get_attr":
            raise InputError(f"cannot align: the model uses the tensor {node.target} outside a module")
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, torch.fx.Node):
                raise InputError("cannot align: the model does not return one tensor")
            sp.union(arg(out, "the output").space, FIXED, "the output")
        elif node.op == "call_module":
            name = str(node.target)
            m = mods[name]
            x = arg(node.args[0], f"module {name}")
            if isinstance(m, nn.Linear):
                if x.layout == "img" and x.space != FIXED:
                    raise InputError(f"cannot align: Linear {name} is applied to a feature map (no flatten before it)")
                if name in module_space:
                    sp.union(module_input[name].space, x.space, f"module {name} called twice")
                    v = module_space[name]
                else:
                    v = sp.new(m.out_features, name)
                    module_space[name], module_input[name] = v, x
                    records.append((v, key(name, "weight"), 0, 1))
                    records.append((x.space, key(name, "weight"), 1, ("flat", m.in_features) if x.layout == "flat" else 1))
                    if m.bias is not None:
                        records.append((v, key(name, "bias"), 0, 1))
                info[node] = _T(v, "vec")
            elif isinstance(m, nn.modules.conv._ConvNd):
                if m.groups != 1:
                    raise InputError(f"cannot align: convolution {name} has groups={m.groups} (only groups=1 is supported)")
                if isinstance(m, nn.modules.conv._ConvTransposeNd):
                    raise InputError(f"cannot align: transposed convolution {name} is not supported")
                if x.layout in ("vec", "flat") and x.space != FIXED:
                    raise InputError(f"cannot align: convolution {name} is applied to a flattened tensor")
                if name in module_space:
                    sp.union(module_input[name].space, x.space, f"module {name} called twice")
                    v = module_space[name]
                else:
                    v = sp.new(m.out_channels, name)
                    module_space[name], module_input[name] = v, x
                    records.append((v, key(name, "weight"), 0, 1))
                    records.append((x.space, key(name, "weight"), 1, 1))
                    if m.bias is not None:
                        records.append((v, key(name, "bias"), 0, 1))
                info[node] = _T(v, "img")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                if x.layout == "flat" and x.space != FIXED:
                    raise InputError(f"cannot align: BatchNorm {name} after flatten")
                if name not in module_space:
                    module_space[name] = x.space
                    for p in ("weight", "bias", "running_mean", "running_var"):
                        if getattr(m, p, None) is not None:
                            records.append((x.space, key(name, p), 0, 1))
                else:
                    sp.union(module_space[name], x.space, f"module {name} called twice")
                info[node] = _T(x.space, "img" if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) else x.layout)
            elif isinstance(m, nn.LayerNorm):
                if len(m.normalized_shape) != 1 or x.layout not in ("vec", "any"):
                    raise InputError(f"cannot align: LayerNorm {name} normalises more than the unit axis")
                if name not in module_space:
                    module_space[name] = x.space
                    for p in ("weight", "bias"):
                        if getattr(m, p, None) is not None:
                            records.append((x.space, key(name, p), 0, 1))
                else:
                    sp.union(module_space[name], x.space, f"module {name} called twice")
                info[node] = _T(x.space, x.layout)
            elif isinstance(m, nn.PReLU) and m.num_parameters > 1:
                raise InputError(f"cannot align: PReLU {name} has one slope per channel")
            elif isinstance(m, _ELEMENTWISE_MODULES):
                info[node] = _T(x.space, x.layout)
            elif isinstance(m, _POOL_MODULES):
                info[node] = _T(x.space, x.layout)
            elif isinstance(m, nn.Flatten):
                if m.start_dim != 1 or m.end_dim != -1:
                    raise InputError(f"cannot align: Flatten {name} with start_dim={m.start_dim}, end_dim={m.end_dim}")
                info[node] = _T(x.space, "flat" if x.layout in ("img", "flat") else x.layout)
            else:
                raise InputError(f"cannot align: unsupported module {name} ({type(m).__name__})")
        elif node.op == "call_function":
            f = node.target
            targs = tensor_args(node)
            if f in _MERGE_FUNCTIONS:
                if not targs:
                    info[node] = None
                    continue
                ts = [arg(a, where) for a in targs]
                layouts = {t.layout for t in ts if t.space != FIXED or t.layout != "any"}
                if len(layouts - {"any"}) > 1:
                    raise InputError(f"cannot align: {node.name} combines tensors of different layouts {sorted(layouts)}")
                s = ts[0].space
                for t in ts[1:]:
                    s = sp.union(s, t.space, f"the residual connection {node.name}")
                info[node] = _T(s, next(iter(layouts - {"any"}), "any"))
            elif f in _ELEMENTWISE_FUNCTIONS or f in _POOL_FUNCTIONS or f in (operator.truediv, torch.div, operator.neg):
                if f in (operator.truediv, torch.div) and len(targs) != 1:
                    raise InputError(f"cannot align: {node.name} divides two tensors")
                x = arg(node.args[0], where)
                info[node] = _T(x.space, x.layout)
            elif f is torch.flatten:
                x = arg(node.args[0], where)
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
                if start != 1 or end != -1:
                    raise InputError(f"cannot align: torch.flatten with start_dim={start}, end_dim={end}")
                info[node] = _T(x.space, "flat" if x.layout in ("img", "flat") else x.layout)
            else:
                raise InputError(f"cannot align: unsupported function {getattr(f, '__name__', f)} ({node.name})")
        elif node.op == "call_method":
            if node.target in ("size", "dim"):
                info[node] = None
            elif node.target in _ELEMENTWISE_METHODS:
                x = arg(node.args[0], where)
                info[node] = _T(x.space, x.layout)
            elif node.target == "flatten":
                x = arg(node.args[0], where)
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                if start != 1 or (len(node.args) > 2 and node.args[2] != -1):
                    raise InputError("cannot align: Tensor.flatten must flatten from dimension 1 to the end")
                info[node] = _T(x.space, "flat" if x.layout in ("img", "flat") else x.layout)
            else:
                raise InputError(f"cannot align: unsupported tensor method .{node.target}() ({node.name})")
        else:  # pragma: no cover - fx has no other ops
            raise InputError(f"cannot align: unsupported graph node {node.op}")

    axes: dict[int, list[tuple[str, int, int]]] = {}
    for space, k, axis, rep in records:
        root = sp.find(space)
        if root == FIXED:
            continue
        size = sp.size[root]
        assert size is not None
        if isinstance(rep, tuple):
            in_features = rep[1]
            if in_features % size:
                raise InputError(f"cannot align: {k} has {in_features} inputs, not a multiple of {size} channels")
            rep = in_features // size
        axes.setdefault(root, []).append((k, axis, rep))
    groups = []
    for root in sorted(axes):
        groups.append(PermutationGroup(sp.opener[root], int(sp.size[root]), tuple(axes[root])))  # type: ignore[arg-type]
    return tuple(groups)


# --------------------------------------------------------------------------- permutations


def _permute_axis(t: torch.Tensor, axis: int, perm: torch.Tensor, repeat: int) -> torch.Tensor:
    """``t`` with the units along ``axis`` (blocks of ``repeat`` entries) reordered: unit i ← perm[i]."""
    moved = t.movedim(axis, 0)
    shape = moved.shape
    n = perm.numel()
    out = moved.reshape(n, repeat, -1)[perm.to(t.device)].reshape(shape)
    return out.movedim(0, axis)


def _by_key(groups: Sequence[PermutationGroup]) -> dict[str, list[tuple[str, int, int]]]:
    out: dict[str, list[tuple[str, int, int]]] = {}
    for g in groups:
        for k, axis, rep in g.axes:
            out.setdefault(k, []).append((g.name, axis, rep))
    return out


def apply_permutation(
    state: Mapping[str, torch.Tensor],
    groups: Sequence[PermutationGroup],
    perms: Mapping[str, Sequence[int] | torch.Tensor],
) -> StateDict:
    """A new state dict with every group's units reordered by ``perms`` (unit i ← unit perm[i]).

    Groups missing from ``perms`` keep their order. ``state`` is not modified.

    Raises:
        InputError: a permutation of the wrong length or not a permutation.
    """
    ptens: dict[str, torch.Tensor] = {}
    for g in groups:
        if g.name not in perms:
            continue
        p = torch.as_tensor(np.asarray(perms[g.name]), dtype=torch.long).reshape(-1)
        if p.numel() != g.size or not torch.equal(torch.sort(p).values, torch.arange(g.size)):
            raise InputError(f"perms[{g.name!r}] is not a permutation of {g.size} units")
        ptens[g.name] = p
    out: StateDict = {}
    index = _by_key(groups)
    for k, t in state.items():
        t = t.detach().clone()
        for gname, axis, rep in index.get(k, ()):
            if gname in ptens:
                t = _permute_axis(t, axis, ptens[gname], rep)
        out[k] = t
    return out


def _unit_matrix(t: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    return t.movedim(axis, 0).reshape(n, -1)


def weight_matching(
    model: nn.Module,
    a: StateDict,
    b: StateDict,
    *,
    groups: Sequence[PermutationGroup] | None = None,
    max_iter: int = 100,
    seed: int = 0,
) -> AlignmentResult:
    """Permute the hidden units of checkpoint ``b`` to match ``a`` by weight matching.

    Args:
        model: the architecture (traced once to find the groups; not modified).
        a, b: state dicts of the two checkpoints (not modified).
        groups: the permutation groups (default: :func:`permutation_groups` of ``model``).
        max_iter: at most this many sweeps over the groups.
        seed: seeds the order in which groups are visited in each sweep.

    Returns:
        An :class:`AlignmentResult`; its ``state`` computes the same function as ``b``.

    Raises:
        InputError: mismatched checkpoints, or ``cannot align: <reason>``.
    """
    from scipy.optimize import linear_sum_assignment

    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise InputError(f"max_iter={max_iter!r}: must be a positive integer")
    a = match_state_dict(model, a, "a")
    b = match_state_dict(model, b, "b")
    groups = tuple(permutation_groups(model) if groups is None else groups)
    params = {n for n, _ in model.named_parameters()}
    A = {k: v.detach().to("cpu", torch.float64) for k, v in a.items() if k in params}
    B = {k: v.detach().to("cpu", torch.float64) for k, v in b.items() if k in params}
    index = _by_key(groups)
    perms = {g.name: torch.arange(g.size) for g in groups}
    rng = np.random.default_rng(seed)

    def permuted_except(k: str, skip: tuple[str, int]) -> torch.Tensor:
        t = B[k]
        for gname, axis, rep in index.get(k, ()):
            if (gname, axis) != skip:
                t = _permute_axis(t, axis, perms[gname], rep)
        return t

    def similarity() -> float:
        pb = apply_permutation(B, groups, perms)
        return float(sum((A[k] * pb[k]).sum() for k in A))

    before = similarity()
    iterations = 0
    for _ in range(max_iter):
        iterations += 1
        improved = False
        for gi in rng.permutation(len(groups)):
            g = groups[gi]
            cost = torch.zeros(g.size, g.size, dtype=torch.float64)
            for k, axis, rep in g.axes:
                if k not in A:
                    continue
                wa = _unit_matrix(A[k], axis, g.size)
                wb = _unit_matrix(permuted_except(k, (g.name, axis)), axis, g.size)
                cost += wa @ wb.T
            c = cost.numpy()
            rows, cols = linear_sum_assignment(c, maximize=True)
            new = torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)
            old_v = float(c[np.arange(g.size), perms[g.name].numpy()].sum())
            new_v = float(c[np.arange(g.size), new.numpy()].sum())
            if new_v > old_v + 1e-12 * max(1.0, abs(old_v)):
                perms[g.name] = new
                improved = True
        if not improved:
            break
    state = apply_permutation(b, groups, perms)
    after = similarity()
    out_perms = {k: tuple(int(i) for i in v) for k, v in perms.items()}
    identity = all(v == tuple(range(len(v))) for v in out_perms.values())
    return AlignmentResult(state, out_perms, groups, iterations, before, after, identity)
