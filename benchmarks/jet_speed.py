"""Benchmark: z′ and z″ at K α points, one-pass Taylor mode (the jet interpreter) vs nested torch.func.jvp.

    python benchmarks/jet_speed.py [--quick] [--device cpu|cuda] [--alphas 51] [--model mlp|resnet|transformer|all]

BatchNorm statistics are held fixed (``bn="frozen"``) so that both methods differentiate the same
function. On a GPU the peak memory of each method is printed beside one plain forward pass.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import bench_args, machine, median_time, mlp_line, resnet_line, table, transformer_line  # noqa: E402

from mli_theory.geometry import path_jet  # noqa: E402


MODELS = {
    "mlp": ("MLP 784-1000-1000-10", lambda n, dev: mlp_line(n, dev, "mse")),
    "resnet": ("small ResNet (BatchNorm2d, residual adds), 3×16×16", resnet_line),
    "transformer": ("encoder block (LayerNorm, attention, GELU), 16 tokens × 64", transformer_line),
}


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
    print()


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--model", default="mlp", choices=[*MODELS, "all"])
    known, rest = ap.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    args, n = bench_args(1000, 10000, 3)
    for name in MODELS if known.model == "all" else [known.model]:
        size = n if name == "mlp" else (128 if args.quick else 1024)
        bench(name, size, args.device, args.alphas, args.repeats)


if __name__ == "__main__":
    main()
