"""Painted or drawn annotations to tile labels for mixed supervision (MS-CLAM, evaluation).

Two sources, combined by :func:`combine_tile_labels`:

- a painted raster of any resolution covering the whole slide (a napari Labels
  layer): 1 tumour, 2 normal, 0 unpainted;
- polygons in level-0 ``(x, y)`` (napari Shapes, after :func:`world_to_level0`),
  tumour and normal, which go through the same
  :func:`~napari_wsi_mil.store.tile_labels.tile_labels_from_polygons` /
  :func:`~napari_wsi_mil.store.tile_labels.patch_coverage` path as GeoJSON import.

A patch is tumour (1) when tumour covers at least ``min_coverage`` of it (MS-CLAM's
rule, shared with GeoJSON import); otherwise normal (0) when normal covers at least
``normal_coverage`` of it (default one half: a mostly unpainted patch is not known to
be normal); otherwise unknown (-1). Labels are written to the store as
``tile_labels/<slide_id>`` (array ``labels``), the first source
:func:`~napari_wsi_mil.mil.bags.slide_tile_labels` reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari_wsi_mil.errors import StoreError
from napari_wsi_mil.store.keys import TILE_LABELS
from napari_wsi_mil.store.tile_labels import DEFAULT_MIN_COVERAGE, patch_coverage

if TYPE_CHECKING:
    from napari_wsi_mil.slide.tiling import TileGrid
    from napari_wsi_mil.store.project import ProjectStore

#: Painted label values.
PAINT_TUMOUR, PAINT_NORMAL = 1, 2
DEFAULT_NORMAL_COVERAGE = 0.5


def _rule(tumour: np.ndarray, normal: np.ndarray, min_coverage, normal_coverage) -> np.ndarray:
    labels = np.full(len(tumour), -1, np.int8)
    labels[normal >= normal_coverage] = 0
    labels[tumour >= min_coverage] = 1
    return labels


def painted_coverage(
    grid: TileGrid,
    painted: np.ndarray,
    level0_per_pixel: tuple[float, float],
    origin: tuple[float, float] = (0.0, 0.0),
    samples: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Fractions ``(tumour, normal)`` of each patch painted 1 and 2, ``(N,)`` each.

    Raster pixel ``(r, c)`` of ``painted`` covers level-0
    ``[oy + r*fy, oy + (r+1)*fy) x [ox + c*fx, ox + (c+1)*fx)`` with
    ``(fy, fx) = level0_per_pixel`` and ``(oy, ox) = origin`` (0 for rasters placed with
    :func:`~napari_wsi_mil._napari.layers.raster_transform`; see :func:`raster_placement`
    for any layer). Coverage is measured on a ``samples x samples`` lattice of points in
    each patch (as :func:`~napari_wsi_mil.store.tile_labels.patch_coverage`), so the
    cost is ``N * samples**2`` whatever the raster's resolution; points off the raster
    count as unpainted.
    """
    painted = np.asarray(painted)
    if painted.ndim != 2:
        raise ValueError(f"a painted label raster must be 2-D, got shape {painted.shape}")
    n = len(grid)
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    (fy, fx), (oy, ox) = level0_per_pixel, origin
    size = grid.geometry.patch_size_level0
    offsets = (np.arange(samples) + 0.5) * size / samples
    cols = np.floor((grid.coords[:, :1] + offsets[None] - ox) / fx).astype(np.int64)
    rows = np.floor((grid.coords[:, 1:] + offsets[None] - oy) / fy).astype(np.int64)
    col_ok = (cols >= 0) & (cols < painted.shape[1])
    row_ok = (rows >= 0) & (rows < painted.shape[0])
    values = painted[
        np.clip(rows, 0, painted.shape[0] - 1)[:, :, None],
        np.clip(cols, 0, painted.shape[1] - 1)[:, None, :],
    ]  # (N, S, S)
    values = np.where(row_ok[:, :, None] & col_ok[:, None, :], values, 0)
    tumour = (values == PAINT_TUMOUR).mean(axis=(1, 2)).astype(np.float32)
    normal = (values == PAINT_NORMAL).mean(axis=(1, 2)).astype(np.float32)
    return tumour, normal


