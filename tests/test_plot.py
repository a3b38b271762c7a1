"""The loss-curve figure: a certified rise is always visible (inset zoom when it is below the plot's
resolution), and monotone / unknown certificates are shown."""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from mli_theory.plot import INSET_SAMPLES, curve_figure, plot_curve  # noqa: E402
from mli_theory.results import Certificate, CheckResult  # noqa: E402

GRID = [i / 50 for i in range(51)]


def _result(losses: list[float], cert: Certificate, alphas: list[float] = GRID, tol: float = 0.0) -> CheckResult:
    best, where = 0.0, None
    for j in range(len(losses)):
        for i in range(j):
            if losses[j] - losses[i] > best:
                best, where = losses[j] - losses[i], (alphas[i], alphas[j])
    return CheckResult(
        alphas=tuple(alphas), losses=tuple(losses), accuracies=None, loss="mse", max_rise=best, rise_where=where,
        tolerance=tol, monotone_on_grid=best <= tol, initial_loss=losses[0], final_loss=losses[-1],
        distance=1.0, normalized_distance=None, certificate=cert,
    )


def _falling(x: float) -> float:
    return 1.1 - 0.6 * x


def _written(fig_path: str) -> None:
    assert os.path.isfile(fig_path) and os.path.getsize(fig_path) > 1000


def _insets(fig):
    main = fig.axes[0]
    return main, list(main.child_axes)


def _texts(ax) -> str:
    return "\n".join(t.get_text() for t in ax.texts)


def test_visible_rise_is_shaded_and_labelled_without_inset(tmp_path):
    losses = [_falling(x) + (0.25 if 0.4 < x < 0.6 else 0.0) for x in GRID]  # a clear bump
    a, b = 0.4, 0.42
    rise = losses[GRID.index(b)] - losses[GRID.index(a)]
    cert = Certificate("non_monotone", "exact_polynomial", rise, (a, b), "a proven rise")
    path = str(tmp_path / "visible.png")
    fig = plot_curve(_result(losses, cert), path)
    _written(path)
    main, insets = _insets(fig)
    assert insets == []
    labels = main.get_legend_handles_labels()[1]
    assert any("certified witness" in s and f"{rise:.3g}" in s for s in labels)
    assert any("worst grid rise" in s for s in labels)
    # the witness is shaded: a span patch covering [a, b]
    spans = [p for p in main.patches if abs(p.get_x() - a) < 1e-12 and abs(p.get_x() + p.get_width() - b) < 1e-12]
    assert spans


def test_sub_resolution_rise_on_grid_points_gets_an_inset(tmp_path):
    # a rise of 3e-4 on a curve spanning 0.5 → 1.1: a plateau that creeps up between two grid points
    losses = [_falling(x) for x in GRID]
    i = 25
    losses[i + 1] = losses[i] + 3e-4
    a, b = GRID[i], GRID[i + 1]
    cert = Certificate("non_monotone", "exact_polynomial", 3e-4, (a, b), "a proven rise")
    path = str(tmp_path / "small_rise.png")
    fig = plot_curve(_result(losses, cert), path)
    _written(path)
    main, insets = _insets(fig)
    assert len(insets) == 1
    ins = insets[0]
    x0, x1 = ins.get_xlim()
    y0, y1 = ins.get_ylim()
    assert x0 <= a and b <= x1 and (x1 - x0) < 0.2  # zoomed on the witness
    la, lb = losses[i], losses[i + 1]
    assert y0 <= min(la, lb) and max(la, lb) <= y1
    assert 3e-4 / (y1 - y0) > 0.05  # the rise fills a readable part of the inset's height
    assert "rise 0.0003" in _texts(ins)
    assert "placed" not in _texts(ins)  # both ends are grid points: their losses are exact


def _bumpy(h: float, w: float, c: float):
    """A falling line with a step of height h over width w at c (the rise beats the slope)."""

    def f(x: float) -> float:
        t = min(max((x - c) / w + 0.5, 0.0), 1.0)
        return _falling(x) + h * t * t * (3 - 2 * t)

    return f


def test_sub_grid_bump_with_local_curve(tmp_path):
    h, w, c = 1e-6, 5e-7, 0.5051
    f = _bumpy(h, w, c)
    a, b = c - w / 2, c + w / 2
    rise = f(b) - f(a)
    assert rise > 0
    calls: list[list[float]] = []

    def curve(xs):
        calls.append(list(xs))
        return [f(x) for x in xs]

    losses = [f(x) for x in GRID]
    result = _result(losses, Certificate("non_monotone", "enclosure_bisection", rise, (a, b), "proven"))
    assert result.monotone_on_grid  # the grid never sees it
    path = str(tmp_path / "sub_grid.png")
    fig = plot_curve(result, path, witness_curve=curve)
    _written(path)
    assert len(calls) == 1 and INSET_SAMPLES <= len(calls[0]) <= INSET_SAMPLES + 2
    assert a in calls[0] and b in calls[0] and all(0.0 <= x <= 1.0 for x in calls[0])
    main, insets = _insets(fig)
    assert len(insets) == 1
    ins = insets[0]
    x0, x1 = ins.get_xlim()
    y0, y1 = ins.get_ylim()
    assert x0 <= a and b <= x1 and x1 - x0 < 10 * w
    assert y0 <= min(f(a), f(b)) and max(f(a), f(b)) <= y1
    assert y1 - y0 < 20 * h  # zoomed enough to see a 1e-6 bump
    # the local curve is drawn in the inset (about INSET_SAMPLES points)
    assert any(len(line.get_xdata()) >= INSET_SAMPLES for line in ins.lines)


