"""The empirical neural tangent kernel along the interpolation path and between checkpoints.

* :func:`empirical_ntk`: K = J Jᵀ (full (n·k) × (n·k), or the n × n logit trace), by Jacobian
  contraction or NTK-vector products chosen by estimated cost (:func:`estimate_cost`).
* :func:`kernel_distance`: S(K1, K2) = 1 − ⟨K1, K2⟩_F / (‖K1‖_F ‖K2‖_F) (Fort et al. 2020).
* :func:`kernel_along_path`: S(K(0), K(α)), dS/dα and μ(α) = λmin(K(α)) (PL*, Liu, Zhu and Belkin
  2022) on an α grid, with BatchNorm policies, blocked so that n·k beyond memory still works.
* :func:`kernel_between_checkpoints` and :func:`list_checkpoints`: the same between the saved
  checkpoints of a training run.
"""

from .along import KernelPath, kernel_along_path
from .checkpoints import CheckpointFile, CheckpointKernels, kernel_between_checkpoints, list_checkpoints, load_checkpoints
from .distance import distance_from_products, kernel_distance, path_velocity, step_velocity
from .figures import plot_kernel_path
from .ntk import KERNELS, RECIPES, NTKModel, Plan, RecipeCost, empirical_ntk, estimate_cost, make_plan, ntk_matvec
from .sequence import SequenceStats, kernel_sequence
from .spectrum import LambdaMin, lambda_min_dense, lambda_min_operator

__all__ = [
    "KERNELS",
    "RECIPES",
    "CheckpointFile",
    "CheckpointKernels",
    "KernelPath",
    "LambdaMin",
    "NTKModel",
    "Plan",
    "RecipeCost",
    "SequenceStats",
    "distance_from_products",
    "empirical_ntk",
    "estimate_cost",
    "kernel_along_path",
    "kernel_between_checkpoints",
    "kernel_distance",
    "kernel_sequence",
    "lambda_min_dense",
    "lambda_min_operator",
    "list_checkpoints",
    "load_checkpoints",
    "make_plan",
    "ntk_matvec",
    "path_velocity",
    "plot_kernel_path",
    "step_velocity",
]
