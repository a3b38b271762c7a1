"""Research validation: the MLI paper's claims tested with fair designs and intervals.

    python experiments/validate.py --round 3 --quick   # round 3 (the current one): see round3.py
    python experiments/validate.py --round 3           # its full design
    python experiments/validate.py --quick     # round 2: a subset (2 seeds, 4 of the 9 lrs, the CNN only)
    python experiments/validate.py             # round 2: the full design (5 seeds; 2 for the conv nets)
    python experiments/validate.py --analyse   # only re-read the finished runs and regenerate

The rest of this docstring is round 2.

Each command trains and checks every run not finished yet (the sweep runner of
``mli_theory.runs``: parallel, resumable; run folders under ``experiments/out/round2/``, not in
git), then writes ``experiments/results/round2/{quick,full}/``: ``results.csv`` (one row per run,
diverged and failed runs included), ``tables.md``, ``summary.json`` and the plots, and regenerates
the verdict section of ``experiments/README.md`` (between the ``round2`` markers) from them. The
quick design is a subset of the full one (same epochs and grids), so a full run after a quick one
reuses the quick runs.

Design (digits = ``sklearn:digits``, 1797 × 64, 10 classes, cross-entropy):

* ``optim``: MLP 64-64-64-10 ReLU with and without BatchNorm; SGD without momentum, SGD with
  momentum 0.9 and Adam, each on a log-spaced learning-rate grid of 9 values (quarter-decade
  steps) that runs from too slow to converge in 30 epochs up to divergence; 5 seeds per cell.
* ``push``: the bounded push. θ is kept in {‖θ − θ0‖ ≥ ρ‖θ0‖} by projection after every step,
  ρ ∈ {0, 1, 2, 4}; SGD(0.9) lr 0.03 and Adam lr 0.00316 (both converge unpushed); no BatchNorm; 5 seeds.
* ``anneal``: the learning-rate-decay control of end rises: the no-BatchNorm ``optim`` runs at the
  four learning rates below the largest one (the decade under the divergent end of each grid), retrained with the learning rate decayed
  linearly to 0 over the last 25 % of the steps (same seed, so same θ0 and data order).
* ``conv``: a small CNN and a small ResNet on digits as 1 × 8 × 8 images
  (``mli_theory.inputs.convnets``), with and without BatchNorm; SGD(0.9) lr {0.01, 0.03, 0.1},
  Adam lr {1e-3, 3e-3, 1e-2}; 2 seeds; 30 epochs.

Every run is checked like ``mli-theory check``: float32, 50-point grid, BatchNorm statistics
re-estimated at every α (the reference's policy), and certified on all of [0, 1] at T = 0 and
T = 1e-3 where the enclosure method applies (30 s of proof work per tolerance and run).
A run counts as converged when the loss the path evaluates at α = 1 (re-estimated statistics) is
under 0.05.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def _library(argv: list[str]) -> str:
    """``--library DIR``: the checkout whose ``mli_theory`` trains, checks and certifies (default:
    this one). Read before anything is imported, so that every run uses that version; round 3's edge
    block is certified by one library version throughout (see experiments/README.md)."""
    for i, a in enumerate(argv):
        if a == "--library" and i + 1 < len(argv):
            return os.path.abspath(argv[i + 1])
        if a.startswith("--library="):
            return os.path.abspath(a.split("=", 1)[1])
    return os.path.dirname(HERE)


LIBRARY = _library(sys.argv[1:] if __name__ == "__main__" else [])
if not os.path.isfile(os.path.join(LIBRARY, "mli_theory", "__init__.py")):
    print(f"--library {LIBRARY}: no mli_theory package there", file=sys.stderr)
    sys.exit(2)
sys.path.insert(0, LIBRARY)

from mli_theory.runs import TrainConfig  # noqa: E402
from mli_theory.runs.executors import ExecutorOptions  # noqa: E402
from mli_theory.runs.sweep import grid, run_sweep, write_csv  # noqa: E402

THRESHOLD = 0.05  # digits CE, on the path's loss at α = 1
EPS = 1e-3  # the paper's threshold for "non-monotone" on MNIST
TOLS = (0.0, 1e-3)
MLP = "mlp:64-64-64-10"


def _log_grid(lo_exp: int, hi_exp: int) -> list[float]:
    """10^(k/4) for k = lo_exp … hi_exp: quarter-decade steps, three significant digits."""
    return [float(f"{10 ** (k / 4):.3g}") for k in range(lo_exp, hi_exp + 1)]


# each grid: 9 values, from too slow to converge in 30 epochs up to divergence
LRS = {
    "sgd": _log_grid(-6, 2),  # 0.0316 … 3.16
    "sgd_m": _log_grid(-8, 0),  # 0.01 … 1
    "adam": _log_grid(-12, -4),  # 0.001 … 0.1
}
OPTIMISERS = {"sgd": ("sgd", 0.0), "sgd_m": ("sgd", 0.9), "adam": ("adam", 0.9)}
CONV = {
    "cnn": "mli_theory.inputs.convnets:digits_cnn",
    "cnn_bn": "mli_theory.inputs.convnets:digits_cnn_bn",
    "resnet": "mli_theory.inputs.convnets:digits_resnet",
    "resnet_bn": "mli_theory.inputs.convnets:digits_resnet_bn",
}
CONV_LRS = {"sgd_m": [0.01, 0.03, 0.1], "adam": [1e-3, 3e-3, 1e-2]}
EPOCHS, CONV_EPOCHS = 30, 30


def _opt(name: str) -> dict[str, Any]:
    optimizer, momentum = OPTIMISERS[name]
    return {"optimizer": optimizer, "momentum": momentum}


def _tag(cfgs: list[TrainConfig], **extra: Any) -> list[TrainConfig]:
    return [replace(c, extra={**c.extra, **extra}) for c in cfgs]


def design(quick: bool) -> dict[str, list[TrainConfig]]:
    """Experiment name → configs. The quick design is a subset of the full one."""
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    base = {"data": "sklearn:digits", "loss": "ce", "epochs": EPOCHS, "batch_size": 64}
    optim: list[TrainConfig] = []
    anneal: list[TrainConfig] = []
    for name, lrs in LRS.items():
        for bn in (False, True):
            use = lrs if not quick else lrs[1::2]  # quick: every other learning rate (4 of 9)
            cfgs = grid({**base, **_opt(name), "arch": MLP + (":bn" if bn else "")}, {"lr": use, "seed": seeds})
            optim += _tag(cfgs, opt=name)
        top = lrs[-5:-1] if not quick else [lrs[-4], lrs[-2]]
        cfgs = grid({**base, **_opt(name), "arch": MLP, "anneal": 0.25}, {"lr": top, "seed": seeds})
        anneal += _tag(cfgs, opt=name)
    rhos = [0.0, 2.0, 4.0] if quick else [0.0, 1.0, 2.0, 4.0]
    push = _tag(grid({**base, **_opt("sgd_m"), "arch": MLP, "lr": 0.03}, {"min_distance": rhos, "seed": seeds}), opt="sgd_m")
    if not quick:
        push += _tag(grid({**base, **_opt("adam"), "arch": MLP, "lr": LRS["adam"][2]}, {"min_distance": rhos, "seed": seeds}), opt="adam")
    conv: list[TrainConfig] = []
    conv_seeds = [0] if quick else [0, 1]
    for net, arch in CONV.items():
        if quick and net.startswith("resnet"):
            continue  # quick: the CNN only (the ResNet is never certified within the budget anyway)
        for name, lrs in CONV_LRS.items():
            use = lrs if not quick else lrs[1:2]
            conv += _tag(grid({**base, **_opt(name), "epochs": CONV_EPOCHS, "arch": arch}, {"lr": use, "seed": conv_seeds}),
                         opt=name, net=net.removesuffix("_bn"))
    return {"optim": optim, "anneal": anneal, "push": push, "conv": conv}


def run(quick: bool, executor: ExecutorOptions, out_root: str) -> dict[str, list[dict]]:
    """Train and check every run not finished yet; experiment name → result rows."""
    rows: dict[str, list[dict]] = {}
    for name, cfgs in design(quick).items():
        conv = name == "conv"
        # the conv nets: no geometry (a ReLU CNN's Gauss length needs hundreds of α); the ResNet is
        # certified at T = 1e-3 only (the enclosure method rarely decides it within the budget)
        if conv:
            resnets = [c for c in cfgs if c.extra.get("net") == "resnet"]
            others = [c for c in cfgs if c.extra.get("net") != "resnet"]
            got = run_sweep(others, os.path.join(out_root, name), executor=executor, geometry=False, tols=TOLS)
            got += run_sweep(resnets, os.path.join(out_root, name + "_resnet"), executor=executor, geometry=False, tols=(EPS,))
        else:
            got = run_sweep(cfgs, os.path.join(out_root, name), executor=executor, geometry=True, tols=TOLS)
        rows[name] = [{**r, "experiment": name} for r in got]
    return rows


STALE = "not enclosed yet"  # the reason older code gave for BatchNorm under recompute


def _needs_certificate(row: dict) -> bool:
    """A converged run whose certificates predate BatchNorm-recompute certification."""
    from validate_analysis import converged  # noqa: E402

    return converged(row) and any(STALE in str(row.get(k) or "") for k in row if k.startswith("cert_reason@"))


def _recertify_one(args: tuple[dict, str]) -> dict:
    """Certify one finished run again at every tolerance it has, with the current certifier."""
    import json
    import time

    import torch

    from mli_theory.certify import certify
    from mli_theory.inputs.arch import build_model
    from mli_theory.inputs.checkpoint import load_state_dict
    from mli_theory.inputs.data import load_data
    from mli_theory.path import make_line
    from mli_theory.path.curve import data_on_line
    from mli_theory.runs.sweep import witness_text

    row, folder = args
    torch.set_num_threads(1)
    line = make_line(build_model(row["arch"]), load_state_dict(os.path.join(folder, "init.pt")),
                     load_state_dict(os.path.join(folder, "final.pt")), dtype=torch.float32)
    data = data_on_line(line, load_data(row["data"], row["loss"]), "recompute")
    out = dict(row)
    for key in [k for k in row if k.startswith("cert@")]:
        tol = float(key.split("@", 1)[1])
        t0 = time.perf_counter()
        c = certify(line, data, tol=tol, budget_s=30.0, conditions=False, bn="recompute").certificate
        out[key] = c.status
        out[f"rise_bound@{key[5:]}"] = c.rise_bound
        out[f"witness@{key[5:]}"] = witness_text(c.status, c.where)
        out[f"cells@{key[5:]}"] = c.cells
        out[f"cert_s@{key[5:]}"] = round(time.perf_counter() - t0, 4)
        out[f"cert_reason@{key[5:]}"] = (c.reason or "")[:200]
    first = [k for k in row if k.startswith("cert@")][0]
    out.update(certificate=out[first], certificate_method="enclosure_bisection" if out[first] != "unknown" else None,
               rise_bound=out[f"rise_bound@{first[5:]}"], certificate_cells=out[f"cells@{first[5:]}"], recertified=True)
    with open(os.path.join(folder, "result.json"), "w") as fh:
        json.dump(out, fh)
    return out


def recertify(rows: dict[str, list[dict]], out_root: str, jobs: int) -> None:
    """Certify again, in place, the converged runs whose certificates an older certifier could not
    give (BatchNorm under re-estimated statistics); their result.json is rewritten."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    todo = []
    for name, rs in rows.items():
        for i, r in enumerate(rs):
            if _needs_certificate(r):
                for sub in (name, name + "_resnet"):
                    folder = os.path.join(out_root, sub, "runs", r["id"])
                    if os.path.isdir(folder):
                        todo.append((name, i, r, folder))
                        break
    if not todo:
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        done = pool.map(_recertify_one, [(r, f) for _, _, r, f in todo])
        for (name, i, _, _), new in tqdm(zip(todo, done), total=len(todo), desc="recertify", unit="run"):
            rows[name][i] = {**new, "experiment": name}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the quick subset (< 15 min on 2 cores)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    ap.add_argument("--executor", choices=["local", "dask", "slurm"], default="local", help="where the runs execute (README: sweeps)")
    ap.add_argument("--scheduler", default=None, help="dask: address of a running scheduler")
    ap.add_argument("--slurm-partition", default=None, help="slurm: partition")
    ap.add_argument("--analyse", action="store_true", help="do not train: analyse the finished runs only")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite experiments/README.md")
    ap.add_argument("--round", type=int, choices=[2, 3], default=2, dest="round_", help="which round's design (3: the current one)")
    ap.add_argument("--library", default=None, help="a checkout whose mli_theory the runs use (e.g. a git worktree of an older commit)")
    ap.add_argument("--runs", default=None, help="folder of the run folders (default experiments/out/round<N>)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: must be at least 1")
    if args.runs is None:
        args.runs = os.path.join(HERE, "out", f"round{args.round_}")
    import mli_theory

    if not os.path.abspath(mli_theory.__file__).startswith(os.path.join(LIBRARY, "")):
        ap.error(f"mli_theory was imported from {mli_theory.__file__}, not from --library {LIBRARY}")
    if args.round_ == 3:
        return _round3(args)
    label = "quick" if args.quick else "full"
    out_root = args.runs
    results = os.path.join(HERE, "results", "round2", label)
    os.makedirs(results, exist_ok=True)
    if args.analyse:
        from mli_theory.runs.sweep import collect

        rows = {}
        for name, cfgs in design(args.quick).items():
            if name == "conv":
                got = collect(os.path.join(out_root, name), cfgs) + collect(os.path.join(out_root, name + "_resnet"), cfgs)
                seen, uniq = set(), []
                for r in got:
                    if r["id"] not in seen:
                        seen.add(r["id"])
                        uniq.append(r)
                got = uniq
            else:
                got = collect(os.path.join(out_root, name), cfgs)
            rows[name] = [{**r, "experiment": name} for r in got]
    else:
        options = ExecutorOptions(args.executor, jobs=args.jobs, scheduler=args.scheduler, slurm_partition=args.slurm_partition)
        rows = run(args.quick, options, out_root)
        recertify(rows, out_root, args.jobs)
    write_csv([r for rs in rows.values() for r in rs], os.path.join(results, "results.csv"))
    from validate_analysis import analyse  # noqa: E402  (experiments/validate_analysis.py)

    analyse(rows, results, label=label, design=design(args.quick), readme=None if args.no_readme else os.path.join(HERE, "README.md"))
    return 0


