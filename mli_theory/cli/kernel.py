"""``mli-theory kernel``: the empirical NTK along the path (distance, velocity, PL*) and between checkpoints.

JSON keys (GUIDE §3): ``alphas``, ``kernel_distance_from_init``, ``kernel_velocity``,
``pl_lambda_min``, ``kernel`` ("full" | "logit_trace"), plus ``n_examples`` (examples in the
kernel), ``warnings``, ``info`` (the envelope of every command: arch, data, ``n`` = examples in the
data set, device, dtype, ``seed`` of the example subset, versions, timings) and, with
``--checkpoints``, ``checkpoints`` = {``steps``, ``distance_from_first``, ``consecutive_distance``,
``velocity``, ``pl_lambda_min``, …}. See :mod:`mli_theory.kernels` for the definitions.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from .common import input_notes, seed as _seed
from .common import Progress, Timings, add_model_args, emit, envelope, load_model_inputs, model_facts, plot_warnings, positive_int

#: examples used for the kernel when --examples is not given (a seeded random subset above it)
DEFAULT_EXAMPLES = 256
#: the most α points the command evaluates (each is one kernel)
MAX_ALPHAS = 1001


def add_parser(sub: Any) -> None:
    """Register the ``kernel`` subcommand on an argparse subparsers object."""
    p = sub.add_parser(
        "kernel", help="empirical NTK along the path: kernel distance, velocity and PL* λmin",
        description="The empirical neural tangent kernel K(α) = J Jᵀ at points θ(α) = (1−α)θ0 + αθT: the kernel "
                    "distance S(K(0), K(α)) = 1 − ⟨K(0), K(α)⟩_F / (‖K(0)‖_F‖K(α)‖_F), its velocity dS/dα and the "
                    "PL* constant λmin(K(α)); with --checkpoints, the same between a run's saved training checkpoints.",
    )
    add_model_args(p)
    p.add_argument("--alphas", type=int, default=11, help="number of α points in [0, 1], ends included (default 11)")
    p.add_argument("--kernel", default="full", help="full (n·k × n·k, default) | logit_trace (n × n, summed over outputs)")
    p.add_argument("--recipe", default="auto", help="auto (by estimated cost, default) | jacobian | ntk_vp")
    p.add_argument("--examples", type=int, default=None,
                   help=f"examples in the kernel: a seeded random subset (default: all, at most {DEFAULT_EXAMPLES})")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the example subset (default 0)")
    p.add_argument("--memory-mb", type=int, default=1024, help="memory budget for Jacobian and kernel blocks in MiB (default 1024)")
    p.add_argument("--checkpoints", metavar="RUN_DIR", default=None,
                   help="also compare the kernels of the run's saved checkpoints (RUN_DIR/checkpoints/step_*.pt)")


def _validate(args: argparse.Namespace) -> None:
    from ..errors import InputError
    from ..kernels import KERNELS, RECIPES

    if isinstance(args.alphas, bool) or not isinstance(args.alphas, int) or args.alphas < 2:
        raise InputError(f"--alphas {args.alphas}: need an integer of at least 2 α points")
    if args.alphas > MAX_ALPHAS:
        raise InputError(f"--alphas {args.alphas}: more than the {MAX_ALPHAS} α points this command evaluates")
    if args.kernel not in KERNELS:
        raise InputError(f"--kernel {args.kernel}: unknown kernel (expected full or logit_trace)")
    if args.recipe not in RECIPES:
        raise InputError(f"--recipe {args.recipe}: unknown recipe (expected auto, jacobian or ntk_vp)")
    if args.examples is not None:
        positive_int(args.examples, "--examples")
    positive_int(args.memory_mb, "--memory-mb")


def _first_axis(line: Any, x: Any) -> None:
    """The kernel needs the examples along the first axis of the model's output."""
    import torch
    from torch.func import functional_call

    from ..errors import InputError

    with torch.no_grad():
        out = functional_call(line.shell, line.start, (x[:2],))
    if out.dim() < 1 or out.shape[0] != min(2, x.shape[0]):
        raise InputError("the model must return one tensor with the examples along its first axis")


