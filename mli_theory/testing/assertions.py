"""Assertions about MLI for users' own pytest suites.

``assert_mli`` passes when MLI is proven on all of [0, 1] (``certify=True``; or, with
``certify=False``, when it holds on the grid) and fails with an ``AssertionError`` that says what was
found: the certified witness [a, b] and its rise, or "unknown" with the reason, and the grid curve
in brief. ``assert_not_mli`` is the converse (passes on a proven violation, or a grid rise with
``certify=False``). With the pytest plugin's ``--mli-plots DIR`` (or the environment variable
``MLI_THEORY_PLOTS``), every failure saves its loss-curve plot there and names the file.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from ..check import check
from ..results import CheckResult

PLOTS_ENV = "MLI_THEORY_PLOTS"


def _brief(r: CheckResult, points: int = 6) -> str:
    step = max(1, (len(r.alphas) - 1) // (points - 1))
    idx = sorted(set(list(range(0, len(r.alphas), step)) + [len(r.alphas) - 1]))
    curve = ", ".join(f"L({r.alphas[i]:.3g})={r.losses[i]:.6g}" for i in idx)
    rise = f"grid max rise {r.max_rise:.3g}" + (f" on [{r.rise_where[0]:.4g}, {r.rise_where[1]:.4g}]" if r.rise_where else "")
    return f"{curve}; {rise}"


def _certificate(r: CheckResult) -> str:
    c = r.certificate
    if c.status == "non_monotone" and c.where:
        return f"non_monotone ({c.method}): L({c.where[0]:.17g}) → L({c.where[1]:.17g}) rises by {c.rise:.6g}"
    if c.status == "monotone":
        return f"monotone ({c.method}): every rise ≤ {c.rise:.3g}"
    return f"unknown: {c.reason}"


def _plot(r: CheckResult, label: str) -> str | None:
    folder = os.environ.get(PLOTS_ENV)
    if not folder:
        return None
    from ..plot import plot_curve

    os.makedirs(folder, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", label or "mli")[:80] or "mli"
    path = os.path.join(folder, f"{name}.png")
    i = 1
    while os.path.exists(path):
        i += 1
        path = os.path.join(folder, f"{name}-{i}.png")
    try:
        plot_curve(r, path, title=label[:90] or None)
    except Exception as exc:  # the plot is optional: the assertion message matters
        return f"(plot failed: {type(exc).__name__}: {exc})"
    return path


def _fail(r: CheckResult, headline: str, label: str) -> None:
    msg = f"{headline}\n  {label}\n  certificate: {_certificate(r)}\n  curve: {_brief(r)}"
    plot = _plot(r, label)
    if plot:
        msg += f"\n  plot: {plot}"
    raise AssertionError(msg)


def _run(model, init, final, data, *, tol: float, certify: bool, kwargs: dict[str, Any]) -> CheckResult:
    kwargs.setdefault("dtype", torch.float64)
    kwargs.setdefault("geometry", False)
    return check(model, init, final, data, tol=tol, certify=certify, **kwargs)


def assert_mli(model, init, final, data, *, tol: float = 0.0, certify: bool = True, label: str = "", **kwargs: Any) -> CheckResult:
    """Assert that the loss is monotone along θ(α) (every rise ≤ ``tol``).

    Args:
        model, init, final, data: as for :func:`mli_theory.check`.
        tol: rises up to ``tol`` count as monotone.
        certify: require a proof on all of [0, 1] (an "unknown" certificate fails); with False the
            grid decides (evidence only).
        label: names the case in the message and the plot file.
        **kwargs: passed to :func:`mli_theory.check` (``alphas``, ``dtype`` — float64 by default —,
            ``bn``, ``certify_budget``, …).

    Returns:
        The :class:`~mli_theory.results.CheckResult`, for further assertions.
    """
    r = _run(model, init, final, data, tol=tol, certify=certify, kwargs=kwargs)
    if certify:
        if r.certificate.status != "monotone":
            _fail(r, "MLI not proven" if r.certificate.status == "unknown" else "MLI is violated (proven)", label)
    elif not r.monotone_on_grid:
        _fail(r, "MLI violated on the grid", label)
    return r


def assert_not_mli(model, init, final, data, *, tol: float = 0.0, certify: bool = True, label: str = "", **kwargs: Any) -> CheckResult:
    """Assert that the loss rises by more than ``tol`` somewhere along θ(α) (proven, or on the grid)."""
    r = _run(model, init, final, data, tol=tol, certify=certify, kwargs=kwargs)
    if certify:
        if r.certificate.status != "non_monotone":
            _fail(r, "no proven MLI violation" if r.certificate.status == "unknown" else "MLI holds (proven)", label)
    elif r.monotone_on_grid:
        _fail(r, "no MLI violation on the grid", label)
    return r
