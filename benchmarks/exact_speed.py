"""Benchmark: the exact MLI decision for deep linear networks (whole decision, one CPU core).

    python benchmarks/exact_speed.py

Goals (issue): depth 4 / width 16 / 64 examples under 0.2 s; depth 8 / width 64 / 256 examples
under 5 s.
"""

from __future__ import annotations

import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _timing import add_quiet_flag, machine, quiet_run  # noqa: E402

from mli_theory.inputs import Dataset  # noqa: E402
from mli_theory.exact import decide_line  # noqa: E402
from mli_theory.path import make_line  # noqa: E402


def case(depth: int, width: int, n: int, dtype: torch.dtype):
    torch.manual_seed(depth * 1000 + width)
    model = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(depth)])
    init = {k: v.clone().to(dtype) for k, v in model.state_dict().items()}
    final = {k: v + 0.3 * torch.randn_like(v) / width**0.5 for k, v in init.items()}
    data = Dataset(torch.randn(n, width, dtype=dtype), torch.randn(n, width, dtype=dtype), "mse", "synthetic")
    return make_line(model, init, final, dtype=dtype), data


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_quiet_flag(ap)
    args = ap.parse_args()
    with quiet_run(args.require_quiet):
        torch.set_num_threads(1)
        print(f"exact decision on {machine('cpu')}; median of 3")
        print(f"  {'depth':>5} {'width':>5} {'n':>5} {'dtype':>8} {'seconds':>9} {'goal':>6}  verdict")
        for depth, width, n, goal in ((4, 16, 64, 0.2), (8, 64, 256, 5.0)):
            for dtype in (torch.float32, torch.float64):
                line, data = case(depth, width, n, dtype)
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    verdict, _ = decide_line(line, data, budget_s=None)
                    times.append(time.perf_counter() - t)
                times.sort()
                print(f"  {depth:>5} {width:>5} {n:>5} {str(dtype)[6:]:>8} {times[1]:>9.3f} {goal:>6}  {verdict.status}")


if __name__ == "__main__":
    main()
