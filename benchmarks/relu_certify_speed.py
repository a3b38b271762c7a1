"""Certifying ReLU MLPs: this checkout against an older revision, side by side.

    python benchmarks/relu_certify_speed.py --against cf56e33 [--budget 300] [--quick] [--threads 2]

Trains (once, into a temporary folder, with the helpers of ``certify_speed.py``) the nets of the
"Second-order certificates" speed goals: the MLP 784-1000-1000-10 on 10 000 synthetic examples
labelled by a random teacher (SGD until CE < 0.05; T = 1e-4), the 64-512×5-10 digits MLP (Adam 1e-3,
30 epochs; T = 1e-4 and 0) and two 64-256-256-10 digits MLPs (SGD 0.05 and Adam 1e-3, 30 epochs;
T = 1e-3, 1e-4, 0). Then certifies each path with ``decide_by_enclosures`` (frozen statistics,
float64 line) under this checkout's library and under the one of ``--against`` (a temporary git
worktree), one process at a time, alternating, ``--threads`` torch threads each (the goals are
stated for 2 cores), each worker with the allocator setting its revision's command line makes
(:func:`mli_theory.runs.keep_freed_memory`, where it exists). Prints status, cells, rise bound and
seconds side by side with their ratio, and the load average before and after: take the figures on
a quiet machine.

``--quick``: the 64-256-256-10 nets only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import json, sys, time
root, folder, widths, tol, budget, threads = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
sys.path.insert(0, root)
import torch
from torch import nn
torch.set_num_threads(threads)
import mli_theory
assert mli_theory.__file__.startswith(root), mli_theory.__file__
try:  # what the command line of that revision does (revisions before it had no such setting)
    from mli_theory.runs.allocator import keep_freed_memory
    keep_freed_memory()
except ImportError:
    pass
from mli_theory.certify.partition import decide_by_enclosures
from mli_theory.inputs.data import Dataset
from mli_theory.path import make_line
w = [int(v) for v in widths.split("-")]
layers = []
for i in range(len(w) - 1):
    layers.append(nn.Linear(w[i], w[i + 1]))
    if i < len(w) - 2:
        layers.append(nn.ReLU())
model = nn.Sequential(*layers)
saved = torch.load(folder + "/run.pt", weights_only=True)
line = make_line(model, saved["init"], saved["final"], dtype=torch.float64)
data = Dataset(saved["x"].double(), saved["y"], "ce", "bench")
t = time.perf_counter()
v = decide_by_enclosures(line, data, tol=tol, deadline=time.perf_counter() + budget)
print(json.dumps({"status": v.status, "cells": v.cells, "bound": v.rise_bound, "seconds": time.perf_counter() - t}))
"""


def _train(out: str, quick: bool) -> list[tuple[str, str, str, tuple[float, ...]]]:
    """[(name, folder, widths, tolerances)] of the trained nets (run.pt: init, final, x, y)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    sys.path.insert(0, ROOT)
    import torch

    import certify_speed as cs
    from mli_theory.inputs import load_data

    torch.set_num_threads(2)
    runs = []

    def save(name, widths, tols, init, final, x, y):
        folder = os.path.join(out, f"r{len(runs)}")
        os.makedirs(folder)
        torch.save({"init": init, "final": final, "x": x, "y": y}, os.path.join(folder, "run.pt"))
        runs.append((name, folder, "-".join(map(str, widths)), tols))

    digits = load_data("sklearn:digits", "ce")
    for opt, lr in (("sgd", 0.05), ("adam", 1e-3)):
        torch.manual_seed(0)
        model = cs.mlp([64, 256, 256, 10])
        init, final, done, ce = cs.train(model, digits.x.float(), digits.y, opt=opt, lr=lr, epochs=30, seed=0)
        print(f"trained 64-256-256-10 {opt}: CE {ce:.3g}", flush=True)
        save(f"digits 64-256-256-10 {opt}", [64, 256, 256, 10], (1e-3, 1e-4, 0.0), init, final, digits.x, digits.y)
    if quick:
        return runs
    torch.manual_seed(0)
    model = cs.mlp([64, 512, 512, 512, 512, 512, 10])
    init, final, done, ce = cs.train(model, digits.x.float(), digits.y, opt="adam", lr=1e-3, epochs=30, seed=0)
    print(f"trained 64-512x5-10 adam: CE {ce:.3g}", flush=True)
    save("digits 64-512×5-10 adam", [64, 512, 512, 512, 512, 512, 10], (1e-4, 0.0), init, final, digits.x, digits.y)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10000, 784, generator=g)
    torch.manual_seed(123)
    teacher = cs.mlp([784, 256, 10])
    with torch.no_grad():
        logits = teacher(x)
        y = (logits - logits.mean(0)).argmax(1)
    torch.manual_seed(0)
    model = cs.mlp([784, 1000, 1000, 10])
    init, final, done, ce = cs.train(model, x, y, opt="sgd", lr=0.05, epochs=60, batch=128, seed=0, until=0.05)
    print(f"trained 784-1000-1000-10 sgd: CE {ce:.3g}", flush=True)
    save("synthetic 784-1000-1000-10, n = 10 000", [784, 1000, 1000, 10], (1e-4,), init, final, x, y)
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", required=True, help="the git revision to compare with (e.g. cf56e33)")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds per decision (default 300)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per decision (default 2)")
    ap.add_argument("--quick", action="store_true", help="the 64-256-256-10 nets only")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from _timing import against_table

    with tempfile.TemporaryDirectory() as tmp:
        runs = _train(os.path.join(tmp, "runs"), args.quick)
        from mli_theory.runs.sweep import cpu_name

        rows = [(name, [folder, widths], tols) for name, folder, widths, tols in runs]
        return against_table(ROOT, args.against, rows, WORKER,
                             lambda lib, data, tol: [lib, *data, str(tol), str(args.budget), str(args.threads)],
                             f"CPU {cpu_name()}, {os.cpu_count()} cores, {args.threads} torch threads per decision")


if __name__ == "__main__":
    sys.exit(main())
