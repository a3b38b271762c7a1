"""The convex-end certificate at tolerance 0, side by side with first-order cells alone.

    python benchmarks/convex_end.py [--quick] [--budget S] [--require-quiet]

Digits MLPs (sklearn digits, 1 797 examples, float64 decisions), ReLU and tanh, cross-entropy and
MSE (one-hot targets), trained with SGD + momentum for E epochs; each run is checked twice at
T = 0: as trained, and with θT moved to the minimiser of L along the line (Newton on α) and then
stopped just short of it (θ(α*·(1 − 1e-9)): L′(1) ≈ −1e-9·L″, the "stationary end" of a converged
run). For each: the verdict and time with ``convex=True`` (the default) and ``convex=False``
(first-order cells only, the method before), the convex end c, and L′(1)'s proven interval.

Prints the load average with the timings (take them on a quiet machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(__file__))

from _timing import add_quiet_flag, quiet_run  # noqa: E402
from certify_round3 import _train  # noqa: E402
from mli_theory.certify.partition import decide_by_enclosures, enclose, plain_loss, prepare  # noqa: E402
from mli_theory.inputs.data import Dataset, load_data  # noqa: E402
from mli_theory.path import BNPolicy, make_line  # noqa: E402


def _mlp(sizes: list[int], act: type[nn.Module]) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _line_minimum(line, data) -> float:
    problem = prepare(line, data, BNPolicy.FROZEN)
    a = 1.0
    for _ in range(30):
        lo, hi = enclose(problem, [a], [a])[0][0]
        h = 1e-4
        curv = (plain_loss(problem, a + h) - 2 * plain_loss(problem, a) + plain_loss(problem, a - h)) / h**2
        if not curv > 0:
            break
        step = (lo + hi) / 2 / curv
        a -= step
        if abs(step) < 1e-15:
            break
    return a


def _decide(line, data, convex: bool, budget: float):
    t = time.perf_counter()
    v = decide_by_enclosures(line, data, tol=0.0, bn=BNPolicy.FROZEN, deadline=time.perf_counter() + budget, convex=convex)
    return v, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed per model")
    ap.add_argument("--budget", type=float, default=60.0, help="proof budget per decision, seconds")
    ap.add_argument("--epochs", type=int, default=40)
    add_quiet_flag(ap)
    args = ap.parse_args()
    with quiet_run(args.require_quiet):
        d = load_data("sklearn:digits", "ce")
        x = d.x.float()
        seeds = [0] if args.quick else [0, 1, 2]
        print(f"Digits, n = {x.shape[0]}, T = 0, budget {args.budget:g} s per decision; SGD+momentum lr 0.05, {args.epochs} epochs")
        print(f"  {'model':<22} {'loss':<4} {'seed':>4} {'end':<10} {'L′(1) proven in':<28} "
              f"{'convex end: verdict':<20} {'s':>6} {'c':>10}   {'first order only':<18} {'s':>6}")
        totals = {"with": 0, "without": 0, "runs": 0}
        for act, width in ((nn.ReLU, 256), (nn.Tanh, 256)):
            for loss in ("ce", "mse"):
                for seed in seeds:
                    model = _mlp([64, width, width, 10], act)
                    y = d.y if loss == "ce" else F.one_hot(d.y, 10).float()
                    init, final = _train(model, x, y, "sgd", 0.05, args.epochs, seed, loss)
                    data = Dataset(d.x.to(torch.float64), d.y if loss == "ce" else F.one_hot(d.y, 10).to(torch.float64), loss, "digits")
                    line = make_line(model, init, final, dtype=torch.float64)
                    star = _line_minimum(line, data)
                    stopped = {k: init[k] + star * (1 - 1e-9) * (final[k] - init[k]) for k in init}
                    for label, ln in (("trained", line), ("stationary", make_line(model, init, stopped, dtype=torch.float64))):
                        lo1, hi1 = enclose(prepare(ln, data, BNPolicy.FROZEN), [1.0], [1.0])[0][0]
                        v1, t1 = _decide(ln, data, True, args.budget)
                        v0, t0 = _decide(ln, data, False, args.budget)
                        totals["runs"] += 1
                        totals["with"] += v1.status != "unknown"
                        totals["without"] += v0.status != "unknown"
                        c = f"{v1.convex_end:.6g}" if v1.convex_end is not None else "—"
                        print(f"  64-{width}-{width}-10 {act.__name__:<6} {loss:<4} {seed:>4} {label:<10} [{lo1:.3g}, {hi1:.3g}]".ljust(90)
                              + f"{v1.status:<20} {t1:6.1f} {c:>10}   {v0.status:<18} {t0:6.1f}", flush=True)
                        if v1.status == "unknown":
                            print(f"      why: {v1.reason[:220]}")
        print(f"\nDecided at T = 0: {totals['with']}/{totals['runs']} with the convex end, {totals['without']}/{totals['runs']} with first-order cells only")


if __name__ == "__main__":
    main()
