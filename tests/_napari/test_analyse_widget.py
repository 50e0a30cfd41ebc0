import json

import numpy as np
import pytest

from napari_wsi_mil._napari.widgets.analyse_widget import AnalyseWidget
from napari_wsi_mil.store.project import ProjectStore


@pytest.fixture(scope="module")
def model(tiny_abmil_model):
    return tiny_abmil_model


@pytest.fixture(scope="module")
def lesion(tmp_path_factory):
    from napari_wsi_mil.slide.synthetic import write_synthetic_slide

    path = tmp_path_factory.mktemp("analyse-slide") / "lesion.tiff"
    return write_synthetic_slide(path, width=1024, height=768, seed=11, lesion_fraction=0.15)


def _analysed(viewer, qtbot, project, model, lesion, before=None):
    """Open the slide, (call ``before(slide_layer)``), analyse it with the widget."""
    (slide_layer,) = viewer.open(lesion.path, plugin="napari-wsi-mil")
    if before is not None:
        before(slide_layer)
    widget = AnalyseWidget(viewer)
    assert widget.slide.value is slide_layer
    widget.project.value = project
    widget.model.value = model
    widget.device.value = "cpu"
    widget.k.value = 4
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert "patches analysed" in widget.status.value, widget.status.value
    return widget, slide_layer


def test_analyse_shows_result_layers_and_gallery(
    make_napari_viewer_proxy, qtbot, tmp_path, model, lesion
):
    viewer = make_napari_viewer_proxy()
    widget, slide_layer = _analysed(viewer, qtbot, tmp_path / "proj", model, lesion)
    a = widget.review.analysis
    assert "P(tumour) = " in widget.result.value
    att = viewer.layers["lesion attention"]
    prob = viewer.layers["lesion probability"]
    mask = viewer.layers["lesion predicted tumour"]
    assert att.data.shape == prob.data.shape == mask.data.shape == a.grid.grid_shape
    assert tuple(att.contrast_limits) == (0.0, 1.0) and att.metadata["normalisation"] == "rank"
    assert viewer.layers.selection.active.name == slide_layer.name
    # normalisation and threshold are live
    widget.normalisation.value = "raw"
    assert att.contrast_limits[1] == pytest.approx(float(a.attention.max()))
    assert np.nanmax(att.data) == pytest.approx(float(a.attention.max()))
    widget.threshold.value = 0.0
    assert mask.data.sum() == len(a.grid)
    widget.threshold.value = 1.0
    assert mask.data.sum() == (a.instance_probability >= 1.0).sum()
    # alignment: a patch's box on the slide is its pixel's box in every result layer
    size0 = a.grid.geometry.patch_size_level0
    for (x, y), (r, c) in zip(a.grid.coords[:3], a.grid.grid_index[:3], strict=True):
        for layer in (att, prob, mask):
            np.testing.assert_allclose(
                layer.data_to_world((r - 0.5, c - 0.5)),
                slide_layer.data_to_world((y - 0.5, x - 0.5)),
            )
            np.testing.assert_allclose(
                layer.data_to_world((r + 0.5, c + 0.5)),
                slide_layer.data_to_world((y + size0 - 0.5, x + size0 - 0.5)),
            )
    # gallery: k most and least attended; a click centres the view on the patch
    top = widget.gallery.indices["top"]
    assert len(top) == 4 and len(widget.gallery.indices["bottom"]) == 4
    assert a.attention[top[0]] == a.attention.max()
    widget.gallery.buttons["top"][1].click()
    x, y = a.grid.coords[top[1]]
    centre = slide_layer.data_to_world((y + size0 / 2 - 0.5, x + size0 / 2 - 0.5))
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], centre)
    widget.k.value = 2
    assert len(widget.gallery.buttons["top"]) == 2
    # analysing again updates the layers in place
    n_layers = len(viewer.layers)
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert len(viewer.layers) == n_layers and "patches analysed" in widget.status.value


