"""The Train and Embedding widgets list a feature set as soon as an extraction ends."""

from napari_wsi_mil._napari.widgets.embedding_widget import EmbeddingWidget
from napari_wsi_mil._napari.widgets.extract_widget import ExtractWidget
from napari_wsi_mil._napari.widgets.train_widget import TrainMilWidget
from pretrain_fixtures import tiny_cohort


def test_a_new_feature_set_appears_in_the_other_widgets(make_napari_viewer_proxy, qtbot, tmp_path):
    store, _ = tiny_cohort(tmp_path, n_slides=2)
    viewer = make_napari_viewer_proxy()
    train, embedding = TrainMilWidget(viewer), EmbeddingWidget(viewer)
    for widget in (train, embedding):
        widget.project.value = store.root
    assert train.features.choices == () and embedding.feature_set.choices == ()
    extract = ExtractWidget(viewer)
    extract.project.value = store.root
    extract.encoder.value = "random"
    extract.name.value = "fresh"
    extract.workers.value = 0
    extract.device.value = "cpu"
    extract.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not extract.busy, timeout=120_000)
    assert "2 slides extracted" in extract.status.value, extract.status.value
    assert train.features.choices == ("fresh",) and train.features.value == "fresh"
    assert embedding.feature_set.choices == ("fresh",)
