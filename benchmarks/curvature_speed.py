"""Benchmark: Hessian top eigenvalues (relative residual 1e-3), trace at equal accuracy and the
spectral density at a point of the path, mli-theory vs a PyHessian-style baseline and curvlinops,
side by side in one run.

    python benchmarks/curvature_speed.py [--quick] [--model mlp|resnet|all] [--n N] [--device cpu|cuda]
                                         [--tasks eig,trace,slq] [--trace-budget M] [--trace-seeds S]
                                         [--threads T] [--require-quiet]

Models: MLP 784-1000-1000-10 (ReLU) on synthetic teacher data (n = 2000 by default: labels from a
fixed random 784-64-10 tanh teacher, cross-entropy), and a small ResNet defined here (three
residual blocks with BatchNorm2d, 3×16×16 inputs, n = 256, MSE on teacher outputs). θ0 is the
default initialisation, θT = θ0 + 0.05·noise, and the Hessian is taken at α = 0.5 with BatchNorm
statistics held at θT's (``bn="frozen"``, eval mode), the same function for every method.

Tasks (``--tasks``, default all three):

* **eig**: top eigenvalue, top 3, smallest. **ours**: :func:`mli_theory.curvature.extreme_eigenpairs`
  (block Lanczos, stopped at the Ritz residual bound, ARPACK as fallback), with the default
  ``engine="auto"`` (operator construction, i.e. graph build and memory measurement, inside the
  timed region) and with ``forward_over_reverse``. **PyHessian (reimplemented here)**: PyHessian's
  code is GPL and hard-codes ``.cuda()``, so its algorithm is re-written inline: one forward pass
  and ``loss.backward(create_graph=True)``, every HVP a second backward through that graph; power
  iteration, stopped by its own rule (relative change < tol) and, for the same answer quality,
  continued until ‖Hv − λv‖ ≤ 1e-3·λ. **curvlinops**: ``HessianLinearOperator`` with SciPy's
  ``eigsh`` (its documented route; same k and ``which``, tol 1e-3, at most ``--eig-budget`` products).
* **trace, at the same accuracy**: the exact trace is the reference. Both models are piecewise
  linear in every single parameter (ReLU, linear and convolution layers, BatchNorm with frozen
  statistics, average pooling), so diag(∇²z) = 0 for every output z and tr H = tr GGN =
  (1/N) Σ_i tr(J_iᵀ H_ℓ,i J_i): for the MLP by the layer identity ⟨∂z_k/∂W, ∂z_l/∂W⟩ =
  (g_k·g_l)(a·a) (:func:`relu_mlp_hessian_trace`), for the ResNet from per-example Jacobians
  (``torch.func`` vmap + jacrev, :func:`ggn_trace_jacobians`); both are checked against the dense
  ``torch.func.hessian`` trace in ``tests/test_trace_estimators.py``. Over ``--trace-seeds`` seeds
  (default 10) the relative error |est − ref|/|ref| is measured for curvlinops' ``hutchpp_trace``
  and ``xtrace`` at ``--trace-budget`` products (48) and for ours,
  :func:`mli_theory.curvature.xtrace_trace` (XTrace with a sign-flipped copy of each test vector
  by alternating layers, ``colors="layers"``, which cancels the Hessian blocks between adjacent
  layers in the Hutchinson part), at every product count up to the
  budget. Our count for each curvlinops estimator is the smallest from which on every count's
  median error is at most that estimator's median error (one lucky count does not qualify); then
  ours at those counts and curvlinops at its budget are timed in 3 interleaved rounds (medians;
  our operator construction included). With ``--plain-xtrace`` also plain XTrace (``colors=None``).
* **slq**: spectral density by stochastic Lanczos quadrature, 4 start vectors × 40 steps: ours
  (:func:`mli_theory.curvature.spectral_density`: the 4 Lanczos processes side by side, one block
  product per step; with full reorthogonalisation, the default, and without), PyHessian's SLQ re-written inline (one vector at a
  time, full reorthogonalisation, every product a backward through the cached graph, Gauss
  quadrature, Gaussian smoothing) and curvlinops' ``lanczos_approximate_spectrum`` (one vector at a
  time, no reorthogonalisation, spectrum boundaries by ``eigsh`` first, as documented; also timed
  with the boundaries given). Accuracy: the density's first moment ∫tφ(t)dt against the exact
  tr H / n, and the top node against λ_max (ours' Lanczos, residual ≤ 1e-3·λ).

Run time on one core of the 2-core Xeon (``--threads 1``): MLP trace ≈ 11 min (about 2000 products;
``--plain-xtrace`` adds ≈ 3 min), MLP slq ≈ 6 min, ResNet trace ≈ 12 min. ``--quick``: n = 500 / 64, 3 seeds. Ratios are time(other) / time(ours): > 1 means ours is faster.
The load average is printed before and after (``--require-quiet`` refuses to run on a busy
machine, exit 3); ``--threads`` sets torch's intra-op threads (default: torch's choice).
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
from _timing import add_quiet_flag, big_mlp, quiet_run, small_resnet  # noqa: E402


from mli_theory.curvature import extreme_eigenpairs, loss_hessian, spectral_density, xtrace_trace  # noqa: E402
from mli_theory.inputs import Dataset  # noqa: E402
from mli_theory.path import make_line  # noqa: E402

ALPHA = 0.5
EIG_TOL = 1e-3


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


# ----------------------------------------------------------------------------- exact trace references


@torch.no_grad()
def relu_mlp_hessian_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce", chunk: int = 256) -> float:
    """tr ∇²L exactly (float64) for an ``nn.Sequential`` of Linear and ReLU layers, mean loss.

    The output z is linear in each single parameter (ReLU is piecewise linear), so diag(∇²z) = 0
    and tr H = tr GGN = Σ_i tr(H_ℓ,i J_i J_iᵀ). For a Linear layer with input a and G = ∂z/∂(its
    output) (C × out), ⟨∂z_k/∂W, ∂z_l/∂W⟩ + ⟨∂z_k/∂b, ∂z_l/∂b⟩ = (G Gᵀ)_kl (a·a + 1); G is carried
    backwards through W and the ReLU masks. H_ℓ,i = (diag p − ppᵀ)/N for cross-entropy, 2I/(N·C) for mse.
    """
    layers = list(model)
    lin = [m for m in layers if isinstance(m, nn.Linear)]
    n = x.shape[0]
    total = 0.0
    for lo in range(0, n, chunk):
        h = x[lo : lo + chunk].double()
        ins: list[torch.Tensor] = []
        masks: list[torch.Tensor | None] = []
        for m in layers:
            if isinstance(m, nn.Linear):
                ins.append(h)
                h = h @ m.weight.double().T + (m.bias.double() if m.bias is not None else 0.0)
                masks.append(None)
            elif isinstance(m, nn.ReLU):
                masks[-1] = h > 0
                h = torch.relu(h)
            else:
                raise TypeError(f"relu_mlp_hessian_trace: {type(m).__name__} is not Linear or ReLU")
        b, c = h.shape
        if loss == "ce":
            p = torch.softmax(h, 1)
            hl = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / n
        else:
            hl = torch.eye(c, dtype=torch.float64).expand(b, c, c) * (2.0 / (n * c))
        g = torch.eye(c, dtype=torch.float64).expand(b, c, c)
        for j in range(len(lin) - 1, -1, -1):
            a2 = (ins[j] ** 2).sum(1) + (1.0 if lin[j].bias is not None else 0.0)
            total += float(((hl * (g @ g.transpose(1, 2))).sum((1, 2)) * a2).sum())
            if j:
                g = g @ lin[j].weight.double()
                if masks[j - 1] is not None:
                    g = g * masks[j - 1][:, None, :]
    return total


def ggn_trace_jacobians(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "mse", chunk: int = 16) -> float:
    """tr GGN = Σ_i tr(H_ℓ,i J_i J_iᵀ) of the mean loss from per-example Jacobians (``torch.func``
    vmap + jacrev, ``chunk`` examples at a time); equals tr ∇²L for a network that is piecewise
    linear in each single parameter (eval-mode model: BatchNorm with its running statistics)."""
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    n = x.shape[0]

    def out(p, xi):
        return functional_call(model, {**p, **buffers}, (xi[None],))[0]

    total = 0.0
    for lo in range(0, n, chunk):
        xb = x[lo : lo + chunk]
        jac = vmap(jacrev(out), in_dims=(None, 0))(params, xb)  # name -> (b, C, *shape)
        b = xb.shape[0]
        gram = sum(j.reshape(b, j.shape[1], -1).double() @ j.reshape(b, j.shape[1], -1).double().transpose(1, 2) for j in jac.values())
        with torch.no_grad():
            z = functional_call(model, {**params, **buffers}, (xb,)).double()
        c = z.shape[1]
        if loss == "ce":
            p = torch.softmax(z, 1)
            hl = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / n
        else:
            hl = torch.eye(c, dtype=torch.float64).expand(b, c, c) * (2.0 / (n * c))
        total += float((hl * gram).sum())
    return total


def reference_trace(name: str, model: nn.Module, data) -> float:
    if name == "mlp":
        return relu_mlp_hessian_trace(model, data.x, data.y, data.loss)
    return ggn_trace_jacobians(model, data.x, data.y, data.loss)


# ----------------------------------------------------------------------------- trace at equal accuracy


def ours_trajectory(op, seed: int, budget: int, colors) -> dict[int, float]:
    """XTrace estimates after every added test vector (with its sign-flipped copies), up to
    ``budget`` products: {products: estimate}. The same random stream as :func:`xtrace_trace`
    (base vectors are drawn one at a time), so the value at c products is what
    ``xtrace_trace(op, max_matvecs=c, min_vectors=2, rtol≈0, seed=seed, colors=colors)`` returns."""
    from mli_theory.curvature.trace import _XTrace, sign_patterns

    signs = None if colors is None else sign_patterns(colors, op.dtype)
    st = _XTrace(op, seed, signs)
    out = {}
    st.grow(2, 8 * st.g)
    while True:
        ests, _ = st.estimates()
        out[st.matvecs] = float(ests.mean())
        if st.matvecs + 2 * st.g > budget:
            return out
        st.grow(1, 8 * st.g)


def _errs(vals, ref: float) -> np.ndarray:
    return np.abs(np.asarray(vals, dtype=float) - ref) / abs(ref)


def _stats(vals, ref: float) -> str:
    e = _errs(vals, ref)
    return f"{np.median(e):.4f} | {np.sqrt(np.mean(e ** 2)):.4f} | {e.max():.4f}"


def _matching(traj: dict[int, list[float]], ref: float, target: float) -> int | None:
    """The smallest product count from which on every count's median error is ≤ target (a single
    lucky count does not qualify: medians over ~10 seeds are noisy)."""
    ok = None
    for c in sorted(traj, reverse=True):
        if np.median(_errs(traj[c], ref)) > target:
            break
        ok = c
    return ok


def trace_study(name, model, line, data, cl, ref: float, budget: int, seeds: int, device: str, plain: bool,
                rounds: int = 3) -> list[str]:
    """Errors over seeds at each product count, the count of ours matching each curvlinops
    estimator's median error, and times of those runs interleaved (``rounds`` each, medians)."""
    from mli_theory.curvature import layer_colors

    res: dict[str, tuple[int, list[float]]] = {}
    fns = {}
    if cl is not None:
        from curvlinops import hutchpp_trace as cl_hutchpp
        from curvlinops import xtrace as cl_xtrace

        fns = {"curvlinops hutchpp_trace": (cl_hutchpp, 3 * (budget // 3)), "curvlinops xtrace": (cl_xtrace, 2 * (budget // 2))}
        for label, (fn, m) in fns.items():
            vals = []
            for s in range(seeds):
                torch.manual_seed(s)
                vals.append(float(fn(cl, m)))
            res[label] = (m, vals)
            print(f"  {label} ({m} products): median error {np.median(_errs(vals, ref)):.4f}", flush=True)
    op = loss_hessian(line, data, ALPHA, bn="frozen")
    variants = [("ours xtrace_trace (layer signs)", layer_colors(op))] + ([("ours xtrace_trace (plain, colors=None)", None)] if plain else [])
    traj: dict[str, dict[int, list[float]]] = {}
    for label, col in variants:
        per_seed = [ours_trajectory(op, s, budget, col) for s in range(seeds)]
        traj[label] = {c: [d[c] for d in per_seed] for c in per_seed[0]}
        print(f"  {label}: median error by products " + " ".join(f"{c}:{np.median(_errs(v, ref)):.4f}" for c, v in traj[label].items()), flush=True)
    del op
    main = variants[0][0]
    chosen = {label: _matching(traj[main], ref, float(np.median(_errs(vals, ref)))) for label, (_, vals) in res.items()}
    # timings, interleaved so that a change of load hits every method alike; operator construction
    # is inside ours' timed region (curvlinops' operator holds no graph)
    times: dict[str, list[float]] = {k: [] for k in list(res) + [f"ours@{c}" for c in set(chosen.values()) if c]}
    check = {}
    for r in range(rounds):
        for label in times:
            sync(device)
            t = time.perf_counter()
            if label.startswith("ours@"):
                c = int(label[5:])
                op = loss_hessian(line, data, ALPHA, bn="frozen")
                est = xtrace_trace(op, rtol=1e-12, max_matvecs=c, min_vectors=2, seed=r).value
                del op
                check.setdefault(c, (r, est))
            else:
                fn, m = fns[label]
                torch.manual_seed(100 + r)
                fn(cl, m)
            sync(device)
            times[label].append(time.perf_counter() - t)
    for c, (r, est) in check.items():  # the timed function is the studied one
        assert r >= seeds or abs(est - traj[main][c][r]) <= 1e-6 * abs(ref), "xtrace_trace and its trajectory disagree"
    med = {k: float(np.median(v)) for k, v in times.items()}
    lines = [f"#### trace at equal accuracy ({name}): exact tr H = {ref:.6g}; relative error |est − ref|/|ref| over {seeds} seeds; "
             f"times: median of {rounds} interleaved runs", "",
             "| method | products | median error | rms error | max error | s | s / product |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, (m, vals) in res.items():
        lines.append(f"| {label} | {m} | {_stats(vals, ref)} | {med[label]:.2f} | {med[label] / m:.3f} |")
    for label, d in traj.items():
        for c in sorted(d):
            mark = " ← matches " + ", ".join(k.split()[-1] for k, v in chosen.items() if v == c) if label == main and c in chosen.values() else ""
            if c % 8 and not mark:
                continue
            t = f"{med[f'ours@{c}']:.2f} | {med[f'ours@{c}'] / c:.3f}" if label == main and f"ours@{c}" in med else " | "
            lines.append(f"| {label}{mark} | {c} | {_stats(d[c], ref)} | {t} |")
    lines.append("")
    for label, c in chosen.items():
        m, vals = res[label]
        target = float(np.median(_errs(vals, ref)))
        if c is None:
            lines.append(f"{label} ({m} products, median error {target:.4f}): not matched by ours within {budget} products")
        else:
            lines.append(f"{label} ({m} products, median error {target:.4f}) is matched by ours at {c} products: "
                         f"time ratio {label.split()[0]} / ours = {med[label] / med[f'ours@{c}']:.2f}")
    return lines


# ----------------------------------------------------------------------------- spectral density (SLQ)


def pyhessian_slq(hvp: CachedGraphHVP, n_v: int, steps: int, seed: int = 0):
    """PyHessian's ``density``: per start vector (Rademacher, normalised) ``steps`` Lanczos steps with
    full reorthogonalisation against that run's vectors, one product at a time; returns the Gauss
    nodes and weights (squared first eigenvector components) of each run."""
    g = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    for _ in range(n_v):
        v = _unit([(torch.randint(0, 2, p.shape, generator=g) * 2.0 - 1.0).to(p) for p in hvp.params])
        basis = [v]
        alphas, betas = [], []
        w_prev = None
        for i in range(steps):
            w = hvp(v)
            a = _dot(w, v)
            alphas.append(a)
            w = [wi - a * vi for wi, vi in zip(w, v)]
            if i:
                w = [wi - betas[-1] * pi for wi, pi in zip(w, w_prev)]
            for b in basis:  # full reorthogonalisation, as PyHessian's orthnormal()
                c = _dot(w, b)
                w = [wi - c * bi for wi, bi in zip(w, b)]
            beta = math.sqrt(_dot(w, w))
            if i == steps - 1 or beta < 1e-10:
                break
            betas.append(beta)
            w_prev = v
            v = [wi / beta for wi in w]
            basis.append(v)
        t = np.diag(alphas) + np.diag(betas[: len(alphas) - 1], 1) + np.diag(betas[: len(alphas) - 1], -1)
        lam, u = np.linalg.eigh(t)
        nodes.append(lam)
        weights.append(u[0] ** 2)
    return nodes, weights


def slq_study(name, model, line, data, crit, cl, ref: float, lam_max: float | None, device: str, n_v: int = 4, steps: int = 40) -> list[str]:
    n_params = sum(p.numel() for p in model.parameters())
    rows = []

    def quad_stats(nodes, weights):
        first = float(np.mean([float((t * w).sum()) for t, w in zip(nodes, weights)]))  # ∫ t φ(t) dt
        return first, float(max(t.max() for t in nodes))

    for reorth in (True, False):
        sync(device)
        t = time.perf_counter()
        op = loss_hessian(line, data, ALPHA, bn="frozen")
        dens = spectral_density(op, n_vectors=n_v, steps=steps, seed=0, reorthogonalize=reorth)
        sync(device)
        t_ours = time.perf_counter() - t
        del op
        label = "ours spectral_density (" + ("full reorth." if reorth else "reorthogonalize=False") + ", 4 vectors per product)"
        rows.append((label, t_ours, dens.n_matvecs,
                     *quad_stats([np.asarray(x) for x in dens.nodes], [np.asarray(x) for x in dens.weights])))
        print(f"  slq {label}: {t_ours:.1f} s", flush=True)
    t = time.perf_counter()
    cached = CachedGraphHVP(model, crit, data.x, data.y)
    nodes, weights = pyhessian_slq(cached, n_v, steps)
    sync(device)
    t_pyh = time.perf_counter() - t
    del cached
    rows.append(("PyHessian-style SLQ (one vector at a time, full reorth.)", t_pyh, sum(len(x) for x in nodes), *quad_stats(nodes, weights)))
    print(f"  slq pyhessian-style: {t_pyh:.1f} s", flush=True)
    if cl is not None:
        from curvlinops.papyan2020traces.spectrum import fast_lanczos

        for given in (False, True):
            torch.manual_seed(0)
            count = [0]
            sync(device)
            t = time.perf_counter()
            # lanczos_approximate_spectrum = approximate_boundaries (eigsh) + fast_lanczos per repeat + smoothing;
            # the Lanczos runs are taken apart here to read the quadrature, the smoothing costs nothing
            if not given:
                lin = cl.to_scipy()
                mv = lin.matvec

                def counted(v, mv=mv):
                    count[0] += 1
                    return mv(v)

                from scipy.sparse.linalg import LinearOperator

                wrapped = LinearOperator(lin.shape, matvec=counted, dtype=lin.dtype)
                from scipy.sparse.linalg import eigsh

                eigsh(wrapped, k=2, which="BE", tol=1e-2, return_eigenvectors=False)
            its = [fast_lanczos(cl, steps) for _ in range(n_v)]
            sync(device)
            t_cl = time.perf_counter() - t
            nodes = [ev.double().cpu().numpy() for ev, _ in its]
            weights = [(vec[0, :] ** 2).double().cpu().numpy() for _, vec in its]
            label = "curvlinops lanczos_approximate_spectrum" + (" (boundaries given)" if given else " (+ eigsh boundaries)")
            rows.append((label, t_cl, n_v * steps + count[0], *quad_stats(nodes, weights)))
            print(f"  slq {label}: {t_cl:.1f} s", flush=True)
    out = [f"#### spectral density by SLQ ({name}): {n_v} vectors × {steps} steps; exact tr H / n = {ref / n_params:.6g}"
           + (f", λ_max = {lam_max:.6g}" if lam_max else ""), "",
           "| method | s | HVPs | first moment rel. error | top node / λ_max | time / ours |", "|---|---:|---:|---:|---:|---:|"]
    for label, sec, k, first, top in rows:
        err = abs(first * n_params - ref) / abs(ref)
        out.append(f"| {label} | {sec:.1f} | {k} | {err:.4f} | {top / lam_max if lam_max else float('nan'):.4f} | {sec / rows[0][1]:.2f} |")
    return out


# ----------------------------------------------------------------------------- run


EIG_TASKS = (("top eigenvalue", 1, "LA"), ("top-3 eigenvalues", 3, "LA"), ("smallest eigenvalue", 1, "SA"))


def bench(name: str, n: int, device: str, tasks: set[str], trace_budget: int, trace_seeds: int, eig_budget: int = 400,
          plain: bool = False) -> list[str]:
    model, line, data, crit = setup(name, n, device)
    n_params = sum(p.numel() for p in model.parameters())
    rows: list[tuple[str, str, float, int, str]] = []
    print(f"\n== {name}: {n_params} parameters, n = {n}, {data.loss}, α = {ALPHA}, bn frozen, {device}, "
          f"load average {os.getloadavg()}", flush=True)

    fwd = loss_hessian(line, data, ALPHA, bn="frozen", engine="forward_over_reverse")
    if "eig" in tasks:
        fwd.matvec(torch.ones(fwd.size, device=device))  # warm-up (torch.func's first call), untimed
    warm = loss_hessian(line, data, ALPHA, bn="frozen", engine="double_backward")
    warm.matmat(torch.ones(2, warm.size, device=device))  # warm-up of the batched backward, untimed
    del warm
    cl = curvlinops_operator(model, crit, data.x, data.y)
    if cl is not None:
        cl @ torch.ones(n_params, device=device)  # warm-up, untimed
    engine_used = "?"
    cached = None
    lam_max = None
    for task, k, which in EIG_TASKS if "eig" in tasks else ():
        # ours, default engine ("auto"): operator construction (graph build + memory measurement) timed
        sync(device)
        t = time.perf_counter()
        op = loss_hessian(line, data, ALPHA, bn="frozen")
        ours = extreme_eigenpairs(op, k, which, tol=EIG_TOL, seed=0)
        sync(device)
        t_ours = time.perf_counter() - t
        engine_used = op.engine
        if task == "top eigenvalue":
            lam_max = ours.eigenvalues[0]
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

    out = [f"### {name}: {n_params:,} parameters, n = {n} ({data.loss}), {machine(device)}, "
           f"engine auto → {engine_used}, load average at the end {tuple(round(x, 2) for x in os.getloadavg())}", "",
           "| task | method | s | HVPs | answer | time / ours |", "|---|---|---:|---:|---|---:|"]
    ref = {}
    for task, meth, sec, k, ans in rows:
        if meth.startswith("ours") and task not in ref:
            ref[task] = sec  # the default engine's row
        out.append(f"| {task} | {meth} | {sec:.1f} | {k} | {ans} | {sec / ref[task]:.2f} |")
    summary = ["curvlinops time / ours (default engine), > 1: ours faster:"]
    for task, meth, sec, k, ans in rows:
        if meth.startswith("curvlinops"):
            summary.append(f"  {task}: {sec / ref[task]:.2f}")
    out = (out + [""] + summary) if rows else []
    del fwd, cached
    if "trace" in tasks or "slq" in tasks:
        ref = reference_trace(name, model, data)
    if "trace" in tasks:
        out += [""] + trace_study(name, model, line, data, cl, ref, trace_budget, trace_seeds, device, plain)
    if "slq" in tasks:
        if lam_max is None:  # untimed: the reference top eigenvalue
            lam_max = extreme_eigenpairs(loss_hessian(line, data, ALPHA, bn="frozen"), 1, "LA", tol=EIG_TOL, seed=0).eigenvalues[0]
        out += [""] + slq_study(name, model, line, data, crit, cl, ref, lam_max, device)
    return out


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads (torch {torch.__version__})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="all", choices=["mlp", "resnet", "all"])
    ap.add_argument("--n", type=int, default=None, help="examples (default: 2000 for the MLP, 256 for the ResNet)")
    ap.add_argument("--quick", action="store_true", help="n = 500 / 64 and 3 trace seeds (a smoke run)")
    ap.add_argument("--tasks", default="eig,trace,slq", help="comma-separated subset of eig, trace, slq (default all)")
    ap.add_argument("--trace-budget", type=int, default=48, help="curvlinops' products per trace estimate (default 48)")
    ap.add_argument("--trace-seeds", type=int, default=None, help="seeds of the trace accuracy study (default 10; 3 with --quick)")
    ap.add_argument("--plain-xtrace", action="store_true", help="also study plain XTrace (colors=None) in the trace task")
    ap.add_argument("--eig-budget", type=int, default=400,
                    help="most products curvlinops' eigsh may spend per task before it is stopped (default 400)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu")
    add_quiet_flag(ap)
    args = ap.parse_args()
    tasks = {t.strip() for t in args.tasks.split(",") if t.strip()}
    if not tasks or not tasks <= {"eig", "trace", "slq"}:
        ap.error(f"--tasks {args.tasks}: expected a comma-separated subset of eig, trace, slq")
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads {args.threads}: need at least 1")
        torch.set_num_threads(args.threads)
    seeds = args.trace_seeds or (3 if args.quick else 10)
    lines = []
    with quiet_run(args.require_quiet):
        for name in (["mlp", "resnet"] if args.model == "all" else [args.model]):
            n = args.n or ((500 if name == "mlp" else 64) if args.quick else (2000 if name == "mlp" else 256))
            lines += bench(name, n, args.device, tasks, args.trace_budget, seeds, args.eig_budget, args.plain_xtrace) + [""]
        print("\n" + "\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