def test_evidence_reads_one_heatmap_with_its_colour_bar_and_outlines_on_top(
    make_napari_viewer_proxy, qtbot, tmp_path, model, lesion
):
    from napari.utils.colormaps import ensure_colormap

    viewer = make_napari_viewer_proxy()

    def add_true_lesion(slide_layer):  # as the "Demo cohort" sample does
        outline = np.array([[100.0, 100.0], [100.0, 400.0], [300.0, 400.0], [300.0, 100.0]])
        viewer.add_shapes(
            [outline],
            shape_type="polygon",
            name="lesion true lesion",
            edge_color="cyan",
            face_color="transparent",
            scale=slide_layer.scale,
            units=slide_layer.units,
            metadata={"kind": "true_lesion"},
        )

    widget, slide_layer = _analysed(
        viewer, qtbot, tmp_path / "proj", model, lesion, before=add_true_lesion
    )
    att = viewer.layers["lesion attention"]
    prob = viewer.layers["lesion probability"]
    mask = viewer.layers["lesion predicted tumour"]
    # one heatmap visible, at half opacity; the others a click away
    assert att.visible and not prob.visible and not mask.visible
    assert att.opacity == pytest.approx(0.5) and prob.opacity == pytest.approx(0.5)
    # the true lesion outline is above the result layers
    assert viewer.layers[-1].name == "lesion true lesion"
    # the colour bar shows the visible heatmap's colormap and its ends
    bar = widget.colour_bar
    assert bar.layer.name == att.name and "attention (percentile rank)" in bar.title.value
    assert bar.low.value == "0 least" and bar.high.value == "most attended 1"
    turbo = ensure_colormap("turbo").map(np.array([0.0, 1.0]))[:, :3] * 255
    np.testing.assert_allclose(bar.strip_colours[[0, -1]], turbo, atol=2)
    widget.normalisation.value = "raw"
    assert "(raw weights)" in bar.title.value
    assert bar.high.value.endswith(f"{att.contrast_limits[1]:.3g}")
    prob.visible = True  # above attention in the layer list: its bar is shown
    assert bar.layer.name == prob.name and bar.title.value == "instance P(tumour)"
    viridis = ensure_colormap("viridis").map(np.array([1.0]))[:, :3] * 255
    np.testing.assert_allclose(bar.strip_colours[-1], viridis[0], atol=2)
    prob.visible = att.visible = False
    assert bar.layer is None and bar.native.isHidden()
    att.visible = True
    assert bar.layer.name == att.name
    # a binary model: no class map, no class legend
    assert "lesion predicted class" not in viewer.layers
    assert widget.class_legend.native.isHidden()
    # a gallery click outlines that patch's level-0 box on the slide, one at a time
    a = widget.review.analysis
    size0 = a.grid.geometry.patch_size_level0
    for k in (0, 2):
        widget.gallery.buttons["top"][k].click()
        index = widget.gallery.indices["top"][k]
        outline = viewer.layers["lesion gallery patch"]
        assert outline.nshapes == 1 and outline.shape_type == ["rectangle"]
        x, y = a.grid.coords[index]
        corners = [slide_layer.data_to_world((y - 0.5, x - 0.5))]
        corners.append(slide_layer.data_to_world((y + size0 - 0.5, x + size0 - 0.5)))
        box = np.array([outline.data_to_world(v) for v in outline.data[0]])
        np.testing.assert_allclose(box.min(0), corners[0], atol=1e-6)
        np.testing.assert_allclose(box.max(0), corners[1], atol=1e-6)
    names = [layer.name for layer in viewer.layers]
    assert names[-2:] == ["lesion gallery patch", "lesion true lesion"]
    assert viewer.layers.selection.active.name == slide_layer.name


