"""Evidence of a multi-class model on a slide, Qt-free: per-class attention heatmaps, the
predicted-class map, GeoJSON with class names; binary models as before."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile

from conftest import THREE_CLASSES
from napari_wsi_mil._napari.layers import Frame, analysis_layer_data
from napari_wsi_mil.review.heatmap import class_colour, heatmap_raster, normalise
from napari_wsi_mil.review.session import SlideReview


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from napari_wsi_mil.slide.synthetic import write_synthetic_slide

    path = tmp_path_factory.mktemp("multiclass-slide") / "lesion.tiff"
    return write_synthetic_slide(path, width=1024, height=768, seed=11, lesion_fraction=0.15)


@pytest.fixture(scope="module")
def review(tmp_path_factory, tiny_clam_mb_model, slide):
    review = SlideReview(tmp_path_factory.mktemp("mc-proj"), tiny_clam_mb_model, device="cpu")
    review.analyse(slide.path)
    return review


def _named(layers, sid):
    return {kw["name"].removeprefix(f"{sid} "): (data, kw, kind) for data, kw, kind in layers}


def test_the_analysis_reads_the_models_classes(review):
    a = review.analysis
    assert a.classes == THREE_CLASSES and a.is_multiclass
    assert a.class_probability.shape == (3,) and a.class_probability.sum() == pytest.approx(1)
    assert a.prediction == int(np.argmax(a.class_probability))
    assert a.probability == pytest.approx(1 - a.class_probability[0], abs=1e-6)
    assert a.class_attention.shape == (len(a.grid), 3)
    np.testing.assert_allclose(a.class_attention.sum(0), 1, rtol=1e-4)
    # CLAM-MB shows the branch of the most probable class but the negative one
    k = a.evidence_class
    assert k == 1 + int(np.argmax(a.class_probability[1:]))
    np.testing.assert_allclose(a.attention, a.class_attention[:, k], rtol=1e-6)
    summary = review.summary()
    assert summary.startswith(f"{a.predicted_class} (P = {a.class_probability[a.prediction]:.3f}")
    assert f"P(not normal) = {a.probability:.3f}" in summary
    n = int((a.instance_probability >= review.threshold).sum())
    assert summary.endswith(f"\n{n} of {len(a.grid)} tiles >= 0.50: {THREE_CLASSES[k]}")


def test_per_class_heatmaps_and_a_predicted_class_map(review):
    a = review.analysis
    cut = float(np.median(a.instance_probability))
    layers = _named(analysis_layer_data(a, Frame((0.5, 0.5)), threshold=cut), a.slide_id)
    assert list(layers) == [
        "attention",
        "probability",
        "predicted tumour",
        "predicted class",
        "attention: normal",
        "attention: luad",
        "attention: lusc",
    ]
    assert [kw.get("visible", True) for _, kw, _ in layers.values()] == [True] + [False] * 6
    for k, name in enumerate(THREE_CLASSES):
        data, kwargs, kind = layers[f"attention: {name}"]
        assert kind == "image" and kwargs["metadata"]["class"] == name
        shown = heatmap_raster(a.grid, normalise(a.class_attention[:, k], "rank"))
        np.testing.assert_array_equal(data, shown)
    data, kwargs, kind = layers["predicted class"]
    mask, _, _ = layers["predicted tumour"]
    k = a.evidence_class
    assert kind == "labels" and data.shape == a.grid.grid_shape
    # the mask's tiles in the evidence class (label k + 1), nothing elsewhere
    np.testing.assert_array_equal(data, mask.astype(np.int32) * (k + 1))
    assert 0 < (data > 0).sum() < len(a.grid)
    assert kwargs["metadata"]["classes"] == list(THREE_CLASSES)
    assert kwargs["metadata"]["class"] == THREE_CLASSES[k]
    assert list(kwargs["features"]["class"]) == ["", *THREE_CLASSES]
    for j in range(3):
        rgba = kwargs["colormap"][j + 1]
        assert tuple(round(c * 255) for c in rgba[:3]) == class_colour(j)
    assert len({class_colour(j) for j in range(3)}) == 3


def test_legends_name_the_classes(review):
    a = review.analysis
    assert review.heatmap_legend("attention: lusc")[0] == "attention: lusc (percentile rank)"
    evidence = THREE_CLASSES[a.evidence_class]
    assert review.heatmap_legend("attention")[0] == f"attention: {evidence} (percentile rank)"
    legend = ("instance P(not normal)", "normal", "not normal")
    assert review.heatmap_legend("probability") == legend
    assert review.class_legend() == [(c, class_colour(k)) for k, c in enumerate(THREE_CLASSES)]


def test_geojson_carries_the_class_names(review, tmp_path):
    a = review.analysis
    cut = float(np.median(a.instance_probability))
    review.threshold = cut
    paths = review.export(tmp_path)
    evidence = THREE_CLASSES[a.evidence_class]
    tiles = json.loads((tmp_path / "lesion.tiles.geojson").read_text())["features"]
    names = [f["properties"]["classification"]["name"] for f in tiles]
    in_mask = a.instance_probability >= cut
    assert names == [evidence if m else "normal" for m in in_mask]
    colours = {tuple(f["properties"]["classification"]["color"]) for f in tiles}
    assert colours == {class_colour(0), class_colour(a.evidence_class)}
    mask = json.loads((tmp_path / "lesion.mask.geojson").read_text())["features"]
    assert mask and {f["properties"]["classification"]["name"] for f in mask} == {evidence}
    assert any(p.suffix == ".png" for p in paths)
    with tifffile.TiffFile(tmp_path / "lesion.heatmap.ome.tif") as tif:
        channels = tif.asarray()  # (C, rows, cols)
        names = [c.get("Name") for c in _ome_channels(tif.ome_metadata)]
    expected = ["attention", "probability", *(f"attention: {c}" for c in THREE_CLASSES)]
    assert names == expected
    lusc = heatmap_raster(a.grid, normalise(a.class_attention[:, 2], "rank"))
    np.testing.assert_array_equal(channels[4], lusc)


def _ome_channels(xml: str) -> list[dict]:
    return [el.attrib for el in ET.fromstring(xml).iter() if el.tag.endswith("Channel")]


def test_stored_predictions_export_with_their_classes(review, tmp_path):
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.review.export import export_predictions_job
    from napari_wsi_mil.store.project import ProjectStore

    a = review.analysis
    project = ProjectStore(review.project)
    job = export_predictions_job(project, a.prediction_name, [a.slide_id], geojson_dir=tmp_path)
    run_job(job)
    tiles = json.loads((tmp_path / "lesion.tiles.geojson").read_text())["features"]
    names = {f["properties"]["classification"]["name"] for f in tiles}
    assert names <= {"normal", THREE_CLASSES[a.evidence_class]}
    assert "Tumor" not in names and "Normal" not in names


def test_binary_models_show_and_export_as_before(tiny_abmil_model, slide, tmp_path):
    review = SlideReview(tmp_path / "proj", tiny_abmil_model, device="cpu")
    a = review.analyse(slide.path)
    assert not a.is_multiclass and a.class_attention is None
    layers = _named(analysis_layer_data(a, Frame()), a.slide_id)
    assert list(layers) == ["attention", "probability", "predicted tumour"]
    assert review.heatmap_legend("attention")[0] == "attention (percentile rank)"
    assert review.heatmap_legend("probability") == ("instance P(tumour)", "normal", "tumour")
    assert review.class_legend() == []
    assert review.summary().startswith(f"P(tumour) = {a.probability:.3f} -> ")
    review.threshold = 0.0
    review.export(tmp_path / "out")
    tiles = json.loads((tmp_path / "out" / "lesion.tiles.geojson").read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in tiles} == {"Tumor"}
    mask = json.loads((tmp_path / "out" / "lesion.mask.geojson").read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in mask} == {"Tumor"}


def test_infer_prints_the_class_and_exports_class_names(
    review, tiny_clam_mb_model, tmp_path, capsys
):
    from napari_wsi_mil.cli import main

    a = review.analysis
    args = ["infer", "--project", str(review.project), "--model", str(tiny_clam_mb_model)]
    args += ["--slides", "lesion", "--out", str(tmp_path / "pred"), "--name", "cli"]
    assert main([*args, "--geojson", str(tmp_path / "geojson")]) == 0
    printed = capsys.readouterr().out
    assert f"lesion: P(not normal) = {a.probability:.4f} -> {a.predicted_class}\n" in printed
    tiles = json.loads((tmp_path / "geojson" / "lesion.tiles.geojson").read_text())["features"]
    evidence, in_mask = THREE_CLASSES[a.evidence_class], a.instance_probability >= a.mask_threshold
    names = [f["properties"]["classification"]["name"] for f in tiles]
    assert names == [evidence if m else "normal" for m in in_mask]
