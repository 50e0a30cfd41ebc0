"""The project store: one directory per project, zarr groups per slide and result.

Layout (see ``docs/store-format.md``)::

    project/
      project.json                     format name and version
      slides/<slide_id>/               tiling: tissue mask, tile grid, slide facts
      <kind>/<name>/<slide_id>/        later results (features, predictions), by name
      .cache/slide-info/<token>.json   parsed slide facts per file version (a cache)

Every leaf directory is written under a temporary name and renamed into place
(:func:`~napari_wsi_mil.jobs.atomic_dir`), so a directory that exists is complete.
Writers hold an exclusive lock on ``project/.lock``. Results with one row per patch
(:data:`~napari_wsi_mil.store.keys.GRID_RESULTS`) belong to the tiling they were made
from: a new tiling of a slide with other patches removes them
(:meth:`ProjectStore.write_tiles`). Result kinds are named in
:mod:`napari_wsi_mil.store.keys`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from napari_wsi_mil.errors import StoreError
from napari_wsi_mil.jobs import atomic_dir
from napari_wsi_mil.names import name_problem
from napari_wsi_mil.slide.tiling import PatchGeometry, TileGrid
from napari_wsi_mil.store.keys import GRID_RESULTS, SLIDES

STORE_FORMAT = "napari-wsi-mil-store"
STORE_VERSION = 1
#: Parsed slide facts by file version (``open_slide(path, cache=store)``); hidden from
#: the results, never needed: a missing cache only makes opening parse the file again.
SLIDE_INFO_CACHE = Path(".cache") / "slide-info"


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
            self._remove_stale_temporaries(time.time())
            try:
                yield
            finally:
                fh.truncate(0)
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _remove_stale_temporaries(self, locked_at: float) -> None:
        """Remove the ``.tmp-*`` and ``.trash-*`` folders of writers killed mid-write.

        Called holding the lock, so every one older than this moment is an orphan: the
        results folders (``<kind>/`` and ``<kind>/<name>/``) are searched, not the zarr
        groups inside them.
        """
        folders = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        folders += [
            sub
            for folder in folders
            for sub in folder.iterdir()
            if sub.is_dir() and not sub.name.startswith(".") and not (sub / "zarr.json").exists()
        ]
        for folder in folders:
            for entry in folder.iterdir():
                if entry.name.startswith((".tmp-", ".trash-")) and entry.is_dir():
                    if entry.stat().st_mtime < locked_at:
                        shutil.rmtree(entry, ignore_errors=True)

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

    def result_names(self, kind: str) -> list[str]:
        """Names of the named results of ``kind`` (feature sets, predictions), sorted;
        unfinished ones (``.``-prefixed temporaries) left out."""
        folder = self.root / kind
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name[0] != ".")

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

    def read_result_attrs(self, kind: str, name: str | None, slide_id: str) -> dict:
        """The attrs of a stored result, without reading its arrays."""
        import zarr

        return dict(zarr.open_group(self.result_dir(kind, name, slide_id), mode="r").attrs)

    # -- slide facts cache ----------------------------------------------------
    def cached_slide_info(self, token: str) -> dict | None:
        """Parsed facts (levels, pixel size, properties) of the slide file version
        ``token`` (:func:`~napari_wsi_mil.slide.slide.file_token`) as
        :func:`~napari_wsi_mil.slide.open_slide` cached them, or None."""
        try:
            return json.loads((self.root / SLIDE_INFO_CACHE / f"{token}.json").read_text())
        except (OSError, ValueError):
            return None

    def cache_slide_info(self, token: str, info: dict) -> None:
        """Keep a slide file version's facts (atomically; no writer lock needed: a
        version's facts never change). A project that cannot be written keeps none."""
        folder = self.root / SLIDE_INFO_CACHE
        tmp = folder / f".tmp-{token}-{uuid.uuid4().hex[:8]}.json"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(_jsonable(info)))
            os.replace(tmp, folder / f"{token}.json")
        except OSError:
            tmp.unlink(missing_ok=True)

    # -- tiling --------------------------------------------------------------
    def slide_ids(self) -> list[str]:
        """Slides with a finished tiling."""
        return self.result_ids(SLIDES)

    def has_tiles(self, slide_id: str) -> bool:
        return self.has_result(SLIDES, None, slide_id)

    def write_tiles(
        self, slide_id: str, tiled, slide_facts: dict, params: dict, overwrite: bool = False
    ) -> list[str]:
        """Store a :class:`~napari_wsi_mil.slide.tiling.TiledSlide` with the slide's facts.

        Replacing (``overwrite``) a tiling whose patches differ (``coords`` or geometry)
        first removes every result made from the old one (``GRID_RESULTS``: features
        of every name, predictions, tile labels), so no result is ever read against the
        wrong patches; the same patches (e.g. only the tissue mask changed) keep them.
        Returns the removed results (``"features/<name>"``, ``"tile_labels"``, ...).
        The caller holds the writer lock, as for every write.
        """
        grid = tiled.grid
        geometry = _jsonable(grid.attrs())
        removed = []
        if overwrite and self.has_tiles(slide_id):
            old, attrs = self.read_result(SLIDES, None, slide_id)
            if attrs.get("geometry") != geometry or not np.array_equal(old["coords"], grid.coords):
                removed = self.remove_grid_results(slide_id)
        self.write_result(
            SLIDES,
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
                "geometry": geometry,
                "mask_downsample": list(tiled.mask_downsample),
                "warnings": list(tiled.warnings),
                "n_patches": len(grid),
            },
            overwrite=overwrite,
        )
        return removed

    def remove_grid_results(self, slide_id: str) -> list[str]:
        """Remove every ``GRID_RESULTS`` result of one slide; returns what it removed.

        Each result directory is renamed away (atomic; readers no longer see it) before it
        is deleted, so an interrupted removal leaves every result complete or gone. The
        caller holds the writer lock.
        """
        check_name(slide_id)
        removed = []
        for kind, named in GRID_RESULTS.items():
            folder = self.root / kind
            if not folder.is_dir():
                continue
            if named:
                sets = sorted(p for p in folder.iterdir() if p.is_dir() and p.name[0] != ".")
            else:
                sets = [folder]
            for parent in sets:
                path = parent / slide_id
                if not path.is_dir():
                    continue
                trash = parent / f".trash-{slide_id}-{uuid.uuid4().hex[:8]}"
                os.rename(path, trash)
                shutil.rmtree(trash, ignore_errors=True)
                removed.append(f"{kind}/{parent.name}" if named else kind)
        return removed

    def read_tiles(self, slide_id: str):
        """``(TileGrid, attrs)`` of a tiled slide."""

        arrays, attrs = self.read_result(SLIDES, None, slide_id)
        geo = dict(attrs["geometry"])
        grid_shape = tuple(geo.pop("grid_shape"))
        grid = TileGrid(
            arrays["coords"], arrays["tissue_fraction"], PatchGeometry(**geo), grid_shape
        )
        return grid, attrs

    def read_tissue_mask(self, slide_id: str) -> tuple[np.ndarray, tuple[float, float]]:
        arrays, attrs = self.read_result(SLIDES, None, slide_id)
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
