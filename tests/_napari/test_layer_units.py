"""Every layer the plugin adds has the units of the slide layer it lies on, so napari
keeps rendering in physical units and never shows "Inconsistent units across layers"
(napari 0.9 checks ``viewer.layers.extent.units`` when the canvas is drawn and sends a
warning notification when it is None)."""

import numpy as np
import pytest

from napari_wsi_mil._napari.widgets.analyse_widget import AnalyseWidget
from napari_wsi_mil._napari.widgets.pretrain_widget import PretrainWidget
from napari_wsi_mil._napari.widgets.tiling_widget import TilingWidget
from napari_wsi_mil.slide.synthetic import write_synthetic_slide
from napari_wsi_mil.store.project import ProjectStore

INCONSISTENT = "Inconsistent units"


@pytest.fixture
def synthetic_slide(tmp_path):
    return write_synthetic_slide(
        tmp_path / "slide.tiff", width=1024, height=768, seed=1, lesion_fraction=0.1
    )


def _unit_warnings(viewer) -> list[str]:
    """Draw the canvas (where napari checks units) and return the unit notifications."""
    from napari.utils.notifications import notification_manager

    viewer.screenshot(canvas_only=True)
    return [str(n.message) for n in notification_manager.records if INCONSISTENT in str(n.message)]


def test_added_layers_share_the_slide_units(
    make_napari_viewer_proxy, qtbot, tmp_path, synthetic_slide
):
    from napari.utils.notifications import notification_manager

    from napari_wsi_mil.review.analyse import SlideAnalysis
    from napari_wsi_mil.review.gallery import build_gallery

    notification_manager.records.clear()
    viewer = make_napari_viewer_proxy()
    (slide_layer,) = viewer.open(synthetic_slide.path, plugin="napari-wsi-mil")
    assert str(slide_layer.units[-1]) == "micrometer"
    assert _unit_warnings(viewer) == []

    # Tiling: tissue mask and patch grid
    tiling = TilingWidget(viewer)
    tiling.project.value = tmp_path / "proj"
    tiling.patch_size.value = 64
    tiling.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not tiling.busy, timeout=60_000)
    assert "patches" in tiling.status.value, tiling.status.value
    grid, _ = ProjectStore(tmp_path / "proj").read_tiles("slide")

    # CluSiam clusters (the job's result handed to the widget's handler)
    from napari_wsi_mil.slide import open_slide

    clusters = np.arange(len(grid)) % 3
    PretrainWidget(viewer).show_cluster_layer((open_slide(synthetic_slide.path), grid, clusters))

    # Analyse slide: result layers, paint and shapes layers
    n = len(grid)
    analysis = SlideAnalysis(
        "slide", synthetic_slide.path, grid, np.full(n, 1 / n), np.linspace(0, 1, n), 0.5, 0,
        0.5, "p", "abmil", "f", (1024, 768), clusters=clusters,
    )  # fmt: skip
    analyse = AnalyseWidget(viewer)
    analyse.review.accept_analysis(
        (analysis, build_gallery(synthetic_slide.path, grid, analysis.attention, 2))
    )
    analyse.add_paint_layer()
    analyse.add_shapes_layer()

    names = {layer.name for layer in viewer.layers}
    for name in (
        "slide tissue",
        "slide patches",
        "slide clusters",
        "slide attention",
        "slide probability",
        "slide predicted tumour",
        "slide annotations",
        "slide annotation shapes",
    ):
        assert name in names, names
    assert _unit_warnings(viewer) == []
    assert viewer.layers.extent.units is not None
    for layer in viewer.layers:
        assert tuple(layer.units) == tuple(slide_layer.units), layer.name
