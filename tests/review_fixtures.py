"""Checks shared by the review core's and the Analyse widget's tests."""

import json

import numpy as np
import pytest

from napari_wsi_mil.review.polygons import signed_area

# GeoJSON (RFC 7946) Feature / Polygon, and QuPath 0.4+ object properties
_RING = {
    "type": "array",
    "minItems": 4,
    "items": {
        "type": "array",
        "minItems": 2,
        "maxItems": 2,
        "items": {"type": "number"},
    },
}
QUPATH_FEATURE_COLLECTION = {
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "geometry", "properties"],
                "properties": {
                    "type": {"const": "Feature"},
                    "geometry": {
                        "type": "object",
                        "required": ["type", "coordinates"],
                        "properties": {
                            "type": {"const": "Polygon"},
                            "coordinates": {"type": "array", "minItems": 1, "items": _RING},
                        },
                    },
                    "properties": {
                        "type": "object",
                        "required": ["objectType", "classification", "measurements"],
                        "properties": {
                            "objectType": {"enum": ["detection", "annotation"]},
                            "classification": {
                                "type": "object",
                                "required": ["name", "color"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "color": {
                                        "type": "array",
                                        "minItems": 3,
                                        "maxItems": 3,
                                        "items": {"type": "integer", "minimum": 0, "maximum": 255},
                                    },
                                },
                            },
                            "measurements": {
                                "type": "object",
                                "additionalProperties": {"type": "number"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def check_qupath_geojson(data: dict, object_type: str, width: float, height: float) -> None:
    """Validate against the schema above, closed rings, RFC 7946 orientation and
    level-0 pixel bounds; round-trips through strict JSON (no NaN)."""
    jsonschema = pytest.importorskip("jsonschema")
    data = json.loads(json.dumps(data, allow_nan=False))
    jsonschema.validate(data, QUPATH_FEATURE_COLLECTION)
    for feature in data["features"]:
        assert feature["properties"]["objectType"] == object_type
        rings = feature["geometry"]["coordinates"]
        for k, ring in enumerate(rings):
            ring = np.asarray(ring)
            assert (ring[0] == ring[-1]).all()
            assert (signed_area(ring[:-1]) > 0) == (k == 0)
            assert ring[:, 0].min() >= 0 and ring[:, 0].max() <= width
            assert ring[:, 1].min() >= 0 and ring[:, 1].max() <= height
