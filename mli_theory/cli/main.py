"""``mli-theory``: command-line interface (a thin layer over the library).

Exit codes: 0 success (whatever the verdict), 2 bad input or usage (one line on stderr), 1 an
internal error. With ``--json`` the JSON object is the only thing on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import re
import warnings
from typing import Any, Sequence

from .common import seed as _seed
from .common import PROG
from .common import Parser as _Parser
from .common import result_stream, results_on_stdout
from .common import Progress as _Progress
from .common import Timings, add_model_args, envelope, load_model_inputs, model_facts, plot_warnings, writable_folder
from .common import emit as _emit

# further commands, each a module with add_parser(subparsers) and run(args)
COMMANDS = ("curvature", "kernel", "barrier", "surface", "roughness")


def _add_check_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--alphas", type=int, default=50, help="number of α points in [0, 1], ends included (default 50)")
    p.add_argument("--tol", type=float, default=0.0, help="a rise ≤ tol counts as monotone (default 0)")
    p.add_argument("--certify", action="store_true", help="prove a verdict for all α in [0, 1] where possible")
    p.add_argument("--certify-budget", type=float, default=30.0, help="seconds for all proof work of this check (default 30)")
    p.add_argument("--alpha-chunk", type=int, default=None, help="α values per vmapped pass (default: 8 on CUDA, else 1)")
    p.add_argument("--no-geometry", action="store_true", help="skip Gauss length and the MSE conditions")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = _Parser(prog=PROG, description="Verify monotonic linear interpolation (MLI) of neural-network losses.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "check", help="check MLI between two checkpoints on a data set",
        description="Evaluate the mean training loss along θ(α) = (1−α)θ0 + αθT on an α grid: the largest rise, "
                    "distance travelled, Gauss length of the output path and the MSE sufficient conditions; with "
                    "--certify, a verdict (monotone / non_monotone / unknown) proven for every α in [0, 1].",
    )
    _add_check_args(p)

    d = sub.add_parser(
        "demo", help="train a small network on a built-in data set and check it (the main job)",
        description="Train an MLP and a deep linear network on sklearn:diabetes, save their checkpoints and loss-curve "
                    "plots under --out, and check MLI of each with a certificate over [0, 1].",
    )
    d.add_argument("--out", default="mli-demo", help="folder for checkpoints and plots (default ./mli-demo)")
    d.add_argument("--epochs", type=int, default=150, help="training epochs (default 150)")
    d.add_argument("--seed", type=_seed, default=0, help="seed of the initialisation and minibatch order (default 0)")
    d.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    d.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    t = sub.add_parser(
        "train", help="train a network from a spec and save a run folder (init, final, config)",
        description="Train ARCH on DATA (CPU, float32) with SGD or Adam and write a run folder --out: init.pt (θ0), "
                    "final.pt (θT) and config.json (the settings and loss history), optionally checkpoints every "
                    "--save-every steps or instability-analysis forks. 'mli-theory check --run OUT' then checks it.",
    )
    t.add_argument("--arch", required=True, help="architecture spec, as for check")
    t.add_argument("--data", required=True, help="data source, as for check")
    t.add_argument("--normalize", metavar="MEAN,STD", default=None, help="per-channel input normalisation, as for check")
    t.add_argument("--loss", default="mse", help="mse (default) or ce")
    t.add_argument("--optimizer", default="sgd", help="sgd (with momentum, default) or adam")
    t.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    t.add_argument("--epochs", type=int, default=50, help="passes over the data (default 50)")
    t.add_argument("--batch-size", type=int, default=64, help="minibatch size (default 64)")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    t.add_argument("--seed", type=_seed, default=0, help="seed of the initialisation and minibatch order (default 0)")
    t.add_argument("--distance-reward", type=float, default=0.0, help="λ ≥ 0: adds −λ‖θ−θ0‖²/2 to the loss (default 0)")
    t.add_argument("--init-scale", type=float, default=1.0, help="multiply the default initialisation (default 1)")
    t.add_argument("--anneal", type=float, default=0.0, metavar="FRACTION",
                   help="decay the learning rate linearly to 0 over the last FRACTION of the steps (default 0: constant)")
    t.add_argument("--min-distance", type=float, default=0.0, metavar="RHO",
                   help="bounded push: keep ‖θ−θ0‖ ≥ RHO·‖θ0‖ by projection after every step (default 0: off)")
    t.add_argument("--out", required=True, help="run folder to write")
    t.add_argument("--save-every", type=int, default=0, metavar="STEPS",
                   help="also save the state dict at step 0 and every STEPS optimiser steps to "
                        "OUT/checkpoints/step_<8-digit step>.pt (default 0: none)")
    t.add_argument("--fork-at", type=int, default=None, metavar="STEP",
                   help="instability analysis: train to optimiser step STEP with --seed, then continue one copy per "
                        "--fork-seeds seed from the same weights with its own data order; writes OUT/fork_<S>/ run folders "
                        "(init.pt = the original init) and OUT/fork_point.pt")
    t.add_argument("--fork-seeds", default=None, metavar="S1,S2",
                   help="data-order seeds of the forks, comma-separated, at least two (with --fork-at)")
    t.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    t.add_argument("--quiet", action="store_true", help="no progress bar on stderr")

    w = sub.add_parser(
        "sweep", help="train and check a grid of runs (parallel, resumable)",
        description="Train and check every run of a grid of training configs (the cross product of the spec's axes "
                    "over its base), in parallel on local processes, Dask or SLURM; finished runs are never redone, "
                    "and OUT/results.csv has one row per run.",
    )
    w.add_argument("spec", help='JSON file: {"base": {TrainConfig fields}, "axes": {field: [values]}}')
    w.add_argument("--out", required=True, help="sweep folder (runs/ and results.csv)")
    w.add_argument("--jobs", type=int, default=2, help="parallel worker processes (default 2)")
    w.add_argument("--alphas", type=int, default=50, help="α points of each check (default 50)")
    w.add_argument("--no-geometry", action="store_true", help="skip Gauss length and the conditions in each check")
    w.add_argument("--executor", choices=["local", "dask", "slurm"], default="local",
                   help="where runs execute: local processes (default), a Dask cluster, or SLURM via submitit")
    w.add_argument("--scheduler", default=None, help="dask: address of a running scheduler (default: an embedded LocalCluster with --jobs workers)")
    w.add_argument("--slurm-partition", default=None, help="slurm: partition")
    w.add_argument("--slurm-time", type=int, default=60, help="slurm: time limit per run in minutes (default 60)")
    w.add_argument("--slurm-gpus", type=int, default=0, help="slurm: GPUs per run (default 0)")
    w.add_argument("--slurm-cpus", type=int, default=1, help="slurm: CPUs per run (default 1)")
    w.add_argument("--slurm-cluster", choices=["slurm", "local", "debug"], default=None,
                   help="slurm: submitit cluster (default: SLURM when available; 'local' runs jobs as local processes)")
    w.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    w.add_argument("--quiet", action="store_true", help="no progress on stderr")

    g = sub.add_parser(
        "derive", help="print the MSE theory: statements, assumptions, derivations",
        description="Print the results of the MSE theory (GUIDE §2): each statement with its assumptions and a "
                    "symbolically checked derivation, as text, LaTeX or JSON.",
    )
    g.add_argument("name", nargs="?", default=None, help="one result (default: list them all)")
    g.add_argument("--latex", action="store_true", help="LaTeX instead of text")
    g.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    g.add_argument("--quiet", action="store_true", help="accepted for uniformity (this command shows no progress)")

    for name in COMMANDS:
        _command(name).add_parser(sub)
    return parser


def _command(name: str):
    import importlib

    return importlib.import_module(f"{__package__}.{name}")


# ----------------------------------------------------------------------------- check


def _check_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Turn CLI arguments into explicit library arguments (no namespace leaves this module).

    Everything cheap is validated before anything expensive: options, paths, then the model is
    built on the meta device (no memory) and the checkpoints are matched against it.
    """
    from ..check import validate_options

    validate_options(
        alphas=args.alphas, tol=args.tol, bn=args.bn, batch_size=args.batch_size, alpha_chunk=args.alpha_chunk,
        certify_budget=args.certify_budget,
    )
    inp = load_model_inputs(args)
    inp["init"], inp["final"] = inp["states"]["init"], inp["states"]["final"]
    return inp


