"""Benchmark: z′ and z″ at K α points, one-pass Taylor mode vs nested torch.func.jvp.

    python benchmarks/jet_speed.py [--quick] [--device cpu|cuda] [--alphas 51]
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import bench_args, machine, median_time, mlp_line, table  # noqa: E402

from mli_theory.geometry import path_jet  # noqa: E402


def main() -> None:
    args, n = bench_args(1000, 10000, 3)
    dev, K = args.device, args.alphas
    model, line, data = mlp_line(n, dev, "mse")
    x = data.x
    alphas = torch.linspace(0, 1, K, dtype=torch.float64)

    def plain():
        with torch.no_grad():
            for _ in range(K):
                model(x)

    rows = [("K plain forward passes (floor)", median_time(plain, dev, args.repeats))]
    rows.append(("Taylor mode (z, z′, z″ in one pass)", median_time(lambda: path_jet(line, data, alphas, method="taylor"), dev, args.repeats)))
    rows.append(("nested torch.func.jvp, vmap chunks of 8", median_time(lambda: path_jet(line, data, alphas, method="nested_jvp", alpha_chunk=8), dev, args.repeats)))
    print(f"MLP 784-1000-1000-10, n={n}, K={K}, float32 on {machine(dev)}; median of {args.repeats}")
    print(table(rows, rows[0][1], "plain"))
    print(f"  Taylor mode is {rows[2][1] / rows[1][1]:.2f}x faster than nested jvp")


if __name__ == "__main__":
    main()
