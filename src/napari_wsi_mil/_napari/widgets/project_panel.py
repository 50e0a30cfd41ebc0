"""One project for all dock widgets: the project folder and cohort CSV, shared and
remembered between napari launches.

:data:`SHARED_PROJECT` holds the two paths. Every dock widget's ``project`` and
``cohort`` fields follow it and set it (:func:`follow_shared_project`, called by
``JobWidget.add_controls``), so a path typed in one widget, or in the "Project" dock
(:class:`ProjectPanel`), is the path of all. The paths are kept in ``project.json`` in
the user's config folder (``$NAPARI_WSI_MIL_CONFIG`` or platformdirs' user config
dir), so the next napari session starts with them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from magicgui.widgets import Container, FileEdit
from matplotlib.backends.qt_compat import _isdeleted
from psygnal import Signal

from napari_wsi_mil.jobs import atomic_file

#: The shared fields: widget attribute -> what it holds.
SHARED_FIELDS = ("project", "cohort")


def config_dir() -> Path:
    """``$NAPARI_WSI_MIL_CONFIG`` or the user's config folder for this plugin."""
    env = os.environ.get("NAPARI_WSI_MIL_CONFIG")
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-wsi-mil"))


class SharedProject:
    """The project folder and cohort CSV of all widgets; ``changed(field, path)``."""

    changed = Signal(str, object)

    def __init__(self) -> None:
        self._paths: dict[str, Path] | None = None  # read on first use

    @property
    def file(self) -> Path:
        return config_dir() / "project.json"

    def get(self, field: str) -> Path | None:
        return self._remembered().get(field)

    def set(self, field: str, path) -> None:
        """Share ``path`` (empty: nothing) and remember it; emits ``changed`` if new."""
        path = Path(path) if path not in (None, "", ".") else None
        paths = self._remembered()
        if paths.get(field) == path:
            return
        if path is None:
            paths.pop(field, None)
        else:
            paths[field] = path
        try:
            with atomic_file(self.file) as tmp:
                tmp.write_text(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))
        except OSError:
            pass  # a read-only config folder: shared for this session only
        self.changed.emit(field, path)

    def forget(self) -> None:
        """Read the remembered paths again on next use (another config folder)."""
        self._paths = None

    def _remembered(self) -> dict[str, Path]:
        if self._paths is None:
            try:
                data = json.loads(self.file.read_text(encoding="utf-8"))
                self._paths = {
                    k: Path(v) for k, v in data.items() if k in SHARED_FIELDS and isinstance(v, str)
                }
            except (OSError, ValueError, AttributeError):
                self._paths = {}
        return self._paths


SHARED_PROJECT = SharedProject()


def follow_shared_project(widget) -> None:
    """Make the ``project`` and ``cohort`` fields of ``widget`` (those it has) start at
    the shared paths, set them when edited and follow them when set elsewhere."""
    for field in SHARED_FIELDS:
        edit = getattr(widget, field, None)
        if not isinstance(edit, FileEdit):
            continue
        remembered = SHARED_PROJECT.get(field)
        if remembered is not None:
            edit.value = remembered
        edit.changed.connect(lambda value, field=field: SHARED_PROJECT.set(field, value))
    SHARED_PROJECT.changed.connect(_follower(widget))


def _follower(widget):
    """A callback that sets a widget's field to a shared path; it holds the widget
    weakly and disconnects itself once the widget or its Qt widget is gone."""
    import weakref

    ref = weakref.ref(widget)

    def follow(field: str, path) -> None:
        widget = ref()
        if widget is None or _isdeleted(widget.root_native_widget):
            SHARED_PROJECT.changed.disconnect(follow)
            return
        edit = getattr(widget, field, None)
        if (
            isinstance(edit, FileEdit)
            and path is not None
            and (edit.value is None or Path(edit.value) != path)
        ):
            edit.value = path

    return follow


class ProjectPanel(Container):
    """The "Project" dock: the project folder and cohort CSV every widget uses."""

    def __init__(self, napari_viewer=None):
        super().__init__(labels=True)
        self.project = FileEdit(label="project folder", mode="d")
        self.cohort = FileEdit(label="cohort CSV", mode="r", filter="*.csv")
        self.extend([self.project, self.cohort])
        follow_shared_project(self)
