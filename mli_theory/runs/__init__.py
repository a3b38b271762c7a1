"""Training runs, sweeps of runs, and the embedded demo."""

from .config import TrainConfig, read_run, run_training
from .demo import run_demo
from .executors import EXECUTORS, ExecutorOptions
from .sweep import grid, run_sweep
from .train import TrainResult, train

__all__ = ["EXECUTORS", "ExecutorOptions", "TrainConfig", "TrainResult", "grid", "read_run", "run_demo", "run_sweep", "run_training", "train"]
