"""QuPath-style GeoJSON annotations: polygons in level-0 (x, y) pixel coordinates.

Writing gives a ``FeatureCollection`` of ``Polygon`` features with QuPath's
``objectType`` and ``classification`` properties; reading accepts a
FeatureCollection, a single Feature or a bare list of Features (QuPath exports
all three) and returns the exterior ring of every Polygon and MultiPolygon part.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
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


def write_geojson(
    path: str | os.PathLike,
    polygons: Iterable[np.ndarray],
    classification: str = "Tumor",
    color: Sequence[int] = (200, 0, 0),
) -> Path:
    """Write ``polygons`` ((K, 2) level-0 x, y) as a QuPath annotation FeatureCollection.

    The file is written atomically; rings are closed if they are not already.
    Returns ``path``.
    """
    properties = {
        "objectType": "annotation",
        "classification": {"name": classification, "color": [int(c) for c in color]},
    }
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [_closed_ring(p)]},
            "properties": properties,
        }
        for p in polygons
    ]
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
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        polygons = []
        for feature in _features(data):
            if not isinstance(feature, dict) or feature.get("type") != "Feature":
                raise ValueError("an element is not a GeoJSON Feature")
            if classification is not None and _class_name(feature) != classification:
                continue
            geometry = feature.get("geometry") or {}
            kind, coords = geometry.get("type"), geometry.get("coordinates")
            if kind == "Polygon":
                polygons.append(_ring(coords[0]))
            elif kind == "MultiPolygon":
                polygons.extend(_ring(part[0]) for part in coords)
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
    return polygons
