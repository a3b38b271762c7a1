"""Loss surfaces: 1D and 2D slices of the training loss in parameter space.

Three kinds of slice (GUIDE §1 for the path; Li et al. 2018 for the random directions; Yao et
al. 2020, PyHessian, for the Hessian directions):

* **Random directions** around a centre c ∈ {θT, θ0}: with filter-normalised directions d1, d2
  (:mod:`mli_theory.connectivity.directions`),

      f(x) = L(c + x·d1)                  (1D),
      f(x, y) = L(c + x·d1 + y·d2)        (2D),   x, y ∈ [−R, R].

* **Top Hessian eigenvectors** (``directions="hessian"``) about a centre c ∈ {θT, θ0}: d1 (and
  d2) are the eigenvectors of the largest (algebraic) eigenvalues λ1 ≥ λ2 of the Hessian
  H = ∇²_θ L(c) of the mean training loss over all trainable parameters, found by restarted
  Lanczos on Hessian-vector products (:func:`mli_theory.connectivity.directions.hessian_directions`),
  each of unit Euclidean norm in parameter space (no filter normalisation), with a fixed sign
  (largest-magnitude entry positive); the slice is f(x) = L(c + x·d1) or f(x, y) = L(c + x·d1 + y·d2)
  as above, so near c, f(x) = L(c) + x·∇L(c)·d1 + ½·λ1·x² + O(x³). BatchNorm statistics are held
  at the centre's values while differentiating (re-estimated there first with ``recompute``), as in
  :mod:`mli_theory.curvature`; with ``bn="recompute"`` the surface itself re-estimates them at every
  point, so its curvature along an axis can differ from λ.

* **The plane through θ0, θT and a third point θC** (a checkpoint). With e1 = θT − θ0,
  u = θC − θ0, β = ⟨u, e1⟩/⟨e1, e1⟩ and e2 = u − β·e1 (Gram–Schmidt of the third point against
  the MLI line), a grid point (x, y) is the parameter vector

      θ(x, y) = θ0 + x·e1 + y·e2 = (1 − a − y)·θ0 + a·θT + y·θC,   a = x − β·y.

  So θ0 sits at (0, 0), θT at (1, 0), θC at (β, 1), and the MLI line θ(α) = (1−α)θ0 + αθT is the
  segment y = 0, 0 ≤ x ≤ 1; on that row the point is computed exactly as
  :func:`mli_theory.path.interpolate` computes θ(α). Both axes span [−R, 1 + R]. θ0 and θT are
  grid points when (steps − 1)·R/(1 + 2R) is an integer (e.g. R = 0.5 with steps = 21 or 41).
  In 1D the plane mode is the line through θ0 and θT itself, x ∈ [−R, 1 + R].

Inner products (β, the Gram–Schmidt step) run over the trainable parameters only.

**BatchNorm** (``bn``; models without BatchNorm ignore it):

* ``recompute`` (default, as the reference of Lucas et al. 2021 does along the path): at *every*
  grid point the running statistics are reset and re-estimated with one no-grad pass in train mode
  over the whole data set, then the loss is evaluated in eval mode. Cost: two passes over the data
  per grid point instead of one, and no ``vmap`` batching of grid points (the statistics update
  in place): a 51×51 surface costs 2·2601 passes.
* ``interpolate``: running statistics are combined with the same affine weights as the
  parameters (in plane mode; random directions have no buffer component, so they stay at the
  centre's values). Far outside the triangle θ0, θT, θC an extrapolated variance can turn
  negative; such points give a non-finite loss, reported as None with a warning.
* ``frozen``: running statistics fixed at θT's values (plane mode) or the centre's (random mode).

**Evaluation** is batched over grid points: the parameters of a chunk of points are stacked along a
new leading axis and ``torch.func.vmap`` runs ``functional_call`` over them (eval mode). The chunk
size is chosen from the parameter and activation sizes to fit a memory budget (or given). Three
exact rewrites (equal up to rounding) make the chunks cheaper:

* the stacked parameters are written into scratch buffers reused by every chunk (fresh
  allocations of hundreds of MiB per chunk page-fault on CPU);
* for a plain ``nn.Sequential`` whose first module is an ``nn.Linear``, that layer is
  evaluated once per basis tensor of the frame and data batch, not once per point (its output is
  linear in its parameters: layer(X; c + x·d1 + y·d2) = layer(X; c) + x·layer(X; d1) + y·layer(X; d2));
  its weights are never stacked, and the rest of the model is vmapped on the combined outputs
  (``info["first_layer_split"]``);
* eval-mode BatchNorm layers run as one fused affine map x·s + (b − μ·s), s = w/√(σ² + ε), whose
  cost under ``vmap`` with per-point weights is one pass instead of several.

On CPU a model whose ``torch.fx`` trace uses only common layers (convolutions, Linear, eval-mode
BatchNorm, elementwise activations, sums, pooling, flatten, mean, basic indexing) runs without
``vmap`` (``info["strategy"] == "packed"``, :class:`_PackedPlan`): every activation holds the chunk's
points along a leading axis; convolutions run as one grouped convolution over the points (channels
last), with a BatchNorm that directly follows a convolution folded into its per-point weights
(W' = W·s, b' = (b − μ)·s + β); a first Linear on the data is evaluated once per basis tensor as
above; Linear layers with ≥ 2^18 weights are evaluated block of rows by block, each point's block
rebuilt from the frame's bases in a small buffer (never stacked); other layers act on all points in
one call, in place where a value has no other user. Any other operation on a point-dependent value
leaves the model to the ``vmap`` path.

Where ``vmap`` fails (a model it cannot batch), or with ``bn="recompute"``, points are evaluated
one by one (plain ``functional_call`` on the model as given). Every loss is the mean over the whole data set (per-batch sums accumulated in float64, one
division by the full count), as :func:`mli_theory.path.loss_curve` computes it.
"""

from __future__ import annotations

import copy
import math
import operator
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Container, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from ..errors import InputError
from ..inputs.checkpoint import StateDict, match_state_dict
from ..inputs.data import Dataset
from ..inputs.devices import resolve_device, resolve_dtype
from ..path.batchnorm import batches, recompute_bn_statistics
from ..path.curve import data_on_line
from ..path.line import BNPolicy, Line, make_line
from ..path.losses import batch_loss_sums, loss_normaliser
from .directions import dot, random_directions

Progress = Callable[[int, int], None]

# the most grid points one surface evaluates (each is at least one pass over the data set)
MAX_POINTS = 1_000_000
# default memory budget for one vmapped chunk (bytes) on CPU; on CUDA a share of free memory
_CPU_CHUNK_BYTES = 512 * 2**20
_MAX_CHUNK = 256
# the directions of a slice about a centre (plane mode is chosen by ``plane=True``)
DIRECTIONS: tuple[str, ...] = ("random", "hessian")
_SOLVERS = {
    "dense": "dense symmetric eigensolver on the Hessian's products with unit vectors (a small model)",
    "block_lanczos": "block Lanczos",
    "arpack": "block Lanczos, then implicitly restarted Lanczos (ARPACK)",
}


