"""The empirical neural tangent kernel K = J Jᵀ of a model at one parameter state.

For n examples x_1 … x_n and a model with k outputs per example (outputs are flattened), J is the
(n·k) × P Jacobian of the stacked outputs with respect to the P trainable parameters, and

    K[(a, o), (b, o′)] = ⟨∂f_o(x_a)/∂θ, ∂f_o′(x_b)/∂θ⟩,   row index a·k + o (example-major).

Two kernels are offered:

* ``full``: the whole (n·k) × (n·k) matrix above (the default; what Fort et al. 2020 and the PL*
  condition of Liu, Zhu and Belkin 2022 use);
* ``logit_trace``: the n × n matrix Σ_o K[(a, o), (b, o)], the trace over the output dimensions of
  the per-output kernels (the partial trace of the full kernel over outputs). It is cheaper (k
  times fewer rows and columns) and, for a model whose full kernel is Θ ⊗ I_k, equals k·Θ.

Two recipes compute the same numbers (Novak, Sohl-Dickstein and Schoenholz 2022, "Fast finite
width neural tangent kernel"; the ``torch.func`` NTK tutorial):

* ``jacobian`` (Jacobian contraction): per-example Jacobians J_a = vmap(jacrev) over a block of
  examples, then K_ab = J_a J_bᵀ by matrix products, parameter tensor by parameter tensor;
* ``ntk_vp`` (NTK-vector products): the rows J_a (reverse mode, as above) are pushed forward as
  tangents through the model on the column examples with ``jvp``, giving J_b J_aᵀ without
  materialising J_b.

``auto`` picks by the cost estimate of :func:`estimate_cost`. Every routine works on blocks of
examples (rows and columns), so neither all of J nor all of K needs to be in memory at once; the
block sizes follow a memory budget in bytes.

The model is evaluated in eval mode on a private copy through ``torch.func.functional_call``: the
caller's module and tensors are never modified.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Mapping

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from ..errors import InputError

KernelKind = Literal["full", "logit_trace"]
Recipe = Literal["auto", "jacobian", "ntk_vp"]
KERNELS: tuple[str, ...] = ("full", "logit_trace")
RECIPES: tuple[str, ...] = ("auto", "jacobian", "ntk_vp")

#: default memory budget (bytes) for the Jacobian and kernel blocks of one computation
DEFAULT_MEMORY = 1 << 30


def check_kernel(kernel: str) -> str:
    """``full`` or ``logit_trace``, or an :class:`InputError` naming the parameter."""
    if kernel not in KERNELS:
        raise InputError(f"kernel={kernel!r}: unknown kernel (expected full or logit_trace)")
    return kernel


def check_recipe(recipe: str) -> str:
    """``auto``, ``jacobian`` or ``ntk_vp``, or an :class:`InputError` naming the parameter."""
    if recipe not in RECIPES:
        raise InputError(f"recipe={recipe!r}: unknown NTK recipe (expected auto, jacobian or ntk_vp)")
    return recipe


@dataclass(frozen=True)
class NTKModel:
    """A module seen as a function of its trainable parameters (a private eval-mode copy).

    Attributes:
        shell: a deep copy of the caller's module, in eval mode, used only through
            ``functional_call`` (its own tensors are never read).
        param_names: the trainable parameters (``requires_grad``), in ``named_parameters`` order.
    """

    shell: nn.Module
    param_names: tuple[str, ...]

    @staticmethod
    def from_module(model: nn.Module, *, shell: nn.Module | None = None) -> "NTKModel":
        """Wrap ``model`` (copied unless a private ``shell`` of it is given, e.g. ``Line.shell``)."""
        names = tuple(n for n, p in model.named_parameters() if p.requires_grad)
        if not names:
            raise InputError("the model has no trainable parameters: its tangent kernel is zero")
        if shell is None:
            shell = copy.deepcopy(model)
            if any(t.is_meta for t in shell.parameters()) or any(t.is_meta for t in shell.buffers()):
                shell = shell.to_empty(device="cpu")
        shell.eval()
        return NTKModel(shell, names)

    def split(self, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(trainable parameters, everything else) of a full state dict, detached."""
        missing = [n for n in self.param_names if n not in state]
        if missing:
            raise InputError(f"the state lacks parameters {', '.join(missing[:6])}")
        params = {n: state[n].detach() for n in self.param_names}
        rest = {k: v.detach() for k, v in state.items() if k not in params}
        return params, rest


