"""Proof: the convex-end certificate and the second-derivative rules it rests on.

Used by :func:`mli_theory.certify.partition.convex_end` and :mod:`mli_theory.certify.convexity`.
Algebra is checked by sympy; the analytic steps are arguments; the numerical check certifies
random trained-and-stopped networks and compares with dense measured curves."""

import numpy as np
import sympy as sp
from _common import exit_with, run

from mli_theory.theory.symbolic import Derivation, Step

a, w, s, s1, k, U, y = sp.symbols("alpha w s s_1 k U y", real=True)
x, v, z = (sp.Function(n)(a) for n in ("x", "v", "z"))
w0, dw = sp.symbols("w_0 Delta_w", real=True)
f = sp.Function("f")
us = [sp.Function(f"u{i}")(a) for i in range(3)]


def _ce_second() -> sp.Expr:
    """ℓ = log(1 + Σ e^{u_k}) (u_k = z_k − z_y): ℓ″ − [Σp(u′)² − (Σpu′)² + Σpu″] (should be 0)."""
    ell = sp.log(1 + sum(sp.exp(u) for u in us))
    den = 1 + sum(sp.exp(u) for u in us)
    p = [sp.exp(u) / den for u in us]
    d1 = [sp.diff(u, a) for u in us]
    d2 = [sp.diff(u, a, 2) for u in us]
    form = sum(pi * di * di for pi, di in zip(p, d1)) - sum(pi * di for pi, di in zip(p, d1)) ** 2 + sum(pi * ei for pi, ei in zip(p, d2))
    return sp.simplify(sp.diff(ell, a, 2) - form)


def _lagrange() -> sp.Expr:
    """q·Σp w² − (Σp w)² = ½ Σ_{j,k} p_j p_k (w_j − w_k)² with q = Σp: so Var ≥ (1 − q)·Σp w²."""
    ps = sp.symbols("p0:3", positive=True)
    ws = sp.symbols("w0:3", real=True)
    q = sum(ps)
    lhs = q * sum(pi * wi**2 for pi, wi in zip(ps, ws)) - sum(pi * wi for pi, wi in zip(ps, ws)) ** 2
    rhs = sp.Rational(1, 2) * sum(ps[i] * ps[j] * (ws[i] - ws[j]) ** 2 for i in range(3) for j in range(3))
    variance = sum(pi * wi**2 for pi, wi in zip(ps, ws)) - sum(pi * wi for pi, wi in zip(ps, ws)) ** 2
    # Var − (1 − q)Σp w² = q Σp w² − (Σp w)² = rhs ≥ 0
    return sp.expand(variance - (1 - q) * sum(pi * wi**2 for pi, wi in zip(ps, ws)) - rhs) + sp.expand(lhs - rhs)


def _relu_left_derivative() -> sp.Expr:
    """For v(α) = d·(α − 1) (v(1) = 0, v′ = d): lim_{s↓0} (relu(v(1)) − relu(v(1 − s)))/s − min(d, 0), for d = ±2 (0 twice)."""
    t = sp.symbols("t", positive=True)
    total = sp.Integer(0)
    for d in (sp.Integer(2), sp.Integer(-2)):
        vv = d * (-t)  # v(1 − t)
        quotient = (sp.Max(0, 0) - sp.Max(0, vv)) / t
        total += sp.Abs(sp.limit(quotient, t, 0, "+") - sp.Min(d, 0))
    return total