def _cmd_check(args: argparse.Namespace) -> int:
    from ..check import check

    timings = Timings()
    with timings.stage("load"):
        inp = _check_inputs(args)
    progress = _Progress("loss curve", args.quiet)
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
        witness_curve=bool(args.plot),
    )
    progress.close()
    if args.plot:
        from dataclasses import replace

        from ..plot import plot_curve

        near = result.info.get("witness_curve")
        samples = (near["alphas"], near["losses"]) if near else None
        with timings.stage("plot"):
            result = replace(result, warnings=result.warnings + plot_warnings(plot_curve, result, args.plot, witness_samples=samples))
    if args.json:
        _emit(envelope(result.to_dict(), **model_facts(inp), seed=None, timings=timings), True)
    else:
        _emit(result.to_text(), False)
    return 0


def _joined(values: Any) -> str | None:
    """Distinct values in order, joined by commas (None when there are none)."""
    seen = [str(v) for v in dict.fromkeys(values) if v is not None]
    return ",".join(seen) or None


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..runs import run_demo

    if isinstance(args.epochs, bool) or args.epochs < 1:
        raise InputError(f"--epochs {args.epochs}: must be a positive integer")
    writable_folder(args.out, "--out")
    timings = Timings()
    with timings.stage("demo"):
        summary = run_demo(args.out, epochs=args.epochs, seed=args.seed, log=None if args.quiet else sys.stderr)
    if args.json:
        checks = [r["check"].get("info") or {} for r in summary["runs"].values()]
        first = checks[0] if checks else {}
        _emit(envelope(summary, arch=_joined(r["arch"] for r in summary["runs"].values()), data=summary["data"],
                       n=first.get("n_examples"), device=first.get("device", "cpu"), dtype=first.get("dtype"),
                       seed=args.seed, timings=timings), True)
    else:
        _emit(summary["text"], False)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..runs import TrainConfig, run_training

    if args.save_every < 0:
        raise InputError(f"--save-every {args.save_every}: must be an integer ≥ 0")
    if (args.fork_at is None) != (args.fork_seeds is None):
        raise InputError("--fork-at and --fork-seeds go together")
    replaced = os.path.isfile(os.path.join(args.out, "final.pt")) or os.path.isfile(os.path.join(args.out, "config.json"))
    writable_folder(args.out, "--out")  # before minutes of training, not after
    timings = Timings()
    progress = _Progress("train", getattr(args, "quiet", False), unit="epoch")
    notes = [f"--out {args.out} held a run already: its files are replaced"] if replaced else []
    for note in notes:
        sys.stderr.write(f"warning: {note}\n")

    def finish(summary: dict[str, Any], n: int | None) -> dict[str, Any]:
        return envelope(summary, arch=args.arch, data=args.data, n=n, device="cpu", dtype="float32", seed=args.seed,
                        timings=timings)
    cfg = TrainConfig(
        arch=args.arch, data=args.data, loss=args.loss, optimizer=args.optimizer, lr=args.lr, epochs=args.epochs,
        batch_size=args.batch_size, seed=args.seed, momentum=args.momentum, distance_reward=args.distance_reward,
        init_scale=args.init_scale, anneal=args.anneal, min_distance=args.min_distance, normalize=args.normalize,
    )
    if args.fork_at is not None:
        from ..runs.config import fork_folder, run_forks

        try:
            seeds = tuple(int(x) for x in args.fork_seeds.split(","))
        except ValueError:
            raise InputError(f"--fork-seeds {args.fork_seeds}: expected integers separated by commas, e.g. 1,2") from None
        if any(not 0 <= x <= 2**63 - 1 for x in seeds):
            raise InputError(f"--fork-seeds {args.fork_seeds}: each seed an integer in [0, 2^63 - 1]")
        if len(seeds) < 2 or len(set(seeds)) != len(seeds):
            raise InputError(f"--fork-seeds {args.fork_seeds}: need at least two different seeds")
        if args.fork_at < 0:
            raise InputError(f"--fork-at {args.fork_at}: must be a step ≥ 0")
        try:
            with timings.stage("train"):
                forks = run_forks(cfg, args.out, fork_at=args.fork_at, fork_seeds=seeds, save_every=args.save_every,
                                  progress=progress)
            progress.close()
        except InputError as exc:  # the library names its parameter; the CLI speaks of the flag
            raise InputError(str(exc).replace("fork_at=", "--fork-at ", 1)) from None
        summary = {
            "run": args.out, "fork_at": args.fork_at,
            "forks": {str(s): {"run": fork_folder(args.out, s), "final_loss": r.final_loss, "diverged": r.diverged,
                               "epochs": len(r.history)} for s, r in forks.items()},
        }
        a, b = (fork_folder(args.out, s) for s in seeds[:2])
        text = "\n".join(
            [f"trained {args.arch} on {args.data} to step {args.fork_at}, then {len(seeds)} forks:"]
            + [f"  seed {s}: final training loss {r.final_loss:.6g}{' (DIVERGED)' if r.diverged else ''}; run folder "
               f"{fork_folder(args.out, s)}" for s, r in forks.items()]
            + [f"  next: mli-theory barrier --arch {args.arch} --data {args.data} --loss {args.loss} "
               f"--a {os.path.join(a, 'final.pt')} --b {os.path.join(b, 'final.pt')}"]
        )
        _emit(finish(summary, next(iter(forks.values())).n_examples) if args.json else text, args.json)
        return 0
    with timings.stage("train"):
        res = run_training(cfg, args.out, save_every=args.save_every, progress=progress)
    progress.close()
    summary = {"run": args.out, "final_loss": res.final_loss, "diverged": res.diverged, "epochs": len(res.history),
               "warnings": notes}
    _emit(finish(summary, res.n_examples) if args.json else f"trained {args.arch} on {args.data}: final training loss {res.final_loss:.6g}"
          f"{' (DIVERGED)' if res.diverged else ''}; run folder {args.out}\n  next: mli-theory check --run {args.out}", args.json)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..runs import ExecutorOptions, TrainConfig, grid, run_sweep
    from ..runs.executors import check_available

    options = ExecutorOptions(
        name=args.executor, jobs=args.jobs, scheduler=args.scheduler, slurm_partition=args.slurm_partition,
        slurm_time_min=args.slurm_time, slurm_gpus=args.slurm_gpus, slurm_cpus=args.slurm_cpus, slurm_cluster=args.slurm_cluster,
    )
    check_available(options)  # a missing optional dependency (or an unreachable scheduler) is one line, before any work
    writable_folder(args.out, "--out")
    from ..check import validate_options
    from ..runs.config import validate_config

    try:
        with open(args.spec) as f:
            spec = json.load(f)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"cannot use sweep spec {args.spec}: {exc}") from None
    if not isinstance(spec, dict):
        raise InputError(f"sweep spec {args.spec}: expected a JSON object with \"base\" and \"axes\", got a {type(spec).__name__}")
    unknown = sorted(set(spec) - {"base", "axes"})
    if unknown:
        raise InputError(f"sweep spec {args.spec}: unknown key(s) {', '.join(map(repr, unknown))} (expected \"base\" and \"axes\")")
    base, axes = spec.get("base", {}), spec.get("axes", {})
    if not isinstance(base, dict) or not isinstance(axes, dict):
        raise InputError(f"sweep spec {args.spec}: \"base\" and \"axes\" must be objects (field: value, field: [values])")
    bad_axis = next((k for k, v in axes.items() if not isinstance(v, list) or not v), None)
    if bad_axis is not None:
        raise InputError(f"sweep spec {args.spec}: axis {bad_axis!r} must be a non-empty list of values")
    try:
        configs = grid(base, axes)
    except TypeError as exc:
        raise InputError(f"cannot use sweep spec {args.spec}: {exc}") from None
    if not configs or not all(isinstance(c, TrainConfig) for c in configs):
        raise InputError("the sweep spec gives no runs")
    validate_options(alphas=args.alphas, tol=0.0, bn="recompute", batch_size=None, alpha_chunk=None, certify_budget=None)
    for c in configs:  # every run's settings, before the first one trains
        try:
            validate_config(c)
        except InputError as exc:
            raise InputError(f"sweep spec {args.spec}: {exc}") from None
    timings = Timings()
    try:
        with timings.stage("sweep"):
            rows = run_sweep(configs, args.out, jobs=args.jobs, alphas=args.alphas, geometry=not args.no_geometry,
                             executor=options, log=None if args.quiet else sys.stderr)
    except KeyboardInterrupt:
        sys.stderr.write(f"interrupted: finished runs are kept in {args.out}; run the same command to resume\n")
        return 130
    ok = sum(r.get("status") == "ok" for r in rows)
    csv_path = os.path.join(args.out, "results.csv")
    if args.json:
        seeds = list(dict.fromkeys(c.seed for c in configs))
        summary = {"out": args.out, "results": csv_path, "runs": len(rows), "ok": ok,
                   "failed": sum(r.get("status") == "failed" for r in rows),
                   "diverged": sum(r.get("status") == "diverged" for r in rows), "executor": args.executor}
        _emit(envelope(summary, arch=_joined(c.arch for c in configs), data=_joined(c.data for c in configs), n=None,
                       device="cpu", dtype="float32", seed=seeds[0] if len(seeds) == 1 else None, timings=timings,
                       seeds=seeds), True)
    else:
        result_stream().write(f"{len(rows)} runs ({ok} ok); results in {csv_path}\n")
    return 0


