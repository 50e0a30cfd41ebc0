"""Exports of a slide's predictions that other tools open: QuPath GeoJSON and OME-TIFF.

GeoJSON follows QuPath 0.4+ (``File > Import objects`` / drag and drop): a
``FeatureCollection`` of ``Feature``s with ``Polygon`` geometry in level-0 pixel
coordinates (origin at the top-left corner of the full-resolution image) and
properties ``objectType`` (``"detection"`` for tiles, ``"annotation"`` for mask
regions), ``classification`` ``{"name", "color": [r, g, b]}`` and ``measurements``
``{name: number}``. Tiles carry ``attention`` (raw softmax weight),
``attention_rank`` (percentile rank in the slide) and ``probability`` (the
instance probability); the mask is the union of tiles whose probability reaches the
threshold, traced exactly along tile edges, one annotation per connected region.
Tiles and mask are QuPath's ``Tumor`` and ``Normal`` for a binary model; a multi-class
model's mask and its tiles carry the slide's evidence class (the predicted class unless
the slide is called negative; :mod:`napari_wsi_mil.review.heatmap`) and the other tiles
the negative class, by their names and colours (:func:`tile_classes`).

The heatmap OME-TIFF has one pixel per patch-grid cell (or ``upsample`` pixels per
cell side), channels ``attention`` and ``probability`` (and ``attention: <class>`` for
each class of a model with one attention map per class) as float32 with NaN off tissue,
a physical pixel size of the grid step times the slide's pixel size, and 2x reduced
levels as SubIFDs. Placed at the slide's origin with that pixel size, it lines up with
the slide (in napari: ``scale`` = pixel size; QuPath reads the calibration).

:func:`export_predictions_job` writes both for predictions stored in a project (by
:func:`napari_wsi_mil.mil.infer.infer_job`), at the mask threshold stored with them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_wsi_mil.jobs import Job, Progress, atomic_file
from napari_wsi_mil.mil.predict import recorded_classes, recorded_mask_threshold
from napari_wsi_mil.review.heatmap import (
    class_colour,
    evidence_class,
    heatmap_raster,
    normalise,
    tumour_mask,
)
from napari_wsi_mil.review.polygons import raster_polygons, signed_area
from napari_wsi_mil.store.keys import PREDICTIONS
from napari_wsi_mil.store.project import ProjectStore

if TYPE_CHECKING:
    from napari_wsi_mil.slide.tiling import TileGrid

#: QuPath class names and colours used in exports (QuPath's own "Tumor" spelling).
TUMOUR_CLASS = ("Tumor", (200, 0, 0))
NORMAL_CLASS = ("Normal", (0, 160, 90))


#: A QuPath class: ``(name, (r, g, b))``.
QuPathClass = tuple[str, Sequence[int]]


def tile_classes(classes: Sequence[str], class_probability) -> tuple[QuPathClass, QuPathClass]:
    """The QuPath classes ``(outside, inside the mask)`` of a model's ``classes``
    (negative first) for a slide of ``class_probability``: Normal and Tumor for two
    classes, else the negative class and the evidence class, by name and colour."""

    if len(classes) <= 2 or class_probability is None:
        return NORMAL_CLASS, TUMOUR_CLASS
    k = evidence_class(class_probability)
    return (classes[0], class_colour(0)), (classes[k], class_colour(k))


def class_attention_by_name(
    classes: Sequence[str], class_attention: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Per-class attention ``(N, C)`` (as stored) as class name -> ``(N,)``; empty for a
    binary model or one without per-class attention."""
    if class_attention is None or len(classes) <= 2:
        return {}
    return {name: class_attention[:, k] for k, name in enumerate(classes)}


def _classification(cls: QuPathClass) -> dict:
    name, color = cls
    return {"name": name, "color": [int(c) for c in color]}


def _number(value: float) -> float:
    """A JSON number (GeoJSON has no NaN): non-finite values become 0."""
    value = float(value)
    return float(f"{value:.8g}") if np.isfinite(value) else 0.0


