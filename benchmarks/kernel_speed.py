"""Benchmark: our empirical NTK against the two ``torch.func`` recipes written plainly.

    python benchmarks/kernel_speed.py [--device cpu|cuda] [--repeats 3] [--threads T]

The plain recipes follow the shape of the ``torch.func`` NTK tutorial (written here from its
description): (1) Jacobian contraction, ``vmap(jacrev)`` per-example Jacobians of both example sets,
then an ``einsum`` per parameter tensor; (2) NTK-vector products, for every pair of examples a
``vjp`` of the basis vectors of one output followed by a ``jvp`` through the other, ``vmap``-ed over
the basis and over both example sets. Both give the full (n, n, k, k) kernel in one call (no
blocking), so the plain NTK-vector products are run only where their n²·k·P tangents fit.

Prints milliseconds and the ratio plain / ours (above 1: ours is faster), side by side in one run,
and checks that every method returns the same kernel.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

sys.path.insert(0, os.path.dirname(__file__))
from _timing import add_quiet_flag, machine, median_time, quiet_run  # noqa: E402

from mli_theory.kernels import NTKModel, empirical_ntk, make_plan  # noqa: E402


class SmallCNN(nn.Module):
    """conv(1→8, 3×3) → ReLU → conv(8→16, 3×3, stride 2) → ReLU → global mean → linear(16→10)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.head(h.mean(dim=(2, 3)))


def plain_functions(model: nn.Module):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def single(p, x1):
        return functional_call(model, p, (x1.unsqueeze(0),)).squeeze(0)

    return params, single


def plain_contraction(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(n, n, k, k): per-example Jacobians by vmap(jacrev), contracted parameter by parameter."""
    params, single = plain_functions(model)
    jac = vmap(jacrev(single), (None, 0))(params, x)
    flat = [j.flatten(2) for j in jac.values()]
    return sum(torch.einsum("Naf,Mbf->NMab", j, j) for j in flat)


def plain_ntk_vp(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(n, n, k, k): for each pair (x_a, x_b), vjp of each basis vector at x_b then jvp at x_a."""
    params, single = plain_functions(model)

    def pair(x1, x2):
        out2, pull = vjp(lambda p: single(p, x2), params)

        def column(vec):
            (cot,) = pull(vec)
            return jvp(lambda p: single(p, x1), (params,), (cot,))[1]

        basis = torch.eye(out2.numel(), dtype=out2.dtype, device=out2.device)
        return vmap(column)(basis).T  # rows: outputs at x1, columns: outputs at x2

    return vmap(vmap(pair, (None, 0)), (0, None))(x, x)


def as_blocks(k: torch.Tensor, n: int, out: int) -> torch.Tensor:
    """Our (n·k, n·k) layout as the plain (n, n, k, k) one."""
    return k.reshape(n, out, n, out).permute(0, 2, 1, 3)


def bench(name: str, model: nn.Module, x: torch.Tensor, dev: str, repeats: int, with_vp: bool) -> None:
    model = model.to(dev).eval()
    n = x.shape[0]
    p = sum(t.numel() for t in model.parameters())
    net = NTKModel.from_module(model)
    plan = make_plan(net, model.state_dict(), x, rows_held=1)
    k_out = plan.k
    ref = plain_contraction(model, x)
    rows: list[tuple[str, float | None, float]] = []
    t_pc = median_time(lambda: plain_contraction(model, x), dev, repeats)
    t_pv = median_time(lambda: plain_ntk_vp(model, x), dev, repeats) if with_vp else None
    if with_vp:
        err = float((plain_ntk_vp(model, x) - ref).abs().max())
        print(f"  plain NTK-vp vs plain contraction: max |diff| {err:.2e}")
    cheaper = min(plan.cost.jacobian_flops, plan.cost.ntk_vp_flops)
    for recipe in ("auto", "jacobian", "ntk_vp"):
        est = plan.cost.jacobian_flops if recipe == "jacobian" else plan.cost.ntk_vp_flops
        if recipe != "auto" and est > 8 * cheaper:
            print(f"  (ours forced to {recipe}: skipped, estimated {est / cheaper:.0f}× the cheaper recipe)")
            continue
        ours = empirical_ntk(model, x.to(dev), recipe=recipe)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        err = float((as_blocks(ours, n, k_out).to(ref.dtype) - ref).abs().max() / ref.abs().max())
        t = median_time(lambda r=recipe: empirical_ntk(model, x, recipe=r), dev, repeats)
        label = f"ours ({recipe}{' → ' + plan.recipe if recipe == 'auto' else ''})"
        rows.append((label, t, err))
    print(f"{name}: n = {n}, k = {k_out}, P = {p}, F = {plan.cost.forward_flops:.3g} FLOPs/example; "
          f"estimate: jacobian {plan.cost.jacobian_flops:.3g}, ntk_vp {plan.cost.ntk_vp_flops:.3g} → {plan.recipe}")
    print(f"  {'method':<32} {'ms':>9} {'plain contr. / ours':>20} {'plain NTK-vp / ours':>20} {'rel. diff':>10}")
    print(f"  {'plain contraction (torch.func)':<32} {1e3 * t_pc:>9.1f}")
    if t_pv is not None:
        print(f"  {'plain NTK-vp (torch.func)':<32} {1e3 * t_pv:>9.1f}")
    for label, t, err in rows:
        vp = f"{t_pv / t:>20.2f}" if t_pv is not None else f"{'(too big)':>20}"
        print(f"  {label:<32} {1e3 * t:>9.1f} {t_pc / t:>20.2f} {vp} {err:>10.1e}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_quiet_flag(ap)
    args = ap.parse_args()
    with quiet_run(args.require_quiet):
        if args.threads:
            torch.set_num_threads(args.threads)
        dev = args.device
        print(f"empirical NTK, full kernel, float32 on {machine(dev)}; median of {args.repeats}")
        torch.manual_seed(0)
        mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
        bench("MLP 64-128-128-10", mlp, torch.randn(32, 64, device=dev), dev, args.repeats, True)
        bench("MLP 64-128-128-10", mlp, torch.randn(200, 64, device=dev), dev, args.repeats, False)
        cnn = SmallCNN()
        bench("CNN 1×16×16", cnn, torch.randn(16, 1, 16, 16, device=dev), dev, args.repeats, True)
        bench("CNN 1×16×16", cnn, torch.randn(128, 1, 16, 16, device=dev), dev, args.repeats, False)


if __name__ == "__main__":
    main()
