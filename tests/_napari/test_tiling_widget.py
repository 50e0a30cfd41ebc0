import numpy as np
import pytest

from napari_wsi_mil._napari.widgets.tiling_widget import TilingWidget
from napari_wsi_mil.slide.synthetic import write_synthetic_slide
from napari_wsi_mil.store.project import ProjectStore


@pytest.fixture
def synthetic_slide(tmp_path):
    return write_synthetic_slide(
        tmp_path / "slide.tiff", width=2048, height=1536, seed=1, lesion_fraction=0.1
    )


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)


def test_tiling_widget_tiles_and_aligns(make_napari_viewer_proxy, qtbot, tmp_path, synthetic_slide):
    viewer = make_napari_viewer_proxy()
    (slide_layer,) = viewer.open(synthetic_slide.path, plugin="napari-wsi-mil")
    widget = TilingWidget(viewer)
    assert widget.slide.value is slide_layer
    widget.project.value = tmp_path / "proj"
    widget.run_button.clicked.emit()
    _wait(qtbot, widget)
    assert "patches" in widget.status.value, widget.status.value
    grid_layer = viewer.layers["slide patches"]
    mask_layer = viewer.layers["slide tissue"]
    grid, _ = ProjectStore(tmp_path / "proj").read_tiles("slide")
    assert len(grid) > 0
    # the grid is drawn as cell borders: every patch's top-left raster pixel is an edge,
    # its middle is not
    k = grid_layer.metadata["pixels_per_cell"]
    rows, cols = grid.grid_index.T
    assert (grid_layer.data[rows * k, cols * k] == 1).all()
    assert (grid_layer.data[rows * k + k // 2, cols * k + k // 2] == 0).all()
    # told apart from the tissue mask: another colour
    assert not np.allclose(
        grid_layer.colormap.map(np.array([1]))[0], mask_layer.colormap.map(np.array([1]))[0]
    )
    # alignment: a patch's box on the slide is its cell's box in the grid layer
    size0 = grid.geometry.patch_size_level0
    for (x, y), (r, c) in zip(grid.coords[:5], grid.grid_index[:5], strict=True):
        edge_slide = np.asarray(slide_layer.data_to_world((y - 0.5, x - 0.5)))
        edge_grid = np.asarray(grid_layer.data_to_world((r * k - 0.5, c * k - 0.5)))
        np.testing.assert_allclose(edge_grid, edge_slide, atol=1e-6)
        far_slide = np.asarray(slide_layer.data_to_world((y + size0 - 0.5, x + size0 - 0.5)))
        far_grid = np.asarray(grid_layer.data_to_world(((r + 1) * k - 0.5, (c + 1) * k - 0.5)))
        np.testing.assert_allclose(far_grid, far_slide, atol=1e-6)
    # the mask layer covers the slide's extent
    np.testing.assert_allclose(mask_layer.extent.world[1], slide_layer.extent.world[1], rtol=0.02)


def test_tiling_widget_retiles_from_painted_mask(
    make_napari_viewer_proxy, qtbot, tmp_path, synthetic_slide
):
    viewer = make_napari_viewer_proxy()
    viewer.open(synthetic_slide.path, plugin="napari-wsi-mil")
    widget = TilingWidget(viewer)
    widget.project.value = tmp_path / "proj"
    widget.run_button.clicked.emit()
    _wait(qtbot, widget)
    mask_layer = viewer.layers["slide tissue"]
    painted = np.zeros_like(mask_layer.data)
    painted[: painted.shape[0] // 4, : painted.shape[1] // 4] = 1
    mask_layer.data = painted
    widget.retile_button.clicked.emit()
    _wait(qtbot, widget)
    grid, _ = ProjectStore(tmp_path / "proj").read_tiles("slide")
    assert len(grid) > 0
    assert grid.coords[:, 0].max() < 2048 // 4 and grid.coords[:, 1].max() < 1536 // 4


def test_tiling_widget_reports_missing_slide(make_napari_viewer_proxy, tmp_path):
    viewer = make_napari_viewer_proxy()
    widget = TilingWidget(viewer)
    widget.run_button.clicked.emit()
    assert "open a slide" in widget.status.value
    widget.retile_button.enabled = True
    widget.retile_button.clicked.emit()
    assert "show a slide's tissue mask first" in widget.status.value
    widget.source.value = "cohort CSV"
    widget.run_button.clicked.emit()
    assert "choose a cohort CSV" in widget.status.value
    widget.source.value = "slide folder"
    widget.slide_dir.value = tmp_path
    widget.run_button.clicked.emit()
    assert "no slide files" in widget.status.value
    widget.show_button.clicked.emit()
    assert "no tiled slide" in widget.status.value


def test_sample_data_opens(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_WSI_MIL_CACHE", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-wsi-mil", "synthetic_slide")
    (layer,) = viewer.layers
    assert layer.multiscale and layer.metadata["mpp"] == pytest.approx(0.5)


@pytest.fixture
def three_slides(tmp_path):
    from napari_wsi_mil.slide.synthetic import make_cohort

    return make_cohort(
        tmp_path / "cohort", n_slides=3, width=1024, height=768, lesion_fractions=(0.2,)
    )


def _cohort_widget(viewer, tmp_path, csv):
    widget = TilingWidget(viewer)
    widget.project.value = tmp_path / "proj"
    widget.source.value = "cohort CSV"
    if csv is not None:
        widget.cohort.value = csv
    widget.target_mpp.value = 1.0
    widget.patch_size.value = 32
    return widget


def test_tiling_widget_tiles_a_cohort_and_shows_any_slide(
    make_napari_viewer_proxy, qtbot, tmp_path, three_slides
):
    from napari_wsi_mil.store.cohort import read_cohort

    ids = read_cohort(three_slides.csv_path).slide_ids
    viewer = make_napari_viewer_proxy()
    widget = _cohort_widget(viewer, tmp_path, three_slides.csv_path)
    assert not widget.cohort.native.isHidden() and widget.slide.native.isHidden()
    progress = []
    show_progress = widget.show_progress
    widget.show_progress = lambda p: (progress.append(p), show_progress(p))  # seen by start
    widget.run_button.clicked.emit()
    _wait(qtbot, widget)
    # one progress step per slide, named, over the whole cohort
    steps = [(p.done, p.total, p.message) for p in progress if p.stage == "tiling"]
    assert steps[:3] == [(0, 3, ids[0]), (1, 3, ids[1]), (2, 3, ids[2])]
    assert steps[-1][:2] == (3, 3)
    assert widget.status.value.startswith("tiled 3 slides ("), widget.status.value
    store = ProjectStore(tmp_path / "proj")
    assert sorted(store.slide_ids()) == sorted(ids)
    assert len(viewer.layers) == 0  # nothing is shown until asked
    # the tiled slides are listed; showing one opens it with its mask and grid
    assert sorted(widget.tiled.choices) == sorted(ids)
    widget.tiled.value = ids[1]
    widget.show_button.clicked.emit()
    _wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == [
        ids[1],
        f"{ids[1]} tissue",
        f"{ids[1]} patches",
    ]
    grid, _ = store.read_tiles(ids[1])
    assert widget.status.value == f"{len(grid)} patches"
    # showing it again replaces the layers, showing another adds its own
    widget.show_button.clicked.emit()
    _wait(qtbot, widget)
    assert len(viewer.layers) == 3
    widget.tiled.value = ids[0]
    widget.show_button.clicked.emit()
    _wait(qtbot, widget)
    assert len(viewer.layers) == 6 and f"{ids[0]} patches" in viewer.layers
    # a second run keeps what is tiled (resume)
    widget.run_button.clicked.emit()
    _wait(qtbot, widget)
    assert "3 slides already tiled, kept" in widget.status.value, widget.status.value


def test_tiling_widget_tiles_a_folder_and_reports_bad_slides(
    make_napari_viewer_proxy, qtbot, tmp_path, three_slides
):
    folder = three_slides.csv_path.parent / "slides"
    (folder / "broken.tiff").write_bytes(b"not a tiff")
    viewer = make_napari_viewer_proxy()
    widget = _cohort_widget(viewer, tmp_path, None)
    widget.source.value = "slide folder"
    widget.slide_dir.value = folder
    widget.run_button.clicked.emit()
    _wait(qtbot, widget)
    assert widget.status.value.startswith("tiled 3 slides"), widget.status.value
    assert "FAILED broken:" in widget.status.value
    assert len(widget.tiled.choices) == 3


def test_tiling_a_cohort_can_be_cancelled(make_napari_viewer_proxy, qtbot, tmp_path, three_slides):
    viewer = make_napari_viewer_proxy()
    widget = _cohort_widget(viewer, tmp_path, three_slides.csv_path)
    show_progress = widget.show_progress

    def cancel_after_first_slide(progress):
        show_progress(progress)
        if progress.done == 1:
            widget.cancel_button.clicked.emit()

    widget.show_progress = cancel_after_first_slide  # seen by start
    widget.run_button.clicked.emit()
    _wait(qtbot, widget)
    assert "cancelled" in widget.status.value, widget.status.value
    # the slides finished before the cancel are kept, the last one is not tiled
    assert 1 <= len(ProjectStore(tmp_path / "proj").slide_ids()) < 3
