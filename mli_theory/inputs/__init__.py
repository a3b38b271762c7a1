"""What the user gives us: architecture specs, checkpoints, data sets, devices and dtypes."""

from .arch import ArchSpec, build_model, has_batchnorm, parse_arch
from .checkpoint import StateDict, load_state_dict, match_state_dict, save_state_dict
from .data import BUILTIN_DATASETS, Dataset, load_data
from .devices import resolve_device, resolve_dtype
from .examples import STREAM_BATCH, Examples, Normalization, iter_batches

__all__ = [
    "ArchSpec",
    "BUILTIN_DATASETS",
    "Dataset",
    "Examples",
    "Normalization",
    "STREAM_BATCH",
    "StateDict",
    "build_model",
    "has_batchnorm",
    "iter_batches",
    "load_data",
    "load_state_dict",
    "match_state_dict",
    "parse_arch",
    "resolve_device",
    "resolve_dtype",
    "save_state_dict",
]
