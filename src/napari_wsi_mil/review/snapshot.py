"""A PNG snapshot of a slide with its heatmap, predicted mask outline and a legend.

Rendered with matplotlib's Agg canvas (no pyplot, no viewer, no display): the slide's
thumbnail, the patch-grid heatmap drawn over the same level-0 extent (so it lines up
exactly: the raster covers ``cols * step`` by ``rows * step`` level-0 pixels from the
origin), the mask outline from the exact tile-edge polygons, a colour bar and the
slide's probability and predicted class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_wsi_mil.jobs import atomic_file
from napari_wsi_mil.review.export import mask_polygons
from napari_wsi_mil.review.heatmap import contrast_limits, heatmap_raster, normalise

if TYPE_CHECKING:
    from napari_wsi_mil.slide.slide import Slide
    from napari_wsi_mil.slide.tiling import TileGrid


def render_snapshot(
    thumbnail: np.ndarray,
    slide_size: tuple[int, int],
    grid: TileGrid,
    values: np.ndarray,
    *,
    mode: str = "rank",
    mask: np.ndarray | None = None,
    title: str = "",
    label: str = "attention",
    cmap: str = "turbo",
    alpha: float = 0.55,
    width_px: int = 1400,
):
    """A matplotlib ``Figure`` (Agg) of the thumbnail with the heatmap of ``values``.

    ``thumbnail`` is RGB covering the level-0 ``slide_size = (width, height)``;
    ``values`` per patch are normalised with ``mode``; ``mask`` (per patch, nonzero =
    predicted tumour) is outlined.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    width, height = slide_size
    shown = normalise(values, mode)
    raster = heatmap_raster(grid, shown)
    step = grid.geometry.stride_level0
    rows, cols = raster.shape
    aspect = height / max(width, 1)
    dpi = 100
    fig = Figure(figsize=(width_px / dpi, width_px / dpi * aspect * 0.82 + 0.6), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, 0.04, 0.84, 0.88))
    ax.imshow(thumbnail, extent=(0, width, height, 0), interpolation="lanczos")
    lo, hi = contrast_limits(shown, mode)
    image = ax.imshow(
        np.ma.masked_invalid(raster),
        extent=(0, cols * step, rows * step, 0),
        cmap=cmap,
        vmin=lo,
        vmax=hi,
        alpha=alpha,
        interpolation="nearest",
    )
    handles = []
    if mask is not None and np.any(mask):
        for polygon in mask_polygons(grid, mask):
            for ring in polygon:
                closed = np.vstack([ring, ring[:1]])
                ax.plot(closed[:, 0], closed[:, 1], color="#ff00ff", linewidth=1.4)
        handles.append(Line2D([], [], color="#ff00ff", linewidth=1.4, label="predicted tumour"))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=9, framealpha=0.8)
    if title:
        fig.suptitle(title, fontsize=12, y=0.98)
    cax = fig.add_axes((0.87, 0.15, 0.025, 0.66))
    bar = fig.colorbar(image, cax=cax)
    bar.solids.set_alpha(1.0)
    names = {"rank": "percentile rank", "minmax": "min-max", "raw": "raw"}
    bar.set_label(f"{label} ({names.get(mode, mode)})")
    return fig


def write_snapshot_png(
    path: str | os.PathLike,
    slide: Slide,
    grid: TileGrid,
    values: np.ndarray,
    *,
    thumbnail_size: int = 2048,
    **options,
) -> Path:
    """Render :func:`render_snapshot` from an open ``Slide`` and save it as PNG."""
    thumbnail = slide.thumbnail(thumbnail_size)
    fig = render_snapshot(thumbnail, slide.dimensions, grid, values, **options)
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", facecolor="white")
    return path
