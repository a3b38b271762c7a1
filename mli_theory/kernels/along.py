"""The empirical NTK along the straight path θ(α) = (1−α)θ0 + αθT.

At each α of a grid: the kernel distance from the start S(K(0), K(α)), its derivative dS/dα (the
kernel velocity, :func:`mli_theory.kernels.distance.path_velocity`), the distance between
neighbouring kernels S(K(α_{i−1}), K(α_i)) and the PL* constant μ(α) = λmin(K(α)).

BatchNorm (the model is always evaluated in eval mode, so each example's outputs depend on that
example alone and the kernel is well defined):

* ``frozen``: running statistics fixed at θT's for every α;
* ``interpolate``: running statistics interpolated like the parameters;
* ``recompute``: at each α the statistics are re-estimated at θ(α) over the training data (one
  no-grad pass in train mode, as the reference implementation of Lucas et al. 2021 does), then held
  fixed while the kernel is computed: the kernel is that of the eval-mode network, whose
  statistics do not depend on the parameters being differentiated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import InputError
from ..path import BNPolicy, Line, recompute_bn_statistics
from ..path.batchnorm import check_recompute_batch_size
from .distance import distance_from_products, path_velocity
from .ntk import DEFAULT_MEMORY, NTKModel, check_kernel, check_recipe
from .sequence import kernel_sequence
from .spectrum import DENSE_EIG_MAX


@dataclass(frozen=True)
class KernelPath:
    """Kernels along the interpolation path (the ``mli-theory kernel --json`` object).

    Attributes:
        alphas: the α grid, increasing.
        kernel_distance_from_init: S(K(0), K(α)) per α (0 at α = 0).
        kernel_velocity: dS/dα per α, second-order finite differences of the previous field on the
            grid (see :mod:`mli_theory.kernels.distance`).
        consecutive_distance: S(K(α_{i−1}), K(α_i)) for i ≥ 1 (length K−1).
        pl_lambda_min: μ(α) = λmin(K(α)) per α (None where not computed).
        pl_method: how each λmin was computed (``eigvalsh``, ``eigsh``, or ``rank`` when the kernel's
            side exceeds its rank bound and λmin = 0 exactly).
        kernel_norm: ‖K(α)‖_F per α.
        kernel: ``full`` or ``logit_trace``.
        recipe: ``jacobian`` or ``ntk_vp`` (the one used).
        mode: ``dense`` (whole kernels assembled) or ``streamed`` (row blocks only).
        n_examples: n, the examples the kernel is computed on.
        n_outputs: k, outputs per example.
        n_parameters: P, trainable parameters.
        bn: the BatchNorm policy, None for models without BatchNorm.
        warnings: things the user should know (subsampling, singular kernels, …).
    """

    alphas: tuple[float, ...]
    kernel_distance_from_init: tuple[float, ...]
    kernel_velocity: tuple[float, ...]
    consecutive_distance: tuple[float, ...]
    pl_lambda_min: tuple[float | None, ...]
    pl_method: tuple[str | None, ...]
    kernel_norm: tuple[float, ...]
    kernel: str
    recipe: str
    mode: str
    n_examples: int
    n_outputs: int
    n_parameters: int
    bn: str | None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes null)."""
        return _json_safe(asdict(self))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def sequence_warnings(n: int, k: int, p: int, kernel: str, sq_norms: Sequence[float]) -> list[str]:
    """Warnings shared by path and checkpoint results."""
    out = []
    rows = n * k if kernel == "full" else n
    if kernel == "full" and rows > p:
        out.append(
            f"n·k = {rows} exceeds the {p} trainable parameters: the full kernel has rank ≤ {p}, so "
            "λmin = 0 exactly (reported as 0 without an eigensolver)"
        )
    if kernel == "logit_trace" and rows > k * p:
        out.append(f"n = {rows} exceeds k·P = {k * p}: the logit-trace kernel is singular, so λmin = 0 exactly")
    if any(not (s > 0) for s in sq_norms):
        out.append("a kernel is zero (no output depends on the parameters there): its distances are undefined (null)")
    return out


