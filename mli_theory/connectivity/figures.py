"""Figures of barriers (matplotlib, imported lazily with the Agg backend)."""

from __future__ import annotations

from .barrier import BarrierResult

__all__ = ["plot_barrier"]


def plot_barrier(result: BarrierResult, path: str, title: str | None = None) -> None:
    """Save the loss curve (and the error curve for ``ce``) along A → B with the barriers marked.

    Loss panel: L(α) on the grid (line) and every refinement point (dots); the chord
    (1−α)L(0) + αL(1) (dashed); the mean ½(L(0)+L(1)) (dotted); ``loss_chord`` drawn as a vertical
    segment from the chord to L at its α, ``loss_mean`` as a segment from the mean, and
    ``signed_taxonomy`` as a marker at α*. With ``align="weights"`` the unaligned curve is drawn
    in grey. Error panel (ce): E(α) with ``error_mean`` marked the same way.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = 2 if result.errors is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    a, L = list(result.alphas), list(result.losses)
    l0, l1 = L[0], L[-1]
    if result.before_alignment is not None:
        ax.plot(result.before_alignment.alphas, result.before_alignment.losses, color="0.6", lw=1.2, label="before alignment")
    ax.plot(a, L, color="C0", lw=1.6, label="L(α)" + (" after alignment" if result.before_alignment is not None else ""))
    ax.plot([s[0] for s in result.samples], [s[1] for s in result.samples], ".", color="C0", ms=3)
    ax.plot([0, 1], [l0, l1], "--", color="k", lw=1, label="chord")
    ax.axhline(0.5 * (l0 + l1), ls=":", color="k", lw=1, label="mean of ends")
    b = result.barriers
    if b["loss_chord"].alpha is not None:
        x = b["loss_chord"].alpha
        base = (1 - x) * l0 + x * l1
        ax.plot([x, x], [base, base + b["loss_chord"].value], color="C3", lw=2, label=f"loss_chord {b['loss_chord'].value:.4g}")
    if b["loss_mean"].alpha is not None:
        x = b["loss_mean"].alpha
        base = 0.5 * (l0 + l1)
        ax.plot([x, x], [base, base + b["loss_mean"].value], color="C1", lw=2, alpha=0.7, label=f"loss_mean {b['loss_mean'].value:.4g}")
    if b["signed_taxonomy"].alpha is not None:
        x = b["signed_taxonomy"].alpha
        ax.plot([x], [0.5 * (l0 + l1) - b["signed_taxonomy"].value], "D", color="C2", ms=6,
                label=f"signed_taxonomy {b['signed_taxonomy'].value:.4g}")
    ax.set_xlabel("α  (θ = (1−α)·A + α·B)")
    ax.set_ylabel(f"training loss ({result.loss})")
    ax.legend(fontsize=8)
    if result.errors is not None:
        ax2 = axes[0][1]
        E = list(result.errors)
        if result.before_alignment is not None and result.before_alignment.errors is not None:
            ax2.plot(result.before_alignment.alphas, result.before_alignment.errors, color="0.6", lw=1.2, label="before alignment")
        ax2.plot(a, E, color="C0", lw=1.6, label="E(α)")
        ax2.axhline(0.5 * (E[0] + E[-1]), ls=":", color="k", lw=1, label="mean of ends")
        em = b["error_mean"]
        if em.alpha is not None and em.value is not None:
            base = 0.5 * (E[0] + E[-1])
            ax2.plot([em.alpha, em.alpha], [base, base + em.value], color="C3", lw=2, label=f"error_mean {em.value:.4g}")
        ax2.set_xlabel("α")
        ax2.set_ylabel("error (1 − accuracy)")
        ax2.legend(fontsize=8)
    setting = (f"bn={result.bn}, " if result.bn else "") + f"align={result.align}"
    fig.suptitle(title or f"barrier A → B ({setting})")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
