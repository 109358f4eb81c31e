"""The card's figures: byte-deterministic PNGs (Agg canvas, default style, fixed size and dpi, no metadata)."""

from __future__ import annotations

import io
import math
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hubkit.cards.model_card import RankingView




def ranking_plot(view: RankingView) -> bytes:
    """Each metric against layer, one panel per metric (they have different scales), with the selected
    and the best layer marked. Byte-identical across calls: Agg canvas, default style, fixed size and
    dpi, and no Software/date metadata."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = view.columns or []
    layers = [r.layer for r in view.rows]
    n = max(1, len(columns))
    height = 1.2 + 1.5 * n
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(7.0, height), dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
        for i, ax in enumerate(axes):
            if not columns:
                break
            ys = [r.values[i] if r.values[i] is not None else math.nan for r in view.rows]
            ax.plot(layers, ys, marker="o", markersize=3, linewidth=1.2, color="#1f77b4")
            ax.set_ylabel(columns[i])
            ax.grid(True, linewidth=0.4, alpha=0.5)
            if view.selected_layer is not None:
                ax.axvline(view.selected_layer, color="#d62728", linestyle="--", linewidth=1,
                           label=f"selected: {view.selected_layer}")
            row = view.best_row
            if row is not None and row.layer != view.selected_layer:
                ax.axvline(row.layer, color="#2ca02c", linestyle=":", linewidth=1.2)
            if row is not None and view.best_by and columns[i] == view.best_by[0] and row.values[i] is not None:
                ax.plot([row.layer], [row.values[i]], marker="*", markersize=12, color="#2ca02c",
                        linestyle="none", label=f"best by {', then '.join(view.best_by)}: {row.layer}")
            if i == 0:
                ax.legend(loc="best", fontsize=8, frameon=False)
        axes[-1].set_xlabel(f"layer ({view.convention} convention)")
        title = f"{view.direction}: " if view.direction else ""
        fig.suptitle(f"{title}ranking metrics by layer ({PurePosixPath(view.file).name})", fontsize=10)
        # fixed margins (in inches) instead of tight_layout, which costs a whole extra draw
        fig.subplots_adjust(left=0.12, right=0.97, top=1 - 0.55 / height, bottom=0.6 / height, hspace=0.15)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()




def weight_plot(weights: dict[str, list[float]], title: str) -> bytes:
    """The recipe's weight at each decoder block, one line per target (heretic's kernels, block maps)."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        fig = Figure(figsize=(6.0, 2.6), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for (target, ws), marker in zip(weights.items(), ("o", "s", "^", "v"), strict=False):
            ax.plot(range(len(ws)), ws, marker=marker, markersize=3, linewidth=1.2, label=target)
        ax.set_xlabel("decoder block (0-based)")
        ax.set_ylabel("weight")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
        fig.suptitle(title, fontsize=10)
        fig.subplots_adjust(left=0.1, right=0.97, top=0.85, bottom=0.2)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()
