"""``mli-theory``: command-line interface (a thin layer over the library).

Exit codes: 0 success (whatever the verdict), 2 bad input or usage (one line on stderr), 1 an
internal error. With ``--json`` the JSON object is the only thing on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

PROG = "mli-theory"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


class _StderrProgress:
    """Throttled progress lines on stderr (never on stdout)."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.label, self.quiet = label, quiet
        self.t0 = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self.quiet or (now - self.last < 2.0 and done < total):
            return
        if now - self.t0 < 2.0 and done == total:
            return
        self.last = now
        sys.stderr.write(f"{self.label}: {done}/{total} ({now - self.t0:.1f}s)\n")
        sys.stderr.flush()


def _add_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", help="linear:IN-OUT | deep_linear:D0-..-DL | mlp:D0-..-DL[:act][:bn] | pkg.mod:factory")
    p.add_argument("--init", help="θ0 state dict (.pt via torch.save, or .safetensors)")
    p.add_argument("--final", help="θT state dict")
    p.add_argument("--data", help=".npz with arrays x, y; or sklearn:diabetes, sklearn:digits, ...")
    p.add_argument("--run", help="a run folder written by 'mli-theory train' (replaces --arch/--init/--final/--data)")
    p.add_argument("--loss", default=None, choices=None, help="mse (default) or ce")
    p.add_argument("--alphas", type=int, default=50, help="number of α points in [0, 1], ends included (default 50)")
    p.add_argument("--tol", type=float, default=0.0, help="a rise ≤ tol counts as monotone (default 0)")
    p.add_argument("--certify", action="store_true", help="prove a verdict for all α in [0, 1] where possible")
    p.add_argument("--certify-budget", type=float, default=30.0, help="seconds for the exact certifier (default 30)")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda (default cpu)")
    p.add_argument("--dtype", default="float32", help="float32 (default) | float64")
    p.add_argument("--bn", default="recompute", help="BatchNorm statistics: recompute (default) | interpolate | frozen")
    p.add_argument("--batch-size", type=int, default=None, help="examples per forward pass (default: all)")
    p.add_argument("--alpha-chunk", type=int, default=None, help="α values per vmapped pass (default: 8 on CUDA, else 1)")
    p.add_argument("--no-geometry", action="store_true", help="skip Gauss length and the MSE conditions")
    p.add_argument("--plot", metavar="OUT.png", help="save the loss curve with the worst rise marked")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = _Parser(prog=PROG, description="Verify monotonic linear interpolation (MLI) of neural-network losses.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("check", help="check MLI between two checkpoints on a data set")
    _add_check_args(p)

    d = sub.add_parser("demo", help="train a small network on a built-in data set and check it (the main job)")
    d.add_argument("--out", default="mli-demo", help="folder for checkpoints and plots (default ./mli-demo)")
    d.add_argument("--epochs", type=int, default=150, help="training epochs (default 150)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    d.add_argument("--quiet", action="store_true")

    t = sub.add_parser("train", help="train a network from a spec and save a run folder (init, final, config)")
    t.add_argument("--arch", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--loss", default="mse")
    t.add_argument("--optimizer", default="sgd", help="sgd (with momentum) or adam")
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--epochs", type=int, default=50)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--distance-reward", type=float, default=0.0, help="λ: adds −λ‖θ−θ0‖²/2 to the loss")
    t.add_argument("--init-scale", type=float, default=1.0, help="multiply the default initialisation")
    t.add_argument("--out", required=True, help="run folder to write")
    t.add_argument("--json", action="store_true")

    w = sub.add_parser("sweep", help="train and check a grid of runs (parallel, resumable)")
    w.add_argument("spec", help='JSON file: {"base": {TrainConfig fields}, "axes": {field: [values]}}')
    w.add_argument("--out", required=True, help="sweep folder (runs/ and results.csv)")
    w.add_argument("--jobs", type=int, default=2)
    w.add_argument("--alphas", type=int, default=50)
    w.add_argument("--no-geometry", action="store_true")

    g = sub.add_parser("derive", help="print the MSE theory: statements, assumptions, derivations")
    g.add_argument("name", nargs="?", default=None, help="one result (default: list them all)")
    g.add_argument("--latex", action="store_true", help="LaTeX instead of text")
    g.add_argument("--json", action="store_true")
    return parser


# ----------------------------------------------------------------------------- check


def _check_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Turn CLI arguments into explicit library arguments (no namespace leaves this module)."""
    from .arch import build_model, parse_arch
    from .check import resolve_device, resolve_dtype
    from .checkpoint import load_state_dict
    from .data import load_data
    from .errors import InputError
    from .path import BNPolicy

    if args.alphas < 2:
        raise InputError(f"--alphas must be at least 2, got {args.alphas}")
    if args.batch_size is not None and args.batch_size <= 0:
        raise InputError(f"--batch-size must be positive, got {args.batch_size}")
    if args.alpha_chunk is not None and args.alpha_chunk <= 0:
        raise InputError(f"--alpha-chunk must be positive, got {args.alpha_chunk}")
    if args.certify_budget <= 0:
        raise InputError("--certify-budget must be positive")
    try:
        bn = BNPolicy(args.bn)
    except ValueError:
        raise InputError(f"unknown --bn {args.bn!r} (expected recompute, interpolate or frozen)") from None
    dtype = resolve_dtype(args.dtype)
    device = resolve_device(args.device)
    if args.plot:
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            raise InputError(f"--plot folder does not exist: {folder}")
    arch, init, final, data_src, loss = args.arch, args.init, args.final, args.data, args.loss
    if args.run:
        from .runs import read_run

        run = read_run(args.run)
        arch, init, final = run["arch"], run["init"], run["final"]
        data_src = data_src or run["data"]
        loss = loss or run["loss"]
    missing = [f"--{n}" for n, v in (("arch", arch), ("init", init), ("final", final), ("data", data_src)) if not v]
    if missing:
        raise InputError(f"missing required argument(s): {', '.join(missing)} (or give --run)")
    loss = loss or "mse"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # user factories importable from the working directory
    spec = parse_arch(arch)
    model = build_model(spec)
    data = load_data(data_src, loss)
    return dict(
        model=model,
        init=load_state_dict(init),
        final=load_state_dict(final),
        data=data,
        spec=spec,
        bn=bn,
        dtype=dtype,
        device=device,
    )


def _fmt(v: Any, nd: int = 6) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return str(v)


def _table(result: Any) -> str:
    r = result
    lines = [
        f"MLI check  ({r.info.get('arch', '?')} on {r.info.get('data', '?')}, n={r.info['n_examples']}, "
        f"{r.info['dtype']}, {r.info['device']})",
        "",
        f"  loss ({r.loss})          L(0) = {_fmt(r.initial_loss)}   L(1) = {_fmt(r.final_loss)}",
        f"  alpha points           {len(r.alphas)}",
        f"  max rise on grid       {_fmt(r.max_rise)}"
        + (f"   between α={r.rise_where[0]:.4g} and α={r.rise_where[1]:.4g}" if r.rise_where else ""),
        f"  tolerance              {_fmt(r.tolerance)}",
        f"  monotone on grid       {_fmt(r.monotone_on_grid)}",
        f"  distance ‖θT−θ0‖       {_fmt(r.distance)}   (normalised {_fmt(r.normalized_distance)})",
        f"  Gauss length (mean)    {_fmt(r.gauss_length)}",
        f"  logit non-linearity    {_fmt(r.logit_linearity)}",
    ]
    c = r.certificate
    cert = f"  certificate            {c.status}"
    if c.method:
        cert += f" ({c.method})"
    if c.where:
        cert += f": L({c.where[0]:.6g}) → L({c.where[1]:.6g}) rises by {c.rise:.6g}"
    elif c.status == "monotone" and c.rise is not None:
        cert += f": largest rise ≤ {c.rise:.3g}"
    lines.append(cert)
    if c.reason:
        lines.append(f"                         {c.reason}")
    if r.conditions:
        lines += ["", "  sufficient conditions (MSE)", f"    {'name':<30} {'holds':<6} {'value':>12} {'threshold':>10}  proven"]
        for cond in r.conditions:
            lines.append(
                f"    {cond.name:<30} {_fmt(cond.holds):<6} {_fmt(cond.value, 4):>12} {_fmt(cond.threshold, 4):>10}  "
                f"{_fmt(cond.proven)}"
            )
    return "\n".join(lines)


def _cmd_check(args: argparse.Namespace) -> int:
    from .check import check

    inp = _check_inputs(args)
    progress = _StderrProgress("loss curve", args.quiet)
    result = check(
        inp["model"],
        inp["init"],
        inp["final"],
        inp["data"],
        alphas=args.alphas,
        tol=args.tol,
        certify=args.certify,
        device=inp["device"],
        dtype=inp["dtype"],
        bn=inp["bn"],
        batch_size=args.batch_size,
        alpha_chunk=args.alpha_chunk,
        geometry=not args.no_geometry,
        certify_budget=args.certify_budget,
        progress=progress,
        info={"arch": inp["spec"].text, "data": inp["data"].name},
    )
    if args.plot:
        from .plot import plot_curve

        plot_curve(result, args.plot)
    _emit(result.to_dict() if args.json else _table(result), args.json)
    return 0


def _emit(obj: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj) + "\n")
    else:
        sys.stdout.write(str(obj) + "\n")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, epochs=args.epochs, seed=args.seed, log=None if args.quiet else sys.stderr)
    _emit(summary if args.json else summary["text"], args.json)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .runs import TrainConfig, run_training

    cfg = TrainConfig(
        arch=args.arch, data=args.data, loss=args.loss, optimizer=args.optimizer, lr=args.lr, epochs=args.epochs,
        batch_size=args.batch_size, seed=args.seed, momentum=args.momentum, distance_reward=args.distance_reward,
        init_scale=args.init_scale,
    )
    res = run_training(cfg, args.out)
    summary = {"run": args.out, "final_loss": res.final_loss, "diverged": res.diverged, "epochs": len(res.history)}
    _emit(summary if args.json else f"trained {args.arch} on {args.data}: final training loss {res.final_loss:.6g}"
          f"{' (DIVERGED)' if res.diverged else ''}; run folder {args.out}\n  next: mli-theory check --run {args.out}", args.json)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .errors import InputError
    from .runs import TrainConfig
    from .sweep import grid, run_sweep

    try:
        with open(args.spec) as f:
            spec = json.load(f)
        configs = grid(spec.get("base", {}), spec.get("axes", {}))
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"cannot use sweep spec {args.spec}: {exc}") from None
    if not configs or not all(isinstance(c, TrainConfig) for c in configs):
        raise InputError("the sweep spec gives no runs")
    rows = run_sweep(configs, args.out, jobs=args.jobs, alphas=args.alphas, geometry=not args.no_geometry)
    ok = sum(r.get("status") == "ok" for r in rows)
    sys.stdout.write(f"{len(rows)} runs ({ok} ok); results in {os.path.join(args.out, 'results.csv')}\n")
    return 0


def _cmd_derive(args: argparse.Namespace) -> int:
    from .symbolic import render_result, result_names

    names = result_names()
    if args.name is None:
        if args.json:
            _emit({"results": names}, True)
        else:
            _emit("\n".join(render_result(n, latex=args.latex, brief=True) for n in names), False)
        return 0
    _emit(render_result(args.name, latex=args.latex, as_dict=args.json), args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mli-theory`` console script; returns the exit code."""
    from .errors import InputError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    handlers = {"check": _cmd_check, "demo": _cmd_demo, "derive": _cmd_derive, "train": _cmd_train, "sweep": _cmd_sweep}
    try:
        return handlers[args.command](args)
    except InputError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as exc:  # an unexpected failure: one line, exit 1 (MLI_DEBUG=1 for the traceback)
        if os.environ.get("MLI_DEBUG"):
            raise
        sys.stderr.write(f"{PROG}: internal error: {type(exc).__name__}: {exc} (set MLI_DEBUG=1 for details)\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
