"""npe2 reader contribution: whole-slide images as lazy multiscale RGB layers."""

from __future__ import annotations

import os
from collections.abc import Callable

from napari_wsi_mil._napari.layers import slide_layer_data
from napari_wsi_mil.slide import SLIDE_EXTENSIONS, open_slide


def single_path_name(path: str | os.PathLike | list) -> str | None:
    """The lower-case name of the one path napari offers a reader, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        return os.fspath(path).lower()
    except TypeError:
        return None


def napari_get_reader(path: str | os.PathLike | list) -> Callable | None:
    """Return :func:`read_slide` for one slide path we handle, else None. Never raises."""
    name = single_path_name(path)
    return read_slide if name and name.endswith(SLIDE_EXTENSIONS) else None


def read_slide(path: str | os.PathLike | list) -> list[tuple]:
    """Open a slide; a bad file raises one :class:`~napari_wsi_mil.errors.SlideError`,
    which napari shows as a notification."""

    if isinstance(path, (list, tuple)):
        path = path[0]
    return [slide_layer_data(open_slide(path))]
