"""The straight path θ(α) = (1−α)θ0 + αθT, what the model computes along it, and the loss curve."""

from .batchnorm import batches, recompute_batches, recompute_bn_statistics
from .curve import LossCurve, Progress, alpha_grid, data_on_line, evaluate, loss_curve, probe
from .line import BNPolicy, Line, Motion, batchnorm_statistics, distances, interpolate, make_line, motions
from .losses import batch_loss_sums, loss_normaliser
from .monotonicity import Rise, max_rise
from .smoothness import Smoothness
from .structure import PathKind, PathStructure, analyse

__all__ = [
    "BNPolicy",
    "Line",
    "LossCurve",
    "Motion",
    "PathKind",
    "PathStructure",
    "Progress",
    "Rise",
    "Smoothness",
    "alpha_grid",
    "analyse",
    "batch_loss_sums",
    "batchnorm_statistics",
    "batches",
    "data_on_line",
    "distances",
    "evaluate",
    "interpolate",
    "loss_curve",
    "loss_normaliser",
    "make_line",
    "max_rise",
    "motions",
    "probe",
    "recompute_batches",
    "recompute_bn_statistics",
]
