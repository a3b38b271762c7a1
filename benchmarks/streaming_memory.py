"""Streaming: peak memory of ``check`` on MNIST- and CIFAR-shaped files, and the loss curve's cost
against plain forward passes over the same reader.

Writes synthetic MNIST-shaped (IDX, 60 000 × 1 × 28 × 28) and CIFAR-10-shaped (python batches,
50 000 × 3 × 32 × 32) training sets, and the same formats at n = 5 000, then

1. runs ``mli-theory check`` on each (an MLP and the validation ResNet, ``--data mnist:DIR`` /
   ``cifar10:DIR``), each in its own process, and reports its peak resident memory (``wait4``'s
   ``ru_maxrss``) at the full size and at n = 5 000, with their ratio (goal ≤ 1.5);
2. times, in this process, the loss curve at K α (:func:`mli_theory.path.loss_curve`) against K
   plain forward passes over the same streamed examples in the same batches (goal ≤ 1.1×).

The load average is printed before and after; figures taken above load 1 per core are marked.

    python benchmarks/streaming_memory.py            # the full sizes (about 15 minutes on 2 cores)
    python benchmarks/streaming_memory.py --small    # 6 000 / 600 examples: a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
from torch.func import functional_call

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import add_quiet_flag, quiet_run  # noqa: E402
from mli_theory.inputs import build_model, load_data, save_state_dict
from mli_theory.inputs.convnets import cifar_resnet, mnist_resnet
from mli_theory.inputs.examples import iter_batches
from mli_theory.path import alpha_grid, interpolate, loss_curve, make_line
from mli_theory.testing.datafiles import write_cifar10, write_mnist


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def quiet() -> bool:
    return os.getloadavg()[0] <= (os.cpu_count() or 1)


def endpoints(model: torch.nn.Module, folder: str, name: str) -> tuple[str, str]:
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in init.items()}
    a, b = os.path.join(folder, f"{name}_init.pt"), os.path.join(folder, f"{name}_final.pt")
    save_state_dict(init, a)
    save_state_dict(final, b)
    return a, b


def peak_rss(args: list[str]) -> tuple[float, float, dict]:
    """Run a child with its own rusage: a fork that execs the check and is waited for with wait4."""
    t = time.perf_counter()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        os.dup2(w, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.execv(sys.executable, [sys.executable, "-m", "mli_theory", "check", *args, "--json", "--quiet"])
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"check {' '.join(args)} failed with status {status}")
    return usage.ru_maxrss / 1024, seconds, json.loads(b"".join(chunks))


def curve_vs_forwards(source: str, arch_model: torch.nn.Module, flatten: bool, alphas: int, batch: int) -> tuple[float, float]:
    data = load_data(source, "ce")
    if flatten:
        data = data.flattened()
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in arch_model.state_dict().items()}
    final = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in init.items()}
    line = make_line(arch_model, init, final)
    data = data.to(line.device, line.dtype)
    grid = alpha_grid(alphas)
    t = time.perf_counter()
    loss_curve(line, data, grid, batch_size=batch)
    t_curve = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        for a in grid:
            state = interpolate(line.start, line.end, a)
            for xb in iter_batches(data.x, batch):
                functional_call(line.shell, state, (xb,))
    t_plain = time.perf_counter() - t
    return t_curve, t_plain


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="6 000 / 600 examples instead of 60 000 / 5 000")
    p.add_argument("--alphas", type=int, default=10, help="α points of each check (default 10)")
    add_quiet_flag(p)
    args = p.parse_args()
    with quiet_run(args.require_quiet):
        scale = 10 if args.small else 1
        sizes = {"mnist": (60_000 // scale, 5_000 // (scale if scale == 1 else 8)), "cifar10": (50_000 // scale, 5_000 // (scale if scale == 1 else 8))}
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {load()}")
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            folders = {}
            for fmt, (big, small) in sizes.items():
                for n in (big, small):
                    folder = os.path.join(tmp, f"{fmt}_{n}")
                    (write_mnist if fmt == "mnist" else write_cifar10)(folder, n, seed=1)
                    folders[fmt, n] = folder
            print(f"wrote the data sets in {time.perf_counter() - t:.1f} s")
            configs = [
                ("mnist", "mlp:784-256-10", build_model("mlp:784-256-10"), True, []),
                ("mnist", "mli_theory.inputs.convnets:mnist_resnet", mnist_resnet(), False, ["--no-geometry"]),
                ("cifar10", "mlp:3072-256-10", build_model("mlp:3072-256-10"), True, ["--no-geometry"]),
                ("cifar10", "mli_theory.inputs.convnets:cifar_resnet", cifar_resnet(), False, ["--no-geometry"]),
            ]
            print("\n1. peak resident memory of `mli-theory check` (own process each)")
            print(f"  {'data':<8} {'model':<42} {'n':>7} {'MiB':>8} {'s':>8}  {'ratio':>6}  geometry")
            for fmt, arch, model, _, extra in configs:
                init, final = endpoints(model, tmp, arch.replace(":", "_").replace(".", "_"))
                got = []
                for n in sizes[fmt]:
                    k = args.alphas if "mlp" in arch else max(2, args.alphas // 2)  # a ResNet pass costs ~20 s at full size
                    cmd = ["--arch", arch, "--init", init, "--final", final, "--data", f"{fmt}:{folders[fmt, n]}",
                           "--loss", "ce", "--alphas", str(k), *extra]
                    rss, seconds, out = peak_rss(cmd)
                    got.append(rss)
                    blocks = out["info"].get("geometry_blocks")
                    geo = "off" if extra else ("all examples" if not blocks else f"{blocks} blocks")
                    ratio = f"{got[0] / got[1]:.2f}" if len(got) == 2 else ""
                    print(f"  {fmt:<8} {arch:<42} {n:>7} {rss:>8.0f} {seconds:>8.1f}  {ratio:>6}  {geo}", flush=True)
                rows.append((fmt, arch, got[0], got[1]))
            print("\n2. loss curve at K α vs K plain forward passes over the same streamed batches (batch 1024)")
            for fmt, arch, model, flatten, _ in configs:
                n = sizes[fmt][0]
                k = args.alphas if "mlp" in arch else max(2, args.alphas // 2)
                tc, tp = curve_vs_forwards(f"{fmt}:{folders[fmt, n]}", model, flatten, k, 1024)
                print(f"  {fmt:<8} {arch:<42} n={n:<6} K={k:<3} curve {tc:7.1f} s  forwards {tp:7.1f} s  ratio {tc / tp:.3f}", flush=True)
        print(f"\n{load()}; {'quiet' if quiet() else 'NOT QUIET: figures above are marked unreliable'}")


if __name__ == "__main__":
    main()
