"""Benchmark: cost and accuracy of the Gauss length against the loss curve, side by side.

    python benchmarks/gauss_cost.py [--repeats 3] [--threads N] [--case deep_linear|tanh|all] [--cli] [--accuracy-seeds 8]

Cases (float64, CPU unless --device):

* ``deep_linear``: ``deep_linear:64-64-64-64-64-64-64-64-64-1``, n = 1024 Gaussian inputs, θT = θ0 +
  N(0, 0.1²) noise; the check's default grid (50 α). Rows: the loss curve (the unit), the jets at the
  50 α (what the conditions need anyway), the Gauss length on those jets (the angle-sum default with
  the tolerance the conditions pass today, 1e-3, and with its own default, 1e-5; and the former
  kink-aware quadrature, ``rule="kinks"``, with the budget of 513 α the conditions give it), and
  the whole geometry of a check (:func:`mli_theory.theory.evaluate_conditions`) before and after.
  Reference: angle sums on 513 and 1025 evenly spaced α (z′ by ``torch.func.jvp`` of a plain
  forward pass), Richardson-extrapolated for the stacked outputs; for the examples (one output each,
  so every turn is a reversal by π) the finer sum.
* ``tanh``: ``mlp:5-16-16-2:tanh``, n = 20, θT = θ0 + 0.5·N(0, 1) (seed 0; the path of
  tests/test_gauss_length.py): the Gauss length from scratch (default, and the former quadrature)
  and the reference code's method (AtheMathmo/mli-release, reimplemented here: at K evenly spaced α,
  z′ and dT/dα by reverse-mode double backward, the trapezoid rule of ‖dT/dα⊥‖) at K = 50 (its
  training-time grid) and K = 200 (its test). Reference: the angle sum on 20 001 α, z′ by
  ``torch.func.jvp`` of a plain forward pass.

``--cli`` also times ``mli-theory check --certify --certify-budget 2 --dtype float64 --json`` on the
deep_linear case with and without ``--no-geometry`` (one run each). Times are medians of
``--repeats`` runs after one warm-up; ``os.getloadavg()`` is printed before and after (other work on
the machine inflates the times).
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch.func import functional_call, jvp, vmap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import add_quiet_flag, quiet_run  # noqa: E402
from mli_theory.geometry import gauss_length, path_jet
from mli_theory.inputs import Dataset, build_model
from mli_theory.path import alpha_grid, loss_curve, make_line

F64 = torch.float64


def timed(fn, repeats: int):
    """(median seconds, last result) of ``repeats`` calls after one warm-up call."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def angle_sum_reference(model, start, end, x, points: int, chunk: int = 1000):
    """(mean over examples, stacked) of Σ angle(T_i, T_{i+1}) on ``points`` evenly spaced α, with z′
    from ``torch.func.jvp`` of a plain ``functional_call`` (independent of mli_theory's jets)."""
    names = list(start)

    def z_of(a):
        return functional_call(model, {k: (1 - a) * start[k] + a * end[k] for k in names}, (x,))

    def velocity(a):
        return jvp(z_of, (a,), (torch.ones_like(a),))[1]

    alphas = torch.linspace(0, 1, points, dtype=F64)
    per, st = torch.zeros(x.shape[0], dtype=F64), 0.0
    prev = None
    with torch.no_grad():
        for i in range(0, points, chunk):
            v = vmap(velocity)(alphas[i : i + chunk])
            v = v.reshape(v.shape[0], x.shape[0], -1)  # (chunk, n, k)
            if prev is not None:
                v = torch.cat([prev, v])
            t = v / v.norm(dim=-1, keepdim=True)
            s = v.reshape(v.shape[0], -1)
            s = s / s.norm(dim=-1, keepdim=True)
            per += (2 * torch.atan2((t[1:] - t[:-1]).norm(dim=-1), (t[1:] + t[:-1]).norm(dim=-1))).sum(0)
            st += float((2 * torch.atan2((s[1:] - s[:-1]).norm(dim=-1), (s[1:] + s[:-1]).norm(dim=-1))).sum())
            prev = v[-1:]
    return float(per.mean()), st


