"""Benchmark: Hessian top eigenvalue (relative residual 1e-3) and trace (1%) at a point of the path,
mli-theory vs a PyHessian-style baseline and curvlinops, side by side in one run.

    python benchmarks/curvature_speed.py [--quick] [--model mlp|resnet|all] [--n N] [--device cpu|cuda]
                                         [--skip-trace] [--trace-budget M]

Models: MLP 784-1000-1000-10 on synthetic teacher data (n = 2000 by default: labels from a fixed
random 784-64-10 tanh teacher, cross-entropy), and a small ResNet defined here (three residual
blocks with BatchNorm2d, 3×16×16 inputs, n = 256, MSE on teacher outputs). θ0 is the default
initialisation, θT = θ0 + 0.05·noise, and the Hessian is taken at α = 0.5 with BatchNorm
statistics held at θT's (``bn="frozen"``, eval mode), the same function for every method.

Methods (every one on the same mean loss over all n examples, float32):

* **ours**: :func:`mli_theory.curvature.extreme_eigenpairs` (block Lanczos, block size k,
  stopped at the Ritz residual bound, ARPACK as fallback) for the top eigenvalue, the top 3 and
  the smallest (``SA``), and :func:`mli_theory.curvature.hutchpp_trace` (Hutch++ with a 95%
  Student-t interval, stopped at half-width ≤ 1% or the product budget), each with the default
  ``engine="auto"`` (on a CPU: ``double_backward`` when the cached graph fits the memory budget;
  operator construction, i.e. graph build and memory measurement, is inside the timed region)
  and with ``forward_over_reverse`` (``torch.func``). The ratio column divides by the first
  (default-engine) row of each task; a summary line gives curvlinops' time / ours per task.
* **PyHessian (baseline, reimplemented here)**: PyHessian's own code is GPL and hard-codes
  ``.cuda()``, so its algorithm is re-written inline, faithfully: one forward pass and
  ``loss.backward(create_graph=True)`` on the whole batch, then every HVP is a second backward
  through that cached graph (``autograd.grad(g, θ, v, retain_graph=True)``); power iteration for
  the top eigenvalue and Hutchinson (Rademacher) for the trace. PyHessian stops the power
  iteration when consecutive eigenvalue estimates change by < tol (relative) and the trace when
  the running mean changes by < tol; both rules are run (``own rule``) and, for the *same answer
  quality*, the iteration is continued until the residual ‖Hv − λv‖ ≤ 1e-3·λ, resp. until a 95%
  interval has half-width ≤ 1% (``same tol``).
* **curvlinops** (``pip install curvlinops-for-pytorch``; skipped if absent):
  ``HessianLinearOperator`` with SciPy's ``eigsh`` (its documented route; same k and ``which``,
  ``tol`` = 1e-3, stopped after ``--eig-budget`` products), and its ``hutchpp_trace`` given the
  same number of products that ours needed (it has no stopping rule or interval).

Run time of ``--model mlp`` (n = 2000, trace budget 48): about 10 min on a shared 2-core CPU;
``--quick`` (n = 500 / 64, no trace) a few minutes. The load average is printed with each table.

Ratios are time(other) / time(ours, default engine): > 1 means ours is faster. Each method runs
once after one untimed warm-up product (graph construction of the cached-graph methods is timed).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from _timing import big_mlp, small_resnet  # noqa: E402


from mli_theory.curvature import extreme_eigenpairs, hutchpp_trace, loss_hessian  # noqa: E402
from mli_theory.inputs import Dataset  # noqa: E402
from mli_theory.path import make_line  # noqa: E402

ALPHA = 0.5
EIG_TOL = 1e-3
TRACE_RTOL = 0.01


# ----------------------------------------------------------------------------- models and data


def setup(name: str, n: int, device: str):
    """(model at θ(α) in eval mode, line, data, criterion) for one benchmark model."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if name == "mlp":
        model = big_mlp()
        x = torch.randn(n, 784, generator=g)
        teacher = nn.Sequential(nn.Linear(784, 64), nn.Tanh(), nn.Linear(64, 10))
        with torch.no_grad():
            y = teacher(x).argmax(1)
        loss = "ce"
    else:
        model = small_resnet()
        x = torch.randn(n, 3, 16, 16, generator=g)
        teacher = small_resnet(8).eval()
        with torch.no_grad():
            y = teacher(x)
        loss = "mse"
    model = model.to(device).eval()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    final = {
        k: (v + 0.05 * torch.randn(v.shape, generator=g).to(device) if v.is_floating_point() else v)
        for k, v in init.items()
    }
    data = Dataset(x.to(device), y.to(device), loss, "teacher")
    line = make_line(model, init, final, device=device)
    state = line.at(ALPHA, "frozen")  # θ(α); BatchNorm statistics θT's, as the HVP operator uses
    at = big_mlp() if name == "mlp" else small_resnet()
    at.load_state_dict(state)
    at = at.to(device).eval()
    crit = nn.CrossEntropyLoss() if loss == "ce" else nn.MSELoss()
    return at, line, data, crit


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- PyHessian-style baseline


