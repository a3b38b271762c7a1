"""Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ).

The spectral density of H (size n, eigenvalues λ_1 … λ_n) is φ(t) = (1/n) Σ_i δ(t − λ_i). For a
unit start vector q, m steps of Lanczos (Lanczos 1950) give a tridiagonal T_m whose eigenvalues
θ_j and squared first eigenvector components τ_j are the nodes and weights of the m-point Gauss
quadrature of the measure μ_q = Σ_i (qᵀu_i)² δ(· − λ_i):  qᵀ f(H) q ≈ Σ_j τ_j f(θ_j)
(Golub & Meurant 1994/2010). For a random q with E[q qᵀ] = I/n (Rademacher entries / √n),
E[μ_q] = φ; averaging over n_v vectors and smoothing each node with a Gaussian of width σ,

    φ_σ(t) = (1/n_v) Σ_v Σ_j τ_{v,j} · exp(−(t − θ_{v,j})²/(2σ²)) / (σ√(2π)),

which integrates to exactly 1 over ℝ because Σ_j τ_{v,j} = ‖q_v‖² = 1 (Ubaru, Chen & Saad 2017,
SIAM J. Matrix Anal. Appl. 38(4); used for neural-network Hessians by Ghorbani, Krishnan & Xiao
2019 and PyHessian, Yao et al. 2020). The grid extends 6σ beyond the extreme nodes, so its
trapezoid integral equals 1 to about 1e-8.

The same quadrature estimates the trace: tr(H) = n·E[qᵀHq] and qᵀHq = Σ_j τ_j θ_j = (T_m)_{11}
exactly, so ``trace`` = n·mean_v Σ_j τ_{v,j} θ_{v,j} is Hutchinson's estimator with n_v vectors.

The n_v Lanczos processes run side by side (one block product per step) with full
reorthogonalisation against their own bases (classical Gram–Schmidt, repeated by the DGKS
criterion; the passes over the stored basis cost about as much as the products on a
1.8M-parameter MLP, so the second pass is made only when needed), stored in the operator's dtype: memory is
n_v·m·n numbers. A process that breaks down (β ≈ 0: an invariant subspace) stops early, its
quadrature then exact. The n_v products of a step are one ``op.matmat`` call (one vmapped pass,
or chunks of the operator's ``block`` through the cached graph of ``double_backward``); the start
vectors are drawn as before (one (n_v, n) Rademacher draw from ``seed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .spectrum import SymmetricOperator


@dataclass(frozen=True)
class SpectralDensity:
    """A smoothed spectral density φ_σ on a grid, and the quadrature behind it.

    Attributes:
        grid: points t, increasing.
        values: φ_σ(t) (trapezoid integral over the grid ≈ 1).
        sigma: the Gaussian width σ.
        nodes: Gauss nodes θ per start vector (n_v tuples).
        weights: their weights τ (each tuple sums to 1).
        trace: n·mean_v Σ_j τ_j θ_j, Hutchinson's trace estimate with the n_v start vectors.
        trace_stderr: its standard error over the start vectors (None for one vector).
        n_vectors: n_v.
        steps: Lanczos steps per vector (fewer for a vector that broke down).
        n_matvecs: products with H spent.
    """

    grid: tuple[float, ...]
    values: tuple[float, ...]
    sigma: float
    nodes: tuple[tuple[float, ...], ...]
    weights: tuple[tuple[float, ...], ...]
    trace: float
    trace_stderr: float | None
    n_vectors: int
    steps: int
    n_matvecs: int

    def integral(self) -> float:
        """The trapezoid integral of ``values`` over ``grid`` (≈ 1)."""
        return float(np.trapezoid(self.values, self.grid))


def lanczos_tridiagonal(
    op: SymmetricOperator, starts: torch.Tensor, steps: int, reorthogonalize: bool = True
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Lanczos coefficients (α_1…α_m, β_1…β_{m−1}) for each row of ``starts`` (normalised here),
    and the number of products spent.

    Recurrence w = Hq_j − β_{j−1} q_{j−1}, α_j = wᵀq_j, w ← w − α_j q_j (Paige's ordering), then, with
    ``reorthogonalize``, full reorthogonalisation against each process's own basis (classical
    Gram–Schmidt, a second pass when the first cancelled more than 1 − 1/√2 of ‖w‖: the DGKS
    criterion of Daniel, Gragg, Kaufman & Stewart 1976, as in ARPACK). Without it only two vectors
    per process are kept (memory n_v·n instead of n_v·m·n): orthogonality is lost as Ritz values
    converge and converged ones reappear as copies, but the Gauss quadrature stays that of a nearby
    measure (Greenbaum 1989), which is what a smoothed density needs (Papyan 2020 and curvlinops
    run SLQ this way).
    """
    nv, n = starts.shape
    steps = min(steps, n)
    dt = op.dtype
    q = starts.to(dtype=torch.float64)
    q = (q / q.norm(dim=1, keepdim=True)).to(dt)
    basis = torch.zeros(nv, steps, n, dtype=dt, device=op.device) if reorthogonalize else None
    q_prev = None
    alphas = np.zeros((nv, steps))
    betas = np.zeros((nv, steps))
    active = np.ones(nv, dtype=bool)
    length = np.full(nv, steps)
    used = 0
    for j in range(steps):
        if basis is not None:
            basis[:, j] = q
        w = op.matmat(q)
        used += nv
        if j > 0:
            w = w - torch.as_tensor(betas[:, j - 1], dtype=dt, device=op.device)[:, None] * q_prev
        a = (w * q).sum(dim=1)
        w = w - a[:, None] * q  # a new tensor: the in-place updates below never touch the operator's output
        alphas[:, j] = a.double().cpu().numpy()
        after = torch.linalg.vector_norm(w, dim=1).double()
        if basis is not None:
            for _ in range(2):
                before = after
                coef = torch.bmm(basis[:, : j + 1], w.unsqueeze(2))  # (n_v, j+1, 1)
                w -= torch.bmm(coef.transpose(1, 2), basis[:, : j + 1]).squeeze(1)
                after = torch.linalg.vector_norm(w, dim=1).double()
                if bool((after >= before / math.sqrt(2)).all()):
                    break
        b = after.cpu().numpy()
        betas[:, j] = b
        scale = np.maximum(np.abs(alphas[:, : j + 1]).max(axis=1), 1e-300)
        broke = active & (b <= 1e3 * torch.finfo(dt).eps * scale)
        length[broke] = j + 1
        active &= ~broke
        if not active.any() or j == steps - 1:
            break
        safe = torch.as_tensor(np.where(b > 0, b, 1.0), dtype=dt, device=op.device)
        q_prev = q
        q = w / safe[:, None]
    return [(alphas[v, : length[v]].copy(), betas[v, : length[v] - 1].copy()) for v in range(nv)], used


