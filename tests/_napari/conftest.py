"""Every napari test remembers its shared project in its own config folder, never the
user's (the widgets' project and cohort fields are shared and remembered)."""

import pytest


@pytest.fixture(autouse=True)
def own_config_dir(tmp_path_factory, monkeypatch):
    from napari_wsi_mil._napari.widgets.project_panel import SHARED_PROJECT

    monkeypatch.setenv("NAPARI_WSI_MIL_CONFIG", str(tmp_path_factory.mktemp("config")))
    SHARED_PROJECT.forget()
    yield
    SHARED_PROJECT.forget()
