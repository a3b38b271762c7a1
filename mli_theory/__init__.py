"""mli-theory: verify monotonic linear interpolation (MLI) of neural-network losses.

Along θ(α) = (1−α)·θ0 + α·θT the toolkit measures the training loss, proves monotonicity or finds
a witness of a rise (exactly for chains of affine layers under MSE), computes the geometry of the
output path z(α) = f(X; θ(α)) with ``torch.func``, and checks the MSE sufficient conditions
derived in :mod:`mli_theory.theory.symbolic`.

Subpackages, from the bottom up (a lower one never imports a higher one):
:mod:`~mli_theory.inputs` (specs, checkpoints, data, devices), :mod:`~mli_theory.path` (the line,
the traced model structure, the loss curve, max rise), :mod:`~mli_theory.geometry` (jets, turning,
Gauss length), :mod:`~mli_theory.exact` (exact polynomials, decisions, proven conditions),
:mod:`~mli_theory.theory` (derivations, statements, grid evidence), :mod:`~mli_theory.certify`,
then :mod:`~mli_theory.check`, :mod:`~mli_theory.runs` and :mod:`~mli_theory.cli`.
"""

from __future__ import annotations

from .certify import ProofOutcome, certify
from .check import check
from .errors import InputError
from .exact import ExactVerdict, LossPolynomial, decide, decide_line, loss_polynomial_of_line, prove_conditions
from .geometry import GaussLength, PathGeometry, PathJet, describe_path, gauss_length, logit_linearity, path_jet
from .inputs import BUILTIN_DATASETS, ArchSpec, Dataset, build_model, load_data, load_state_dict, match_state_dict, parse_arch, save_state_dict
from .path import BNPolicy, Line, LossCurve, PathKind, PathStructure, Rise, alpha_grid, analyse, distances, interpolate, loss_curve, make_line, max_rise
from .results import Certificate, CheckResult, Condition
from .runs import TrainConfig, TrainResult, read_run, run_sweep, run_training, train
from .theory import GeometryReport, evaluate_conditions

__version__ = "0.2.0"

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
    "PathKind",
    "PathStructure",
    "ProofOutcome",
    "Rise",
    "TrainConfig",
    "TrainResult",
    "alpha_grid",
    "analyse",
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
    "prove_conditions",
    "read_run",
    "run_sweep",
    "run_training",
    "save_state_dict",
    "train",
]
