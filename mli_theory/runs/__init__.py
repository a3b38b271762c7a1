"""Training runs, sweeps of runs, and the embedded demo."""

from .allocator import keep_freed_memory
from .config import TrainConfig, fork_folder, read_run, run_forks, run_training
from .demo import run_demo
from .executors import EXECUTORS, ExecutorOptions
from .sweep import grid, run_sweep
from .train import TrainResult, train, train_forks

__all__ = [
    "EXECUTORS",
    "ExecutorOptions",
    "TrainConfig",
    "TrainResult",
    "fork_folder",
    "grid",
    "keep_freed_memory",
    "read_run",
    "run_demo",
    "run_forks",
    "run_sweep",
    "run_training",
    "train",
    "train_forks",
]