def _text(d: dict[str, Any]) -> str:
    lines = [f"empirical NTK ({d['kernel']}, recipe {d['recipe']}, {d['mode']}) on n = {d['n_examples']} examples, "
             f"k = {d['n_outputs']} outputs, P = {d['n_parameters']} parameters"]
    lines.append(f"  {'alpha':>8} {'S(K0,Ka)':>12} {'dS/da':>12} {'lambda_min':>14}")
    for a, s, v, lam in zip(d["alphas"], d["kernel_distance_from_init"], d["kernel_velocity"], d["pl_lambda_min"]):
        fmt = lambda t, w: f"{t:>{w}.6g}" if t is not None else f"{'-':>{w}}"  # noqa: E731
        lines.append(f"  {a:>8.4f} {fmt(s, 12)} {fmt(v, 12)} {fmt(lam, 14)}")
    ck = d.get("checkpoints")
    if ck:
        lines.append(f"checkpoints of {ck['run']}: steps {ck['steps'][0]} … {ck['steps'][-1]} ({len(ck['steps'])} files)")
        lines.append(f"  {'step':>10} {'S(K_first,K)':>14} {'velocity/step':>15}")
        vel = [None] + list(ck["velocity"])
        for t, s, v in zip(ck["steps"], ck["distance_from_first"], vel):
            lines.append(f"  {t:>10d} {s if s is not None else float('nan'):>14.6g} "
                         f"{(f'{v:.6g}' if v is not None else '-'):>15}")
    for w in d["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Compute the kernel path (and checkpoint kernels) and print the result; returns the exit code."""
    import torch

    from ..errors import InputError
    from ..kernels import kernel_along_path, kernel_between_checkpoints, list_checkpoints, load_checkpoints, plot_kernel_path
    from ..path import BNPolicy, alpha_grid, data_on_line, make_line

    _validate(args)
    timings = Timings()
    files = None
    if args.checkpoints:
        if not os.path.isdir(args.checkpoints):
            raise InputError(f"--checkpoints {args.checkpoints}: no such folder (a run folder written by "
                             "'mli-theory train --save-every STEPS')")
        files = list_checkpoints(args.checkpoints)
        if len(files) < 2:
            raise InputError(f"--checkpoints {args.checkpoints}: need at least 2 saved checkpoints, found {len(files)}")
    with timings.stage("load"):
        inp = load_model_inputs(args)
    data, bn, device, dtype = inp["data"], inp["bn"], inp["device"], inp["dtype"]
    line = make_line(inp["model"], inp["states"]["init"], inp["states"]["final"], device=device, dtype=dtype)
    data = data_on_line(line, data, bn)
    _first_axis(line, data.x)
    ckpt_states = load_checkpoints(files) if files else None
    if files and ckpt_states is not None:
        from ..inputs import match_state_dict

        for c, sd in zip(files, ckpt_states):
            match_state_dict(inp["model"], sd, f"--checkpoints {c.path}:")

    warnings: list[str] = []
    n_use = data.n if args.examples is None else min(args.examples, data.n)
    if args.examples is None and data.n > DEFAULT_EXAMPLES:
        n_use = DEFAULT_EXAMPLES
    if args.examples is not None and args.examples > data.n:
        warnings.append(f"--examples {args.examples} exceeds the {data.n} examples of the data: using all of them")
    if n_use < data.n:
        gen = torch.Generator().manual_seed(args.seed)
        idx = torch.randperm(data.n, generator=gen)[:n_use].sort().values.to(data.x.device)
        x = data.x[idx]
        warnings.append(f"the kernel uses a random subset of {n_use} of the {data.n} examples (seed {args.seed}; "
                        "set --examples to change)")
    else:
        x = data.x if isinstance(data.x, torch.Tensor) else data.x[:]  # a kernel holds n² blocks anyway
    memory = args.memory_mb * (1 << 20)

    progress = Progress("kernels", args.quiet)
    with timings.stage("path_kernels"):
        result = kernel_along_path(line, x, alpha_grid(args.alphas), kernel=args.kernel, recipe=args.recipe, bn=bn,
                                   bn_x=data.x, batch_size=args.batch_size, memory_bytes=memory, progress=progress)
    progress.close()
    result = dataclasses.replace(result, warnings=tuple(warnings) + result.warnings)
    out = result.to_dict()
    ck = None
    if files and ckpt_states is not None:
        cprog = Progress("checkpoint kernels", args.quiet, unit="step")
        with timings.stage("checkpoint_kernels"):
            ck = kernel_between_checkpoints(
                inp["model"], ckpt_states, x, steps=[c.step for c in files], kernel=args.kernel, recipe=args.recipe,
                recompute_bn=bn == BNPolicy.RECOMPUTE, bn_x=data.x, batch_size=args.batch_size, device=device,
                dtype=dtype, memory_bytes=memory, progress=cprog,
            )
        cprog.close()
        out["checkpoints"] = {"run": args.checkpoints, "files": [c.path for c in files], **ck.to_dict()}
        out["warnings"] = out["warnings"] + [f"checkpoints: {w}" for w in ck.warnings if w not in out["warnings"]]
    if args.plot:
        with timings.stage("plot"):
            out["warnings"] = out["warnings"] + list(plot_warnings(plot_kernel_path, result, args.plot, checkpoints=ck))
    if args.json:
        emit(envelope(out, **model_facts(inp), input_warnings=input_notes(inp), seed=args.seed, timings=timings), True)
    else:
        emit(_text(out), False)
    return 0