def kernel_along_path(
    line: Line,
    x: torch.Tensor,
    alphas: Sequence[float],
    *,
    kernel: str = "full",
    recipe: str = "auto",
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    bn_x: torch.Tensor | None = None,
    batch_size: int | None = None,
    memory_bytes: int = DEFAULT_MEMORY,
    lambda_min: bool = True,
    dense_eig_max: int = DENSE_EIG_MAX,
    progress: Callable[[int, int], None] | None = None,
) -> KernelPath:
    """Kernel distance, velocity and PL* constant of the empirical NTK at each α.

    Args:
        line: the path (:func:`mli_theory.path.make_line`); its device and dtype are used.
        x: the n examples of the kernel (cast to the line's device and dtype).
        alphas: increasing α values (at least 2; the first is the reference "init" kernel, so
            start at 0 for S(K(0), K(α))).
        kernel: ``full`` or ``logit_trace``.
        recipe: ``auto``, ``jacobian`` or ``ntk_vp`` (see :mod:`mli_theory.kernels.ntk`).
        bn: BatchNorm policy (see the module docstring).
        bn_x: the training inputs for ``recompute`` (default ``x``).
        batch_size: examples per pass when BatchNorm statistics are re-estimated.
        memory_bytes: budget for Jacobian and kernel blocks.
        lambda_min: compute μ(α) = λmin(K(α)).
        dense_eig_max: largest kernel side for the dense eigensolver (above: ARPACK).
        progress: called with (done, total).

    Raises:
        InputError: bad options (naming the parameter).
    """
    if not isinstance(x, torch.Tensor):  # streamed inputs: the kernel's n examples (its n² blocks dominate)
        x = x[:]
    check_kernel(kernel)
    check_recipe(recipe)
    alist = [float(a) for a in alphas]
    if len(alist) < 2:
        raise InputError(f"alphas={len(alist)}: need at least 2 α points")
    if any(b <= a for a, b in zip(alist, alist[1:])) or not all(math.isfinite(a) for a in alist):
        raise InputError("alphas must be finite and strictly increasing")
    try:
        policy = BNPolicy(bn)
    except ValueError:
        raise InputError(f"bn={bn!r}: unknown BatchNorm policy (expected recompute, interpolate or frozen)") from None
    x = x.to(device=line.device, dtype=line.dtype)
    recompute = line.has_bn and policy == BNPolicy.RECOMPUTE
    bx = x if bn_x is None else bn_x.to(device=line.device, dtype=line.dtype)
    if recompute:
        check_recompute_batch_size(batch_size)
        if bx.shape[0] < 2:
            raise InputError('bn="recompute" re-estimates BatchNorm statistics and needs at least 2 examples')
    model = NTKModel.from_module(line.shell, shell=line.shell)

    def state(i: int) -> dict[str, torch.Tensor]:
        s = line.at(alist[i], policy)
        return recompute_bn_statistics(line, s, bx, batch_size) if recompute else s

    stats = kernel_sequence(
        model, state, len(alist), x, kernel=kernel, recipe=recipe, memory_bytes=memory_bytes,
        lambda_min=lambda_min, dense_eig_max=dense_eig_max, progress=progress,
    )
    sq0 = stats.sq_norms[0]
    dist = tuple(0.0 if i == 0 and sq0 > 0 else distance_from_products(stats.inner_first[i], sq0, stats.sq_norms[i])
                 for i in range(len(alist)))
    cons = tuple(distance_from_products(stats.inner_prev[i - 1], stats.sq_norms[i - 1], stats.sq_norms[i])
                 for i in range(1, len(alist)))
    plan = stats.plan
    warns = sequence_warnings(plan.n, plan.k, plan.p, kernel, stats.sq_norms)
    unconverged = [alist[i] for i, lm in enumerate(stats.lambda_min) if lm is not None and not lm.converged]
    if unconverged:
        warns.append(f"λmin did not converge to tolerance at α = {', '.join(f'{a:.3g}' for a in unconverged[:5])}")
    return KernelPath(
        alphas=tuple(alist),
        kernel_distance_from_init=dist,
        kernel_velocity=path_velocity(alist, dist),
        consecutive_distance=cons,
        pl_lambda_min=tuple(None if lm is None else lm.value for lm in stats.lambda_min),
        pl_method=tuple(None if lm is None else lm.method for lm in stats.lambda_min),
        kernel_norm=tuple(math.sqrt(max(s, 0.0)) for s in stats.sq_norms),
        kernel=kernel,
        recipe=plan.recipe,
        mode=stats.mode,
        n_examples=plan.n,
        n_outputs=plan.k,
        n_parameters=plan.p,
        bn=policy.value if line.has_bn else None,
        warnings=tuple(warns),
    )
