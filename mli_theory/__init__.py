"""mli-theory: verify monotonic linear interpolation (MLI) of neural-network losses.

Along θ(α) = (1−α)·θ0 + α·θT the toolkit measures the training loss, proves monotonicity or finds
a witness of a rise (exactly for linear and deep-linear networks under MSE), computes the geometry
of the output path z(α) = f(X; θ(α)) with ``torch.func``, and checks the MSE sufficient conditions
derived in :mod:`mli_theory.symbolic`.
"""

from __future__ import annotations

from .arch import ArchSpec, build_model, parse_arch
from .certify import certify
from .check import check
from .checkpoint import load_state_dict, match_state_dict, save_state_dict
from .data import BUILTIN_DATASETS, Dataset, load_data
from .errors import InputError
from .conditions import GeometryReport, evaluate_conditions
from .exact import ExactVerdict, LossPolynomial, decide, decide_line, loss_polynomial_of_line
from .geometry import GaussLength, PathGeometry, PathJet, describe_path, gauss_length, logit_linearity, path_jet
from .monotonicity import Rise, max_rise
from .path import BNPolicy, Line, LossCurve, alpha_grid, distances, interpolate, loss_curve, make_line
from .report import Certificate, CheckResult, Condition
from .runs import TrainConfig, read_run, run_training
from .sweep import run_sweep
from .train import TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "ArchSpec",
    "BNPolicy",
    "BUILTIN_DATASETS",
    "Certificate",
    "CheckResult",
    "Condition",
    "Dataset",
    "ExactVerdict",
    "GaussLength",
    "GeometryReport",
    "InputError",
    "Line",
    "LossCurve",
    "LossPolynomial",
    "PathGeometry",
    "PathJet",
    "Rise",
    "TrainConfig",
    "TrainResult",
    "alpha_grid",
    "build_model",
    "certify",
    "check",
    "decide",
    "decide_line",
    "describe_path",
    "distances",
    "evaluate_conditions",
    "gauss_length",
    "interpolate",
    "load_data",
    "load_state_dict",
    "logit_linearity",
    "loss_curve",
    "loss_polynomial_of_line",
    "make_line",
    "match_state_dict",
    "max_rise",
    "parse_arch",
    "path_jet",
    "read_run",
    "run_sweep",
    "run_training",
    "save_state_dict",
    "train",
]
