"""Tile labels from region annotations: which patches of a TileGrid are tumour.

Used for mixed supervision (MS-CLAM), instance-level evaluation and for checking that
encoders separate lesion from normal patches. A patch is positive when the polygons
(level-0 ``x, y``) cover at least ``min_coverage`` of it (MS-CLAM's Camelyon16 setting
is 20%). Coverage is measured on a regular ``samples x samples`` lattice of points
inside each patch.
"""

from __future__ import annotations

import numpy as np

from napari_wsi_mil.slide.tiling import TileGrid

DEFAULT_MIN_COVERAGE = 0.2


def patch_coverage(grid: TileGrid, polygons: list[np.ndarray], samples: int = 8) -> np.ndarray:
    """Fraction of each patch's area inside any polygon, ``(N,)`` float32 in [0, 1]."""
    from matplotlib.path import Path

    n = len(grid)
    if n == 0 or not polygons:
        return np.zeros(n, np.float32)
    size = grid.geometry.patch_size_level0
    offsets = (np.arange(samples) + 0.5) * size / samples
    ox, oy = np.meshgrid(offsets, offsets)
    lattice = np.stack([ox.ravel(), oy.ravel()], axis=1)  # (S*S, 2)
    points = (grid.coords[:, None, :] + lattice[None]).reshape(-1, 2)
    inside = np.zeros(len(points), bool)
    for polygon in polygons:
        ring = np.asarray(polygon, np.float64)
        lo, hi = ring.min(axis=0), ring.max(axis=0)
        near = np.flatnonzero(((points >= lo) & (points <= hi)).all(axis=1) & ~inside)
        if len(near):
            inside[near] = Path(ring).contains_points(points[near])
    return inside.reshape(n, -1).mean(axis=1).astype(np.float32)


def tile_labels_from_polygons(
    grid: TileGrid, polygons: list[np.ndarray], min_coverage: float = DEFAULT_MIN_COVERAGE
) -> np.ndarray:
    """``(N,)`` int8: 1 where polygons cover at least ``min_coverage`` of the patch, else 0."""
    return (patch_coverage(grid, polygons) >= min_coverage).astype(np.int8)
