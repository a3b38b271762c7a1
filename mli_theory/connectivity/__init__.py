"""Connectivity between any two checkpoints: barriers on the straight line, permutation alignment
(weight matching) and REPAIR of BatchNorm/neuron statistics along the line.

See :mod:`.barrier` for the named barrier definitions, :mod:`.alignment` for weight matching and
:mod:`.repair` for REPAIR.
"""

from .alignment import AlignmentResult, PermutationGroup, apply_permutation, permutation_groups, weight_matching
from .barrier import BARRIER_DEFINITIONS, BarrierBN, BarrierResult, BarrierValue, barrier, barrier_on_line, barriers_from_samples
from .figures import plot_barrier
from .repair import RepairContext, prepare_repair, repaired_state

__all__ = [
    "AlignmentResult",
    "BARRIER_DEFINITIONS",
    "BarrierBN",
    "BarrierResult",
    "BarrierValue",
    "PermutationGroup",
    "RepairContext",
    "apply_permutation",
    "barrier",
    "barrier_on_line",
    "barriers_from_samples",
    "permutation_groups",
    "plot_barrier",
    "prepare_repair",
    "repaired_state",
    "weight_matching",
]
