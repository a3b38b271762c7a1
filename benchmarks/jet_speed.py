"""Benchmark: z′ and z″ at K α points, one-pass Taylor mode (the jet interpreter) vs nested torch.func.jvp.

    python benchmarks/jet_speed.py [--quick | --smoke] [--device cpu|cuda] [--alphas 51] [--model mlp|resnet|resnet18|transformer|all] [--memory] [--require-quiet]

BatchNorm statistics are held fixed (``bn="frozen"``) so that both methods differentiate the same
function. Peak memory of one α (Taylor mode, nested jvp) beside one plain forward pass at the same
batch size: on a GPU from ``torch.cuda.max_memory_allocated``; on a CPU with ``--memory``, each in a
fresh process, as the rise of the resident set's high-water mark (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``) above the resident set after set-up.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import bench_args, machine, median_time, mlp_line, quiet_run, resnet18_line, resnet_line, table, transformer_line  # noqa: E402

from mli_theory.geometry import path_jet  # noqa: E402


MODELS = {
    "mlp": ("MLP 784-1000-1000-10", lambda n, dev: mlp_line(n, dev, "mse")),
    "resnet": ("small ResNet (BatchNorm2d, residual adds), 3×16×16", resnet_line),
    "transformer": ("encoder block (LayerNorm, attention, GELU), 16 tokens × 64", transformer_line),
    "resnet18": ("ResNet-18 (CIFAR form, BatchNorm2d), 3×32×32", resnet18_line),
}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for row in f:
            if row.startswith(field + ":"):
                return int(row.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child_memory(name: str, n: int, what: str) -> None:
    """In a fresh process: build the model, reset the high-water mark, run one α, print MiB."""
    import gc

    _, make = MODELS[name]
    model, line, data = make(n, "cpu")
    one = torch.tensor([0.5], dtype=torch.float64)
    work = {
        "plain": lambda: model(data.x),
        "taylor": lambda: path_jet(line, data, one, method="taylor", bn="frozen"),
        "nested": lambda: path_jet(line, data, one, method="nested_jvp", alpha_chunk=1, bn="frozen"),
    }[what]
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _rss_kib("VmRSS")
    with torch.no_grad():
        work()
    print(f"{(_rss_kib('VmHWM') - base) / 1024:.1f}")


def cpu_memory(name: str, n: int) -> None:
    import subprocess

    peaks = {}
    for what in ("plain", "taylor", "nested"):
        out = subprocess.run([sys.executable, __file__, "--model", name, "--child-memory", what, "--n", str(n)],
                             capture_output=True, text=True, check=True).stdout
        peaks[what] = float(out.strip().splitlines()[-1])
    p = peaks["plain"]
    print(f"  peak memory of one α (MiB above set-up, fresh process each): one forward {p:.1f}, "
          f"Taylor {peaks['taylor']:.1f} ({peaks['taylor'] / p:.2f}x), nested jvp {peaks['nested']:.1f} ({peaks['nested'] / p:.2f}x)")


def _peak(fn, dev: str) -> float | None:
    """Peak CUDA memory of one call in MiB (None on the CPU, where torch does not track it)."""
    if not dev.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def bench(name: str, n: int, dev: str, K: int, repeats: int) -> None:
    label, make = MODELS[name]
    model, line, data = make(n, dev)
    x = data.x
    alphas = torch.linspace(0, 1, K, dtype=torch.float64)

    def plain():
        with torch.no_grad():
            for _ in range(K):
                model(x)

    def taylor():
        return path_jet(line, data, alphas, method="taylor", bn="frozen")

    def nested():
        return path_jet(line, data, alphas, method="nested_jvp", alpha_chunk=8, bn="frozen")

    rows = [("K plain forward passes (floor)", median_time(plain, dev, repeats))]
    rows.append(("Taylor mode (z, z′, z″ in one pass)", median_time(taylor, dev, repeats)))
    rows.append(("nested torch.func.jvp, vmap chunks of 8", median_time(nested, dev, repeats)))
    print(f"{label}, n={n}, K={K}, float32 on {machine(dev)}; median of {repeats}")
    print(table(rows, rows[0][1], "plain"))
    print(f"  Taylor mode is {rows[2][1] / rows[1][1]:.2f}x faster than nested jvp; fallbacks: {list(taylor().fallbacks) or 'none'}")
    peaks = [_peak(lambda: model(x), dev), _peak(taylor, dev), _peak(nested, dev)]
    if peaks[0] is not None:
        print(f"  peak memory MiB: one forward {peaks[0]:.1f}, Taylor {peaks[1]:.1f} ({peaks[1] / peaks[0]:.2f}x), nested {peaks[2]:.1f}")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--model", default="mlp", choices=[*MODELS, "all"])
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--child-memory", choices=["plain", "taylor", "nested"])
    ap.add_argument("--n", type=int)
    known, rest = ap.parse_known_args()
    if known.child_memory:
        _child_memory(known.model, known.n, known.child_memory)
        return
    sys.argv = [sys.argv[0], *rest]
    args, n = bench_args(1000, 10000, 3)
    with quiet_run(args.require_quiet):
        for name in MODELS if known.model == "all" else [known.model]:
            if args.smoke:
                size = n if name == "mlp" else 2
            else:
                size = n if name == "mlp" else (128 if args.quick or args.device == "cpu" and name == "resnet18" else 1024)
            bench(name, size, args.device, args.alphas, args.repeats)
            if known.memory and args.device == "cpu":
                cpu_memory(name, size)
            print()


if __name__ == "__main__":
    main()
