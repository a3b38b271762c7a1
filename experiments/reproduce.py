"""Reproduce the MLI paper's findings on data that ships with scikit-learn and on synthetic data.

    python experiments/reproduce.py --quick          # < 15 min on 2 CPU cores
    python experiments/reproduce.py                  # the full sweep (more seeds, lrs, epochs)

Writes ``experiments/results/{quick,full}/``: ``results.csv`` (one row per run, failed and diverged
runs included), ``tables.md`` (the numbers behind each claim) and PNG plots. Sweeps are resumable:
rerunning skips finished runs (their folders live under ``experiments/out/``, not in git).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from mli_theory.runs.executors import ExecutorOptions  # noqa: E402
from mli_theory.runs.sweep import grid, run_sweep, write_csv  # noqa: E402

# a run counts only if its final training loss is under the threshold of its experiment
THRESHOLDS = {"digits": 0.05, "digits_ae": 0.02, "diabetes": 0.45, "teacher": 0.1, "push": 0.05, "deep_linear": 0.1}
EPS_MNIST = 1e-3  # the paper's MNIST threshold for "non-monotonic"


def experiments(quick: bool) -> dict[str, list]:
    """name -> list of TrainConfig."""
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    ep = 20 if quick else 40
    sgd_lrs = [0.02, 0.2] if quick else [0.01, 0.05, 0.2]
    adam_lrs = [1e-3, 1e-2] if quick else [3e-4, 1e-3, 1e-2]

    def opt_axes(base, axes):
        return grid({**base, "optimizer": "sgd"}, {**axes, "lr": sgd_lrs}) + grid({**base, "optimizer": "adam"}, {**axes, "lr": adam_lrs})

    def with_extra(cfgs, **extra):
        from dataclasses import replace

        return [replace(c, extra={**c.extra, **{k: f(c) for k, f in extra.items()}}) for c in cfgs]

    archs = {1: "mlp:64-64-10", 2: "mlp:64-64-64-10", 3: "mlp:64-64-64-64-10"}
    digits = []
    for depth, arch in archs.items():
        for bn in (False, True):
            digits += with_extra(
                opt_axes({"data": "sklearn:digits", "loss": "ce", "epochs": ep, "batch_size": 64, "arch": arch + (":bn" if bn else "")}, {"seed": seeds}),
                depth=lambda c, d=depth: d,
            )
    ae = opt_axes({"data": "sklearn:digits_autoencoder", "loss": "mse", "epochs": ep, "batch_size": 64}, {"arch": ["mlp:64-32-64:tanh", "mlp:64-32-64:relu"], "seed": seeds})
    diabetes = opt_axes({"data": "sklearn:diabetes", "loss": "mse", "epochs": 3 * ep, "batch_size": 32}, {"arch": ["mlp:10-32-32-1:tanh", "mlp:10-32-32-1:tanh:bn"], "seed": seeds})
    teacher = opt_axes({"data": "synthetic:teacher", "loss": "mse", "epochs": 2 * ep, "batch_size": 32, "arch": "mlp:16-64-64-4"}, {"seed": seeds + [7]})
    push = grid(
        {"data": "sklearn:digits", "loss": "ce", "epochs": ep, "batch_size": 64, "arch": "mlp:64-64-64-10", "optimizer": "sgd", "lr": 0.05},
        {"distance_reward": [0.0, 0.01, 0.03, 0.1], "init_scale": [1.0, 0.3], "seed": seeds + [7]},
    )
    deep_linear = opt_axes({"data": "synthetic:teacher", "loss": "mse", "epochs": 2 * ep, "batch_size": 32}, {"arch": ["deep_linear:16-16-4", "deep_linear:16-16-16-4"], "seed": seeds})
    return {"digits": digits, "digits_ae": ae, "diabetes": diabetes, "teacher": teacher, "push": push, "deep_linear": deep_linear}


# ----------------------------------------------------------------------------- analysis


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def converged(row: dict, exp: str) -> bool:
    return row.get("status") == "ok" and _f(row.get("train_loss")) < THRESHOLDS[exp]


def cell_stats(rows: list[dict]) -> dict[str, Any]:
    d = np.array([_f(r["max_rise"]) for r in rows]) if rows else np.zeros(0)
    nm0, nm3 = d > 0, d > EPS_MNIST
    return {
        "runs": len(rows),
        "frac_rise_gt_0": float(nm0.mean()) if len(d) else math.nan,
        "frac_rise_gt_1e-3": float(nm3.mean()) if len(d) else math.nan,
        "mean_rise_nonmono": float(d[nm0].mean()) if nm0.any() else math.nan,
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return math.nan
    ra = np.argsort(np.argsort(a[ok])).astype(float)
    rb = np.argsort(np.argsort(b[ok])).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def analyse(by_exp: dict[str, list[dict]], out: str) -> str:
    lines = ["# MLI reproduction: tables", ""]
    all_rows = [r for rows in by_exp.values() for r in rows]
    status = defaultdict(int)
    for r in all_rows:
        status[r.get("status", "?")] += 1
    lines += [f"Runs: {len(all_rows)} ({', '.join(f'{k}: {v}' for k, v in sorted(status.items()))}). "
              f"Converged = final training loss under the experiment's threshold {THRESHOLDS}.", ""]

    # per-cell tables: experiment × optimizer × batchnorm
    lines += ["## Non-monotonic fraction per cell (converged runs only)", ""]
    table = []
    for exp, rows in by_exp.items():
        if exp in ("push",):
            continue
        cells = defaultdict(list)
        for r in rows:
            cells[(r["optimizer"], str(r.get("batchnorm")))].append(r)
        for (opt, bn), rs in sorted(cells.items()):
            conv = [r for r in rs if converged(r, exp)]
            s = cell_stats(conv)
            table.append([exp, opt, bn, len(rs), s["runs"], s["frac_rise_gt_0"], s["frac_rise_gt_1e-3"], s["mean_rise_nonmono"]])
    lines += [md_table(["experiment", "optimizer", "batchnorm", "runs", "converged", "frac Δ>0", "frac Δ>1e-3", "mean Δ given Δ>0"], table), ""]

    # pooled claims
    conv_all = [(e, r) for e, rows in by_exp.items() if e != "push" for r in rows if converged(r, e)]
    def frac(sel):
        s = cell_stats([r for _, r in sel])
        return s["runs"], s["frac_rise_gt_0"], s["frac_rise_gt_1e-3"], s["mean_rise_nonmono"]
    pooled = [
        ["SGD, no BatchNorm", *frac([x for x in conv_all if x[1]["optimizer"] == "sgd" and not x[1].get("batchnorm")])],
        ["SGD, all", *frac([x for x in conv_all if x[1]["optimizer"] == "sgd"])],
        ["Adam, all", *frac([x for x in conv_all if x[1]["optimizer"] == "adam"])],
        ["no BatchNorm (digits, diabetes)", *frac([x for x in conv_all if x[0] in ("digits", "diabetes") and not x[1].get("batchnorm")])],
        ["BatchNorm (digits, diabetes)", *frac([x for x in conv_all if x[0] in ("digits", "diabetes") and x[1].get("batchnorm")])],
    ]
    lines += ["## Pooled over experiments (converged runs)", "", md_table(["group", "runs", "frac Δ>0", "frac Δ>1e-3", "mean Δ given Δ>0"], pooled), ""]

    # depth x lr heat map data (digits)
    heat = defaultdict(list)
    for r in by_exp.get("digits", []):
        if converged(r, "digits"):
            heat[(r["optimizer"], _f(r["lr"]), int(r.get("depth", 0)))].append(_f(r["max_rise"]) > EPS_MNIST)
    lines += ["## Digits: fraction with Δ > 1e-3 by optimizer × learning rate × depth (converged)", ""]
    hrows = [[opt, lr, depth, len(v), float(np.mean(v))] for (opt, lr, depth), v in sorted(heat.items())]
    lines += [md_table(["optimizer", "lr", "hidden layers", "runs", "frac Δ>1e-3"], hrows), ""]

    # distance
    ok_rows = [r for r in all_rows if r.get("status") == "ok"]
    d = np.array([_f(r.get("max_rise")) for r in ok_rows])
    nd = np.array([_f(r.get("normalized_distance")) for r in ok_rows])
    gl = np.array([_f(r.get("gauss_length")) for r in ok_rows])
    lines += ["## Distance, Gauss length and Δ (all finished runs)", ""]
    lines += [f"Spearman rank correlation of Δ with normalised distance: {_fmt(spearman(d, nd))}; "
              f"with Gauss length: {_fmt(spearman(d, gl))} (n = {len(ok_rows)}).", ""]
    mono, non = d <= 0, d > EPS_MNIST
    lines += [md_table(
        ["group", "runs", "median normalised distance", "median Gauss length"],
        [["monotone (Δ = 0)", int(mono.sum()), float(np.nanmedian(nd[mono])) if mono.any() else math.nan, float(np.nanmedian(gl[mono])) if mono.any() else math.nan],
         ["non-monotone (Δ > 1e-3)", int(non.sum()), float(np.nanmedian(nd[non])) if non.any() else math.nan, float(np.nanmedian(gl[non])) if non.any() else math.nan]],
    ), ""]
    push = defaultdict(list)
    for r in by_exp.get("push", []):
        if r.get("status") == "ok":
            push[(_f(r["distance_reward"]), _f(r["init_scale"]))].append(r)
    prow = []
    for (lam, scale), rs in sorted(push.items()):
        s = cell_stats(rs)
        prow.append([lam, scale, len(rs), float(np.median([_f(r["normalized_distance"]) for r in rs])), float(np.median([_f(r["train_loss"]) for r in rs])), s["frac_rise_gt_0"], s["frac_rise_gt_1e-3"], s["mean_rise_nonmono"]])
    lines += ["## Pushing weights away from initialisation (digits, SGD lr 0.05; all finished runs)", "",
              "Training minimises CE − λ‖θ − θ0‖²/2; `init_scale` shrinks θ0 (a small θ0 makes the same move relatively larger).", "",
              md_table(["λ", "init scale", "runs", "median normalised distance", "median train CE", "frac Δ>0", "frac Δ>1e-3", "mean Δ given Δ>0"], prow), ""]

    # conditions (MSE experiments)
    crow = []
    cond_names = sorted({k for r in all_rows for k in r if k.startswith("cond_")})
    for exp in ("digits_ae", "diabetes", "teacher", "deep_linear"):
        rows = [r for r in by_exp.get(exp, []) if r.get("status") == "ok"]
        for c in cond_names:
            held = [r for r in rows if r.get(c) is True]
            crow.append([exp, c[5:], len(rows), len(held), sum(_f(r["max_rise"]) > 0 for r in held)])
    lines += ["## MSE sufficient conditions: how often they hold, and any holding run that rises on the grid", "",
              md_table(["experiment", "condition", "runs", "condition holds", "of those with Δ > 0"], crow), ""]
    cert = defaultdict(int)
    for r in by_exp.get("deep_linear", []):
        cert[(r.get("certificate"), r.get("monotone_on_grid"))] += 1
    lines += ["Deep-linear runs (exact certificates, `check --certify`): " + ", ".join(f"certificate {c} & monotone on grid {g}: {n}" for (c, g), n in sorted(cert.items(), key=str)), ""]
    text = "\n".join(lines)
    with open(os.path.join(out, "tables.md"), "w") as f:
        f.write(text)
    return text


def plots(by_exp: dict[str, list[dict]], out: str, root: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [(e, r) for e, rows in by_exp.items() for r in rows if r.get("status") == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    colors = {e: f"C{i}" for i, e in enumerate(by_exp)}
    for e in by_exp:
        pts = [(r) for ee, r in ok if ee == e]
        d = np.array([_f(r["max_rise"]) for r in pts]) + 1e-7
        axes[0].scatter([_f(r["normalized_distance"]) for r in pts], d, s=12, color=colors[e], label=e, alpha=0.75)
        axes[1].scatter([_f(r["gauss_length"]) for r in pts], d, s=12, color=colors[e], label=e, alpha=0.75)
    for ax, xl in zip(axes, ("normalised distance ‖θT−θ0‖/‖θ0‖", "Gauss length (mean over examples)")):
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel("max rise Δ + 1e-7")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "rise_vs_distance_and_gauss.png"))
    plt.close(fig)

    # heat maps: fraction Δ > 1e-3 over lr × depth (digits), one per optimizer
    digits = [r for r in by_exp.get("digits", []) if converged(r, "digits")]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    for ax, opt in zip(axes, ("sgd", "adam")):
        rs = [r for r in digits if r["optimizer"] == opt]
        lrs = sorted({_f(r["lr"]) for r in rs})
        depths = sorted({int(r["depth"]) for r in rs})
        m = np.full((len(depths), len(lrs)), np.nan)
        for i, dd in enumerate(depths):
            for j, lr in enumerate(lrs):
                v = [_f(r["max_rise"]) > EPS_MNIST for r in rs if int(r["depth"]) == dd and _f(r["lr"]) == lr]
                if v:
                    m[i, j] = np.mean(v)
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis", origin="lower")
        ax.set_xticks(range(len(lrs)), [f"{x:g}" for x in lrs])
        ax.set_yticks(range(len(depths)), [str(x) for x in depths])
        ax.set_xlabel("learning rate")
        ax.set_ylabel("hidden layers")
        ax.set_title(f"digits, {opt}: frac Δ>1e-3", fontsize=9)
        for i in range(len(depths)):
            for j in range(len(lrs)):
                if not np.isnan(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.savefig(os.path.join(out, "heatmap_lr_depth.png"))
    plt.close(fig)

    # example curves: the most and least monotone runs of a few experiments
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=110)
    picks = []
    for e in ("digits", "push", "diabetes"):
        rs = sorted([r for ee, r in ok if ee == e], key=lambda r: _f(r["max_rise"]))
        if rs:
            picks += [(e, rs[0]), (e, rs[-1])]
    for e, r in picks:
        path = os.path.join(root, e, "runs", r["id"], "curve.json")
        if os.path.isfile(path):
            with open(path) as f:
                c = json.load(f)
            ls = np.array(c["losses"])
            ax.plot(c["alphas"], ls / ls[0], label=f"{e}: Δ={_f(r['max_rise']):.2g}")
    ax.set_xlabel("α")
    ax.set_ylabel("L(α) / L(0)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "example_curves.png"))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="run only these experiments")
    ap.add_argument("--executor", choices=["local", "dask", "slurm"], default="local", help="where the runs execute (see README)")
    ap.add_argument("--scheduler", default=None, help="dask: address of a running scheduler")
    ap.add_argument("--slurm-partition", default=None, help="slurm: partition")
    args = ap.parse_args()
    mode = "quick" if args.quick else "full"
    root = os.path.join(HERE, "out", mode)
    out = os.path.join(HERE, "results", mode)
    os.makedirs(out, exist_ok=True)
    by_exp = {}
    for name, cfgs in experiments(args.quick).items():
        if args.only and name not in args.only:
            continue
        options = ExecutorOptions(args.executor, jobs=args.jobs, scheduler=args.scheduler, slurm_partition=args.slurm_partition)
        rows = run_sweep(cfgs, os.path.join(root, name), jobs=args.jobs, alphas=50, geometry=True, executor=options)
        for r in rows:
            r["experiment"] = name
        by_exp[name] = rows
    write_csv([r for rows in by_exp.values() for r in rows], os.path.join(out, "results.csv"))
    print(analyse(by_exp, out))
    plots(by_exp, out, root)
    print(f"\nwrote {out}/results.csv, tables.md and plots")


if __name__ == "__main__":
    main()
