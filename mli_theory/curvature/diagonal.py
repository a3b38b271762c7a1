"""Diagonals of curvature matrices at θ(α): exact, or by Hutchinson's estimator with standard errors.

* Exact, for any symmetric operator M: diag(M) from products with the unit vectors, in blocks of
  ``block`` (one vmapped pass per block for the Hessian, :meth:`~mli_theory.curvature.hvp.LossHessian.matmat`):
  n products in all, so for small and medium models.
* Hutchinson's diagonal estimator (Bekas, Kokiopoulou & Saad 2007, "An estimator for the diagonal of
  a matrix", Appl. Numer. Math. 57; after Hutchinson 1989): for Rademacher vectors v (E[vvᵀ] = I),

      d̂ = (1/m) Σ_j v_j ⊙ (M v_j),     E[d̂_p] = M_pp,     Var[v_p (Mv)_p] = Σ_{q≠p} M_pq²,

  with the per-entry standard error estimated from the m samples, s_p/√m (s_p their sample standard
  deviation). An entry is off by more than 3 standard errors rarely (the samples are independent;
  for m ≳ 30 the mean is close to normal). curvlinops' ``hutchinson_diag`` computes the same mean
  with torch's global random state and no error estimate; this one is seeded and reports it.
* The GGN's diagonal exactly and cheaply (no n products): diag G = (1/N) Σ_i Σ_{a,b} (H_i)_ab J_ia ⊙ J_ib
  with the per-example Jacobians J_i = ∂z_i/∂θ (``torch.func.vmap`` of ``jacrev``, memory
  batch·k·n) and H_i = ∂²ℓ_i/∂z² (Martens 2020 §8 for G; the same diagonal that BackPACK's
  ``DiagGGNExact`` computes, Dangel, Kunstner & Hennig 2020).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, hessian, jacrev, vmap

from ..errors import InputError
from ..inputs.data import Dataset
from ..path import BNPolicy, Line, batches, data_on_line, loss_normaliser
from ..results import json_safe
from .hvp import ENGINES, loss_hessian
from .operators import _point, unflatten, validate_operator_options
from .spectrum import SymmetricOperator

DIAGONAL_METHODS: tuple[str, ...] = ("auto", "exact", "hutchinson")


@dataclass(frozen=True)
class CurvatureDiagonal:
    """The diagonal of a curvature matrix at one point.

    Attributes:
        values: the diagonal (exact, or the Hutchinson mean), flat in
            :class:`~mli_theory.curvature.hvp.LossHessian`'s layout, float64 on the operator's device.
        standard_error: per-entry standard error of a Hutchinson estimate (None when exact).
        exact: whether ``values`` is exact (up to rounding).
        method: ``unit_vectors`` (exact, n products), ``per_example_jacobian`` (exact GGN) or ``hutchinson``.
        matrix: ``hessian``, ``ggn`` or the operator's kind.
        names: parameter names of the layout.
        shapes: their shapes.
        n_matvecs: products with the operator spent.
        n_samples: Hutchinson vectors (0 when exact).
        alpha: the α of the point (None when unknown).
        seed: seed of the random vectors (None when exact).
    """

    values: torch.Tensor = field(repr=False)
    standard_error: torch.Tensor | None = field(repr=False)
    exact: bool
    method: str
    matrix: str
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    n_matvecs: int
    n_samples: int
    alpha: float | None = None
    seed: int | None = None

    @property
    def size(self) -> int:
        return int(self.values.numel())

    @property
    def trace(self) -> float:
        """The sum of the diagonal (tr M, exact or estimated)."""
        return float(self.values.sum())

    def per_parameter(self) -> dict[str, torch.Tensor]:
        """The diagonal as a dict of parameter-shaped tensors."""
        return unflatten(self.values, self.names, self.shapes)

    def per_parameter_error(self) -> dict[str, torch.Tensor] | None:
        """The standard errors as a dict of parameter-shaped tensors (None when exact)."""
        return None if self.standard_error is None else unflatten(self.standard_error, self.names, self.shapes)

    def summary(self) -> list[dict[str, Any]]:
        """Per parameter tensor: size, sum, mean, min, max of its diagonal entries, and (Hutchinson)
        the standard error of the sum, √Σ se² (the per-entry estimates share vectors and are
        correlated, so this is indicative), and the largest per-entry standard error."""
        out = []
        errors = self.per_parameter_error()
        for name, d in self.per_parameter().items():
            row: dict[str, Any] = {
                "name": name, "size": int(d.numel()), "sum": float(d.sum()), "mean": float(d.mean()),
                "min": float(d.min()), "max": float(d.max()),
            }
            if errors is not None:
                row["max_standard_error"] = float(errors[name].max())
            out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON object: the facts, the per-parameter summary, and the flat values (and errors)."""
        return json_safe({
            "matrix": self.matrix, "alpha": self.alpha, "method": self.method, "exact": self.exact,
            "n_parameters": self.size, "n_matvecs": self.n_matvecs, "n_samples": self.n_samples, "seed": self.seed,
            "trace": self.trace, "parameters": self.summary(), "values": self.values.double().cpu().tolist(),
            "standard_error": None if self.standard_error is None else self.standard_error.double().cpu().tolist(),
        })


