"""What a slide backend provides. Backends read native pyramid levels only;
:class:`~napari_wsi_mil.slide.slide.Slide` adds synthesized levels, the dask
pyramid and level-0 addressing on top."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def positive_float(value: str | None) -> float | None:
    """A number stated as text in a file's metadata, or None when absent, unreadable or
    not positive."""
    try:
        result = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return result if result is not None and result > 0 else None


@dataclass(frozen=True)
class NativeLevel:
    """One level stored in the file: its size in pixels and its native tile."""

    width: int
    height: int
    tile_width: int
    tile_height: int


@dataclass
class SlideInfo:
    """Everything a backend knows about a file, read once at open.

    ``mpp`` (microns per pixel at level 0, x and y) and ``objective_power`` are
    None when the file does not state them; they are never guessed.
    """

    backend: str
    vendor: str | None
    levels: list[NativeLevel]
    mpp: tuple[float, float] | None
    objective_power: float | None
    properties: dict[str, str] = field(default_factory=dict)


class SlideBackend:
    """Interface of the slide backends. Reads must be thread-safe."""

    info: SlideInfo

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read a ``(height, width, 3)`` uint8 RGB region in *level* pixel coordinates.

        The region is clipped to the level; pixels outside are white.
        """
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
