import glob
import os
import subprocess
import sys

import pytest
import sympy as sp

from mli_theory.theory.symbolic import check_step, derivation, render_result, result_names

PROOFS = sorted(p for p in glob.glob(os.path.join(os.path.dirname(__file__), "..", "proofs", "*.py")) if not os.path.basename(p).startswith("_"))


def test_every_result_has_a_proof_file():
    names = {os.path.splitext(os.path.basename(p))[0] for p in PROOFS}
    assert set(result_names()) <= names


@pytest.mark.parametrize("path", PROOFS, ids=lambda p: os.path.basename(p))
def test_proof_script_checks(path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(os.path.join(os.path.dirname(path), "..")), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, os.path.basename(path)], cwd=os.path.dirname(path), capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PROOF CHECKED" in p.stdout


@pytest.mark.parametrize("name", result_names())
def test_derivations_return_sympy_objects_and_their_steps_check(name):
    d = derivation(name)
    assert isinstance(d.result, sp.Basic)
    assert d.assumptions and d.statement
    for step in d.steps:
        assert check_step(step), step.claim
    assert name in render_result(name, as_dict=True)["name"]
    assert "\\" in render_result(name, latex=True)


def test_a_wrong_identity_is_caught():
    from mli_theory.theory.symbolic import Step, alpha

    assert not check_step(Step("wrong", "zero", alpha**2 - alpha))
    assert not check_step(Step("wrong degree", "degree_le", alpha**3, 2))