def paper_method(model, start, end, x, K: int) -> float:
    """The reference code's Gauss length, reimplemented: at K evenly spaced α, z′ = dz/dα and then
    dT/dα (T = z′/‖z′‖) each by the double-backward trick of reverse mode (a vector-Jacobian
    product through a dummy cotangent, differentiated again), ‖dT/dα − ⟨T, dT/dα⟩T‖ per example,
    the trapezoid rule over α, the mean over examples."""
    names = list(start)

    def ddalpha(y: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        w = torch.ones_like(y, requires_grad=True)
        (g,) = torch.autograd.grad(y, a, w, create_graph=True)
        (d,) = torch.autograd.grad(g, w, torch.ones_like(g), create_graph=True)
        return d

    rates = []
    for alpha in np.linspace(0, 1, K):
        a = torch.tensor(float(alpha), dtype=F64, requires_grad=True)
        z = functional_call(model, {k: (1 - a) * start[k] + a * end[k] for k in names}, (x,))
        v = ddalpha(z, a)
        t = v / v.norm(dim=-1, keepdim=True)
        dt = ddalpha(t, a)
        perp = dt - (dt * t).sum(-1, keepdim=True) * t
        rates.append(perp.norm(dim=-1).detach())
    r = torch.stack(rates)
    h = 1.0 / (K - 1)
    return float(((r[1:] + r[:-1]) / 2 * h).sum(0).mean())


def row(name: str, seconds: float, unit: float, value: float | None = None, ref: float | None = None, extra: str = "") -> str:
    err = "" if value is None or ref is None else f"{abs(value - ref) / abs(ref):.1e}"
    val = "" if value is None else f"{value:.7f}"
    return f"| {name} | {1e3 * seconds:.1f} | {seconds / unit:.2f} | {val} | {err} | {extra} |"


HEADER = "| work | ms | × loss curve | G (mean over examples) | rel. error | notes |\n|---|---|---|---|---|---|"


def deep_linear_case(args) -> None:
    from mli_theory.theory import conditions as cond_mod
    from mli_theory.theory import evaluate_conditions

    torch.manual_seed(0)
    model = build_model("deep_linear:64-64-64-64-64-64-64-64-64-1").double()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.1 * torch.randn_like(v) for k, v in init.items()}
    x = torch.randn(1024, 64, dtype=F64)
    y = torch.randn(1024, 1, dtype=F64)
    line = make_line(model, init, final, dtype=F64, device=args.device)
    data = Dataset(x, y, "mse", "synthetic").to(args.device, F64)
    grid = alpha_grid(50)
    at = torch.tensor(grid, dtype=F64)
    r = args.repeats
    t_curve, _ = timed(lambda: loss_curve(line, data, grid), r)
    t_jets, jet = timed(lambda: path_jet(line, data, at), r)
    t_new3, g3 = timed(lambda: gauss_length(line, data, jet=jet, rtol=1e-3, max_alphas=513), r)
    t_new, g = timed(lambda: gauss_length(line, data, jet=jet, max_alphas=513), r)
    t_old, g_old = timed(lambda: gauss_length(line, data, jet=jet, rule="kinks", rtol=1e-3, max_alphas=513), max(1, r // 2))

    # as the check calls it: no proofs here (the check runs them under its own budget)
    kw = {"prove": False} if "prove" in inspect.signature(evaluate_conditions).parameters else {}
    t_geo3, _ = timed(lambda: evaluate_conditions(line, data, alphas=grid, **kw), r)
    t_geo, _ = timed(lambda: evaluate_conditions(line, data, alphas=grid, rtol=None, **kw), r)
    original = cond_mod.gauss_length
    cond_mod.gauss_length = lambda *a, **kwargs: original(*a, **{**kwargs, "rule": "kinks"})
    try:
        t_geo_old, _ = timed(lambda: evaluate_conditions(line, data, alphas=grid, **kw), max(1, r // 2))
    finally:
        cond_mod.gauss_length = original

    ref = None
    if not args.no_reference:
        plain = build_model("deep_linear:64-64-64-64-64-64-64-64-64-1").double()
        (m1, s1), (m2, s2) = (angle_sum_reference(plain, init, final, x, p, chunk=32) for p in (513, 1025))
        ref = (m2, s2 + (s2 - s1) / 3)
    print(f"\n### deep_linear:64-64-64-64-64-64-64-64-64-1, n = 1024, float64, 50 α (load {os.getloadavg()})\n")
    print(HEADER)
    mref = None if ref is None else ref[0]
    print(row("loss curve, 50 α", t_curve, t_curve))
    print(row("jets z′, z″ at the 50 α (needed by the conditions)", t_jets, t_curve))
    for name, t, res in (
        ("Gauss length on those jets, angle sums, rtol 1e-3 (what the conditions pass)", t_new3, g3),
        ("Gauss length on those jets, angle sums, default rtol 1e-5", t_new, g),
        ("Gauss length on those jets, former kink quadrature (before)", t_old, g_old),
    ):
        st = "" if ref is None else f"stacked {res.stacked:.7f} (rel. error {abs(res.stacked - ref[1]) / ref[1]:.1e})"
        print(row(name, t, t_curve, res.mean, mref, f"{res.n_alphas} α, converged {res.converged}, error {res.error:.1e}; {st}"))
    print(row("geometry of a check (evaluate_conditions, no proofs), before", t_geo_old, t_curve))
    print(row("geometry of a check, after (rtol 1e-3 as passed today)", t_geo3, t_curve))
    print(row("geometry of a check, after, Gauss length at its default rtol", t_geo, t_curve))
    if ref is not None:
        print(f"\nreference (angle sums on 513/1025 α, Richardson): mean {ref[0]:.9f}, stacked {ref[1]:.9f}")
    if args.cli:
        cli_case(init, final, x, y, args.threads)


# run the CLI in a fresh process, optionally with the former Gauss length (rule="kinks") patched in
_CLI = """
import sys, time
if sys.argv[1] == "before":
    import mli_theory.theory.conditions as c
    original = c.gauss_length
    c.gauss_length = lambda *a, **kw: original(*a, **{**kw, "rule": "kinks"})
from mli_theory.cli import main
t = time.perf_counter()
main(sys.argv[2:])
print(f"{time.perf_counter() - t:.2f}", file=sys.stderr)
"""


def cli_case(init, final, x, y, threads: int | None) -> None:
    """``mli-theory check --certify --certify-budget 2 --dtype float64 --json``, wall time of main()."""
    with tempfile.TemporaryDirectory() as d:
        torch.save(init, os.path.join(d, "init.pt"))
        torch.save(final, os.path.join(d, "final.pt"))
        np.savez(os.path.join(d, "data.npz"), x=x.numpy(), y=y.numpy())
        base = ["check", "--arch", "deep_linear:64-64-64-64-64-64-64-64-64-1", "--init", os.path.join(d, "init.pt"),
                "--final", os.path.join(d, "final.pt"), "--data", os.path.join(d, "data.npz"), "--certify",
                "--certify-budget", "2", "--dtype", "float64", "--json"]  # fmt: skip
        for label, which, extra in (
            ("before (former Gauss length)", "before", []),
            ("after", "after", []),
            ("--no-geometry", "after", ["--no-geometry"]),
        ):
            env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
            cmd = [sys.executable, "-c", _CLI, which, *base, *extra]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            seconds = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "?"
            print(f"CLI check, {label}: {seconds} s (load {os.getloadavg()})")


def tanh_case(args) -> None:
    torch.manual_seed(0)
    model = build_model("mlp:5-16-16-2:tanh").double()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.5 * torch.randn_like(v) for k, v in init.items()}
    x = torch.randn(20, 5, dtype=F64)
    data = Dataset(x, torch.randn(20, 2, dtype=F64), "mse", "t").to(args.device, F64)
    line = make_line(model, init, final, dtype=F64, device=args.device)
    plain = build_model("mlp:5-16-16-2:tanh").double()
    r = args.repeats
    ref, ref_st = angle_sum_reference(plain, init, final, x, 20001)
    t_curve, _ = timed(lambda: loss_curve(line, data, alpha_grid(50)), r)
    t_new, g = timed(lambda: gauss_length(line, data), r)
    t_new3, g3 = timed(lambda: gauss_length(line, data, rtol=1e-3), r)
    t_old, g_old = timed(lambda: gauss_length(line, data, rule="kinks", rtol=1e-3), r)
    t_p50, p50 = timed(lambda: paper_method(plain, init, final, x, 50), r)
    t_p200, p200 = timed(lambda: paper_method(plain, init, final, x, 200), r)
    print(f"\n### mlp:5-16-16-2:tanh, n = 20, float64 (load {os.getloadavg()})\n")
    print(HEADER)
    print(row("loss curve, 50 α", t_curve, t_curve))
    for name, t, res in (
        ("Gauss length, angle sums (default, rtol 1e-5)", t_new, g),
        ("Gauss length, angle sums, rtol 1e-3", t_new3, g3),
        ("Gauss length, former kink quadrature, rtol 1e-3 (before)", t_old, g_old),
    ):
        st = f"stacked {res.stacked:.7f} (rel. error {abs(res.stacked - ref_st) / ref_st:.1e})"
        print(row(name, t, t_curve, res.mean, ref, f"{res.n_alphas} α, converged {res.converged}, error {res.error:.1e}; {st}"))
    print(row("reference code's method (reimplemented), K = 50", t_p50, t_curve, p50, ref, f"{t_p50 / t_new:.1f}× the default's time"))
    print(row("reference code's method (reimplemented), K = 200", t_p200, t_curve, p200, ref, f"{t_p200 / t_new:.1f}× the default's time"))
    print(f"\nreference (angle sum on 20 001 α, torch.func.jvp): mean {ref:.9f}, stacked {ref_st:.9f}")


def accuracy_sweep(args) -> None:
    """Relative errors on the tanh paths of seeds 0..N−1 (θT = θ0 + 0.5·noise, n = 20): the default
    from scratch, and the check's settings (jets on 50 α, rtol 1e-3, at most 513 α), after and
    before, against the 20 001-α angle sum of a plain forward pass."""
    print(f"\n### accuracy, mlp:5-16-16-2:tanh, n = 20, seeds 0–{args.accuracy_seeds - 1}\n")
    print("| seed | reference mean | default: rel. error mean / stacked, α | check settings: after | check settings: before |")
    print("|---|---|---|---|---|")
    for seed in range(args.accuracy_seeds):
        torch.manual_seed(seed)
        model = build_model("mlp:5-16-16-2:tanh").double()
        init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        final = {k: v + 0.5 * torch.randn_like(v) for k, v in init.items()}
        x = torch.randn(20, 5, dtype=F64)
        data = Dataset(x, torch.randn(20, 2, dtype=F64), "mse", "t")
        line = make_line(model, init, final, dtype=F64)
        ref, ref_st = angle_sum_reference(build_model("mlp:5-16-16-2:tanh").double(), init, final, x, 20001)
        jet = path_jet(line, data, torch.linspace(0, 1, 50, dtype=F64))

        def cell(g) -> str:
            flag = "" if g.converged else ", not converged"
            return f"{abs(g.mean - ref) / ref:.1e} / {abs(g.stacked - ref_st) / ref_st:.1e}, {g.n_alphas} α{flag}"

        cells = [
            cell(gauss_length(line, data)),
            cell(gauss_length(line, data, jet=jet, rtol=1e-3, max_alphas=513)),
            cell(gauss_length(line, data, jet=jet, rtol=1e-3, max_alphas=513, rule="kinks")),
        ]
        print(f"| {seed} | {ref:.7f} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--case", default="all", choices=["all", "deep_linear", "tanh"])
    ap.add_argument("--cli", action="store_true", help="also time the CLI check with and without geometry")
    ap.add_argument("--accuracy-seeds", type=int, default=0, help="also the accuracy table over this many tanh seeds")
    ap.add_argument("--no-reference", action="store_true", help="skip the deep_linear reference (about 1500 jvp passes)")
    add_quiet_flag(ap)
    args = ap.parse_args()
    with quiet_run(args.require_quiet):
        if args.threads:
            torch.set_num_threads(args.threads)
        print(f"machine: {platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}")
        print(f"load average at start: {os.getloadavg()}")
        if args.case in ("all", "tanh"):
            tanh_case(args)
        if args.case in ("all", "deep_linear"):
            deep_linear_case(args)
        if args.accuracy_seeds:
            accuracy_sweep(args)
        print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
