"""Plots of the loss along the interpolation path (matplotlib, headless)."""

from __future__ import annotations

from .results import CheckResult

# image formats the plots are written in (by the file name's extension)
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def plot_curve(result: CheckResult, path: str, title: str | None = None) -> None:
    """Save the loss curve with the worst grid rise (and a certified witness) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(result.alphas, result.losses, "-o", ms=2.5, lw=1.4, color="C0", label=f"training loss ({result.loss})")
    if result.rise_where is not None and result.max_rise > result.tolerance:
        a, b = result.rise_where
        la = result.losses[result.alphas.index(a)]
        lb = result.losses[result.alphas.index(b)]
        ax.plot([a, b], [la, lb], "o--", color="C3", lw=1.2, label=f"worst grid rise Δ={result.max_rise:.3g}")
    cert = result.certificate
    if cert.status == "non_monotone" and cert.where is not None:
        for x in cert.where:
            ax.axvline(x, color="C1", lw=0.8, ls=":")
        ax.plot([], [], color="C1", ls=":", label=f"certified witness, rise {cert.rise:.3g}")
    ax.set_xlabel("α  (θ(α) = (1−α)θ0 + αθT)")
    ax.set_ylabel("mean training loss")
    verdict = "monotone on grid" if result.monotone_on_grid else "NOT monotone on grid"
    ax.set_title(title or f"{verdict}; certificate: {cert.status}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
