"""``python -m mli_theory`` runs the CLI."""

from .cli import main

raise SystemExit(main())
