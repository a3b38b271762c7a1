"""Figures of loss surfaces and roughness slices (matplotlib, imported lazily, Agg backend).

Every function writes one file and returns nothing; callers record a failure as a warning in the
result, never as a lost result.
"""

from __future__ import annotations

import math
from typing import Any, Sequence


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_surface(surface: Any, path: str, title: str | None = None) -> None:
    """Save a 1D line plot or a 2D filled contour of a :class:`~.surface.Surface`.

    2D: log-spaced filled contours of the loss with the MLI segment θ0 → θT drawn when it lies in
    the plane, and the named points (init, final, third) marked. 1D: the loss along x, with θ0 and θT
    marked where they lie on the line.
    """
    plt = _plt()
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.0, 4.8) if surface.dims == 2 else (6.4, 4.0), dpi=120)
    marks = {"init": ("o", "C2", "θ0 (init)"), "final": ("*", "C3", "θT (final)"), "third": ("s", "C1", "θC (third)")}
    if surface.dims == 2:
        z = np.array([[np.nan if v is None else v for v in row] for row in surface.losses], dtype=float)
        finite = z[np.isfinite(z)]
        X, Y = np.meshgrid(np.array(surface.x), np.array(surface.y))
        if finite.size and finite.max() > finite.min():
            lo, hi = float(finite.min()), float(finite.max())
            if lo > 0 and hi / lo > 20:
                levels = np.geomspace(lo, hi, 30)
                from matplotlib.colors import LogNorm

                cs = ax.contourf(X, Y, z, levels=levels, norm=LogNorm(lo, hi), cmap="viridis")
            else:
                cs = ax.contourf(X, Y, z, levels=30, cmap="viridis")
            ax.contour(X, Y, z, levels=cs.levels[::3], colors="white", linewidths=0.4, alpha=0.6)
            cb = fig.colorbar(cs, ax=ax, label="mean training loss", format="%.3g")
            if lo > 0 and hi / lo > 20:
                cb.set_ticks(list(np.geomspace(lo, hi, 7)))
        else:
            ax.imshow(z, origin="lower", extent=(surface.x[0], surface.x[-1], surface.y[0], surface.y[-1]))
        if surface.mli_line is not None:
            (x0, y0), (x1, y1) = surface.mli_line
            ax.plot([x0, x1], [y0, y1], "-", color="white", lw=2.2)
            ax.plot([x0, x1], [y0, y1], "--", color="C3", lw=1.4, label="MLI line θ0 → θT")
        for name, (mk, col, lab) in marks.items():
            if name in surface.points:
                px, py = surface.points[name]
                ax.plot([px], [py], mk, color=col, ms=9, mec="white", label=lab)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_aspect("auto")
    else:
        vals = [math.nan if v is None else v for v in surface.losses]
        ax.plot(surface.x, vals, "-o", ms=2.5, lw=1.4, color="C0", label="loss")
        for name, (mk, col, lab) in marks.items():
            if name in surface.points and name != "third":
                px = surface.points[name][0]
                ax.axvline(px, color=col, lw=0.9, ls=":", label=lab)
        if surface.mli_line is not None:
            (x0,), (x1,) = surface.mli_line
            ax.axvspan(min(x0, x1), max(x0, x1), color="C3", alpha=0.08, label="MLI segment")
        ax.set_xlabel("x")
        ax.set_ylabel("mean training loss")
        ax.grid(alpha=0.3)
    ax.set_title(title or _title(surface), fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_slices(ts: Sequence[float], slices: Sequence[Sequence[float | None]], path: str, title: str | None = None,
                path_alphas: Sequence[float] | None = None, path_losses: Sequence[float] | None = None) -> None:
    """Save the random 1D slices of a roughness estimate (and the MLI curve beside them, if given)."""
    plt = _plt()
    two = path_losses is not None
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(10.0 if two else 6.4, 4.0), dpi=120, squeeze=False)
    ax = axes[0][0]
    for i, s in enumerate(slices):
        ax.plot(ts, [math.nan if v is None else v for v in s], lw=1.0, alpha=0.8, label=f"slice {i}" if i < 8 else None)
    ax.set_xlabel("t  (θ = c + t·d, d filter-normalised)")
    ax.set_ylabel("mean training loss")
    ax.grid(alpha=0.3)
    ax.set_title(title or "random 1D slices", fontsize=9)
    if len(slices) <= 8:
        ax.legend(fontsize=7)
    if two:
        ax2 = axes[0][1]
        ax2.plot(path_alphas, path_losses, "-o", ms=2.5, lw=1.4, color="C3")
        ax2.set_xlabel("α  (θ(α) = (1−α)θ0 + αθT)")
        ax2.set_title("loss along the MLI line", fontsize=9)
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _title(surface: Any) -> str:
    if surface.mode == "plane":
        if surface.dims == 2:
            beta = surface.points.get("third", (float("nan"),))[0]
            return f"loss on the plane through θ0 (0,0), θT (1,0), θC (β={beta:.3g}, 1)"
        return "loss on the line through θ0 (x=0) and θT (x=1)"
    c = "θT" if surface.center == "final" else "θ0"
    if surface.mode == "hessian":
        lams = ", ".join(f"λ{i + 1}={v:.3g}" for i, v in enumerate(surface.eigenvalues or ()))
        return f"loss about {c} along the top-{surface.dims} Hessian eigenvector{'s' if surface.dims == 2 else ''} ({lams})"
    n = "direction" if surface.dims == 1 else "directions"
    return f"loss about {c} along {surface.dims} filter-normalised random {n} (seed {surface.seed})"
