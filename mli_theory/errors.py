"""The one exception type that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a spec, file, shape or value the toolkit cannot work with.

    The message is a single line meant for a person; the CLI prints it as
    ``mli-theory: error: <message>`` and exits with status 2.
    """