def _cmd_derive(args: argparse.Namespace) -> int:
    from ..theory import render_result, result_names

    timings = Timings()
    none = dict(arch=None, data=None, n=None, device=None, dtype=None, seed=None)
    names = result_names()
    if args.name is None:
        if args.json:
            _emit(envelope({"results": names}, **none, timings=timings), True)
        else:
            _emit("\n".join(render_result(n, latex=args.latex, brief=True) for n in names), False)
        return 0
    out = render_result(args.name, latex=args.latex, as_dict=args.json)
    _emit(envelope(out, **none, timings=timings) if args.json else out, args.json)
    return 0


# library errors name parameters (bn="interpolate", batch_size=1); the CLI speaks of flags
_PARAM_FLAGS = ("alphas", "alpha_chunk", "batch_size", "bn", "certify_budget", "device", "dtype", "loss", "scheduler", "tol")
# and, for ``train`` (whose flags are the run's fields; a sweep spec's messages name its fields as they are)
_TRAIN_FLAGS = ("lr", "epochs", "momentum", "distance_reward", "init_scale", "anneal", "min_distance", "seed", "normalize",
                "optimizer", "save_every", "fork_at")


def _param_re(names: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"\b(" + "|".join(names) + r")=(?:\"([^\"]*)\"|'([^']*)'|([^\s,;:)]+))")


