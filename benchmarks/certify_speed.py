"""Benchmark: certified MLI verdicts for nonlinear networks (``decide_by_enclosures``): time and decisiveness.

    python benchmarks/certify_speed.py [--quick] [--case digits-mlp|big-mlp|resnet|resnet-tv|hard|resnet18|all] [--budget S]
                                       [--n N] [--device cpu|cuda] [--require-quiet]

Every model is trained here from fixed seeds; then ``decide_by_enclosures`` is timed at each
tolerance T (1e-3, 1e-4, 0 unless the case says otherwise) under a deadline, and one row is printed
per (model, run, T): status, cells, proven rise bound, seconds. Checks that do not trust the
certifier:

* every ``non_monotone`` verdict: L(b) − L(a) at the witness [a, b] is re-evaluated here by a plain
  float64 forward pass (``torch.func.functional_call`` on θ(α) = (1−α)θ0 + αθT, BatchNorm in eval
  mode with the final checkpoint's statistics) and printed beside the certifier's rise;
* every ``monotone`` verdict of the digits-MLP case (and of the ResNet and the cheap ``hard`` models): the largest
  rise max_{i<j} L(α_j) − L(α_i) on a 1000-point grid of the same float64 loss must not exceed the
  proven bound (a grid can only refute a bound, never prove one); rows where it does, or where the
  grid rise exceeds T, are marked SUSPICIOUS; for ``unknown`` verdicts of those models the grid rise
  is printed as a hint (a grid rise > T means a rise the certifier did not witness).

Cases: ``digits-mlp`` (MLP 64-256-256-10 ReLU, CE on sklearn digits, SGD/Adam × 30/300 epochs × 2
seeds), ``big-mlp`` (784-1000-1000-10 ReLU on 10 000 synthetic examples labelled by a random teacher,
T = 1e-4, 600 s), ``resnet`` (small ResNet with BatchNorm2d on digits as 1×8×8 images, BN frozen),
``resnet-tv`` (the ``resnet`` case's weights in torchvision's form of the block, ``out += identity``,
through ``check``), ``hard`` (an MLP trained to CE < 1e-6 on 200 digits, a 5×512 ReLU MLP, tanh and GELU MLPs; T = 1e-4
and 0, 120 s each; 180 s for the 5×512 MLP). ``--quick`` runs a smaller subset of each (CI-friendly, a few minutes on 2 cores).
``resnet18`` (not part of ``all``; a GPU figure): ResNet-18 in its CIFAR form (BatchNorm2d frozen) on
n = 1024 synthetic 3×32×32 inputs, MSE against zero targets, θT = θ0 + 0.01·noise (untrained),
T = 1e-3, 120 s. ``--n`` sets the example count of ``big-mlp`` and ``resnet18`` (the GPU run uses
n = 1024 for both; a toy n makes a smoke run).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import traceback

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(__file__))

import mli_theory as mt  # noqa: E402
from mli_theory.certify.partition import Unsupported, decide_by_enclosures  # noqa: E402
from mli_theory.exact import deadline_after  # noqa: E402
from mli_theory.inputs.data import load_data  # noqa: E402
from mli_theory.path import BNPolicy  # noqa: E402
from _timing import add_quiet_flag, quiet_run  # noqa: E402

TOLS = (1e-3, 1e-4, 0.0)
GRID = 1000


# ----------------------------------------------------------------------------- machine


def machine_line(device: str) -> str:
    from mli_theory.runs.sweep import cpu_name

    cpu = cpu_name()
    try:
        load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "?"
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return (f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
            f"python {platform.python_version()}, device {device}{gpu}, load average {load}")


# ----------------------------------------------------------------------------- models


def mlp(widths: list[int], act=nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class Block(nn.Module):
    """x + BN(conv(ReLU(BN(conv(x))))), then ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(x + self.bn2(self.conv2(h)))


