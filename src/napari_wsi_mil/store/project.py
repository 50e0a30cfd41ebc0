"""The project store: one directory per project, zarr groups per slide and result.

Layout (see ``docs/store-format.md``)::

    project/
      project.json                     format name and version
      slides/<slide_id>/               tiling: tissue mask, tile grid, slide facts
      <kind>/<name>/<slide_id>/        later results (features, predictions), by name

Every leaf directory is written under a temporary name and renamed into place
(:func:`~napari_wsi_mil.jobs.atomic_dir`), so a directory that exists is complete.
Writers hold an exclusive lock on ``project/.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from napari_wsi_mil.errors import StoreError
from napari_wsi_mil.jobs import atomic_dir
from napari_wsi_mil.names import name_problem

STORE_FORMAT = "napari-wsi-mil-store"
STORE_VERSION = 1


def check_name(name: str, what: str = "slide id") -> str:
    """Return ``name`` or raise :class:`StoreError` when it is unsafe as a directory name."""
    problem = name_problem(name, what)
    if problem:
        raise StoreError(problem)
    return name


class ProjectStore:
    """A project directory. ``ProjectStore(path, create=True)`` makes a new one."""

    def __init__(self, root: str | os.PathLike, create: bool = False):
        self.root = Path(root)
        meta_path = self.root / "project.json"
        if not meta_path.exists():
            if not create:
                raise StoreError(f"{self.root}: not a napari-wsi-mil project (no project.json)")
            if self.root.exists() and any(self.root.iterdir()):
                raise StoreError(f"{self.root}: exists, is not empty and is not a project")
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / ".project.json.tmp"
            tmp.write_text(json.dumps({"format": STORE_FORMAT, "version": STORE_VERSION}))
            os.replace(tmp, meta_path)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"{meta_path}: unreadable project file ({exc})") from exc
        if meta.get("format") != STORE_FORMAT:
            raise StoreError(f"{meta_path}: not a napari-wsi-mil project")
        if meta.get("version") != STORE_VERSION:
            raise StoreError(
                f"{meta_path}: store version {meta.get('version')} is not "
                f"supported (this version reads {STORE_VERSION})"
            )

    # -- locking -------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the project's writer lock; fail at once with a clear message if taken."""
        path = self.root / ".lock"
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                owner = fh.read().strip() or "unknown"
                raise StoreError(
                    f"{self.root}: another process is writing to this project ({owner}); "
                    "wait for it to finish"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}")
            fh.flush()
            try:
                yield
            finally:
                fh.truncate(0)
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- generic results -----------------------------------------------------
    def result_dir(self, kind: str, name: str | None, slide_id: str) -> Path:
        check_name(slide_id)
        if name is None:
            return self.root / kind / slide_id
        return self.root / kind / check_name(name, "result name") / slide_id

    def has_result(self, kind: str, name: str | None, slide_id: str) -> bool:
        return (self.result_dir(kind, name, slide_id) / "zarr.json").exists()

    def result_ids(self, kind: str, name: str | None = None) -> list[str]:
        folder = self.root / kind if name is None else self.root / kind / name
        if not folder.is_dir():
            return []
        return sorted(
            p.name
            for p in folder.iterdir()
            if not p.name.startswith(".") and (p / "zarr.json").exists()
        )

    def write_result(
        self,
        kind: str,
        name: str | None,
        slide_id: str,
        arrays: dict[str, np.ndarray],
        attrs: dict,
        overwrite: bool = False,
    ) -> Path:
        """Write named arrays and JSON attrs as one zarr group, atomically."""
        import zarr

        final = self.result_dir(kind, name, slide_id)
        with atomic_dir(final, overwrite=overwrite) as tmp:
            group = zarr.open_group(tmp, mode="w")
            for key, value in arrays.items():
                group.create_array(key, data=np.ascontiguousarray(value))
            group.attrs.update(_jsonable(attrs))
        return final

    def read_result(
        self, kind: str, name: str | None, slide_id: str
    ) -> tuple[dict[str, np.ndarray], dict]:
        import zarr

        path = self.result_dir(kind, name, slide_id)
        if not (path / "zarr.json").exists():
            what = kind if name is None else f"{kind} '{name}'"
            raise StoreError(f"{self.root}: no {what} for slide {slide_id!r}")
        group = zarr.open_group(path, mode="r")
        arrays = {key: np.asarray(arr[...]) for key, arr in group.arrays()}
        return arrays, dict(group.attrs)

    # -- tiling --------------------------------------------------------------
    def slide_ids(self) -> list[str]:
        """Slides with a finished tiling."""
        return self.result_ids("slides")

    def has_tiles(self, slide_id: str) -> bool:
        return self.has_result("slides", None, slide_id)

    def write_tiles(
        self, slide_id: str, tiled, slide_facts: dict, params: dict, overwrite: bool = False
    ) -> Path:
        """Store a :class:`~napari_wsi_mil.slide.tiling.TiledSlide` with the slide's facts."""
        grid = tiled.grid
        return self.write_result(
            "slides",
            None,
            slide_id,
            arrays={
                "coords": grid.coords.astype(np.int64),
                "tissue_fraction": grid.tissue_fraction.astype(np.float32),
                "tissue_mask": tiled.tissue_mask.astype(bool),
            },
            attrs={
                "slide": slide_facts,
                "tiling": params,
                "geometry": grid.attrs(),
                "mask_downsample": list(tiled.mask_downsample),
                "warnings": list(tiled.warnings),
                "n_patches": len(grid),
            },
            overwrite=overwrite,
        )

    def read_tiles(self, slide_id: str):
        """``(TileGrid, attrs)`` of a tiled slide."""
        from napari_wsi_mil.slide.tiling import PatchGeometry, TileGrid

        arrays, attrs = self.read_result("slides", None, slide_id)
        geo = dict(attrs["geometry"])
        grid_shape = tuple(geo.pop("grid_shape"))
        grid = TileGrid(
            arrays["coords"], arrays["tissue_fraction"], PatchGeometry(**geo), grid_shape
        )
        return grid, attrs

    def read_tissue_mask(self, slide_id: str) -> tuple[np.ndarray, tuple[float, float]]:
        arrays, attrs = self.read_result("slides", None, slide_id)
        return arrays["tissue_mask"], tuple(attrs["mask_downsample"])


def _jsonable(value):
    """Numpy scalars and paths to plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
