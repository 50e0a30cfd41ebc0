"""The package's public face: its jobs are listed at the top level and imported lazily."""

import inspect
import subprocess
import sys

import pytest

import napari_wsi_mil

HEAVY = ("torch", "PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "napari")


def test_package_import_lists_jobs_without_importing_heavy_modules():
    code = (
        "import sys, napari_wsi_mil;"
        "assert 'tile_slides_job' in dir(napari_wsi_mil);"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", napari_wsi_mil.__all__)
def test_every_public_name_resolves(name):
    value = getattr(napari_wsi_mil, name)
    if name.endswith("_job") and name != "run_job":  # a job: a generator function
        assert inspect.isgeneratorfunction(value) and value.__name__ == name


def test_top_level_job_is_the_jobs_module_function():
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    assert napari_wsi_mil.tile_slides_job is tile_slides_job


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'tile_slide_job'"):
        napari_wsi_mil.tile_slide_job  # noqa: B018


def test_relay_names_and_spans_a_sub_job():
    from napari_wsi_mil.jobs import Progress, relay, run_job

    def sub():
        yield Progress("epoch", 1, 4, "a")
        yield Progress("epoch", 4, 4, "b")
        return "done"

    def named():
        return (yield from relay("3/7 train", sub()))

    events = []
    assert run_job(named(), events.append) == "done"
    assert [(e.stage, e.done) for e in events] == [("3/7 train: epoch", 1), ("3/7 train: epoch", 4)]
    spanned = []
    assert run_job(relay(None, sub(), (200, 600)), spanned.append) == "done"
    assert [(e.stage, e.done, e.total) for e in spanned] == [
        ("epoch", 300, 1000),
        ("epoch", 600, 1000),
    ]
