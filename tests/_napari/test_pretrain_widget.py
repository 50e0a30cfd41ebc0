import pytest

from napari_wsi_mil._napari.widgets.pretrain_widget import PretrainWidget
from napari_wsi_mil.pretrain.encoder_file import load_encoder
from pretrain_fixtures import tiny_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return tiny_cohort(tmp_path_factory.mktemp("pretrain-widget"))


def _widget(viewer, cohort, tmp_path, **values):
    store, table = cohort
    widget = PretrainWidget(viewer)
    widget.project.value = store.root
    widget.cohort.value = table.source
    widget.out.value = tmp_path / "enc.safetensors"
    widget.image_size.value = 32
    widget.batch_size.value = 8
    widget.device.value = "cpu"
    for key, value in values.items():
        getattr(widget, key).value = value
    return widget


def test_trains_and_plots_loss(make_napari_viewer_proxy, qtbot, cohort, tmp_path):
    viewer = make_napari_viewer_proxy()
    widget = _widget(viewer, cohort, tmp_path, epochs=1, steps=3)
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert "encoder written" in widget.status.value, widget.status.value
    assert len(widget.canvas.series["loss"][0]) == 3
    # the spread per bag group is plotted beside the loss
    assert {"batch", "negative", "positive"} <= set(widget.spread_canvas.series)
    assert len(widget.spread_canvas.series["positive"][0]) == 3
    assert load_encoder(tmp_path / "enc.safetensors").metadata["method"] == "weaksupcon"


def test_cancel_keeps_viewer_responsive(make_napari_viewer_proxy, qtbot, cohort, tmp_path):
    viewer = make_napari_viewer_proxy()
    widget = _widget(viewer, cohort, tmp_path, epochs=50, steps=50, method="simclr")
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: len(widget.canvas.series.get("loss", ([], []))[0]) >= 1, timeout=60_000)
    widget.pause_button.clicked.emit()
    assert widget.pause_button.text == "Resume"
    widget.pause_button.clicked.emit()
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert "cancel" in widget.status.value
    assert not (tmp_path / "enc.safetensors").exists()


def test_clusiam_clusters_on_slide(make_napari_viewer_proxy, qtbot, cohort, tmp_path):
    store, table = cohort
    viewer = make_napari_viewer_proxy()
    widget = _widget(viewer, cohort, tmp_path, epochs=1, steps=1, method="clusiam")
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    path = table.entries[0].path
    viewer.open(path, plugin="napari-wsi-mil")
    widget.clusters_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert not widget.clusters_button.native.isHidden()  # shown for CluSiam only
    widget.method.value = "weaksupcon"
    assert widget.clusters_button.native.isHidden()
    layer = viewer.layers[f"{path.stem} clusters"]
    grid, _ = store.read_tiles(path.stem)
    assert (layer.data > 0).sum() == len(grid)
    assert "clusters occupied" in widget.status.value


def test_estimate_before_start_and_whole_run_progress(
    make_napari_viewer_proxy, qtbot, cohort, tmp_path
):
    viewer = make_napari_viewer_proxy()
    widget = _widget(viewer, cohort, tmp_path, epochs=2, steps=2)
    widget.estimate_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    status = widget.status.value
    assert status.startswith("about ") and "x 4 steps" in status, status
    assert "the cpu-quick preset: about" in status
    stages = []
    widget.run_button.clicked.emit()
    widget.worker.yielded.connect(lambda e: stages.append((e.stage, e.done, e.total)))
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert stages[-1] == ("pretraining", 4, 4)  # one bar over both epochs
    assert widget.canvas.series["loss"][0] == [1, 2, 3, 4]


def test_run_warnings_reach_the_user(make_napari_viewer_proxy, tmp_path):
    """A result carrying a warning (here a collapse) -> a napari warning notification
    and the status line, which wraps and keeps the encoder path."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    from napari_wsi_mil.pretrain.trainer import PretrainConfig, PretrainResult, collapse_warning

    warning = collapse_warning(PretrainConfig(method="weaksupcon"), 0.001)
    assert warning is not None
    result = PretrainResult(tmp_path / "enc.safetensors", tmp_path / "ckpt", warnings=[warning])
    widget = PretrainWidget(make_napari_viewer_proxy())
    notification_manager.records.clear()
    widget.show_result(result)
    shown = [n for n in notification_manager.records if str(n.message) == warning]
    assert len(shown) == 1 and shown[0].severity == NotificationSeverity.WARNING
    assert warning in widget.status.value and "encoder written" in widget.status.value
    assert str(tmp_path / "enc.safetensors") in widget.status.value
    assert widget.status.native.wordWrap()
    # no warning, no notification
    notification_manager.records.clear()
    widget.show_result(PretrainResult(tmp_path / "enc.safetensors", tmp_path / "ckpt"))
    assert notification_manager.records == []
    assert widget.status.value.startswith("encoder written")


def test_preset_fills_fields_and_collapse_advice_names_them(make_napari_viewer_proxy, qtbot):
    """Choosing cpu-quick fills the fields; a collapse error of the running job names the
    widget's fields (not CLI flags) and "Apply advice" sets them."""
    from napari_wsi_mil.pretrain.collapse import CollapseError
    from napari_wsi_mil.pretrain.presets import CPU_QUICK, PRESETS

    widget = PretrainWidget(make_napari_viewer_proxy())

    def collapsing_job():
        yield from ()
        raise CollapseError("the projections collapsed.", {"preset": CPU_QUICK, "lr": 0.001})

    widget.start(collapsing_job, widget.show_result)
    qtbot.waitUntil(lambda: not widget.busy, timeout=10_000)
    assert '"preset" cpu-quick' in widget.status.value
    assert '"learning rate (0 = default)" 0.001' in widget.status.value
    assert '"allow collapse"' in widget.status.value and "--" not in widget.status.value
    assert widget.advice_button.enabled
    widget.advice_button.clicked.emit()
    preset = PRESETS[CPU_QUICK]
    assert widget.preset.value == CPU_QUICK
    assert widget.train_from.value == preset["train_from"]
    assert widget.image_size.value == preset["image_size"]
    assert widget.negative_weight.value == preset["negative_weight"]
    config = widget.config()
    assert config.preset == CPU_QUICK and config.augment == preset["augment"]
    assert config.num_workers == preset["num_workers"]  # a preset setting without a field
    widget.epochs.value = 2  # a field changed after choosing the preset wins
    assert widget.config().epochs == 2
