"""A setting refused before a job starts is a notification, never a console traceback."""

import pytest
import torch

from napari_wsi_mil._napari.widgets.pretrain_widget import PretrainWidget


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_device_is_a_notification(make_napari_viewer_proxy, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    widget = PretrainWidget(make_napari_viewer_proxy())
    widget.project.value = tmp_path
    widget.out.value = tmp_path / "enc.safetensors"
    widget.device.value = "cuda"
    widget.run_button.clicked.emit()  # raises into Qt (a traceback) without the guard
    assert shown == ["device 'cuda' does not exist: this machine has no CUDA device"]
    assert "does not exist" in widget.status.value and not widget.busy
    assert not (tmp_path / "enc.safetensors").exists()
