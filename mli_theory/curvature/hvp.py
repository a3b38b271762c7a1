"""Hessian-vector products of the mean training loss at a point θ(α) of the path.

The operator is H(α) = ∇²_θ L(θ(α)) with

    L(θ) = (1/N) Σ_i ℓ(f(x_i; θ), y_i),

the mean training loss as torch's ``reduction="mean"`` computes it over the *whole* data set
(N = n·k for ``mse``, N = n for ``ce``), differentiated with respect to the trainable parameters
only (buffers such as BatchNorm running statistics are held fixed). A product H·v is computed
forward-over-reverse, ``jvp(grad(L), (θ,), (v,))`` with :mod:`torch.func`: one forward and one
backward pass carrying a tangent (Pearlmutter 1994, "Fast exact multiplication by the Hessian";
the forward-over-reverse ordering is the one recommended by the ``torch.func`` documentation).
Minibatches give the exact full-set product: H·v = (1/N) Σ_batches ∇²(Σ_{i∈batch} ℓ_i)·v, per-batch
sums accumulated and divided once by N. Several vectors are multiplied at once by ``vmap`` over the
tangents, which shares the primal forward and backward passes among them.

A second engine, ``double_backward``, is reverse-over-reverse with the gradient graph of each
batch built once and reused (the scheme of PyHessian, Yao et al. 2020): faster per product on a
CPU, at the price of keeping every batch's graph in memory. A block of vectors goes through the
cached graph in chunks of ``block`` (default 4) vectors per backward pass
(``torch.autograd.grad(..., is_grads_batched=True)``, a vmap over the backward), which shares
each weight matrix's reads among the vectors of the chunk (measured on 2 CPU cores, MLP
784-1000-1000-10, n = 2000: 0.56 s per product alone, 0.35 s per product in chunks of 4, 0.36 s
in chunks of 8).

``engine="auto"`` (the default) resolves, once per operator, by a documented rule rather than a
timing probe: ``double_backward`` on a CPU when the cached graphs fit the memory budget,
``forward_over_reverse`` otherwise (any other device, or graphs too large). The graph memory is
measured, not guessed: the first batch's graph is built under
:func:`torch.autograd.graph.saved_tensors_hooks` that add up the bytes of the distinct storages
it saves (forward activations and the tensors the create_graph backward keeps), and the total is
extrapolated to all batches by example count. The budget is ``memory_budget`` bytes (default:
the ``MLI_HVP_GRAPH_BUDGET`` environment variable, else a quarter of the machine's available
memory, at most 8 GiB). When the estimate exceeds it the graph is dropped and the operator falls
back to forward-over-reverse. The engine chosen is :attr:`LossHessian.engine`, and the estimate
:attr:`LossHessian.graph_bytes` (measured on CPU under ``auto``; 0 when not measured).

BatchNorm (evaluated in eval mode, so the Hessian is that of a function of θ alone):

* ``frozen``: running statistics of θT at every α;
* ``interpolate``: the interpolated statistics at α, held fixed while differentiating;
* ``recompute``: statistics re-estimated once at θ(α) (one train-mode pass over the data, as the
  reference implementation of Lucas et al. 2021 does), then held fixed for every product. The
  dependence of re-estimated statistics on θ is *not* differentiated.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch.func import functional_call, grad, jvp, vmap
from torch.nn import functional as F

from ..errors import InputError
from ..inputs.checkpoint import StateDict
from ..inputs.data import Dataset
from ..path import BNPolicy, Line, batches, loss_normaliser, recompute_bn_statistics

Params = Mapping[str, torch.Tensor]
ENGINES: tuple[str, ...] = ("auto", "forward_over_reverse", "double_backward")
#: vectors per batched backward pass through a cached graph (double_backward)
DOUBLE_BACKWARD_BLOCK = 4


def hvp(fn: Callable[[Params], torch.Tensor], params: Params, tangent: Params) -> dict[str, torch.Tensor]:
    """∇²f(θ)·v for a scalar function ``fn`` of a dict of tensors, forward-over-reverse.

    Computes the directional derivative of the gradient, d/dt ∇f(θ + t·v) at t = 0, as
    ``torch.func.jvp(torch.func.grad(fn), (θ,), (v,))``. Neither ``params`` nor ``tangent`` is
    modified.

    >>> f = lambda p: (p["w"] ** 3).sum()          # ∇²f = diag(6w)
    >>> hvp(f, {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([1.0, 1.0])})["w"].tolist()
    [6.0, 12.0]
    """
    return jvp(grad(fn), (dict(params),), (dict(tangent),))[1]


def _loss_sum(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "mse":
        return F.mse_loss(out, y, reduction="sum")
    return F.cross_entropy(out, y, reduction="sum")


def fixed_buffers(line: Line, data: Dataset, alpha: float, bn: BNPolicy | str, batch_size: int | None = None) -> StateDict:
    """The state entries held constant at θ(α): every non-parameter entry, BatchNorm statistics by ``bn``."""
    bn = BNPolicy(bn)
    state = line.at(alpha, bn)
    if line.has_bn and bn == BNPolicy.RECOMPUTE:
        state = recompute_bn_statistics(line, state, data.x, batch_size)
    return {k: v for k, v in state.items() if k not in line.param_names}


@dataclass(frozen=True)
class LossHessian:
    """The Hessian H of the mean training loss at one parameter point, as a matrix-free operator.

    Vectors are flat tensors of length :attr:`size` laid out parameter by parameter in
    :attr:`names` order (each parameter flattened row-major), on :attr:`device` in :attr:`dtype`.

    Attributes:
        params: the point θ (trainable parameters only), detached.
        buffers: entries held fixed (BatchNorm statistics, counters).
        names: parameter names, in the flat layout's order.
        shapes: their shapes.
        size: number of trainable parameters (the operator is size × size).
        alpha: the α of the path point (None when built from a plain point).
        batch_size: examples per pass (None: all at once); the product does not depend on it.
        engine: the engine in use (``auto`` is resolved when the operator is built, see the module
            doc): ``forward_over_reverse`` (``torch.func``: each product is one forward and one
            backward pass with tangents; memory of one batch), or ``double_backward`` (the
            gradient graph of every batch is built once, ``create_graph=True``, and every product
            is a backward pass through it, as PyHessian does for one batch: faster per product,
            but the graphs of all batches stay in memory for the operator's lifetime).
        cache: per batch, (parameter leaves, gradient tensors with their graph) for ``double_backward``.
        block: vectors per batched backward pass through the cached graph (``double_backward``).
        engine_requested: the ``engine`` argument (``auto`` or the engine itself).
        graph_bytes: measured (``auto`` on CPU) estimate of the cached graphs' memory, else 0.
    """

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    size: int
    alpha: float | None
    batch_size: int | None
    shell: Any = field(repr=False)
    data: Dataset = field(repr=False)
    engine: str = "forward_over_reverse"
    cache: tuple = field(default=(), repr=False, compare=False)
    block: int = DOUBLE_BACKWARD_BLOCK
    engine_requested: str = "forward_over_reverse"
    graph_bytes: int = 0

    @property
    def device(self) -> torch.device:
        return self.params[self.names[0]].device

    @property
    def dtype(self) -> torch.dtype:
        return self.params[self.names[0]].dtype

    # ------------------------------------------------------------------ layout
    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector (size,) or block (m, size) as a dict of parameter-shaped tensors."""
        lead = v.shape[:-1]
        out, i = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = 1
            for s in shape:
                n *= s
            out[name] = v[..., i : i + n].reshape(*lead, *shape)
            i += n
        return out

    def flatten(self, d: Mapping[str, torch.Tensor], lead: int = 0) -> torch.Tensor:
        """The inverse of :meth:`unflatten` (``lead`` leading batch dimensions kept)."""
        return torch.cat([d[k].reshape(*d[k].shape[:lead], -1) for k in self.names], dim=-1)

    # ------------------------------------------------------------------ products
    def _batch_fn(self, sl: slice) -> Callable[[Params], torch.Tensor]:
        x, y, loss, shell, buffers = self.data.x[sl], self.data.y[sl], self.data.loss, self.shell, self.buffers

        def f(p: Params) -> torch.Tensor:
            return _loss_sum(functional_call(shell, {**buffers, **p}, (x,)), y, loss)

        return f

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H·v for one flat vector (any float dtype; computed in the operator's dtype)."""
        return self.matmat(v.reshape(1, -1)).reshape(-1)

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        """H·v for a block of vectors, shape (m, size) → (m, size): one vmapped pass per minibatch."""
        vs = vs.to(device=self.device, dtype=self.dtype)
        if vs.dim() != 2 or vs.shape[1] != self.size:
            raise InputError(f"vectors of shape {tuple(vs.shape)} do not fit a Hessian of size {self.size}")
        tangents = self.unflatten(vs)
        params = self.params
        if self.engine == "double_backward":
            m, b = vs.shape[0], max(1, int(self.block))
            total = torch.empty(vs.shape, dtype=self.dtype, device=self.device)
            for j, (leaves, grads) in enumerate(self.cache):
                for lo in range(0, m, b):
                    hi = min(m, lo + b)
                    if hi - lo == 1:
                        out = torch.autograd.grad(grads, leaves, grad_outputs=[tangents[k][lo] for k in self.names], retain_graph=True)
                        parts = [o.reshape(1, -1) for o in out]
                    else:  # one vmapped backward pass for the chunk
                        out = torch.autograd.grad(
                            grads, leaves, grad_outputs=[tangents[k][lo:hi] for k in self.names], retain_graph=True,
                            is_grads_batched=True,
                        )
                        parts = [o.reshape(hi - lo, -1) for o in out]
                    if j == 0:  # written in place: no zero fill, no extra sum for the usual single batch
                        torch.cat(parts, dim=1, out=total[lo:hi])
                    else:
                        total[lo:hi] += torch.cat(parts, dim=1)
            return total.div_(loss_normaliser(self.data)).detach()
        total = torch.zeros(vs.shape, dtype=self.dtype, device=self.device)
        with torch.enable_grad():  # torch.func transforms work under no_grad too, but some decompositions differ
            for sl in batches(self.data.n, self.batch_size):
                f = self._batch_fn(sl)
                if vs.shape[0] == 1:
                    out = hvp(f, params, {k: t[0] for k, t in tangents.items()})
                    total += self.flatten(out).unsqueeze(0)
                else:
                    out = vmap(lambda t: hvp(f, params, t))(tangents)
                    total += self.flatten(out, lead=1)
        return (total / loss_normaliser(self.data)).detach()

    def dense(self, chunk: int = 64) -> torch.Tensor:
        """The full matrix, by products with the unit vectors (small models only: size² entries)."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        return torch.cat([self.matmat(eye[i : i + chunk]) for i in range(0, self.size, chunk)], dim=0)

    def loss(self) -> float:
        """The mean training loss at this point (a float64 sum over batches / N)."""
        total = 0.0
        with torch.no_grad():
            for sl in batches(self.data.n, self.batch_size):
                total += float(self._batch_fn(sl)(self.params).double())
        return total / loss_normaliser(self.data)

    def gradient(self) -> torch.Tensor:
        """∇L at this point, flat (exact full-set mean)."""
        total = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        for sl in batches(self.data.n, self.batch_size):
            total += self.flatten(grad(self._batch_fn(sl))(self.params))
        return total / loss_normaliser(self.data)


def loss_hessian_at(
    shell: torch.nn.Module,
    params: Params,
    buffers: Params,
    data: Dataset,
    *,
    batch_size: int | None = None,
    alpha: float | None = None,
    engine: str = "auto",
    memory_budget: int | None = None,
    block: int = DOUBLE_BACKWARD_BLOCK,
) -> LossHessian:
    """The Hessian operator of the mean loss of ``shell`` over ``data`` at the point ``params``.

    ``shell`` is used only as a function (``functional_call`` in its current train/eval mode; pass
    a module in eval mode); ``buffers`` are held fixed. Nothing given is modified. ``engine``:
    ``auto`` (default), ``forward_over_reverse`` or ``double_backward``; ``memory_budget``: bytes
    of cached graphs ``auto`` allows (default :func:`graph_memory_budget`); ``block``: vectors per
    batched backward pass of ``double_backward`` (see the module doc).
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0):
        raise InputError(f"batch_size={batch_size!r}: must be a positive integer")
    if not params:
        raise InputError("the model has no trainable parameters")
    p = {k: v.detach() for k, v in params.items()}
    names = tuple(p)
    shapes = tuple(tuple(v.shape) for v in p.values())
    size = sum(v.numel() for v in p.values())
    fixed = {k: v.detach() for k, v in buffers.items()}
    if engine not in ENGINES:
        raise InputError(f"engine={engine!r}: expected one of {', '.join(ENGINES)}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise InputError(f"block={block!r}: must be a positive integer")
    requested = engine
    cache: list = []
    measured = 0
    if engine == "auto":
        engine = "forward_over_reverse"
        if next(iter(p.values())).device.type == "cpu":
            budget = graph_memory_budget() if memory_budget is None else int(memory_budget)
            slices = list(batches(data.n, batch_size))
            first, nbytes = _graph(shell, p, fixed, data, slices[0], measure=True)
            rows = slices[0].stop - slices[0].start
            measured = int(math.ceil(nbytes * data.n / max(rows, 1)))
            if measured <= budget:
                engine = "double_backward"
                cache.append(first)
                cache.extend(_graph(shell, p, fixed, data, sl)[0] for sl in slices[1:])
            del first
    elif engine == "double_backward":
        cache.extend(_graph(shell, p, fixed, data, sl)[0] for sl in batches(data.n, batch_size))
    return LossHessian(
        p, fixed, names, shapes, size, alpha, batch_size, shell, data, engine, tuple(cache), block, requested, measured,
    )


def graph_memory_budget() -> int:
    """Bytes of cached gradient graphs ``engine="auto"`` allows: ``MLI_HVP_GRAPH_BUDGET`` if set,
    else a quarter of the available memory (``os.sysconf``; 2 GiB when unknown), at most 8 GiB."""
    env = os.environ.get("MLI_HVP_GRAPH_BUDGET")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise InputError(f"MLI_HVP_GRAPH_BUDGET={env!r}: expected a number of bytes") from None
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 * 2**30
    return int(min(avail // 4, 8 * 2**30))


def _graph(shell: Any, p: Params, fixed: Params, data: Dataset, sl: slice, measure: bool = False) -> tuple[tuple, int]:
    """(leaves, gradients with their create_graph graph) of one batch, and, when ``measure``, the bytes
    of the distinct storages the graph saves (forward and create_graph backward)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except (RuntimeError, NotImplementedError):
            seen[id(t)] = t.numel() * t.element_size()
        return t

    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    own = {st.untyped_storage().data_ptr() for st in leaves.values()}
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if measure else None
    with torch.enable_grad():
        if hooks is not None:
            hooks.__enter__()
        try:
            out = functional_call(shell, {**fixed, **leaves}, (data.x[sl],))
            loss = _loss_sum(out, data.y[sl], data.loss)
            grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
        finally:
            if hooks is not None:
                hooks.__exit__(None, None, None)
    nbytes = sum(b for ptr, b in seen.items() if ptr not in own)  # the parameters themselves are held anyway
    nbytes += sum(g.numel() * g.element_size() for g in grads)
    return (list(leaves.values()), grads), nbytes


def loss_hessian(
    line: Line,
    data: Dataset,
    alpha: float,
    *,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    engine: str = "auto",
    memory_budget: int | None = None,
) -> LossHessian:
    """H(α) = ∇²L(θ(α)) for the path ``line``, BatchNorm statistics by ``bn`` (see the module doc);
    ``engine`` (default ``auto``) and ``memory_budget`` as in :func:`loss_hessian_at`.

    ``data`` is cast to the line's device and dtype when it is not there already (labels of
    ``ce`` data stay integers), so ``loss_hessian(line, load_data(...), alpha)`` works as given.
    """
    bn = BNPolicy(bn)
    x = getattr(data, "x", None)
    y_off = data.loss == "mse" and isinstance(data.y, torch.Tensor) and data.y.dtype != line.dtype
    if isinstance(x, torch.Tensor) and (x.dtype != line.dtype or x.device != torch.device(line.device) or y_off):
        data = data.to(line.device, line.dtype)
    state = line.at(alpha)
    params = {k: state[k] for k in line.param_names}
    return loss_hessian_at(
        line.shell, params, fixed_buffers(line, data, alpha, bn, batch_size), data, batch_size=batch_size, alpha=alpha,
        engine=engine, memory_budget=memory_budget,
    )


def path_direction(line: Line) -> torch.Tensor:
    """Δθ = θT − θ0 over the trainable parameters, flat in :class:`LossHessian`'s layout."""
    return torch.cat([(line.end[k] - line.start[k]).reshape(-1) for k in line.param_names])


@dataclass(frozen=True)
class MatrixOperator:
    """A dense symmetric matrix with the operator interface of :class:`LossHessian` (for tests and references)."""

    matrix: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matrix @ v.to(self.matrix.dtype)

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        return vs.to(self.matrix.dtype) @ self.matrix.T
