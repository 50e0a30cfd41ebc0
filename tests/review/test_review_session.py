"""SlideReview driven from Python alone: no Qt, no napari, no viewer."""

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_wsi_mil.errors import ParamError
from napari_wsi_mil.mil.bags import slide_tile_labels
from napari_wsi_mil.review.polygons import signed_area
from napari_wsi_mil.review.session import SlideReview, shape_polygons
from napari_wsi_mil.store.project import ProjectStore


@pytest.fixture(scope="module")
def model(tiny_abmil_model):
    return tiny_abmil_model


@pytest.fixture(scope="module")
def review(tmp_path_factory, model):
    """A review that analysed a new slide with a lesion, and the events it emitted."""
    from napari_wsi_mil.slide.synthetic import write_synthetic_slide

    root = tmp_path_factory.mktemp("review-slide")
    slide = write_synthetic_slide(
        root / "lesion.tiff", width=1024, height=768, seed=11, lesion_fraction=0.15
    )
    review = SlideReview(root / "proj", model, device="cpu", gallery_size=3)
    events = []
    for name in ("analysed", "gallery_changed", "threshold_changed", "normalisation_changed"):
        getattr(review, name).connect(lambda value, name=name: events.append((name, value)))
    stages = []
    analysis = review.analyse(slide.path, on_progress=lambda p: stages.append(p.stage))
    assert {"tiling", "extract", "infer"} <= set(stages)
    assert events == [("analysed", analysis), ("gallery_changed", review.gallery)]
    events.clear()
    return review, events


