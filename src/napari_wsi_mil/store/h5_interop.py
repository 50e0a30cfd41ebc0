"""CLAM / TRIDENT-style ``.h5`` files, one per slide, for interchange with other tools.

``coords``: ``N x 2`` int64 level-0 top-left corners, with attrs ``patch_size``
(the size read at ``patch_level``), ``patch_level``, ``patch_size_level0`` and
``target_mpp``; ``features`` (``N x D``) when features are exported.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_wsi_mil.jobs import Job, Progress, atomic_file
from napari_wsi_mil.slide.tiling import TileGrid
from napari_wsi_mil.store.project import ProjectStore


def write_h5(path: str | os.PathLike, grid: TileGrid, features: np.ndarray | None = None) -> None:
    """Write one slide's coordinates (and features) atomically."""
    import h5py

    geo = grid.geometry
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as h5:
        coords = h5.create_dataset("coords", data=grid.coords.astype(np.int64))
        coords.attrs["patch_size"] = geo.read_size
        coords.attrs["patch_level"] = geo.read_level
        coords.attrs["patch_size_level0"] = geo.patch_size_level0
        coords.attrs["target_mpp"] = geo.target_mpp if geo.target_mpp is not None else np.nan
        coords.attrs["output_patch_size"] = geo.patch_size
        if features is not None:
            h5.create_dataset("features", data=features)


def export_tiles_job(
    project: ProjectStore, out_dir: str | os.PathLike, slide_ids: list[str] | None = None
) -> Job[list[Path]]:
    """Write ``<out_dir>/<slide_id>.h5`` with the coordinates of every tiled slide."""
    out_dir = Path(out_dir)
    ids = slide_ids if slide_ids is not None else project.slide_ids()
    written = []
    for i, slide_id in enumerate(ids):
        yield Progress("export", i, len(ids), message=slide_id)
        grid, _ = project.read_tiles(slide_id)
        path = out_dir / f"{slide_id}.h5"
        write_h5(path, grid)
        written.append(path)
    yield Progress("export", len(ids), len(ids))
    return written
