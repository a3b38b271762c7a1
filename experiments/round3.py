"""Research validation, round 3: enough seeds where the claims live, confounds removed.

    python experiments/validate.py --round 3 --quick   # the quick form (about 10 min on 2 cores)
    python experiments/validate.py --round 3           # the full design (hours on 2 cores; resumable)
    python experiments/validate.py --round 3 --analyse # regenerate tables, figures and verdicts only

The design, the outcome, the tests and the multiplicity correction are fixed in advance: they are
written in ``experiments/README.md`` ("Round 3: pre-registration"), committed before any round-3
run was trained, and this module implements exactly that text. Data: ``sklearn:digits`` (1797 × 64,
10 classes, cross-entropy), the largest real dataset that ships with the package's dependencies.

Blocks (run folders under ``experiments/out/round3/<block>/``, not in git):

* ``pilot``: Adam + BatchNorm past round 2's grid (lr 0.178 … 3.16, quarter-decade steps, 5 seeds,
  no certificates) to find its stability edge, by round 2's rule (the largest learning rate at
  which at least half of the seeds converge).
* ``edge``: the MLP 64-64-64-10 ReLU, for every optimiser (SGD, SGD + momentum 0.9, Adam) × BatchNorm
  (without, with) at its stability edge E and one grid step below (E / 10^¼), seeds 0–19, each with a
  constant learning rate and an annealed twin (same seed, the learning rate decayed linearly to 0
  over the last 25 % of the steps). Runs are ordered by seed, so an interrupted sweep stays balanced.
* ``push``: the bounded push (‖θ − θ0‖ ≥ ρ‖θ0‖ by projection), ρ ∈ {0, 1, 2, 4}, SGD + momentum
  lr 0.03 and Adam lr 0.00316, seeds 0–9.
* ``threads``: the constant-lr runs at the edge, seeds 0–4, trained and checked again with 2 torch
  threads instead of 1 (reproducibility of verdicts across summation orders).
* ``scale``: wider and deeper MLPs (64-512×4-10, 64-1024×4-10, 64-512×8-10) trained 300 epochs
  with SGD + momentum (lr 0.01) and Adam (lr 0.001), seed 0, certified with 120 s per tolerance.

The quick form is a subset with the same configs (so a full run reuses it): the pilot, the edge
step only with seeds 0–1 (both twins), the push at ρ ∈ {0, 4} for SGD + momentum with seeds 0–1,
and the ``threads`` block for SGD at seeds 0–1.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from mli_theory.runs import TrainConfig  # noqa: E402
from mli_theory.runs.executors import ExecutorOptions  # noqa: E402
from mli_theory.runs.sweep import collect, grid, run_sweep  # noqa: E402

THRESHOLD = 0.05  # converged: the path's loss at α = 1 (statistics re-estimated) is under it
TOLS = (1e-3, 0.0)  # the pre-registered outcome is at T = 1e-3; T = 0 for the end-rise mechanism
MLP = "mlp:64-64-64-10"
STEP = 10 ** 0.25  # one grid step: a quarter decade
SEEDS, QUICK_SEEDS = list(range(20)), [0, 1]
OPTIMISERS = {"sgd": ("sgd", 0.0), "sgd_m": ("sgd", 0.9), "adam": ("adam", 0.9)}
# stability edges from round 2's committed full results (5 seeds per learning rate); Adam + BN's
# grid stopped below its edge (3/5 converged at its top value 0.1), so the pilot finds it
EDGES_ROUND2 = {("sgd", False): 0.562, ("sgd", True): 0.178, ("sgd_m", False): 0.178,
                ("sgd_m", True): 0.178, ("adam", False): 0.0316}
ADAM_BN_ROUND2_TOP = 0.1
PILOT_LRS = [0.178, 0.316, 0.562, 1.0, 1.78, 3.16]
PILOT_SEEDS = [0, 1, 2, 3, 4]
PUSH = {"sgd_m": 0.03, "adam": 0.00316}
RHOS = [0.0, 1.0, 2.0, 4.0]
PUSH_SEEDS = list(range(10))
SCALE_ARCHS = ["mlp:64-512-512-512-512-10", "mlp:64-1024-1024-1024-1024-10", "mlp:64-" + "-".join(["512"] * 8) + "-10"]
SCALE_LRS = {"sgd_m": 0.01, "adam": 0.001}
SCALE_EPOCHS, EPOCHS = 300, 30
BASE = {"data": "sklearn:digits", "loss": "ce", "epochs": EPOCHS, "batch_size": 64}


def _opt(name: str) -> dict[str, Any]:
    optimizer, momentum = OPTIMISERS[name]
    return {"optimizer": optimizer, "momentum": momentum}


def _lr(x: float) -> float:
    """Three significant digits, as the round-2 grids."""
    return float(f"{x:.3g}")


def _tag(cfgs: list[TrainConfig], **extra: Any) -> list[TrainConfig]:
    return [replace(c, extra={**c.extra, **extra}) for c in cfgs]


def pilot_design() -> list[TrainConfig]:
    cfgs = grid({**BASE, **_opt("adam"), "arch": MLP + ":bn"}, {"lr": PILOT_LRS, "seed": PILOT_SEEDS})
    return _tag(cfgs, opt="adam", block="pilot")


def converged(row: dict) -> bool:
    v = row.get("final_loss_path")
    try:
        return row.get("status") == "ok" and float(v) < THRESHOLD
    except (TypeError, ValueError):
        return False


def edge_from_pilot(rows: list[dict]) -> tuple[float, dict[float, tuple[int, int]]]:
    """Adam + BN's edge: the largest learning rate (round 2's top value 0.1 included, where 3 of 5
    converged) at which at least half of the seeds converge; also {lr: (converged, runs)}."""
    counts: dict[float, tuple[int, int]] = {}
    for r in rows:
        lr = float(r["lr"])
        k, n = counts.get(lr, (0, 0))
        counts[lr] = (k + converged(r), n + 1)
    edge = ADAM_BN_ROUND2_TOP
    for lr in sorted(counts):
        k, n = counts[lr]
        if n and 2 * k >= n:
            edge = max(edge, lr)
    return edge, counts


def edges(pilot_rows: list[dict]) -> dict[tuple[str, bool], float]:
    out = dict(EDGES_ROUND2)
    out[("adam", True)] = edge_from_pilot(pilot_rows)[0]
    return out


def edge_design(edge: dict[tuple[str, bool], float], quick: bool) -> list[TrainConfig]:
    """The edge block, ordered by seed (then step, cell, twin)."""
    seeds = QUICK_SEEDS if quick else SEEDS
    steps = [0] if quick else [0, -1]
    out: list[TrainConfig] = []
    for seed in seeds:
        for step in steps:
            for (name, bn), e in sorted(edge.items()):
                lr = _lr(e * STEP ** step)
                for anneal in (0.0, 0.25):
                    cfg = TrainConfig(**{**BASE, **_opt(name), "arch": MLP + (":bn" if bn else ""), "lr": lr,
                                         "seed": seed, "anneal": anneal})
                    out += _tag([cfg], opt=name, block="edge", step=step, edge_lr=e)
    return out


def push_design(quick: bool) -> list[TrainConfig]:
    seeds = QUICK_SEEDS if quick else PUSH_SEEDS
    opts = ["sgd_m"] if quick else list(PUSH)
    rhos = [0.0, 4.0] if quick else RHOS
    out = []
    for seed in seeds:
        for name in opts:
            cfgs = grid({**BASE, **_opt(name), "arch": MLP, "lr": PUSH[name], "seed": seed}, {"min_distance": rhos})
            out += _tag(cfgs, opt=name, block="push")
    return out


def threads_design(edge: dict[tuple[str, bool], float], quick: bool) -> list[TrainConfig]:
    """The constant-lr edge runs to repeat with 2 threads (same configs: the thread count is a
    property of the sweep, so these live in their own folder)."""
    seeds = QUICK_SEEDS if quick else SEEDS[:5]
    cells = [("sgd", False)] if quick else sorted(edge)
    return [c for c in edge_design(edge, quick=False) if c.seed in seeds and c.extra["step"] == 0 and c.anneal == 0.0
            and (c.extra["opt"], c.batchnorm) in cells]


def scale_design() -> list[TrainConfig]:
    out = []
    for arch in SCALE_ARCHS:
        for name, lr in SCALE_LRS.items():
            cfg = TrainConfig(**{**BASE, **_opt(name), "arch": arch, "lr": lr, "seed": 0, "epochs": SCALE_EPOCHS})
            out += _tag([cfg], opt=name, block="scale")
    return out


def restore(rows_path: str, out_root: str) -> int:
    """Recreate the ``result.json`` of every committed row (``results.jsonl``, one JSON row per run
    with its ``block``) whose run folder is missing, so a fresh clone resumes the sweep where the
    committed results stop instead of training them again. Returns how many were restored. The
    checkpoints are not restored (the analysis needs only the rows)."""
    import json

    if not os.path.isfile(rows_path):
        return 0
    done = 0
    with open(rows_path) as fh:
        for line in fh:
            row = json.loads(line)
            block = row.pop("block", None)
            if not block or "id" not in row:
                continue
            path = os.path.join(out_root, block, "runs", row["id"], "result.json")
            if not os.path.isfile(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as out:
                    json.dump({**row, "restored": True}, out)
                done += 1
    return done


RECERT = f"recert@{TOLS[0]:g}"  # the primary outcome's certificate, given again by a later library
RECERT_BLOCKS = {"edge": 30.0, "push": 30.0, "scale": 120.0}  # block → proof budget (as first certified)


def needs_recertificate(row: dict, block: str) -> bool:
    """A converged run of a block whose tests use the primary outcome (the edge block's constant-lr
    runs, the push and scale blocks), first certified by the library of the pre-registration commit
    d183bf2 (its rows carry no library fingerprint), and not yet certified again."""
    if block not in RECERT_BLOCKS or RECERT in row or row.get("env_library"):
        return False
    if block == "edge" and float(row.get("anneal") or 0.0) != 0.0:
        return False
    return converged(row)


def _recertify_one(args: tuple[dict, str, float]) -> dict:
    """Certify one finished run again at the primary tolerance with this checkout's library, as the
    sweep certified it (float32 line, statistics re-estimated, the check's curve for validation,
    one torch thread, the block's budget); the fields ``recert*`` are added to its result.json."""
    import json

    import torch

    from mli_theory.inputs.arch import build_model, parse_arch
    from mli_theory.inputs.checkpoint import load_state_dict
    from mli_theory.inputs.data import load_data
    from mli_theory.path.curve import LossCurve
    from mli_theory.runs.sweep import certify_path, library_fingerprint, witness_text

    row, folder, budget = args
    torch.set_num_threads(1)
    tol = TOLS[0]
    with open(os.path.join(folder, "curve.json")) as fh:
        c = json.load(fh)
    (cert, secs), = certify_path(build_model(parse_arch(row["arch"])), load_state_dict(os.path.join(folder, "init.pt")),
                                 load_state_dict(os.path.join(folder, "final.pt")), load_data(row["data"], row["loss"]), [tol], budget,
                                 LossCurve(tuple(c["alphas"]), tuple(c["losses"]), None)).values()
    key = f"{tol:g}"
    new = {RECERT: cert.status, f"recert_rise_bound@{key}": cert.rise_bound, f"recert_witness@{key}": witness_text(cert.status, cert.where),
           f"recert_cells@{key}": cert.cells, f"recert_s@{key}": round(secs, 4),
           f"recert_reason@{key}": (cert.reason or "")[:200], "recert_library": library_fingerprint()}
    path = os.path.join(folder, "result.json")
    with open(path) as fh:
        stored = json.load(fh)
    stored.update(new)
    with open(path, "w") as fh:
        json.dump(stored, fh)
    return {**row, **new}


def recertify(rows: dict[str, list[dict]], out_root: str, jobs: int) -> int:
    """Certify again, at the primary tolerance and with this checkout's library, every run that
    :func:`needs_recertificate` (in place: rows and result.json). Returns how many; runs whose
    checkpoints are not here (restored rows) are left as they are."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    todo = []
    for block, rs in rows.items():
        for i, r in enumerate(rs):
            folder = os.path.join(out_root, block, "runs", str(r.get("id")))
            if needs_recertificate(r, block) and os.path.isfile(os.path.join(folder, "final.pt")):
                todo.append((block, i, (r, folder, RECERT_BLOCKS[block])))
    if not todo:
        return 0
    # the slow ones (BatchNorm, the scale block) first, so two workers finish together
    todo.sort(key=lambda t: (t[0] != "scale", not t[2][0].get("batchnorm")))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for (block, i, _), new in tqdm(zip(todo, pool.map(_recertify_one, [t[2] for t in todo])), total=len(todo),
                                       desc="recertify", unit="run"):
            rows[block][i] = new
    return len(todo)


def planned(quick: bool, pilot_rows: list[dict]) -> dict[str, int]:
    """Block → the number of runs the design has (to tell a finished design from an interim one)."""
    edge = edges(pilot_rows)
    out = {"pilot": len(pilot_design()), "push": len(push_design(quick)), "threads": len(threads_design(edge, quick)),
           "edge": len(edge_design(edge, quick))}
    if not quick:
        out["scale"] = len(scale_design())
    return out


def run(quick: bool, executor: ExecutorOptions, out_root: str, *, train: bool = True) -> dict[str, list[dict]]:
    """Train and check every run not finished yet (``train=False``: collect only); block → rows."""
    def sweep(cfgs, name, *, how=executor, **kw):
        root = os.path.join(out_root, name)
        if not train:
            return collect(root, cfgs)
        return run_sweep(cfgs, root, executor=how, **kw)

    rows: dict[str, list[dict]] = {}
    rows["pilot"] = sweep(pilot_design(), "pilot", geometry=False, tols=())
    edge = edges(rows["pilot"])
    # the short blocks first, then the edge block by seed (the long one), then the scale block
    rows["push"] = sweep(push_design(quick), "push", geometry=True, tols=TOLS, certify_below=THRESHOLD)
    serial = replace(executor, jobs=1) if executor.name == "local" else executor
    rows["threads"] = sweep(threads_design(edge, quick), "threads", geometry=True, tols=TOLS, certify_below=THRESHOLD,
                            threads=2, how=serial)
    rows["edge"] = sweep(edge_design(edge, quick), "edge", geometry=True, tols=TOLS, certify_below=THRESHOLD)
    if not quick:
        rows["scale"] = sweep(scale_design(), "scale", geometry=False, tols=TOLS, certify_below=THRESHOLD, certify_budget=120.0)
    return rows
