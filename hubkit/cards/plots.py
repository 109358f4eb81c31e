"""The card's figures: byte-deterministic PNGs (Agg canvas, default style, fixed size and dpi, no metadata)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from hubkit.run.geometry import CompareGeometry, SetGeometry




def ranking_plot(view: Any) -> bytes:  # a cards.model_card.RankingView
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


# --------------------------------------------------------------------------- vector-set geometry

DPI = 100
PANEL_IN = 3.0  # each heatmap is a square this wide
GAP_IN = 0.15
TITLE_IN = 0.5  # figure title
PANEL_TITLE_IN = 0.42  # two-line panel title
MAX_COLS = 3


def _heatmaps(title: str, members: list[str], panels: Sequence[tuple[str, np.ndarray]], vmin: float,
            vmax: float, cmap: str, cbar_label: str) -> bytes:
    """One square heatmap per (title, matrix), member names on both axes, a shared colour bar.

    Axes are placed in inches (no tight_layout, no aspect-driven shrinking), so the layout depends only on the
    number of panels and the longest member name.
    """
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(panels)
    cols = min(MAX_COLS, n)
    rows = math.ceil(n / cols)
    fontsize = 7 if len(members) <= 16 else 5
    label_in = 0.3 + fontsize / 72 * 0.62 * max((len(m) for m in members), default=1)
    row_in = PANEL_TITLE_IN + PANEL_IN + label_in
    width = label_in + cols * PANEL_IN + (cols - 1) * GAP_IN + 1.1
    height = TITLE_IN + rows * row_in
    ticks = list(range(len(members)))
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(width, height), dpi=DPI)
        FigureCanvasAgg(fig)
        image = None
        for k, (name, matrix) in enumerate(panels):
            r, c = divmod(k, cols)
            x = label_in + c * (PANEL_IN + GAP_IN)
            y = height - TITLE_IN - r * row_in - PANEL_TITLE_IN - PANEL_IN
            ax = fig.add_axes((x / width, y / height, PANEL_IN / width, PANEL_IN / height))
            image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", aspect="auto")
            ax.set_title(name, fontsize=8)
            ax.set_xticks(ticks)
            ax.set_yticks(ticks)
            ax.set_xticklabels(members, rotation=90, fontsize=fontsize)
            ax.set_yticklabels(members if c == 0 else [], fontsize=fontsize)
            ax.tick_params(length=2)
        if image is not None:
            bottom = height - TITLE_IN - (rows - 1) * row_in - PANEL_TITLE_IN - PANEL_IN
            top = height - TITLE_IN - PANEL_TITLE_IN
            x = label_in + cols * PANEL_IN + (cols - 1) * GAP_IN + 0.25
            cax = fig.add_axes((x / width, bottom / height, 0.15 / width, (top - bottom) / height))
            bar = fig.colorbar(image, cax=cax)
            bar.set_label(cbar_label, fontsize=8)
            bar.ax.tick_params(labelsize=7)
        fig.text(0.5, 1 - 0.2 / height, title, ha="center", va="center", fontsize=10)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def set_heatmap(geom: SetGeometry) -> bytes:
    """Cosine between members, one panel per layer, fixed scale [-1, 1] so sets and layers compare by eye."""
    panels = [(f"layer {g.layer}: mean off-diag {g.mean_offdiag:.3f}\n"
               f"{g.interval.confidence:.0%} CI [{g.interval.lo:.3f}, {g.interval.hi:.3f}]", g.cosine)
              for g in geom.layers]
    title = f"{geom.name}: cosine between members ({geom.layer_convention} layers)"
    return _heatmaps(title, geom.members, panels, -1.0, 1.0, "RdBu_r", "cosine")


def delta_heatmap(cmp: CompareGeometry) -> bytes:
    """cos(after) - cos(before) per member pair, one panel per layer, on one symmetric scale for all layers.

    The scale is the largest |Δ| rounded up to 0.05 (at least 0.05), so a small change is not blown up to
    full colour and zero is always white.
    """
    peak = max((float(abs(g.delta).max()) for g in cmp.layers), default=0.0)
    lim = max(0.05, math.ceil(peak / 0.05 - 1e-9) * 0.05)
    panels = []
    for g in cmp.layers:
        iv = g.change_interval
        panels.append((f"layer {g.layer}: Δ mean off-diag {g.change:+.3f}\n"
                       f"{iv.confidence:.0%} CI [{iv.lo:+.3f}, {iv.hi:+.3f}]", g.delta))
    title = f"{cmp.after} − {cmp.before}: change in cosine between members ({cmp.layer_convention} layers)"
    return _heatmaps(title, cmp.members, panels, -lim, lim, "RdBu_r", "Δ cosine")