def test_import_needs_neither_qt_nor_napari():
    code = (
        "import sys, napari_wsi_mil.review.session; "
        "print(sorted(m for m in ('qtpy', 'napari', 'magicgui', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_analysis_with_gallery_summary_and_live_settings(review):
    review, events = review
    a = review.analysis
    assert a.slide_id == "lesion" and len(a.attention) == len(a.grid) > 6
    g = review.gallery
    assert len(g.top) == len(g.bottom) == len(g.top_images) == 3
    assert a.attention[g.top[0]] == a.attention.max()
    assert a.attention[g.bottom[0]] == a.attention.min()
    note = review.analysis_note()
    assert note.startswith(f"{len(a.grid)} patches analysed") and all(w in note for w in a.warnings)
    assert review.summary().startswith(f"P(tumour) = {a.probability:.3f} -> ")

    review.threshold = 0.0
    review.threshold = 0.0  # unchanged: no event
    assert events == [("threshold_changed", 0.0)]
    assert review.summary().endswith(f"{len(a.grid)} of {len(a.grid)} tiles >= 0.00")
    review.normalisation = "raw"
    assert events[-1] == ("normalisation_changed", "raw")
    assert review.heatmap_legend("attention") == (
        "attention (raw weights)",
        "least",
        "most attended",
    )
    with pytest.raises(ParamError, match="normalisation 'log'"):
        review.normalisation = "log"
    review.gallery_size = 2
    assert events[-1] == ("gallery_changed", review.gallery) and len(review.gallery.top) == 2
    assert review.paint_step() == a.grid.geometry.stride_level0 // 4


def test_painted_and_drawn_annotations_become_stored_tile_labels(review):
    review, _ = review
    grid = review.analysis.grid
    f = review.paint_step()
    size0 = grid.geometry.patch_size_level0
    painted = np.zeros((768 // f, 1024 // f), np.uint8)
    (x0, y0), (x1, y1), (x2, y2) = grid.coords[:3]
    painted[y0 // f : (y0 + size0) // f, x0 // f : (x0 + size0) // f] = 1  # patch 0: tumour
    painted[y1 // f : (y1 + size0) // f, x1 // f : (x1 + size0) // f] = 2  # patch 1: normal
    # a raster pixel i starts at level-0 i * f: napari puts its centre at (i + 1/2) f - 1/2
    layer_scale, layer_translate = (f, f), (f / 2 - 0.5, f / 2 - 0.5)
    # a normal rectangle over patch 2 in world (y, x) of a slide layer at scale 1
    box = np.array([[y2, x2], [y2, x2 + size0], [y2 + size0, x2 + size0], [y2 + size0, x2]])
    shapes = [(box - 0.5, "rectangle", "normal"), (box[:2] - 0.5, "line", "tumour")]
    stored = []
    review.tile_labels_stored.connect(stored.append)
    labels = review.store_tile_labels([(painted, layer_scale, layer_translate)], shapes)
    assert labels[:3].tolist() == [1, 0, 0] and (labels[3:] == -1).all()
    assert len(stored) == 1 and stored[0] is labels
    assert (
        review.tile_labels_note()
        == f"tile labels stored: 1 tumour, 2 normal, {len(grid) - 3} unknown"
    )
    on_disk = slide_tile_labels(ProjectStore(review.project), "lesion", 1, None)
    np.testing.assert_array_equal(on_disk, labels)
    with pytest.raises(ParamError, match="paint or draw annotations first"):
        review.tile_labels_job([], [])


def test_export_writes_geojson_tiff_and_png_at_the_reviews_threshold(review, tmp_path):
    review, _ = review
    review.threshold, review.normalisation = 0.6, "rank"
    exported = []
    review.exported_files.connect(exported.append)
    paths = review.export(tmp_path / "out")
    assert sorted(p.name for p in paths) == [
        "lesion.heatmap.ome.tif",
        "lesion.mask.geojson",
        "lesion.snapshot.png",
        "lesion.tiles.geojson",
    ]
    assert exported == [paths] and review.export_note() == f"exported 4 files to {tmp_path / 'out'}"
    mask = json.loads((tmp_path / "out" / "lesion.mask.geojson").read_text())
    positive = int((review.analysis.instance_probability >= 0.6).sum())
    assert sum(f["properties"]["measurements"]["tiles"] for f in mask["features"]) == positive


def test_inputs_are_checked_before_a_job_starts(tmp_path, model):
    review = SlideReview(tmp_path / "proj")
    with pytest.raises(ParamError, match="choose a trained model"):
        review.analyse_job(tmp_path / "slide.tiff")
    for job in (
        review.export_job,
        lambda _: review.tile_labels_job([], []),
        lambda _: review.summary(),
    ):
        with pytest.raises(ParamError, match="analyse the slide first"):
            job(tmp_path)
    review.analysis = object()  # any analysis: the folder is checked next
    with pytest.raises(ParamError, match="choose an export folder"):
        review.export_job(None)
    assert not (tmp_path / "proj").exists()


def test_choosing_a_model_starts_the_threshold_at_the_models(tmp_path):
    from napari_wsi_mil.mil.predict import save_model
    from napari_wsi_mil.mil.registry import build_model

    meta = {"in_dim": 8, "hparams": {}, "threshold": 0.8734, "features": "f", "model": "weno"}
    weno, old = tmp_path / "weno.safetensors", tmp_path / "old.safetensors"
    save_model(weno, build_model("weno", 8), {**meta, "mask_threshold": 0.8734})
    save_model(old, build_model("weno", 8), meta)  # written before the key
    review = SlideReview()
    thresholds = []
    review.threshold_changed.connect(thresholds.append)
    review.model_path = weno
    assert review.threshold == pytest.approx(0.8734)
    review.model_path = old
    assert review.threshold == 0.5 and thresholds == [pytest.approx(0.8734), 0.5]


def test_shape_polygons_drop_lines_and_turn_ellipses_into_polygons():
    corners = np.array([[0.0, 0.0], [0.0, 20.0], [10.0, 20.0], [10.0, 0.0]])  # world (y, x)
    shapes = [(corners, "ellipse", "tumour"), (corners[:2], "path", "normal")]
    tumour, normal = shape_polygons(shapes, (0.5, 0.5), (0.0, 0.0))
    assert normal == [] and len(tumour) == 1
    (ellipse,) = tumour  # level-0 (x, y): the box is 40 x 20 level-0 pixels
    assert ellipse[:, 0].min() == pytest.approx(0.5) and ellipse[:, 0].max() == pytest.approx(40.5)
    assert abs(signed_area(ellipse)) == pytest.approx(np.pi * 20 * 10, rel=0.01)
