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
    assert grid_layer.data.sum() == len(grid) > 0
    # alignment: the centre of a patch on the slide and its pixel in the grid layer
    # land on the same world coordinates
    size0 = grid.geometry.patch_size_level0
    for (x, y), (r, c) in zip(grid.coords[:5], grid.grid_index[:5], strict=True):
        centre = (y + size0 / 2 - 0.5, x + size0 / 2 - 0.5)
        world_slide = np.asarray(slide_layer.data_to_world(centre))
        world_grid = np.asarray(grid_layer.data_to_world((r, c)))
        np.testing.assert_allclose(world_grid, world_slide, atol=1e-6)
        # and the patch's top-left edge equals the grid pixel's edge
        edge_slide = np.asarray(slide_layer.data_to_world((y - 0.5, x - 0.5)))
        edge_grid = np.asarray(grid_layer.data_to_world((r - 0.5, c - 0.5)))
        np.testing.assert_allclose(edge_grid, edge_slide, atol=1e-6)
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


def test_sample_data_opens(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_WSI_MIL_CACHE", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-wsi-mil", "synthetic_slide")
    (layer,) = viewer.layers
    assert layer.multiscale and layer.metadata["mpp"] == pytest.approx(0.5)
