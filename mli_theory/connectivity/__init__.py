"""Connectivity between any two checkpoints: barriers on the straight line, permutation alignment
(weight matching) and REPAIR of BatchNorm/neuron statistics along the line; loss surfaces on
filter-normalised random directions or on the plane through θ0, θT and a third point; the
roughness index and statistics of the rises of a loss curve.

See :mod:`.barrier` for the named barrier definitions, :mod:`.alignment` for weight matching and
:mod:`.repair` for REPAIR.
"""

from .alignment import AlignmentResult, PermutationGroup, apply_permutation, permutation_groups, weight_matching
from .barrier import BARRIER_DEFINITIONS, BarrierBN, BarrierResult, BarrierValue, barrier, barrier_on_line, barriers_from_samples
from .curves import CURVES, CurveResult, curve_coefficients, curve_connectivity, curve_point
from .figures import plot_barrier
from .directions import filter_axes, normalize_filters, orthogonalize, random_direction, random_directions
from .pathstats import PathStats, RiseInterval, path_statistics, separate_rises
from .repair import RepairContext, prepare_repair, repaired_state
from .roughness import Roughness, RoughnessIndex, landscape_roughness, normalized_total_variation, roughness_index
from .surface import Frame, Surface, loss_surface, plane_frame, random_frame
from .surface_figures import plot_slices, plot_surface

__all__ = [
    "AlignmentResult",
    "apply_permutation",
    "barrier",
    "BARRIER_DEFINITIONS",
    "barrier_on_line",
    "BarrierBN",
    "BarrierResult",
    "barriers_from_samples",
    "BarrierValue",
    "curve_coefficients",
    "curve_connectivity",
    "curve_point",
    "CurveResult",
    "CURVES",
    "filter_axes",
    "Frame",
    "landscape_roughness",
    "loss_surface",
    "normalize_filters",
    "normalized_total_variation",
    "orthogonalize",
    "path_statistics",
    "PathStats",
    "permutation_groups",
    "PermutationGroup",
    "plane_frame",
    "plot_barrier",
    "plot_slices",
    "plot_surface",
    "prepare_repair",
    "random_direction",
    "random_directions",
    "random_frame",
    "RepairContext",
    "repaired_state",
    "RiseInterval",
    "Roughness",
    "roughness_index",
    "RoughnessIndex",
    "separate_rises",
    "Surface",
    "weight_matching",
]
