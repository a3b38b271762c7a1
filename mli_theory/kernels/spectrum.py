"""The PL* constant μ = λmin(K) of a tangent kernel (Liu, Zhu and Belkin 2022).

Liu, Zhu and Belkin ("Loss landscapes and optimization in over-parameterized non-linear systems
and neural networks", ACHA 2022) show that if the tangent kernel K(θ) = J(θ)J(θ)ᵀ satisfies
λmin(K(θ)) ≥ μ > 0 on a set, the square loss L = ½‖f − y‖² satisfies the PL* inequality
‖∇L‖² ≥ 2μ·L there. μ(α) along the interpolation path says how well conditioned the kernel is at
θ(α). Since K is positive semi-definite, μ ≥ 0, and μ = 0 whenever n·k exceeds the number of
parameters (then J has more rows than columns).

Two methods:

* ``eigvalsh``: the dense symmetric eigensolver on the assembled kernel (float64), for sides up
  to ``dense_max``;
* ``eigsh``: ARPACK's implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``, ``which="SA"``)
  on a matrix-vector product, which is either a product with an assembled kernel or the
  matrix-free NTK-vector product K v = J(Jᵀ v) (:meth:`mli_theory.kernels.ntk._Rows.matvec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

#: largest kernel side handled by the dense eigensolver by default
DENSE_EIG_MAX = 3000


@dataclass(frozen=True)
class LambdaMin:
    """The smallest eigenvalue of a kernel.

    Attributes:
        value: λmin(K).
        method: ``eigvalsh``, ``eigsh``, or ``rank`` (0 exactly by a rank bound, see
            :mod:`mli_theory.kernels.sequence`).
        residual: ‖Kv − λv‖ for the returned unit eigenvector (``eigsh``; None for ``eigvalsh``,
            which is backward stable to rounding).
        converged: False when ARPACK stopped before its tolerance (the value is then its best Ritz
            value).
    """

    value: float
    method: str
    residual: float | None
    converged: bool


def lambda_min_dense(k: torch.Tensor) -> LambdaMin:
    """λmin of a symmetric matrix by ``torch.linalg.eigvalsh`` in float64."""
    k = k.to(torch.float64)
    return LambdaMin(float(torch.linalg.eigvalsh(0.5 * (k + k.T))[0]), "eigvalsh", None, True)


def lambda_min_operator(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    size: int,
    *,
    device: torch.device | str = "cpu",
    tol: float = 1e-10,
    maxiter: int | None = 200,
    ncv: int | None = None,
    seed: int = 0,
) -> LambdaMin:
    """λmin of a symmetric operator given by ``matvec`` (torch float64 vectors of length ``size``).

    ARPACK ``eigsh(which="SA")`` with relative tolerance ``tol`` on the Ritz value, a Lanczos basis
    of ``ncv`` vectors (default min(size, 48)) and at most ``maxiter`` restarts; the start vector
    is drawn from ``seed`` so the result is reproducible. Sizes below 3 are assembled and solved
    densely.

    Krylov methods find the smallest eigenvalue of an ill-conditioned kernel slowly (the small
    eigenvalues of an NTK cluster near 0 relative to the largest): when ARPACK stops first, the
    best Ritz value is returned with ``converged=False`` and its residual, never silently.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    def mv(v: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(-1)).to(device)
        return matvec(t).detach().to("cpu", torch.float64).numpy()

    if size < 3:
        cols = [torch.from_numpy(mv(e)) for e in np.eye(size)]
        return lambda_min_dense(torch.stack(cols, dim=1))
    op = LinearOperator((size, size), matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(size)
    converged = True
    try:
        vals, vecs = eigsh(op, k=1, which="SA", tol=tol, v0=v0, maxiter=maxiter, ncv=ncv or min(size, 48))
    except ArpackNoConvergence as exc:
        converged = False
        if len(exc.eigenvalues) == 0:
            return LambdaMin(float("nan"), "eigsh", None, False)
        vals, vecs = exc.eigenvalues, exc.eigenvectors
    lam = float(vals[0])
    vec = vecs[:, 0] / np.linalg.norm(vecs[:, 0])
    res = float(np.linalg.norm(mv(vec) - lam * vec))
    return LambdaMin(lam, "eigsh", res, converged)
