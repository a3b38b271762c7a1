"""Figure of the curvature along the path (matplotlib with the headless Agg backend, imported lazily)."""

from __future__ import annotations

from .along import PathCurvature


def plot_curvature(result: PathCurvature, path: str, title: str | None = None) -> None:
    """Save the eigenvalues, the smallest eigenvalue and the trace (with its interval) against α on
    one axis, Δθᵀ H(α) Δθ on a twin axis of its own (right; a different quantity and scale: it
    grows with ‖Δθ‖²), and the spectral densities (log scale, five decades) in a second panel when
    computed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result.points
    has_density = any(p.density is not None for p in pts)
    fig, axes = plt.subplots(1, 2 if has_density else 1, figsize=(11.0 if has_density else 6.4, 4.0), dpi=120, squeeze=False)
    ax = axes[0, 0]
    a = list(result.alphas)
    style = "-o" if len(a) > 1 else "o"
    for j in range(result.top_k):
        vals = [p.spectrum.eigenvalues[j] if len(p.spectrum.eigenvalues) > j else float("nan") for p in pts]
        ax.plot(a, vals, style, ms=3, lw=1.2, color="C0", alpha=1.0 if j == 0 else 0.5,
                label=f"{result.which} eigenvalues (k={result.top_k})" if j == 0 else None)
    if any(p.smallest is not None for p in pts):
        ax.plot(a, [p.smallest.eigenvalues[0] if p.smallest and p.smallest.eigenvalues else float("nan") for p in pts],
                style, ms=3, lw=1.2, color="C3", label="smallest eigenvalue λ_min")
    if any(p.trace is not None for p in pts):
        tr = [p.trace.value if p.trace else float("nan") for p in pts]
        ax.errorbar(a, tr, yerr=[p.trace.half_width if p.trace else 0.0 for p in pts], fmt=style.replace("o", "^"),
                    ms=3, lw=1.0, color="C1", capsize=2, label="trace (Hutch++, CI)")
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xlabel("α  (θ(α) = (1−α)θ0 + αθT)")
    ax.set_ylabel("Hessian eigenvalues / trace")
    ax.set_title(title or f"Hessian along the path ({result.n_parameters} parameters)", fontsize=10)
    ax.grid(alpha=0.3)
    twin = ax.twinx()  # Δθᵀ H Δθ is not an eigenvalue: its own axis, its own colour
    twin.plot(a, [p.directional_curvature for p in pts], style.replace("o", "s"), ms=3, lw=1.2, color="C2",
              label="Δθᵀ H(α) Δθ  (= L″(α), right axis)")
    twin.set_ylabel("Δθᵀ H(α) Δθ", color="C2")
    twin.tick_params(axis="y", colors="C2")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7)
    if has_density:
        ax2 = axes[0, 1]
        cmap = plt.get_cmap("viridis")
        for i, p in enumerate(pts):
            if p.density is None:
                continue
            c = cmap(i / max(1, len(pts) - 1))
            ax2.plot(p.density.grid, p.density.values, lw=1.0, color=c, label=f"α={p.alpha:.3g}")
        top = max(max(p.density.values) for p in pts if p.density is not None)
        ax2.set_yscale("log")
        ax2.set_ylim(1e-5 * top, 2 * top)
        ax2.set_xlabel("eigenvalue")
        ax2.set_ylabel("spectral density (SLQ, integrates to 1)")
        ax2.set_title("Hessian spectral density", fontsize=10)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
