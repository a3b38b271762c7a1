"""Curvature of the loss along the path: Hessian-vector products, extreme eigenvalues (Lanczos),
trace (Hutch++ with a confidence interval), spectral density (stochastic Lanczos quadrature) and
the directional curvature Δθᵀ H(α) Δθ = L″(α), at any α of θ(α) = (1−α)θ0 + αθT, on any device.
"""

from .along import CurvatureAt, PathCurvature, curvature_along, directional_curvature, validate_curvature_options
from .density import SpectralDensity, lanczos_tridiagonal, spectral_density
from .hvp import LossHessian, MatrixOperator, fixed_buffers, hvp, loss_hessian, loss_hessian_at, path_direction
from .spectrum import WHICH, Eigenpairs, SymmetricOperator, extreme_eigenpairs
from .trace import TraceEstimate, hutchpp_trace

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
    "loss_hessian",
    "loss_hessian_at",
    "path_direction",
    "spectral_density",
    "validate_curvature_options",
]
