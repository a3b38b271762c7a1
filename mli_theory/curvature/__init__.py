"""Curvature of the loss along the path: Hessian-vector products, extreme eigenvalues (Lanczos),
trace (XTrace or Hutch++ with a confidence interval), spectral density (stochastic Lanczos quadrature) and
the directional curvature Δθᵀ H(α) Δθ = L″(α), at any α of θ(α) = (1−α)θ0 + αθT, on any device.
"""

from .along import CurvatureAt, PathCurvature, curvature_along, directional_curvature, validate_curvature_options
from .density import SpectralDensity, lanczos_tridiagonal, spectral_density
from .hvp import LossHessian, MatrixOperator, fixed_buffers, hvp, loss_hessian, loss_hessian_at, path_direction
from .spectrum import WHICH, Eigenpairs, SymmetricOperator, extreme_eigenpairs
from .trace import TraceEstimate, hutchpp_trace, layer_colors, xtrace_trace
from .blocks import BlockOperator, LayerSpectra, LayerSpectrum, layer_spectra, operator_layer_spectra, parameter_blocks
from .diagonal import CurvatureDiagonal, ggn_diagonal, hessian_diagonal, operator_diagonal
from .operators import (
    MATRICES,
    CurvatureOperator,
    curvature_operator,
    empirical_fisher_operator,
    fisher_operator,
    ggn_operator,
    kfac_operator,
)
from .split import SecondDerivativeSplit, second_derivative_split, second_derivative_splits

__all__ = [
    "WHICH",
    "CurvatureAt",
    "Eigenpairs",
    "LossHessian",
    "MatrixOperator",
    "PathCurvature",
    "SpectralDensity",
    "SymmetricOperator",
    "TraceEstimate",
    "curvature_along",
    "directional_curvature",
    "extreme_eigenpairs",
    "fixed_buffers",
    "hutchpp_trace",
    "hvp",
    "lanczos_tridiagonal",
    "layer_colors",
    "loss_hessian",
    "loss_hessian_at",
    "path_direction",
    "spectral_density",
    "validate_curvature_options",
    "xtrace_trace",
    "MATRICES",
    "BlockOperator",
    "CurvatureDiagonal",
    "CurvatureOperator",
    "LayerSpectra",
    "LayerSpectrum",
    "SecondDerivativeSplit",
    "curvature_operator",
    "empirical_fisher_operator",
    "fisher_operator",
    "ggn_diagonal",
    "ggn_operator",
    "hessian_diagonal",
    "kfac_operator",
    "layer_spectra",
    "operator_diagonal",
    "operator_layer_spectra",
    "parameter_blocks",
    "second_derivative_split",
    "second_derivative_splits",
]