def _tile_features(
    grid: TileGrid,
    attention: np.ndarray,
    instance_probability: np.ndarray,
    threshold: float,
    classes: tuple[QuPathClass, QuPathClass] = (NORMAL_CLASS, TUMOUR_CLASS),
) -> Iterator[str]:
    """The tile Features as compact JSON text, one string per tile (streamed, so 100,000
    tiles need neither a list of dicts nor the whole text in memory at once)."""
    n = len(grid)
    attention = np.asarray(attention, np.float64)
    probability = np.asarray(instance_probability, np.float64)
    if len(attention) != n or len(probability) != n:
        raise ValueError(f"{len(attention)}/{len(probability)} scores for {n} patches")
    rank = normalise(attention, "rank").astype(np.float64)
    positive = tumour_mask(probability, threshold)
    size = int(grid.geometry.patch_size_level0)
    classes = [json.dumps(_classification(c), separators=(",", ":")) for c in classes]
    for i, (x, y) in enumerate(grid.coords.tolist()):
        x1, y1 = x + size, y + size
        # counter-clockwise by the shoelace sign of these numbers (RFC 7946)
        yield (
            '{"type":"Feature","geometry":{"type":"Polygon","coordinates":'
            f"[[[{x},{y}],[{x1},{y}],[{x1},{y1}],[{x},{y1}],[{x},{y}]]]}},"
            f'"properties":{{"objectType":"detection","name":"tile {i}",'
            f'"classification":{classes[positive[i]]},"measurements":{{'
            f'"attention":{_number(attention[i])!r},"attention_rank":{_number(rank[i])!r},'
            f'"probability":{_number(probability[i])!r}}}}}}}'
        )