def spectral_density(
    op: SymmetricOperator,
    *,
    n_vectors: int = 4,
    steps: int = 40,
    sigma: float | None = None,
    grid_size: int = 512,
    seed: int = 0,
    reorthogonalize: bool = True,
) -> SpectralDensity:
    """φ_σ of ``op`` by stochastic Lanczos quadrature (see the module doc for the normalisation).

    Args:
        op: the symmetric operator.
        n_vectors: random start vectors n_v (Rademacher / √n).
        steps: Lanczos steps m per vector (at most n).
        sigma: Gaussian width (default 1% of the node range, or 1e-3·max(1, |θ|) if all nodes coincide).
        grid_size: points of the grid.
        seed: seed of the start vectors.
        reorthogonalize: full reorthogonalisation (default; memory n_v·m·n numbers); False keeps
            two vectors per process (see :func:`lanczos_tridiagonal`): less memory and time, the
            same smoothed density up to rounding-level differences in the quadrature.
    """
    for name, value, least in (("n_vectors", n_vectors, 1), ("steps", steps, 1), ("grid_size", grid_size, 16)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{name}={value!r}: need an integer of at least {least}")
    if sigma is not None and not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise InputError(f"sigma={sigma!r}: must be a finite number > 0")
    from scipy.linalg import eigh_tridiagonal

    n = op.size
    rng = np.random.default_rng(seed)
    z = torch.as_tensor(rng.integers(0, 2, size=(n_vectors, n)) * 2.0 - 1.0, dtype=op.dtype, device=op.device)
    coeffs, used = lanczos_tridiagonal(op, z, steps, reorthogonalize=bool(reorthogonalize))
    nodes, weights, quad = [], [], []
    for a, b in coeffs:
        theta, u = eigh_tridiagonal(a, b) if len(a) > 1 else (a.copy(), np.ones((1, 1)))
        tau = u[0, :] ** 2
        tau = tau / tau.sum()
        nodes.append(theta)
        weights.append(tau)
        quad.append(float(a[0]))  # qᵀHq = (T)_11 exactly
    allnodes = np.concatenate(nodes)
    lo, hi = float(allnodes.min()), float(allnodes.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 1e-3 * max(1.0, abs(hi))
    grid = np.linspace(lo - 6 * sigma, hi + 6 * sigma, grid_size)
    vals = np.zeros_like(grid)
    for theta, tau in zip(nodes, weights):
        d = (grid[:, None] - theta[None, :]) / sigma
        vals += (np.exp(-0.5 * d * d) * tau[None, :]).sum(axis=1)
    vals /= len(nodes) * sigma * math.sqrt(2 * math.pi)
    est = n * np.asarray(quad)
    stderr = float(est.std(ddof=1) / math.sqrt(len(est))) if len(est) > 1 else None
    return SpectralDensity(
        tuple(float(g) for g in grid), tuple(float(v) for v in vals), float(sigma),
        tuple(tuple(float(t) for t in th) for th in nodes), tuple(tuple(float(t) for t in tw) for tw in weights),
        float(est.mean()), stderr, n_vectors, int(max(len(a) for a, _ in coeffs)), used,
    )
