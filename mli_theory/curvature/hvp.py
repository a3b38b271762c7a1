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

An opt-in second engine, ``double_backward``, is reverse-over-reverse with the gradient graph of
each batch built once and reused (the scheme of PyHessian, Yao et al. 2020): faster per product
on a CPU, at the price of keeping every batch's graph in memory.

BatchNorm (evaluated in eval mode, so the Hessian is that of a function of θ alone):

* ``frozen``: running statistics of θT at every α;
* ``interpolate``: the interpolated statistics at α, held fixed while differentiating;
* ``recompute``: statistics re-estimated once at θ(α) (one train-mode pass over the data, as the
  reference implementation of Lucas et al. 2021 does), then held fixed for every product. The
  dependence of re-estimated statistics on θ is *not* differentiated.
"""

from __future__ import annotations

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
ENGINES: tuple[str, ...] = ("forward_over_reverse", "double_backward")


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
        engine: ``forward_over_reverse`` (``torch.func``: each product is one forward and one
            backward pass with tangents; memory of one batch), or ``double_backward`` (the
            gradient graph of every batch is built once, ``create_graph=True``, and every product
            is a backward pass through it, as PyHessian does for one batch: faster per product,
            but the graphs of all batches stay in memory for the operator's lifetime).
        cache: per batch, (parameter leaves, gradient tensors with their graph) for ``double_backward``.
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
        total = torch.zeros(vs.shape, dtype=self.dtype, device=self.device)
        params = self.params
        if self.engine == "double_backward":
            for leaves, grads in self.cache:
                for i in range(vs.shape[0]):  # a loop: torch's batched backward (is_grads_batched) is slower here
                    out = torch.autograd.grad(grads, leaves, grad_outputs=[tangents[k][i] for k in self.names], retain_graph=True)
                    total[i] += torch.cat([o.reshape(-1) for o in out])
            return (total / loss_normaliser(self.data)).detach()
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
    engine: str = "forward_over_reverse",
) -> LossHessian:
    """The Hessian operator of the mean loss of ``shell`` over ``data`` at the point ``params``.

    ``shell`` is used only as a function (``functional_call`` in its current train/eval mode; pass
    a module in eval mode); ``buffers`` are held fixed. Nothing given is modified.
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
    cache: list = []
    if engine == "double_backward":
        for sl in batches(data.n, batch_size):
            leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
            with torch.enable_grad():
                out = functional_call(shell, {**fixed, **leaves}, (data.x[sl],))
                loss = _loss_sum(out, data.y[sl], data.loss)
                grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
            cache.append((list(leaves.values()), grads))
    return LossHessian(p, fixed, names, shapes, size, alpha, batch_size, shell, data, engine, tuple(cache))


def loss_hessian(
    line: Line,
    data: Dataset,
    alpha: float,
    *,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    engine: str = "forward_over_reverse",
) -> LossHessian:
    """H(α) = ∇²L(θ(α)) for the path ``line``, BatchNorm statistics by ``bn`` (see the module doc);
    ``engine`` as in :class:`LossHessian`.

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
        engine=engine,
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