def test_painted_and_drawn_annotations_become_tile_labels(
    make_napari_viewer_proxy, qtbot, tmp_path, model, lesion
):
    from napari_wsi_mil.mil.bags import slide_tile_labels

    viewer = make_napari_viewer_proxy()
    widget, slide_layer = _analysed(viewer, qtbot, tmp_path / "proj", model, lesion)
    grid = widget.review.analysis.grid
    widget.paint_button.clicked.emit()
    paint = viewer.layers["lesion annotations"]
    assert paint.mode == "paint" and paint.selected_label == 1
    f = paint.metadata["level0_per_pixel"]  # 16 level-0 px: a quarter of a 64-px patch
    assert f == grid.geometry.stride_level0 // 4
    (x0, y0), (x1, y1) = grid.coords[0], grid.coords[1]
    data = paint.data.copy()
    data[y0 // f : (y0 + 64) // f, x0 // f : (x0 + 64) // f] = 1  # patch 0: tumour
    data[y1 // f : (y1 + 64) // f, x1 // f : (x1 + 64) // f] = 2  # patch 1: normal
    paint.data = data
    # a normal rectangle drawn in world coordinates over patch 2
    widget.shapes_button.clicked.emit()
    widget.shape_class.value = "normal"
    shapes = viewer.layers["lesion annotation shapes"]
    x2, y2 = grid.coords[2]
    corners = [(y2, x2), (y2 + 64, x2 + 64)]  # level-0 continuous (y, x)
    world = [np.asarray(slide_layer.data_to_world((y - 0.5, x - 0.5))) for y, x in corners]
    shapes.add_rectangles(np.array([shapes.world_to_data(w) for w in world]))
    assert shapes.features["label"].tolist() == ["normal"]
    widget.labels_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert "tile labels stored: 1 tumour, 2 normal" in widget.status.value, widget.status.value
    stored = slide_tile_labels(ProjectStore(tmp_path / "proj"), "lesion", 1, None)
    assert stored[:3].tolist() == [1, 0, 0] and (stored[3:] == -1).all()


def test_export_writes_qupath_geojson_tiff_and_png(
    make_napari_viewer_proxy, qtbot, tmp_path, model, lesion
):
    import tifffile
    from matplotlib.image import imread

    from review_fixtures import check_qupath_geojson

    viewer = make_napari_viewer_proxy()
    widget, _ = _analysed(viewer, qtbot, tmp_path / "proj", model, lesion)
    widget.threshold.value = 0.6
    widget.export_dir.value = tmp_path / "out"
    widget.export_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert "exported 4 files" in widget.status.value, widget.status.value
    out = tmp_path / "out"
    tiles = json.loads((out / "lesion.tiles.geojson").read_text())
    check_qupath_geojson(tiles, "detection", 1024, 768)
    mask = json.loads((out / "lesion.mask.geojson").read_text())
    check_qupath_geojson(mask, "annotation", 1024, 768)
    n_positive = int((widget.review.analysis.instance_probability >= 0.6).sum())
    assert sum(f["properties"]["measurements"]["tiles"] for f in mask["features"]) == n_positive
    with tifffile.TiffFile(out / "lesion.heatmap.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].shape == (2, *widget.review.analysis.grid.grid_shape)
    assert imread(out / "lesion.snapshot.png").shape[1] == 1400


def test_cancel_and_missing_inputs(make_napari_viewer_proxy, qtbot, tmp_path, model, lesion):
    viewer = make_napari_viewer_proxy()
    widget = AnalyseWidget(viewer)
    widget.run_button.clicked.emit()
    assert "open a slide" in widget.status.value
    viewer.open(lesion.path, plugin="napari-wsi-mil")
    widget.run_button.clicked.emit()
    assert "choose a trained model" in widget.status.value
    widget.paint_button.clicked.emit()
    assert "analyse the slide first" in widget.status.value
    widget.project.value = tmp_path / "proj"
    widget.model.value = model
    widget.run_button.clicked.emit()
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert "cancel" in widget.status.value and widget.review.analysis is None
    assert not (tmp_path / "proj" / "predictions").exists()


def test_choosing_a_model_starts_the_mask_threshold_at_the_models(
    make_napari_viewer_proxy, tmp_path
):
    from napari_wsi_mil.mil.predict import save_model
    from napari_wsi_mil.mil.registry import build_model

    meta = {"in_dim": 8, "hparams": {}, "threshold": 0.8734, "features": "f"}
    weno, old = tmp_path / "weno.safetensors", tmp_path / "old.safetensors"
    save_model(weno, build_model("weno", 8), {**meta, "model": "weno", "mask_threshold": 0.8734})
    save_model(old, build_model("weno", 8), {**meta, "model": "weno"})  # written before the key
    widget = AnalyseWidget(make_napari_viewer_proxy())
    assert widget.threshold.value == 0.5
    widget.model.value = weno
    assert widget.threshold.value == pytest.approx(0.8734)
    widget.model.value = old
    assert widget.threshold.value == 0.5


def test_a_three_class_model_shows_its_classes(
    make_napari_viewer_proxy, qtbot, tmp_path, tiny_clam_mb_model, lesion
):
    from conftest import THREE_CLASSES
    from napari_wsi_mil.review.heatmap import class_colour

    viewer = make_napari_viewer_proxy()
    widget, _ = _analysed(viewer, qtbot, tmp_path / "proj", tiny_clam_mb_model, lesion)
    a = widget.review.analysis
    evidence = THREE_CLASSES[a.evidence_class]
    assert widget.result.value.startswith(f"{a.predicted_class} (P = ")
    assert f"P(not normal) = {a.probability:.3f}" in widget.result.value
    class_map = viewer.layers["lesion predicted class"]
    per_class = [viewer.layers[f"lesion attention: {c}"] for c in THREE_CLASSES]
    assert not class_map.visible and not any(layer.visible for layer in per_class)
    bar, legend = widget.colour_bar, widget.class_legend
    assert bar.title.value == f"attention: {evidence} (percentile rank)"
    assert legend.native.isHidden()
    # the class map: the mask's tiles in the evidence class, its name under the pointer
    widget.threshold.value = float(np.median(a.instance_probability))
    mask = viewer.layers["lesion predicted tumour"].data
    np.testing.assert_array_equal(class_map.data, mask * (a.evidence_class + 1))
    r, c = np.argwhere(class_map.data > 0)[0]
    class_map.visible = True
    assert not legend.native.isHidden()
    assert legend.classes == [(name, class_colour(k)) for k, name in enumerate(THREE_CLASSES)]
    assert all(name in legend.value for name in THREE_CLASSES)
    status = class_map.get_status(class_map.data_to_world((r, c)), world=True)
    assert f"class: {evidence}" in status["coordinates"]
    rgba = class_map.colormap.map(np.array([a.evidence_class + 1]))[0]
    assert tuple(np.round(rgba[:3] * 255).astype(int)) == class_colour(a.evidence_class)
    class_map.visible = False
    assert legend.native.isHidden()
    # each class's attention heatmap, with its own colour bar title
    per_class[2].visible = True
    assert bar.layer.name == per_class[2].name
    assert bar.title.value == "attention: lusc (percentile rank)"
    np.testing.assert_array_equal(
        np.isfinite(per_class[2].data), np.isfinite(viewer.layers["lesion attention"].data)
    )
