"""A dock-widget base that runs a core job in a thread worker with progress and cancel."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.backends.qt_compat import _isdeleted
from psygnal import SignalInstance
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QSizePolicy

from napari_wsi_mil.errors import StoreError, WsiMilError
from napari_wsi_mil.jobs import Progress
from napari_wsi_mil.store.keys import FEATURES
from napari_wsi_mil.store.project import ProjectStore


class _ScrollAreaFitsWidth(QObject):
    """Keeps a vertically scrolling area at least as wide as its contents' minimum
    (magicgui sets it only as widgets are added, not when a label's text grows)."""

    def __init__(self, scroll) -> None:
        super().__init__(scroll)
        self.scroll = scroll
        scroll.widget().installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Type.LayoutRequest and not _isdeleted(self.scroll):
            bar = self.scroll.verticalScrollBar().sizeHint().width()
            frame = 2 * self.scroll.frameWidth()
            self.scroll.setMinimumWidth(obj.minimumSizeHint().width() + bar + frame)
        return False


#: Emitted on the main thread when a job of any widget ends: what it wrote (a feature
#: set, a tiling, a model) may be new to the lists of the other widgets, which refresh.
JOB_FINISHED = SignalInstance(name="job_finished")

#: Longest status text shown (notifications carry the whole message).
STATUS_MAX_CHARS = 500


class JobWidget(Container):
    """Run button, Cancel button, progress bar and status line around one job at a time.

    The controls sit in a scroll area (``native``, what napari docks), so a tall widget
    scrolls instead of stretching the window; the status line spans the dock's width
    and wraps, so a dock of normal width shows all of it.

    Subclasses build their parameter widgets, then call :meth:`start` with a
    generator function (the job) and a handler for its return value (by convention
    ``show_result``, public so that a result can be shown without running the job). The
    handler runs on the main thread, where layers may be changed; each progress event
    goes to :meth:`show_progress`; errors become napari notifications and napari keeps
    running. Connect buttons through :meth:`guard` so
    that settings refused before the job starts are notifications too.
    """

    def __init__(self, viewer, run_text: str = "Run"):
        super().__init__(labels=True, scrollable=True)
        self.viewer = viewer
        self.worker = None
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="")
        # the dock's width (magicgui's labels are fixed to their text), wrapping, so that a
        # result at the end of the line is not clipped by a narrow dock
        self.status.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.status.native.setWordWrap(True)
        self._fit_width = _ScrollAreaFitsWidth(self.root_native_widget)
        # spare height below the rows (napari adds this stretch only to unscrolled docks)
        self._widget._layout.addStretch(1)
        self.cancel_button.changed.connect(self.cancel)
        JOB_FINISHED.connect(self._refresh_choices)  # weakly: gone with the widget

    @property
    def native(self):
        """The scroll area around the controls.

        magicgui's ``native`` is the widget inside a scrollable container, and napari
        docks ``native``: without this the scroll area would be left out of the dock.
        """
        return self.root_native_widget

    def add_native(self, widget) -> None:
        """Append a Qt widget (a plot, a gallery) at the full width of the dock; one
        that grows (a plot) takes the spare height, else the rows stay at the top."""
        layout = self._widget._layout
        grows = isinstance(widget, FigureCanvasBase) or widget.sizePolicy().verticalPolicy() in (
            QSizePolicy.Policy.Expanding,
            QSizePolicy.Policy.MinimumExpanding,
        )
        end = layout.count()
        if end and layout.itemAt(end - 1).spacerItem() is not None:
            end -= 1
            if grows:
                layout.takeAt(end)
        layout.insertWidget(end, widget, 1 if grows else 0)

    def guard(self, callback: Callable[..., object]) -> Callable[..., None]:
        """``callback`` for a button or field: a bad value it meets (a
        :class:`~napari_wsi_mil.errors.WsiMilError` or an unreadable file) becomes a
        notification and the status line, not a traceback in the console."""

        def guarded(*args, **kwargs) -> None:
            try:
                callback(*args, **kwargs)
            except (WsiMilError, OSError) as exc:
                self._on_error(exc)

        return guarded

    def add_controls(self) -> None:
        """Append the run/cancel buttons, progress bar and status (after the parameters);
        the ``project`` and ``cohort`` fields, if any, now follow the shared project."""
        from napari_wsi_mil._napari.widgets.project_panel import follow_shared_project

        self.extend([self.run_button, self.cancel_button, self.progress])
        self._widget._layout.insertWidget(self.index(self.progress) + 1, self.status.native)
        follow_shared_project(self)

    def insert(self, key, widget) -> None:
        """magicgui's insert, keeping the status line (not a magicgui row, so that it
        spans the dock) right below the progress bar."""
        layout, status = self._widget._layout, self.status.native
        placed = layout.indexOf(status) >= 0
        if placed:  # out of the layout, whose indices are then magicgui's again
            layout.removeWidget(status)
        super().insert(key, widget)
        if placed:
            layout.insertWidget(self.index(self.progress) + 1, status)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(
        self,
        job: Callable[[], Generator[Progress, None, object]] | Generator[Progress, None, object],
        on_returned: Callable[[object], None],
    ) -> None:
        """Run ``job`` (a generator function, or a job already made, its inputs checked)
        in a worker thread; ``on_returned`` gets its result on the main thread."""
        from napari.qt.threading import create_worker

        if self.busy:
            return
        if inspect.isgenerator(job):
            made = job

            def job():
                return (yield from made)

        # errored in _connect: otherwise napari also re-raises the error on the main thread
        worker = create_worker(job, _start_thread=False, _connect={"errored": self._on_error})
        worker.yielded.connect(self.show_progress)
        worker.returned.connect(on_returned)
        worker.aborted.connect(lambda: self._set_status("cancelled; finished results are kept"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self._set_status("running")
        worker.start()

    def cancel(self) -> None:
        if self.worker is not None:
            self._set_status("cancelling")
            self.worker.quit()

    def show_progress(self, event: Progress) -> None:
        """One progress event of the running job: the bar and the status line."""
        total = event.total or 0
        self.progress.max = max(total, 1)
        self.progress.value = min(event.done, self.progress.max) if total else 0
        text = event.stage if not event.message else f"{event.stage}: {event.message}"
        self._set_status(text)

    def _on_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        self._set_status(f"error: {exc}")
        show_error(str(exc))

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False
        JOB_FINISHED.emit()

    def _refresh_choices(self) -> None:
        """Re-read every list (feature sets, slides), e.g. after an extraction."""
        if not _isdeleted(self.root_native_widget):
            self.reset_choices()

    def _set_status(self, text: str) -> None:
        if len(text) > STATUS_MAX_CHARS:
            text = text[: STATUS_MAX_CHARS - 1] + "\u2026"
        self.status.value = text


def slide_layers(viewer) -> list:
    """Image layers opened by this plugin's reader (they carry ``slide_path``)."""
    return [
        layer
        for layer in viewer.layers
        if "slide_path" in layer.metadata and layer.__class__.__name__ == "Image"
    ]


def feature_sets(project_dir) -> list[str]:
    """The feature sets of the project at ``project_dir`` (none when it is not one)."""
    try:
        return ProjectStore(project_dir).result_names(FEATURES)
    except StoreError:
        return []