def write_tiles_geojson(
    path: str | os.PathLike,
    grid: TileGrid,
    attention: np.ndarray,
    instance_probability: np.ndarray,
    threshold: float,
    classes: tuple[QuPathClass, QuPathClass] = (NORMAL_CLASS, TUMOUR_CLASS),
) -> Path:
    """Every patch as a QuPath detection (see :func:`tiles_geojson`), written atomically
    and streamed."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write('{"type":"FeatureCollection","features":[')
        for k, feature in enumerate(
            _tile_features(grid, attention, instance_probability, threshold, classes)
        ):
            if k:
                fh.write(",")
            fh.write(feature)
        fh.write("]}")
    return path


def tiles_geojson(
    grid: TileGrid,
    attention: np.ndarray,
    instance_probability: np.ndarray,
    threshold: float,
    classes: tuple[QuPathClass, QuPathClass] = (NORMAL_CLASS, TUMOUR_CLASS),
) -> dict:
    """Every patch as a QuPath detection: a square in level-0 pixels with measurements
    ``attention``, ``attention_rank`` and ``probability``.

    A tile is classified ``classes[1]`` (``Tumor``) when its instance probability
    reaches ``threshold``, else ``classes[0]`` (``Normal``; see :func:`tile_classes`).
    Rings are closed and counter-clockwise (RFC 7946) in the numbers. For files use
    :func:`write_tiles_geojson` (streamed, same content).
    """
    features = _tile_features(grid, attention, instance_probability, threshold, classes)
    return {"type": "FeatureCollection", "features": [json.loads(f) for f in features]}


def mask_polygons(grid: TileGrid, mask: np.ndarray) -> list[list[np.ndarray]]:
    """Outlines of the positive tiles (``mask`` per patch, nonzero = positive) in level-0
    ``(x, y)``: ``[[exterior, *holes], ...]``, rings open, exterior counter-clockwise.

    Each tile contributes its patch-grid cell (one stride step square from its corner),
    so for the usual stride = patch size the outline is the exact union of the tiles.
    """
    raster = grid.grid_raster(np.asarray(mask) != 0, fill=False)
    step = float(grid.geometry.stride_level0)
    return [[ring * step for ring in polygon] for polygon in raster_polygons(raster)]


def _closed(ring: np.ndarray) -> list[list[float]]:
    ring = np.asarray(ring, np.float64)
    return np.round(np.vstack([ring, ring[:1]]), 2).tolist()


def mask_geojson(
    grid: TileGrid,
    mask: np.ndarray,
    probability: np.ndarray | None = None,
    cls: QuPathClass = TUMOUR_CLASS,
) -> dict:
    """The predicted mask as QuPath annotations, one ``Polygon`` (with holes) per region.

    Measurements: ``tiles`` (count), ``area_px`` (level-0 pixels) and, given the tiles'
    ``probability``, ``mean_probability`` of the region's tiles.
    """
    mask = np.asarray(mask) != 0
    means = None
    if probability is not None:
        from scipy import ndimage

        # polygon k of mask_polygons is region k + 1 of ndimage.label (raster_polygons)
        regions, n = ndimage.label(grid.grid_raster(mask, fill=False))
        prob = grid.grid_raster(np.asarray(probability, np.float64), fill=0.0)
        means = ndimage.mean(prob, regions, np.arange(1, n + 1)) if n else []
    step = float(grid.geometry.stride_level0)
    features = []
    for k, polygon in enumerate(mask_polygons(grid, mask)):
        area = signed_area(polygon[0]) + sum(signed_area(h) for h in polygon[1:])
        measurements = {"tiles": int(round(area / step**2)), "area_px": _number(area)}
        if means is not None:
            measurements["mean_probability"] = _number(means[k])
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [_closed(r) for r in polygon]},
                "properties": {
                    "objectType": "annotation",
                    "classification": _classification(cls),
                    "measurements": measurements,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write JSON atomically (compact; GeoJSON of 100,000 tiles is ~25 MB)."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, separators=(",", ":"), allow_nan=False))
    return path


def write_heatmap_ome_tiff(
    path: str | os.PathLike,
    grid: TileGrid,
    channels: dict[str, np.ndarray],
    *,
    upsample: int = 1,
    min_side: int = 64,
) -> Path:
    """Per-patch ``channels`` (name -> (N,) values) as a pyramidal OME-TIFF (see module doc).

    ``upsample`` repeats each cell ``upsample`` times per side (a finer pixel grid for
    viewers that smooth). Reduced levels (2x2 NaN-mean) are written as SubIFDs until
    the smaller side is at most ``min_side``.
    """
    import tifffile

    if upsample < 1:
        raise ValueError("upsample must be a positive integer")
    names = list(channels)
    if not names:
        raise ValueError("no channels to write")
    base = np.stack([heatmap_raster(grid, channels[k]) for k in names])
    if upsample > 1:
        base = base.repeat(upsample, axis=1).repeat(upsample, axis=2)
    levels = [base]
    while min(levels[-1].shape[1:]) > min_side:
        levels.append(_reduce(levels[-1]))
    mpp = grid.geometry.source_mpp
    metadata: dict = {"axes": "CYX", "Channel": {"Name": names}}
    options: dict = {}
    if mpp:
        size = float(mpp) * grid.geometry.stride_level0 / upsample
        metadata.update(
            PhysicalSizeX=size,
            PhysicalSizeXUnit="µm",
            PhysicalSizeY=size,
            PhysicalSizeYUnit="µm",
        )
        options = {"resolutionunit": "CENTIMETER"}
    path = Path(path)
    tile = (256, 256) if min(base.shape[1:]) >= 256 else None
    with atomic_file(path) as tmp:
        with tifffile.TiffWriter(tmp, ome=True, bigtiff=base.nbytes > 2**31) as tif:
            for level, data in enumerate(levels):
                res = {}
                if mpp:
                    px = size * (base.shape[2] / data.shape[2])
                    res = {"resolution": (1e4 / px, 1e4 / px), **options}
                tif.write(
                    data,
                    photometric="minisblack",
                    tile=tile if level == 0 or min(data.shape[1:]) >= 256 else None,
                    compression="zlib",
                    **(
                        {"subifds": len(levels) - 1, "metadata": metadata}
                        if level == 0
                        else {"subfiletype": 1, "metadata": None}
                    ),
                    **res,
                )
    return path


def _reduce(data: np.ndarray) -> np.ndarray:
    """2x2 mean of a ``(C, H, W)`` float stack, ignoring NaN; odd edges padded with NaN."""
    c, h, w = data.shape
    padded = np.full((c, h + h % 2, w + w % 2), np.nan, np.float32)
    padded[:, :h, :w] = data
    blocks = padded.reshape(c, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2)
    with np.errstate(invalid="ignore"):
        total = np.nansum(blocks, axis=(2, 4))
        count = np.isfinite(blocks).sum(axis=(2, 4))
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def export_slide_predictions(
    grid: TileGrid,
    attention: np.ndarray,
    instance_probability: np.ndarray,
    threshold: float,
    slide_id: str,
    *,
    geojson_dir: str | os.PathLike | None = None,
    heatmap_dir: str | os.PathLike | None = None,
    attention_mode: str = "rank",
    classes: tuple[QuPathClass, QuPathClass] = (NORMAL_CLASS, TUMOUR_CLASS),
    class_attention: dict[str, np.ndarray] | None = None,
) -> list[Path]:
    """Write ``<geojson_dir>/<slide_id>.tiles.geojson`` (detections),
    ``<geojson_dir>/<slide_id>.mask.geojson`` (annotations; ``classes`` are the QuPath
    classes outside and inside the mask, :func:`tile_classes`) and
    ``<heatmap_dir>/<slide_id>.heatmap.ome.tif`` (channels ``attention`` normalised with
    ``attention_mode``, ``probability`` and ``attention: <class>`` for each entry of
    ``class_attention``, class name -> (N,) attention, normalised alike). Returns the
    written paths."""
    written = []
    if geojson_dir is not None:
        folder = Path(geojson_dir)
        written.append(
            write_tiles_geojson(
                folder / f"{slide_id}.tiles.geojson",
                grid,
                attention,
                instance_probability,
                threshold,
                classes,
            )
        )
        mask = tumour_mask(instance_probability, threshold)
        written.append(
            write_json(
                folder / f"{slide_id}.mask.geojson",
                mask_geojson(grid, mask, instance_probability, classes[1]),
            )
        )
    if heatmap_dir is not None:
        written.append(
            write_heatmap_ome_tiff(
                Path(heatmap_dir) / f"{slide_id}.heatmap.ome.tif",
                grid,
                {
                    "attention": normalise(attention, attention_mode),
                    "probability": np.asarray(instance_probability, np.float32),
                    **{
                        f"attention: {name}": normalise(values, attention_mode)
                        for name, values in (class_attention or {}).items()
                    },
                },
            )
        )
    return written


def export_predictions_job(
    project: ProjectStore,
    name: str,
    slide_ids: Sequence[str],
    *,
    geojson_dir: str | os.PathLike | None = None,
    heatmap_dir: str | os.PathLike | None = None,
    attention_mode: str = "rank",
) -> Job[list[Path]]:
    """:func:`export_slide_predictions` for the stored predictions ``name`` of each slide,
    with the tumour mask cut at the mask threshold stored with them and the classes of
    their model. Returns the written paths."""
    written: list[Path] = []
    for i, slide_id in enumerate(slide_ids):
        yield Progress("export", i, len(slide_ids), message=slide_id)
        arrays, attrs = project.read_result(PREDICTIONS, name, slide_id)
        grid, _ = project.read_tiles(slide_id)
        written += export_slide_predictions(
            grid,
            arrays["attention"],
            arrays["instance_probability"],
            recorded_mask_threshold(attrs),
            slide_id,
            geojson_dir=geojson_dir,
            heatmap_dir=heatmap_dir,
            attention_mode=attention_mode,
            classes=tile_classes(recorded_classes(attrs), attrs.get("class_probability")),
            class_attention=class_attention_by_name(
                recorded_classes(attrs), arrays.get("class_attention")
            ),
        )
    yield Progress("export", len(slide_ids), len(slide_ids))
    return written