def _layout(op: SymmetricOperator) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    names = getattr(op, "names", None)
    shapes = getattr(op, "shapes", None)
    if names is None or shapes is None:
        return ("x",), ((op.size,),)
    return tuple(names), tuple(tuple(s) for s in shapes)


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name}={value!r}: must be a positive integer")


def operator_diagonal(
    op: SymmetricOperator,
    *,
    method: str = "auto",
    n_samples: int = 200,
    seed: int = 0,
    block: int = 32,
    exact_below: int = 2048,
    matrix: str | None = None,
) -> CurvatureDiagonal:
    """diag(M) of a symmetric operator, exactly or by Hutchinson's estimator (see the module doc).

    Args:
        op: the operator (:class:`~mli_theory.curvature.hvp.LossHessian`,
            :class:`~mli_theory.curvature.operators.CurvatureOperator`, any ``SymmetricOperator``).
        method: ``exact`` (n products), ``hutchinson`` (``n_samples`` products), or ``auto``
            (exact when n ≤ max(``exact_below``, ``n_samples``)).
        n_samples: Hutchinson vectors (≥ 2).
        seed: seed of the Rademacher vectors.
        block: vectors per block product.
        exact_below: the ``auto`` threshold.
        matrix: label of the result (default: the operator's ``matrix`` attribute, else ``hessian``).
    """
    if method not in DIAGONAL_METHODS:
        raise InputError(f"method={method!r}: expected one of {', '.join(DIAGONAL_METHODS)}")
    _check_positive("block", block)
    _check_positive("exact_below", exact_below)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise InputError(f"n_samples={n_samples!r}: need an integer of at least 2")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed={seed!r}: must be a non-negative integer")
    n = op.size
    names, shapes = _layout(op)
    label = matrix or getattr(op, "matrix", "hessian")
    alpha = getattr(op, "alpha", None)
    exact = method == "exact" or (method == "auto" and n <= max(exact_below, n_samples))
    if exact:
        eye = torch.eye(n, dtype=op.dtype, device=op.device)
        parts = []
        for i in range(0, n, block):
            rows = op.matmat(eye[i : i + block])  # (b, n): row j is M e_{i+j}
            parts.append(torch.diagonal(rows[:, i : i + block]).double())
        return CurvatureDiagonal(torch.cat(parts), None, True, "unit_vectors", label, names, shapes, n, 0, alpha, None)
    rng = np.random.default_rng(seed)
    count = 0
    mean = torch.zeros(n, dtype=torch.float64, device=op.device)
    m2 = torch.zeros(n, dtype=torch.float64, device=op.device)
    while count < n_samples:
        b = min(block, n_samples - count)
        v = torch.as_tensor(rng.integers(0, 2, size=(b, n)) * 2.0 - 1.0, dtype=op.dtype, device=op.device)
        s = (v * op.matmat(v)).double()  # (b, n) samples of v ⊙ Mv
        bm = s.mean(0)
        bm2 = ((s - bm) ** 2).sum(0)
        total = count + b  # Chan et al.'s pairwise update of the mean and the sum of squared deviations
        delta = bm - mean
        mean = mean + delta * (b / total)
        m2 = m2 + bm2 + delta**2 * (count * b / total)
        count = total
    se = torch.sqrt(m2 / (count - 1) / count)
    return CurvatureDiagonal(mean, se, False, "hutchinson", label, names, shapes, count, count, alpha, seed)


