"""Benchmark: the K-point loss curve against K plain forward passes and loss-landscapes.

    python benchmarks/curve_speed.py [--quick | --smoke] [--device cpu|cuda] [--alphas 51] [--require-quiet]

Prints milliseconds and ratios to the K plain forward passes (the floor for exact curves),
measured side by side in one run.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _timing import bench_args, machine, median_time, mlp_line, quiet_run, table  # noqa: E402

from mli_theory.path import loss_curve  # noqa: E402


def main() -> None:
    args, n = bench_args(2000, 10000, 5)
    with quiet_run(args.require_quiet):
        run(args, n)


def run(args, n: int) -> None:
    dev, K = args.device, args.alphas
    model, line, data = mlp_line(n, dev, "ce")
    x, y = data.x, data.y
    alphas = [i / (K - 1) for i in range(K)]
    lossf = nn.CrossEntropyLoss()

    def plain():
        with torch.no_grad():
            for _ in range(K):
                lossf(model(x), y).item()

    rows = [("K plain forward passes (floor)", median_time(plain, dev, args.repeats))]
    rows.append(("mli-theory loss_curve, loop over α", median_time(lambda: loss_curve(line, data, alphas, alpha_chunk=1), dev, args.repeats)))
    rows.append(("mli-theory loss_curve, vmap chunks of 8", median_time(lambda: loss_curve(line, data, alphas, alpha_chunk=8), dev, args.repeats)))
    try:
        import copy

        import loss_landscapes
        import loss_landscapes.metrics

        m0, m1 = copy.deepcopy(model), copy.deepcopy(model)
        m1.load_state_dict(line.end)
        metric = loss_landscapes.metrics.Loss(lossf, x, y)
        rows.append(("loss-landscapes linear_interpolation", median_time(lambda: loss_landscapes.linear_interpolation(m0, m1, metric, K, deepcopy_model=True), dev, args.repeats)))
    except ImportError:
        print("(loss-landscapes not installed: pip install loss-landscapes==3.0.6)")
    print(f"MLP 784-1000-1000-10, n={n}, K={K}, float32 on {machine(dev)}; median of {args.repeats}")
    print(table(rows, rows[0][1], "plain"))


if __name__ == "__main__":
    main()
