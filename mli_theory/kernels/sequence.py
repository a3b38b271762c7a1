"""Frobenius products and λmin for a sequence of kernels K_0, K_1, …, K_{M−1} of one model.

Both users of this module (kernels along the interpolation path, and kernels of training
checkpoints) need, for each i, ‖K_i‖²_F, ⟨K_0, K_i⟩_F, ⟨K_{i−1}, K_i⟩_F and λmin(K_i). Two modes:

* ``dense``: when three kernels fit the memory budget, each K_i is assembled once (from row
  blocks) while K_0 and K_{i−1} are kept: the products are exact sums over dense float64 matrices,
  λmin is taken from the assembled kernel;
* ``streamed``: otherwise the products are accumulated over row blocks of examples,
  ⟨K_i, K_j⟩_F = Σ_blocks Σ_{rows in block} ⟨K_i[rows, :], K_j[rows, :]⟩, holding at most three row
  blocks (and, per block, one block of Jacobian rows); λmin then uses the matrix-free
  NTK-vector product unless one kernel fits the budget on its own.

λmin is exactly 0, and reported as 0.0 with method ``rank`` without an eigensolver, when the
kernel's side exceeds its rank bound: rank(J Jᵀ) ≤ P for the full kernel (n·k > P), and
rank ≤ k·P for the logit trace (a sum of k Gram matrices of rank ≤ P each).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .ntk import DEFAULT_MEMORY, NTKModel, Plan, _blocks, kernel_rows, make_plan
from .spectrum import DENSE_EIG_MAX, LambdaMin, lambda_min_dense, lambda_min_operator

State = Mapping[str, torch.Tensor]

#: λmin of a kernel whose side exceeds its rank bound: exactly zero, no eigensolver needed
RANK_ZERO = LambdaMin(0.0, "rank", None, True)


@dataclass(frozen=True)
class SequenceStats:
    """Products and spectra of a sequence of kernels.

    Attributes:
        sq_norms: ‖K_i‖²_F.
        inner_first: ⟨K_0, K_i⟩_F (so ``inner_first[0] == sq_norms[0]``).
        inner_prev: ⟨K_{i−1}, K_i⟩_F for i = 1 … M−1 (length M−1).
        lambda_min: λmin(K_i) with its method (None when not asked for).
        mode: ``dense`` or ``streamed`` (see the module docstring).
        plan: the recipe and blocking used.
    """

    sq_norms: tuple[float, ...]
    inner_first: tuple[float, ...]
    inner_prev: tuple[float, ...]
    lambda_min: tuple[LambdaMin | None, ...]
    mode: str
    plan: Plan


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum())


def kernel_sequence(
    model: NTKModel,
    get_state: Callable[[int], State],
    count: int,
    x: torch.Tensor,
    *,
    kernel: str = "full",
    recipe: str = "auto",
    memory_bytes: int = DEFAULT_MEMORY,
    lambda_min: bool = True,
    dense_eig_max: int = DENSE_EIG_MAX,
    force_streamed: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SequenceStats:
    """Products ⟨K_0, K_i⟩, ⟨K_{i−1}, K_i⟩, ‖K_i‖² and λmin(K_i) for the states ``get_state(i)``.

    Args:
        model: the network as a function of its trainable parameters.
        get_state: i ↦ the full state (parameters and buffers) of kernel i, on x's device/dtype.
            Called once per i.
        count: M ≥ 1.
        x: the kernel's examples.
        kernel, recipe, memory_bytes: as for :func:`mli_theory.kernels.empirical_ntk`.
        lambda_min: also compute λmin(K_i).
        dense_eig_max: largest kernel side for the dense eigensolver.
        force_streamed: use the streamed mode even when the dense one fits (for tests).
        progress: called with (done, total).
    """
    first_state = get_state(0)
    plan = make_plan(model, first_state, x, kernel=kernel, recipe=recipe, memory_bytes=memory_bytes, rows_held=3)
    size = plan.size
    dense = 3 * size * size * 8 <= memory_bytes and not force_streamed
    tol = 1e-10 if x.dtype == torch.float64 else 1e-5
    # rank(K) ≤ P (full: K = J Jᵀ with J of P columns); ≤ k·P (logit trace: [J_1 … J_k][J_1 … J_k]ᵀ)
    singular = size > (plan.p if kernel == "full" else plan.k * plan.p)
    sq = [0.0] * count
    first = [0.0] * count
    prev = [0.0] * max(count - 1, 0)
    lams: list[LambdaMin | None] = [None] * count

    if dense:
        k0 = kp = None
        for i in range(count):
            ki = kernel_rows(model, first_state if i == 0 else get_state(i), x, plan).full()
            sq[i] = _dot(ki, ki)
            if i == 0:
                k0 = ki
                first[0] = sq[0]
            else:
                assert k0 is not None and kp is not None
                first[i] = _dot(k0, ki)
                prev[i - 1] = _dot(kp, ki)
            if lambda_min:
                if singular:
                    lams[i] = RANK_ZERO
                elif size <= dense_eig_max:
                    lams[i] = lambda_min_dense(ki)
                else:
                    lams[i] = lambda_min_operator(lambda v, m=ki: m @ v, size, device=ki.device, tol=1e-10, maxiter=1000)
            kp = ki
            if progress is not None:
                progress(i + 1, count)
        return SequenceStats(tuple(sq), tuple(first), tuple(prev), tuple(lams), "dense", plan)

    states = [first_state] + [get_state(i) for i in range(1, count)]
    if plan.cache_jacobian and count * plan.n * plan.k * plan.p * x.element_size() > memory_bytes // 2:
        plan = dataclasses.replace(plan, cache_jacobian=False)
    rows = [kernel_rows(model, s, x, plan) for s in states]
    blocks = _blocks(plan.n, plan.row_block)
    steps = len(blocks) + (count if lambda_min else 0)
    done = 0
    for sl in blocks:
        r0 = rows[0].rows(sl)
        rp = r0
        sq[0] += _dot(r0, r0)
        for i in range(1, count):
            ri = rows[i].rows(sl)
            sq[i] += _dot(ri, ri)
            first[i] += _dot(r0, ri)
            prev[i - 1] += _dot(rp, ri)
            rp = ri
        done += 1
        if progress is not None:
            progress(done, steps)
    first[0] = sq[0]
    if lambda_min:
        one_fits = size * size * 8 * 2 <= memory_bytes and size <= dense_eig_max
        for i in range(count):
            if singular:
                lams[i] = RANK_ZERO
            elif one_fits:
                lams[i] = lambda_min_dense(rows[i].full())
            else:
                lams[i] = lambda_min_operator(rows[i].matvec, size, device=x.device, tol=tol)
            done += 1
            if progress is not None:
                progress(done, steps)
    return SequenceStats(tuple(sq), tuple(first), tuple(prev), tuple(lams), "streamed", plan)