@dataclass(frozen=True)
class _Fn:
    """Model outputs as functions of the parameters at one state (internal)."""

    model: NTKModel
    params: dict[str, torch.Tensor]
    rest: dict[str, torch.Tensor]

    def batch(self, p: Mapping[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.model.shell, {**p, **self.rest}, (xb,))
        return out.reshape(xb.shape[0], -1)

    def single(self, p: Mapping[str, torch.Tensor], x1: torch.Tensor) -> torch.Tensor:
        return self.batch(p, x1.unsqueeze(0))[0]

    @property
    def n_params(self) -> int:
        return sum(t.numel() for t in self.params.values())


def _fn(model: NTKModel, state: Mapping[str, torch.Tensor]) -> _Fn:
    params, rest = model.split(state)
    return _Fn(model, params, rest)


def _jacobian_rows(f: _Fn, xb: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example Jacobians of a block: {name: (b, k, numel)} (reverse mode, vmapped over examples)."""
    jac = vmap(jacrev(f.single), in_dims=(None, 0))(f.params, xb)
    return {n: j.reshape(j.shape[0], j.shape[1], -1) for n, j in jac.items()}


def _contract(ja: dict[str, torch.Tensor], jb: dict[str, torch.Tensor], kernel: str) -> torch.Tensor:
    """Kernel block from two Jacobian blocks: Σ over parameter tensors of J_a J_bᵀ."""
    out = None
    for n, a in ja.items():
        b = jb[n]
        if kernel == "full":
            blk = a.reshape(-1, a.shape[-1]) @ b.reshape(-1, b.shape[-1]).T
        else:
            blk = torch.einsum("aop,bop->ab", a, b)
        out = blk if out is None else out + blk
    assert out is not None
    return out


def _push_forward(f: _Fn, ja: dict[str, torch.Tensor], xb: torch.Tensor, kernel: str, chunk: int | None) -> torch.Tensor:
    """Kernel block J_b J_aᵀ (transposed to rows a) by forward-mode products of the rows of J_a."""
    rows = next(iter(ja.values()))
    b_a, k = rows.shape[0], rows.shape[1]
    tangents = {n: j.reshape(b_a * k, *f.params[n].shape) for n, j in ja.items()}

    def push(u: dict[str, torch.Tensor]) -> torch.Tensor:
        return jvp(lambda p: f.batch(p, xb), (f.params,), (u,))[1]

    t = vmap(push, chunk_size=chunk)(tangents)  # (b_a·k, b_b, k)
    if kernel == "full":
        return t.reshape(b_a * k, -1)
    return t.reshape(b_a, k, xb.shape[0], k).diagonal(dim1=1, dim2=3).sum(-1)


@dataclass(frozen=True)
class RecipeCost:
    """The cost estimate behind the ``auto`` recipe (see :func:`estimate_cost`).

    Attributes:
        n_examples, n_outputs, n_params: n, k and P.
        forward_flops: F, floating-point operations of one forward pass on one example (counted
            by ``torch.utils.flop_counter`` on one example; 2P when nothing is counted).
        jacobian_flops: estimated operations of the Jacobian-contraction recipe.
        ntk_vp_flops: estimated operations of the NTK-vector-product recipe.
        choice: the cheaper recipe (``jacobian`` on ties).
    """

    n_examples: int
    n_outputs: int
    n_params: int
    forward_flops: float
    jacobian_flops: float
    ntk_vp_flops: float
    choice: str


def forward_flops(model: NTKModel, state: Mapping[str, torch.Tensor], x1: torch.Tensor) -> float:
    """FLOPs of one forward pass on the single example ``x1`` (batch of one), 2P if none are counted."""
    f = _fn(model, state)
    counted = 0.0
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            f.batch(f.params, x1.unsqueeze(0))
        counted = float(counter.get_total_flops())
    except Exception:  # the counter is an estimate aid; never a reason to fail
        counted = 0.0
    return counted if counted > 0 else 2.0 * f.n_params


def estimate_cost(n: int, k: int, p: int, flops: float, kernel: str = "full", jacobian_passes: int = 1) -> RecipeCost:
    """Estimated operations of the two recipes for an n-example kernel.

    With F the forward FLOPs of one example, a reverse pass costing about 2F and a forward-mode
    (jvp) pass about 3F (primal and tangent):

    * per-example Jacobians (both recipes): n·(F + 2kF) — one forward and k reverse passes each;
    * ``jacobian``: Jacobians ``jacobian_passes`` times (1 when all of J fits the memory budget,
      else once per row block) plus the contraction, 2(nk)²P for ``full`` and 2n²kP for
      ``logit_trace``;
    * ``ntk_vp``: Jacobian rows once plus one jvp over all n examples for each of the n·k rows:
      3n²kF (both kernels; ``logit_trace`` keeps only the diagonal output of each push).

    So for the full kernel the contraction wins when about 2kP < 3F (convolutions, where F ≫ P,
    or few outputs), the NTK-vector products when the outputs are many and F ≈ 2P (dense layers);
    for ``logit_trace`` the contraction nearly always wins. These are operation counts, not
    measurements: ``benchmarks/kernel_speed.py`` times both recipes.
    """
    rows = n * (1 + 2 * k) * flops
    contraction = 2.0 * (n * k) ** 2 * p if kernel == "full" else 2.0 * n * n * k * p
    jac = jacobian_passes * rows + contraction
    vp = rows + 3.0 * n * n * k * flops
    return RecipeCost(n, k, p, float(flops), float(jac), float(vp), "jacobian" if jac <= vp else "ntk_vp")


@dataclass(frozen=True)
class Plan:
    """How one kernel computation is blocked (internal, but reported for transparency).

    Attributes:
        recipe: ``jacobian`` or ``ntk_vp``.
        kernel: ``full`` or ``logit_trace``.
        n, k, p: examples, outputs per example, trainable parameters.
        jac_block: examples per Jacobian block.
        row_block: examples per row block of the kernel.
        cache_jacobian: whether all of J is kept (``jacobian`` recipe) instead of recomputed per
            row block.
        chunk: tangents per vmapped jvp (``ntk_vp``; None: all at once).
        cost: the estimate that chose the recipe.
    """

    recipe: str
    kernel: str
    n: int
    k: int
    p: int
    jac_block: int
    row_block: int
    cache_jacobian: bool
    chunk: int | None
    cost: RecipeCost

    @property
    def size(self) -> int:
        """Side of the kernel matrix: n·k (full) or n (logit_trace)."""
        return self.n * self.k if self.kernel == "full" else self.n

    @property
    def per_example(self) -> int:
        """Kernel rows per example: k (full) or 1 (logit_trace)."""
        return self.k if self.kernel == "full" else 1


def make_plan(
    model: NTKModel,
    state: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    *,
    kernel: str = "full",
    recipe: str = "auto",
    memory_bytes: int = DEFAULT_MEMORY,
    rows_held: int = 3,
) -> Plan:
    """Choose the recipe and block sizes for kernels of ``model`` on ``x``.

    ``rows_held`` row blocks of the kernel (in float64) must fit the budget together, besides the
    Jacobian blocks; a block is never smaller than one example.
    """
    check_kernel(kernel)
    check_recipe(recipe)
    if x.shape[0] < 1:
        raise InputError("the kernel needs at least one example")
    f = _fn(model, state)
    with torch.no_grad():
        k = int(f.batch(f.params, x[:1]).shape[1])
    if k < 1:
        raise InputError("the model returns no outputs")
    n, p = int(x.shape[0]), f.n_params
    item = x.element_size()
    jac_example = k * p * item  # bytes of one example's Jacobian
    jac_block = max(1, min(n, int(memory_bytes // (4 * jac_example))))
    cache = n * jac_example <= memory_bytes // 2
    per = k if kernel == "full" else 1
    size = n * per
    row_block = max(1, min(n, int(memory_bytes // (2 * rows_held * per * size * 8))))
    row_block = min(row_block, jac_block)
    passes = 1 if cache else math.ceil(n / row_block)
    cost = estimate_cost(n, k, p, forward_flops(model, state, x[0]), kernel, passes)
    chosen = cost.choice if recipe == "auto" else recipe
    chunk = None
    if chosen == "ntk_vp":
        # tangents per vmapped jvp: each carries a parameter-sized tangent plus the tangents of the
        # activations of a column block; the activations are guessed as 64·k numbers per example
        # (a heuristic for chunking only: it changes memory and speed, never the result)
        chunk = max(1, int(memory_bytes // (8 * max(p, 1) * item + 8 * jac_block * k * item * 64)))
    return Plan(chosen, kernel, n, k, p, jac_block, row_block, cache, chunk, cost)


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class _Rows:
    """Row blocks K[rows, :] of one state's kernel, following a :class:`Plan` (internal)."""

    def __init__(self, model: NTKModel, state: Mapping[str, torch.Tensor], x: torch.Tensor, plan: Plan) -> None:
        self.f, self.x, self.plan = _fn(model, state), x, plan
        self._jac: list[dict[str, torch.Tensor]] | None = None
        if plan.recipe == "jacobian" and plan.cache_jacobian:
            self._jac = [_jacobian_rows(self.f, x[s]) for s in _blocks(plan.n, plan.jac_block)]

    def _jac_blocks(self) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
        cols = _blocks(self.plan.n, self.plan.jac_block)
        if self._jac is not None:
            yield from zip(cols, self._jac)
        else:
            for s in cols:
                yield s, _jacobian_rows(self.f, self.x[s])

    def _rows_jacobian(self, sl: slice) -> dict[str, torch.Tensor]:
        """J for the examples in ``sl``: sliced from the cache when there is one, else computed."""
        if self._jac is None:
            return _jacobian_rows(self.f, self.x[sl])
        parts: list[dict[str, torch.Tensor]] = []
        for cs, jb in zip(_blocks(self.plan.n, self.plan.jac_block), self._jac):
            lo, hi = max(cs.start, sl.start), min(cs.stop, sl.stop)
            if lo < hi:
                parts.append({n: j[lo - cs.start : hi - cs.start] for n, j in jb.items()})
        if len(parts) == 1:
            return parts[0]
        return {n: torch.cat([p[n] for p in parts]) for n in parts[0]}

    def rows(self, sl: slice) -> torch.Tensor:
        """K[rows of the examples in ``sl``, all columns], in float64."""
        ja = self._rows_jacobian(sl)
        parts = []
        if self.plan.recipe == "jacobian":
            for _, jb in self._jac_blocks():
                parts.append(_contract(ja, jb, self.plan.kernel))
        else:
            for cs in _blocks(self.plan.n, self.plan.jac_block):
                parts.append(_push_forward(self.f, ja, self.x[cs], self.plan.kernel, self.plan.chunk))
        return torch.cat(parts, dim=1).to(torch.float64)

    def full(self) -> torch.Tensor:
        """The whole kernel (float64), assembled from row blocks and symmetrised."""
        k = torch.cat([self.rows(s) for s in _blocks(self.plan.n, self.plan.row_block)], dim=0)
        return 0.5 * (k + k.T)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """K v without forming K or J: Jᵀv by reverse mode, then J(Jᵀv) by forward mode, blocked.

        For ``logit_trace``, K v = Σ_o J_o (J_oᵀ v) with J_o the Jacobian of output o.
        """
        plan, f = self.plan, self.f
        cols = _blocks(plan.n, plan.jac_block)
        v = v.to(self.x.dtype)
        if plan.kernel == "full":
            vv = v.reshape(plan.n, plan.k)
            g = None
            for s in cols:
                _, pull = vjp(lambda p: f.batch(p, self.x[s]), f.params)
                (gs,) = pull(vv[s])
                g = gs if g is None else {n: g[n] + gs[n] for n in g}
            out = [jvp(lambda p: f.batch(p, self.x[s]), (f.params,), (g,))[1] for s in cols]
            return torch.cat(out).reshape(-1).to(torch.float64)
        eye = torch.eye(plan.k, dtype=self.x.dtype, device=self.x.device)
        gs_all = None
        for s in cols:
            _, pull = vjp(lambda p: f.batch(p, self.x[s]), f.params)
            cot = v[s].reshape(-1, 1, 1) * eye.reshape(1, plan.k, plan.k)  # (b, o, k): output o carries v
            (gs,) = vmap(pull, in_dims=1)(cot)  # per output o: (k, *shape)
            gs_all = gs if gs_all is None else {n: gs_all[n] + gs[n] for n in gs_all}
        out = []
        for s in cols:
            def push(u: dict[str, torch.Tensor], xb: torch.Tensor = self.x[s]) -> torch.Tensor:
                return jvp(lambda p: f.batch(p, xb), (f.params,), (u,))[1]

            t = vmap(push)(gs_all)  # (o, b, k)
            out.append(t.diagonal(dim1=0, dim2=2).sum(-1))
        return torch.cat(out).to(torch.float64)


def kernel_rows(model: NTKModel, state: Mapping[str, torch.Tensor], x: torch.Tensor, plan: Plan) -> _Rows:
    """Row-block access to the kernel of ``model`` at ``state`` on ``x`` (see :class:`Plan`)."""
    return _Rows(model, state, x, plan)


def _state_of(model: nn.Module, state: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    if state is None:
        return {k: v.detach() for k, v in model.state_dict().items()}
    return dict(state)


def empirical_ntk(
    model: nn.Module,
    x: torch.Tensor,
    *,
    state: Mapping[str, torch.Tensor] | None = None,
    kernel: str = "full",
    recipe: str = "auto",
    memory_bytes: int = DEFAULT_MEMORY,
) -> torch.Tensor:
    """The empirical NTK K = J Jᵀ of ``model`` on the examples ``x`` (dense, float64).

    Args:
        model: the network (not modified; evaluated in eval mode on a private copy).
        x: examples, first axis n; use the dtype and device you want the computation in.
        state: the parameters and buffers to use (default: the model's own).
        kernel: ``full`` ((n·k) × (n·k), row index a·k + o) or ``logit_trace`` (n × n).
        recipe: ``jacobian``, ``ntk_vp`` or ``auto`` (by :func:`estimate_cost`).
        memory_bytes: budget for Jacobian and kernel blocks.

    >>> lin = torch.nn.Linear(2, 1).double()
    >>> x = torch.eye(2, dtype=torch.float64)
    >>> empirical_ntk(lin, x).tolist()  # (X Xᵀ + 1) for a linear model with a bias
    [[2.0, 1.0], [1.0, 2.0]]
    """
    m = NTKModel.from_module(model)
    st = _state_of(model, state)
    st = {k: v.to(device=x.device, dtype=x.dtype) if v.is_floating_point() else v.to(x.device) for k, v in st.items()}
    m.shell.to(device=x.device, dtype=x.dtype)
    plan = make_plan(m, st, x, kernel=kernel, recipe=recipe, memory_bytes=memory_bytes, rows_held=1)
    return kernel_rows(m, st, x, plan).full()


def ntk_matvec(
    model: nn.Module,
    x: torch.Tensor,
    *,
    state: Mapping[str, torch.Tensor] | None = None,
    kernel: str = "full",
    memory_bytes: int = DEFAULT_MEMORY,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v ↦ K v for the kernel of :func:`empirical_ntk`, never forming K or all of J."""
    m = NTKModel.from_module(model)
    st = _state_of(model, state)
    st = {k: v.to(device=x.device, dtype=x.dtype) if v.is_floating_point() else v.to(x.device) for k, v in st.items()}
    m.shell.to(device=x.device, dtype=x.dtype)
    plan = make_plan(m, st, x, kernel=kernel, recipe="ntk_vp", memory_bytes=memory_bytes, rows_held=1)
    return kernel_rows(m, st, x, plan).matvec
