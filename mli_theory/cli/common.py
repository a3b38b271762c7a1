"""What every ``mli-theory`` command shares: one-line usage errors, progress bars on stderr, JSON
on stdout, and the model / checkpoint / data flags with their validation.

A command module (``check`` lives in :mod:`.main`; the others in their own modules) provides
``add_parser(subparsers)`` and ``run(args) -> int``; library errors (:class:`InputError`) become
one line and exit code 2 in :func:`mli_theory.cli.main.main`.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
import math
import os
import sys
import time
from dataclasses import replace
from typing import Any, Iterator

PROG = "mli-theory"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # one prefix for every error line ("mli-theory: error:"), the command after it
        prog, _, command = self.prog.partition(" ")
        sys.stderr.write(f"{prog}: error: {command + ': ' if command else ''}{message}\n")
        raise SystemExit(2)


# where :func:`emit` writes the result while :func:`results_on_stdout` holds stdout for it alone
_RESULT_STREAM: contextvars.ContextVar[Any] = contextvars.ContextVar("mli_theory_result_stream", default=None)


@contextlib.contextmanager
def results_on_stdout() -> Iterator[None]:
    """Run a command with stdout kept for its result: whatever else prints (a model's ``forward``,
    a user's factory, a library) goes to stderr, and :func:`emit` writes to the stdout of the
    caller. So ``--json`` output stays one JSON object, whatever the user's code prints."""
    token = _RESULT_STREAM.set(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _RESULT_STREAM.reset(token)


def result_stream() -> Any:
    """The stream results go to: the caller's stdout (see :func:`results_on_stdout`)."""
    stream = _RESULT_STREAM.get()
    return stream if stream is not None else sys.stdout


class Progress:
    """A tqdm bar on stderr (never stdout), shown only for work that takes a while."""

    def __init__(self, label: str, quiet: bool, unit: str = "α") -> None:
        self.label, self.quiet, self.unit = label, quiet, unit
        self.bar = None

    def __call__(self, done: int, total: int, **postfix: Any) -> None:
        """Advance to ``done`` of ``total`` (a total that grows is followed); ``postfix`` values
        (e.g. ``loss=0.12``) are shown after the bar."""
        if self.quiet:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.label, unit=self.unit, file=sys.stderr, delay=2.0, leave=False)
        if self.bar.total != total:
            self.bar.total = total
        if postfix:
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Timings:
    """Wall seconds per stage of a command, for ``info.timings`` (keys end in ``_s``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as ``<name>_s`` (added to an earlier stage of the same name)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = name if name.endswith("_s") else f"{name}_s"
            self.seconds[key] = round(self.seconds.get(key, 0.0) + time.perf_counter() - t0, 4)

    def total(self) -> dict[str, float]:
        """Every stage so far and ``total_s``, the wall time since this object was made."""
        return {**self.seconds, "total_s": round(time.perf_counter() - self.start, 4)}


def versions() -> dict[str, str]:
    """The versions of this package, torch, numpy and Python (``info.versions``)."""
    import platform

    import numpy
    import torch

    from .. import __version__

    return {"mli_theory": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


#: timing keys a library result may keep in its ``info`` (moved into ``info.timings`` by :func:`envelope`)
_LIBRARY_SECONDS = ("seconds", "eval_s")


def envelope(
    result: dict[str, Any],
    *,
    arch: str | None,
    data: str | None,
    n: int | None,
    device: Any,
    dtype: Any,
    seed: int | None,
    timings: Timings | dict[str, float] | None = None,
    stage: str = "compute",
    input_warnings: tuple[str, ...] = (),
    **facts: Any,
) -> dict[str, Any]:
    """``result`` (a JSON-ready dict) with the ``info`` envelope every command's ``--json`` carries.

    ``info`` = {``arch``, ``data``, ``n`` (examples in the data set), ``device``, ``dtype``, ``seed``
    (None where the command has none), ``versions`` {``mli_theory``, ``torch``, ``numpy``,
    ``python``}, ``timings`` {stage: seconds, keys ending in ``_s``}} plus the command-specific facts
    already in ``result["info"]`` and ``facts``. A library's own timings (``info.timings``, or a
    bare ``info.seconds`` / ``info.eval_s``, which become ``timings.<stage>_s`` / ``timings.eval_s``)
    join the command's stage timings; ``total_s`` is the command's wall time. ``input_warnings``
    (what reading the inputs changed or assumed, :func:`input_notes`) go first in ``warnings``.
    """
    from ..results import json_safe

    out = dict(result)
    if input_warnings:
        own = list(out.get("warnings") or [])
        out["warnings"] = [w for w in input_warnings if w not in own] + own
    info = dict(out.pop("info", None) or {})
    times: dict[str, float] = {}
    lib = info.pop("timings", None)
    if isinstance(lib, dict):
        times.update(lib)
    for key in _LIBRARY_SECONDS:
        if key in info:
            value = info.pop(key)
            times[f"{stage}_s" if key == "seconds" else key] = value
    if isinstance(timings, Timings):
        times.update(timings.total())
    elif timings:
        times.update(timings)
    times = {(k if k.endswith("_s") else f"{k}_s"): (float(v) if isinstance(v, (int, float)) else v)
             for k, v in times.items() if v is not None}
    info.update(facts)
    info.update(
        arch=arch, data=data, n=n,
        device=None if device is None else str(device),
        dtype=None if dtype is None else str(dtype).replace("torch.", ""),
        seed=seed, versions=versions(), timings=times,
    )
    out["info"] = info
    return json_safe(out)


def input_notes(inp: dict[str, Any]) -> tuple[str, ...]:
    """What reading the inputs of :func:`load_model_inputs` changed or assumed, for a command's
    warnings: the data's notes (an iterable read into memory, a DataLoader's batches, …) and the
    checkpoint entries the cast to the evaluation's dtype rounds."""
    import torch

    notes = list(inp["data"].notes)
    dtype = inp["dtype"]
    count, first = 0, None
    for sd in inp["states"].values():
        for k, v in sd.items():
            if v.is_floating_point() and v.dtype != dtype and not torch.equal(v.to(dtype).to(torch.float64), v.to(torch.float64)):
                count, first = count + 1, first or k
    if count:
        notes.append(f"the checkpoints do not fit {str(dtype).replace('torch.', '')} exactly ({count} entr{'y' if count == 1 else 'ies'} "
                     f"rounded, first {first!r}): the results are about the weights as cast; use --dtype float64 for the given weights")
    return tuple(notes)


