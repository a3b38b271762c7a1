"""Figure of the kernel along the path: distance from the start, velocity and λmin against α."""

from __future__ import annotations

from .along import KernelPath


def plot_kernel_path(result: KernelPath, path: str, title: str | None = None) -> None:
    """Save three panels: S(K(0), K(α)), dS/dα and μ(α) = λmin(K(α)) against α (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = list(result.alphas)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), constrained_layout=True)
    try:
        axes[0].plot(a, result.kernel_distance_from_init, "o-", ms=3)
        axes[0].set_ylabel("S(K(0), K(α))")
        axes[0].set_title("kernel distance from init")
        axes[1].plot(a, result.kernel_velocity, "o-", ms=3, color="tab:orange")
        axes[1].axhline(0.0, color="0.7", lw=0.8)
        axes[1].set_ylabel("dS/dα")
        axes[1].set_title("kernel velocity")
        lam = [float("nan") if v is None else v for v in result.pl_lambda_min]
        axes[2].plot(a, lam, "o-", ms=3, color="tab:green")
        if all(v > 0 for v in lam if v == v):
            axes[2].set_yscale("log")
        axes[2].set_ylabel("λmin(K(α))")
        axes[2].set_title("PL* constant μ(α)")
        for ax in axes:
            ax.set_xlabel("α")
            ax.grid(alpha=0.3)
        fig.suptitle(title or f"empirical NTK ({result.kernel}, n = {result.n_examples}) along θ(α)")
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