class CachedGraphHVP:
    """PyHessian's single-batch HVP: the gradient graph is built once, every product is a second backward."""

    def __init__(self, model: nn.Module, crit, x: torch.Tensor, y: torch.Tensor) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        loss = crit(model(x), y)
        self.grads = torch.autograd.grad(loss, self.params, create_graph=True)

    def __call__(self, v: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(torch.autograd.grad(self.grads, self.params, grad_outputs=v, retain_graph=True))


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def _unit(v: list[torch.Tensor]) -> list[torch.Tensor]:
    s = math.sqrt(_dot(v, v))
    return [t / (s + 1e-6) for t in v]  # PyHessian adds 1e-6 to the norm


def power_iteration(hvp: CachedGraphHVP, own_tol: float, res_tol: float, max_iter: int, seed: int = 0):
    """Power iteration; returns (λ and products at PyHessian's own stop, λ, products, residual at ‖Hv−λv‖ ≤ res_tol·λ)."""
    g = torch.Generator().manual_seed(seed)
    v = _unit([torch.randn(p.shape, generator=g).to(p) for p in hvp.params])
    prev, own = None, None
    lam, res = math.nan, math.inf
    for i in range(1, max_iter + 1):
        hv = hvp(v)
        lam = _dot(hv, v)
        res = math.sqrt(sum(float((a.double() - lam * b.double()).pow(2).sum()) for a, b in zip(hv, v)))
        if own is None and prev is not None and abs(prev - lam) / (abs(prev) + 1e-6) < own_tol:
            own = (lam, i)
        if res <= res_tol * abs(lam):
            return own or (lam, i), (lam, i, res)
        prev = lam
        v = _unit(hv)
    return own or (lam, max_iter), (lam, max_iter, res)


def hutchinson(hvp: CachedGraphHVP, own_tol: float, rtol: float, max_iter: int, seed: int = 0):
    """Rademacher Hutchinson; (estimate, products) at PyHessian's own stop and at a 95% half-width ≤ rtol."""
    from scipy.stats import t as student_t

    g = torch.Generator().manual_seed(seed)
    vals: list[float] = []
    own, mean_prev = None, 0.0
    half = math.inf
    for i in range(1, max_iter + 1):
        v = [(torch.randint(0, 2, p.shape, generator=g) * 2.0 - 1.0).to(p) for p in hvp.params]
        vals.append(_dot(hvp(v), v))
        m = float(np.mean(vals))
        if own is None and abs(m - mean_prev) / (abs(mean_prev) + 1e-6) < own_tol:
            own = (m, i)
        mean_prev = m
        if i >= 24:
            half = float(student_t.ppf(0.975, i - 1)) * float(np.std(vals, ddof=1)) / math.sqrt(i)
            if half <= rtol * abs(m):
                break
    return own or (float(np.mean(vals)), len(vals)), (float(np.mean(vals)), len(vals), half)


# ----------------------------------------------------------------------------- curvlinops


def curvlinops_operator(model: nn.Module, crit, x: torch.Tensor, y: torch.Tensor):
    try:
        from curvlinops import HessianLinearOperator
    except ImportError:
        return None
    params = [p for p in model.parameters() if p.requires_grad]
    return HessianLinearOperator(model, crit, params, [(x, y)], check_deterministic=False)


class _Budget(Exception):
    pass


def curvlinops_eigsh(op, k: int, which: str, tol: float, seed: int = 0, max_products: int = 400):
    """curvlinops' documented route: SciPy ``eigsh`` over ``HessianLinearOperator.to_scipy()``.

    Returns (eigenvalues in ``which`` order, products, worst relative residual ‖Hv − λv‖/|λ|), or
    None values when ``max_products`` ran out first."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    lin = op.to_scipy()
    n = lin.shape[0]
    v0 = np.random.default_rng(seed).standard_normal(n).astype(lin.dtype)
    count = [0]
    mv = lin.matvec

    def counted(v):
        count[0] += 1
        if count[0] > max_products:
            raise _Budget
        return mv(v)

    wrapped = LinearOperator(lin.shape, matvec=counted, dtype=lin.dtype)
    try:
        vals, vecs = eigsh(wrapped, k=k, which=which, tol=tol, v0=v0)
    except _Budget:
        return None, max_products, math.nan
    order = np.argsort(vals) if which == "SA" else np.argsort(-vals)
    vals, vecs = vals[order], vecs[:, order]
    res = max(float(np.linalg.norm(mv(vecs[:, i]) - vals[i] * vecs[:, i]) / abs(vals[i])) for i in range(k))
    return [float(v) for v in vals], count[0] + k, res


def _fmt(vals) -> str:
    return ",".join(f"{v:.6g}" for v in vals)


# ----------------------------------------------------------------------------- run


EIG_TASKS = (("top eigenvalue", 1, "LA"), ("top-3 eigenvalues", 3, "LA"), ("smallest eigenvalue", 1, "SA"))


def bench(name: str, n: int, device: str, do_trace: bool, trace_budget: int, eig_budget: int = 400) -> list[str]:
    model, line, data, crit = setup(name, n, device)
    n_params = sum(p.numel() for p in model.parameters())
    rows: list[tuple[str, str, float, int, str]] = []
    print(f"\n== {name}: {n_params} parameters, n = {n}, {data.loss}, α = {ALPHA}, bn frozen, {device}, "
          f"load average {os.getloadavg()}", flush=True)

    fwd = loss_hessian(line, data, ALPHA, bn="frozen", engine="forward_over_reverse")
    fwd.matvec(torch.ones(fwd.size, device=device))  # warm-up (torch.func's first call), untimed
    warm = loss_hessian(line, data, ALPHA, bn="frozen", engine="double_backward")
    warm.matmat(torch.ones(2, warm.size, device=device))  # warm-up of the batched backward, untimed
    del warm
    cl = curvlinops_operator(model, crit, data.x, data.y)
    if cl is not None:
        cl @ torch.ones(n_params, device=device)  # warm-up, untimed
    engine_used = "?"
    cached = None
    for task, k, which in EIG_TASKS:
        # ours, default engine ("auto"): operator construction (graph build + memory measurement) timed
        sync(device)
        t = time.perf_counter()
        op = loss_hessian(line, data, ALPHA, bn="frozen")
        ours = extreme_eigenpairs(op, k, which, tol=EIG_TOL, seed=0)
        sync(device)
        t_ours = time.perf_counter() - t
        engine_used = op.engine
        res = max(r / abs(v) for r, v in zip(ours.residuals, ours.eigenvalues))
        rows.append((task, f"ours (Lanczos, engine auto → {op.engine})", t_ours, ours.n_matvecs,
                     f"λ={_fmt(ours.eigenvalues)} res/|λ|≤{res:.1e}"))
        print(f"  {task} ours auto ({op.engine}): {t_ours:.1f} s", flush=True)
        del op
        t = time.perf_counter()
        ours2 = extreme_eigenpairs(fwd, k, which, tol=EIG_TOL, seed=0)
        sync(device)
        t_ours2 = time.perf_counter() - t
        res2 = max(r / abs(v) for r, v in zip(ours2.residuals, ours2.eigenvalues))
        rows.append((task, "ours (Lanczos, forward_over_reverse)", t_ours2, ours2.n_matvecs,
                     f"λ={_fmt(ours2.eigenvalues)} res/|λ|≤{res2:.1e}"))
        print(f"  {task} ours fwd-over-rev: {t_ours2:.1f} s", flush=True)

        if task == "top eigenvalue":
            t = time.perf_counter()
            cached = CachedGraphHVP(model, crit, data.x, data.y)
            own, same = power_iteration(cached, 1e-3, EIG_TOL, max_iter=1000)
            sync(device)
            t_pyh = time.perf_counter() - t
            rows.append((task, "PyHessian-style power, same tol", t_pyh, same[1], f"λ={same[0]:.6g} res/λ={same[2] / abs(same[0]):.1e}"))
            rows.append((task, "PyHessian-style power, own rule", t_pyh * own[1] / same[1], own[1], f"λ={own[0]:.6g} (est. time)"))
            print(f"  pyhessian-style: {t_pyh:.1f} s", flush=True)

        if cl is not None:
            t = time.perf_counter()
            lam_c, k_c, res_c = curvlinops_eigsh(cl, k, which, EIG_TOL, max_products=eig_budget)
            sync(device)
            t_cl = time.perf_counter() - t
            ans = f"λ={_fmt(lam_c)} res/|λ|≤{res_c:.1e}" if lam_c is not None else f"not converged in {eig_budget} products"
            rows.append((task, "curvlinops + eigsh", t_cl, k_c, ans))
            print(f"  {task} curvlinops: {t_cl:.1f} s", flush=True)

    # -------- trace
    if do_trace:
        t = time.perf_counter()
        op = loss_hessian(line, data, ALPHA, bn="frozen")
        tr = hutchpp_trace(op, rtol=TRACE_RTOL, confidence=0.95, max_matvecs=trace_budget, seed=0)
        sync(device)
        t_tr = time.perf_counter() - t
        rows.append(("trace", f"ours (Hutch++, 95% CI, engine auto → {op.engine})", t_tr, tr.n_matvecs,
                     f"tr={tr.value:.6g} ±{tr.half_width:.3g} ({'reached' if tr.converged else 'NOT reached'} 1%)"))
        print(f"  ours trace: {t_tr:.1f} s", flush=True)
        del op
        t = time.perf_counter()
        tr2 = hutchpp_trace(fwd, rtol=TRACE_RTOL, confidence=0.95, max_matvecs=trace_budget, seed=0)
        t_tr2 = time.perf_counter() - t
        rows.append(("trace", "ours (Hutch++, forward_over_reverse)", t_tr2, tr2.n_matvecs,
                     f"tr={tr2.value:.6g} ±{tr2.half_width:.3g} ({'reached' if tr2.converged else 'NOT reached'} 1%)"))
        print(f"  ours trace fwd-over-rev: {t_tr2:.1f} s", flush=True)
        if cached is not None:
            t = time.perf_counter()
            own_t, same_t = hutchinson(cached, 1e-3, TRACE_RTOL, max_iter=trace_budget)
            t_h = time.perf_counter() - t
            rows.append(("trace", "PyHessian-style Hutchinson, same tol", t_h, same_t[1],
                         f"tr={same_t[0]:.6g} ±{same_t[2]:.3g}"))
            rows.append(("trace", "PyHessian-style Hutchinson, own rule", t_h * own_t[1] / same_t[1], own_t[1], f"tr={own_t[0]:.6g} (est. time)"))
            print(f"  pyhessian-style trace: {t_h:.1f} s", flush=True)
        if cl is not None:
            from curvlinops import hutchpp_trace as cl_hutchpp

            m = max(3, 3 * round(tr.n_matvecs / 3))
            t = time.perf_counter()
            torch.manual_seed(0)
            est = float(cl_hutchpp(cl, m))
            t_c = time.perf_counter() - t
            rows.append(("trace", "curvlinops hutchpp_trace, same budget", t_c, m, f"tr={est:.6g} (no interval)"))
            print(f"  curvlinops trace: {t_c:.1f} s", flush=True)

    out = [f"### {name}: {n_params:,} parameters, n = {n} ({data.loss}), {machine(device)}, "
           f"engine auto → {engine_used}, load average at the end {tuple(round(x, 2) for x in os.getloadavg())}", "",
           "| task | method | s | HVPs | answer | time / ours |", "|---|---|---:|---:|---|---:|"]
    ref = {}
    for task, meth, sec, k, ans in rows:
        if meth.startswith("ours") and task not in ref:
            ref[task] = sec  # the default engine's row
        out.append(f"| {task} | {meth} | {sec:.1f} | {k} | {ans} | {sec / ref[task]:.2f} |")
    summary = [f"curvlinops time / ours (default engine), > 1: ours faster:"]
    for task, meth, sec, k, ans in rows:
        if meth.startswith("curvlinops"):
            summary.append(f"  {task}: {sec / ref[task]:.2f}")
    return out + [""] + summary


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads (torch {torch.__version__})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="all", choices=["mlp", "resnet", "all"])
    ap.add_argument("--n", type=int, default=None, help="examples (default: 2000 for the MLP, 256 for the ResNet)")
    ap.add_argument("--quick", action="store_true", help="n = 500 / 64 and no trace (a smoke run)")
    ap.add_argument("--skip-trace", action="store_true")
    ap.add_argument("--trace-budget", type=int, default=48, help="most products per trace estimate (default 48)")
    ap.add_argument("--eig-budget", type=int, default=400,
                    help="most products curvlinops' eigsh may spend per task before it is stopped (default 400)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    lines = []
    for name in (["mlp", "resnet"] if args.model == "all" else [args.model]):
        n = args.n or ((500 if name == "mlp" else 64) if args.quick else (2000 if name == "mlp" else 256))
        lines += bench(name, n, args.device, not (args.skip_trace or args.quick), args.trace_budget, args.eig_budget) + [""]
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