def model_facts(inp: dict[str, Any]) -> dict[str, Any]:
    """``arch``, ``data``, ``n``, ``device`` and ``dtype`` of :func:`load_model_inputs`' result, for :func:`envelope`."""
    data = inp["data"]
    return dict(arch=inp["spec"].text, data=data.name, n=getattr(data, "n", None), device=inp["device"], dtype=inp["dtype"])


def writable_folder(path: str, flag: str, create: bool = True) -> str:
    """Make sure ``path`` is a folder this process can write in, before any work: create it (and its
    parents) when missing and ``create``, then create and remove a probe file in it.

    Raises:
        InputError: one line naming ``flag``.
    """
    from ..errors import InputError

    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"{flag} {path}: exists and is not a folder")
    if not os.path.isdir(path):
        if not create:
            raise InputError(f"{flag} folder does not exist: {path}")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{flag} {path}: cannot create the folder ({exc.strerror or exc})") from None
    reason = _cannot_write_in(path)
    if reason:
        raise InputError(f"{flag} {path}: the folder is not writable ({reason})")
    return path


def _cannot_write_in(folder: str) -> str | None:
    """None when a probe file can be created (and removed) in ``folder``, else why not."""
    probe = os.path.join(folder, f".mli-theory-write-probe-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def emit(obj: Any, as_json: bool) -> None:
    """Print the result: one JSON object (the only thing on stdout), or text."""
    out = result_stream()
    if as_json:
        out.write(json.dumps(obj) + "\n")
    else:
        out.write(str(obj) + "\n")
    out.flush()


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
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f"--plot {path}: the file exists and is not writable")
    reason = _cannot_write_in(folder)
    if reason:
        raise InputError(f"--plot {path}: cannot write in the folder {folder} ({reason})")


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
    p.add_argument("--dtype", default=None,
                   help="float32 | float64 (default: float64 where a checkpoint holds float64 entries, else float32)")
    p.add_argument("--bn", default="recompute", help="BatchNorm statistics: recompute (default) | interpolate | frozen")
    p.add_argument("--batch-size", type=int, default=None,
                   help="examples per forward pass (default: all of an in-memory data set; 1024 for streamed sources)")
    if plot:
        p.add_argument("--plot", metavar="OUT.png", help="save a figure (.png, .pdf, .svg)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")


SEED_MAX = 2**63 - 1  # torch's seeds are 64-bit; a negative one wraps onto a positive one


def seed(text: str) -> int:
    """argparse type of ``--seed``: an integer in [0, 2⁶³ − 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: an integer in [0, 2^63 - 1]") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"seed {value} out of range: an integer in [0, 2^63 - 1]")
    return value


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
    dtype = resolve_dtype(args.dtype) if args.dtype is not None else None
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
    if dtype is None:  # from the inputs: the checkpoints' own precision, not a narrower one
        wide = any(t.dtype == torch.float64 for sd in states.values() for t in sd.values())
        dtype = torch.float64 if wide else torch.float32
    if spec.kind == "factory":
        model = build_model(spec)
    else:  # built-in specs: shapes first, on the meta device, so a huge or mistyped spec costs nothing
        with torch.device("meta"):
            model = build_model(spec)
    for name, sd in states.items():
        match_state_dict(model, sd, name)
    data = load_data(data_src, loss, normalize=getattr(args, "normalize", None), model=model if spec.kind == "factory" else None)
    if spec.kind != "factory":
        data = data.flattened()  # built-in specs read vectors: images become their pixel rows
    if data.loader_batch_size is not None and hasattr(args, "batch_size") and args.batch_size is None and data.loader_batch_size < data.n:
        # the loader's batches are the user's: a forward that mixes the examples of a batch (BatchNorm
        # re-estimation, centring) computes otherwise in others
        args.batch_size = data.loader_batch_size
        data = replace(data, notes=data.notes + (
            f"{data_src}: evaluated in the DataLoader's batches of {data.loader_batch_size} examples "
            "(--batch-size sets others)",))
    if data.streamed and getattr(args, "batch_size", None) is None and hasattr(args, "batch_size"):
        from ..inputs.examples import STREAM_BATCH

        args.batch_size = STREAM_BATCH  # streamed sources are read a batch at a time, never whole
    return dict(model=model, states=states, data=data, spec=spec, bn=bn, dtype=dtype, device=device, loss=loss)