def test_sub_grid_bump_without_local_curve_still_marked(tmp_path):
    h, w, c = 1e-6, 5e-7, 0.5051
    f = _bumpy(h, w, c)
    a, b = c - w / 2, c + w / 2
    rise = f(b) - f(a)
    result = _result([f(x) for x in GRID], Certificate("non_monotone", "enclosure_bisection", rise, (a, b), "proven"))
    path = str(tmp_path / "sub_grid_nocurve.png")
    fig = plot_curve(result, path)
    _written(path)
    _, insets = _insets(fig)
    assert len(insets) == 1
    ins = insets[0]
    x0, x1 = ins.get_xlim()
    y0, y1 = ins.get_ylim()
    assert x0 <= a and b <= x1
    # L(a) is placed on the grid's line, L(b) = L(a) + rise: both inside, and said to be placed
    la = f(0.5) + (f(0.52) - f(0.5)) * (a - 0.5) / 0.02
    assert y0 <= la and la + rise <= y1
    assert "placed" in _texts(ins)


def test_failing_local_curve_does_not_lose_the_plot(tmp_path):
    losses = [_falling(x) for x in GRID]
    losses[26] = losses[25] + 1e-5
    cert = Certificate("non_monotone", "exact_polynomial", 1e-5, (GRID[25], GRID[26]), "proven")

    def broken(xs):
        raise RuntimeError("no model here")

    path = str(tmp_path / "broken.png")
    fig = plot_curve(_result(losses, cert), path, witness_curve=broken)
    _written(path)
    _, insets = _insets(fig)
    assert len(insets) == 1 and "local curve unavailable" in _texts(insets[0])


def test_monotone_certificate_text_box(tmp_path):
    losses = [_falling(x) ** 2 for x in GRID]
    cert = Certificate("monotone", "exact_polynomial", 0.0, None, "L' ≤ 0 on [0, 1]", rise_bound=0.0)
    path = str(tmp_path / "monotone.png")
    fig = plot_curve(_result(losses, cert), path)
    _written(path)
    main, insets = _insets(fig)
    assert insets == []
    text = _texts(main)
    assert "certified monotone" in text and "rise ≤ 0" in text


def test_unknown_certificate_shades_undecided(tmp_path):
    losses = [_falling(x) + 0.02 * math.sin(12 * x) for x in GRID]
    undecided = ((0.30, 0.32), (0.32, 0.34), (0.70, 0.7001))  # the first two merge
    cert = Certificate.unknown("enclosure method: budget", rise_bound=0.05, cells=400, undecided=undecided)
    path = str(tmp_path / "unknown.png")
    fig = plot_curve(_result(losses, cert, tol=0.1), path)
    _written(path)
    main, insets = _insets(fig)
    assert insets == []
    shaded = [c for c in main.collections if isinstance(c, PolyCollection) and c.get_label() == "undecided by the proof"]
    assert len(shaded) == 1 and len(shaded[0].get_paths()) == 2
    text = _texts(main)
    assert "unknown" in text and "2 undecided" in text and "≤ 0.05" in text


def test_not_requested_certificate_draws_no_box():
    fig = curve_figure(_result([_falling(x) for x in GRID], Certificate.unknown("not requested (certify=False)")))
    assert _texts(fig.axes[0]) == "" and fig.axes[0].child_axes == []


@pytest.mark.parametrize("ext", ["svg", "pdf"])
def test_other_formats(tmp_path, ext):
    losses = [_falling(x) for x in GRID]
    losses[26] = losses[25] + 1e-5
    cert = Certificate("non_monotone", "exact_polynomial", 1e-5, (GRID[25], GRID[26]), "proven")
    path = str(tmp_path / f"curve.{ext}")
    plot_curve(_result(losses, cert), path)
    _written(path)


def test_precomputed_witness_samples_match_the_callable():
    from mli_theory.plot import witness_alphas

    h, w, c = 1e-6, 5e-7, 0.5051
    f = _bumpy(h, w, c)
    a, b = c - w / 2, c + w / 2
    xs = witness_alphas((a, b))
    assert a in xs and b in xs and xs == sorted(xs) and len(xs) >= INSET_SAMPLES
    result = _result([f(x) for x in GRID], Certificate("non_monotone", "enclosure_bisection", f(b) - f(a), (a, b), "p"))
    by_samples = curve_figure(result, witness_samples=(xs, [f(x) for x in xs])).axes[0].child_axes[0]
    by_curve = curve_figure(result, witness_curve=lambda q: [f(x) for x in q]).axes[0].child_axes[0]
    assert by_samples.get_ylim() == by_curve.get_ylim() and by_samples.get_xlim() == by_curve.get_xlim()
    assert "placed" not in _texts(by_samples)