def hessian_diagonal(
    line: Line,
    data: Dataset,
    alpha: float,
    *,
    method: str = "auto",
    n_samples: int = 200,
    seed: int = 0,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    block: int = 32,
    exact_below: int = 2048,
    engine: str = "auto",
) -> CurvatureDiagonal:
    """diag H(α) of the mean training loss's Hessian at θ(α), exact (n Hessian-vector products,
    ``block`` per vmapped pass) or by Hutchinson with standard errors (:func:`operator_diagonal`).

    ``bn``, ``batch_size`` and ``engine`` as for :func:`~mli_theory.curvature.hvp.loss_hessian`.
    """
    bn = validate_operator_options(matrix="hessian", bn=bn, batch_size=batch_size)
    if engine not in ENGINES:
        raise InputError(f"engine={engine!r}: expected one of {', '.join(ENGINES)}")
    data = data_on_line(line, data, bn, batch_size)
    op = loss_hessian(line, data, float(alpha), bn=bn, batch_size=batch_size, engine=engine)
    return operator_diagonal(op, method=method, n_samples=n_samples, seed=seed, block=block, exact_below=exact_below, matrix="hessian")


def _output_hessians(z: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """∂²ℓ_i/∂z_i² per example, (B, k, k), for the summed loss of each example."""
    if loss == "mse":
        k = z.shape[1]
        return 2 * torch.eye(k, dtype=z.dtype, device=z.device).expand(z.shape[0], k, k)
    from torch.nn import functional as F

    def one(zi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(zi[None], yi[None], reduction="sum")

    return vmap(hessian(one))(z, y)


def ggn_diagonal(
    line: Line,
    data: Dataset,
    alpha: float,
    *,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
) -> CurvatureDiagonal:
    """diag G(α) of the generalised Gauss–Newton matrix at θ(α), exactly, from per-example Jacobians
    (memory: batch·k·n; choose ``batch_size`` to bound it). Needs no curvlinops.

    ``bn`` and ``batch_size`` as for :func:`~mli_theory.curvature.hvp.loss_hessian`.
    """
    bn = validate_operator_options(matrix="ggn", bn=bn, batch_size=batch_size)
    data = data_on_line(line, data, bn, batch_size)
    params, fixed = _point(line, data, float(alpha), bn, batch_size)
    names = tuple(line.param_names)
    shapes = tuple(tuple(params[k].shape) for k in names)
    shell = line.shell

    def out_one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(shell, {**fixed, **p}, (x[None],)).reshape(-1)

    jac = vmap(jacrev(out_one), in_dims=(None, 0))
    total = torch.zeros(sum(math.prod(s) for s in shapes), dtype=torch.float64, device=line.device)
    with torch.enable_grad():
        for sl in batches(data.n, batch_size):
            x, y = data.x[sl], data.y[sl]
            j = jac(params, x)  # name -> (B, k, *shape)
            jf = torch.cat([j[k].reshape(j[k].shape[0], j[k].shape[1], -1) for k in names], dim=-1).double()
            z = vmap(out_one, in_dims=(None, 0))(params, x).double()
            h = _output_hessians(z, y.double() if data.loss == "mse" else y, data.loss)
            total += torch.einsum("bap,bac,bcp->p", jf, h, jf)
    total = total / loss_normaliser(data)
    return CurvatureDiagonal(total, None, True, "per_example_jacobian", "ggn", names, shapes, 0, 0, float(alpha), None)
