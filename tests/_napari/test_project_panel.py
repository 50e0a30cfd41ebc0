"""One project for all widgets: typed once, followed by every widget, remembered."""

import json
from pathlib import Path

from napari_wsi_mil._napari.widgets.pretrain_widget import PretrainWidget
from napari_wsi_mil._napari.widgets.project_panel import SHARED_PROJECT, ProjectPanel, config_dir
from napari_wsi_mil._napari.widgets.tiling_widget import TilingWidget
from napari_wsi_mil._napari.widgets.train_widget import TrainMilWidget


def test_widgets_share_the_project_and_the_next_launch_remembers_it(
    make_napari_viewer_proxy, tmp_path
):
    viewer = make_napari_viewer_proxy()
    panel, tiling, train = ProjectPanel(viewer), TilingWidget(viewer), TrainMilWidget(viewer)
    dropped = PretrainWidget(viewer)
    dropped.native.deleteLater()  # a closed dock must not break the others
    del dropped
    panel.project.value = tmp_path / "proj"
    assert Path(tiling.project.value) == Path(train.project.value) == tmp_path / "proj"
    train.cohort.value = tmp_path / "cohort.csv"  # typed into one widget
    assert Path(panel.cohort.value) == tmp_path / "cohort.csv"
    assert json.loads((config_dir() / "project.json").read_text()) == {
        "project": str(tmp_path / "proj"),
        "cohort": str(tmp_path / "cohort.csv"),
    }
    # a new napari session
    SHARED_PROJECT.forget()
    pretrain = PretrainWidget(viewer)
    assert Path(pretrain.project.value) == tmp_path / "proj"
    assert Path(pretrain.cohort.value) == tmp_path / "cohort.csv"


def test_project_dock_is_contributed(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, panel = viewer.window.add_plugin_dock_widget("napari-wsi-mil", "Project")
    _, tiling = viewer.window.add_plugin_dock_widget("napari-wsi-mil", "Tiling")
    panel.project.value = tmp_path
    assert Path(tiling.project.value) == tmp_path
