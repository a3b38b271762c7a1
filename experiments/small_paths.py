"""Small MLP paths through `check --certify`, each verdict held against an independent reference.

    python experiments/small_paths.py [--set random|converged|all] [--out experiments/out/small_paths]

Two sets of ReLU and tanh MLPs under MSE and cross-entropy, each path written to disk (init.pt,
final.pt, data.npz) and checked exactly as a user would: ``mli-theory check --arch mlp:… --certify
--json`` with the defaults (``--tol 0``, 30 s of proof budget).

* ``random`` (36 paths, float32 as the check's default): 24 random nets (1–3 hidden layers of 4–32
  units, 16–128 examples) trained with Adam or SGD + momentum for a few hundred steps, or pushed
  away from θ0 by a random move; and 12 handmade 1-H-K nets on one example whose loss has a
  bump narrower than a 50-point grid cell (ReLU: a trapezoid of four ramps; tanh: the difference
  of two steep steps), at 0.3, 0.6 and 0.9 of a cell, between grid points.
* ``converged`` (16 paths, ``--dtype float64``): nets of 16–128 units on 32–256 examples trained in
  float64 to convergence (Adam, then L-BFGS), so that L′(1) is near 0 (an interpolating MSE net
  reaches a loss of 10⁻²⁶, its L′(1) far below float64's resolution of the outputs).

Reference: the loss on a 4 001-point float64 grid (plain ``functional_call``), its largest rise
(``reference_rise``; ``grid_rise`` is the check's own 50-point grid's);
a ``monotone`` verdict with a positive reference rise is counted false; every ``non_monotone``
witness is re-evaluated in float64 there (its rise must be positive, or below float64's resolution
of the losses, which the certificate then says). Prints one JSON row per path and a summary line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _build(dims: list[int], act: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU() if act == "relu" else nn.Tanh())
    return nn.Sequential(*layers)


def _loss_at(model, s0, s1, x, y, loss: str, a: float) -> float:
    state = {k: (1 - a) * s0[k].double() + a * s1[k].double() for k in s0}
    with torch.no_grad():
        z = functional_call(model, state, (x.double(),))
        return float(F.mse_loss(z, y.double()) if loss == "mse" else F.cross_entropy(z, y))


def _reference_rise(model, s0, s1, x, y, loss: str, points: int = 4001) -> float:
    vals = np.array([_loss_at(model, s0, s1, x, y, loss, float(a)) for a in np.linspace(0, 1, points)])
    return float((vals - np.minimum.accumulate(vals)).max())


def _drawn(i: int, base: int, width: int, n: int) -> tuple:
    """Path number ``i`` of a set seeded from ``base``: (generator, activation, loss, widths, x, y,
    θ0), activation and loss alternating, 1–3 hidden layers of ``width`` units, ``n`` examples."""
    g = torch.Generator().manual_seed(base + i)
    act, loss = ["relu", "tanh"][i % 2], ["mse", "ce"][(i // 2) % 2]
    k_out = 1 + (i % 3) if loss == "mse" else 2 + (i % 3)
    dims = [2 + i % 5] + [width] * (1 + (i // 4) % 3) + [k_out]
    torch.manual_seed(base + i)
    model = _build(dims, act)
    x = torch.randn(n, dims[0], generator=g)
    y = torch.randn(n, k_out, generator=g) if loss == "mse" else torch.randint(0, k_out, (n,), generator=g)
    return g, act, loss, dims, x, y, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _random_set() -> list[dict]:
    cases = []
    for i in range(24):
        g, act, loss, dims, x, y, s0 = _drawn(i, 100, [4, 8, 16, 32][(i // 3) % 4], [16, 32, 64, 128][i % 4])
        kind = ["adam", "sgd", "push"][i % 3]
        if kind == "push":
            s1 = {k: v + (0.5 + (i % 4)) * torch.randn(v.shape, generator=g) * v.std().clamp_min(0.1) for k, v in s0.items()}
        else:
            net = _build(dims, act)
            net.load_state_dict(s0)
            opt = torch.optim.Adam(net.parameters(), 0.01 * (1 + i % 3)) if kind == "adam" else torch.optim.SGD(net.parameters(), 0.1, momentum=0.9)
            for _ in range(300 + 100 * (i % 4)):
                opt.zero_grad()
                z = net(x)
                (F.mse_loss(z, y) if loss == "mse" else F.cross_entropy(z, y)).backward()
                opt.step()
            s1 = {k: v.detach().clone() for k, v in net.state_dict().items()}
        cases.append(dict(name=f"rand{i}_{kind}_{act}_{loss}_{'-'.join(map(str, dims))}", dims=dims, act=act, loss=loss,
                          s0=s0, s1=s1, x=x, y=y, dtype=None))
    cell = 1 / 49
    j = 0
    for act in ("relu", "tanh"):
        for loss in ("mse", "ce"):
            for frac, at in ((0.3, 10.5), (0.6, 31.5), (0.9, 40.2)):
                j += 1
                cases.append(_narrow(f"narrow{j}_{act}_{loss}_w{frac}", act, loss, at * cell, frac * cell,
                                     0.6 if loss == "mse" else 3.0, extra=j % 3, seed=j))
    return cases


def _narrow(name: str, act: str, loss: str, centre: float, width: float, height: float, extra: int, seed: int) -> dict:
    """1-H-K on x = 1: a decreasing output offset 1 − α plus a bump of the given width (ReLU: four
    ramps; tanh: two steep steps), plus ``extra`` small random units."""
    g = torch.Generator().manual_seed(seed)
    k_out = 1 if loss == "mse" else 2
    base = 4 if act == "relu" else 2
    h = base + 1 + extra
    w1 = {e: torch.zeros(h, 1) for e in ("0", "T")}
    b1 = {e: torch.zeros(h) for e in ("0", "T")}
    v = torch.zeros(k_out, h)
    vT = torch.zeros(k_out, h)

    def unit(u: int, slope: float, at: float) -> None:  # pre-activation slope·(α − at), split between weight and bias
        p0, p1 = -slope * at, slope * (1 - at)
        w1["0"][u, 0], b1["0"][u], w1["T"][u, 0], b1["T"][u] = p0 / 2, p0 / 2, p1 / 2, p1 / 2

    if act == "relu":
        q = width / 4
        for u, (at, sign) in enumerate(zip((centre - 2 * q, centre - q, centre + q, centre + 2 * q), (1, -1, -1, 1))):
            unit(u, height / q, at)
            v[0, u] = vT[0, u] = sign
    else:
        unit(0, 8.0 / width, centre - width / 4)
        unit(1, 8.0 / width, centre + width / 4)
        v[0, 0] = vT[0, 0] = height / 2
        v[0, 1] = vT[0, 1] = -height / 2
    for u in range(base + 1, h):
        w1["0"][u, 0], b1["0"][u], w1["T"][u, 0], b1["T"][u] = (0.3 * torch.randn(4, generator=g)).tolist()
        v[:, u] = 0.1 * torch.randn(k_out, generator=g)
        vT[:, u] = 0.1 * torch.randn(k_out, generator=g)
    c0, cT = torch.zeros(k_out), torch.zeros(k_out)
    c0[0] = 1.0
    s0 = {"0.weight": w1["0"], "0.bias": b1["0"], "2.weight": v, "2.bias": c0}
    s1 = {"0.weight": w1["T"], "0.bias": b1["T"], "2.weight": vT, "2.bias": cT}
    y = torch.zeros(1, 1) if loss == "mse" else torch.tensor([1])
    return dict(name=name, dims=[1, h, k_out], act=act, loss=loss, s0=s0, s1=s1, x=torch.ones(1, 1), y=y, dtype=None)


def _converged_set() -> list[dict]:
    cases = []
    for i in range(16):
        _, act, loss, dims, x, y, s0 = _drawn(i, 500, [16, 32, 64, 128][(i // 4) % 4], [32, 64, 128, 256][i % 4])
        net = _build(dims, act).double()
        net.load_state_dict({k: v.double() for k, v in s0.items()})
        xd, yd = x.double(), (y.double() if loss == "mse" else y)

        def objective() -> torch.Tensor:
            z = net(xd)
            return F.mse_loss(z, yd) if loss == "mse" else F.cross_entropy(z, yd)

        opt = torch.optim.Adam(net.parameters(), 3e-3)
        for _ in range(3000):
            opt.zero_grad()
            objective().backward()
            opt.step()
        lbfgs = torch.optim.LBFGS(net.parameters(), lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=0,
                                  history_size=50, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            lbfgs.zero_grad()
            value = objective()
            value.backward()
            return value

        for _ in range(4):
            lbfgs.step(closure)
        s1 = {k: v.detach().clone() for k, v in net.state_dict().items()}
        cases.append(dict(name=f"conv{i}_{act}_{loss}_{'-'.join(map(str, dims))}_n{x.shape[0]}", dims=dims, act=act, loss=loss,
                          s0=s0, s1=s1, x=x, y=y, dtype="float64", final_loss=float(objective().detach())))
    return cases


def _check(case: dict, folder: str) -> dict:
    from mli_theory.cli import main

    os.makedirs(folder, exist_ok=True)
    init, final, data = (os.path.join(folder, f) for f in ("init.pt", "final.pt", "data.npz"))
    torch.save(case["s0"], init)
    torch.save(case["s1"], final)
    np.savez(data, x=case["x"].numpy(), y=case["y"].numpy())
    arch = "mlp:" + "-".join(map(str, case["dims"])) + ":" + case["act"]
    args = ["check", "--arch", arch, "--init", init, "--final", final, "--data", data, "--loss", case["loss"], "--certify", "--json"]
    if case["dtype"]:
        args += ["--dtype", case["dtype"]]
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    seconds = time.perf_counter() - t0
    row = dict(name=case["name"], exit=code, seconds=round(seconds, 2))
    if "final_loss" in case:
        row["final_loss"] = case["final_loss"]
    if code != 0:
        row["error"] = err.getvalue().strip().splitlines()[-1:]
        return row
    result = json.loads(out.getvalue())
    cert = result["certificate"]
    model = _build(case["dims"], case["act"]).double()
    rise = _reference_rise(model, case["s0"], case["s1"], case["x"], case["y"], case["loss"])
    verdict = "ok"
    if cert["status"] == "monotone" and rise > 0:
        verdict = "FALSE"
    if cert["status"] == "non_monotone":
        a, b = cert["where"]
        measured = _loss_at(model, case["s0"], case["s1"], case["x"], case["y"], case["loss"], b) - \
            _loss_at(model, case["s0"], case["s1"], case["x"], case["y"], case["loss"], a)
        if not (measured > 0 or "below float64's resolution" in cert.get("reason", "")):
            verdict = "WITNESS NOT REPRODUCED"
    row.update(status=cert["status"], cells=cert.get("cells"), reference_rise=rise, grid_rise=result["max_rise"], reported_rise=cert.get("rise"),
               where=cert.get("where"), verdict=verdict)
    if cert["status"] == "unknown":
        row["reason"] = cert.get("reason")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", choices=("random", "converged", "all"), default="all")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "small_paths"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cases = (_random_set() if args.set in ("random", "all") else []) + (_converged_set() if args.set in ("converged", "all") else [])
    rows = []
    for case in cases:
        row = _check(case, os.path.join(args.out, case["name"]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    decided = sum(r.get("status") in ("monotone", "non_monotone") for r in rows)
    wrong = sum(r.get("verdict", "ok") != "ok" or r["exit"] != 0 for r in rows)
    print(f"{decided} of {len(rows)} decided; {wrong} wrong or failed", flush=True)


if __name__ == "__main__":
    main()
