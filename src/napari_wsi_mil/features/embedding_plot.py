"""The WeakSupCon paper's train/test figure of an embedding (matplotlib, no pyplot).

:func:`plot_embedding` draws an :class:`~napari_wsi_mil.features.embedding.EmbeddingTable`
to a PNG; :func:`draw_embedding` draws it into any matplotlib ``Figure`` (the napari
widget uses it with the viewer's theme colours). Patches are coloured by the label of
the bag (slide) they come from. Nothing here imports Qt or napari.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_wsi_mil.features.embedding import EmbeddingTable
from napari_wsi_mil.jobs import atomic_file

__all__ = [
    "BAG_COLORS",
    "HIGHLIGHT_COLOR",
    "EmbeddingPlot",
    "draw_embedding",
    "plot_embedding",
    "set_highlight",
]

#: Colours of negative (0) and positive (1) bags (Okabe-Ito blue and vermillion).
BAG_COLORS = {0: "#0072B2", 1: "#D55E00"}
BAG_NAMES = {0: "negative bags", 1: "positive bags"}
#: Colour of selected / highlighted patches, in the plot and on the slide.
HIGHLIGHT_COLOR = "#F0E442"
#: A panel with more points than this is drawn as a 2-D histogram per label.
HIST_THRESHOLD = 20_000


@dataclass
class EmbeddingPlot:
    """What :func:`draw_embedding` drew: one panel per split present."""

    axes: list
    splits: list[str]
    panel_rows: list[np.ndarray]  # table rows shown in each panel
    modes: list[str]  # "scatter" or "hist" per panel
    highlight_artists: list = field(default_factory=list)


def _panel_splits(table: EmbeddingTable) -> list[str]:
    present = set(table.split.tolist())
    splits = [s for s in ("train", "val", "test") if s in present]
    return splits or ["train"]


def _marker_size(n: int) -> float:
    return float(np.clip(3000.0 / max(n, 1), 1.0, 16.0))


def _hist_image(xy, labels, extent, bins: int) -> np.ndarray:
    """RGBA image: each bin's colour mixes the bag colours by count, alpha ~ log density."""
    from matplotlib.colors import to_rgb

    (x0, x1), (y0, y1) = extent
    counts = []
    for label in (0, 1):
        sel = labels == label
        h, _, _ = np.histogram2d(
            xy[sel, 1], xy[sel, 0], bins=bins, range=[[y0, y1], [x0, x1]]
        )  # rows = y
        counts.append(h)
    total = counts[0] + counts[1]
    rgb = sum(
        np.asarray(to_rgb(BAG_COLORS[k]))[None, None, :] * counts[k][..., None] for k in (0, 1)
    )
    rgb = rgb / np.maximum(total, 1)[..., None]
    alpha = np.log1p(total) / max(np.log1p(total.max()), 1e-9)
    alpha = np.where(total > 0, 0.25 + 0.75 * alpha, 0.0)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def draw_embedding(
    figure,
    table: EmbeddingTable,
    *,
    title: str | None = None,
    hist_threshold: int = HIST_THRESHOLD,
    bins: int = 150,
    background: str | None = None,
    foreground: str | None = None,
    highlight: Sequence[int] | None = None,
    seed: int = 0,
) -> EmbeddingPlot:
    """Draw train / (val /) test panels side by side into ``figure`` (cleared first).

    Points are coloured by bag label; a panel with more than ``hist_threshold``
    points is drawn as a 2-D histogram per label instead (colour mixed by count,
    opacity by log density). ``background`` / ``foreground`` colour the figure and
    its text (the widget passes napari's theme); ``highlight`` rows are drawn on
    top, larger and in :data:`HIGHLIGHT_COLOR`. All panels share their axes.
    """
    figure.clear()
    splits = _panel_splits(table)
    axes = figure.subplots(1, len(splits), sharex=True, sharey=True, squeeze=False)[0]
    bg = background or "white"
    fg = foreground or "black"
    figure.set_facecolor(bg)
    extent = _extent(table)
    xlabel, ylabel = _axis_labels(table)

    rng = np.random.default_rng(seed)
    panel_rows, modes = [], []
    for k, (ax, split) in enumerate(zip(axes, splits, strict=True)):
        rows = np.flatnonzero(table.split == split)
        rows = rows[rng.permutation(len(rows))]  # neither label hides the other
        panel_rows.append(rows)
        hist = len(rows) > hist_threshold
        modes.append("hist" if hist else "scatter")
        ax.set_facecolor(bg)
        _draw_points(ax, table, rows, extent, bins, hist)
        ax.set_xlim(*extent[0])
        ax.set_ylim(*extent[1])
        n_slides = len(set(table.slide_id[rows].tolist()))
        density = "; 2-D histogram" if hist else ""
        ax.set_title(f"{split} ({len(rows)} patches, {n_slides} slides{density})", color=fg)
        ax.set_xlabel(xlabel, color=fg)
        if k == 0:
            ax.set_ylabel(ylabel, color=fg)
        ax.tick_params(colors=fg)
        for spine in ax.spines.values():
            spine.set_color(fg)
    _draw_legend(axes[0], table, bg, fg)
    if title:
        figure.suptitle(title, color=fg)
    plot = EmbeddingPlot(list(axes), splits, panel_rows, modes)
    plot.highlight_artists = [
        ax.scatter(
            [],
            [],
            s=max(3 * _marker_size(len(rows)), 12),
            c=HIGHLIGHT_COLOR,
            edgecolors=fg,
            linewidths=0.6,
            zorder=5,
        )
        for ax, rows in zip(plot.axes, panel_rows, strict=True)
    ]
    set_highlight(plot, table, highlight)
    return plot


