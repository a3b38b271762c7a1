"""pytest plugin (entry point ``pytest11``): ``--mli-plots DIR`` saves the plot of every failing MLI assertion.

Installed with the package; pytest loads it automatically. The option sets the environment
variable read by :mod:`mli_theory.testing.assertions`, so the assertions need no pytest import.
"""

from __future__ import annotations

import os

from .assertions import PLOTS_ENV


def pytest_addoption(parser) -> None:
    group = parser.getgroup("mli-theory")
    group.addoption(
        "--mli-plots",
        metavar="DIR",
        default=None,
        help="save the loss-curve plot of each failing assert_mli / assert_not_mli in DIR (named in the failure message)",
    )


def pytest_configure(config) -> None:
    folder = config.getoption("--mli-plots", default=None)
    if folder:
        os.environ[PLOTS_ENV] = os.path.abspath(folder)
