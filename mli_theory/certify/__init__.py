"""Certificates: verdicts on the whole interval α ∈ [0, 1], never a grid result in disguise."""

from .certificate import ProofOutcome, certify

__all__ = ["ProofOutcome", "certify"]
