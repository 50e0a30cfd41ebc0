"""CLAM / TRIDENT-style ``.h5`` files, one per slide, for interchange with other tools.

``coords``: ``N x 2`` int64 level-0 top-left corners, with attrs ``patch_size``
(the size read at ``patch_level``), ``patch_level``, ``patch_size_level0`` and
``target_mpp``; ``features`` (``N x D``) when features are exported.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Job, Progress, atomic_file
from napari_wsi_mil.slide.tiling import PatchGeometry, TiledSlide, TileGrid
from napari_wsi_mil.store.keys import FEATURES
from napari_wsi_mil.store.project import ProjectStore, check_name


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


def export_features_job(
    project: ProjectStore, name: str, out_dir: str | os.PathLike, slide_ids: list[str] | None = None
) -> Job[list[Path]]:
    """Write ``<out_dir>/<slide_id>.h5`` with ``coords`` and ``features`` of a feature set."""
    out_dir = Path(out_dir)
    ids = slide_ids if slide_ids is not None else project.result_ids(FEATURES, name)
    written = []
    for i, slide_id in enumerate(ids):
        yield Progress("export", i, len(ids), message=slide_id)
        grid, _ = project.read_tiles(slide_id)
        arrays, _ = project.read_result(FEATURES, name, slide_id)
        write_h5(out_dir / f"{slide_id}.h5", grid, arrays["features"])
        written.append(out_dir / f"{slide_id}.h5")
    yield Progress("export", len(ids), len(ids))
    return written


#: Level-0 coordinates and patch sizes beyond this many pixels are refused (the largest
#: slides are about 200,000 px wide).
MAX_LEVEL0_PIXELS = 2**24
#: A patch grid of more cells than this is refused (its raster would not fit in memory).
MAX_GRID_CELLS = 10**8


def read_h5_features(path: Path, patch_size_level0: int | None = None):
    """``(coords, features, geometry kwargs)`` of a CLAM/TRIDENT file, validated."""
    import h5py

    def bad(reason: str) -> WsiMilError:
        return WsiMilError(f"{path}: {reason}")

    try:
        with h5py.File(path, "r") as h5:
            for key in ("features", "coords"):
                if not isinstance(h5.get(key), h5py.Dataset):
                    raise bad("needs 'features' (N x D) and 'coords' (N x 2) datasets")
            features = np.asarray(h5["features"][...])
            coords = np.asarray(h5["coords"][...])
            attrs = dict(h5["coords"].attrs.items())
    except (OSError, TypeError, ValueError) as exc:
        raise bad(f"not a readable HDF5 file ({exc})") from exc
    if features.ndim == 3 and features.shape[0] == 1:  # some tools keep a batch axis
        features = features[0]
    if features.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2:
        raise bad(f"features {features.shape} / coords {coords.shape} are not N x D / N x 2")
    for key, array in (("features", features), ("coords", coords)):
        if array.dtype.kind not in "iuf":
            raise bad(f"{key} are {array.dtype}, not numbers")
    if len(features) == 0 or features.shape[1] == 0:
        raise bad(f"features {features.shape} are empty")
    if len(features) != len(coords):
        raise bad(f"{len(features)} feature rows but {len(coords)} coordinates")
    finite = np.isfinite(features).all(axis=1)
    if not finite.all():
        raise bad(
            f"{int((~finite).sum())} feature rows contain NaN or inf "
            f"(first at row {int(np.flatnonzero(~finite)[0])})"
        )
    if not np.isfinite(coords).all() or (coords != np.round(coords)).any():
        raise bad("coords are not whole numbers of pixels")
    if coords.min() < 0 or coords.max() >= MAX_LEVEL0_PIXELS:
        raise bad(
            f"coords range from {coords.min():g} to {coords.max():g}; level-0 pixels are "
            f"0 to {MAX_LEVEL0_PIXELS}"
        )
    coords = coords.astype(np.int64)
    if len(np.unique(coords, axis=0)) != len(coords):
        raise bad("duplicate patch coordinates")

    def number(key: str, value, minimum: int) -> int:
        value = value.item() if hasattr(value, "item") else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise bad(f"{key} {value!r} is not a number")
        if value != int(value) or not minimum <= value < MAX_LEVEL0_PIXELS:
            raise bad(
                f"{key} must be a whole number from {minimum} to {MAX_LEVEL0_PIXELS - 1}, "
                f"not {value!r}"
            )
        return int(value)

    size0 = patch_size_level0 or attrs.get("patch_size_level0")
    if size0 is None:
        raise bad("the patch size at level 0 is not in the file's attrs; give --patch-size-level0")
    size0 = number("patch_size_level0", size0, 1)
    target = attrs.get("target_mpp")
    try:
        target = float(target)
    except (TypeError, ValueError):
        target = None
    target = target if target is not None and np.isfinite(target) and target > 0 else None
    read_size = number("patch_size", attrs.get("patch_size", size0), 1)
    geometry = dict(
        source_mpp=None,
        target_mpp=target,
        patch_size=number("output_patch_size", attrs.get("output_patch_size", read_size), 1),
        patch_size_level0=size0,
        stride_level0=size0,
        read_level=number("patch_level", attrs.get("patch_level", 0), 0),
        read_size=read_size,
    )
    rows, cols = int(coords[:, 1].max()) // size0 + 1, int(coords[:, 0].max()) // size0 + 1
    if rows * cols > MAX_GRID_CELLS:
        raise bad(
            f"the coords span a grid of {rows} x {cols} patches of {size0} px; check "
            "patch_size_level0 (or --patch-size-level0)"
        )
    return coords, features, geometry


def import_features_job(
    h5_dir: str | os.PathLike,
    project: ProjectStore,
    name: str,
    *,
    patch_size_level0: int | None = None,
    overwrite: bool = False,
) -> Job[list[str]]:
    """Import ``<slide_id>.h5`` files into the store as feature set ``name``.

    A slide not tiled in the store gets its TileGrid from the file's coordinates (the
    slide file itself is optional: MIL needs only features); a tiled slide must have
    exactly the same coordinates in the same order.
    """

    files = sorted(Path(h5_dir).glob("*.h5"))
    if not files:
        raise WsiMilError(f"{h5_dir}: no .h5 files")
    ids = [check_name(p.stem) for p in files]
    clashes = {i for i in ids if ids.count(i) > 1}
    if clashes:
        raise WsiMilError(f"{h5_dir}: duplicate slides {sorted(clashes)}")
    imported = []
    with project.lock():
        for i, (path, slide_id) in enumerate(zip(files, ids, strict=True)):
            yield Progress("import", i, len(files), message=slide_id)
            coords, features, geometry = read_h5_features(path, patch_size_level0)
            if project.has_tiles(slide_id):
                grid, _ = project.read_tiles(slide_id)
                if not np.array_equal(grid.coords, coords):
                    raise WsiMilError(
                        f"{path}: coordinates differ from the store's tiling of "
                        f"{slide_id!r}; import into a new project"
                    )
            else:
                geo = PatchGeometry(**geometry)
                step = geo.stride_level0
                shape = (int(coords[:, 1].max()) // step + 1, int(coords[:, 0].max()) // step + 1)
                grid = TileGrid(coords, np.ones(len(coords), np.float32), geo, shape)
                tiled = TiledSlide(
                    grid, np.zeros((1, 1), bool), (1.0, 1.0), [f"imported from {path.name}"]
                )
                project.write_tiles(slide_id, tiled, {"path": None}, {"imported": str(path)})
            if project.has_result(FEATURES, name, slide_id) and not overwrite:
                raise WsiMilError(
                    f"feature set {name!r} already has slide {slide_id!r}; use --overwrite"
                )
            attrs = {
                "encoder": f"imported:{path.name}",
                "dim": int(features.shape[1]),
                "dtype": str(features.dtype),
                "n_patches": len(features),
                "target_mpp": geometry["target_mpp"],
                "patch_size": geometry["patch_size"],
            }
            project.write_result(
                FEATURES, name, slide_id, {"features": features}, attrs, overwrite=overwrite
            )
            imported.append(slide_id)
        yield Progress("import", len(files), len(files))
    return imported
