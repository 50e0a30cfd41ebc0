"""QuPath-style GeoJSON annotations: polygons in level-0 (x, y) pixel coordinates.

Writing gives a ``FeatureCollection`` of ``Polygon`` features with QuPath's
``objectType`` and ``classification`` properties; reading accepts a
FeatureCollection, a single Feature or a bare list of Features (QuPath exports
all three) and returns the exterior ring of every Polygon and MultiPolygon part,
with its class (name and colour) and object type (annotation or detection) when
asked (:func:`read_geojson_objects`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import atomic_file


def _closed_ring(polygon: np.ndarray) -> list[list[float]]:
    ring = np.asarray(polygon, dtype=np.float64)
    if ring.ndim != 2 or ring.shape[1] != 2 or len(ring) < 3:
        raise ValueError(f"a polygon must be a (K>=3, 2) array of x, y; got shape {ring.shape}")
    if not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    return np.round(ring, 2).tolist()


@dataclass(frozen=True)
class GeoJsonObject:
    """One QuPath object: an exterior ring and what QuPath knows about it."""

    ring: np.ndarray  # (K, 2) level-0 x, y
    classification: str | None = None  # class name; None = unclassified
    color: tuple[int, int, int] | None = None  # the class's RGB colour
    object_type: str = "annotation"  # "annotation" or "detection" (cells, tiles too)


def write_geojson(
    path: str | os.PathLike,
    polygons: Iterable[np.ndarray],
    classification: str = "Tumor",
    color: Sequence[int] = (200, 0, 0),
) -> Path:
    """Write ``polygons`` ((K, 2) level-0 x, y) as a QuPath annotation FeatureCollection
    of one class (see :func:`write_geojson_objects`). Returns ``path``."""
    rgb = tuple(int(c) for c in color)
    return write_geojson_objects(
        path, [GeoJsonObject(np.asarray(p), classification, rgb) for p in polygons]
    )


def write_geojson_objects(path: str | os.PathLike, objects: Iterable[GeoJsonObject]) -> Path:
    """Write QuPath objects as a GeoJSON FeatureCollection, atomically; rings are closed
    if they are not already. An object without a class has no ``classification``.
    Returns ``path``."""
    features = []
    for obj in objects:
        properties: dict[str, Any] = {"objectType": obj.object_type}
        if obj.classification is not None:
            color = list(obj.color) if obj.color is not None else [200, 0, 0]
            properties["classification"] = {"name": obj.classification, "color": color}
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [_closed_ring(obj.ring)]},
                "properties": properties,
            }
        )
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _class_name(feature: dict[str, Any]) -> str | None:
    props = feature.get("properties") or {}
    cls = props.get("classification")
    if isinstance(cls, dict):
        return cls.get("name")
    if isinstance(cls, str):
        return cls
    return props.get("name") if isinstance(props.get("name"), str) else None


def _class_color(feature: dict[str, Any]) -> tuple[int, int, int] | None:
    """QuPath's ``classification.color``: [r, g, b], or a packed (A)RGB integer."""
    cls = (feature.get("properties") or {}).get("classification")
    color = cls.get("color") if isinstance(cls, dict) else None
    if isinstance(color, int):
        return ((color >> 16) & 255, (color >> 8) & 255, color & 255)
    if isinstance(color, (list, tuple)) and len(color) >= 3:
        return tuple(int(c) for c in color[:3])
    return None


def _object_type(feature: dict[str, Any]) -> str:
    """``properties.objectType`` (QuPath >= 0.3), else the ``id`` of older exports
    (``PathDetectionObject``, ``PathCellObject``, ``PathTileObject``)."""
    kind = (feature.get("properties") or {}).get("objectType") or feature.get("id") or ""
    kind = str(kind).lower()
    return "detection" if any(k in kind for k in ("detection", "cell", "tile")) else "annotation"


def _features(data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return data.get("features") or []
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    raise ValueError("not a GeoJSON FeatureCollection, Feature or list of Features")


def _ring(coords: Any) -> np.ndarray:
    ring = np.asarray(coords, dtype=np.float64)
    if ring.ndim != 2 or ring.shape[1] < 2 or len(ring) < 3 or not np.isfinite(ring).all():
        raise ValueError("a polygon ring must be a list of at least 3 finite [x, y] points")
    return ring[:, :2]


def read_geojson_polygons(
    path: str | os.PathLike, classification: str | None = None
) -> list[np.ndarray]:
    """Exterior rings of the Polygon and MultiPolygon features of a GeoJSON file.

    Parameters
    ----------
    path
        GeoJSON file (FeatureCollection, Feature or list of Features).
    classification
        Keep only features whose ``properties.classification.name`` (or
        ``classification`` string) equals this; None keeps all.

    Returns
    -------
    list of (K, 2) float64 arrays of (x, y), rings as stored (usually closed).

    Raises
    ------
    WsiMilError
        If the file cannot be read or is not valid GeoJSON; the message names it.
    """
    return [
        obj.ring
        for obj in read_geojson_objects(path)
        if classification is None or obj.classification == classification
    ]


def read_geojson_objects(path: str | os.PathLike) -> list[GeoJsonObject]:
    """Every Polygon and MultiPolygon part of a GeoJSON file as a :class:`GeoJsonObject`
    (exterior ring, class name and colour, annotation or detection); other geometries
    (points, lines) are skipped. Raises :class:`WsiMilError` naming the file if it
    cannot be read or is not valid GeoJSON."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        objects = []
        for feature in _features(data):
            if not isinstance(feature, dict) or feature.get("type") != "Feature":
                raise ValueError("an element is not a GeoJSON Feature")
            geometry = feature.get("geometry") or {}
            kind, coords = geometry.get("type"), geometry.get("coordinates")
            rings = (
                [coords[0]]
                if kind == "Polygon"
                else [part[0] for part in coords]
                if kind == "MultiPolygon"
                else []
            )
            about = (_class_name(feature), _class_color(feature), _object_type(feature))
            objects.extend(GeoJsonObject(_ring(ring), *about) for ring in rings)
    except (
        OSError,
        UnicodeDecodeError,
        json.JSONDecodeError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        RecursionError,  # nested deeper than Python's parser goes
    ) as exc:
        raise WsiMilError(f"{path}: invalid GeoJSON annotations ({exc})") from None
    return objects
