"""The patches a gallery shows: the ``k`` most and least attended, as small RGB images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_wsi_mil.review.heatmap import top_patches
from napari_wsi_mil.slide import open_slide

if TYPE_CHECKING:
    from napari_wsi_mil.slide.slide import Slide
    from napari_wsi_mil.slide.tiling import TileGrid


@dataclass
class Gallery:
    """Patch indices (TileGrid order) with their scores and thumbnails, best first / worst
    first."""

    top: np.ndarray
    bottom: np.ndarray
    top_images: list[np.ndarray]
    bottom_images: list[np.ndarray]
    scores: np.ndarray  # (N,) the scores that were ranked


def patch_thumbnails(
    slide: Slide, grid: TileGrid, indices: np.ndarray, size: int = 96
) -> list[np.ndarray]:
    """``(size, size, 3)`` uint8 images of the patches ``indices`` of an open slide."""
    from PIL import Image

    from napari_wsi_mil.store.patches import read_patch

    out = []
    for i in np.asarray(indices).tolist():
        patch = read_patch(slide, grid, int(i))
        if patch.shape[0] != size:
            patch = np.asarray(
                Image.fromarray(patch).resize((size, size), Image.Resampling.BILINEAR)
            )
        out.append(np.ascontiguousarray(patch))
    return out


def build_gallery(
    slide_path: str | os.PathLike, grid: TileGrid, scores: np.ndarray, k: int = 8, size: int = 96
) -> Gallery:
    """Rank ``scores`` (e.g. attention), read the ``k`` highest and lowest patches."""

    top, bottom = top_patches(scores, k)
    with open_slide(slide_path) as slide:
        return Gallery(
            top,
            bottom,
            patch_thumbnails(slide, grid, top, size),
            patch_thumbnails(slide, grid, bottom, size),
            np.asarray(scores),
        )


def patch_centre_level0(grid: TileGrid, index: int) -> tuple[float, float]:
    """Level-0 continuous ``(x, y)`` of the centre of patch ``index``."""
    x, y = grid.coords[int(index)]
    half = grid.geometry.patch_size_level0 / 2
    return float(x) + half, float(y) + half
