"""QuPath GeoJSON objects: classes, colours and object types of old and new exports."""

import json

from napari_wsi_mil.store.geojson import read_geojson_objects, read_geojson_polygons

SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]


def test_classes_colours_and_object_types(tmp_path):
    features = [
        {  # QuPath >= 0.3
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [SQUARE]},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
            },
        },
        {  # QuPath 0.2: the type in "id", the colour a packed ARGB integer
            "type": "Feature",
            "id": "PathCellObject",
            "geometry": {"type": "MultiPolygon", "coordinates": [[SQUARE], [SQUARE]]},
            "properties": {"classification": {"name": "Stroma", "colorRGB": 0, "color": -6895466}},
        },
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}},
    ]
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(features))
    objects = read_geojson_objects(path)
    assert [(o.classification, o.object_type) for o in objects] == [
        ("Tumor", "annotation"),
        ("Stroma", "detection"),
        ("Stroma", "detection"),
    ]
    assert objects[0].color == (200, 0, 0)
    assert objects[1].color == (0x96, 0xC8, 0x96)  # -6895466 = 0xFF96C896
    assert len(read_geojson_polygons(path, classification="Stroma")) == 2
