"""QuPath GeoJSON in napari: opened on its slide with classes, saved back unchanged."""

import json

import numpy as np
import pytest

from napari_wsi_mil.slide.synthetic import write_synthetic_slide
from napari_wsi_mil.store.geojson import GeoJsonObject, read_geojson_objects, write_geojson_objects

TUMOUR = np.array([[100.0, 200.0], [400.0, 210.0], [380.0, 500.0], [120.0, 480.0]])
STROMA = np.array([[600.0, 600.0], [900.0, 620.0], [760.0, 900.0]])


@pytest.fixture
def slide(tmp_path):
    # 0.5 um/px: a slide in physical units, so a pixel/um mix-up cannot pass
    return write_synthetic_slide(tmp_path / "case1.tiff", width=1024, height=1024, seed=3)


def _qupath_file(path):
    """A file as QuPath exports it: annotations of two classes, one unclassified, a cell."""
    write_geojson_objects(
        path,
        [
            GeoJsonObject(TUMOUR, "Tumor", (200, 0, 0)),
            GeoJsonObject(STROMA, "Stroma", (150, 200, 150)),
            GeoJsonObject(TUMOUR + 50, None),
            GeoJsonObject(STROMA + 5, "Tumor", (200, 0, 0), object_type="detection"),
        ],
    )
    return path


def test_geojson_opens_on_its_slide_and_saves_back(make_napari_viewer, tmp_path, slide):
    viewer = make_napari_viewer()
    (slide_layer,) = viewer.open(slide.path, plugin="napari-wsi-mil")
    assert slide_layer.units[0] != "pixel"
    source = _qupath_file(tmp_path / "case1.annotations.geojson")
    shapes, points = viewer.open(source, plugin="napari-wsi-mil")

    assert shapes.name == "case1.annotations annotations" and len(shapes.data) == 3
    assert shapes.features["class"].tolist() == ["Tumor", "Stroma", ""]
    np.testing.assert_allclose(shapes.edge_color[0, :3], np.array([200, 0, 0]) / 255)
    assert tuple(shapes.units) == tuple(slide_layer.units)
    # a vertex lies on the slide where QuPath drew it: level-0 (x, y) -> pixel centre
    x, y = TUMOUR[0]
    np.testing.assert_allclose(
        shapes.data_to_world(shapes.data[0][0]), slide_layer.data_to_world((y - 0.5, x - 0.5))
    )
    assert len(points.data) == 1 and points.features["class"].tolist() == ["Tumor"]
    np.testing.assert_allclose(points.data[0], STROMA[:, ::-1].mean(axis=0) + 5 - 0.5)

    out = tmp_path / "saved.geojson"
    shapes.save(str(out), plugin="napari-wsi-mil")
    saved = read_geojson_objects(out)
    assert [o.classification for o in saved] == ["Tumor", "Stroma", None]
    assert [o.color for o in saved[:2]] == [(200, 0, 0), (150, 200, 150)]
    assert {o.object_type for o in saved} == {"annotation"}
    for obj, ring in zip(saved, [TUMOUR, STROMA, TUMOUR + 50], strict=True):
        np.testing.assert_allclose(obj.ring[:-1], ring, atol=0.01)  # written closed
    assert json.loads(out.read_text())["type"] == "FeatureCollection"


def test_geojson_without_its_slide_is_in_pixels(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    (shapes, _) = viewer.open(_qupath_file(tmp_path / "other.geojson"), plugin="napari-wsi-mil")
    assert tuple(shapes.units) == ("pixel", "pixel")
    np.testing.assert_allclose(shapes.data[1], STROMA[:, ::-1] - 0.5)
    shapes.save(str(tmp_path / "back.geojson"), plugin="napari-wsi-mil")
    np.testing.assert_allclose(read_geojson_objects(tmp_path / "back.geojson")[1].ring[:-1], STROMA)
