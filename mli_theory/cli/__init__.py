"""The ``mli-theory`` command line: a thin layer that parses flags and prints."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
