"""Run the ``mli-theory`` CLI in this process (fast; no subprocess start-up)."""

from __future__ import annotations

import contextlib
import io


def run_cli(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``mli-theory ARGS``."""
    from mli_theory.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()
