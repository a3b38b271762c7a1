"""Theory of MLI under MSE: symbolic derivations, condition statements, their evaluation on paths."""

from .conditions import GeometryReport, evaluate_conditions, with_proofs
from .statements import STATEMENTS
from .symbolic import Derivation, Step, check_step, derivation, render_result, result_names

__all__ = [
    "Derivation",
    "GeometryReport",
    "STATEMENTS",
    "Step",
    "check_step",
    "derivation",
    "evaluate_conditions",
    "render_result",
    "result_names",
    "with_proofs",
]
