"""Geometry of the output path z(α) = f(X; θ(α)): jets, turning, Gauss length, path description."""

from .describe import PathGeometry, describe_path, logit_linearity
from .jets import JetMethod, PathJet, path_jet, taylor_plan, taylor_supported
from .turning import GaussLength, gauss_length, turning_rate

__all__ = [
    "GaussLength",
    "JetMethod",
    "PathGeometry",
    "PathJet",
    "describe_path",
    "gauss_length",
    "logit_linearity",
    "path_jet",
    "taylor_plan",
    "taylor_supported",
    "turning_rate",
]