def raster_placement(
    layer_scale: tuple[float, float],
    layer_translate: tuple[float, float],
    slide_scale: tuple[float, float],
    slide_translate: tuple[float, float] = (0.0, 0.0),
) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(level0_per_pixel, origin)`` of a 2-D raster layer drawn over the slide layer.

    napari puts data index ``i`` at world ``translate + i * scale`` (the pixel's
    centre), so raster pixel ``i`` starts at level-0 ``o + i * f`` with
    ``f = layer_scale / slide_scale`` and ``o = (layer_translate - slide_translate -
    layer_scale / 2) / slide_scale + 1/2``.
    """
    f = tuple(float(a) / float(s) for a, s in zip(layer_scale[-2:], slide_scale, strict=True))
    o = tuple(
        (float(t) - float(st) - float(a) / 2) / float(s) + 0.5
        for t, st, a, s in zip(
            layer_translate[-2:], slide_translate, layer_scale[-2:], slide_scale, strict=True
        )
    )
    return f, o


def tile_labels_from_painted(
    grid: TileGrid,
    painted: np.ndarray,
    level0_per_pixel: tuple[float, float],
    origin: tuple[float, float] = (0.0, 0.0),
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    normal_coverage: float = DEFAULT_NORMAL_COVERAGE,
) -> np.ndarray:
    """``(N,)`` int8 tile labels 1/0/-1 from a painted raster (see the module doc)."""
    tumour, normal = painted_coverage(grid, painted, level0_per_pixel, origin)
    return _rule(tumour, normal, min_coverage, normal_coverage)


def annotation_raster_shape(
    slide_size: tuple[int, int], level0_per_pixel: float
) -> tuple[int, int]:
    """``(rows, cols)`` of a paint raster with square pixels of ``level0_per_pixel``
    level-0 pixels that covers the whole slide (``slide_size = (width, height)``)."""
    width, height = slide_size
    return (
        max(1, int(np.ceil(height / level0_per_pixel))),
        max(1, int(np.ceil(width / level0_per_pixel))),
    )


def tile_labels_from_shapes(
    grid: TileGrid,
    tumour_polygons: list[np.ndarray],
    normal_polygons: list[np.ndarray] = (),
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    normal_coverage: float = DEFAULT_NORMAL_COVERAGE,
) -> np.ndarray:
    """``(N,)`` int8 tile labels from level-0 ``(x, y)`` polygons (GeoJSON import's path)."""
    tumour = patch_coverage(grid, list(tumour_polygons))
    normal = patch_coverage(grid, list(normal_polygons))
    return _rule(tumour, normal, min_coverage, normal_coverage)


def combine_tile_labels(*label_sets: np.ndarray) -> np.ndarray:
    """Merge label vectors: tumour wins over normal, any known label over unknown."""
    sets = [np.asarray(s, np.int8) for s in label_sets if s is not None]
    if not sets:
        raise ValueError("no tile labels to combine")
    out = np.full(sets[0].shape, -1, np.int8)
    for s in sets:
        out[(s == 0) & (out == -1)] = 0
    for s in sets:
        out[s == 1] = 1
    return out


def world_to_level0(
    points_yx: np.ndarray, slide_scale: tuple[float, float], slide_translate=(0.0, 0.0)
) -> np.ndarray:
    """World ``(y, x)`` points of a napari layer over the slide -> level-0 ``(x, y)``.

    The slide layer has ``scale = slide_scale`` and maps level-0 pixel index ``i`` to
    world ``translate + i * scale`` at the pixel's centre, so the continuous level-0
    coordinate of QuPath and GeoJSON (pixel ``i`` spans ``[i, i + 1)``) is
    ``(world - translate) / scale + 1/2``.
    """
    p = np.asarray(points_yx, np.float64)[:, -2:]
    sy, sx = slide_scale
    ty, tx = slide_translate
    return np.stack([(p[:, 1] - tx) / sx + 0.5, (p[:, 0] - ty) / sy + 0.5], axis=1)


def ellipse_polygon(corners_yx: np.ndarray, vertices: int = 64) -> np.ndarray:
    """A napari ellipse (its 4 bounding-box corners, in order) as a ``(vertices, 2)``
    polygon in the same ``(y, x)`` coordinates."""
    c = np.asarray(corners_yx, np.float64)[:, -2:]
    centre = c.mean(axis=0)
    u, v = (c[1] - c[0]) / 2, (c[3] - c[0]) / 2
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    return centre + np.cos(t)[:, None] * u + np.sin(t)[:, None] * v


def write_tile_labels(
    project: ProjectStore, slide_id: str, labels: np.ndarray, source: str, **attrs
) -> None:
    """Store ``labels`` as ``tile_labels/<slide_id>`` (replacing earlier ones), under the
    project's writer lock. ``source`` says where they came from (e.g. ``"napari"``)."""

    grid, _ = project.read_tiles(slide_id)
    labels = np.asarray(labels, np.int8)
    if labels.shape != (len(grid),):
        raise StoreError(
            f"{project.root}: {labels.shape[0]} tile labels for slide {slide_id!r}, "
            f"which has {len(grid)} patches"
        )
    if not np.isin(labels, (-1, 0, 1)).all():
        raise ValueError("tile labels must be 1 (tumour), 0 (normal) or -1 (unknown)")
    counts = {"tumour": int((labels == 1).sum()), "normal": int((labels == 0).sum())}
    with project.lock():
        project.write_result(
            TILE_LABELS,
            None,
            slide_id,
            {"labels": labels},
            {"source": source, **counts, **attrs},
            overwrite=True,
        )
