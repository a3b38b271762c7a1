"""The round-2 MLP + BatchNorm runs that round 2 left undecided, recertified with a longer budget.

    python experiments/bn_reach.py [--budget 300] [--jobs 2] [--out experiments/out/bn_reach]

Takes the converged BatchNorm MLP runs (``optim`` block, MLP 64-64-64-10 + BN; converged: the loss
the path evaluates at α = 1 under 0.05) of ``results/round2/full/results.csv`` whose certificate at
T = 0 or T = 1e-3 was ``unknown`` (round 2 gave each tolerance 30 s), retrains each from its
configuration in the round-2 design (``experiments/validate.py``; matched by the run id, so the same
seed and settings), then certifies the path exactly as the sweep does (``runs.sweep.certify_path``:
``bn=recompute``, float32 line, differential validation) at T = 1e-3 and T = 0 with ``--budget``
seconds each, one torch thread per process, ``--jobs`` processes. Appends one JSON row per run to
``rows.jsonl`` in ``--out`` (round 2's verdicts beside the new ones) and prints it; runs already there
are skipped. The rows of the run reported in ``experiments/README.md`` are in ``results/bn_reach/``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def _one(args: tuple[str, str, float, dict]) -> dict:
    cfg_json, out, budget, old = args
    from conv_reach import train_and_certify

    from mli_theory.runs import TrainConfig
    from mli_theory.runs.sweep import run_id

    cfg = TrainConfig(**json.loads(cfg_json))
    row = train_and_certify(cfg_json, os.path.join(out, run_id(cfg)), (1e-3, 0.0), budget)
    return {"id": run_id(cfg), "optimizer": old["opt"], "lr": cfg.lr, "seed": cfg.seed,
            "round2_final_loss_path": float(old["final_loss_path"]), "round2": {"T=0.001": old["cert@0.001"], "T=0": old["cert@0"]},
            **row}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=300.0, help="seconds per tolerance (default 300)")
    ap.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "bn_reach"), help="run folders and rows.jsonl")
    args = ap.parse_args(argv)
    from validate import design

    from mli_theory.runs.sweep import run_id

    with open(os.path.join(HERE, "results", "round2", "full", "results.csv")) as f:
        rows = list(csv.DictReader(f))
    wanted = {r["id"]: r for r in rows
              if r["experiment"] == "optim" and r["batchnorm"] == "True" and r["final_loss_path"]
              and float(r["final_loss_path"]) < 0.05
              and "unknown" in (r["cert@0"], r["cert@0.001"])}
    cfgs = [c for c in design(False)["optim"] if run_id(c) in wanted]
    missing = set(wanted) - {run_id(c) for c in cfgs}
    if missing:
        print(f"{len(missing)} run ids of results.csv are not in the design: {sorted(missing)}", file=sys.stderr)
        return 2
    from conv_reach import run_resumable

    jobs = {run_id(c): (json.dumps(dataclasses.asdict(c)), args.out, args.budget, wanted[run_id(c)]) for c in cfgs}
    run_resumable(args.out, "id", jobs, _one, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
