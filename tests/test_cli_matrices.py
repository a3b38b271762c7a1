"""The curvature command's other matrices (GGN, Fisher, K-FAC), per-layer spectra, diagonals and the
split of L″; surfaces along Hessian eigenvectors; barriers of trained curves — through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mli_theory.cli.main import main

pytest.importorskip("curvlinops")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        code = main(["train", "--arch", "mlp:64-6-10:tanh", "--data", "sklearn:digits", "--loss", "ce", "--epochs", "2",
                     "--seed", str(seed), "--out", str(root / f"r{seed}"), "--quiet"])
        assert code == 0
    return root


def _json(args, capsys):
    code = main([*args, "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_curvature_matrices_split_and_blocks(runs, capsys):
    o = _json(["curvature", "--run", str(runs / "r0"), "--alphas", "2", "--top-k", "2", "--dtype", "float64",
               "--matrix", "ggn", "--per-layer", "--diagonal", "--split"], capsys)
    ggn = o["matrix_eigenvalues"]
    assert ggn["matrix"] == "ggn" and len(ggn["points"]) == 2 and all(p["converged"] for p in ggn["points"])
    # the GGN is positive semi-definite; its top eigenvalue is below the Hessian's plus its residual curvature
    assert all(v >= 0 for p in ggn["points"] for v in p["eigenvalues"])
    split = o["split"]
    for s, dc in zip(split, o["directional_curvature"]):
        assert s["second_derivative"] == pytest.approx(s["gauss_newton"] + s["residual"], rel=1e-12)
        assert s["second_derivative"] == pytest.approx(dc, rel=1e-8, abs=1e-10)  # no BatchNorm: L″ = ΔθᵀHΔθ
    blocks = o["per_layer"][0]["blocks"]
    assert [b["name"] for b in blocks] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert o["diagonal"][0]["matrix"] == "ggn" and o["diagonal"][0]["trace"] > 0
    assert "eigen_tol" in o["per_layer"][0] and "tolerance" not in o["per_layer"][0]


def test_curvature_rejects_an_unknown_matrix(runs, capsys):
    code = main(["curvature", "--run", str(runs / "r0"), "--at", "1", "--matrix", "fisher", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--matrix fisher" in err and len(err.strip().splitlines()) == 1


def test_surface_along_hessian_eigenvectors(runs, capsys):
    o = _json(["surface", "--run", str(runs / "r0"), "--directions", "hessian", "--steps", "3", "--dtype", "float64"], capsys)
    c = _json(["curvature", "--run", str(runs / "r0"), "--at", "1", "--top-k", "2", "--dtype", "float64", "--tol", "1e-8"], capsys)
    assert np.allclose(o["eigenvalues"], c["eigenvalues"][0], rtol=1e-5)
    code = main(["surface", "--run", str(runs / "r0"), "--directions", "hessian", "--plane", "--dims", "1", "--quiet"])
    assert code == 2


def test_barrier_of_a_trained_curve(runs, capsys):
    args = ["barrier", "--arch", "mlp:64-6-10:tanh", "--a", str(runs / "r0" / "final.pt"), "--b", str(runs / "r1" / "final.pt"),
            "--data", "sklearn:digits", "--loss", "ce", "--dtype", "float64", "--alphas", "9"]
    line = _json(args, capsys)
    untrained = _json([*args, "--curve", "bezier", "--curve-epochs", "0"], capsys)
    # a Bézier bent at the midpoint is the line: the same barriers
    for name, v in line["barriers"].items():
        got = untrained["curve"]["barriers"][name]["value"]
        assert (got is None and v["value"] is None) or got == pytest.approx(v["value"], rel=1e-9, abs=1e-12)
    for name, v in line["barriers"].items():  # the line, evaluated in the curve's batches: equal up to rounding
        got = untrained["curve"]["line_barriers"][name]
        assert got["alpha"] == v["alpha"] and (got["value"] == v["value"] or got["value"] == pytest.approx(v["value"], rel=1e-12))
    code = main([*args, "--curve", "bezier", "--bn", "repair", "--quiet"])
    assert code == 2


def test_barrier_refuses_curve_settings_without_a_curve(runs, capsys):
    """--curve-epochs or --curve-lr on the straight line (no --curve) would be ignored: one line, exit 2."""
    args = ["barrier", "--arch", "mlp:64-6-10:tanh", "--a", str(runs / "r0" / "final.pt"), "--b", str(runs / "r1" / "final.pt"),
            "--data", "sklearn:digits", "--loss", "ce", "--alphas", "3", "--quiet"]
    for extra in (["--curve-epochs", "5"], ["--curve-lr", "0.1"], ["--curve-epochs", "5", "--curve-lr", "0.1"]):
        capsys.readouterr()
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and extra[0] in err and "--curve bezier" in err
