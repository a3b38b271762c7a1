"""Certifying BatchNorm and convolutional nets: this checkout against an older revision.

    python benchmarks/bn_certify_speed.py --against 0251d77 [--budget 120] [--quick] [--set bn|conv|resnet_bn] [--threads 1]

Trains (once, into a temporary folder) the MLP 64-64-64-10 with BatchNorm of the round-3 validation at
three learning rates at the stability edge (SGD 0.178, SGD + momentum 0.178, Adam 0.1; digits,
30 epochs, seed 0) and the digits CNN with BatchNorm (SGD + momentum 0.03), then certifies each
path (``bn=recompute``, T = 1e-3; the CNN also at T = 0) with this checkout's certifier and with the
one of ``--against`` (a temporary git worktree), one process at a time, alternating, one torch
thread each. Prints cells, rise bound and seconds side by side and their ratio, and the load
average before and after: take the figures on a quiet machine.

``--set conv``: instead, the digits CNN and ResNet without BatchNorm of the research validation
(SGD + momentum 0.03 and Adam 3e-3, 30 epochs, seed 0; T = 1e-3 and 0), the nets whose ReLU kinks
the reverse walk now bounds through convolutions and average pooling; ``--threads 2`` for the
speed goals, which are stated for 2 cores.

``--set resnet_bn``: the digits ResNet with BatchNorm (SGD + momentum 0.03, 30 epochs, seed 0),
certified at T = 1e-3 under ``bn=frozen`` (where the reverse walk passes through BatchNorm) and
under ``bn=recompute`` (where it is only an option of the screening).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODELS = {
    "MLP+BN SGD 0.178": dict(arch="mlp:64-64-64-10:bn", optimizer="sgd", momentum=0.0, lr=0.178),
    "MLP+BN SGD-m 0.178": dict(arch="mlp:64-64-64-10:bn", optimizer="sgd", momentum=0.9, lr=0.178),
    "MLP+BN Adam 0.1": dict(arch="mlp:64-64-64-10:bn", optimizer="adam", momentum=0.9, lr=0.1),
    "CNN+BN SGD-m 0.03": dict(arch="mli_theory.inputs.convnets:digits_cnn_bn", optimizer="sgd", momentum=0.9, lr=0.03),
}
RESNET_BN = {
    "ResNet+BN SGD-m 0.03": dict(arch="mli_theory.inputs.convnets:digits_resnet_bn", optimizer="sgd", momentum=0.9, lr=0.03),
}
CONV_MODELS = {
    "CNN SGD-m 0.03": dict(arch="mli_theory.inputs.convnets:digits_cnn", optimizer="sgd", momentum=0.9, lr=0.03),
    "ResNet SGD-m 0.03": dict(arch="mli_theory.inputs.convnets:digits_resnet", optimizer="sgd", momentum=0.9, lr=0.03),
    "ResNet Adam 3e-3": dict(arch="mli_theory.inputs.convnets:digits_resnet", optimizer="adam", momentum=0.9, lr=3e-3),
}
WORKER = r"""
import json, os, sys, time
root, folder, arch, policy, tol, budget, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
sys.path.insert(0, root)
import torch
torch.set_num_threads(threads)
import mli_theory
assert mli_theory.__file__.startswith(root), mli_theory.__file__
try:  # what the command line of that revision does (revisions before it had no such setting)
    from mli_theory.runs.allocator import keep_freed_memory
    keep_freed_memory()
except ImportError:
    pass
from mli_theory.certify.partition import decide_by_enclosures
from mli_theory.inputs.arch import build_model, parse_arch
from mli_theory.inputs.checkpoint import load_state_dict
from mli_theory.inputs.data import load_data
from mli_theory.path import make_line
from mli_theory.path.curve import data_on_line
from mli_theory.path.line import BNPolicy
line = make_line(build_model(parse_arch(arch)), load_state_dict(os.path.join(folder, "init.pt")),
                 load_state_dict(os.path.join(folder, "final.pt")), dtype=torch.float32)
data = data_on_line(line, load_data("sklearn:digits", "ce"), policy)
t = time.perf_counter()
v = decide_by_enclosures(line, data, tol=tol, bn=BNPolicy(policy), deadline=time.perf_counter() + budget)
print(json.dumps({"status": v.status, "cells": v.cells, "bound": v.rise_bound, "seconds": time.perf_counter() - t}))
"""


def _train(out: str, quick: bool, models: dict[str, dict]) -> dict[str, str]:
    sys.path.insert(0, ROOT)
    import torch

    from mli_theory.runs import TrainConfig
    from mli_theory.runs.config import run_training

    torch.set_num_threads(1)
    folders = {}
    for i, (name, kw) in enumerate(models.items()):
        if quick and models is MODELS and i not in (0, 3):
            continue
        folder = os.path.join(out, f"m{i}")
        cfg = TrainConfig(data="sklearn:digits", loss="ce", epochs=30, batch_size=64, seed=0, **kw)
        res = run_training(cfg, folder)
        print(f"trained {name}: final loss {res.final_loss:.4g}", flush=True)
        folders[name] = folder
    return folders


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", required=True, help="the git revision to compare with (e.g. 0251d77)")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds per decision (default 120)")
    ap.add_argument("--quick", action="store_true", help="one MLP and the CNN only (--set bn)")
    ap.add_argument("--set", choices=("bn", "conv", "resnet_bn"), default="bn",
                    help="BatchNorm nets (default), the CNN and ResNet without BatchNorm, or the ResNet with BatchNorm under frozen and recompute")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per decision (default 1)")
    args = ap.parse_args(argv)
    models = {"bn": MODELS, "conv": CONV_MODELS, "resnet_bn": RESNET_BN}[args.set]
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from _timing import against_table

    with tempfile.TemporaryDirectory() as tmp:
        folders = _train(os.path.join(tmp, "runs"), args.quick, models)
        from mli_theory.runs.sweep import cpu_name

        both = ("CNN", "ResNet SGD")
        if args.set == "resnet_bn":
            runs = [(f"{name} {policy}", [folder, models[name]["arch"], policy], (1e-3,)) for name, folder in folders.items()
                    for policy in ("frozen", "recompute")]
        else:
            runs = [(name, [folder, models[name]["arch"], "recompute"], (1e-3, 0.0) if name.startswith(both) else (1e-3,))
                    for name, folder in folders.items()]
        return against_table(ROOT, args.against, runs, WORKER, lambda lib, data, tol: [lib, *data, str(tol), str(args.budget), str(args.threads)],
                             f"CPU {cpu_name()}, {os.cpu_count()} cores, {args.threads} torch thread(s) per decision")


if __name__ == "__main__":
    sys.exit(main())
