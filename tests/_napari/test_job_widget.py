"""A job's error reaches the user once: the status line and one notification."""

from napari_wsi_mil._napari.widgets.job_widget import JobWidget
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Progress


def test_a_failing_job_is_reported_once(make_napari_viewer_proxy, qtbot):
    from napari.utils.notifications import notification_manager

    widget = JobWidget(make_napari_viewer_proxy())
    widget.add_controls()

    def job():
        yield Progress("reading", 0, 1)
        raise WsiMilError("slide.svs: not a slide")

    notification_manager.records.clear()
    widget.start(job, lambda result: None)
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    qtbot.wait(50)
    # pytest-qt fails this test if the error is also re-raised in the Qt event loop
    assert widget.status.value == "error: slide.svs: not a slide"
    messages = [str(n.message) for n in notification_manager.records]
    assert messages == ["slide.svs: not a slide"]


def test_a_job_made_beforehand_runs_and_returns(make_napari_viewer_proxy, qtbot):
    widget = JobWidget(make_napari_viewer_proxy())
    widget.add_controls()

    def job(n):
        for i in range(n):
            yield Progress("counting", i, n)
        return n * 10

    returned = []
    widget.start(job(3), returned.append)  # a generator: its maker checked its inputs
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    assert returned == [30] and widget.progress.max == 3
