"""Curvature matrices beyond the Hessian at a point θ(α) of the path: GGN, Fisher, empirical Fisher, K-FAC.

All are matrices over the trainable parameters, for the mean training loss of the toolkit

    L(θ) = (1/N) Σ_i ℓ_i(z_i),    z_i = f(x_i; θ),

with ℓ_i the *summed* loss of example i (``mse``: Σ_c (z_ic − y_ic)², ``ce``: −log softmax(z_i)_{y_i})
and N = n·k for ``mse`` (torch's mean over all entries), N = n for ``ce``. With J_i = ∂z_i/∂θ and
H_i = ∂²ℓ_i/∂z_i² (2·I for ``mse``, diag(p_i) − p_i p_iᵀ for ``ce``, p_i = softmax(z_i)):

* ``ggn``: the generalised Gauss–Newton matrix G = (1/N) Σ_i J_iᵀ H_i J_i, the Hessian with the
  second-order term of the network dropped, H = G + (1/N) Σ_i Σ_c (∂ℓ_i/∂z_ic) ∇²_θ z_ic
  (Schraudolph 2002; Martens 2020, "New insights and perspectives on the natural gradient method",
  JMLR 21, §8–9). It is positive semi-definite because both losses are convex in z.
* ``fisher_mc``: the Fisher information of the model's predictive distribution, whose negative
  log-likelihood is ℓ (a Gaussian N(z, ½·I) for ``mse``, the categorical softmax(z) for ``ce``),
  F = (1/N) Σ_i J_iᵀ E_{ỹ∼p(·|z_i)}[∇_zℓ(z_i, ỹ) ∇_zℓ(z_i, ỹ)ᵀ] J_i. For these two losses (exponential
  families in their natural parameter) F = G exactly (Martens 2020, §9.2); the Monte-Carlo operator
  replaces the expectation by ``mc_samples`` targets drawn per example (seeded: each product uses
  the same draws, so the operator is one fixed, symmetric PSD sample of the estimator; the draws
  depend on the minibatches).
* ``empirical_fisher``: the uncentred covariance of the observed per-example gradients
  EF = (1/N) Σ_i ∇_θℓ_i ∇_θℓ_iᵀ (the "empirical Fisher", whose shortcomings Kunstner, Hennig &
  Balles 2019 and Martens 2020 §11 discuss): F with the sampled targets replaced by the data, so on
  the same scale as G and H (N as above; per-example gradients of the summed loss ℓ_i).
* ``kfac``: Kronecker-factored approximate curvature (Martens & Grosse 2015, "Optimizing neural
  networks with Kronecker-factored approximate curvature", ICML): per Linear/Conv2d layer,
  G_layer ≈ A ⊗ B with A the uncentred covariance of the layer's inputs (with a 1 appended for the
  bias, as in Martens & Grosse, unless ``separate_weight_and_bias``) and B that of the back-propagated
  output gradients (``fisher_type``: ``type-2`` uses exact square roots of H_i, approximating G;
  ``mc`` sampled targets, approximating F; ``empirical`` the data's targets, approximating EF); zero
  between layers. Every parameter must belong to a Linear or Conv2d layer.

Products come from curvlinops (Dangel et al., ``curvlinops-for-pytorch``), wrapped over a
``torch.func.functional_call`` view of the line's model at θ(α). The toolkit's losses are given to
it as ``nn.MSELoss()`` / ``nn.CrossEntropyLoss()`` with ``reduction="mean"``: curvlinops multiplies
each batch's mean-reduced loss by B/n, which yields exactly the (1/N)-normalised sums above
(``MSELoss`` averages over the B·k entries of a batch, so ``mse`` gets 1/(n·k); its Fisher samplers
and pseudo-losses divide by the same count). The tests compare every operator with a dense
``torch.func.jacrev`` construction of the formulas above.

BatchNorm: as for the Hessian (:func:`mli_theory.curvature.hvp.loss_hessian`), the model is
evaluated in eval mode with every non-parameter entry held fixed at its value at α
(:func:`~mli_theory.curvature.hvp.fixed_buffers`: statistics of θT, interpolated, or re-estimated
at θ(α) by ``bn``).

Vectors use the layout of :class:`~mli_theory.curvature.hvp.LossHessian` (parameters in the line's
order, each flattened row-major), so these operators and the Hessian can be compared entry by entry
and passed to :func:`~mli_theory.curvature.spectrum.extreme_eigenpairs`,
:func:`~mli_theory.curvature.trace.hutchpp_trace` and the routines of this package.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
from torch import nn
from torch.func import functional_call

from ..errors import InputError
from ..inputs.data import Dataset
from ..path import BNPolicy, Line, batches, data_on_line
from .hvp import ENGINES, LossHessian, fixed_buffers, loss_hessian

MATRICES: tuple[str, ...] = ("hessian", "ggn", "fisher_mc", "empirical_fisher", "kfac")
KFAC_FISHER_TYPES: tuple[str, ...] = ("type-2", "mc", "empirical")
_INSTALL = "pip install mli-theory[curvature]"


def _curvlinops() -> Any:
    """The curvlinops module, imported on first use (an optional dependency)."""
    try:
        import curvlinops
    except ImportError:
        raise InputError(
            f"the GGN, Fisher and K-FAC operators need the optional package curvlinops-for-pytorch ({_INSTALL})"
        ) from None
    return curvlinops


# ----------------------------------------------------------------------------- validation


def validate_operator_options(
    *,
    matrix: str,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    mc_samples: int = 1,
    seed: int = 0,
    fisher_type: str = "type-2",
) -> BNPolicy:
    """Check the options of :func:`curvature_operator` before any work; return the BatchNorm policy.

    Raises:
        InputError: naming the parameter.
    """
    if matrix not in MATRICES:
        raise InputError(f"matrix={matrix!r}: expected one of {', '.join(MATRICES)}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0):
        raise InputError(f"batch_size={batch_size!r}: must be a positive integer")
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise InputError(f"mc_samples={mc_samples!r}: must be a positive integer")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed={seed!r}: must be a non-negative integer")
    if fisher_type not in KFAC_FISHER_TYPES:
        raise InputError(f"fisher_type={fisher_type!r}: expected one of {', '.join(KFAC_FISHER_TYPES)}")
    try:
        return BNPolicy(bn)
    except ValueError:
        raise InputError(f"bn={bn!r}: unknown BatchNorm policy (expected recompute, interpolate or frozen)") from None


# ----------------------------------------------------------------------------- the model at θ(α)


class _PointModel(nn.Module):
    """The line's model as a function of its trainable parameters at one point: a
    ``functional_call`` of the shell with this module's own parameters (``p0``, ``p1``, … in the
    line's order) and the fixed entries (BatchNorm statistics, tied copies) held as constants.
    The shell is kept out of the module tree, so these are the only parameters curvlinops sees."""

    def __init__(self, shell: nn.Module, names: tuple[str, ...], params: Mapping[str, torch.Tensor], fixed: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self._names = names
        self._fixed = dict(fixed)
        self._shell = (shell,)  # a tuple: not registered as a submodule
        for i, name in enumerate(names):
            self.register_parameter(f"p{i}", nn.Parameter(params[name].detach().clone()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = dict(self._fixed)
        state.update({name: getattr(self, f"p{i}") for i, name in enumerate(self._names)})
        return functional_call(self._shell[0], state, (x,))


def _materialised(line: Line, params: Mapping[str, torch.Tensor], fixed: Mapping[str, torch.Tensor]) -> tuple[nn.Module, list[nn.Parameter]]:
    """A private copy of the shell holding θ(α) in its own modules (K-FAC hooks into its layers)."""
    model = copy.deepcopy(line.shell)
    state = {**fixed, **params}
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            t.copy_(state[name])
    for name, p in model.named_parameters():
        p.requires_grad_(name in line.param_names)
    model.eval()
    return model, [model.get_parameter(n) for n in line.param_names]


class _Batches:
    """The data as curvlinops reads it: an iterable of (x, y) minibatches, re-read at every pass."""

    def __init__(self, data: Dataset, batch_size: int | None) -> None:
        self.data, self.slices = data, batches(data.n, batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for sl in self.slices:
            yield self.data.x[sl], self.data.y[sl]

    def __len__(self) -> int:
        return len(self.slices)


def _loss_module(loss: str) -> nn.Module:
    return nn.MSELoss(reduction="mean") if loss == "mse" else nn.CrossEntropyLoss(reduction="mean")


# ----------------------------------------------------------------------------- the operator


@dataclass(frozen=True)
class CurvatureOperator:
    """A curvature matrix (GGN, Fisher, empirical Fisher or K-FAC) at one point, matrix-free.

    Satisfies :class:`~mli_theory.curvature.spectrum.SymmetricOperator`; vectors are flat tensors of
    length :attr:`size` in :class:`~mli_theory.curvature.hvp.LossHessian`'s layout.

    Attributes:
        matrix: ``ggn``, ``fisher_mc``, ``empirical_fisher`` or ``kfac`` (see the module doc).
        names: parameter names, in the flat layout's order.
        shapes: their shapes.
        size: number of trainable parameters.
        alpha: the α of the path point.
        bn: the BatchNorm policy (None for models without BatchNorm).
        options: the matrix's options (``mc_samples``, ``seed``, ``fisher_type``, ``batch_size``, …).
        linop: the curvlinops operator.
    """

    matrix: str
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    size: int
    alpha: float | None
    bn: str | None
    options: dict[str, Any] = field(default_factory=dict)
    linop: Any = field(default=None, repr=False, compare=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.linop.dtype

    @property
    def device(self) -> torch.device:
        return self.linop.device

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """M·v for one flat vector."""
        return self.matmat(v.reshape(1, -1)).reshape(-1)

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        """M·v for a block of vectors, shape (m, size) → (m, size)."""
        vs = vs.to(device=self.device, dtype=self.dtype)
        if vs.dim() != 2 or vs.shape[1] != self.size:
            raise InputError(f"vectors of shape {tuple(vs.shape)} do not fit a {self.matrix} operator of size {self.size}")
        with torch.enable_grad():
            out = self.linop @ vs.T.contiguous()
        return out.T.detach()

    def dense(self, chunk: int = 64) -> torch.Tensor:
        """The full matrix, by products with the unit vectors (small models only)."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        return torch.cat([self.matmat(eye[i : i + chunk]) for i in range(0, self.size, chunk)], dim=0)

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector (size,) or block (m, size) as a dict of parameter-shaped tensors."""
        return unflatten(v, self.names, self.shapes)


def unflatten(v: torch.Tensor, names: tuple[str, ...], shapes: tuple[tuple[int, ...], ...]) -> dict[str, torch.Tensor]:
    """Split a flat vector (or a block of them along the last axis) into parameter-shaped tensors."""
    lead = v.shape[:-1]
    out, i = {}, 0
    for name, shape in zip(names, shapes):
        n = math.prod(shape)
        out[name] = v[..., i : i + n].reshape(*lead, *shape)
        i += n
    return out


def _point(line: Line, data: Dataset, alpha: float, bn: BNPolicy, batch_size: int | None):
    state = line.at(alpha)
    params = {k: state[k].detach() for k in line.param_names}
    if not params:
        raise InputError("the model has no trainable parameters")
    return params, {k: v.detach() for k, v in fixed_buffers(line, data, alpha, bn, batch_size).items()}


def curvature_operator(
    line: Line,
    data: Dataset,
    alpha: float,
    matrix: str = "ggn",
    *,
    bn: BNPolicy | str = BNPolicy.RECOMPUTE,
    batch_size: int | None = None,
    mc_samples: int = 1,
    seed: int = 0,
    fisher_type: str = "type-2",
    separate_weight_and_bias: bool = False,
    engine: str = "auto",
) -> CurvatureOperator | LossHessian:
    """The curvature matrix ``matrix`` of the mean training loss at θ(α), as an operator.

    Args:
        line: the path (:func:`mli_theory.path.make_line`); not modified.
        data: training data (cast here to the line's device and dtype).
        alpha: the point θ(α) = (1−α)θ0 + αθT.
        matrix: ``hessian`` (:class:`~mli_theory.curvature.hvp.LossHessian`), ``ggn``, ``fisher_mc``,
            ``empirical_fisher`` or ``kfac`` (see the module doc).
        bn: BatchNorm policy; statistics are held fixed at their value at α.
        batch_size: examples per pass (None: all). Products do not depend on it, except the
            Monte-Carlo draws of ``fisher_mc`` and ``kfac`` with ``fisher_type="mc"``, and the
            re-estimated statistics of ``bn="recompute"``.
        mc_samples: targets drawn per example (``fisher_mc``; ``kfac`` with ``fisher_type="mc"``).
        seed: seed of those draws.
        fisher_type: ``kfac`` only: ``type-2`` (≈ GGN), ``mc`` (≈ Fisher) or ``empirical`` (≈ EF).
        separate_weight_and_bias: ``kfac`` only: one Kronecker product per weight and per bias
            (curvlinops' default) instead of one per layer with the bias as an extra input
            coordinate (Martens & Grosse 2015; the default here).
        engine: ``hessian`` only, see :class:`~mli_theory.curvature.hvp.LossHessian`.

    Raises:
        InputError: bad options, curvlinops missing, or (``kfac``) parameters outside Linear/Conv2d layers.
    """
    bn = validate_operator_options(matrix=matrix, bn=bn, batch_size=batch_size, mc_samples=mc_samples, seed=seed, fisher_type=fisher_type)
    alpha = float(alpha)
    data = data_on_line(line, data, bn, batch_size)
    if matrix == "hessian":
        if engine not in ENGINES:
            raise InputError(f"engine={engine!r}: expected one of {', '.join(ENGINES)}")
        return loss_hessian(line, data, alpha, bn=bn, batch_size=batch_size, engine=engine)
    cl = _curvlinops()
    params, fixed = _point(line, data, alpha, bn, batch_size)
    names = tuple(line.param_names)
    shapes = tuple(tuple(params[k].shape) for k in names)
    size = sum(params[k].numel() for k in names)
    loss_func = _loss_module(data.loss).to(line.device)
    loader = _Batches(data, batch_size)
    common = dict(progressbar=False, check_deterministic=False, num_data=data.n)
    options: dict[str, Any] = {"batch_size": batch_size}
    try:
        if matrix == "kfac":
            model, plist = _materialised(line, params, fixed)
            terms = 1 if data.loss == "ce" or data.y.dim() <= 2 else math.prod(data.y.shape[1:-1])
            linop = cl.KFACLinearOperator(
                model, loss_func, plist, loader, seed=seed, fisher_type=fisher_type,
                mc_samples=mc_samples if fisher_type == "mc" else 1, num_per_example_loss_terms=terms,
                separate_weight_and_bias=separate_weight_and_bias, **common,
            )
            linop.compute_kronecker_factors()
            options.update(fisher_type=fisher_type, separate_weight_and_bias=separate_weight_and_bias)
            if fisher_type == "mc":
                options.update(mc_samples=mc_samples, seed=seed)
        else:
            model = _PointModel(line.shell, names, params, fixed)
            plist = list(model.parameters())
            if matrix == "ggn":
                linop = cl.GGNLinearOperator(model, loss_func, plist, loader, **common)
            elif matrix == "empirical_fisher":
                linop = cl.EFLinearOperator(model, loss_func, plist, loader, **common)
            else:
                linop = cl.FisherMCLinearOperator(model, loss_func, plist, loader, seed=seed, mc_samples=mc_samples, **common)
                options.update(mc_samples=mc_samples, seed=seed)
    except NotImplementedError as exc:
        if matrix == "kfac":
            kinds = sorted({type(m).__name__ for m in line.shell.modules() if any(True for _ in m.parameters(recurse=False))} - {"Linear", "Conv2d"})
            raise InputError(
                f"K-FAC needs every trainable parameter in a Linear or Conv2d layer; this model also has {', '.join(kinds) or 'other'} parameters"
            ) from None
        raise InputError(f"{matrix}: {str(exc).strip()[:200]}") from None
    except ValueError as exc:
        raise InputError(f"{matrix}: {str(exc).strip().splitlines()[0][:200]}") from None
    return CurvatureOperator(matrix, names, shapes, size, alpha, bn.value if line.has_bn else None, options, linop)


def ggn_operator(line: Line, data: Dataset, alpha: float, **options: Any) -> CurvatureOperator:
    """G(α) = (1/N) Σ_i J_iᵀ H_i J_i at θ(α) (:func:`curvature_operator` with ``matrix="ggn"``)."""
    return curvature_operator(line, data, alpha, "ggn", **options)  # type: ignore[return-value]


def fisher_operator(line: Line, data: Dataset, alpha: float, *, mc_samples: int = 1, seed: int = 0, **options: Any) -> CurvatureOperator:
    """The Monte-Carlo Fisher at θ(α), ``mc_samples`` seeded draws per example (``matrix="fisher_mc"``)."""
    return curvature_operator(line, data, alpha, "fisher_mc", mc_samples=mc_samples, seed=seed, **options)  # type: ignore[return-value]


def empirical_fisher_operator(line: Line, data: Dataset, alpha: float, **options: Any) -> CurvatureOperator:
    """EF(α) = (1/N) Σ_i ∇ℓ_i ∇ℓ_iᵀ at θ(α) (``matrix="empirical_fisher"``)."""
    return curvature_operator(line, data, alpha, "empirical_fisher", **options)  # type: ignore[return-value]


def kfac_operator(line: Line, data: Dataset, alpha: float, *, fisher_type: str = "type-2", **options: Any) -> CurvatureOperator:
    """The K-FAC approximation at θ(α) (``matrix="kfac"``; Linear and Conv2d layers only)."""
    return curvature_operator(line, data, alpha, "kfac", fisher_type=fisher_type, **options)  # type: ignore[return-value]
