"""Timing helpers shared by the benchmark scripts (median wall time, device-synchronised)."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], device: str = "cpu", repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def table(rows: list[tuple[str, float]], ref: float, ref_name: str) -> str:
    out = [f"  {'work':<46} {'ms':>10} {'× ' + ref_name:>16}"]
    for name, t in rows:
        out.append(f"  {name:<46} {1e3 * t:>10.1f} {t / ref:>16.2f}")
    return "\n".join(out)
