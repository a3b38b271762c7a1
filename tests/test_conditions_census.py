"""experiments/conditions_census.py: the tabulation on synthetic rows, and one tiny run end to end."""

from __future__ import annotations

import importlib.util
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "experiments", "conditions_census.py")


@pytest.fixture(scope="module")
def cc():
    spec = importlib.util.spec_from_file_location("conditions_census", PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["conditions_census"] = mod  # the census worker is pickled by reference
    spec.loader.exec_module(mod)
    return mod


def test_wilson(cc):
    lo, hi = cc.wilson(0, 10)
    assert lo == 0.0 and 0.27 < hi < 0.28  # 0.2775
    lo, hi = cc.wilson(5, 10)
    assert math.isclose(lo, 0.2366, abs_tol=1e-4) and math.isclose(hi, 0.7634, abs_tol=1e-4)
    assert all(math.isnan(v) for v in cc.wilson(0, 0))
    assert cc.frac(3, 4).startswith("3/4 = 0.75 [")


def test_family(cc):
    assert cc.family("deep_linear:16-16-4") == "linear"
    assert cc.family("mlp:10-32-32-1:tanh:bn") == "batchnorm"
    assert cc.family("mlp:10-32-32-1:tanh") == "tanh"
    assert cc.family("mlp:64-32-64:relu") == "relu"


def _cond(name, holds, applicable=True, proven=False, reason=None):
    return {"name": name, "holds": holds, "applicable": applicable, "proven": proven, "reason": reason, "value": 0.5}


def _record(rise, cert, conds, rounding=1e-5):
    return {"check_status": "ok", "check_seconds": 1.0, "result": {
        "max_rise": rise, "monotone_on_grid": rise <= 0, "gauss_length": 1.0,
        "certificate": {"status": cert, "method": None, "rise": None, "reason": ""},
        "conditions": conds, "warnings": [], "info": {"rounding_level": rounding, "path_kind": "smooth", "timings": {}}}}


class _Cfg:
    def __init__(self, arch, optimizer="sgd", lr=0.1, seed=0):
        self.arch, self.optimizer, self.lr, self.seed, self.epochs = arch, optimizer, lr, seed, 10


def _rows(cc, bad: bool):
    na = "not applicable: the result needs z ∈ C² on [0, 1], and this path is piecewise smooth (ReLU)"
    recs = [
        ("diabetes", "mlp:10-32-32-1:tanh", _record(0.0, "monotone", [_cond("acute_tangents", True), _cond("two_phase", True)])),
        ("digits_ae", "mlp:64-32-64:relu", _record(0.0, "unknown", [_cond("acute_tangents", False), _cond("two_phase", None, False, reason=na)])),
        ("deep_linear", "deep_linear:16-16-4", _record(0.0, "non_monotone", [
            _cond("acute_tangents", False, proven=True, reason="disproven: the loss provably rises on [0.9, 1] (certificate non_monotone), and ..."),
            _cond("two_phase", True if bad else None, proven=bad)])),
        ("diabetes", "mlp:10-32-32-1:tanh:bn", _record(2e-6, "unknown", [_cond("acute_tangents", True), _cond("two_phase", True)])),
        ("teacher", "mlp:16-64-64-4", _record(0.3, "unknown", [
            _cond("acute_tangents", False, reason="withdrawn: the measured loss rises by 0.3 on the grid ..."),
            _cond("two_phase", None, False, reason=na)])),
    ]
    rows = []
    for i, (exp, arch, rec) in enumerate(recs):
        rows.append(cc.census_row(exp, _Cfg(arch), {"id": f"run{i}", "status": "ok", "train_loss": 0.01}, rec))
    rows.append(cc.census_row("teacher", _Cfg("mlp:16-64-64-4"), {"id": "div", "status": "diverged"}, None))
    return rows


def test_tabulate_synthetic(cc, tmp_path):
    rows = _rows(cc, bad=False)
    assert [r["grid"] for r in rows[:5]] == ["flat", "flat", "flat", "rounding", "rises"]
    assert rows[2]["c_two_phase"] == cc.UNDECIDED and rows[1]["c_two_phase"] == cc.NA
    assert rows[4]["c_acute_tangents_note"] == "withdrawn (grid rise)"
    assert rows[5]["check_status"].startswith("not checked")
    assert cc.violations(rows) == []
    text = cc.tabulate(rows, {"mode": "test"})
    assert "**None.**" in text and "VIOLATION" not in text
    # acute_tangents: 5 applicable, 2 hold (grid), 3 fail (1 proven), 1 withdrawn, 1 by certificate
    line = next(l for l in text.splitlines() if l.startswith("| acute_tangents | 5 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:9] == ["5", "2 (0 / 2)", "3 (1 / 2)", "1", "1", "0", "0"]
    assert "two_phase against the other conditions" in text
    assert "within float32 rounding" in text  # run3: holds with a rise at rounding level
    # round trip through the CSV
    cc.write_rows(rows, str(tmp_path / "census.csv"))
    back = cc.read_rows(str(tmp_path / "census.csv"))
    assert cc.tabulate(back, {"mode": "test"}) == text


def test_violation_is_loud(cc):
    rows = _rows(cc, bad=True)
    bad = cc.violations(rows)
    assert [(b["id"], b["condition"], b["proven"]) for b in bad] == [("run2", "two_phase", True)]
    assert "**VIOLATION: 1 (run, condition) pairs" in cc.tabulate(rows)


def test_one_run_end_to_end(cc, tmp_path):
    """Train one tiny deep-linear run with the sweep runner, check it, tabulate (a few seconds)."""
    from mli_theory.runs.sweep import grid

    cfgs = grid({"data": "synthetic:teacher", "loss": "mse", "epochs": 2, "batch_size": 64, "arch": "deep_linear:16-4-4", "lr": 0.01}, {"seed": [0]})
    rows, timing = cc.run_census({"deep_linear": cfgs}, str(tmp_path), jobs=1, budget=5.0, log=None)
    assert len(rows) == 1 and rows[0]["check_status"] == "ok", rows
    r = rows[0]
    assert r["family"] == "linear" and r["certificate"] in ("monotone", "non_monotone", "unknown")
    assert r["path_kind"] == "polynomial"
    names = cc.condition_names(rows)
    assert "two_phase" in names and "acute_tangents" in names
    assert all(r[f"c_{n}"] in cc.VERDICTS for n in names)
    assert cc.violations(rows) == []
    # cached: a second call checks nothing
    rows2, _ = cc.run_census({"deep_linear": cfgs}, str(tmp_path), jobs=1, budget=5.0, log=None)
    assert rows2[0]["check_seconds"] == r["check_seconds"]
    assert "Census of the MSE sufficient conditions" in cc.tabulate(rows)