_PARAM_RE = _param_re(_PARAM_FLAGS)
_TRAIN_RE = _param_re(_PARAM_FLAGS + _TRAIN_FLAGS)


def _as_flags(message: str, command: str | None = None) -> str:
    """``bn="interpolate"`` → ``--bn interpolate`` in a library message.

    >>> _as_flags("use batch_size=2, or bn='x': unknown")
    'use --batch-size 2, or --bn x: unknown'
    >>> _as_flags("(evaluate in float64 with dtype=torch.float64)")
    '(evaluate in float64 with --dtype float64)'
    """
    def flag(m: re.Match) -> str:
        value = next(g for g in m.groups()[1:] if g is not None)
        value = value.removeprefix("torch.")  # dtype=torch.float64 → --dtype float64 (the flag's values)
        return f"--{m.group(1).replace('_', '-')} {value}"

    return (_TRAIN_RE if command == "train" else _PARAM_RE).sub(flag, message)


_NUMBER_RE = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|-(inf|nan)", re.IGNORECASE)


def _valued_options(parser: argparse.ArgumentParser) -> set[str]:
    """The long options that take a value, in the parser and its subcommands."""
    out: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _valued_options(sub)
        elif action.nargs != 0:
            out |= {o for o in action.option_strings if o.startswith("--")}
    return out


