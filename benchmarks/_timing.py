"""Timing helpers shared by the benchmark scripts (median wall time, device-synchronised)."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from typing import Callable, Iterator, NamedTuple

import torch
from torch import nn

from mli_theory.runs.allocator import keep_freed_memory

keep_freed_memory()  # as the command line does: benchmarks time what its users get


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


# ----------------------------------------------------------------------------- quiet measurement


class LoadReport(NamedTuple):
    """The 1- and 5-minute load averages, the core count, and whether the machine counts as quiet
    (1-minute load ≤ 0.5 × cores: at most 1.0 on 2 cores)."""

    one: float
    five: float
    cores: int
    quiet: bool

    @property
    def verdict(self) -> str:
        return "quiet" if self.quiet else "NOT QUIET"

    def __str__(self) -> str:
        return f"load average {self.one:.2f} (1 min) / {self.five:.2f} (5 min) on {self.cores} cores: {self.verdict}"


def load_report(cores: int | None = None) -> LoadReport:
    """The load averages now, and the verdict quiet (1-minute load ≤ 0.5 × cores) or NOT QUIET."""
    cores = cores or os.cpu_count() or 1
    try:
        one, five, _ = os.getloadavg()
    except OSError:  # no load average on this platform: call it quiet, the figures say so
        return LoadReport(float("nan"), float("nan"), cores, True)
    return LoadReport(one, five, cores, one <= 0.5 * cores)


def add_quiet_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--require-quiet", action="store_true",
                    help="refuse (exit 3) when the 1-minute load average exceeds 0.5 × cores")


@contextlib.contextmanager
def quiet_run(require: bool = False) -> Iterator[LoadReport]:
    """Print the load average before and after the timings inside; the figures are marked NOT QUIET
    when the 1-minute load before exceeds 0.5 × cores; with ``require`` refuse instead (exit 3)."""
    before = load_report()
    if require and not before.quiet:
        print(f"refusing to measure (--require-quiet): {before}", file=sys.stderr, flush=True)
        raise SystemExit(3)
    print(f"before the timings: {before}", flush=True)
    yield before
    mark = "" if before.quiet else " — the figures above are NOT QUIET (measured on a busy machine)"
    print(f"after the timings: {load_report()}{mark}", flush=True)


# ----------------------------------------------------------------------------- models shared by the benchmarks


class ResBlock(nn.Module):
    """A basic residual block: conv-BN-ReLU-conv-BN plus a (projected) skip connection."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Sequential()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(h)) + self.skip(x))


def small_resnet(width: int = 16, classes: int = 10) -> nn.Module:
    """Stem conv + three residual stages (width, 2·width, 4·width) + global pooling + linear head."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        ResBlock(w, w, 1), ResBlock(w, 2 * w, 2), ResBlock(2 * w, 4 * w, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, classes),
    )


def big_mlp() -> nn.Module:
    """The MLP 784-1000-1000-10 (ReLU) of the GUIDE's anchors."""
    return nn.Sequential(nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 10))


def mlp_line(n: int, device: str, loss: str):
    """(model, line, data) for the MLP 784-1000-1000-10 of the GUIDE's anchors, θT = θ0 + noise."""
    from mli_theory.inputs import Dataset
    from mli_theory.path import make_line

    torch.manual_seed(0)
    model = big_mlp().to(device)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.01 * torch.randn_like(v) for k, v in init.items()}
    x = torch.randn(n, 784, device=device)
    y = torch.randint(0, 10, (n,), device=device) if loss == "ce" else torch.zeros(n, 10, device=device)
    data = Dataset(x, y, loss, "synthetic")
    return model, make_line(model, init, final, device=device, dtype=torch.float32), data


SMOKE_N = 8


