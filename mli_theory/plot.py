"""Plots of the loss along the interpolation path (matplotlib, headless).

The figure is built on a bare :class:`matplotlib.figure.Figure` (no pyplot, no global backend
switch): :func:`curve_figure` returns it for inspection, :func:`plot_curve` also writes it.

What the figure shows besides the curve:

* the worst rise on the grid (dashed red segment), when it exceeds the tolerance;
* a ``non_monotone`` certificate: its witness [a, b] shaded and labelled with the certified rise,
  the loss at a and b marked; when the rise (or the interval) is below the plot's resolution, an
  inset zoomed on the witness, joined to it by a connector;
* a ``monotone`` certificate: a text box with its proven bound on the largest rise;
* an ``unknown`` certificate (when proof work ran): a text box, and the α-intervals the proof
  could not decide shaded lightly.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .results import CheckResult

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# image formats the plots are written in (by the file name's extension)
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")

# a certified rise smaller than this fraction of the axes' height, or a witness narrower than this
# fraction of its width, cannot be seen: the figure then gets an inset zoomed on the witness
Y_RESOLUTION = 1 / 200
X_RESOLUTION = 1 / 100
# points at which the optional local curve is evaluated across the inset's window
INSET_SAMPLES = 50

# the loss at α values near the witness: called once with a list of α in [0, 1], returns the losses
WitnessCurve = Callable[[Sequence[float]], Sequence[float]]

_CORNERS = ("upper right", "upper left", "lower left", "lower right")
_MARGIN = 0.03


def plot_curve(
    result: CheckResult,
    path: str,
    title: str | None = None,
    *,
    witness_curve: WitnessCurve | None = None,
    witness_samples: tuple[Sequence[float], Sequence[float]] | None = None,
) -> "Figure":
    """Save the loss curve with the worst grid rise and the certificate marked (see the module
    docstring); the image format follows ``path``'s extension (:data:`PLOT_FORMATS`).

    Args:
        result: what :func:`mli_theory.check.check` returned.
        path: the image file to write.
        title: the axes title (default: the grid verdict and the certificate's status).
        witness_curve: optional, for a ``non_monotone`` certificate: the loss along the path, called
            once with a list of about :data:`INSET_SAMPLES` α around the witness (within [0, 1],
            ``a`` and ``b`` included) and returning one loss per α. It gives the exact L(a), L(b) and
            the curve inside the zoom. If it raises, the figure is drawn without it (and says so).
        witness_samples: optional precomputed ``(alphas, losses)`` near the witness, used like the
            values ``witness_curve`` returns (both may be given).

    Returns:
        The figure (already written; it holds no pyplot state, so nothing needs closing).
    """
    fig = curve_figure(result, title, witness_curve=witness_curve, witness_samples=witness_samples)
    fig.savefig(path)
    return fig


def curve_figure(
    result: CheckResult,
    title: str | None = None,
    *,
    witness_curve: WitnessCurve | None = None,
    witness_samples: tuple[Sequence[float], Sequence[float]] | None = None,
) -> "Figure":
    """The figure :func:`plot_curve` writes, not saved. Its first axes is the main plot; an inset
    (when drawn) is the main axes' only child axes: ``fig.axes[0].child_axes[0]``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    ax = fig.add_subplot()
    alphas, losses = list(result.alphas), list(result.losses)
    ax.plot(alphas, losses, "-o", ms=2.5, lw=1.4, color="C0", label=f"training loss ({result.loss})")
    if result.rise_where is not None and result.max_rise > result.tolerance:
        a, b = result.rise_where
        la = result.losses[result.alphas.index(a)]
        lb = result.losses[result.alphas.index(b)]
        ax.plot([a, b], [la, lb], "o--", color="C3", lw=1.2, label=f"worst grid rise Δ={result.max_rise:.3g}")

    cert = result.certificate
    boxes: list[tuple[str, str]] = []  # (text, face colour) of the certificate's text box
    zoom: dict[str, Any] | None = None
    if cert.status == "non_monotone" and cert.where is not None:
        zoom = _draw_witness(ax, result, witness_curve, witness_samples)
    elif cert.status == "monotone":
        bound = cert.rise if cert.rise is not None else cert.rise_bound
        text = "certified monotone" + (f" ({cert.method})" if cert.method else "")
        if bound is not None:
            text += f"\nlargest rise ≤ {bound:.3g}"
        boxes.append((text, "#e3f4e1"))
    elif cert.status == "unknown" and not cert.reason.startswith("not requested"):
        text = "not certified (unknown)"
        if cert.rise_bound is not None:
            text += f"\nproven: largest rise ≤ {cert.rise_bound:.3g}"
        if cert.undecided:
            spans = _merge(cert.undecided)
            _shade_undecided(ax, spans)
            text += f"\n{len(spans)} undecided α-interval{'s' if len(spans) != 1 else ''} shaded"
        boxes.append((text, "#f2f2f2"))

    ax.set_xlabel("α  (θ(α) = (1−α)θ0 + αθT)")
    ax.set_ylabel("mean training loss")
    verdict = "monotone on grid" if result.monotone_on_grid else "NOT monotone on grid"
    ax.set_title(title or f"{verdict}; certificate: {cert.status}", fontsize=10)
    ax.grid(alpha=0.3)

    # place the inset, the legend and the text box in the corners the curve leaves free
    xlim, ylim = ax.get_xlim(), ax.get_ylim()  # fixes the autoscaled limits
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    free = _free_corners(alphas, losses, xlim, ylim)
    if zoom is not None and _needs_inset(zoom, xlim, ylim):
        # never over the witness itself: the connector must point at something visible
        fx = [(zoom[k] - xlim[0]) / (xlim[1] - xlim[0]) for k in ("a", "b")]
        fy = [(zoom[k] - ylim[0]) / (ylim[1] - ylim[0]) for k in ("la", "lb")]
        corner = next((c for c in free if not _covers(c, 0.45, (min(fx), max(fx)), (min(fy), max(fy)))), free[0])
        free.remove(corner)
        _draw_inset(ax, corner, zoom)
    elif zoom is not None and zoom["note"]:
        ax.plot([], [], " ", label=zoom["note"])
    ax.legend(fontsize=8, loc=free.pop(0))
    if boxes:
        text, face = boxes[0]
        _text_box(ax, free[0], text, face)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- witness


def _draw_witness(
    ax: "Axes",
    result: CheckResult,
    witness_curve: WitnessCurve | None,
    witness_samples: tuple[Sequence[float], Sequence[float]] | None,
) -> dict[str, Any]:
    """Shade and label the witness [a, b] on the main axes; return what the inset needs."""
    cert = result.certificate
    assert cert.where is not None
    a, b = float(cert.where[0]), float(cert.where[1])
    rise = cert.rise
    lo, hi = _window(a, b)

    # the loss near the witness: the optional local curve, the samples given, the grid points
    local: dict[float, float] = {}
    note = None
    if witness_samples is not None:
        for x, y in zip(*witness_samples):
            if math.isfinite(float(y)):
                local[float(x)] = float(y)
    if witness_curve is not None:
        xs = witness_alphas((a, b))
        try:
            ys = list(witness_curve(xs))
            if len(ys) != len(xs):
                raise ValueError(f"{len(ys)} losses for {len(xs)} α")
            local.update((x, float(y)) for x, y in zip(xs, ys) if math.isfinite(float(y)))
        except Exception as exc:  # noqa: BLE001 - the zoom is optional, the witness still shows
            note = f"local curve unavailable ({type(exc).__name__})"
    grid = dict(zip(result.alphas, result.losses))

    la, lb, estimated = _ends(a, b, rise, local, grid, list(result.alphas), list(result.losses))
    digits = 4 if b - a >= 1e-3 else min(15, 3 + math.ceil(-math.log10(b - a)))  # a and b told apart
    label = f"certified witness [{a:.{digits}g}, {b:.{digits}g}]"
    label += f", rise {rise:.3g}" if rise is not None else ""
    ax.axvspan(a, b, color="C1", alpha=0.25, lw=0)
    for x in (a, b):
        ax.axvline(x, color="C1", lw=0.8, ls=":")
    ax.plot([a, b], [la, lb], "^", color="C1", ms=5, mec="k", mew=0.5, label=label, zorder=4)

    # the curve inside the zoom window: local values, grid points, and the grid line at its edges
    inside = {x: y for x, y in local.items() if lo <= x <= hi}
    grid_in = [(x, y) for x, y in grid.items() if lo <= x <= hi]
    edges = [(x, _interp(x, list(result.alphas), list(result.losses))) for x in (max(lo, 0.0), min(hi, 1.0))]
    return {
        "a": a, "b": b, "la": la, "lb": lb, "rise": rise, "lo": lo, "hi": hi,
        "local": sorted(inside.items()), "grid": grid_in, "edges": edges,
        "estimated": estimated, "note": note,
    }


def _window(a: float, b: float) -> tuple[float, float]:
    """The inset's α range: [a, b] padded on both sides (a narrow witness gets context around it)."""
    pad = min(0.5 * (b - a), 0.05) if b > a else 1e-6
    return a - pad, b + pad


def witness_alphas(where: Sequence[float], n: int = INSET_SAMPLES) -> list[float]:
    """The α at which the inset evaluates the loss around the witness ``where`` = [a, b]: ``n``
    evenly spaced α across the padded window (clipped to [0, 1]), plus a and b themselves.

    What ``witness_curve`` is called with; a caller precomputing ``witness_samples`` can use it too.
    """
    a, b = float(where[0]), float(where[1])
    lo, hi = _window(a, b)
    lo, hi = max(lo, 0.0), min(hi, 1.0)
    step = (hi - lo) / (n - 1)
    return sorted({lo + i * step for i in range(n)} | {a, b})


def _ends(
    a: float, b: float, rise: float | None, local: dict[float, float], grid: dict[float, float],
    alphas: list[float], losses: list[float],
) -> tuple[float, float, bool]:
    """L(a), L(b) from the local values or the grid; where one is missing it is placed with the
    certified rise (and the other on the grid's line): the flag says the values are placed."""
    la = local.get(a, grid.get(a))
    lb = local.get(b, grid.get(b))
    if la is not None and lb is not None:
        return la, lb, False
    r = rise if rise is not None else 0.0
    if la is None and lb is None:
        la = _interp(a, alphas, losses)
    if lb is None:
        assert la is not None
        return la, la + r, True
    return lb - r, lb, True


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """The grid's piecewise-linear curve at x (clamped to its ends)."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect_left(xs, x)
    if xs[i] == x:
        return ys[i]
    t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + t * (ys[i] - ys[i - 1])


def _needs_inset(zoom: dict[str, Any], xlim: tuple[float, float], ylim: tuple[float, float]) -> bool:
    """Whether the certified rise or its interval is below what the main axes can show."""
    rise = zoom["rise"] if zoom["rise"] is not None else abs(zoom["lb"] - zoom["la"])
    return rise < Y_RESOLUTION * (ylim[1] - ylim[0]) or (zoom["b"] - zoom["a"]) < X_RESOLUTION * (xlim[1] - xlim[0])


def _draw_inset(ax: "Axes", corner: str, zoom: dict[str, Any]) -> "Axes":
    """An inset zoomed on the witness: the curve there, L(a) and L(b), the rise between them."""
    from matplotlib.ticker import MaxNLocator

    a, b, la, lb = zoom["a"], zoom["b"], zoom["la"], zoom["lb"]
    w = h = 0.42
    x0 = _MARGIN if "left" in corner else 1 - _MARGIN - w
    y0 = _MARGIN + 0.06 if "lower" in corner else 1 - _MARGIN - h  # room for the tick labels
    ins = ax.inset_axes((x0 + 0.05 if "left" in corner else x0, y0, w - 0.05, h - 0.06))

    # y range: L(a), L(b) and the curve in the window, unless the curve there dwarfs the rise
    # (then the rise stays readable and the curve leaves the inset through its edges)
    ends = [la, lb]
    span = abs(lb - la)
    curve_y = [y for _, y in zoom["local"]] + [y for _, y in zoom["grid"]]
    if not zoom["local"]:
        curve_y += [y for _, y in zoom["edges"]]
    ys = ends + [y for y in curve_y if span == 0 or abs(y - 0.5 * (la + lb)) <= 10 * span]
    y_lo, y_hi = min(ys), max(ys)
    tiny = max(abs(y_hi), abs(y_lo)) * 1e-12 + 1e-300
    pad = max(0.15 * (y_hi - y_lo), 0.25 * span, tiny)
    ins.set_ylim(y_lo - pad, y_hi + pad)
    ins.set_xlim(zoom["lo"], zoom["hi"])

    ins.axvspan(a, b, color="C1", alpha=0.25, lw=0)
    if zoom["local"]:
        xs, ys_ = zip(*zoom["local"])
        ins.plot(xs, ys_, "-", color="C0", lw=1.2)
    else:
        pts = sorted(zoom["edges"] + zoom["grid"])
        ins.plot([p[0] for p in pts], [p[1] for p in pts], "--", color="C0", lw=1.0, alpha=0.7)
    if zoom["grid"]:
        ins.plot([p[0] for p in zoom["grid"]], [p[1] for p in zoom["grid"]], "o", color="C0", ms=3)
    for y in (la, lb):
        ins.axhline(y, color="C1", lw=0.7, ls=":")
    ins.plot([a, b], [la, lb], "^", color="C1", ms=6, mec="k", mew=0.5, zorder=4)
    # the rise as a bracket at b
    ins.annotate("", xy=(b, lb), xytext=(b, la), arrowprops={"arrowstyle": "<->", "color": "C3", "lw": 1.0})
    rise = zoom["rise"] if zoom["rise"] is not None else lb - la
    lines = [f"rise {rise:.3g}"]
    if zoom["estimated"]:
        lines.append("L(a), L(b) placed from grid")
    if zoom["note"]:
        lines.append(zoom["note"])
    ins.text(0.03, 0.97, "\n".join(lines), transform=ins.transAxes, va="top", ha="left", fontsize=6.5,
             bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.7", "alpha": 0.85})
    ins.tick_params(labelsize=6)
    ins.xaxis.set_major_locator(MaxNLocator(3))
    ins.yaxis.set_major_locator(MaxNLocator(4))
    ins.xaxis.get_offset_text().set_fontsize(6)
    ins.yaxis.get_offset_text().set_fontsize(6)
    ins.set_facecolor("white")
    ins.set_zorder(5)
    ax.indicate_inset_zoom(ins, edgecolor="0.35")
    return ins


# ----------------------------------------------------------------------------- unknown, layout


def _merge(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Touching or overlapping intervals joined."""
    out: list[list[float]] = []
    for lo, hi in sorted((float(s[0]), float(s[1])) for s in spans):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def _shade_undecided(ax: "Axes", spans: list[tuple[float, float]]) -> None:
    """The undecided α-intervals, lightly, full height; an edge keeps the narrowest ones visible."""
    from matplotlib.collections import PolyCollection

    polys = [[(lo, 0.0), (hi, 0.0), (hi, 1.0), (lo, 1.0)] for lo, hi in spans]
    coll = PolyCollection(polys, transform=ax.get_xaxis_transform(), facecolor="0.6", edgecolor="0.6",
                          alpha=0.3, lw=1.0, zorder=0, label="undecided by the proof")
    ax.add_collection(coll, autolim=False)


def _free_corners(alphas: list[float], losses: list[float], xlim: tuple[float, float], ylim: tuple[float, float]) -> list[str]:
    """The four corners, those the curve crosses least first (a 0.45 × 0.45 box in each)."""
    import numpy as np

    sx, sy = xlim[1] - xlim[0], (ylim[1] - ylim[0]) or 1.0
    xs, ys = np.asarray(alphas, dtype=float), np.asarray(losses, dtype=float)
    stride = max(1, len(xs) // 4000)
    dense = np.linspace(xs[0], xs[-1], 801)  # the polyline between the points, for a coarse grid
    px = np.concatenate([xs[::stride], dense])
    py = np.concatenate([ys[::stride], np.interp(dense, xs, ys)])
    fx, fy = (px - xlim[0]) / sx, (py - ylim[0]) / sy

    def load(corner: str) -> int:
        xr = (0.0, 0.45) if "left" in corner else (0.55, 1.0)
        yr = (0.0, 0.45) if "lower" in corner else (0.55, 1.0)
        return int(np.count_nonzero((fx >= xr[0]) & (fx <= xr[1]) & (fy >= yr[0]) & (fy <= yr[1])))

    return sorted(_CORNERS, key=lambda c: (load(c), _CORNERS.index(c)))


def _covers(corner: str, size: float, xs: tuple[float, float], ys: tuple[float, float]) -> bool:
    """Whether a size × size box (axes fractions) in ``corner`` overlaps the box xs × ys."""
    bx = (0.0, size + _MARGIN) if "left" in corner else (1 - size - _MARGIN, 1.0)
    by = (0.0, size + _MARGIN) if "lower" in corner else (1 - size - _MARGIN, 1.0)
    pad = 0.03
    return xs[0] - pad <= bx[1] and xs[1] + pad >= bx[0] and ys[0] - pad <= by[1] and ys[1] + pad >= by[0]


def _text_box(ax: "Axes", corner: str, text: str, face: str) -> None:
    x, ha = (0.03, "left") if "left" in corner else (0.97, "right")
    y, va = (0.04, "bottom") if "lower" in corner else (0.96, "top")
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=8, zorder=6,
            bbox={"boxstyle": "round,pad=0.35", "fc": face, "ec": "0.5", "alpha": 0.95})
