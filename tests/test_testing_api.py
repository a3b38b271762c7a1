"""The users' testing API: assertions, messages, plots, and the pytest plugin."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mli_theory.inputs.data import Dataset
from mli_theory.testing import PLOTS_ENV, assert_mli, assert_not_mli
from mli_theory.testing.strategies import build_problem


def test_assertions_on_a_planted_overshoot(monkeypatch, tmp_path):
    p = build_problem([2, 1], 8, seed=0, endpoint="overshoot")
    assert_not_mli(p.model, p.init, p.final, p.data)
    monkeypatch.setenv(PLOTS_ENV, str(tmp_path))
    with pytest.raises(AssertionError) as info:
        assert_mli(p.model, p.init, p.final, p.data, label="overshoot case")
    msg = str(info.value)
    assert "MLI is violated" in msg and "non_monotone" in msg and "rises by" in msg and "curve:" in msg
    plot = msg.split("plot: ")[1].strip()
    assert os.path.isfile(plot) and plot.startswith(str(tmp_path))


def test_unknown_fails_a_certified_assertion_but_not_a_grid_one():
    # ELU has no rigorous enclosure rule: the certifier answers unknown, naming the layer
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ELU(), torch.nn.Linear(3, 1)).double()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    final = {k: v + 0.1 * torch.randn_like(v) for k, v in init.items()}
    data = Dataset(torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64), "mse", "t")
    with pytest.raises(AssertionError, match="unknown"):
        assert_mli(model, init, final, data)
    r = assert_mli(model, init, final, data, certify=False, tol=10.0)  # evidence only
    assert r.monotone_on_grid


def test_problems_are_usable_by_check_and_do_not_share_state():
    p = build_problem([3, 4, 2], 5, seed=2, endpoint="trained", activation="relu", batchnorm=True, loss="ce")
    before = {k: v.clone() for k, v in p.init.items()}
    assert_mli(p.model, p.init, p.final, p.data, certify=False, tol=10.0)
    assert all(torch.equal(before[k], p.init[k]) for k in before)


def test_plugin_option_saves_plots(tmp_path):
    (tmp_path / "test_user.py").write_text(
        "from mli_theory.testing import assert_mli\n"
        "from mli_theory.testing.strategies import build_problem\n\n"
        "def test_fails():\n"
        "    p = build_problem([1, 1], 3, seed=0, endpoint='overshoot')\n"
        "    assert_mli(p.model, p.init, p.final, p.data, label='user case')\n"
    )
    plots = tmp_path / "plots"
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--mli-plots={plots}", "test_user.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "plot: " in out.stdout and len(list(plots.glob("*.png"))) == 1


def test_promising_problems_carry_the_certificate_the_assertions_find():
    from mli_theory.testing.strategies import planted_violation, proven_mli

    bad = planted_violation([1, 1], 1, 0, 0.125)  # needs its overshoot doubled before the violation is proven
    cert = assert_not_mli(bad.model, bad.init, bad.final, bad.data).certificate
    assert (bad.certificate.status, bad.certificate.where, bad.certificate.rise) == (cert.status, cert.where, cert.rise)
    assert "overshoot ε=" in bad.label and "doubled" in bad.label
    good = proven_mli([2, 1], 8, 0)
    assert good.certificate.status == assert_mli(good.model, good.init, good.final, good.data).certificate.status == "monotone"
    assert build_problem([2, 1], 8, seed=0).certificate is None  # plain problems promise nothing