def _extent(table: EmbeddingTable) -> tuple[tuple[float, float], tuple[float, float]]:
    """``((x0, x1), (y0, y1))``: every point, 5 % padding (a unit square when empty)."""
    if len(table):
        lo, hi = table.xy.min(axis=0), table.xy.max(axis=0)
    else:
        lo, hi = np.zeros(2, np.float32), np.ones(2, np.float32)
    pad = np.maximum((hi - lo) * 0.05, 1e-3)
    lo, hi = lo - pad, hi + pad
    return ((float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1])))


def _axis_labels(table: EmbeddingTable) -> tuple[str, str]:
    """``PC 1 (x % var.)``, ``PC 2 (...)`` for PCA; ``UMAP1``, ``UMAP2`` for UMAP."""
    a_name, b_name = table.axis_names
    evr = table.attrs.get("explained_variance_ratio")
    xlabel = "PC 1" if table.method == "pca" else a_name.upper()
    ylabel = "PC 2" if table.method == "pca" else b_name.upper()
    if evr:
        xlabel += f" ({100 * evr[0]:.1f} % var.)"
        ylabel += f" ({100 * evr[1]:.1f} % var.)"
    return xlabel, ylabel


def _draw_points(ax, table: EmbeddingTable, rows, extent, bins: int, hist: bool) -> None:
    """One panel's patches: a scatter coloured by bag label, or the 2-D histogram."""
    if hist:
        image = _hist_image(table.xy[rows], table.bag_label[rows], extent, bins)
        ax.imshow(
            image,
            origin="lower",
            extent=(*extent[0], *extent[1]),
            aspect="auto",
            interpolation="nearest",
        )
    else:
        colors = np.where(table.bag_label[rows] == 1, BAG_COLORS[1], BAG_COLORS[0])
        ax.scatter(
            table.xy[rows, 0],
            table.xy[rows, 1],
            s=_marker_size(len(rows)),
            c=colors,
            alpha=0.6,
            linewidths=0,
            rasterized=True,
        )


def _draw_legend(ax, table: EmbeddingTable, bg: str, fg: str) -> None:
    """The bag colours with each label's patch count."""
    from matplotlib.patches import Patch

    handles = [
        Patch(
            color=BAG_COLORS[label],
            label=f"{BAG_NAMES[label]} ({int((table.bag_label == label).sum())})",
        )
        for label in (0, 1)
    ]
    legend = ax.legend(handles=handles, loc="best", fontsize="small", framealpha=0.6)
    legend.get_frame().set_facecolor(bg)
    for text in legend.get_texts():
        text.set_color(fg)


def set_highlight(plot: EmbeddingPlot, table: EmbeddingTable, rows: Sequence[int] | None) -> None:
    """Show ``rows`` of ``table`` highlighted in every panel (None or empty: none)."""
    rows = np.zeros(0, np.int64) if rows is None else np.asarray(rows, np.int64)
    for artist, split in zip(plot.highlight_artists, plot.splits, strict=True):
        mine = rows[table.split[rows] == split] if len(rows) else rows
        artist.set_offsets(table.xy[mine] if len(mine) else np.zeros((0, 2)))


def plot_embedding(
    table: EmbeddingTable,
    out_png: str | os.PathLike,
    *,
    title: str | None = None,
    hist_threshold: int = HIST_THRESHOLD,
    dpi: int = 150,
) -> Path:
    """Save the train / test figure of ``table`` as a PNG (written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_png)
    n_panels = len(_panel_splits(table))
    figure = Figure(figsize=(4.5 * n_panels + 0.5, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    if title is None:
        name = table.attrs.get("feature_name")
        title = f"{table.method.upper()} of patch features" + (f" '{name}'" if name else "")
    draw_embedding(figure, table, title=title, hist_threshold=hist_threshold)
    with atomic_file(out) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, facecolor=figure.get_facecolor())
    return out
