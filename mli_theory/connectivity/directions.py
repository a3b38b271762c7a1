"""Filter-normalised random directions in parameter space (Li et al. 2018, "Visualizing the Loss
Landscape of Neural Nets", NeurIPS, §4).

A direction d is a state dict with the model's keys. It is drawn as follows:

1. **Zero-mean Gaussian.** Every entry of every trainable parameter tensor is drawn i.i.d. from
   N(0, 1) with an explicit ``torch.Generator`` on the model's device and in its dtype (so the
   direction is reproducible from ``seed`` on one device and never touches the global RNG).
2. **Filter normalisation.** For a weight tensor W with a filter axis (rows of a ``Linear`` weight
   = output units; output channels of a convolution; axis 1 of a transposed convolution, whose
   weight is stored ``(in, out, ...)``), each filter d_i of the direction is rescaled to the norm of
   the matching filter W_i of the reference weights:

       d_i ← d_i · ‖W_i‖ / ‖d_i‖        (Frobenius norms over the filter's entries).

   A filter whose reference norm is 0 gets a zero direction.
3. **Biases and BatchNorm.** Parameters with at most one dimension (biases, BatchNorm/LayerNorm
   affine weights) are set to zero by default, as Li et al. recommend. With
   ``include_bn_and_bias=True`` each such vector is treated as one filter: a Gaussian vector
   rescaled to the norm of the whole reference vector.
4. **Buffers** (BatchNorm ``running_mean``/``running_var`` and the integer
   ``num_batches_tracked``) are never part of a direction: their entries are zero.
5. **Orthogonalisation after normalisation.** A second direction is made orthogonal to the first
   by one Gram–Schmidt step over the whole parameter vector, *after* both were filter-normalised:
   d2 ← d2 − (⟨d2, d1⟩/⟨d1, d1⟩) d1, then rescaled to the Euclidean norm it had before the step
   (so both axes keep the scale of the weights; the per-filter norms of d2 then hold only up to
   that small projection, which is tiny for large models where random vectors are nearly
   orthogonal). The reverse order (orthogonalise, then normalise) would not give orthogonal axes.

The caller's model and tensors are read, never written.

**Hessian directions** (:func:`hessian_directions`, the axes of PyHessian-style surfaces): the
top-k eigenvectors (largest algebraic eigenvalues λ1 ≥ λ2) of the Hessian H = ∇²_θ L of the mean
training loss at a centre, over *all* trainable parameters (biases and BatchNorm affine
parameters included; buffers held fixed, zero in the direction), found by the restarted Lanczos
method of :func:`mli_theory.curvature.spectrum.extreme_eigenpairs` on the matrix-free operator of
:func:`mli_theory.curvature.hvp.loss_hessian_at`. Each is a unit vector in parameter space
(‖v‖₂ = 1 over all trainable entries; no filter normalisation, so the slice coordinate is a
Euclidean distance and L(c + s·v) = L(c) + s·∇L·v + ½·λ·s² + O(s³)), with a fixed sign: its entry
of largest magnitude (the first such, in state-dict order) is positive.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]


def filter_axes(model: nn.Module) -> dict[str, int]:
    """The filter axis of every trainable parameter with at least two dimensions.

    Axis 0 (output units / output channels) everywhere, except the weights of transposed
    convolutions, whose output channels lie along axis 1.
    """
    axes: dict[str, int] = {}
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            if p.dim() < 2:
                continue
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd) and p_name == "weight"
            axes[full] = 1 if transposed else 0
    # parameters registered outside named_modules' reach (shared, aliased) default to axis 0
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            axes.setdefault(name, 0)
    return axes


def normalize_filters(
    direction: torch.Tensor, reference: torch.Tensor, axis: int | None, eps: float = 0.0
) -> torch.Tensor:
    """Rescale each filter of ``direction`` (slices along ``axis``) to the norm of ``reference``'s.

    ``axis=None`` treats the whole tensor as one filter. Returns a new tensor; a filter of
    ``direction`` with norm 0, or whose reference filter has norm 0, becomes zero.
    """
    if axis is None:
        d_norm = direction.norm()
        r_norm = reference.norm()
        scale = torch.where(d_norm > eps, r_norm / torch.where(d_norm > eps, d_norm, torch.ones_like(d_norm)), torch.zeros_like(d_norm))
        return direction * scale
    d = direction.movedim(axis, 0)
    r = reference.movedim(axis, 0)
    d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
    r_norm = r.reshape(r.shape[0], -1).norm(dim=1)
    safe = torch.where(d_norm > eps, d_norm, torch.ones_like(d_norm))
    scale = torch.where(d_norm > eps, r_norm / safe, torch.zeros_like(d_norm))
    out = d * scale.reshape(-1, *([1] * (d.dim() - 1)))
    return out.movedim(0, axis).contiguous()


def random_direction(
    reference: Mapping[str, torch.Tensor],
    param_names: Iterable[str],
    axes: Mapping[str, int],
    generator: torch.Generator,
    *,
    include_bn_and_bias: bool = False,
) -> StateDict:
    """One filter-normalised Gaussian direction (steps 1–4 of the module docstring).

    Args:
        reference: the weights whose filter norms the direction copies (θT or θ0), keyed like the
            model's state dict; the direction is built on their device and in their dtype.
        param_names: the trainable parameters (every other entry is a buffer: zero).
        axes: filter axis of each parameter with ≥ 2 dimensions (see :func:`filter_axes`).
        generator: the random source (a ``torch.Generator`` on the reference's device).
        include_bn_and_bias: also perturb parameters with ≤ 1 dimension (biases, BatchNorm).
    """
    params = set(param_names)
    out: StateDict = {}
    for name, ref in reference.items():
        if name not in params or not ref.is_floating_point():
            out[name] = torch.zeros_like(ref)
            continue
        if ref.dim() <= 1 and not include_bn_and_bias:
            out[name] = torch.zeros_like(ref)
            continue
        g = torch.randn(ref.shape, generator=generator, device=ref.device, dtype=ref.dtype)
        axis = axes.get(name, 0) if ref.dim() >= 2 else None
        out[name] = normalize_filters(g, ref, axis)
    return out


def dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], names: Iterable[str]) -> float:
    """⟨a, b⟩ over the named entries, accumulated in float64."""

    def term(n: str) -> torch.Tensor:
        x = a[n].double()
        y = x if b[n] is a[n] else b[n].double()  # a self product converts once (same arithmetic)
        return (x * y).sum()

    return float(sum(term(n) for n in names)) if names else 0.0


def orthogonalize(second: Mapping[str, torch.Tensor], first: Mapping[str, torch.Tensor], names: Iterable[str]) -> StateDict:
    """One Gram–Schmidt step: ``second`` minus its projection on ``first``, rescaled to ‖second‖.

    Entries outside ``names`` are copied unchanged. If ``first`` is zero, ``second`` is returned
    as is; if ``second`` lies on ``first``'s line, the result is zero.
    """
    names = list(names)
    f2 = dot(first, first, names)
    out = dict(second)
    if f2 == 0.0:
        return out
    c = dot(second, first, names) / f2
    before = math.sqrt(max(dot(second, second, names), 0.0))
    for n in names:
        out[n] = second[n] - c * first[n]
    after = math.sqrt(max(dot(out, out, names), 0.0))
    if after > 0.0 and before > 0.0:
        for n in names:
            out[n] = out[n] * (before / after)
    return out


def random_directions(
    model: nn.Module,
    reference: Mapping[str, torch.Tensor],
    count: int,
    *,
    seed: int = 0,
    include_bn_and_bias: bool = False,
    orthogonal: bool = True,
) -> list[StateDict]:
    """``count`` filter-normalised directions, the second orthogonalised against the first.

    Args:
        model: the architecture (read for its parameter names and layer types; never modified).
        reference: the weights at the centre of the slice (θT or θ0) on the evaluation device and
            dtype; the directions are built there.
        count: how many directions (1 or 2 for a surface; any number for roughness slices).
        seed: seed of a fresh ``torch.Generator`` on the reference's device.
        include_bn_and_bias: also perturb biases and BatchNorm parameters.
        orthogonal: for ``count == 2``, make the second orthogonal to the first (after
            normalisation). Ignored otherwise.

    Returns:
        A list of state dicts, keyed like ``reference``; buffers and excluded entries are zero.
    """
    first = next(iter(reference.values()))
    gen = torch.Generator(device=first.device)
    gen.manual_seed(int(seed))
    names = [n for n, _ in model.named_parameters()]
    axes = filter_axes(model)
    dirs = [random_direction(reference, names, axes, gen, include_bn_and_bias=include_bn_and_bias) for _ in range(count)]
    if count == 2 and orthogonal:
        dirs[1] = orthogonalize(dirs[1], dirs[0], [n for n in names if n in reference])
    return dirs


def _fixed_sign(v: torch.Tensor) -> torch.Tensor:
    """``v`` or ``−v``: the one whose entry of largest magnitude (the first such) is positive."""
    i = int(torch.argmax(v.abs()))
    return -v if float(v[i]) < 0 else v


def hessian_directions(
    shell: nn.Module,
    center: Mapping[str, torch.Tensor],
    param_names: Iterable[str],
    buffers: Mapping[str, torch.Tensor],
    data,
    count: int,
    *,
    seed: int = 0,
    tol: float = 1e-6,
    batch_size: int | None = None,
):
    """The ``count`` top Hessian eigenvectors at ``center`` as unit directions (module docstring).

    Args:
        shell: the model, used as a function (``functional_call``) in its current mode (eval).
        center: the point's state dict (parameters and buffers) on the evaluation device/dtype.
        param_names: the trainable parameters (the Hessian's variables).
        buffers: the entries held fixed while differentiating (BatchNorm statistics, counters).
        data: the training data, on the centre's device and dtype.
        count: how many eigenvectors (1 or 2 for a surface).
        seed: seed of the Lanczos start vector.
        tol: relative residual ‖Hv − λv‖ ≤ tol·|λ| asked of every pair.
        batch_size: examples per Hessian-vector product (None: all); the products do not depend on it.

    Returns:
        (directions, eigenpairs): the directions as state dicts keyed like ``center`` (buffers and
        integer entries zero), and the :class:`~mli_theory.curvature.spectrum.Eigenpairs` (their
        ``vectors`` are the signed unit directions, flat in the Hessian's layout).
    """
    from dataclasses import replace

    from ..curvature.hvp import loss_hessian_at
    from ..curvature.spectrum import extreme_eigenpairs

    names = [n for n in param_names if n in center]
    op = loss_hessian_at(shell, {n: center[n] for n in names}, dict(buffers), data, batch_size=batch_size)
    pairs = extreme_eigenpairs(op, count, "LA", tol=tol, seed=seed)
    if pairs.vectors is None or pairs.vectors.shape[0] < count:
        raise RuntimeError(f"the Lanczos solver returned {0 if pairs.vectors is None else pairs.vectors.shape[0]} of {count} eigenvectors")
    flat = []
    for v in pairs.vectors[:count]:
        v = v.double()
        v = _fixed_sign(v / v.norm())
        flat.append(v.to(op.dtype))
    vectors = torch.stack(flat)
    dirs: list[StateDict] = []
    for v in vectors:
        parts = op.unflatten(v)
        dirs.append({k: (parts[k].reshape(t.shape).clone() if k in parts else torch.zeros_like(t)) for k, t in center.items()})
    return dirs, replace(pairs, vectors=vectors)

