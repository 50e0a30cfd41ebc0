"""The "Demo cohort" sample in a viewer: it opens, and "Analyse slide" finds its model."""

from pathlib import Path

import pytest

from conftest import SMALL_DEMO_SAMPLE
from napari_wsi_mil._napari.widgets.analyse_widget import AnalyseWidget


def test_demo_cohort_sample_opens_and_prefills_analyse(
    make_napari_viewer_proxy, qtbot, tmp_path, monkeypatch
):
    from napari_wsi_mil.demo_sample import sample_dir

    monkeypatch.setenv("NAPARI_WSI_MIL_CACHE", str(tmp_path))
    viewer = make_napari_viewer_proxy()
    before = AnalyseWidget(viewer)  # docked before the sample is opened
    assert before.model.value is None
    layers = viewer.open_sample("napari-wsi-mil", "demo_cohort", settings=SMALL_DEMO_SAMPLE)
    slide, outline = layers
    root = sample_dir(tmp_path, SMALL_DEMO_SAMPLE)
    model, project = root / "run" / "model.safetensors", root / "analysis"
    assert slide.multiscale and slide.rgb and slide.metadata["mpp"] == pytest.approx(0.5)
    assert Path(slide.metadata["slide_path"]).parent == root / "cohort" / "slides"
    assert outline.name == f"{slide.name} true lesion" and len(outline.data) >= 1
    assert tuple(outline.scale) == tuple(slide.scale)
    after = AnalyseWidget(viewer)  # docked after
    for widget in (before, after):
        assert widget.slide.value is slide
        assert Path(widget.model.value) == model and Path(widget.project.value) == project
    # the user clicks Analyse at once
    after.device.value = "cpu"
    after.k.value = 2
    after.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not after.busy, timeout=120_000)
    assert "patches analysed" in after.status.value, after.status.value
    assert f"{slide.name} attention" in viewer.layers
    assert (project / "project.json").is_file()
