"""``python -m mli_theory``: the command line."""

from .cli import main

raise SystemExit(main())
