"""Benchmark: a 2D random-direction loss surface against loss-landscapes 3.0.6 ``random_plane``.

    python benchmarks/surface_speed.py [--steps 51] [--device cpu|cuda] [--n-mlp 64] [--n-resnet 16] [--repeats 1]
                                       [--threads N] [--require-quiet]

Both tools evaluate the same number of grid points (steps × steps) of the mean loss over the same
examples, side by side in one run, on an MLP 784-1000-1000-10 and on a small ResNet defined
below (three residual stages with BatchNorm, 3×16×16 inputs, evaluated in eval mode). Settings
that make the work equal:

* loss-landscapes perturbs every parameter (it filter-normalises biases and BatchNorm weights as
  well), so mli-theory runs with ``include_bn_and_bias=True``; BatchNorm running statistics stay at
  the centre's values in both (mli-theory ``bn="frozen"``; loss-landscapes evaluates the module in
  its current eval mode).
* loss-landscapes needs one (input, target) batch: all n examples at once; so does mli-theory
  (``batch_size=None``).

Reported: seconds per surface (median of ``--repeats``), and the ratio loss-landscapes /
mli-theory (> 1: mli-theory faster). ``pip install loss-landscapes==3.0.6`` first (not a project
dependency); without it only mli-theory is timed.

The default example counts (n = 64 for the MLP, 16 for the ResNet) keep the whole default run near
three minutes on two CPU cores; a 51×51 surface is 2601 full passes over the data per tool.

``--threads N`` sets torch's intra-op threads for both tools (on a shared machine, pin the process
as well: ``OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/surface_speed.py --threads 1``). The
load average is printed before and after the timings; with ``--require-quiet`` the script refuses
to measure (exit 3) when the 1-minute load exceeds half the cores (benchmarks/_timing.py).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _timing import add_quiet_flag, big_mlp, machine, median_time, quiet_run, small_resnet  # noqa: E402

from mli_theory.connectivity.surface import loss_surface  # noqa: E402
from mli_theory.inputs import Dataset  # noqa: E402


def compare(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, device: str, repeats: int,
            chunk: int | None) -> tuple[str, float, float | None, int, str]:
    model = model.to(device).eval()
    # a "trained" centre: every parameter moved off its initial value (BatchNorm biases start at
    # exactly 0, and loss-landscapes' filter normalisation divides by zero on a zero filter)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g).to(p.device))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data = Dataset(x, y, "ce", "synthetic")
    used = {}

    def ours():
        s = loss_surface(model, state, state, data, dims=2, steps=steps, span=1.0, seed=0, include_bn_and_bias=True,
                         bn="frozen", device=device, dtype=torch.float32, chunk=chunk)
        used["chunk"] = s.info["chunk"]
        used["strategy"] = s.info.get("strategy", "?")

    theirs = None
    try:
        import loss_landscapes
        import loss_landscapes.metrics

        metric = loss_landscapes.metrics.Loss(nn.CrossEntropyLoss(), x, y)

        def _theirs():
            loss_landscapes.random_plane(copy.deepcopy(model), metric, distance=1, steps=steps, normalization="filter", deepcopy_model=False)

        theirs = _theirs

    except ImportError:
        print("(loss-landscapes not installed: pip install loss-landscapes==3.0.6)", file=sys.stderr)
    # paired, interleaved runs: a shared machine's load hits both tools alike
    ours_t, ll_t = [], []
    for _ in range(repeats):
        ours_t.append(median_time(ours, device, repeats=1, warmup=0))
        if theirs is not None:
            ll_t.append(median_time(theirs, device, repeats=1, warmup=0))
    t_ours = statistics.median(ours_t)
    t_ll = statistics.median(ll_t) if ll_t else None
    return name, t_ours, t_ll, used.get("chunk", 0), used.get("strategy", "?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=51, help="grid points per axis (default 51)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n-mlp", type=int, default=64, help="examples for the MLP (default 64)")
    ap.add_argument("--n-resnet", type=int, default=16, help="examples for the ResNet (default 16)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per tool, median reported (default 1)")
    ap.add_argument("--chunk", type=int, default=None, help="mli-theory grid points per pass (default: sized to memory)")
    ap.add_argument("--only", choices=["mlp", "resnet"], default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads for both tools (default: torch's)")
    add_quiet_flag(ap)
    args = ap.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    dev = args.device
    g = torch.Generator().manual_seed(0)
    rows = []
    with quiet_run(args.require_quiet):
        if args.only in (None, "mlp"):
            torch.manual_seed(0)
            x = torch.randn(args.n_mlp, 784, generator=g).to(dev)
            y = torch.randint(0, 10, (args.n_mlp,), generator=g).to(dev)
            rows.append(compare(f"MLP 784-1000-1000-10, n={args.n_mlp}", big_mlp(), x, y, args.steps, dev, args.repeats, args.chunk))
        if args.only in (None, "resnet"):
            torch.manual_seed(0)
            x = torch.randn(args.n_resnet, 3, 16, 16, generator=g).to(dev)
            y = torch.randint(0, 10, (args.n_resnet,), generator=g).to(dev)
            rows.append(compare(f"small ResNet (16-32-64, BN), n={args.n_resnet}", small_resnet(), x, y, args.steps, dev, args.repeats, args.chunk))
        load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
        print(f"{args.steps}x{args.steps} random-plane surface, float32 on {machine(dev)}; median of {args.repeats}; load average {load}")
        print(f"  {'model':<38} {'mli-theory s':>13} {'loss-landscapes s':>18} {'ratio':>7} {'chunk':>6}  strategy")
        for name, a, b, c, how in rows:
            ratio = f"{b / a:.2f}" if b is not None else "n/a"
            print(f"  {name:<38} {a:>13.2f} {('%.2f' % b) if b is not None else 'n/a':>18} {ratio:>7} {c:>6}  {how}")


if __name__ == "__main__":
    main()