class TorchvisionBlock(Block):
    """:class:`Block` as torchvision writes its BasicBlock: ``out += identity`` and in-place ReLUs
    (the same parameters, the same function)."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def small_resnet(c: int = 8, block: type[Block] = Block) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
        block(c), block(c),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10),
    )


# ----------------------------------------------------------------------------- training


def train(model, x, y, *, opt: str, lr: float, epochs: int, batch: int = 64, seed: int = 0, until: float | None = None, check_every: int = 1):
    """Minibatch training (CE); returns (θ0, θT, epochs run, final training CE), model left in eval mode."""
    torch.manual_seed(seed)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optim = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if opt == "sgd" else torch.optim.Adam(model.parameters(), lr=lr)
    ep = 0
    for ep in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], batch):
            idx = perm[i : i + batch]
            optim.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optim.step()
        if until is not None and ep % check_every == 0:
            model.eval()
            with torch.no_grad():
                if float(F.cross_entropy(model(x), y)) < until:
                    break
    model.eval()
    with torch.no_grad():
        ce = float(F.cross_entropy(model(x), y))
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return init, final, ep, ce


# ----------------------------------------------------------------------------- independent loss


class PlainLoss:
    """L(α) by a plain float64 forward pass with functional_call: parameters interpolated, every
    buffer (BatchNorm running statistics) taken from θT, model in eval mode (= BNPolicy.FROZEN)."""

    def __init__(self, model, init, final, data) -> None:
        self.shell = copy.deepcopy(model).to(torch.float64).eval()
        self.pnames = {k for k, _ in self.shell.named_parameters()}
        self.s = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in init.items()}
        self.e = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in final.items()}
        self.x = data.x.to(torch.float64)
        self.y = data.y.to(torch.float64) if data.loss == "mse" else data.y
        self.loss = data.loss

    def __call__(self, alpha: float) -> float:
        state = {k: ((1.0 - alpha) * self.s[k] + alpha * self.e[k]) if k in self.pnames else self.e[k] for k in self.e}
        with torch.no_grad():
            out = functional_call(self.shell, state, (self.x,)).to(torch.float64)
            return float(F.mse_loss(out, self.y) if self.loss == "mse" else F.cross_entropy(out, self.y))

    def grid_rise(self, k: int = GRID) -> tuple[float, float]:
        """(max_{i<j} L(α_j) − L(α_i) on k equispaced α in [0, 1], and L(0))."""
        low, best, first = None, 0.0, None
        for i in range(k):
            v = self(i / (k - 1))
            first = v if first is None else first
            low = v if low is None else min(low, v)
            best = max(best, v - low)
        return best, first


# ----------------------------------------------------------------------------- deciding


ROWS: list[dict] = []
HEAD = f"  {'model':<40} {'run':<22} {'T':>6} {'status':<13} {'cells':>5} {'rise_bound':>10} {'seconds':>8}  detail"


def decide(model_name: str, run: str, model, init, final, data, tols, budget: float, *, device: str, grid: bool = False, case: str = "") -> None:
    line = mt.make_line(model, init, final, dtype=torch.float64, device=device)
    ddata = mt.Dataset(data.x.to(device), data.y.to(device), data.loss, data.name)
    plain = PlainLoss(model, init, final, data)
    grid_cache: list[tuple[float, float]] = []
    for tol in tols:
        row = dict(case=case, model=model_name, run=run, tol=tol, status="error", cells=None, bound=None, sec=None, note="")
        t0 = time.perf_counter()
        try:
            v = decide_by_enclosures(line, ddata, tol=tol, bn=BNPolicy.FROZEN, deadline=deadline_after(budget))
            sec = time.perf_counter() - t0
        except Unsupported as exc:
            row.update(status="refused", sec=time.perf_counter() - t0, note=f"Unsupported: {exc}")
            _print(row)
            ROWS.append(row)
            continue
        except Exception as exc:  # a crash is a result too: report it and go on
            row.update(status="CRASH", sec=time.perf_counter() - t0, note=f"{type(exc).__name__}: {exc}")
            _print(row)
            ROWS.append(row)
            traceback.print_exc()
            continue
        row.update(status=v.status, cells=v.cells, bound=v.rise_bound, sec=sec)
        if v.status == "non_monotone":
            a, b = v.where
            re = plain(b) - plain(a)
            flag = "" if re > tol else "  SUSPICIOUS: recheck ≤ T"
            row["note"] = (f"witness [{a:.6g}, {b:.6g}], rise {v.rise:.4g} (proven ≥ {v.rise_lower:.4g}); "
                           f"independent L(b)−L(a) = {re:.4g}{flag}")
        elif v.status == "monotone" and grid:
            if not grid_cache:
                grid_cache.append(plain.grid_rise())
            g, l0 = grid_cache[0]
            slack = 1e-13 * max(1.0, abs(l0))
            bad = []
            if g > v.rise_bound + slack:
                bad.append("grid rise > proven bound")
            if g > tol + slack:
                bad.append("grid rise > T")
            row["note"] = f"{GRID}-pt grid rise {g:.3g}" + (f"  SUSPICIOUS: {', '.join(bad)}" if bad else " (≤ bound)")
        elif v.status == "unknown":
            und = ", ".join(f"[{a:.4g}, {b:.4g}]" for a, b in v.undecided[:3]) + (" …" if len(v.undecided) > 3 else "")
            row["note"] = f"{v.reason}; undecided {und}"
            if grid:  # not a check, a hint: is there a rise > T the certifier could have witnessed?
                if not grid_cache:
                    grid_cache.append(plain.grid_rise())
                row["note"] += f"; {GRID}-pt grid rise {grid_cache[0][0]:.3g}"
        _print(row)
        ROWS.append(row)


def _print(row: dict) -> None:
    bound = "-" if row["bound"] is None else f"{row['bound']:.3g}"
    cells = "-" if row["cells"] is None else str(row["cells"])
    sec = "-" if row["sec"] is None else f"{row['sec']:.2f}"
    print(f"  {row['model']:<40} {row['run']:<22} {row['tol']:>6g} {row['status']:<13} {cells:>5} {bound:>10} {sec:>8}  {row['note']}", flush=True)


def _trained(what: str, ep: int, ce: float, t: float) -> None:
    print(f"  # trained {what}: {ep} epochs, training CE {ce:.3g}, {t:.1f} s", flush=True)


# ----------------------------------------------------------------------------- cases


def digits_mlp(quick: bool, device: str, budget: float | None) -> None:
    d = load_data("sklearn:digits", "ce")
    x, y = d.x.float(), d.y
    runs = [("sgd", 0.05, 30, 0), ("adam", 1e-3, 30, 0)] if quick else [
        (o, lr, ep, s) for o, lr in (("sgd", 0.05), ("adam", 1e-3)) for ep in (30, 300) for s in (0, 1)]
    for opt, lr, ep, seed in runs:
        torch.manual_seed(seed)
        model = mlp([64, 256, 256, 10])
        t = time.perf_counter()
        init, final, done, ce = train(model, x, y, opt=opt, lr=lr, epochs=ep, seed=seed)
        _trained(f"{opt} {ep} ep seed {seed}", done, ce, time.perf_counter() - t)
        decide("MLP 64-256-256-10 ReLU, digits", f"{opt} {ep}ep s{seed}", model, init, final, d, TOLS,
               budget or 120.0, device=device, grid=True, case="digits-mlp")


def big_mlp(quick: bool, device: str, budget: float | None, n: int | None = None) -> None:
    n = n or (1000 if quick else 10000)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 784, generator=g)
    torch.manual_seed(123)
    teacher = mlp([784, 256, 10])
    with torch.no_grad():
        logits = teacher(x)
        y = (logits - logits.mean(0)).argmax(1)  # centred per class (= a shifted last bias): balanced labels
    counts = torch.bincount(y, minlength=10).tolist()
    torch.manual_seed(0)
    model = mlp([784, 1000, 1000, 10])
    t = time.perf_counter()
    init, final, done, ce = train(model, x, y, opt="sgd", lr=0.05, epochs=60, batch=128, seed=0, until=0.05)
    _trained(f"SGD lr 0.05 mom 0.9 batch 128 (teacher label counts {counts})", done, ce, time.perf_counter() - t)
    data = mt.Dataset(x.double(), y, "ce", "teacher")
    decide("MLP 784-1000-1000-10 ReLU", f"n={n}, sgd {done}ep", model, init, final, data, (1e-4,),
           budget or (120.0 if quick else 600.0), device=device, case="big-mlp")


def resnet(quick: bool, device: str, budget: float | None) -> None:
    d = load_data("sklearn:digits", "ce")
    m = 256 if quick else d.n  # quick: 256 images, so that one enclosure batch fits the short budget
    x, yy = d.x[:m].reshape(-1, 1, 8, 8), d.y[:m]
    c, epochs = (4, 30) if quick else (8, 30)
    torch.manual_seed(0)
    model = small_resnet(c)
    t = time.perf_counter()
    init, final, done, ce = train(model, x.float(), yy, opt="adam", lr=1e-2, epochs=epochs, seed=0)
    _trained(f"ResNet c={c} Adam lr 1e-2 on {m} images", done, ce, time.perf_counter() - t)
    data = mt.Dataset(x, yy, "ce", f"digits[:{m}] 1x8x8")
    decide(f"ResNet conv{c}+2 blocks, BN2d frozen, n={m}", f"adam {done}ep s0", model, init, final, data,
           (1e-3,) if quick else TOLS, budget or (60.0 if quick else 300.0), device=device, grid=True, case="resnet")


def resnet_tv(quick: bool, device: str, budget: float | None) -> None:
    """The ``resnet`` case's network and weights written as torchvision writes its blocks
    (``out += identity``, in-place ReLUs), through ``check`` (the comparison of the forward with its
    trace included, which refused this form before): the same verdict as the plain form, in about
    the same time."""
    d = load_data("sklearn:digits", "ce")
    m = 256 if quick else d.n
    x, yy = d.x[:m].reshape(-1, 1, 8, 8), d.y[:m]
    c = 4 if quick else 8
    torch.manual_seed(0)
    plain = small_resnet(c)
    init, final, done, ce = train(plain, x.float(), yy, opt="adam", lr=1e-2, epochs=30, seed=0)
    _trained(f"ResNet c={c} Adam lr 1e-2 on {m} images", done, ce, 0.0)
    data = mt.Dataset(x, yy, "ce", f"digits[:{m}] 1x8x8")
    tv = small_resnet(c, TorchvisionBlock)
    tv.load_state_dict(plain.state_dict())
    for name, model in (("plain blocks (x + BN(conv(…)))", plain), ("torchvision blocks (out += identity)", tv)):
        for tol in (1e-3,) if quick else (1e-3, 0.0):
            t0 = time.perf_counter()
            r = mt.check(model.eval(), init, final, data, alphas=50, tol=tol, certify=True, dtype=torch.float64, bn="frozen",
                         geometry=False, certify_budget=budget or (60.0 if quick else 300.0), device=device)
            cert = r.certificate
            row = dict(case="resnet-tv", model=f"ResNet c={c}, {name}", run=f"adam {done}ep s0", tol=tol, status=cert.status,
                       cells=getattr(cert, "cells", None), bound=cert.rise_bound, sec=time.perf_counter() - t0,
                       note="" if cert.status != "unknown" else (cert.reason or "")[:160])
            _print(row)
            ROWS.append(row)


def hard(quick: bool, device: str, budget: float | None) -> None:
    d = load_data("sklearn:digits", "ce")
    x, y = d.x.float(), d.y
    b = budget or (30.0 if quick else 120.0)
    tols = (1e-4, 0.0)
    # (a) trained to CE < 1e-6 on a small subset
    m = 200
    sub = mt.Dataset(d.x[:m], d.y[:m], "ce", f"digits[:{m}]")
    torch.manual_seed(0)
    model = mlp([64, 256, 256, 10])
    t = time.perf_counter()
    init, final, done, ce = train(model, x[:m], y[:m], opt="adam", lr=1e-3, epochs=2000 if quick else 20000, seed=0,
                                  until=1e-4 if quick else 1e-6, check_every=25)
    _trained(f"(a) Adam lr 1e-3 on {m} digits", done, ce, time.perf_counter() - t)
    decide(f"(a) MLP 64-256-256-10, {m} digits", f"adam {done}ep CE {ce:.1e}", model, init, final, sub, tols, b,
           device=device, grid=True, case="hard")
    # (b) wide/deep
    if not quick:
        torch.manual_seed(0)
        model = mlp([64] + [512] * 5 + [10])
        t = time.perf_counter()
        init, final, done, ce = train(model, x, y, opt="adam", lr=1e-3, epochs=30, seed=0)
        _trained("(b) 5x512 Adam lr 1e-3", done, ce, time.perf_counter() - t)
        # 86 cells of about 1.1 s each on all 1 797 examples (2-core CPU): 180 s unless --budget says otherwise
        decide("(b) MLP 64-512x5-10 ReLU, digits", f"adam {done}ep s0", model, init, final, d, tols, budget or 180.0, device=device, case="hard")
    # (c) smooth activations
    runs = [("sgd", 0.05)] if quick else [("sgd", 0.05), ("adam", 1e-3)]
    for name, act in (("tanh", nn.Tanh), ("GELU", nn.GELU)):
        if quick and name == "GELU":
            continue
        for opt, lr in runs:
            torch.manual_seed(0)
            model = mlp([64, 256, 256, 10], act)
            t = time.perf_counter()
            ep = 10 if quick else 30
            init, final, done, ce = train(model, x, y, opt=opt, lr=lr, epochs=ep, seed=0)
            _trained(f"(c) {name} {opt}", done, ce, time.perf_counter() - t)
            decide(f"(c) MLP 64-256-256-10 {name}, digits", f"{opt} {done}ep s0", model, init, final, d, tols, b,
                   device=device, grid=True, case="hard")


def resnet18(quick: bool, device: str, budget: float | None, n: int | None = None) -> None:
    from _timing import resnet18_line

    m = n or (64 if quick else 1024)
    model, line, data = resnet18_line(m, "cpu")
    decide(f"ResNet-18 (CIFAR form), BN2d frozen, n={m}", "θT = θ0 + 0.01·noise", model, line.start, line.end, data,
           (1e-3,), budget or 120.0, device=device, case="resnet18")


CASES = {"digits-mlp": digits_mlp, "big-mlp": big_mlp, "resnet": resnet, "resnet-tv": resnet_tv, "hard": hard, "resnet18": resnet18}
SIZED = {"big-mlp", "resnet18"}  # cases that take --n
NOT_IN_ALL = {"resnet18"}  # a GPU figure: run it by name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller, CI-friendly subset of every case")
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--budget", type=float, default=None, help="seconds per decision, overriding every case's deadline")
    ap.add_argument("--n", type=int, default=None, help="examples of the big-mlp and resnet18 cases")
    ap.add_argument("--device", default="cpu")
    add_quiet_flag(ap)
    args = ap.parse_args()
    with quiet_run(args.require_quiet):
        run(args)


def run(args: argparse.Namespace) -> None:
    print(f"certify_speed{' --quick' if args.quick else ''} on {machine_line(args.device)}")
    print("timings are wall-clock upper bounds (other processes may share the cores)")
    t0 = time.perf_counter()
    for name, fn in CASES.items():
        if args.case == name or (args.case == "all" and name not in NOT_IN_ALL):
            print(f"\n[{name}]\n{HEAD}", flush=True)
            tc = time.perf_counter()
            fn(args.quick, args.device, args.budget, **({"n": args.n} if name in SIZED else {}))
            print(f"  # case {name}: {time.perf_counter() - tc:.0f} s", flush=True)
    print("\nsummary")
    for case in CASES:
        rows = [r for r in ROWS if r["case"] == case]
        if not rows:
            continue
        secs = [r["sec"] for r in rows]
        decided = sum(r["status"] in ("monotone", "non_monotone") for r in rows)
        kinds = ", ".join(f"{s} {sum(r['status'] == s for r in rows)}" for s in ("monotone", "non_monotone", "unknown", "refused", "CRASH") if any(r["status"] == s for r in rows))
        print(f"  {case:<11} {decided}/{len(rows)} decided ({kinds}); seconds per decision median {statistics.median(secs):.2f}, max {max(secs):.2f}")
    sus = [r for r in ROWS if "SUSPICIOUS" in r["note"]]
    print(f"  suspicious rows: {len(sus)}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
