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

Where ``vmap`` fails (a model it cannot batch), or with ``bn="recompute"``, points are evaluated
one by one (plain ``functional_call`` on the model as given). Every loss is the mean over the whole data set (per-batch sums accumulated in float64, one
division by the full count), as :func:`mli_theory.path.loss_curve` computes it.
"""

from __future__ import annotations

import copy
import math
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


def _activation_bytes(line: Line, data: Dataset, batch: int) -> int:
    """Bytes of all module outputs for one forward pass of ``batch`` examples (a probe on 2)."""
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
    per_example = sum(sizes) / max(1, min(2, data.n))
    return int(per_example * batch)


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
        chunk: grid points per vmapped pass (None: :func:`auto_chunk`; 1: a plain loop).
        progress: called with (done, total) after each chunk.
        details: if given, receives ``first_layer_split`` (whether the first layer was evaluated
            once per basis, :class:`_Stem`, rather than once per point) and ``strategy``:
            ``vmap`` (chunks), ``loop`` (plain per-point ``functional_call``) or ``split_loop``
            (:func:`_split_loop`, chosen on CPU by :func:`_prefer_split_loop` when ``chunk`` is None).

    Returns:
        (losses, chunk used, warnings). A ``vmap`` failure falls back to the loop with a warning.
    """
    recompute = line.has_bn and bn == BNPolicy.RECOMPUTE
    weights = [frame.weights(c) for c in coords]
    total = len(weights)
    warnings: list[str] = []
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
        chunk: grid points per vmapped pass (None: sized to memory; 1: a plain loop).
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