def derivation() -> Derivation:
    line = (1 - a) * w0 + a * (w0 + dw)
    steps = (
        Step("bilinear rule: (x(α)·W(α))″ = x″·W(α) + 2x′·ΔW for W(α) affine in α", "zero",
             sp.diff(x * line, a, 2) - (sp.diff(x, a, 2) * line + 2 * sp.diff(x, a) * dw)),
        Step("chain rule: f(v(α))″ = f″(v)·v′² + f′(v)·v″", "zero",
             sp.diff(f(v), a, 2) - (sp.diff(f(v), v, 2) * sp.diff(v, a) ** 2 + sp.diff(f(v), v) * sp.diff(v, a, 2)).doit()),
        Step("MSE: ((z − y)²)″ = 2[(z′)² + (z − y)z″]", "zero",
             sp.diff((z - y) ** 2, a, 2) - 2 * (sp.diff(z, a) ** 2 + (z - y) * sp.diff(z, a, 2))),
        Step("cross-entropy: ℓ″ = Σp_k(u′_k)² − (Σp_k u′_k)² + Σp_k u″_k, p = softmax([0, u])", "zero", _ce_second()),
        Step("the variance part is ≥ (1 − q)·Σp_k(u′_k)², q = Σ_{k≠y} p_k (Lagrange's identity)", "zero", _lagrange()),
        Step("a ReLU neuron whose pre-activation keeps one sign on [c, 1] is linear there; with every neuron so, L is C² "
             "on [c, 1] (a composition of smooth maps); a cell where some sign may change gets no finite bound of L″", "argument"),
        Step("L″ ≥ 0 on [c, 1] and L′(1) ≤ 0 ⇒ L′(α) = L′(1) − ∫_α^1 L″ ≤ 0 on [c, 1] ⇒ L(b) ≤ L(a) for c ≤ a ≤ b ≤ 1", "argument"),
        Step("pinned cell, L′ ≤ s₁ − (1 − α)k: ∫_{1−w}^1 (s₁ − (1 − α)k) dα = s₁w − kw²/2", "zero",
             sp.integrate(s1 - (1 - a) * k, (a, 1 - w, 1)) - (s1 * w - k * w**2 / 2)),
        Step("… and for 0 < s₁ ≤ kw its positive part integrates to s₁²/(2k)", "zero",
             sp.integrate(s1 - (1 - a) * k, (a, 1 - s1 / k, 1)) - s1**2 / (2 * k)),
        Step("the pinned cell needs only L′(1) ≤ s₁ and L″ ≥ k ≥ 0 on [1 − w, 1] (L′(α) = L′(1) − ∫_α^1 L″): with L′(1) > 0 "
             "proven and no rise above tol, it bounds the cell's share of every rise by s₁²/(2k) (k > 0), the rise at the end "
             "that tol may allow", "argument"),
        Step("witness: L′(1) ≥ s₁ > 0, L″ ≤ U on [1 − w, 1] ⇒ L(1) − L(1 − s) ≥ ∫_{1−s}^1 (s₁ − (1 − α)U) = s₁s − Us²/2", "zero",
             sp.integrate(s1 - (1 - a) * U, (a, 1 - s, 1)) - (s1 * s - U * s**2 / 2)),
        Step("L′(1) in ball arithmetic (certify/endpoint.py): every arb operation returns a ball containing the exact result, "
             "so the forward-mode walk z(1), z′(1) and the loss's slope are enclosed; intersecting two proven enclosures of the "
             "same number is proven", "argument"),
        Step("a ReLU unit with v(1) = 0 exactly: v(1 − s) = −s·v′(1) + O(s²), so from the left relu(v)′ = min(v′(1), 0); "
             "where the ball of v(1) only contains 0, the one-sided derivative is 0 or v′(1): their hull", "zero",
             _relu_left_derivative()),
        Step("the measured second difference (L(1) − 2L(1 − h) + L(1 − 2h))/h² equals L″(ξ) for some ξ in (1 − 2h, 1) "
             "(mean value theorem for divided differences): it must lie in the enclosure up to the measurement's error/h²", "argument"),
    )
    return Derivation(
        "convex_end", "The convex-end certificate",
        "If L is C² on [c, 1], L″ ≥ 0 there and L′(1) ≤ 0, then L is non-increasing on [c, 1]; L″ is enclosed on a cell from "
        "enclosures of z, z′, z″ by the rules below.",
        ("θ(α) affine in α", "every activation smooth on the cell, or ReLU with a constant sign on it"),
        sp.Symbol("L''") >= 0, steps,
    )


def certified_ends_are_non_increasing() -> bool:
    """Trained tanh MLPs stopped just short of the line minimum: when the convex end certifies, a
    dense float64 curve on [c, 1] never rises (beyond rounding)."""
    import torch
    from torch import nn

    import mli_theory as mt
    from mli_theory.certify.partition import decide_by_enclosures, enclose, plain_loss, prepare
    from mli_theory.path import BNPolicy

    seen = 0
    for seed in range(3):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(3, 12), nn.Tanh(), nn.Linear(12, 2)).double()
        init = {k_: t.detach().clone() for k_, t in model.state_dict().items()}
        g = torch.Generator().manual_seed(seed)
        xs = torch.randn(32, 3, generator=g, dtype=torch.float64)
        ys = torch.randn(32, 2, generator=g, dtype=torch.float64)
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        for _ in range(800):
            opt.zero_grad()
            nn.functional.mse_loss(model(xs), ys).backward()
            opt.step()
        final = {k_: t.detach().clone() for k_, t in model.state_dict().items()}
        data = mt.Dataset(xs, ys, "mse", "t")
        problem = prepare(mt.make_line(model, init, final, dtype=torch.float64), data, BNPolicy.FROZEN)
        star = 1.0
        for _ in range(30):  # Newton for the line minimum; L′(α*) = L̃′(1)/α* on the line from θ0 to θ(α*)
            ahead = {k_: init[k_] + star * (final[k_] - init[k_]) for k_ in init}
            lo, hi = enclose(prepare(mt.make_line(model, init, ahead, dtype=torch.float64), data, BNPolicy.FROZEN), [1.0], [1.0])[0][0]
            h = 1e-4
            curv = (plain_loss(problem, star + h) - 2 * plain_loss(problem, star) + plain_loss(problem, star - h)) / h**2
            star -= (lo + hi) / 2 / star / curv
        end = {k_: init[k_] + star * (1 - 1e-9) * (final[k_] - init[k_]) for k_ in init}
        line = mt.make_line(model, init, end, dtype=torch.float64)
        verdict = decide_by_enclosures(line, data, tol=0.0)
        if verdict.status != "monotone" or verdict.convex_end is None:
            continue
        p = prepare(line, data, BNPolicy.FROZEN)
        grid = np.linspace(verdict.convex_end, 1.0, 801)
        vals = np.array([plain_loss(p, float(t)) for t in grid])
        if np.any(np.diff(vals) > 1e-13 * np.abs(vals[:-1])):
            return False
        seen += 1
    return seen >= 2


if __name__ == "__main__":
    exit_with(run(derivation(), {"certified convex ends never rise on a dense float64 grid": certified_ends_are_non_increasing}))
