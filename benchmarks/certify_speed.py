"""Benchmark: certified MLI verdicts for nonlinear networks (enclosure bisection), time and decisiveness.

    python benchmarks/certify_speed.py [--quick] [--case digits-mlp|big-mlp|cnn|hard|all] [--device cpu|cuda]

Every model is trained here from fixed seeds, then ``decide_by_enclosures`` is timed at
T = 1e-3, 1e-4 and 0. For each ``non_monotone`` verdict the witness is re-evaluated by a plain
float64 forward pass; for each ``monotone`` verdict a 1001-point grid of the loss is checked
against the proven rise bound (a grid can only refute a bound, never prove one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _timing import machine  # noqa: E402

import mli_theory as mt  # noqa: E402
from mli_theory.certify.partition import Unsupported, decide_by_enclosures, plain_loss, prepare  # noqa: E402
from mli_theory.exact import deadline_after  # noqa: E402
from mli_theory.inputs.data import load_data  # noqa: E402
from mli_theory.path import BNPolicy  # noqa: E402


def _train(model, x, y, *, optimizer, lr, epochs, batch=64, seed=0, loss="ce", until=None):
    torch.manual_seed(seed)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if optimizer == "sgd" else torch.optim.Adam(model.parameters(), lr=lr)
    lf = nn.functional.cross_entropy if loss == "ce" else nn.functional.mse_loss
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0])
        for i in range(0, x.shape[0], batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            lf(model(x[idx]), y[idx]).backward()
            opt.step()
        if until is not None:
            model.eval()
            with torch.no_grad():
                if float(lf(model(x), y)) < until:
                    break
            model.train()
    model.eval()
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return init, final


def _mlp(widths, act=nn.ReLU):
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def _resnet(c=8):
    return nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), _Block(c), _Block(c),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def _grid_rise(prob, k=1001):
    best, low = 0.0, None
    for i in range(k):
        v = plain_loss(prob, i / (k - 1))
        low = v if low is None else min(low, v)
        best = max(best, v - low)
    return best


def _decide(name, model, init, final, data, tols, bn=BNPolicy.FROZEN, budget=120.0, grid_check=False, device="cpu"):
    rows = []
    line = mt.make_line(model, init, final, dtype=torch.float64, device=device)
    data = mt.Dataset(data.x.to(device), data.y.to(device), data.loss, data.name)
    prob = prepare(line, data, bn) if grid_check else None
    for tol in tols:
        t0 = time.perf_counter()
        try:
            v = decide_by_enclosures(line, data, tol=tol, bn=bn, deadline=deadline_after(budget))
        except Unsupported as exc:
            print(f"  {name:<34} T={tol:<7g} refused: {exc}")
            continue
        sec = time.perf_counter() - t0
        extra = ""
        if v.status == "non_monotone":
            p = prob or prepare(line, data, bn)
            a, b = v.where
            extra = f"witness [{a:.6g}, {b:.6g}] rise {v.rise:.3g} (recheck {plain_loss(p, b) - plain_loss(p, a):.3g})"
        elif v.status == "monotone" and grid_check:
            g = _grid_rise(prob)
            extra = f"grid rise {g:.3g} ≤ bound: {g <= v.rise_bound + 1e-12}"
        elif v.status == "unknown":
            extra = v.reason[:70]
        bound = "-" if v.rise_bound is None else f"{v.rise_bound:.3g}"
        print(f"  {name:<34} T={tol:<7g} {v.status:<13} cells {v.cells:>4}  bound {bound:<9} {sec:7.2f} s  {extra}", flush=True)
        rows.append((name, tol, v.status, sec))
    return rows


def digits_mlp(quick, device):
    d = load_data("sklearn:digits", "ce")
    x, y = d.x.float(), d.y
    rows = []
    runs = [("sgd", 0.05, 30, 0), ("adam", 1e-3, 30, 0)] if quick else [
        (o, lr, ep, s) for o, lr in (("sgd", 0.05), ("adam", 1e-3)) for ep in (30, 300) for s in (0, 1)]
    for opt, lr, ep, seed in runs:
        torch.manual_seed(seed)
        model = _mlp([64, 256, 256, 10])
        init, final = _train(model, x, y, optimizer=opt, lr=lr, epochs=ep, seed=seed)
        rows += _decide(f"digits MLP {opt} {ep} ep seed {seed}", model, init, final, d, (1e-3, 1e-4, 0.0), grid_check=not quick, device=device)
    return rows


def big_mlp(quick, device):
    n = 2000 if quick else 10000
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 784, generator=g)
    teacher = _mlp([784, 64, 10], nn.Tanh)
    with torch.no_grad():
        y = teacher(x).argmax(1)
    model = _mlp([784, 1000, 1000, 10])
    init, final = _train(model, x, y, optimizer="sgd", lr=0.05, epochs=20, batch=128, until=0.05)
    return _decide(f"MLP 784-1000-1000-10, n={n}", model, init, final, mt.Dataset(x.double(), y, "ce", "synthetic"), (1e-4,), budget=600.0, device=device)


def cnn(quick, device):
    d = load_data("sklearn:digits", "ce")
    x = d.x.float().reshape(-1, 1, 8, 8)
    model = _resnet()
    init, final = _train(model, x, d.y, optimizer="adam", lr=1e-2, epochs=5 if quick else 20)
    data = mt.Dataset(x.double(), d.y, "ce", "digits 1×8×8")
    return _decide("small ResNet (BN frozen), digits", model, init, final, data, (1e-3, 1e-4, 0.0), budget=300.0, device=device)


def hard(quick, device):
    d = load_data("sklearn:digits", "ce")
    x, y = d.x.float(), d.y
    rows = []
    sub = mt.Dataset(d.x[:200], d.y[:200], "ce", "digits[:200]")
    model = _mlp([64, 256, 256, 10])
    init, final = _train(model, x[:200], y[:200], optimizer="adam", lr=1e-3, epochs=3000 if not quick else 500, until=1e-6)
    with torch.no_grad():
        ce = float(nn.functional.cross_entropy(model(x[:200]), y[:200]))
    rows += _decide(f"MLP to CE {ce:.1e} (200 digits)", model, init, final, sub, (1e-4, 0.0))
    if not quick:
        model = _mlp([64] + [512] * 5 + [10])
        init, final = _train(model, x, y, optimizer="sgd", lr=0.02, epochs=30)
        rows += _decide("MLP 5×512 ReLU, digits", model, init, final, d, (1e-4, 0.0), device=device)
    for name, act in (("tanh", nn.Tanh), ("gelu", nn.GELU)):
        model = _mlp([64, 256, 256, 10], act)
        init, final = _train(model, x, y, optimizer="sgd", lr=0.05, epochs=10 if quick else 30)
        rows += _decide(f"digits MLP {name}", model, init, final, d, (1e-4, 0.0), device=device)
    return rows


CASES = {"digits-mlp": digits_mlp, "big-mlp": big_mlp, "cnn": cnn, "hard": hard}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs, smaller data")
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(f"certify_speed on {machine(args.device)}; torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    rows = []
    for name, fn in CASES.items():
        if args.case in (name, "all"):
            print(f"\n{name}")
            rows += fn(args.quick, args.device)
    digits = [r for r in rows if r[0].startswith("digits MLP") and ("sgd" in r[0] or "adam" in r[0])]
    if digits:
        secs = [r[3] for r in digits]
        decided = sum(r[2] != "unknown" for r in digits)
        print(f"\ndigits MLP 64-256-256-10: {decided}/{len(digits)} decided, median {statistics.median(secs):.2f} s, max {max(secs):.2f} s")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
