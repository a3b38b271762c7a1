"""Theory of MLI under MSE: symbolic derivations, condition statements, their evaluation on paths.

The sympy derivations (:mod:`mli_theory.theory.symbolic`) are imported on first use, so that
checking a model does not pay for importing sympy.
"""

from .conditions import DEFAULT_PROOF_BUDGET_S, GeometryReport, complete_proofs, evaluate_conditions, overrule, with_proofs
from .statements import STATEMENTS

_SYMBOLIC = ("Derivation", "Step", "check_step", "derivation", "render_result", "result_names")

__all__ = ["DEFAULT_PROOF_BUDGET_S", "GeometryReport", "STATEMENTS", "complete_proofs", "evaluate_conditions", "overrule", "with_proofs", *_SYMBOLIC]


def __getattr__(name: str):
    if name in _SYMBOLIC:
        from . import symbolic

        return getattr(symbolic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