def _negative_values_attached(argv: list[str], valued: set[str]) -> list[str]:
    """``--tol -1e-9`` as ``--tol=-1e-9`` for the options in ``valued``: argparse reads a negative
    number in exponent notation (or ``-inf``) after an option as an option of its own and answers
    "expected one argument"; attached, the value reaches the option's own check, which names what is
    wrong with it. Flags, ``--`` and positional arguments are left as they are."""
    out: list[str] = []
    for tok in argv:
        if out and out[-1] in valued and _NUMBER_RE.fullmatch(tok):
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mli-theory`` console script; returns the exit code."""
    from ..errors import InputError
    from ..runs.allocator import keep_freed_memory

    keep_freed_memory()  # a process-wide allocator setting: the command line's process is ours

    parser = build_parser()
    try:
        args = parser.parse_args(_negative_values_attached(list(sys.argv[1:] if argv is None else argv), _valued_options(parser)))
    except SystemExit as exc:
        return int(exc.code or 0)
    handlers = {"check": _cmd_check, "demo": _cmd_demo, "derive": _cmd_derive, "train": _cmd_train, "sweep": _cmd_sweep}
    try:
        with warnings.catch_warnings():
            # torch's FutureWarnings (deprecations inside torch) are not the user's business on the command line
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch(\.|$)")
            warnings.filterwarnings("ignore", category=FutureWarning, message=r"(?s).*\btorch\b")
            with results_on_stdout():
                if args.command in handlers:
                    return handlers[args.command](args)
                return _command(args.command).run(args)
    except InputError as exc:
        sys.stderr.write(f"{PROG}: error: {_as_flags(str(exc), args.command)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except MemoryError:
        sys.stderr.write(f"{PROG}: error: out of memory (try --batch-size, or a smaller model or data set)\n")
        return 2
    except Exception as exc:  # an unexpected failure: one line, exit 1 (MLI_DEBUG=1 for the traceback)
        if os.environ.get("MLI_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        sys.stderr.write(f"{PROG}: internal error: {type(exc).__name__}: {first} (set MLI_DEBUG=1 for details)\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
