"""The "Demo cohort" sample's build runs in a thread with a progress bar while napari
keeps answering (napari's sample contract makes the caller wait for the layers)."""

import time

import pytest
from qtpy.QtCore import QTimer

from napari_wsi_mil._napari.sample_data import run_responsively
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Progress


def _job(steps=6):
    for i in range(steps):
        time.sleep(0.05)
        yield Progress("build", i + 1, steps)
    return "built"


def test_napari_answers_and_shows_progress_while_a_sample_builds(make_napari_viewer_proxy):
    from napari.utils import progress

    make_napari_viewer_proxy()
    seen = []  # (bar description, done) at each tick of the main thread's event loop

    def tick():
        seen.extend((bar.desc, bar.n) for bar in list(progress._all_instances))

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(20)
    assert run_responsively(_job(), "Demo cohort") == "built"
    timer.stop()
    bars = [(desc, n) for desc, n in seen if desc.startswith("Demo cohort: build")]
    assert len(bars) >= 3  # the main thread ran during the 0.3 s build, a bar was shown
    assert max(n for _, n in bars) >= 3
    assert not any(bar.desc.startswith("Demo cohort") for bar in progress._all_instances)


def test_a_failed_build_raises_its_error(make_napari_viewer_proxy):
    make_napari_viewer_proxy()

    def failing():
        yield Progress("build", 0, 1)
        raise WsiMilError("no space left")

    with pytest.raises(WsiMilError, match="no space left"):
        run_responsively(failing(), "Demo cohort")
