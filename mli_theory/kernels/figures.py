"""Figure of the kernel along the path: distance from the start, velocity and λmin against α."""

from __future__ import annotations

from typing import Any

from .along import KernelPath


def plot_kernel_path(result: KernelPath, path: str, title: str | None = None, checkpoints: Any = None) -> None:
    """Save three panels: S(K(0), K(α)), dS/dα and μ(α) = λmin(K(α)) against α (matplotlib, Agg).

    With ``checkpoints`` (a :class:`~mli_theory.kernels.CheckpointKernels`), a second row shows the
    same three quantities between training checkpoints against the optimisation step:
    S(K_first, K_t), the kernel velocity per step and λmin(K_t)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = list(result.alphas)
    rows = 2 if checkpoints is not None else 1
    fig, grid = plt.subplots(rows, 3, figsize=(12, 3.4 * rows), constrained_layout=True, squeeze=False)
    axes = grid[0]
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
        if checkpoints is not None:
            _checkpoint_row(grid[1], checkpoints)
        fig.suptitle(title or f"empirical NTK ({result.kernel}, n = {result.n_examples}) along θ(α)")
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def _checkpoint_row(axes: Any, ck: Any) -> None:
    """The checkpoint panels: distance from the first checkpoint, velocity per step, λmin, against step."""
    steps = list(ck.steps)
    nan = float("nan")
    axes[0].plot(steps, [nan if v is None else v for v in ck.distance_from_first], "o-", ms=3)
    axes[0].set_ylabel("S(K(first), K(t))")
    axes[0].set_title("checkpoints: kernel distance from the first")
    mids = [(a + b) / 2 for a, b in zip(steps[:-1], steps[1:])]
    axes[1].plot(mids, [nan if v is None else v for v in ck.velocity], "o-", ms=3, color="tab:orange")
    axes[1].set_ylabel("S(K(t−1), K(t)) / Δt")
    axes[1].set_title("checkpoints: kernel velocity per step")
    lam = [nan if v is None else v for v in ck.pl_lambda_min]
    axes[2].plot(steps, lam, "o-", ms=3, color="tab:green")
    if any(v == v for v in lam) and all(v > 0 for v in lam if v == v):
        axes[2].set_yscale("log")
    axes[2].set_ylabel("λmin(K(t))")
    axes[2].set_title("checkpoints: PL* constant")
    for ax in axes:
        ax.set_xlabel("optimisation step")
        ax.grid(alpha=0.3)