@dataclass(frozen=True)
class Surface:
    """A 1D or 2D slice of the loss.

    Attributes:
        x: coordinates along the first axis, increasing.
        y: coordinates along the second axis (2D), else None.
        losses: 1D: ``losses[i]`` = f(x[i]). 2D: ``losses[r][c]`` = f(x[c], y[r]) (rows follow y,
            columns follow x, the layout of ``matplotlib.pyplot.contour(x, y, losses)``).
            A non-finite loss is None.
        dims: 1 or 2.
        mode: ``random`` (filter-normalised directions about a centre), ``hessian`` (the top
            Hessian eigenvectors at a centre) or ``plane`` (through θ0, θT and a third point; in
            1D the line through θ0 and θT).
        center: ``final`` (θT) or ``init`` (θ0) for random and hessian modes; ``init`` for plane
            mode, whose origin is θ0.
        directions: what the axes are, in words.
        mli_line: the MLI segment θ0 → θT in slice coordinates, ((x0, y0), (x1, y1)) in 2D or
            ((x0,), (x1,)) in 1D, when it lies in the slice (always in plane mode; in random mode
            only if θ0 − c happens to lie in the span of the directions), else None.
        points: named points of the slice in its coordinates (``init``, ``final``, ``third``).
        bn: the BatchNorm policy used (None for models without BatchNorm).
        seed: seed of the random directions, or of the Lanczos start vector in hessian mode
            (None in plane mode).
        include_bn_and_bias: whether the random-direction option of that name was used (False in
            plane and hessian modes, whose directions span every trainable parameter anyway).
        warnings: optional work that failed or caveats (vmap fallback, non-finite points, an
            eigensolver that missed its tolerance).
        info: facts (device, dtype, chunk size, timings, β of the plane; in hessian mode the
            eigenpairs' ``eigen_residuals`` ‖Hv − λv‖, ``eigen_converged``, ``eigen_method``,
            ``eigen_matvecs``, ``eigen_tol`` and ``hessian_s``).
        eigenvalues: hessian mode: (λ1,) in 1D, (λ1, λ2) in 2D, the Hessian eigenvalues of the
            axes in order; None in the other modes.
    """

    x: tuple[float, ...]
    y: tuple[float, ...] | None
    losses: tuple[Any, ...]
    dims: int
    mode: str
    center: str
    directions: str
    mli_line: tuple[tuple[float, ...], tuple[float, ...]] | None
    points: dict[str, tuple[float, ...]] = field(default_factory=dict)
    bn: str | None = None
    seed: int | None = None
    include_bn_and_bias: bool = False
    warnings: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    eigenvalues: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object: plain lists, None for non-finite losses (``eigenvalues`` only
        in hessian mode)."""
        return {
            "dims": self.dims,
            "mode": self.mode,
            "x": list(self.x),
            **({"y": list(self.y)} if self.y is not None else {}),
            "losses": [list(r) for r in self.losses] if self.dims == 2 else list(self.losses),
            "center": self.center,
            "directions": self.directions,
            "mli_line": [list(p) for p in self.mli_line] if self.mli_line is not None else None,
            "points": {k: list(v) for k, v in self.points.items()},
            "bn": self.bn,
            "seed": self.seed,
            "include_bn_and_bias": self.include_bn_and_bias,
            "warnings": list(self.warnings),
            "info": dict(self.info),
            **({"eigenvalues": list(self.eigenvalues)} if self.eigenvalues is not None else {}),
        }

    def grid(self) -> list[list[float | None]]:
        """2D losses as a list of rows (1D: one row)."""
        return [list(r) for r in self.losses] if self.dims == 2 else [list(self.losses)]


# ----------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class Frame:
    """An affine parametrisation θ(w) = offset + Σ_k w_k·B_k of the slice, entry by entry.

    Attributes:
        fixed: entries equal at every grid point (integer buffers, frozen statistics, entries
            every direction leaves at zero).
        offset: for varying entries, the constant term (None: zero).
        bases: for varying entries, the K basis tensors stacked along a new axis 0.
        weights: maps slice coordinates (x,) or (x, y) to the K weights w.
    """

    fixed: Mapping[str, torch.Tensor]
    offset: Mapping[str, torch.Tensor | None]
    bases: Mapping[str, torch.Tensor]
    weights: Callable[[Sequence[float]], list[float]]

    def state(self, w: Sequence[float]) -> StateDict:
        """θ(w) for one weight vector (terms summed left to right, as ``interpolate`` does)."""
        out: StateDict = dict(self.fixed)
        for name, b in self.bases.items():
            acc = self.offset[name]
            for k in range(b.shape[0]):
                term = w[k] * b[k]
                acc = term if acc is None else acc + term
            out[name] = acc  # type: ignore[assignment]
        return out

    def stacked(
        self, W: torch.Tensor, keys: Container[str] | None = None, buffers: dict[str, torch.Tensor] | None = None
    ) -> StateDict:
        """θ(w) for P weight vectors (rows of ``W``), stacked along a new leading axis (only the
        entries in ``keys``, if given).

        ``buffers``: a dict of scratch tensors reused across calls (filled on first use, one per
        entry, (P, numel) for the largest P seen): the stacked values are written into them
        instead of fresh allocations, which on CPU would page-fault hundreds of MiB per chunk.
        The returned tensors are views of those buffers, valid until the next call.
        """
        P = W.shape[0]
        out: StateDict = {k: v.expand(P, *v.shape) for k, v in self.fixed.items() if keys is None or k in keys}
        for name, b in self.bases.items():
            if keys is not None and name not in keys:
                continue
            flat = b.reshape(b.shape[0], -1)
            w = W.to(device=flat.device, dtype=flat.dtype)
            off = self.offset[name]
            dest = None
            if buffers is not None:
                buf = buffers.get(name)
                if buf is None or buf.shape[0] < P:
                    buf = torch.empty((P, flat.shape[1]), dtype=flat.dtype, device=flat.device)
                    buffers[name] = buf
                dest = buf[:P]
            if off is None:
                val = torch.mm(w, flat, out=dest) if dest is not None else w @ flat
            else:
                val = torch.addmm(off.reshape(1, -1), w, flat, out=dest) if dest is not None else torch.addmm(off.reshape(1, -1), w, flat)
            out[name] = val.reshape(P, *b.shape[1:])
        return out


def _cast_state(model: nn.Module, state: StateDict, label: str, device: torch.device, dtype: torch.dtype) -> StateDict:
    state = match_state_dict(model, state, label)
    out: StateDict = {}
    for k, v in state.items():
        v = v.detach()
        out[k] = v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device=device)
    bad = [k for k, v in out.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(f"{label} checkpoint overflows {dtype} in {', '.join(bad[:6])}")
    return out


def random_frame(
    line: Line,
    model: nn.Module,
    *,
    dims: int,
    center: str,
    seed: int,
    include_bn_and_bias: bool,
) -> tuple[Frame, list[StateDict]]:
    """The frame c + x·d1 (+ y·d2) about c = θT (``final``) or θ0 (``init``)."""
    c = line.end if center == "final" else line.start
    dirs = random_directions(model, c, dims, seed=seed, include_bn_and_bias=include_bn_and_bias)
    return direction_frame(c, dirs), dirs


def direction_frame(c: StateDict, dirs: list[StateDict]) -> Frame:
    """The frame c + x·d1 (+ y·d2) for given directions (entries every direction leaves at zero,
    and non-floating entries, stay fixed at c's values)."""
    fixed: dict[str, torch.Tensor] = {}
    offset: dict[str, torch.Tensor | None] = {}
    bases: dict[str, torch.Tensor] = {}
    for name, t in c.items():
        if not t.is_floating_point() or all(not bool(d[name].any()) for d in dirs):
            fixed[name] = t
        else:
            offset[name] = t
            bases[name] = torch.stack([d[name] for d in dirs])
    return Frame(fixed, offset, bases, lambda u: [float(v) for v in u])


def hessian_frame(
    line: Line,
    data: Dataset,
    *,
    dims: int,
    center: str,
    seed: int,
    bn: BNPolicy,
    tol: float,
    batch_size: int | None = None,
) -> tuple[Frame, list[StateDict], Any]:
    """The frame c + x·d1 (+ y·d2) along the top Hessian eigenvectors at c = θT or θ0.

    The Hessian is taken at c with c's buffers held fixed; with BatchNorm and ``bn="recompute"``
    the statistics are re-estimated at c first (as the surface evaluates c itself).

    Returns:
        (frame, directions, :class:`~mli_theory.curvature.spectrum.Eigenpairs`).
    """
    from .directions import hessian_directions

    c = line.end if center == "final" else line.start
    state = recompute_bn_statistics(line, c, data.x, batch_size) if line.has_bn and bn == BNPolicy.RECOMPUTE else c
    names = list(line.param_names)
    buffers = {k: v for k, v in state.items() if k not in line.param_names}
    dirs, pairs = hessian_directions(line.shell, c, names, buffers, data, dims, seed=seed, tol=tol, batch_size=batch_size)
    return direction_frame(c, dirs), dirs, pairs


def plane_frame(
    line: Line, third: StateDict | None, *, dims: int, bn: BNPolicy
) -> tuple[Frame, float]:
    """The frame (1 − a − y)·θ0 + a·θT + y·θC with a = x − β·y (2D) or (1 − x)·θ0 + x·θT (1D).

    Returns the frame and β (0.0 in 1D).

    Raises:
        InputError: θT = θ0, or θC on the line through θ0 and θT (no plane).
    """
    names = list(line.param_names)
    e1 = {n: line.end[n] - line.start[n] for n in names}
    e1e1 = dot(e1, e1, names)
    if e1e1 == 0.0:
        raise InputError("init and final checkpoints have the same parameters: there is no line through them")
    beta = 0.0
    if dims == 2:
        assert third is not None
        u = {n: third[n] - line.start[n] for n in names}
        beta = dot(u, e1, names) / e1e1
        uu = dot(u, u, names)
        rest = uu - beta * beta * e1e1
        if rest <= 1e-20 * max(uu, 1e-300) or rest <= 0.0:
            raise InputError("the third checkpoint lies on the line through init and final: it spans no plane")
    varying = set(names) if bn == BNPolicy.FROZEN else {k for k, v in line.start.items() if v.is_floating_point()}
    fixed: dict[str, torch.Tensor] = {}
    offset: dict[str, torch.Tensor | None] = {}
    bases: dict[str, torch.Tensor] = {}
    for name, t0 in line.start.items():
        if name not in varying:
            fixed[name] = line.end[name]
            continue
        ends = [t0, line.end[name]] + ([third[name]] if dims == 2 and third is not None else [])
        offset[name] = None
        bases[name] = torch.stack(ends)

    def weights(u: Sequence[float]) -> list[float]:
        if dims == 1:
            x = float(u[0])
            return [1.0 - x, x]
        x, y = float(u[0]), float(u[1])
        a = x - beta * y
        return [1.0 - a - y, a, y]

    return Frame(fixed, offset, bases, weights), beta


# ----------------------------------------------------------------------------- evaluation


def _activation_bytes(line: Line, data: Dataset, batch: int, peak: bool = False) -> int:
    """Bytes of all module outputs for one forward pass of ``batch`` examples (a probe on 2); with
    ``peak``, of the largest one."""
    sizes = _activation_sizes(line, data)
    per_example = (max(sizes, default=0) if peak else sum(sizes)) / max(1, min(2, data.n))
    return int(per_example * batch)


def _activation_sizes(line: Line, data: Dataset) -> list[int]:
    """Bytes of each leaf module's output for one forward pass on (at most) 2 examples."""
    sizes: list[int] = []

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in line.shell.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            functional_call(line.shell, line.end, (data.x[:2],))
    finally:
        for h in handles:
            h.remove()
    return sizes


def auto_chunk(line: Line, frame: Frame, data: Dataset, batch_size: int | None, skip: Container[str] = ()) -> int:
    """Grid points per vmapped pass: parameters plus activations of a chunk within a budget.

    Budget: 512 MiB on CPU; a quarter of the free memory on CUDA. At least 1, at most 256.
    Entries in ``skip`` (a first layer evaluated once per basis, not per point) are not stacked.
    """
    param_bytes = sum(b[0].numel() * b.element_size() for k, b in frame.bases.items() if k not in skip)
    batch = data.n if not batch_size or batch_size <= 0 else min(batch_size, data.n)
    try:
        act = _activation_bytes(line, data, batch)
    except Exception:
        act = 0
    per_point = max(1, 2 * param_bytes + 3 * act)
    budget = _CPU_CHUNK_BYTES
    if line.device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(line.device)
            budget = int(free * 0.25)
        except Exception:
            pass
    return int(max(1, min(_MAX_CHUNK, budget // per_point)))


def _loss_sums_stacked(outs: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Sum-reduced loss for each leading index of ``outs`` (P, batch, ...), in float64."""
    P = outs.shape[0]
    if loss == "mse":
        return (outs - y.unsqueeze(0)).pow(2).reshape(P, -1).sum(dim=1).double()
    flat = outs.reshape(P * outs.shape[1], outs.shape[2])
    ce = F.cross_entropy(flat, y.repeat(P), reduction="none")
    return ce.reshape(P, -1).sum(dim=1).double()


def _eval_state(line: Line, state: StateDict, data: Dataset, batch_size: int | None) -> float:
    total = torch.zeros((), dtype=torch.float64, device=line.device)
    with torch.no_grad():
        for sl in batches(data.n, batch_size):
            out = functional_call(line.shell, state, (data.x[sl],))
            s, _ = batch_loss_sums(out, data.y[sl], data.loss)
            total += s.double()
    return float(total) / loss_normaliser(data)


# first layers evaluated once per basis, not per point (output linear in (weight, bias) jointly).
# Only Linear: a first convolution is cheaper left to vmap, which runs it on the shared input as one
# convolution with P·C_out output channels; splitting it off makes the rest start from batched
# activations (measured slower on the small ResNet of benchmarks/surface_speed.py).
_LINEAR_STEMS: tuple[type, ...] = (nn.Linear,)
# most bytes of cached first-layer terms kept across chunks (beyond it they are recomputed per chunk)
_STEM_CACHE_BYTES = 256 * 2**20


@dataclass
class _Stem:
    """The first layer of a ``nn.Sequential`` model, split off because its output is linear in its
    parameters: for θ(w) = offset + Σ_k w_k·B_k,

        layer(X; θ(w)) = layer(X; offset) + Σ_k w_k·layer(X; B_k)

    (bias terms included: ``layer(X; B_k)`` uses B_k's weight *and* bias). The K + 1 terms are
    computed once per data batch and combined per grid point; the rest of the model runs vmapped
    over the points on those outputs. Same function as the full model, up to rounding."""

    module: nn.Module
    keys: dict[str, str]  # state-dict key → the layer's own parameter name
    rest: nn.Module
    rest_keys: frozenset[str]
    cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    cached_bytes: int = 0

    def terms(self, frame: Frame, xb: torch.Tensor, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(constant term, the K basis terms stacked) of the layer's output on ``xb``."""
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        K = next(iter(frame.bases.values())).shape[0]
        const: dict[str, torch.Tensor] = {}
        basis: list[dict[str, torch.Tensor]] = [{} for _ in range(K)]
        for full, own in self.keys.items():
            if full in frame.bases:
                b = frame.bases[full]
                off = frame.offset[full]
                const[own] = off if off is not None else torch.zeros_like(b[0])
                for k in range(K):
                    basis[k][own] = b[k]
            else:
                t = frame.fixed[full]
                const[own] = t
                for k in range(K):
                    basis[k][own] = torch.zeros_like(t)
        c = functional_call(self.module, const, (xb,))
        B = torch.stack([functional_call(self.module, p, (xb,)) for p in basis])
        size = (c.numel() + B.numel()) * c.element_size()
        if self.cached_bytes + size <= _STEM_CACHE_BYTES:
            self.cache[key] = (c, B)
            self.cached_bytes += size
        return c, B


class _EvalBatchNorm(nn.Module):
    """Eval-mode BatchNorm as one fused affine map, y = x·s + (b − μ·s) with s = w/√(σ² + ε):
    the function ``F.batch_norm(training=False)`` computes, but cheap under ``vmap`` with
    per-point weights (its batching rule for ``batch_norm`` with batched affine parameters costs
    several passes over the activations). Same parameter and buffer names as the module it
    replaces, so a state dict for the original model fits."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps = bn.eps
        for name, p in bn.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in bn.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.affine = bn.affine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.affine:
            scale = self.weight * scale
        shift = -self.running_mean * scale
        if self.affine:
            shift = shift + self.bias
        return torch.addcmul(shift.reshape(shape), x, scale.reshape(shape))


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _fused_bn(module: nn.Module) -> nn.Module:
    """``module``, or a copy whose eval-mode BatchNorm layers are :class:`_EvalBatchNorm` (when every
    BatchNorm is an exact ``BatchNorm1d/2d/3d`` in eval mode with running statistics and no module
    has hooks; the copy shares the original's tensors, which ``functional_call`` replaces anyway)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return module
    if any(type(m) not in _BN_TYPES or m.training or not m.track_running_stats or m.running_mean is None for m in bns):
        return module
    if any(m._forward_hooks or m._forward_pre_hooks for m in module.modules()):
        return module

    def rebuild(m: nn.Module) -> nn.Module:
        if type(m) in _BN_TYPES:
            return _EvalBatchNorm(m)
        if not any(isinstance(c, nn.modules.batchnorm._BatchNorm) for c in m.modules() if c is not m):
            return m
        clone = copy.copy(m)  # shallow: tensors shared; own dicts, so functional_call never touches m's
        clone._parameters = OrderedDict(m._parameters)
        clone._buffers = OrderedDict(m._buffers)
        clone._modules = OrderedDict((k, rebuild(c) if c is not None else None) for k, c in m._modules.items())
        return clone

    return rebuild(module)


def _stem(line: Line, frame: Frame) -> _Stem | None:
    """The split of :class:`_Stem` when it applies: the shell is a plain ``nn.Sequential`` of at
    least two modules, the first an ``nn.Linear`` (exact type, no buffers, no hooks)
    whose parameters are all in the frame. Else None (the whole model is vmapped)."""
    shell = line.shell
    if type(shell) is not nn.Sequential or len(shell) < 2 or not frame.bases:
        return None
    items = list(shell._modules.items())
    name0, m0 = items[0]
    if type(m0) not in _LINEAR_STEMS or list(m0.buffers()):
        return None
    for m in (shell, m0):
        if m._forward_hooks or m._forward_pre_hooks or getattr(m, "_forward_hooks_with_kwargs", None):
            return None
    if getattr(nn.modules.module, "_global_forward_hooks", None) or getattr(nn.modules.module, "_global_forward_pre_hooks", None):
        return None
    keys = {f"{name0}.{n}": n for n, _ in m0.named_parameters()}
    if not all(k in frame.bases or k in frame.fixed for k in keys):
        return None
    rest = _fused_bn(nn.Sequential(OrderedDict(items[1:])))  # keeps the original module names, hence the state-dict keys
    rest_keys = frozenset(k for k in [*frame.fixed, *frame.bases] if k not in keys)
    return _Stem(m0, keys, rest, rest_keys)


def _eval_chunk(
    line: Line,
    frame: Frame,
    W: torch.Tensor,
    data: Dataset,
    batch_size: int | None,
    stem: _Stem | None = None,
    buffers: dict[str, torch.Tensor] | None = None,
) -> list[float]:
    totals = torch.zeros(W.shape[0], dtype=torch.float64, device=line.device)
    with torch.no_grad():
        if stem is None:
            stacked = frame.stacked(W, buffers=buffers)
            shell = _fused_bn(line.shell)

            def run(p: StateDict, xb: torch.Tensor) -> torch.Tensor:
                return functional_call(shell, p, (xb,))

            for sl in batches(data.n, batch_size):
                outs = vmap(run, in_dims=(0, None))(stacked, data.x[sl])
                totals += _loss_sums_stacked(outs, data.y[sl], data.loss)
        else:
            stacked = frame.stacked(W, stem.rest_keys, buffers)
            rest = stem.rest

            def run_rest(p: StateDict, hb: torch.Tensor) -> torch.Tensor:
                return functional_call(rest, p, (hb,))

            for sl in batches(data.n, batch_size):
                c, B = stem.terms(frame, data.x[sl], (sl.start or 0, sl.stop if sl.stop is not None else data.n))
                w = W.to(dtype=B.dtype)
                h = torch.addmm(c.reshape(1, -1), w, B.reshape(B.shape[0], -1)).reshape(W.shape[0], *c.shape)
                outs = vmap(run_rest, in_dims=(0, 0))(stacked, h)
                totals += _loss_sums_stacked(outs, data.y[sl], data.loss)
    norm = loss_normaliser(data)
    return [float(t) / norm for t in totals.cpu()]


def _split_loop(
    line: Line,
    frame: Frame,
    weights: Sequence[Sequence[float]],
    data: Dataset,
    batch_size: int | None,
    stem: _Stem,
    progress: Progress | None = None,
) -> list[float]:
    """Point-by-point evaluation for weight-dominated models on CPU: the first layer from its cached
    per-basis terms (:class:`_Stem`), the other parameters written into buffers reused by every
    point (no stacked copies), and the part Σ_{k≥1} w_k·B_k (+ offset) computed once per run of
    points that share it (a row of a random-direction grid), so each point costs one
    ``a + w_0·b`` pass over those parameters and one plain forward pass of the rest."""
    rest_bases = [n for n in frame.bases if n in stem.rest_keys]
    fixed = {k: v for k, v in frame.fixed.items() if k in stem.rest_keys}
    tails = {n: torch.empty_like(frame.bases[n][0]) for n in rest_bases}
    bufs = {n: torch.empty_like(frame.bases[n][0]) for n in rest_bases}
    # a copy of the rest whose tensors *are* these buffers: each point rewrites them in place and
    # calls the module directly (no functional_call swap per point); None: use functional_call
    bound = _bind(stem.rest, {**fixed, **bufs})
    slices = batches(data.n, batch_size)
    norm = loss_normaliser(data)
    tail_key: tuple[float, ...] | None = None
    out: list[float] = []
    total = len(weights)
    with torch.no_grad():
        for i, w in enumerate(weights):
            key = tuple(float(v) for v in w[1:])
            if key != tail_key:
                for n in rest_bases:
                    b, off, t = frame.bases[n], frame.offset[n], tails[n]
                    if off is None:
                        t.zero_()
                    else:
                        t.copy_(off)
                    for k in range(1, b.shape[0]):
                        t.add_(b[k], alpha=float(w[k]))
                tail_key = key
            state: StateDict = dict(fixed)
            for n in rest_bases:
                state[n] = torch.add(tails[n], frame.bases[n][0], alpha=float(w[0]), out=bufs[n])
            acc = torch.zeros((), dtype=torch.float64, device=line.device)
            for sl in slices:
                c, B = stem.terms(frame, data.x[sl], (sl.start or 0, sl.stop if sl.stop is not None else data.n))
                h = c
                for k in range(B.shape[0]):
                    h = torch.add(h, B[k], alpha=float(w[k]))
                o = bound(h) if bound is not None else functional_call(stem.rest, state, (h,))
                sums, _ = batch_loss_sums(o, data.y[sl], data.loss)
                acc += sums.double()
            out.append(float(acc) / norm)
            if progress is not None and ((i + 1) % 32 == 0 or i + 1 == total):
                progress(i + 1, total)
    return out


def _bind(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> nn.Module | None:
    """A structural copy of ``module`` (submodules copied shallowly, with their own parameter and
    buffer dicts) holding ``tensors`` under their state-dict names; None when the names do not
    cover the module's state exactly (shared or unusual registrations)."""
    if set(tensors) != set(module.state_dict(keep_vars=True)):
        return None

    def tree(m: nn.Module) -> nn.Module:
        c = copy.copy(m)
        c._parameters = OrderedDict(m._parameters)
        c._buffers = OrderedDict(m._buffers)
        c._modules = OrderedDict((k, tree(v) if v is not None else None) for k, v in m._modules.items())
        return c

    root = tree(module)
    for key, t in tensors.items():
        path, _, attr = key.rpartition(".")
        try:
            mod = root.get_submodule(path) if path else root
        except AttributeError:
            return None
        if attr in mod._parameters:
            mod._parameters[attr] = t  # a plain tensor: read by forward as the attribute
        elif attr in mod._buffers:
            mod._buffers[attr] = t
        else:
            return None
    return root


def _prefer_split_loop(line: Line, frame: Frame, data: Dataset, batch_size: int | None, stem: _Stem) -> bool:
    """Cost model for CPU: a vmapped chunk writes and re-reads a stacked copy of every parameter per
    point, which pays off only when the activations dominate; when the stacked parameters of the
    rest of the model outnumber a point's activations 2:1 or more (a wide MLP on a modest batch),
    :func:`_split_loop` is cheaper (one streaming pass over those parameters and plain matrix
    products per point)."""
    if line.device.type != "cpu":
        return False
    params = sum(b[0].numel() for n, b in frame.bases.items() if n in stem.rest_keys)
    batch = data.n if not batch_size or batch_size <= 0 else min(batch_size, data.n)
    try:
        act = _activation_bytes(line, data, batch) // max(1, data.x.element_size())
    except Exception:
        return False
    return params >= 2 * max(1, act)


# ----------------------------------------------------------------------------- packed evaluation (CPU)

# off: the packed strategy is never tried (tests switch it off to exercise the other strategies)
_PACKED = True
# a Linear layer on point-dependent input with at least this many weight entries runs block by block
# (:class:`_PackedPlan`, "big linear"); smaller ones take their stacked per-point weights through one bmm
_BLOCKED_MIN = 2**18
# bytes of one block of weight rows of such a layer (kept in cache while every point of a chunk
# uses it; 128 KiB - 1 MiB measured on one core, 256 KiB best)
_BLOCK_BYTES = 256 * 2**10
# activation bytes of one packed chunk (sizes the default chunk; see :func:`_packed_chunk`)
_PACKED_CHUNK_BYTES = 2 * 2**20
_PACKED_MAX_CHUNK = 64
_POINT_BATCH = 0  # points per product in large Linear layers (0: one per intra-op thread)


class _Unsupported(Exception):
    """The packed plan does not cover this model (at plan or run time); the caller falls back."""


@dataclass
class _PVal:
    """A value of the packed interpreter: ``packed`` tensors hold P points along a new axis 0
    (shape (P, *shape for one point), any strides); shared ones are the same for every point."""

    t: torch.Tensor
    packed: bool
    own: bool = False  # a fresh tensor nothing else refers to: its last user may overwrite it


_ELEMENTWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Tanhshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_ELEMENTWISE_FUNCTIONS: frozenset[Any] = frozenset({
    torch.relu, torch.tanh, torch.sigmoid, F.relu, F.tanh, F.sigmoid, F.gelu, F.silu, F.mish, F.elu, F.selu, F.celu,
    F.leaky_relu, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, F.softsign,
})
_ELEMENTWISE_METHODS = frozenset({"relu", "tanh", "sigmoid"})
_BINARY_FUNCTIONS: frozenset[Any] = frozenset({operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul})
# channel-wise modules on (N, C, *spatial): the number of spatial dimensions
_POOL_MODULES: dict[type, int] = {
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
}
_POOL_FUNCTIONS: dict[Any, int] = {
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
    F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
}
_CONVS: dict[type, Callable[..., torch.Tensor]] = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def _dim_out(d: Any) -> Any:
    """A dimension of one point's tensor as a dimension of the packed tensor (negative ones stay)."""
    if isinstance(d, bool) or not isinstance(d, int):
        raise _Unsupported(f"dimension {d!r}")
    return d + 1 if d >= 0 else d


def _fold_channels(t: torch.Tensor) -> torch.Tensor:
    """(P, N, C, *s) → (N, P·C, *s): the points side by side along the channels (a view when the
    layout allows, as after a grouped convolution in channels-last memory)."""
    P, N, C = t.shape[:3]
    if t.dim() == 5:  # 2D maps: channels-last memory (N, H, W, P, C), a view after a packed convolution
        H, Wd = t.shape[3:]
        return t.permute(1, 3, 4, 0, 2).reshape(N, H, Wd, P * C).permute(0, 3, 1, 2)
    return t.transpose(0, 1).reshape(N, P * C, *t.shape[3:])


def _unfold_channels(y: torch.Tensor, P: int) -> torch.Tensor:
    """(N, P·C, *s) → (P, N, C, *s), a view."""
    N, PC = y.shape[:2]
    return y.view(N, P, PC // P, *y.shape[2:]).transpose(0, 1)


class _PackedPlan:
    """The model's traced graph (``torch.fx``) run for P grid points at once, without ``vmap``.

    Every activation that depends on the point holds the P points along a new leading axis; the
    layers work on all of them in one call each:

    * ``Conv1d/2d/3d``: one grouped convolution (the points stacked along the channels, groups =
      P·groups; 2D in channels-last memory), or one convolution with P·C_out output channels on a
      shared input. An eval-mode BatchNorm that directly follows a convolution (its only user) is
      folded into the convolution's per-point weights: W' = W·s, b' = (b − μ)·s + β, s = γ/√(σ² + ε);
    * ``Linear`` on a shared input (the data): evaluated once per basis tensor of the frame and
      combined per point (its output is linear in its parameters, as :class:`_Stem`); on
      point-dependent input, small weights: one ``bmm`` with the stacked weights; large weights
      (≥ ``_BLOCKED_MIN`` entries): block by block of rows, each block of a point's weights written
      into a small buffer (offset + Σ_{k≥1} w_k·B_k once per block and run of points sharing it, then
      + w_0·B_0 per point) and multiplied at once, so the weights are never stacked in memory;
    * other BatchNorm layers: one affine map with per-point scale and shift; elementwise
      activations, sums and products, pooling, flatten and mean: on the packed tensor directly
      (pooling on the points folded into the channels), in place where the value has no other user.

    Values that do not depend on the point (the input and what is computed from it before the first
    varying parameter) run as the model runs them. Anything else in the graph (another operation on
    a point-dependent value, a varying parameter read outside these layers, hooks, a graph that does
    not trace) makes the plan inapplicable; the caller then uses the generic ``vmap`` path."""

    def __init__(self, line: Line, frame: Frame) -> None:
        import torch.fx

        self.line, self.frame = line, frame
        shell = line.shell
        if any(m._forward_hooks or m._forward_pre_hooks or getattr(m, "_forward_hooks_with_kwargs", None) for m in shell.modules()):
            raise _Unsupported("hooks")
        if getattr(nn.modules.module, "_global_forward_hooks", None) or getattr(nn.modules.module, "_global_forward_pre_hooks", None):
            raise _Unsupported("global hooks")
        try:
            gm = torch.fx.symbolic_trace(shell)
        except Exception as exc:
            raise _Unsupported(f"fx trace: {type(exc).__name__}") from None
        self.nodes = list(gm.graph.nodes)
        self.modules = dict(shell.named_modules())
        if len(self.modules) != len(list(shell.named_modules(remove_duplicate=False))):
            raise _Unsupported("a module registered under two names")
        varying = set(frame.bases)
        packed: dict[Any, bool] = {}
        self.kind: dict[Any, str] = {}
        self.fold: dict[Any, Any] = {}  # conv node → the BatchNorm node folded into it
        self.stack_keys: set[str] = set()
        self.stems: dict[Any, _Stem] = {}
        self.unary: dict[Any, tuple[Callable[..., Any], Callable[..., Any] | None]] = {}
        self.big: dict[Any, tuple[str, str | None]] = {}
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise _Unsupported("one input expected")

        def keys_of(target: str) -> dict[str, str]:
            return _module_keys(self.modules[target], target)

        for node in self.nodes:
            if node.op == "placeholder":
                packed[node] = False
                continue
            if node.op == "output":
                if len(node.args) != 1 or not hasattr(node.args[0], "op"):
                    raise _Unsupported("one tensor output expected")
                continue
            if node.op == "get_attr":
                if any(k == node.target or k.startswith(f"{node.target}.") for k in varying):
                    raise _Unsupported(f"varying parameter {node.target} read directly")
                packed[node] = False
                continue
            is_packed = any(packed.get(a, False) for a in node.all_input_nodes)
            if node.op == "call_module" and any(k in varying for k in keys_of(node.target)):
                is_packed = True
            packed[node] = is_packed
            if not is_packed:
                self.kind[node] = "shared"
                self._shared_inplace(node)
                continue
            self.kind[node] = self._classify(node, packed)
        # BatchNorm directly after a convolution (its only user, both point-dependent): folded
        for node in self.nodes:
            if self.kind.get(node) == "bn":
                src = node.args[0]
                if self.kind.get(src) == "conv" and len(src.users) == 1 and src not in self.fold:
                    conv, bn = self.modules[src.target], self.modules[node.target]
                    if bn.num_features == conv.out_channels:
                        self.fold[src] = node
                        self.kind[node] = "folded"
        for node in self.nodes:
            kind = self.kind.get(node)
            if kind in ("conv", "bn", "linear"):
                keys = keys_of(node.target)
                if kind == "linear" and not packed[node.args[0]]:
                    self.kind[node] = "stem"
                    m = self.modules[node.target]
                    self.stems[node] = _Stem(m, keys, nn.Identity(), frozenset())
                    continue
                if kind == "linear" and self.modules[node.target].weight.numel() >= _BLOCKED_MIN:
                    self.kind[node] = "big"
                    self.big[node] = (f"{node.target}.weight", f"{node.target}.bias" if self.modules[node.target].bias is not None else None)
                    if self.big[node][1] is not None:
                        self.stack_keys.add(self.big[node][1])
                    continue
                self.stack_keys.update(keys)
                if node in self.fold:
                    self.stack_keys.update(keys_of(self.fold[node].target))
        self.stack_keys = {k for k in self.stack_keys if k in frame.bases or k in frame.fixed}
        self._setup_layers()
        self.buffers: dict[str, torch.Tensor] = {}
        self.scratch: dict[Any, torch.Tensor] = {}
        self.blocks: dict[Any, Any] = {}
        self.first_layer_split = bool(self.stems)
        # first layers whose only user is elementwise and then a large Linear: their output is
        # written transposed, the layout the large layer's products read
        self.stem_t: dict[Any, dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]] = {}
        for node in self.stems:
            nxt = node
            while len(nxt.users) == 1:
                nxt = next(iter(nxt.users))
                if self.kind.get(nxt) == "big":
                    self.stem_t[node] = {}
                    break
                if self.kind.get(nxt) not in ("unary", "bn", "folded"):
                    break

    def _classify(self, node: Any, packed: dict[Any, bool]) -> str:
        """The kind of a point-dependent node (for elementwise ones, also its out-of-place and
        in-place callables in ``self.unary``), or :class:`_Unsupported`."""
        nin = list(node.all_input_nodes)
        src = node.args[0] if node.args else None
        single = hasattr(src, "op") and len(src.users) == 1
        if node.op == "call_module":
            m = self.modules[node.target]
            t = type(m)
            if m._modules:
                raise _Unsupported(f"module {node.target} with submodules")
            if len(node.args) != 1 or node.kwargs or not hasattr(src, "op"):
                raise _Unsupported(f"arguments of {node.target}")
            if t in _CONVS:
                if m.padding_mode != "zeros":
                    raise _Unsupported("convolution padding mode")
                return "conv"
            if t is nn.Linear:
                return "linear"
            if t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
                if m.training or not m.track_running_stats or m.running_mean is None or m.running_var is None:
                    raise _Unsupported("BatchNorm with batch statistics")
                return "bn"
            if t in _ELEMENTWISE_MODULES:
                if m.training and "Dropout" in t.__name__:
                    raise _Unsupported("dropout in training mode")
                if hasattr(m, "inplace"):
                    if m.inplace and not single:
                        raise _Unsupported("in-place activation of a value used elsewhere")
                    m_out, m_in = copy.copy(m), copy.copy(m)
                    m_out.inplace, m_in.inplace = False, True
                    self.unary[node] = (m_out, m_in)
                else:
                    self.unary[node] = (m, None)
                return "unary"
            if t in _POOL_MODULES:
                if getattr(m, "return_indices", False):
                    raise _Unsupported("pooling indices")
                return "pool"
            if t is nn.Flatten:
                return "flatten"
            raise _Unsupported(f"module {t.__name__}")
        if node.op == "call_function":
            f = node.target
            if f in _ELEMENTWISE_FUNCTIONS:
                if len(nin) != 1 or nin[0] is not src:
                    raise _Unsupported("elementwise arguments")
                self.unary[node] = self._ufunc(f, tuple(node.args[1:]), dict(node.kwargs), single)
                return "unary"
            if f in _BINARY_FUNCTIONS:
                if len(node.args) != 2 or node.kwargs:
                    raise _Unsupported("binary arguments")
                return "binary"
            if f in _POOL_FUNCTIONS:
                if len(nin) != 1 or nin[0] is not src:
                    raise _Unsupported("pooling arguments")
                return "pool"
            if f is torch.flatten:
                return "flatten"
            if f is torch.mean:
                return "mean"
            if f is operator.getitem and len(node.args) == 2 and len(nin) == 1 and nin[0] is src:
                idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
                if all(i is None or i is Ellipsis or isinstance(i, slice) or (isinstance(i, int) and not isinstance(i, bool)) for i in idx):
                    return "index"  # basic indexing of one point's tensor
            raise _Unsupported(f"function {getattr(f, '__name__', f)}")
        if node.op == "call_method":
            if node.target in _ELEMENTWISE_METHODS and len(node.args) == 1 and not node.kwargs:
                name = node.target
                self.unary[node] = ((lambda t, name=name: getattr(t, name)()), (lambda t, name=name: getattr(t, name + "_")()))
                return "unary"
            if node.target == "flatten":
                return "flatten"
            if node.target == "mean":
                return "mean"
            raise _Unsupported(f"method {node.target}")
        raise _Unsupported(node.op)

    def _shared_inplace(self, node: Any) -> None:
        """A node on shared values that would work in place (on the data, say) runs out of place
        (the same values where its input has no other user; else :class:`_Unsupported`)."""
        src = node.args[0] if node.args else None
        single = hasattr(src, "op") and len(src.users) == 1
        if node.op == "call_module":
            m = self.modules[node.target]
            if getattr(m, "inplace", False):
                if not single:
                    raise _Unsupported("in-place operation on a value used elsewhere")
                m = copy.copy(m)
                m.inplace = False
                self.unary[node] = (m, None)
        elif node.op == "call_function":
            f = node.target
            if f in _ELEMENTWISE_FUNCTIONS:
                self.unary[node] = self._ufunc(f, tuple(node.args[1:]), dict(node.kwargs), single)
            elif getattr(f, "__name__", "").endswith("_") or node.kwargs.get("inplace"):
                raise _Unsupported("in-place function")
        elif node.op == "call_method" and str(node.target).endswith("_"):
            raise _Unsupported("in-place method")

    @staticmethod
    def _ufunc(f: Any, rest: tuple, kwargs: dict, single: bool) -> tuple[Callable[..., Any], Callable[..., Any] | None]:
        """(out-of-place, in-place or None) callables of one tensor for an elementwise function call
        with constant extra arguments."""
        if f in (torch.relu, torch.tanh, torch.sigmoid):
            if rest or kwargs:
                raise _Unsupported("elementwise arguments")
            return f, getattr(torch, f.__name__ + "_")
        import inspect

        try:
            sig = inspect.signature(f)
        except ValueError:  # a builtin without a signature (F.gelu, F.softplus): no inplace argument
            if "inplace" in kwargs:
                raise _Unsupported(f"arguments of {f.__name__}") from None
            return (lambda t: f(t, *rest, **kwargs)), None
        try:
            bound = sig.bind(None, *rest, **kwargs)
        except TypeError:
            raise _Unsupported(f"arguments of {f.__name__}") from None
        if "inplace" not in sig.parameters:
            return (lambda t: f(t, *rest, **kwargs)), None
        if bound.arguments.get("inplace", False) and not single:
            raise _Unsupported("in-place activation of a value used elsewhere")
        first = next(iter(sig.parameters))
        args = {k: v for k, v in bound.arguments.items() if k not in (first, "inplace")}
        return (lambda t: f(t, **args, inplace=False)), (lambda t: f(t, **args, inplace=True))

    # -------------------------------------------------------------------- per chunk

    def _setup_layers(self) -> None:
        """Per-layer facts for :meth:`prepare`: state-dict keys, BatchNorm constants, and for each
        convolution its weight's frame rows [offset (zero when None), B_0, …] (or the fixed weight)
        as one (K + 1, numel) matrix, 2D kernels in channels-last order (C_out, kh, kw, C_in), so
        that one product with the chunk's [1, w] rows writes every point's weights in the layout
        the convolution reads."""
        frame = self.frame
        self.conv_meta: dict[Any, tuple] = {}
        self.bn_meta: dict[Any, tuple] = {}

        def bn_keys(bn_node: Any) -> tuple:
            bn, pre = self.modules[bn_node.target], bn_node.target
            return (f"{pre}.running_var", f"{pre}.running_mean", f"{pre}.weight" if bn.affine else None,
                    f"{pre}.bias" if bn.affine else None, bn.eps)

        for node, kind in self.kind.items():
            if kind == "conv":
                m = self.modules[node.target]
                wkey = f"{node.target}.weight"
                if wkey in frame.bases:
                    off = frame.offset[wkey]
                    rows = torch.cat([(off if off is not None else torch.zeros_like(frame.bases[wkey][0])).unsqueeze(0), frame.bases[wkey]])
                else:
                    rows = frame.fixed[wkey].unsqueeze(0)
                if rows.dim() == 5:  # (K+1, C_out, C_in, kh, kw) → channels-last order
                    rows = rows.permute(0, 1, 3, 4, 2)
                shape = tuple(rows.shape[1:])
                rows = rows.reshape(rows.shape[0], -1).contiguous()
                fold = bn_keys(self.fold[node]) if node in self.fold else None
                self.conv_meta[node] = (rows, shape, f"{node.target}.bias" if m.bias is not None else None, fold)
                self.stack_keys.discard(wkey)
            elif kind == "bn":
                self.bn_meta[node] = bn_keys(node)

    @staticmethod
    def _bn_affine(params: StateDict, keys: tuple, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(s, shift) of an eval-mode BatchNorm per point: y = x·s + shift, s = γ/√(σ² + ε),
        shift = β − μ·s (with a preceding bias b folded in: (b − μ)·s + β)."""
        var, mean, weight, bias_key, eps = keys
        s = torch.rsqrt(params[var] + eps)
        if weight is not None:
            s = params[weight] * s
        shift = (bias - params[mean] if bias is not None else -params[mean]) * s
        if bias_key is not None:
            shift = shift + params[bias_key]
        return s, shift

    def prepare(self, W: torch.Tensor) -> dict[Any, Any]:
        """Per-chunk tensors: stacked parameters, the convolutions' per-point weights (BatchNorm
        folded in), BatchNorm scales and shifts, the runs of points of large Linear layers."""
        P = W.shape[0]
        params = self.frame.stacked(W, self.stack_keys, self.buffers)
        prep: dict[Any, Any] = {"P": P, "W": W, "params": params}
        if self.conv_meta:
            prep["aug"] = torch.cat([torch.ones(P, 1, dtype=W.dtype, device=W.device), W], 1)
        for node, keys in self.bn_meta.items():
            prep[node] = self._bn_affine(params, keys, None)
        for node in self.big:
            prep[node] = self._groups(W)
        return prep

    def _conv_weights(self, node: Any, prep: dict[Any, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The chunk's weights (P·C_out, C_in/groups, *k) and bias of a convolution, BatchNorm folded
        in; computed when the convolution first runs in the chunk (still in cache when it reads them)."""
        hit = prep.get(node)
        if hit is not None:
            return hit
        rows, shape, bkey, fold = self.conv_meta[node]
        P, params = prep["P"], prep["params"]
        b = params[bkey] if bkey is not None else None
        dest = self._scratch(("conv", node), (P, rows.shape[1]), rows.dtype)
        if rows.shape[0] == 1:  # a fixed weight
            dest.copy_(rows.expand(P, -1))
        else:
            torch.mm(prep["aug"].to(dtype=rows.dtype), rows, out=dest)
        if fold is not None:
            s, b = self._bn_affine(params, fold, b)
            dest.view(P, s.shape[1], -1).mul_(s.unsqueeze(-1))
        if len(shape) == 4:  # (P·C_out, kh, kw, C_in) memory: channels-last (P·C_out, C_in, kh, kw)
            w = dest.view(P * shape[0], *shape[1:]).permute(0, 3, 1, 2)
        else:
            w = dest.view(P * shape[0], *shape[1:])
        prep[node] = out = (w, b.reshape(-1).contiguous() if b is not None else None)
        return out

    def _scratch(self, key: Any, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of ``shape`` in a buffer kept across chunks (fresh allocations of megabytes per
        chunk page-fault on CPU); its leading dimension may be smaller than the buffer's."""
        buf = self.scratch.get(key)
        n = math.prod(shape)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = torch.empty(n, dtype=dtype, device=self.line.device)
            self.scratch[key] = buf
        return buf[:n].view(*shape)

    @staticmethod
    def _groups(W: torch.Tensor) -> tuple[list[tuple[list[float], list[int]]], list[list[float]]]:
        """Runs of the chunk's points that share their weights w_1.. (a row of a random grid), and
        the weights as lists."""
        out: list[tuple[list[float], list[int]]] = []
        rows = W.tolist()
        for p, w in enumerate(rows):
            if out and out[-1][0] == w[1:]:
                out[-1][1].append(p)
            else:
                out.append((w[1:], [p]))
        return out, rows

    def run(self, prep: dict[Any, Any], xb: torch.Tensor, batch_key: tuple[int, int]) -> torch.Tensor:
        """Outputs (P, batch, ...) of the model for the chunk's points on ``xb``."""
        P = prep["P"]
        env: dict[Any, _PVal] = {}
        remaining = {n: len(n.users) for n in self.nodes}

        def last_use(v: _PVal, node: Any, src: Any) -> bool:
            return v.packed and v.own and remaining.get(src, 0) == 1 and sum(1 for a in node.all_input_nodes if a is src) == 1

        for node in self.nodes:
            op = node.op
            if op == "placeholder":
                env[node] = _PVal(xb, False)
                continue
            if op == "output":
                v = env[node.args[0]]
                out = v.t if v.packed else v.t.unsqueeze(0).expand(P, *v.t.shape)
                return out
            if op == "get_attr":
                env[node] = _PVal(self._attr(node.target), False)
                continue
            kind = self.kind[node]
            srcs = list(node.all_input_nodes)
            if kind == "shared":
                env[node] = _PVal(self._shared(node, env), False)
            else:
                env[node] = self._packed_op(node, kind, env, prep, P, batch_key, last_use)
            for a in srcs:
                remaining[a] -= 1
                if remaining[a] == 0 and a in env:
                    del env[a]
        raise _Unsupported("no output")

    def _attr(self, target: str) -> torch.Tensor:
        if target in self.frame.fixed:
            return self.frame.fixed[target]
        obj: Any = self.line.shell
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def _shared(self, node: Any, env: dict[Any, _PVal]) -> Any:
        """A node that does not depend on the point, run as the model runs it."""
        import torch.fx

        args = torch.fx.node.map_arg(node.args, lambda a: env[a].t)
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda a: env[a].t)
        if node in self.unary:  # an out-of-place version of an in-place call
            return self.unary[node][0](args[0])
        if node.op == "call_module":
            m = self.modules[node.target]
            state = {own: self.frame.fixed[full] for full, own in _module_keys(m, node.target).items() if full in self.frame.fixed}
            return functional_call(m, state, tuple(args), dict(kwargs)) if state else m(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            self_obj, *rest = args
            return getattr(self_obj, node.target)(*rest, **kwargs)
        raise _Unsupported(node.op)

    def _packed_op(self, node: Any, kind: str, env: dict[Any, _PVal], prep: dict[Any, Any], P: int,
                   batch_key: tuple[int, int], last_use: Callable[..., bool]) -> _PVal:
        src = node.args[0] if node.args else None
        v = env[src] if hasattr(src, "op") else None
        if kind == "folded":
            return v  # type: ignore[return-value]
        if kind == "binary":
            return self._binary(node, env, last_use)
        assert v is not None
        if kind == "conv":
            m = self.modules[node.target]
            w, b = self._conv_weights(node, prep)
            if v.t.dim() != (3 if v.packed else 2) + len(m.kernel_size):
                raise _Unsupported("unbatched convolution input")
            if v.packed:
                x, groups = _fold_channels(v.t), P * m.groups
            elif m.groups == 1:
                x, groups = v.t, 1  # one convolution with P·C_out output channels
            else:  # the shared input once per point, so that the groups stay per point
                x, groups = v.t.repeat(1, P, *([1] * (v.t.dim() - 2))), P * m.groups
            if x.dim() == 4 and not x.is_contiguous(memory_format=torch.channels_last):
                x = x.contiguous(memory_format=torch.channels_last)
            y = _CONVS[type(m)](x, w, b, m.stride, m.padding, m.dilation, groups)
            return _PVal(_unfold_channels(y, P), True, True)
        if kind == "bn":
            s, shift = prep[node]
            t = v.t if v.packed else v.t.unsqueeze(0)
            if t.dim() < 3:
                raise _Unsupported("BatchNorm input")
            shape = (P, 1, s.shape[1]) + (1,) * (t.dim() - 3)
            s, shift = s.reshape(shape), shift.reshape(shape)
            if last_use(v, node, src):
                return _PVal(t.mul_(s).add_(shift), True, True)
            return _PVal(torch.addcmul(shift, t, s), True, True)
        if kind == "stem":
            c, B = self.stems[node].terms(self.frame, v.t, batch_key)
            w = prep["W"].to(dtype=B.dtype)
            if c.dim() == 2 and node in self.stem_t:  # written (P, O, N): what a large next layer reads
                cT, BT = self.stem_t[node].get(batch_key) or self._stem_t(node, batch_key, c, B)
                h = torch.addmm(cT, w, BT).view(P, c.shape[1], c.shape[0]).transpose(1, 2)
            else:
                h = torch.addmm(c.reshape(1, -1), w, B.reshape(B.shape[0], -1)).reshape(P, *c.shape)
            return _PVal(h, True, True)
        if kind == "linear":
            params = prep["params"]
            wt = params[f"{node.target}.weight"]
            bt = params.get(f"{node.target}.bias") if self.modules[node.target].bias is not None else None
            t = v.t
            x = t.reshape(P, -1, t.shape[-1])
            y = torch.bmm(x, wt.transpose(1, 2)) if bt is None else torch.baddbmm(bt.unsqueeze(1), x, wt.transpose(1, 2))
            return _PVal(y.reshape(P, *t.shape[1:-1], wt.shape[1]), True, True)
        if kind == "big":
            return _PVal(self._big_linear(node, v.t, prep, P), True, True)
        if kind == "unary":
            fn_out, fn_in = self.unary[node]
            if fn_in is not None and last_use(v, node, src):
                return _PVal(fn_in(v.t), True, True)
            return self._fresh(fn_out(v.t), v)
        if kind == "pool":
            if node.op == "call_module":
                m = self.modules[node.target]
                nd, fn, rest, kwargs = _POOL_MODULES[type(m)], m, (), {}
            else:
                nd, fn, rest, kwargs = _POOL_FUNCTIONS[node.target], node.target, tuple(node.args[1:]), dict(node.kwargs)
            if v.t.dim() != 3 + nd:
                raise _Unsupported("unbatched pooling input")
            return self._fresh(_unfold_channels(fn(_fold_channels(v.t), *rest, **kwargs), P), v)
        if kind == "flatten":
            if node.op == "call_module":
                m = self.modules[node.target]
                start, end = m.start_dim, m.end_dim
            else:
                names = ("start_dim", "end_dim")
                if set(node.kwargs) - set(names) or len(node.args) > 3:
                    raise _Unsupported("flatten arguments")
                opts = {"start_dim": 0, "end_dim": -1, **dict(zip(names, node.args[1:])), **node.kwargs}
                start, end = opts["start_dim"], opts["end_dim"]
            return self._fresh(v.t.flatten(_dim_out(start), _dim_out(end)), v)
        if kind == "index":
            idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
            return self._fresh(v.t[(slice(None),) + idx], v)
        if kind == "mean":
            extra, kwargs = list(node.args[1:]), dict(node.kwargs)
            if set(kwargs) - {"dim", "keepdim"} or len(extra) > 2:
                raise _Unsupported("mean arguments")
            dim = extra[0] if extra else kwargs.get("dim")
            keepdim = extra[1] if len(extra) > 1 else kwargs.get("keepdim", False)
            if dim is None or not isinstance(keepdim, bool):
                raise _Unsupported("mean over everything")
            dims = tuple(_dim_out(d) for d in (dim if isinstance(dim, (tuple, list)) else (dim,)))
            return _PVal(v.t.mean(dims, keepdim=keepdim), True, True)
        raise _Unsupported(kind)

    def _stem_t(self, node: Any, key: tuple[int, int], c: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first layer's terms transposed, (1, O·N) and (K, O·N), kept per data batch."""
        out = (c.t().reshape(1, -1), B.transpose(1, 2).reshape(B.shape[0], -1))
        if key in self.stems[node].cache:  # within the stem's cache budget
            self.stem_t[node][key] = out
        return out

    @staticmethod
    def _fresh(out: torch.Tensor, v: _PVal) -> _PVal:
        """The result of an out-of-place operation on ``v``: its own tensor, unless it is a view of
        ``v`` (then neither may be overwritten in place any more)."""
        if _shares_storage(out, v.t):
            v.own = False
            return _PVal(out, True, False)
        return _PVal(out, True, True)

    def _binary(self, node: Any, env: dict[Any, _PVal], last_use: Callable[..., bool]) -> _PVal:
        """a ∘ b for ∘ in + − × / with at least one point-dependent operand; shared tensors must
        broadcast against one point's shape without reaching the point axis."""
        a, b = node.args
        va = env[a] if hasattr(a, "op") else None
        vb = env[b] if hasattr(b, "op") else None
        ta = va.t if va is not None else a
        tb = vb.t if vb is not None else b
        for val, other in ((va, vb), (vb, va)):
            if val is not None and val.packed and other is not None and not other.packed and isinstance(other.t, torch.Tensor):
                if other.t.dim() >= val.t.dim():
                    raise _Unsupported("a shared tensor broadcast over the point axis")
        if va is not None and vb is not None and va.packed and vb.packed and va.t.dim() != vb.t.dim():
            raise _Unsupported("broadcast between point-dependent tensors of different ranks")
        f = node.target
        name = {operator.add: "add_", torch.add: "add_", operator.sub: "sub_", torch.sub: "sub_",
                operator.mul: "mul_", torch.mul: "mul_", operator.truediv: "div_"}[f]

        def fits(t: torch.Tensor, other: Any) -> bool:  # t ∘= other gives t ∘ other
            o_shape = other.shape if isinstance(other, torch.Tensor) else ()
            if o_shape != t.shape and torch.broadcast_shapes(t.shape, o_shape) != t.shape:
                return False
            return (other.dtype if isinstance(other, torch.Tensor) and o_shape == t.shape else torch.result_type(t, other)) == t.dtype

        if va is not None and va.packed and last_use(va, node, a) and fits(ta, tb):
            return _PVal(getattr(ta, name)(tb), True, True)
        if name in ("add_", "mul_") and vb is not None and vb.packed and last_use(vb, node, b) and fits(tb, ta):
            return _PVal(getattr(tb, name)(ta), True, True)
        out = f(ta, tb)
        own = not any(v is not None and isinstance(v.t, torch.Tensor) and _shares_storage(out, v.t) for v in (va, vb))
        return _PVal(out, True, own)

    def _big_linear(self, node: Any, t: torch.Tensor, prep: dict[Any, Any], P: int) -> torch.Tensor:
        """y_p = x_p·W_pᵀ + b_p for a large weight W_p = offset + Σ_k w_pk·B_k, block of rows by
        block: for each block, offset + Σ_{k≥1} w_k·B_k once per run of points sharing w_1.. (a
        row of a random grid), then per point + w_0·B_0 into a small buffer and one matrix product
        into rows of the (P, O, M) result (the points' weights are never stacked in memory); with
        several intra-op threads, as many points per batched product. Returns the (P, *lead, O)
        view of that result."""
        wkey, bkey = self.big[node]
        frame = self.frame
        Fin = t.shape[-1]
        x = t.reshape(P, -1, Fin)
        M = x.shape[1]
        bias = prep["params"][bkey] if bkey is not None else None
        if wkey not in frame.bases:  # a fixed weight: one product for all points
            y = torch.matmul(x, frame.fixed[wkey].t())
            if bias is not None:
                y = y + bias.unsqueeze(1)
            return y.reshape(P, *t.shape[1:-1], y.shape[-1])
        B, off = frame.bases[wkey], frame.offset[wkey]
        O = B.shape[1]
        out = self._scratch(("out", node), (P, O, M), t.dtype)
        R = max(1, min(O, _BLOCK_BYTES // max(1, Fin * t.element_size())))  # rows per block
        blocks = self.blocks.get((node, R))
        if blocks is None:  # the bases and offset cut into blocks of rows once (views)
            blocks = (list(zip(*[B[k].split(R) for k in range(B.shape[0])])), list(off.split(R)) if off is not None else None)
            self.blocks[(node, R)] = blocks
        bas, offs = blocks
        # points per product: one per intra-op thread (a batched product spreads its matrices over
        # the threads; a single one of these sizes barely does)
        Q = max(1, _POINT_BATCH if _POINT_BATCH else torch.get_num_threads())
        wbuf = torch.empty((Q, R, Fin), dtype=t.dtype, device=t.device)
        ybuf = torch.empty((Q, R, M), dtype=t.dtype, device=t.device)
        tbuf = torch.empty((R, Fin), dtype=t.dtype, device=t.device)
        groups, rows = prep[node]
        w0 = prep["W"][:, 0].to(dtype=t.dtype).reshape(P, 1, 1)
        xT = x.transpose(1, 2)  # (P, F, M): each point's operand, row-major in memory for the products
        if not xT.is_contiguous():
            xT = self._scratch(("xT", node), xT.shape, xT.dtype).copy_(xT)
        xt = list(xT.unbind(0))
        dest = [list(out[p].split(R)) for p in range(P)] if Q == 1 else []
        for j, bk in enumerate(bas):
            n = bk[0].shape[0]
            r0 = j * R
            tb = tbuf if n == R else tbuf[:n]
            o_blk = offs[j] if offs is not None else None
            b0 = bk[0].unsqueeze(0)
            for tw, idxs in groups:
                if not tw:
                    base = o_blk
                else:
                    if o_blk is None:
                        torch.mul(bk[1], tw[0], out=tb)
                    else:
                        torch.add(o_blk, bk[1], alpha=tw[0], out=tb)
                    for k in range(1, len(tw)):
                        tb.add_(bk[k + 1], alpha=tw[k])
                    base = tb
                if Q == 1:
                    wb = wbuf[0, :n]
                    for p in idxs:
                        if base is None:
                            torch.mul(bk[0], rows[p][0], out=wb)
                        else:
                            torch.add(base, bk[0], alpha=rows[p][0], out=wb)
                        torch.mm(wb, xt[p], out=dest[p][j])
                    continue
                for p0 in range(idxs[0], idxs[-1] + 1, Q):  # Q points per product (a run is consecutive)
                    p1 = min(idxs[-1] + 1, p0 + Q)
                    wb = wbuf[: p1 - p0, :n]
                    if base is None:
                        torch.mul(b0, w0[p0:p1], out=wb)
                    else:
                        torch.addcmul(base.unsqueeze(0), w0[p0:p1], b0, out=wb)
                    # into a contiguous buffer, then the rows of the result (a strided bmm
                    # output is slower, and does not spread over threads)
                    out[p0:p1, r0 : r0 + n].copy_(torch.bmm(wb, xT[p0:p1], out=ybuf[: p1 - p0, :n]))
        if bias is not None:
            out.add_(bias.unsqueeze(2))
        return out.transpose(1, 2).reshape(P, *t.shape[1:-1], O)


def _module_keys(m: nn.Module, target: str) -> dict[str, str]:
    """State-dict key of the model → the module's own key, for the module at ``target``."""
    return {f"{target}.{n}": n for n in m.state_dict(keep_vars=True)}


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except Exception:
        return True


_ALLOCATOR_WARM = False


def _warm_allocator() -> None:
    """Once per process: allocate and free 31 MiB (untouched, so nearly free). glibc's malloc
    serves blocks above a threshold by fresh ``mmap`` (every page faults on first touch, ~1.5 µs
    each) and raises that threshold to the size of such a block when it is freed; after this, the
    megabytes of activations a packed chunk allocates and frees are reused from the heap instead
    (measured: 120 k page faults and 15 % of the time of a 31×31 ResNet surface without it). Other
    allocators just allocate and free."""
    global _ALLOCATOR_WARM
    if not _ALLOCATOR_WARM:
        _ALLOCATOR_WARM = True
        torch.empty(31 * 2**20, dtype=torch.uint8)  # freed at once


def _packed_plan(line: Line, frame: Frame) -> _PackedPlan | None:
    """The packed plan for this model on CPU, or None (not applicable)."""
    if not _PACKED or line.device.type != "cpu" or not frame.bases:
        return None
    try:
        plan = _PackedPlan(line, frame)
    except _Unsupported:
        return None
    _warm_allocator()
    return plan


def _packed_chunk(plan: _PackedPlan, data: Dataset, batch_size: int | None, weights: Sequence[Sequence[float]]) -> int:
    """Default points per packed chunk: the largest activation of the chunk (one layer's output for
    all its points) within ``_PACKED_CHUNK_BYTES``, so that a layer's input and output stay in
    cache; with large Linear layers at least a run of points sharing w_1.. (a row of a random grid),
    whose partial weights each block computes once. At most ``_PACKED_MAX_CHUNK``, and all the
    chunk's activations within the memory budget of :func:`auto_chunk`."""
    batch = data.n if not batch_size or batch_size <= 0 else min(batch_size, data.n)
    try:
        sizes = _activation_sizes(plan.line, data)
    except Exception:
        sizes = []
    scale = batch / max(1, min(2, data.n))
    peak, total = max(sizes, default=0) * scale, sum(sizes) * scale
    size = max(1, min(_PACKED_MAX_CHUNK, int(_PACKED_CHUNK_BYTES // max(1.0, peak))))
    if plan.big:
        run = 1
        while run < len(weights) and list(weights[run][1:]) == list(weights[0][1:]):
            run += 1
        size = max(size, min(run, _PACKED_MAX_CHUNK))
    return int(max(1, min(size, _CPU_CHUNK_BYTES // max(1.0, 3 * total))))


def _packed_eval(plan: _PackedPlan, W: torch.Tensor, data: Dataset, batch_size: int | None) -> list[float]:
    """Mean losses of the chunk's points (rows of ``W``) through the packed plan."""
    totals = torch.zeros(W.shape[0], dtype=torch.float64, device=plan.line.device)
    with torch.no_grad():
        prep = plan.prepare(W)
        for sl in batches(data.n, batch_size):
            outs = plan.run(prep, data.x[sl], (sl.start or 0, sl.stop if sl.stop is not None else data.n))
            if outs.shape[0] != W.shape[0] or outs.shape[1] != data.y[sl].shape[0]:
                raise _Unsupported("output shape")
            totals += _loss_sums_stacked(outs, data.y[sl], data.loss)
    norm = loss_normaliser(data)
    return [float(t) / norm for t in totals.cpu()]


def evaluate_points(
    line: Line,
    frame: Frame,
    coords: Sequence[Sequence[float]],
    data: Dataset,
    *,
    bn: BNPolicy = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    chunk: int | None = None,
    progress: Progress | None = None,
    details: dict[str, Any] | None = None,
) -> tuple[list[float], int, list[str]]:
    """Mean loss over ``data`` at every point of ``coords`` (each a tuple of slice coordinates).

    Args:
        line: the model shell and endpoints (device, dtype).
        frame: the slice's parametrisation.
        coords: the grid points, in order.
        data: on the line's device and dtype.
        bn: BatchNorm policy; ``recompute`` evaluates point by point.
        batch_size: examples per forward pass (None: all).
        chunk: grid points per packed or vmapped pass (None: :func:`_packed_chunk` or
            :func:`auto_chunk`; 1: a plain loop).
        progress: called with (done, total) after each chunk.
        details: if given, receives ``first_layer_split`` (whether the first layer was evaluated
            once per basis, :class:`_Stem`, rather than once per point) and ``strategy``:
            ``packed`` (:class:`_PackedPlan`, on CPU whenever the traced model is covered and
            ``chunk`` is not 1), ``vmap`` (chunks), ``loop`` (plain per-point ``functional_call``)
            or ``split_loop`` (:func:`_split_loop`, chosen on CPU by :func:`_prefer_split_loop`
            when ``chunk`` is None); ``packed_error`` when the packed plan failed at run time.

    Returns:
        (losses, chunk used, warnings). A ``vmap`` failure falls back to the loop with a warning;
        a packed plan that fails falls back silently to the other strategies.
    """
    recompute = line.has_bn and bn == BNPolicy.RECOMPUTE
    weights = [frame.weights(c) for c in coords]
    total = len(weights)
    warnings: list[str] = []
    plan = None if recompute or chunk == 1 else _packed_plan(line, frame)
    if plan is not None:
        size = max(1, int(chunk)) if chunk is not None else _packed_chunk(plan, data, batch_size, weights)
        try:
            packed_losses: list[float] = []
            for i0 in range(0, total, size):
                part = weights[i0 : i0 + size]
                # a short last chunk is padded with its last point: the same tensor shapes as the
                # other chunks (a new shape costs oneDNN a new compiled kernel per layer)
                pad = [part[-1]] * (size - len(part)) if total > size else []
                W = torch.tensor(part + pad, dtype=torch.float64, device=line.device)
                packed_losses.extend(_packed_eval(plan, W, data, batch_size)[: len(part)])
                if progress is not None:
                    progress(min(i0 + size, total), total)
        except Exception as exc:  # not covered after all: the other strategies
            if details is not None:
                details["packed_error"] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
        else:
            if details is not None:
                details["first_layer_split"] = plan.first_layer_split
                details["strategy"] = "packed"
            return packed_losses, min(size, total), warnings
    stem = None if recompute else _stem(line, frame)
    if not recompute and chunk is None and stem is not None and _prefer_split_loop(line, frame, data, batch_size, stem):
        try:
            losses_loop = _split_loop(line, frame, weights, data, batch_size, stem, progress)
        except Exception:
            pass  # fall through to the vmapped chunks
        else:
            if details is not None:
                details["first_layer_split"] = True
                details["strategy"] = "split_loop"
            return losses_loop, 1, warnings
    if recompute:
        chunk = 1
    elif chunk is None:
        chunk = auto_chunk(line, frame, data, batch_size, skip=stem.keys if stem is not None else ())
    chunk = max(1, int(chunk))
    losses: list[float] = []
    buffers: dict[str, torch.Tensor] = {}  # stacked parameters, reused by every chunk
    i0 = 0
    while i0 < total:
        part = weights[i0 : i0 + chunk]
        if chunk == 1:
            for w in part:
                state = frame.state(w)
                if recompute:
                    state = recompute_bn_statistics(line, state, data.x, batch_size)
                losses.append(_eval_state(line, state, data, batch_size))
        else:
            W = torch.tensor(part, dtype=torch.float64, device=line.device)
            try:
                try:
                    part_losses = _eval_chunk(line, frame, W, data, batch_size, stem, buffers)
                except Exception:
                    if stem is None:
                        raise
                    stem = None  # the first-layer split failed: vmap the whole model
                    part_losses = _eval_chunk(line, frame, W, data, batch_size, None, buffers)
                losses.extend(part_losses)
            except Exception as exc:  # a model vmap cannot batch: fall back to the loop
                msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                warnings.append(f"vmap over grid points failed ({type(exc).__name__}: {msg}); evaluated point by point")
                chunk = 1
                continue
        i0 += len(part)
        if details is not None:
            details["first_layer_split"] = stem is not None and chunk > 1
            details["strategy"] = "vmap" if chunk > 1 else "loop"
        if progress is not None:
            progress(min(i0, total), total)
    return losses, chunk, warnings


# ----------------------------------------------------------------------------- public API


def axis_grid(lo: float, hi: float, steps: int) -> list[float]:
    """``steps`` evenly spaced values from ``lo`` to ``hi`` (both included), computed as
    (lo·(steps − 1 − i) + hi·i)/(steps − 1), so that [0, 1] gives exactly the α grid of
    :func:`mli_theory.path.alpha_grid` and [−R, R] is symmetric; values within 1e-12 of 0 or 1 are
    snapped to exactly 0.0 / 1.0.

    >>> axis_grid(0.0, 1.0, 5)
    [0.0, 0.25, 0.5, 0.75, 1.0]
    >>> axis_grid(-1.0, 1.0, 11)[4]
    -0.2
    """
    n = steps - 1
    out = []
    for i in range(steps):
        v = (lo * (n - i) + hi * i) / n if n > 0 else lo
        for snap in (0.0, 1.0):
            if abs(v - snap) <= 1e-12:
                v = snap
        out.append(float(v))
    return out


def validate_surface_options(
    *,
    dims: int,
    steps: int,
    span: float,
    plane: bool,
    third: Any,
    center: str,
    seed: int,
    bn: BNPolicy | str,
    batch_size: int | None = None,
    chunk: int | None = None,
    directions: str = "random",
    include_bn_and_bias: bool = False,
    hessian_tol: float = 1e-6,
) -> BNPolicy:
    """Check the scalar options of :func:`loss_surface` before any work.

    Raises:
        InputError: naming the parameter.
    """
    if isinstance(dims, bool) or dims not in (1, 2):
        raise InputError(f"dims={dims!r}: a surface has 1 or 2 dimensions")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise InputError(f"steps={steps!r}: need an integer of at least 2 grid points per axis")
    if steps**dims > MAX_POINTS:
        raise InputError(f"steps={steps}: {steps ** dims} grid points is more than the {MAX_POINTS} a surface evaluates")
    if isinstance(span, bool) or not isinstance(span, (int, float)) or not math.isfinite(span) or span < 0 or (span == 0 and not plane):
        raise InputError(f"range={span!r}: must be a finite number > 0 (≥ 0 with a plane)")
    if center not in ("final", "init"):
        raise InputError(f"center={center!r}: expected final or init")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed={seed!r}: must be an integer")
    if plane and dims == 2 and third is None:
        raise InputError("plane=True needs third (a third checkpoint spanning the plane with init and final)")
    if not plane and third is not None:
        raise InputError("third is only used with plane=True")
    if plane and dims == 1 and third is not None:
        raise InputError("third is only used with a 2D plane (dims=2)")
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size <= 0):
        raise InputError(f"batch_size={batch_size!r}: must be a positive integer")
    if chunk is not None and (isinstance(chunk, bool) or chunk <= 0):
        raise InputError(f"chunk={chunk!r}: must be a positive integer")
    if not isinstance(directions, str) or directions not in DIRECTIONS:
        raise InputError(f"directions={directions!r}: expected one of {', '.join(DIRECTIONS)}")
    if directions == "hessian":
        if plane:
            raise InputError("directions='hessian' slices about a centre; it cannot be combined with plane=True")
        if include_bn_and_bias:
            raise InputError(
                "include_bn_and_bias applies to random directions; Hessian eigenvectors always span every trainable parameter"
            )
        if isinstance(hessian_tol, bool) or not isinstance(hessian_tol, (int, float)) or not math.isfinite(hessian_tol) or not 0 < hessian_tol < 1:
            raise InputError(f"hessian_tol={hessian_tol!r}: the relative residual tolerance must be in (0, 1)")
    try:
        return BNPolicy(bn)
    except ValueError:
        raise InputError(f"bn={bn!r}: unknown BatchNorm policy (expected recompute, interpolate or frozen)") from None


def _span_coords(frame_dirs: list[StateDict], target: StateDict, origin: StateDict, names: list[str]) -> tuple[float, ...] | None:
    """Coordinates of ``target`` − ``origin`` in span(dirs) if it lies there (relative residual ≤ 1e-6)."""
    v = {n: target[n] - origin[n] for n in names}
    vv = dot(v, v, names)
    if vv == 0.0:
        return tuple(0.0 for _ in frame_dirs)
    G = torch.tensor([[dot(a, b, names) for b in frame_dirs] for a in frame_dirs], dtype=torch.float64)
    r = torch.tensor([dot(a, v, names) for a in frame_dirs], dtype=torch.float64)
    try:
        c = torch.linalg.solve(G, r)
    except Exception:
        return None
    resid = vv - float(c @ r)
    if resid > 1e-12 * vv:
        return None
    return tuple(float(t) for t in c)


def loss_surface(
    model: nn.Module,
    init: StateDict,
    final: StateDict,
    data: Dataset,
    *,
    dims: int = 2,
    plane: bool = False,
    third: StateDict | None = None,
    center: str = "final",
    steps: int = 21,
    span: float | None = None,
    seed: int = 0,
    include_bn_and_bias: bool = False,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    batch_size: int | None = None,
    chunk: int | None = None,
    progress: Progress | None = None,
    directions: str = "random",
    hessian_tol: float = 1e-6,
) -> Surface:
    """A 1D or 2D slice of the mean training loss (see the module docstring for the maths).

    Args:
        model: the architecture (not modified; its own weights are ignored).
        init, final: θ0 and θT state dicts (not modified).
        data: the training data (cast to ``device``/``dtype``).
        dims: 1 or 2.
        plane: slice through θ0 and θT (and ``third`` in 2D) instead of random directions.
        third: θC, the third point of the plane (2D plane mode only).
        center: ``final`` (θT) or ``init`` (θ0), the centre of random slices.
        steps: grid points per axis (≥ 2).
        span: R. Random mode: coordinates in [−R, R] (default 1). Plane mode: [−R, 1 + R]
            (default 0.5; 0 allowed).
        seed: seed of the random directions (hessian mode: of the Lanczos start vector).
        include_bn_and_bias: perturb biases and BatchNorm parameters too (random mode only).
        bn: BatchNorm policy (``recompute``, ``interpolate``, ``frozen``).
        device, dtype: where and in which precision to evaluate.
        batch_size: examples per forward pass (None: all at once); does not change the result.
        chunk: grid points per packed or vmapped pass (None: sized to cache and memory; 1: a plain loop).
        progress: called with (done, total) after each chunk of points.
        directions: the axes of a slice about ``center`` (not with ``plane``):
            ``random`` (filter-normalised Gaussian directions, the default) or ``hessian`` (the
            top-1 / top-2 Hessian eigenvectors at the centre, unit norm in parameter space; the
            result's ``eigenvalues`` holds λ1 (, λ2) and ``mode`` is ``hessian``).
        hessian_tol: hessian mode: the relative residual ‖Hv − λv‖ ≤ tol·|λ| asked of each
            eigenpair (a pair that misses it is still used, with a warning).

    Raises:
        InputError: bad options, checkpoints or data, before any heavy work.
    """
    import time

    if span is None:
        span = 0.5 if plane else 1.0
    bn = validate_surface_options(
        dims=dims, steps=steps, span=span, plane=plane, third=third, center=center, seed=seed, bn=bn,
        batch_size=batch_size, chunk=chunk, directions=directions, include_bn_and_bias=include_bn_and_bias, hessian_tol=hessian_tol,
    )
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    line = make_line(model, init, final, device=device, dtype=dtype)
    third_state = _cast_state(model, third, "third", device, dtype) if third is not None else None
    data = data_on_line(line, data, bn, batch_size)

    names = list(line.param_names)
    warnings: list[str] = []
    info: dict[str, Any] = {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "n_examples": data.n}
    points: dict[str, tuple[float, ...]] = {}
    eigenvalues: tuple[float, ...] | None = None
    n_params = sum(line.start[n].numel() for n in names)
    if directions == "hessian" and n_params < dims:
        raise InputError(f"directions='hessian' with dims={dims} needs at least {dims} trainable parameters (the model has {n_params})")
    if plane:
        frame, beta = plane_frame(line, third_state, dims=dims, bn=bn)
        lo, hi = -float(span), 1.0 + float(span)
        xs = axis_grid(lo, hi, steps)
        ys = axis_grid(lo, hi, steps) if dims == 2 else None
        mli = ((0.0, 0.0), (1.0, 0.0)) if dims == 2 else ((0.0,), (1.0,))
        points = {"init": mli[0], "final": mli[1]}
        if dims == 2:
            points["third"] = (beta, 1.0)
            info["beta"] = beta
            desc = (
                "plane through init (0,0), final (1,0) and third (beta,1): theta(x,y) = theta0 + x*(thetaT - theta0) "
                "+ y*((thetaC - theta0) - beta*(thetaT - theta0)), beta = <thetaC - theta0, thetaT - theta0>/|thetaT - theta0|^2"
            )
        else:
            desc = "line through init (x=0) and final (x=1): theta(x) = (1 - x)*theta0 + x*thetaT"
        center_name = "init"
    else:
        if directions == "hessian":
            t_h = time.perf_counter()
            frame, dirs, pairs = hessian_frame(line, data, dims=dims, center=center, seed=seed, bn=bn, tol=float(hessian_tol), batch_size=batch_size)
            eigenvalues = tuple(float(v) for v in pairs.eigenvalues[:dims])
            info.update(
                eigen_residuals=[float(r) for r in pairs.residuals[:dims]], eigen_converged=bool(pairs.converged),
                eigen_method=pairs.method, eigen_matvecs=int(pairs.n_matvecs), eigen_tol=float(hessian_tol),
                hessian_s=round(time.perf_counter() - t_h, 4),
            )
            if not pairs.converged:
                warnings.append(
                    f"the Lanczos solver missed the relative residual {float(hessian_tol):g} (residuals "
                    + ", ".join(f"{r:.3g}" for r in pairs.residuals[:dims])
                    + "): the axes are approximate eigenvectors"
                )
            solver = _SOLVERS.get(pairs.method, pairs.method)
            lams = ", ".join(f"lambda{i + 1} = {v:.6g}" for i, v in enumerate(eigenvalues))
            desc = (
                f"top-{dims} Hessian eigenvector{'s' if dims == 2 else ''} at {center} ({lams}; largest algebraic eigenvalues "
                f"of the Hessian of the mean training loss over all trainable parameters, buffers held fixed; {solver}, "
                f"start seed {seed}); unit norm in parameter space, not filter-normalised; sign: largest-magnitude entry positive"
            )
        else:
            frame, dirs = random_frame(line, model, dims=dims, center=center, seed=seed, include_bn_and_bias=include_bn_and_bias)
            what = "weights and biases/BatchNorm" if include_bn_and_bias else "weights (biases and BatchNorm parameters zero)"
            desc = (
                f"{dims} filter-normalised Gaussian direction{'s' if dims == 2 else ''} about {center} (seed {seed}; {what}; "
                f"each filter rescaled to the norm of the {center} weights' filter"
                + ("; second orthogonalised against the first after normalisation)" if dims == 2 else ")")
            )
        xs = axis_grid(-float(span), float(span), steps)
        ys = axis_grid(-float(span), float(span), steps) if dims == 2 else None
        c = line.end if center == "final" else line.start
        origin_label = "final" if center == "final" else "init"
        other_label = "init" if center == "final" else "final"
        points[origin_label] = tuple(0.0 for _ in range(dims))
        other = line.start if center == "final" else line.end
        co = _span_coords(dirs, other, c, names)
        if co is not None:
            points[other_label] = co
        mli = (points["init"], points["final"]) if co is not None else None
        norms = [math.sqrt(max(dot(d, d, names), 0.0)) for d in dirs]
        info["direction_norms"] = norms
        if dims == 2:
            info["direction_cosine"] = dot(dirs[0], dirs[1], names) / (norms[0] * norms[1]) if norms[0] * norms[1] > 0 else None
        center_name = center
    if ys is None:
        coords = [(x,) for x in xs]
    else:
        coords = [(x, y) for y in ys for x in xs]  # row-major: rows follow y
    t0 = time.perf_counter()
    details: dict[str, Any] = {}
    flat, used_chunk, w = evaluate_points(
        line, frame, coords, data, bn=bn, batch_size=batch_size, chunk=chunk, progress=progress, details=details
    )
    warnings.extend(w)
    info["chunk"] = used_chunk
    info["first_layer_split"] = bool(details.get("first_layer_split", False))
    info["strategy"] = details.get("strategy", "loop")
    if "packed_error" in details:
        info["packed_error"] = details["packed_error"]
    info["eval_s"] = round(time.perf_counter() - t0, 4)
    info["n_points"] = len(coords)
    n_bad = sum(1 for v in flat if not math.isfinite(v))
    if n_bad:
        hint = " (try dtype float64 or a smaller range)" if dtype != torch.float64 else " (try a smaller range)"
        warnings.append(f"{n_bad} of {len(flat)} grid points gave a non-finite loss (reported as null){hint}")
    clean: list[float | None] = [v if math.isfinite(v) else None for v in flat]
    if ys is None:
        losses: tuple[Any, ...] = tuple(clean)
    else:
        nx = len(xs)
        losses = tuple(tuple(clean[r * nx : (r + 1) * nx]) for r in range(len(ys)))
    return Surface(
        x=tuple(xs),
        y=tuple(ys) if ys is not None else None,
        losses=losses,
        dims=dims,
        mode="plane" if plane else directions,
        center=center_name,
        directions=desc,
        mli_line=mli,
        points=points,
        bn=bn.value if line.has_bn else None,
        seed=None if plane else seed,
        include_bn_and_bias=bool(include_bn_and_bias) and not plane,
        warnings=tuple(warnings),
        info=info,
        eigenvalues=eigenvalues,
    )


__all__ = [
    "DIRECTIONS",
    "Frame",
    "MAX_POINTS",
    "Surface",
    "auto_chunk",
    "axis_grid",
    "direction_frame",
    "evaluate_points",
    "hessian_frame",
    "loss_surface",
    "plane_frame",
    "random_frame",
    "validate_surface_options",
]
