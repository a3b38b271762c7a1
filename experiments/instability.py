"""Instability analysis (Frankle, Dziugaite, Roy & Carbin 2020): barrier between two forks vs fork step k.

    python experiments/instability.py [--out experiments/results/instability] [--ks 0,10,40,120]
                                      [--arch mlp:64-64-64-10] [--data sklearn:digits] [--lr 0.2]
                                      [--epochs 5] [--keep-runs]

For each k: train to optimiser step k with seed 0, fork two copies from the same θ_k (and
optimiser state) with data-order seeds 1 and 2, train both to the end
(:func:`mli_theory.runs.config.run_forks`, the same as ``mli-theory train --fork-at k
--fork-seeds 1,2``), then measure the barriers between the two ends on the training data
(:func:`mli_theory.connectivity.barrier`). Writes ``instability.json`` (every barrier of every k)
and ``instability.png`` (``error_mean`` and ``loss_chord`` against k); the run folders go to a temporary folder
unless ``--keep-runs`` (then ``<out>/runs/k_<k>/``). The default run is small (digits, a
64-64-64-10 MLP, SGD with momentum at lr 0.2, 5 epochs of 29 steps, four values of k, one fork
pair each): under a minute on 2 CPU cores. Frankle et al. call a network stable at k when the error
barrier is ≈ 0 (they use 2 %); with one fork pair per k the curve is noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mli_theory.connectivity import barrier  # noqa: E402
from mli_theory.inputs import build_model, load_data, load_state_dict, parse_arch  # noqa: E402
from mli_theory.runs import TrainConfig  # noqa: E402
from mli_theory.runs.config import fork_folder, run_forks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "instability"))
    ap.add_argument("--ks", default="0,10,40,120", help="fork steps, comma-separated")
    ap.add_argument("--arch", default="mlp:64-64-64-10")
    ap.add_argument("--data", default="sklearn:digits")
    ap.add_argument("--loss", default="ce")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--alphas", type=int, default=11)
    ap.add_argument("--align", default="none", help="none | weights (barrier after weight matching too)")
    ap.add_argument("--keep-runs", action="store_true", help="keep the run folders in <out>/runs/")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    os.makedirs(args.out, exist_ok=True)
    cfg = TrainConfig(arch=args.arch, data=args.data, loss=args.loss, epochs=args.epochs, lr=args.lr, batch_size=64, seed=0)
    data = load_data(args.data, args.loss)
    model = build_model(parse_arch(args.arch))
    rows = []
    t0 = time.perf_counter()
    import tempfile

    scratch = tempfile.TemporaryDirectory(prefix="mli-instability-")
    runs = os.path.join(args.out, "runs") if args.keep_runs else scratch.name
    for k in ks:
        folder = os.path.join(runs, f"k_{k:06d}")
        run_forks(cfg, folder, fork_at=k, fork_seeds=(1, 2))
        a = load_state_dict(os.path.join(fork_folder(folder, 1), "final.pt"))
        b = load_state_dict(os.path.join(fork_folder(folder, 2), "final.pt"))
        res = barrier(model, a, b, data, alphas=args.alphas, align=args.align, alpha_tol=1e-3)
        row = {"k": k, "final_losses": [res.losses[0], res.losses[-1]], **{n: v.to_dict() for n, v in res.barriers.items()}}
        if res.before_alignment is not None:
            row["before_alignment"] = {n: v.to_dict() for n, v in res.before_alignment.barriers.items()}
        rows.append(row)
        em = res.barriers["error_mean"].value
        print(f"k={k:5d}  loss_chord={res.barriers['loss_chord'].value:.4g}  error_mean="
              f"{'n/a' if em is None else f'{em:.4g}'}  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    scratch.cleanup()
    with open(os.path.join(args.out, "instability.json"), "w") as f:
        json.dump({"config": vars(args), "rows": rows}, f, indent=1)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [max(r["k"], 0.5) for r in rows]  # log axis: k = 0 drawn at 0.5
    ax.plot(xs, [r["loss_chord"]["value"] for r in rows], "o-", label="loss_chord (Entezari et al. 2022)")
    if rows and rows[0]["error_mean"]["value"] is not None:
        ax.plot(xs, [r["error_mean"]["value"] for r in rows], "s-", label="error_mean (Frankle et al. 2020)")
    ax.set_xscale("log")
    ax.set_xlabel("fork step k (k = 0 drawn at 0.5)")
    ax.set_ylabel("barrier between the two fork ends")
    ax.set_title(f"instability: {args.arch} on {args.data}, {args.epochs} epochs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "instability.png"), dpi=120)
    print(os.path.join(args.out, "instability.png"))


if __name__ == "__main__":
    main()
