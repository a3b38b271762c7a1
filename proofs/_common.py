"""Shared runner for the proof scripts: check every sympy step, then the numerical backing."""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from mli_theory.theory.symbolic import Derivation, check_step


def run(derivation: Derivation, numeric: dict[str, Callable[[], bool]]) -> int:
    """Print each step's verdict; return 0 only if every step and numerical check passes."""
    ok = True
    print(f"# {derivation.title}\n{derivation.statement}\n")
    for i, step in enumerate(derivation.steps, 1):
        if step.kind == "argument":
            print(f"  step {i} [argument]  {step.claim}")
            continue
        good = check_step(step)
        ok &= good
        print(f"  step {i} [{'ok' if good else 'FAILED'}: {step.kind}]  {step.claim}")
    for name, check in numeric.items():
        good = bool(check())
        ok &= good
        print(f"  numerical check [{'ok' if good else 'FAILED'}]  {name}")
    print("\nPROOF CHECKED" if ok else "\nPROOF FAILED")
    return 0 if ok else 1


def turning(v: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Turning rate ‖dT/dα‖ = √(‖v‖²‖a‖² − ⟨v,a⟩²)/‖v‖² along rows."""
    vv = (v * v).sum(-1)
    aa = (a * a).sum(-1)
    va = (v * a).sum(-1)
    return np.sqrt(np.maximum(vv * aa - va * va, 0.0)) / vv


def random_poly_curve(rng: np.random.Generator, m: int, degree: int, scale: float = 1.0):
    """A random polynomial curve in R^m: returns (z, z′, z″) as functions of an α array."""
    c = rng.normal(size=(degree + 1, m)) * scale ** np.arange(degree + 1)[:, None]
    P = np.polynomial.polynomial

    def z(a):
        return np.stack([P.polyval(a, c[:, i]) for i in range(m)], -1)

    def dz(a):
        return np.stack([P.polyval(a, P.polyder(c[:, i])) for i in range(m)], -1)

    def d2z(a):
        return np.stack([P.polyval(a, P.polyder(c[:, i], 2)) for i in range(m)], -1)

    return z, dz, d2z


def exit_with(code: int) -> None:
    sys.exit(code)
