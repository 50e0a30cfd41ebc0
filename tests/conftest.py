"""Shared fixtures. Real data lives in ../shared/data beside the repository; tests
that need it skip when it is absent (it is never copied into the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_wsi_mil.demo_sample import DemoSampleSettings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


#: The "Demo cohort" sample small enough for a test (a few seconds); the defaults are
#: what users get.
SMALL_DEMO_SAMPLE = DemoSampleSettings(
    slides=4, rows=3, cols=4, lesion_fractions=(0.3,), test_fraction=0.5, epochs=5
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``, or skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


def shared_files(subdir: str) -> list[Path]:
    """Files of a ``../shared/data`` subfolder for parametrisation (empty when absent)."""
    folder = SHARED_DATA / subdir
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


@pytest.fixture(autouse=True)
def own_config_dir(tmp_path_factory, monkeypatch):
    """Every test remembers the widgets' shared project in its own config folder,
    never the user's (``_napari/widgets/project_panel.py``)."""
    import sys

    monkeypatch.setenv("NAPARI_WSI_MIL_CONFIG", str(tmp_path_factory.mktemp("config")))
    panel = sys.modules.get("napari_wsi_mil._napari.widgets.project_panel")
    if panel is not None:  # not imported here: it imports Qt
        panel.SHARED_PROJECT.forget()
    yield
    panel = sys.modules.get("napari_wsi_mil._napari.widgets.project_panel")
    if panel is not None:
        panel.SHARED_PROJECT.forget()


@pytest.fixture(scope="session")
def tiny_abmil_model(tmp_path_factory) -> Path:
    """A tiny AB-MIL model file on random-encoder features of 32-px patches at 1 um/px
    (trained once per run; the review model's and the Analyse widget's tests read it)."""
    from napari_wsi_mil.features.extract import extract_features_job
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.mil.train import MilConfig, train_mil_job
    from pretrain_fixtures import tiny_cohort

    root = tmp_path_factory.mktemp("tiny-abmil")
    store, cohort = tiny_cohort(root, n_slides=4)
    run_job(extract_features_job(store, store.slide_ids(), "random", "rand", num_workers=0))
    result = run_job(
        train_mil_job(store, cohort, "rand", root / "run", MilConfig(epochs=5, threads=1))
    )
    return result.model_path


#: The classes of the three-class review model (negative first).
THREE_CLASSES = ("normal", "luad", "lusc")


@pytest.fixture(scope="session")
def tiny_clam_mb_model(tmp_path_factory) -> Path:
    """A tiny three-class CLAM-MB model (``THREE_CLASSES``) on random-encoder features of
    32-px patches at 1 um/px: the slides of ``tiny_abmil_model``'s kind, slide ``i`` of
    class ``i % 3`` (trained once per run; the multi-class review tests read it)."""
    from dataclasses import replace

    from napari_wsi_mil.features.extract import extract_features_job
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.mil.train import MilConfig, train_mil_job
    from napari_wsi_mil.store.cohort import Cohort
    from pretrain_fixtures import tiny_cohort

    root = tmp_path_factory.mktemp("tiny-clam-mb")
    store, binary = tiny_cohort(root, n_slides=6)
    entries = [replace(e, label=i % 3) for i, e in enumerate(binary)]
    cohort = Cohort(entries, classes=THREE_CLASSES)
    run_job(extract_features_job(store, store.slide_ids(), "random", "rand", num_workers=0))
    config = MilConfig(
        model="clam-mb", epochs=3, threads=1, hparams={"embed_dim": 32, "attention_dim": 16}
    )
    return run_job(train_mil_job(store, cohort, "rand", root / "run", config)).model_path
