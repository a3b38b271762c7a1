"""What every ``mli-theory`` command shares: one-line usage errors, progress bars on stderr, JSON
on stdout, and the model / checkpoint / data flags with their validation.

A command module (``check`` lives in :mod:`.main`; the others in their own modules) provides
``add_parser(subparsers)`` and ``run(args) -> int``; library errors (:class:`InputError`) become
one line and exit code 2 in :func:`mli_theory.cli.main.main`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

PROG = "mli-theory"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


class Progress:
    """A tqdm bar on stderr (never stdout), shown only for work that takes a while."""

    def __init__(self, label: str, quiet: bool, unit: str = "α") -> None:
        self.label, self.quiet, self.unit = label, quiet, unit
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.label, unit=self.unit, file=sys.stderr, delay=2.0, leave=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def emit(obj: Any, as_json: bool) -> None:
    """Print the result: one JSON object (the only thing on stdout), or text."""
    if as_json:
        sys.stdout.write(json.dumps(obj) + "\n")
    else:
        sys.stdout.write(str(obj) + "\n")


def validate_plot_path(path: str) -> None:
    """The plot is optional work, but a path that cannot be written is a usage error: say so first."""
    from ..errors import InputError
    from ..plot import PLOT_FORMATS

    if os.path.isdir(path):
        raise InputError(f"--plot {path} is a directory; give a file name such as {os.path.join(path, 'curve.png')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"--plot folder does not exist: {folder}")
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        raise InputError(f"--plot {path}: unknown image format {ext or '(none)'!r} (use one of: {', '.join(PLOT_FORMATS)})")


def plot_warnings(draw: Any, *args: Any, **kwargs: Any) -> tuple[str, ...]:
    """Run optional plotting work: () when it succeeds, else one warning for the result (a failed
    plot never loses the numbers)."""
    try:
        draw(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure of optional work becomes a warning
        return (f"the plot could not be written ({type(exc).__name__}: {exc})",)
    return ()


DATA_HELP = (".npz with arrays x, y | sklearn:digits, sklearn:diabetes, ... | mnist:DIR | fashion-mnist:DIR | "
             "cifar10:DIR | cifar100:DIR | images:DIR (one sub-folder per class) | npy:DIR (x.npy, y.npy) | "
             "pkg.mod:factory (a Dataset, DataLoader, (x, y) batches or arrays); images are pixels in [0, 1], (C, H, W)")
NORMALIZE_HELP = ("per-channel (x - mean) / std of the inputs as read: 'mean,std' for every channel or "
                  "'m1,..,mC,s1,..,sC' (default: none)")


def add_model_args(
    p: argparse.ArgumentParser,
    endpoints: tuple[tuple[str, str], ...] = (("init", "θ0 state dict (.pt via torch.save, or .safetensors)"),
                                                ("final", "θT state dict")),
    run_folder: bool = True,
    plot: bool = True,
) -> None:
    """The input flags every model command shares (``check``'s names and meanings)."""
    p.add_argument("--arch", help="linear:IN-OUT | deep_linear:D0-..-DL | mlp:D0-..-DL[:act][:bn] | pkg.mod:factory")
    for name, text in endpoints:
        p.add_argument(f"--{name}", help=text)
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--normalize", metavar="MEAN,STD", default=None, help=NORMALIZE_HELP)
    if run_folder:
        p.add_argument("--run", help="a run folder written by 'mli-theory train' (gives --arch/--init/--final/--data)")
    p.add_argument("--loss", default=None, help="mse (default) or ce")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda (default cpu)")
    p.add_argument("--dtype", default="float32", help="float32 (default) | float64")
    p.add_argument("--bn", default="recompute", help="BatchNorm statistics: recompute (default) | interpolate | frozen")
    p.add_argument("--batch-size", type=int, default=None,
                   help="examples per forward pass (default: all of an in-memory data set; 1024 for streamed sources)")
    if plot:
        p.add_argument("--plot", metavar="OUT.png", help="save a figure (.png, .pdf, .svg)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")


def positive_int(value: Any, flag: str) -> int:
    """An integer ≥ 1, or an :class:`InputError` naming the flag."""
    from ..errors import InputError

    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{flag} {value!r}: must be a positive integer")
    return value


def positive_float(value: Any, flag: str) -> float:
    """A finite number > 0, or an :class:`InputError` naming the flag."""
    from ..errors import InputError

    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{flag} {value!r}: must be a finite number > 0")
    return float(value)


def load_model_inputs(
    args: argparse.Namespace,
    endpoints: tuple[str, ...] = ("init", "final"),
) -> dict[str, Any]:
    """Turn the shared flags into library arguments, validating cheap things before expensive ones.

    Returns a dict with ``model`` (built on the meta device for built-in specs: its weights are never
    read), ``states`` ({endpoint flag name: state dict}, matched against the model), ``data``
    (a :class:`~mli_theory.inputs.Dataset`), ``spec``, ``bn`` (a :class:`~mli_theory.path.BNPolicy`),
    ``dtype``, ``device``, ``loss``.

    Raises:
        InputError: with one line naming the flag or file.
    """
    import torch

    from ..errors import InputError
    from ..inputs import build_model, load_data, load_state_dict, match_state_dict, parse_arch, resolve_device, resolve_dtype
    from ..path import BNPolicy

    try:
        bn = BNPolicy(args.bn)
    except ValueError:
        raise InputError(f"--bn {args.bn}: unknown BatchNorm policy (expected recompute, interpolate or frozen)") from None
    if getattr(args, "batch_size", None) is not None:
        positive_int(args.batch_size, "--batch-size")
    dtype = resolve_dtype(args.dtype)
    device = resolve_device(args.device)
    if getattr(args, "plot", None):
        validate_plot_path(args.plot)
    arch, data_src, loss = args.arch, args.data, args.loss
    paths = {name: getattr(args, name, None) for name in endpoints}
    if getattr(args, "run", None):
        from ..runs import read_run

        run = read_run(args.run)
        arch = arch or run["arch"]
        for name, key in (("init", "init"), ("final", "final")):
            if name in paths and not paths[name]:
                paths[name] = run[key]
        data_src = data_src or run["data"]
        loss = loss or run["loss"]
        if getattr(args, "normalize", None) is None and args.data is None:
            args.normalize = run.get("normalize")
    missing = [f"--{n}" for n, v in (("arch", arch), *paths.items(), ("data", data_src)) if not v]
    if missing:
        raise InputError(f"missing required argument(s): {', '.join(missing)}")
    loss = loss or "mse"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # user factories importable from the working directory
    spec = parse_arch(arch)
    states = {name: load_state_dict(path) for name, path in paths.items()}
    if spec.kind == "factory":
        model = build_model(spec)
    else:  # built-in specs: shapes first, on the meta device, so a huge or mistyped spec costs nothing
        with torch.device("meta"):
            model = build_model(spec)
    for name, sd in states.items():
        match_state_dict(model, sd, name)
    data = load_data(data_src, loss, normalize=getattr(args, "normalize", None))
    if spec.kind != "factory":
        data = data.flattened()  # built-in specs read vectors: images become their pixel rows
    if data.streamed and getattr(args, "batch_size", None) is None and hasattr(args, "batch_size"):
        from ..inputs.examples import STREAM_BATCH

        args.batch_size = STREAM_BATCH  # streamed sources are read a batch at a time, never whole
    return dict(model=model, states=states, data=data, spec=spec, bn=bn, dtype=dtype, device=device, loss=loss)
