"""Trust round 3, side by side in one run: what the differential validation costs, what the cell
integrals of the Taylor form buy, and how near a tolerance a rise can be and still be decided.

    python benchmarks/certify_round3.py [--quick]

1. Digits MLP 64-256-256-10 ReLU (cross-entropy, 1 797 examples, SGD and Adam): the enclosure
   decision with the validation against the measured curve, and with the validation skipped
   (patched out), at T = 1e-3 and 1e-4; and with the cell integrals replaced by the interval
   bounds |C|·sup L′ and |C|·inf L′ (the rule before this round).
2. Near ties: tanh and ReLU MLPs 3-8-2 and deep linear nets with a rise R into α = 1 (θT pushed
   past a trained point), at T = R(1 ± ε), ε = 1e-2 … 1e-6: decided fraction and time. R comes
   from a 4 001-point float64 grid refined by a bounded scalar search at both ends.

Prints the load average with the timings (take them on a quiet machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from fractions import Fraction

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from _timing import add_quiet_flag, quiet_run  # noqa: E402
import mli_theory as mt  # noqa: E402
from mli_theory.certify import partition  # noqa: E402
from mli_theory.certify.partition import CellBound, decide_by_enclosures  # noqa: E402
from mli_theory.exact.dyadic import float_down, float_up  # noqa: E402
from mli_theory.inputs.data import load_data  # noqa: E402
from mli_theory.path import BNPolicy, make_line  # noqa: E402


def _coarse_rise(self: CellBound) -> float:
    import math

    return float_up((Fraction(self.b) - Fraction(self.a)) * Fraction(max(self.hi, 0.0))) if math.isfinite(self.hi) else math.inf


def _coarse_fall(self: CellBound) -> float:
    import math

    return float_down((Fraction(self.b) - Fraction(self.a)) * Fraction(self.lo)) if math.isfinite(self.lo) else -math.inf


def _mlp(sizes: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _train(model: nn.Module, x, y, opt: str, lr: float, epochs: int, seed: int, loss: str = "ce"):
    torch.manual_seed(seed)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    o = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9) if opt == "sgd" else torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], 64):
            idx = perm[i : i + 64]
            o.zero_grad()
            out = model(x[idx])
            (F.cross_entropy(out, y[idx]) if loss == "ce" else F.mse_loss(out, y[idx])).backward()
            o.step()
    return init, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _decide(line, data, tol: float, budget: float):
    deadline = time.perf_counter() + budget
    t = time.perf_counter()
    v = decide_by_enclosures(line, data, tol=tol, bn=BNPolicy.FROZEN, deadline=deadline)
    return v, time.perf_counter() - t


def digits(quick: bool, budget: float) -> None:
    d = load_data("sklearn:digits", "ce")
    x, y = d.x.float(), d.y
    runs = [("sgd", 0.05, 30, 0), ("adam", 1e-3, 30, 0)] + ([] if quick else [("sgd", 0.05, 30, 1), ("adam", 1e-3, 30, 1)])
    print("\n## 1. Digits MLP 64-256-256-10 ReLU, CE, n = 1797: validation cost and cell integrals")
    print(f"  {'run':<16} {'tol':>6}  {'validated':<24} {'no validation':<24} {'interval bounds (old)':<24} validation share")
    for opt, lr, ep, seed in runs:
        torch.manual_seed(seed)
        model = _mlp([64, 256, 256, 10])
        init, final = _train(model, x, y, opt, lr, ep, seed)
        line = make_line(model, init, final, dtype=torch.float64)
        data = d.to("cpu", torch.float64)
        for tol in (1e-3, 1e-4):
            v1, t1 = _decide(line, data, tol, budget)
            real = partition._validate
            partition._validate = lambda *a, **k: None
            try:
                v0, t0 = _decide(line, data, tol, budget)
            finally:
                partition._validate = real
            rs, fs = CellBound.rise_share, CellBound.fall_share
            CellBound.rise_share, CellBound.fall_share = property(_coarse_rise), property(_coarse_fall)
            try:
                v2, t2 = _decide(line, data, tol, budget)
            finally:
                CellBound.rise_share, CellBound.fall_share = rs, fs

            def cell(v, t):
                return f"{v.status[:9]:<9} {v.cells:>4} c {t:6.2f} s"

            print(f"  {opt} {ep}ep s{seed:<6} {tol:>6g}  {cell(v1, t1):<24} {cell(v0, t0):<24} {cell(v2, t2):<24} {max(t1 - t0, 0) / t1:5.1%}",
                  flush=True)


def _loss(model, a, b, data, t: float) -> float:
    s = {k: (1 - t) * a[k] + t * b[k] for k in a}
    with torch.no_grad():
        return float(F.mse_loss(functional_call(model, s, (data.x,)), data.y))


def near_ties(quick: bool, budget: float) -> None:
    from test_cell_integrals import _true_rise  # the independent reference of the tests

    print("\n## 2. Near ties: T = R(1 ± ε), decided / runs (median seconds)")
    kinds = ("tanh", "relu", "deep_linear")
    seeds = range(2 if quick else 4)
    epss = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    print(f"  {'model':<12} " + " ".join(f"{f'ε={e:g}':>16}" for e in epss))
    for kind in kinds:
        cols = []
        per_eps: dict[float, list[tuple[bool, float]]] = {e: [] for e in epss}
        for seed in seeds:
            model, a, b, data = _case(kind, seed)
            rise = _true_rise(model, a, b, data)
            for e in epss:
                for sign, want in ((-1, "non_monotone"), (1, "monotone")):
                    t = time.perf_counter()
                    r = mt.check(model, a, b, data, tol=rise * (1 + sign * e), certify=True, dtype=torch.float64, geometry=False,
                                 certify_budget=budget)
                    st = r.certificate.status
                    if st not in ("unknown", want):
                        raise SystemExit(f"FALSE CERTIFICATE: {kind} seed {seed} ε {e} sign {sign}: {st}")
                    per_eps[e].append((st == want, time.perf_counter() - t))
        for e in epss:
            got = per_eps[e]
            times = sorted(s for _, s in got)
            cols.append(f"{sum(ok for ok, _ in got)}/{len(got)} ({times[len(times) // 2]:.1f} s)")
        print(f"  {kind:<12} " + " ".join(f"{c:>16}" for c in cols), flush=True)


def _case(kind: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    if kind == "deep_linear":
        model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
    else:
        model = nn.Sequential(nn.Linear(3, 8), nn.Tanh() if kind == "tanh" else nn.ReLU(), nn.Linear(8, 2)).double()
    x = torch.randn(32, 3, generator=g, dtype=torch.float64)
    y = torch.randn(32, 2, generator=g, dtype=torch.float64)
    a = {k: 0.7 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in model.state_dict().items()}
    p = {k: v.clone().requires_grad_() for k, v in a.items()}
    opt = torch.optim.Adam(list(p.values()), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        F.mse_loss(functional_call(model, p, (x,)), y).backward()
        opt.step()
    b = {k: v.detach() + 0.3 * (v.detach() - a[k]) for k, v in p.items()}
    return model, a, b, mt.Dataset(x, y, "mse", "random")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", type=float, default=60.0)
    add_quiet_flag(ap)
    args = ap.parse_args()
    with quiet_run(args.require_quiet):
        print(f"# certify round 3 — torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
        digits(args.quick, args.budget)
        near_ties(args.quick, args.budget)
        print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
