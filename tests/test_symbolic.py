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


# ----------------------------------------------------------------------------- wrong steps are caught


def _zero_steps(name):
    return [st for st in derivation(name).steps if st.kind == "zero"]


def _perturbations(expr):
    """Expressions that differ from an identity ``expr ≡ 0`` by something non-zero.

    expr + α², expr + x for its first free symbol x, and, for up to two top-level terms t of
    expr that are not themselves ≡ 0 after evaluation and expansion, expr + t (that term
    multiplied by 2; a term that is ≡ 0 on its own, like one square of the FTC step's sum of
    squares, is no perturbation).
    """
    from mli_theory.theory.symbolic import alpha

    out = [("+ alpha**2", expr + alpha**2)]
    syms = sorted(expr.free_symbols, key=lambda x: x.name)
    if syms:
        out.append((f"+ {syms[0]}", expr + syms[0]))
    if isinstance(expr, sp.Add):
        doubled = [t for t in expr.args if sp.expand(t.doit()) != 0][:2]
        out += [(f"term {i} doubled", expr + t) for i, t in enumerate(doubled)]
    return out


@pytest.mark.parametrize("name", result_names())
def test_perturbed_zero_steps_fail(name):
    from mli_theory.theory.symbolic import Step

    for step in _zero_steps(name):
        assert check_step(step), step.claim
        for what, wrong in _perturbations(step.expr):
            assert not check_step(Step(step.claim, "zero", wrong)), f"{name}: {step.claim} ({what}) passed"


def test_degree_bounds_are_tight_and_one_less_fails():
    from dataclasses import replace

    from mli_theory.theory.symbolic import Step, alpha

    seen = 0
    for name in result_names():
        for step in derivation(name).steps:
            if step.kind != "degree_le":
                continue
            # stay in the polynomial ring: re-parsing the loss of a deep network as an expression is slow
            poly = step.expr if isinstance(step.expr, sp.Poly) else sp.Poly(step.expr, alpha)
            degree = poly.degree(alpha)
            assert check_step(step) and degree <= step.bound
            higher = poly + sp.Poly(alpha ** (step.bound + 1), *poly.gens)
            assert not check_step(Step(step.claim, "degree_le", higher, step.bound))
            if step.bound >= 1 and degree == step.bound:
                assert not check_step(replace(step, bound=step.bound - 1)), f"{name}: {step.claim}"
                seen += 1
    assert seen >= 3  # deep_linear_degree: every output and the loss attain their bounds


def test_slope_steps_carry_the_derivation():
    """The checked identities of results (a) and (b) fail when the maths they encode is changed."""
    from mli_theory.theory.symbolic import Step, _slope_terms, n

    Lp, P_int, Q, end = _slope_terms(2, 2)
    assert check_step(Step("(a)", "zero", (Lp + P_int / n).xreplace(end)))
    assert not check_step(Step("(a) without r = 0", "zero", Lp + P_int / n))
    assert not check_step(Step("(a) sign of the integral", "zero", (Lp - P_int / n).xreplace(end)))
    assert not check_step(Step("(a) factor 1/2n instead of 1/n", "zero", (Lp + P_int / (2 * n)).xreplace(end)))
    assert check_step(Step("(b)", "zero", n * Lp + P_int - Q))
    assert not check_step(Step("(b) sign of the integral", "zero", n * Lp - P_int - Q))
    assert not check_step(Step("(b) sign of Q", "zero", n * Lp + P_int + Q))
    assert not check_step(Step("(b) without Q", "zero", n * Lp + P_int))
    assert not check_step(Step("(b) without n", "zero", Lp + P_int - Q))


def test_polar_steps_carry_the_derivation():
    from mli_theory.theory.symbolic import Step, _dot, _polar, _spherical

    r1, r2 = sp.symbols("rho1 rho2", positive=True)
    p1, p2, t1, t2 = sp.symbols("phi1 phi2 theta1 theta2", real=True)
    u, v = _polar(r1, p1), _polar(r2, p2)
    assert check_step(Step("polar", "zero", _dot(u, v) - r1 * r2 * sp.cos(p1 - p2)))
    assert not check_step(Step("sum of angles", "zero", _dot(u, v) - r1 * r2 * sp.cos(p1 + p2)))
    assert not check_step(Step("sine", "zero", _dot(u, v) - r1 * r2 * sp.sin(p1 - p2)))
    assert not check_step(Step("norm", "zero", _dot(u, u) - r1))
    u3, v3 = _spherical(r1, t1, p1), _spherical(r2, t2, p2)
    good = sp.cos(t1) * sp.cos(t2) + sp.sin(t1) * sp.sin(t2) * sp.cos(p1 - p2)
    assert check_step(Step("sphere", "zero", _dot(u3, v3) - r1 * r2 * good))
    assert not check_step(Step("sphere, planar formula", "zero", _dot(u3, v3) - r1 * r2 * sp.cos(p1 - p2)))
    swapped = good.subs({sp.cos(t2): sp.sin(t2), sp.sin(t2): sp.cos(t2)}, simultaneous=True)
    assert not check_step(Step("sphere, colatitude and latitude confused", "zero", _dot(u3, v3) - r1 * r2 * swapped))


def test_no_step_is_zero_before_it_is_computed():
    """No ``zero`` step is already 0 when built (then the check would be a no-op): each is a
    non-zero expression in some symbols, which ``check_step`` has to reduce."""
    for name in result_names():
        for step in _zero_steps(name):
            assert step.expr != 0 and step.expr.free_symbols, f"{name}: {step.claim}"


def test_check_step_is_sound_on_awkward_input(monkeypatch):
    from mli_theory.theory.symbolic import Step, alpha

    x = sp.Symbol("x", positive=True)
    assert check_step(Step("trig", "zero", sp.sin(2 * x) - 2 * sp.sin(x) * sp.cos(x)))
    assert not check_step(Step("trig, wrong", "zero", sp.sin(2 * x) - sp.sin(x) * sp.cos(x)))
    assert check_step(Step("rational", "zero", (x**2 - 1) / (x - 1) - x - 1))
    assert not check_step(Step("rational, wrong", "zero", (x**2 - 1) / (x - 1) - x))
    assert not check_step(Step("float rounding", "zero", sp.Float("0.1") * x + sp.Float("0.2") * x - sp.Float("0.3") * x))
    assert not check_step(Step("tiny but not zero", "zero", sp.sin(x) ** 2 + sp.cos(x) ** 2 - 1 + sp.Rational(1, 10**30)))
    assert not check_step(Step("none", "zero", None))
    assert not check_step(Step("not an expression", "zero", sp.Eq(x, x)))
    assert not check_step(Step("not a polynomial in alpha", "degree_le", sp.sin(alpha), 5))
    assert not check_step(Step("no bound", "degree_le", alpha**2, None))
    assert not check_step(Step("unknown kind", "maybe", sp.Integer(0)))  # type: ignore[arg-type]
    assert check_step(Step("argument", "argument"))

    gamma = sp.gamma(x + 1) - x * sp.gamma(x)  # needs simplify (gammasimp)
    assert check_step(Step("gamma", "zero", gamma))

    def broken(*args, **kwargs):
        raise RuntimeError("simplification failed")

    monkeypatch.setattr(sp, "simplify", broken)
    assert not check_step(Step("gamma, simplify failing", "zero", gamma))