def _round3(args) -> int:
    import json

    from round3 import restore, run  # noqa: E402  (experiments/round3.py)
    from round3_analysis import analyse  # noqa: E402

    label = "quick" if args.quick else "full"
    results = os.path.join(HERE, "results", "round3", label)
    os.makedirs(results, exist_ok=True)
    for lab in ("full", "quick"):  # the committed rows: a fresh clone resumes instead of retraining
        n = restore(os.path.join(HERE, "results", "round3", lab, "results.jsonl"), args.runs)
        if n:
            print(f"restored {n} finished runs from results/round3/{lab}/results.jsonl", file=sys.stderr)
    options = ExecutorOptions(args.executor, jobs=args.jobs, scheduler=args.scheduler, slurm_partition=args.slurm_partition)
    rows = run(args.quick, options, args.runs, train=not args.analyse)
    if not args.analyse:
        if LIBRARY == os.path.dirname(HERE):  # the primary outcome again with this checkout's certifier (README: deviation)
            from round3 import recertify  # noqa: E402

            n = recertify(rows, args.runs, args.jobs)
            if n:
                print(f"certified {n} runs again at the primary tolerance with this checkout's library", file=sys.stderr)
        else:
            print("--library: runs first certified by the pre-registration commit's library are not certified again", file=sys.stderr)
    flat = [{**r, "block": name} for name, rs in rows.items() for r in rs]
    write_csv(flat, os.path.join(results, "results.csv"))
    with open(os.path.join(results, "results.jsonl"), "w") as fh:
        for r in flat:
            fh.write(json.dumps({k: v for k, v in r.items() if k != "traceback"}) + "\n")
    from round3 import planned  # noqa: E402

    plan = planned(args.quick, rows.get("pilot", []))
    missing = {k: n - len(rows.get(k, [])) for k, n in plan.items() if len(rows.get(k, [])) < n}
    if missing:  # an interim look: tables for the record, never the README's verdicts
        label += " (interim: " + ", ".join(f"{k} {len(rows.get(k, []))}/{plan[k]}" for k in missing) + " runs finished)"
        print(f"the {label.split(' ')[0]} design is not finished; tables written, README left alone", file=sys.stderr)
    readme = None if args.no_readme or missing else os.path.join(HERE, "README.md")
    analyse(rows, results, label=label, readme=readme)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    sys.exit(main())
