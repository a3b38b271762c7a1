"""Reach of the certifier on the round-2 validation's convolutional nets (without BatchNorm, or with it).

    python experiments/conv_reach.py [--budget 300] [--jobs 2] [--out experiments/out/conv_reach] [--net cnn|resnet] [--bn] [--tols 1e-3 0]

Trains every run of the round-2 design's ``conv`` block whose net has no BatchNorm (the digits CNN
and the small ResNet; SGD + momentum at lr 0.01, 0.03, 0.1 and Adam at 1e-3, 3e-3, 1e-2; seeds 0
and 1; 30 epochs; ``experiments/validate.py``), then certifies each path exactly as the sweep does
(``runs.sweep.certify_path``: float32 line, the check's contract, ``--budget`` seconds per
tolerance, one torch thread per process, ``--jobs`` processes): the CNN at T = 1e-3 and T = 0, the
ResNet at T = 1e-3 (as round 2 did; ``--tols`` sets the tolerances of every net). Appends one JSON row per run to ``rows.jsonl`` in ``--out``
(name, final training loss, wall seconds of training and certificates, and per tolerance: status,
cells, seconds) and prints them; runs already in that file are skipped, so the script resumes.
The rows of the run reported in ``experiments/README.md`` are in ``results/conv_reach/``.

Round 2 certified these nets with 30 s per tolerance; the ResNet was decided in 0 of its runs.

``--bn``: the same design's nets *with* BatchNorm instead (``digits_cnn_bn``, ``digits_resnet_bn``),
certified under ``bn=recompute`` as the sweep does (BatchNorm statistics re-estimated at every α),
the CNN at T = 1e-3 and T = 0, the ResNet at T = 1e-3; rows go to ``rows.jsonl`` of ``--out``
(default ``out/conv_reach_bn``). Round 2 decided 0 of the 12 CNN + BN runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def _name(cfg) -> str:
    bn = "_bn" if cfg.arch.endswith("_bn") else ""
    return f"{cfg.extra['net']}{bn}_{cfg.extra['opt']}_{cfg.lr}_s{cfg.seed}"


def train_and_certify(cfg_json: str, folder: str, tols: tuple[float, ...], budget: float) -> dict:
    """Train the run ``cfg_json`` into ``folder`` and certify its path on digits as the sweep does
    (one torch thread): a row with the final training loss, the wall seconds of both, and per
    tolerance [status, cells, seconds]."""
    import torch

    torch.set_num_threads(1)
    from mli_theory.inputs.arch import build_model, parse_arch
    from mli_theory.inputs.checkpoint import load_state_dict
    from mli_theory.inputs.data import load_data
    from mli_theory.runs import TrainConfig
    from mli_theory.runs.config import run_training
    from mli_theory.runs.sweep import certify_path

    cfg = TrainConfig(**json.loads(cfg_json))
    t0 = time.perf_counter()
    res = run_training(cfg, folder)
    init, final = load_state_dict(os.path.join(folder, "init.pt")), load_state_dict(os.path.join(folder, "final.pt"))
    got = certify_path(build_model(parse_arch(cfg.arch)), init, final, load_data("sklearn:digits", "ce"), tols, budget)
    row = {"final_loss": res.final_loss, "wall_s": round(time.perf_counter() - t0, 1)}  # training + certificates
    for tol, (cert, secs) in got.items():
        row[f"T={tol:g}"] = [cert.status, getattr(cert, "cells", None), round(secs, 1)]
    return row


def _one(args: tuple[str, str, float, tuple[float, ...] | None]) -> dict:
    cfg_json, out, budget, tols = args
    from mli_theory.runs import TrainConfig

    cfg = TrainConfig(**json.loads(cfg_json))
    if tols is None:  # as round 2 did
        tols = (1e-3, 0.0) if cfg.extra["net"] == "cnn" else (1e-3,)
    return {"name": _name(cfg), **train_and_certify(cfg_json, os.path.join(out, _name(cfg)), tols, budget)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=300.0, help="seconds per tolerance (default 300)")
    ap.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--out", default=None, help="run folders and rows.jsonl (default out/conv_reach, with --bn out/conv_reach_bn)")
    ap.add_argument("--net", choices=("cnn", "resnet"), default=None, help="one of the two nets only")
    ap.add_argument("--bn", action="store_true", help="the nets with BatchNorm (bn=recompute) instead of those without")
    ap.add_argument("--tols", type=float, nargs="+", default=None,
                    help="tolerances for every net (default: the CNN at 1e-3 and 0, the ResNet at 1e-3, as round 2)")
    args = ap.parse_args(argv)
    if args.tols is not None and (not args.tols or any(not (t >= 0.0) or t == float("inf") for t in args.tols)):
        print("conv_reach: --tols takes finite tolerances >= 0", file=sys.stderr)
        return 2
    from validate import design

    if args.out is None:
        args.out = os.path.join(HERE, "out", "conv_reach_bn" if args.bn else "conv_reach")
    cfgs = [c for c in design(False)["conv"] if c.arch.endswith("_bn") == args.bn and args.net in (None, c.extra["net"])]
    run_resumable(args.out, "name", {_name(c): (json.dumps(dataclasses.asdict(c)), args.out, args.budget, None if args.tols is None else tuple(args.tols))
                                        for c in cfgs}, _one, args.jobs)
    return 0


def run_resumable(out: str, key: str, jobs: dict[str, tuple], worker, processes: int) -> None:
    """Run ``worker`` on the jobs {id: args} whose id is not yet under ``key`` in ``out``/rows.jsonl,
    in ``processes`` processes, appending (and printing) each row as it ends: an interrupted run
    resumes where it stopped."""
    os.makedirs(out, exist_ok=True)
    rows_path = os.path.join(out, "rows.jsonl")
    done = set()
    if os.path.exists(rows_path):
        with open(rows_path) as f:
            done = {json.loads(line)[key] for line in f if line.strip()}
    todo = [args for name, args in jobs.items() if name not in done]
    print(f"{len(jobs)} runs, {len(todo)} to do", flush=True)
    with ProcessPoolExecutor(max(1, processes)) as ex, open(rows_path, "a") as f:
        for row in ex.map(worker, todo):
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")
            f.flush()


if __name__ == "__main__":
    sys.exit(main())