def bench_args(quick_n: int, full_n: int, repeats: int) -> tuple[argparse.Namespace, int]:
    """Common flags (--quick, --smoke, --device, --alphas, --repeats, --require-quiet) and the
    example count they select. ``--smoke`` is a toy run that only shows the script works:
    n = 8, 5 α, 1 repeat (unless --alphas / --repeats say otherwise)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help=f"n = {quick_n} instead of {full_n}")
    ap.add_argument("--smoke", action="store_true", help=f"toy size (n = {SMOKE_N}, 5 α, 1 repeat): a smoke run, not a figure")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--alphas", type=int, default=None, help="α points (default 51; 5 with --smoke)")
    ap.add_argument("--repeats", type=int, default=None, help=f"timed runs, median reported (default {repeats}; 1 with --smoke)")
    add_quiet_flag(ap)
    args = ap.parse_args()
    if args.alphas is None:
        args.alphas = 5 if args.smoke else 51
    if args.repeats is None:
        args.repeats = 1 if args.smoke else repeats
    return args, (SMOKE_N if args.smoke else quick_n if args.quick else full_n)


def _endpoints(model, device: str):
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: (v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in init.items()}
    return init, final


def resnet_line(n: int, device: str, width: int = 16):
    """(model, line, data): :func:`small_resnet` (BatchNorm2d, residual adds) on 3×16×16 inputs."""
    from mli_theory.inputs import Dataset
    from mli_theory.path import make_line

    torch.manual_seed(0)
    model = small_resnet(width).to(device).eval()
    init, final = _endpoints(model, device)
    x = torch.randn(n, 3, 16, 16, device=device)
    data = Dataset(x, torch.zeros(n, 10, device=device), "mse", "synthetic")
    return model, make_line(model, init, final, device=device, dtype=torch.float32), data


def transformer_line(n: int, device: str, d: int = 64, tokens: int = 16):
    """(model, line, data): one pre-norm encoder block (LayerNorm, 4-head attention, GELU MLP) on n sequences."""
    from torch import nn

    from mli_theory.inputs import Dataset
    from mli_theory.path import make_line

    class EncoderBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
            self.head = nn.Linear(d, 4)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.n1(x)).reshape(b, t, 3, 4, d // 4).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / (d // 4) ** 0.5, dim=-1) @ v
            x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
            x = x + self.fc2(torch.nn.functional.gelu(self.fc1(self.n2(x))))
            return self.head(x.mean(dim=1))

    torch.manual_seed(0)
    model = EncoderBlock().to(device).eval()
    init, final = _endpoints(model, device)
    x = torch.randn(n, tokens, d, device=device)
    data = Dataset(x, torch.zeros(n, 4, device=device), "mse", "synthetic")
    return model, make_line(model, init, final, device=device, dtype=torch.float32), data


def resnet18_line(n: int, device: str):
    """(model, line, data): ResNet-18 in its CIFAR form (3×3 stem, no max-pool; four stages of two
    basic blocks, 64–512 channels, BatchNorm2d) on 3×32×32 inputs, 10 outputs. Defined here because
    torchvision's compiled ops do not load beside the CPU torch wheel."""
    from torch import nn

    from mli_theory.inputs import Dataset
    from mli_theory.path import make_line

    class Basic(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.shortcut = nn.Sequential()
            if stride != 1 or c_in != c_out:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    c = 64
    for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Basic(c, width, stride), Basic(width, width, 1)]
        c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
    model = nn.Sequential(*layers).to(device).eval()
    init, final = _endpoints(model, device)
    x = torch.randn(n, 3, 32, 32, device=device)
    data = Dataset(x, torch.zeros(n, 10, device=device), "mse", "synthetic")
    return model, make_line(model, init, final, device=device, dtype=torch.float32), data


def against_table(root: str, against: str, runs: list[tuple[str, list[str], tuple[float, ...]]], worker: str,
                  worker_args: Callable[[str, list[str], float], list[str]], header: str) -> int:
    """Side by side in one run: ``worker`` (Python source printing one JSON line with status, cells,
    bound, seconds) under this checkout (``root``) and under revision ``against`` (a temporary git
    worktree), one process at a time, alternating, for every (name, data, tolerances) of ``runs``;
    ``worker_args(library root, data, tol)`` gives its command-line arguments. Prints a Markdown
    table with the speed-up and the load average before and after. Returns an exit code."""
    import json
    import subprocess
    import tempfile

    def load() -> str:
        try:
            return " / ".join(f"{v:.2f}" for v in os.getloadavg())
        except OSError:
            return "?"

    with tempfile.TemporaryDirectory() as tmp:
        old = os.path.join(tmp, "old")
        got = subprocess.run(["git", "-C", root, "worktree", "add", "--detach", "-q", old, against], capture_output=True, text=True)
        if got.returncode != 0:
            print(f"--against {against}: {got.stderr.strip()}", file=sys.stderr)
            return 2
        try:
            print(f"# {header}; load before {load()}")
            print(f"| model | T | this checkout: status, cells, bound, s | {against}: status, cells, bound, s | speed-up |")
            print("|---|---|---|---|---|")
            for name, data, tols in runs:
                for tol in tols:
                    res = {}
                    for label, lib in (("new", root), ("old", old)):
                        out = subprocess.run([sys.executable, "-c", worker, *worker_args(lib, data, tol)], capture_output=True, text=True)
                        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
                        res[label] = json.loads(lines[-1]) if lines else {"status": "error: " + out.stderr.strip()[-200:]}
                    n, o = res["new"], res["old"]

                    def cell(r: dict) -> str:
                        if "cells" not in r:
                            return r["status"]
                        bound = "–" if r["bound"] is None else f"{r['bound']:.3g}"
                        return f"{r['status']}, {r['cells']}, {bound}, {r['seconds']:.1f}"

                    both = "seconds" in n and "seconds" in o and n["status"] != "unknown"
                    ratio = f"{o['seconds'] / n['seconds']:.2f}×" + ("" if o["status"] != "unknown" else " (old: budget)") if both else "–"
                    print(f"| {name} | {tol:g} | {cell(n)} | {cell(o)} | {ratio} |", flush=True)
            print(f"# load after {load()}")
        finally:
            subprocess.run(["git", "-C", root, "worktree", "remove", "--force", old], capture_output=True)
    return 0
