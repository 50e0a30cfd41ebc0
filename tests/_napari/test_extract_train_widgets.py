from mil_fixtures import feature_cohort
from napari_wsi_mil._napari.widgets.extract_widget import ExtractWidget
from napari_wsi_mil._napari.widgets.train_widget import TrainMilWidget
from napari_wsi_mil.features.extract import read_features
from napari_wsi_mil.store.cohort import write_cohort
from pretrain_fixtures import tiny_cohort


def test_extract_widget_all_slides_and_current_slide(make_napari_viewer_proxy, qtbot, tmp_path):
    store, cohort = tiny_cohort(tmp_path, n_slides=2)
    viewer = make_napari_viewer_proxy()
    widget = ExtractWidget(viewer)
    widget.project.value = store.root
    widget.encoder.value = "random"
    widget.workers.value = 0
    widget.device.value = "cpu"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert "2 slides extracted" in widget.status.value, widget.status.value
    assert read_features(store, "random", store.slide_ids()[0]).shape[1] == 512
    # only the slide on screen, under another name
    viewer.open(cohort.entries[1].path, plugin="napari-wsi-mil")
    widget.current_only.value = True
    widget.name.value = "one"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert store.result_ids("features", "one") == [cohort.entries[1].slide_id]


def test_train_widget_trains_and_plots(make_napari_viewer_proxy, qtbot, tmp_path):
    store, cohort, _ = feature_cohort(tmp_path, n_cases=12)
    csv = write_cohort(cohort, tmp_path / "cohort.csv")
    viewer = make_napari_viewer_proxy()
    widget = TrainMilWidget(viewer)
    widget.project.value = store.root
    assert widget.features.choices == ("f",)
    widget.features.value = "f"
    widget.cohort.value = csv
    widget.epochs.value = 4
    widget.out.value = tmp_path / "run"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert "model:" in widget.status.value and "test: AUC" in widget.status.value
    assert " tumour / " in widget.status.value  # n per class beside the AUC
    assert len(widget.canvas.series["loss"][0]) == 4
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_train_widget_without_features_explains(make_napari_viewer_proxy, tmp_path):
    widget = TrainMilWidget(make_napari_viewer_proxy())
    widget.project.value = tmp_path
    widget.run_button.clicked.emit()
    assert "extract them first" in widget.status.value


def test_train_status_puts_the_aucs_first_and_wraps(make_napari_viewer_proxy, tmp_path):
    from types import SimpleNamespace

    widget = TrainMilWidget(make_napari_viewer_proxy())
    path = tmp_path / "a-long-folder-name" / "another-long-folder" / "model.safetensors"
    counts = {"n_positive": 12, "n_negative": 10}
    metrics = {
        "val": {"auc": 0.9, **counts},
        "test": {"auc": 0.8, "auc_interval": [0.6, 0.95], **counts},
        "warnings": ["the val split has 3 tumour ..."],
    }
    widget.show_result(SimpleNamespace(model_path=path, metrics=metrics))
    assert widget.status.value == (
        "val: AUC 0.90, n = 12 tumour / 10 normal; "
        "test: AUC 0.80 [0.60-0.95], n = 12 tumour / 10 normal; "
        f"Warning: the val split has 3 tumour ...; model: {path}"
    )
    assert widget.status.native.wordWrap()


def test_extract_encoder_field_has_a_file_picker(make_napari_viewer_proxy, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    widget = ExtractWidget(make_napari_viewer_proxy())
    chosen = str(tmp_path / "weaksupcon.safetensors")
    asked = []
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a: asked.append(a) or (chosen, ""))
    widget.encoder_file_button.clicked.emit()
    assert widget.encoder.value == chosen and len(asked) == 1
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a: ("", ""))  # cancelled
    widget.encoder_file_button.clicked.emit()
    assert widget.encoder.value == chosen


def test_train_widget_shows_the_cohorts_classes_and_trains_three(
    make_napari_viewer_proxy, qtbot, tmp_path
):
    from napari_wsi_mil.mil import MODELS
    from napari_wsi_mil.mil.predict import read_model_metadata

    three = ("normal", "luad", "lusc")
    store, cohort, _ = feature_cohort(tmp_path, n_cases=12, classes=three)
    csv = write_cohort(cohort, tmp_path / "cohort.csv")
    widget = TrainMilWidget(make_napari_viewer_proxy())
    assert widget.model.choices == MODELS and "clam-mb" in widget.model.choices
    widget.project.value = store.root
    widget.features.value = "f"
    widget.cohort.value = csv
    assert widget.classes.value == "classes: normal, luad, lusc (negative: normal)"
    widget.class_order.value = "normal, lusc, luad"
    assert widget.classes.value == "classes: normal, lusc, luad (negative: normal)"
    widget.class_order.value = "normal,lusc"
    assert widget.classes.value.startswith("classes: ? (")
    assert "unknown label 'luad'" in widget.classes.value
    widget.class_order.value = ""
    # a binary-only model: the core's one line, no traceback
    widget.model.value = "weno"
    widget.out.value = tmp_path / "weno"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert widget.status.value.startswith("error: weno is for two classes")
    widget.model.value = "clam-mb"
    widget.class_order.value = "normal,lusc,luad"
    widget.epochs.value = 2
    widget.out.value = tmp_path / "run"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert "test: " in widget.status.value and "model:" in widget.status.value
    assert " lusc / " in widget.status.value or " lusc," in widget.status.value
    meta = read_model_metadata(tmp_path / "run" / "model.safetensors")
    assert meta["classes"] == ["normal", "lusc", "luad"]
