"""Exact arithmetic: polynomial paths decided exactly, conditions proven with integer bounds."""

from .budget import BudgetExceeded, check_deadline, deadline_after, expired
from .conditions import prove_conditions
from .decide import ExactVerdict, decide, decide_line
from .dyadic import float_down, float_up, sqrt_up, to_fixed
from .polynomials import EXACT_MAX_ENTRIES, LossPolynomial, exact_fits, OutputPolynomial, loss_polynomial_of_line, mse_loss_polynomial, output_polynomial

__all__ = [
    "EXACT_MAX_ENTRIES",
    "BudgetExceeded",
    "ExactVerdict",
    "LossPolynomial",
    "OutputPolynomial",
    "check_deadline",
    "deadline_after",
    "decide",
    "decide_line",
    "exact_fits",
    "expired",
    "float_down",
    "float_up",
    "loss_polynomial_of_line",
    "mse_loss_polynomial",
    "output_polynomial",
    "prove_conditions",
    "sqrt_up",
    "to_fixed",
]
