"""Testing API for users: hypothesis strategies that draw MLI problems, and pytest assertions.

>>> from mli_theory.testing import assert_mli, assert_not_mli
>>> from mli_theory.testing.strategies import build_problem
>>> p = build_problem([2, 1], 8, seed=0, endpoint="overshoot")   # a linear model, θT past the minimum
>>> assert_not_mli(p.model, p.init, p.final, p.data).certificate.status
'non_monotone'

Two strategies promise a verdict and keep it, each draw certified as these assertions certify:
``overshoot_problems()`` draws only proven MLI violations, ``mli_problems()`` only proven MLI
problems (the proof rides along as ``problem.certificate``).

The strategies (:mod:`mli_theory.testing.strategies`) need hypothesis (``pip install
mli-theory[test]``); the assertions do not. The pytest plugin (``--mli-plots DIR``) is registered
as an entry point and loads by itself.
"""

from .assertions import PLOTS_ENV, assert_mli, assert_not_mli

__all__ = ["PLOTS_ENV", "assert_mli", "assert_not_mli"]
