"""Per-layer curvature: extreme eigenvalues of the diagonal blocks of a curvature matrix at θ(α).

For a set b of coordinates (one parameter tensor, or all parameters of one module) with the
coordinate embedding P_b (n × |b|, columns of the identity), the block of M restricted to b is

    M_bb = P_bᵀ M P_b,

so a product M_bb·u is computed as: embed u into a zero vector of the full space, apply M (one
Hessian-vector product, or a GGN/Fisher product), keep the entries of b. Its extreme eigenvalues
come from :func:`~mli_theory.curvature.spectrum.extreme_eigenpairs` (block Lanczos, ARPACK, or
dense for small blocks). By Cauchy's interlacing theorem λ_min(M) ≤ λ_i(M_bb) ≤ λ_max(M): a block's
top eigenvalue is a lower bound on the whole matrix's, and the per-layer spectra show where along
the network the sharpness lives (as in the layer-wise Hessian analyses of Sagun et al. 2017 and
Papyan 2020). When the full operator is small (n ≤ ``dense_below``) it is formed once and the
blocks are read off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError
from ..inputs.data import Dataset
from ..path import BNPolicy, Line
from ..results import json_safe
from .hvp import MatrixOperator
from .operators import curvature_operator
from .spectrum import Eigenpairs, SymmetricOperator, extreme_eigenpairs, validate_eigen_options

GROUPS: tuple[str, ...] = ("parameter", "module")


@dataclass(frozen=True)
class BlockOperator:
    """M_bb = P_bᵀ M P_b: the operator ``base`` restricted to the coordinates ``index``."""

    base: SymmetricOperator = field(repr=False)
    index: torch.Tensor = field(repr=False)
    name: str = ""

    @property
    def size(self) -> int:
        return int(self.index.numel())

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v.reshape(1, -1)).reshape(-1)

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        vs = vs.to(device=self.device, dtype=self.dtype)
        if vs.dim() != 2 or vs.shape[1] != self.size:
            raise InputError(f"vectors of shape {tuple(vs.shape)} do not fit a block of size {self.size}")
        full = torch.zeros(vs.shape[0], self.base.size, dtype=self.dtype, device=self.device)
        full[:, self.index] = vs
        return self.base.matmat(full)[:, self.index]

    def dense(self) -> torch.Tensor:
        return self.matmat(torch.eye(self.size, dtype=self.dtype, device=self.device))


def parameter_blocks(
    names: tuple[str, ...], shapes: tuple[tuple[int, ...], ...], group: str = "parameter"
) -> list[tuple[str, tuple[str, ...], torch.Tensor]]:
    """The coordinate blocks of the flat layout: (label, parameter names, indices) per parameter
    tensor (``group="parameter"``) or per module owning parameters (``"module"``: the name before the
    last dot; ``<root>`` for parameters of the top module), in layout order.

    >>> [(b[0], b[1], b[2].tolist()) for b in parameter_blocks(("0.weight", "0.bias", "1.weight"), ((1, 2), (1,), (1, 1)), "module")]
    [('0', ('0.weight', '0.bias'), [0, 1, 2]), ('1', ('1.weight',), [3])]
    """
    if group not in GROUPS:
        raise InputError(f"group={group!r}: expected one of {', '.join(GROUPS)}")
    spans: dict[str, tuple[list[str], list[int]]] = {}
    start = 0
    for name, shape in zip(names, shapes):
        n = math.prod(shape)
        label = name if group == "parameter" else (name.rpartition(".")[0] or "<root>")
        members, idx = spans.setdefault(label, ([], []))
        members.append(name)
        idx.extend(range(start, start + n))
        start += n
    return [(label, tuple(m), torch.tensor(i, dtype=torch.long)) for label, (m, i) in spans.items()]


@dataclass(frozen=True)
class LayerSpectrum:
    """Extreme eigenvalues of one diagonal block.

    Attributes:
        name: the block's label (a parameter name, or a module name).
        parameters: the parameter tensors in the block.
        size: its number of coordinates.
        eigenpairs: min(top_k, size) eigenpairs of the block at the requested end (vectors in the
            block's coordinates).
    """

    name: str
    parameters: tuple[str, ...]
    size: int
    eigenpairs: Eigenpairs

    @property
    def eigenvalues(self) -> tuple[float, ...]:
        return self.eigenpairs.eigenvalues


@dataclass(frozen=True)
class LayerSpectra:
    """Per-block extreme eigenvalues of a curvature matrix at one α.

    Attributes:
        alpha: α (None when computed from a bare operator).
        matrix: ``hessian``, ``ggn``, ``fisher_mc``, ``empirical_fisher`` or ``kfac``.
        which: ``LA``, ``SA`` or ``LM``.
        top_k: eigenvalues asked per block (blocks smaller than this report all of theirs).
        tol: relative residual bound.
        group: ``parameter`` or ``module``.
        blocks: one :class:`LayerSpectrum` per block, in layout order.
        n_parameters: size of the full matrix.
        warnings: blocks whose eigenvalues did not converge, one sentence each.
        info: run facts (products, seconds, whether the full matrix was formed).
    """

    alpha: float | None
    matrix: str
    which: str
    top_k: int
    tol: float
    group: str
    blocks: tuple[LayerSpectrum, ...]
    n_parameters: int
    warnings: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def eigenvalues(self) -> dict[str, list[float]]:
        return {b.name: list(b.eigenvalues) for b in self.blocks}

    def to_dict(self) -> dict[str, Any]:
        """A JSON object: per block its name, parameters, size, eigenvalues, residuals, convergence."""
        return json_safe({
            "alpha": self.alpha, "matrix": self.matrix, "which": self.which, "top_k": self.top_k,
            "eigen_tol": self.tol, "group": self.group, "n_parameters": self.n_parameters,
            "blocks": [
                {"name": b.name, "parameters": list(b.parameters), "size": b.size,
                 "eigenvalues": list(b.eigenpairs.eigenvalues), "residuals": list(b.eigenpairs.residuals),
                 "converged": b.eigenpairs.converged, "method": b.eigenpairs.method}
                for b in self.blocks
            ],
            "warnings": list(self.warnings), "info": dict(self.info),
        })

    def to_text(self) -> str:
        end = {"LA": "largest", "SA": "smallest", "LM": "largest-magnitude"}[self.which]
        head = f"{self.matrix} blocks per {self.group}" + (f" at alpha={self.alpha:g}" if self.alpha is not None else "")
        lines = [f"{head}: {end} {self.top_k} eigenvalue(s), relative residual tol {self.tol:g}"]
        width = max([len(b.name) for b in self.blocks] + [5])
        for b in self.blocks:
            lines.append(f"  {b.name:<{width}}  {b.size:>8}  " + ", ".join(f"{v:.6g}" for v in b.eigenvalues))
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def operator_layer_spectra(
    op: SymmetricOperator,
    *,
    top_k: int = 1,
    which: str = "LA",
    group: str = "parameter",
    tol: float = 1e-3,
    seed: int = 0,
    dense_below: int = 128,
    matrix: str | None = None,
) -> LayerSpectra:
    """Per-block extreme eigenvalues of an operator with a parameter layout (``names``/``shapes``
    attributes, as :class:`~mli_theory.curvature.hvp.LossHessian` and
    :class:`~mli_theory.curvature.operators.CurvatureOperator` have)."""
    import time

    validate_eigen_options(top_k, which, tol)
    names, shapes = getattr(op, "names", None), getattr(op, "shapes", None)
    if names is None or shapes is None:
        raise InputError("per-layer spectra need an operator with a parameter layout (names and shapes)")
    blocks = parameter_blocks(tuple(names), tuple(tuple(s) for s in shapes), group)
    t0 = time.perf_counter()
    full = None
    products = 0
    if op.size <= dense_below:
        eye = torch.eye(op.size, dtype=op.dtype, device=op.device)
        full = torch.cat([op.matmat(eye[i : i + 64]) for i in range(0, op.size, 64)], 0)
        full = 0.5 * (full + full.T)
        products += op.size
    out, warnings = [], []
    for i, (label, members, idx) in enumerate(blocks):
        idx = idx.to(op.device)
        work: Any = MatrixOperator(full[idx][:, idx]) if full is not None else BlockOperator(op, idx, label)
        k = min(top_k, int(idx.numel()))
        pairs = extreme_eigenpairs(work, k, which, tol=tol, seed=seed * 1_000_003 + i, dense_below=dense_below)  # type: ignore[arg-type]
        if full is None:
            products += pairs.n_matvecs
        if not pairs.converged:
            warnings.append(f"{label}: the {which} eigenvalues did not reach relative residual {tol:g}")
        out.append(LayerSpectrum(label, members, int(idx.numel()), pairs))
    info = {"products": products, "formed_full_matrix": full is not None, "seconds": round(time.perf_counter() - t0, 4)}
    return LayerSpectra(
        getattr(op, "alpha", None), matrix or getattr(op, "matrix", "hessian"), which, top_k, float(tol), group,
        tuple(out), op.size, tuple(warnings), info,
    )


def layer_spectra(
    line: Line,
    data: Dataset,
    alpha: float,
    *,
    top_k: int = 1,
    which: str = "LA",
    group: str = "parameter",
    matrix: str = "hessian",
    tol: float = 1e-3,
    seed: int = 0,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    dense_below: int = 128,
    mc_samples: int = 1,
    fisher_type: str = "type-2",
    engine: str = "auto",
) -> LayerSpectra:
    """Top-k (``which``) eigenvalues of each diagonal block of ``matrix`` at θ(α), one block per
    parameter tensor (``group="parameter"``) or per module (``"module"``).

    ``matrix``, ``bn``, ``batch_size``, ``mc_samples``, ``fisher_type``, ``engine`` as for
    :func:`~mli_theory.curvature.operators.curvature_operator` (``seed`` seeds both the Lanczos
    start vectors and any Monte-Carlo draws); ``tol`` and ``dense_below`` as for
    :func:`~mli_theory.curvature.spectrum.extreme_eigenpairs`.
    """
    validate_eigen_options(top_k, which, tol)
    if group not in GROUPS:
        raise InputError(f"group={group!r}: expected one of {', '.join(GROUPS)}")
    op = curvature_operator(
        line, data, alpha, matrix, bn=bn, batch_size=batch_size, mc_samples=mc_samples, seed=seed,
        fisher_type=fisher_type, engine=engine,
    )
    return operator_layer_spectra(op, top_k=top_k, which=which, group=group, tol=tol, seed=seed, dense_below=dense_below, matrix=matrix)
