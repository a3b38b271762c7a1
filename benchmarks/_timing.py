"""Timing helpers shared by the benchmark scripts (median wall time, device-synchronised)."""

from __future__ import annotations

import argparse
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


def mlp_line(n: int, device: str, loss: str):
    """(model, line, data) for the MLP 784-1000-1000-10 of the GUIDE's anchors, θT = θ0 + noise."""
    from torch import nn

    from mli_theory.inputs import Dataset
    from mli_theory.path import make_line

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 10)).to(device)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.01 * torch.randn_like(v) for k, v in init.items()}
    x = torch.randn(n, 784, device=device)
    y = torch.randint(0, 10, (n,), device=device) if loss == "ce" else torch.zeros(n, 10, device=device)
    data = Dataset(x, y, loss, "synthetic")
    return model, make_line(model, init, final, device=device, dtype=torch.float32), data


def bench_args(quick_n: int, full_n: int, repeats: int) -> tuple[argparse.Namespace, int]:
    """Common flags (--quick, --device, --alphas, --repeats) and the example count they select."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help=f"n = {quick_n} instead of {full_n}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--alphas", type=int, default=51)
    ap.add_argument("--repeats", type=int, default=repeats)
    args = ap.parse_args()
    return args, (quick_n if args.quick else full_n)
