"""Semi-real cohorts: slides tiled from labelled real H&E tile images.

The procedural slides of :mod:`napari_wsi_mil.slide.synthetic` are homogeneous
textures: two normal patches look as alike as two augmented views of one patch, so
contrastive pretraining has little to learn from them. A *mosaic* slide is a grid
of real tiles (for example Kather et al.'s colorectal sets, CC BY 4.0): normal
slides hold only non-tumour tiles, positive slides also a lesion, a connected
group of tumour tiles covering ``lesion_fraction`` of the grid. Every tile is
placed with a random 90-degree rotation and flip. The lesion outlines are written
as GeoJSON, so tile labels, instance metrics and MS-CLAM's mixed supervision work
as on any annotated cohort.

Tile images are split per class into a train and a test pool (by ``seed``), and a
slide only uses the pool of its split, so no tile of a test slide is ever seen in
pretraining or MIL training.

Tile classes come from file names (:func:`tile_class`): CRC-VAL-HE-7K's prefixes
(``TUM-...`` tumour; ``NORM``, ``STR``, ``MUS``, ``LYM``, ``ADI``, ``DEB``, ``MUC``
normal) and Kather 2016's ``image_<n>_label_<L>`` (0 tumour, 7 background skipped,
others normal).

A multi-class cohort (``lesion_kinds`` of more than one tissue, e.g. ``("tumour",
"lymphocytes")``, see :func:`tile_tissue`) has one class per lesion kind besides
``normal``: a slide of class ``k`` holds a lesion of that tissue, the other lesion
tissues are left out of its normal tiles, and the cohort's labels are class names.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_wsi_mil.jobs import Job, Progress, atomic_file, run_job
from napari_wsi_mil.slide.synthetic import assign_cases, write_pyramid
from napari_wsi_mil.store.geojson import write_geojson

TUMOUR, NORMAL = "tumour", "normal"
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
#: Tissue of CRC-VAL-HE-7K's file-name prefixes and Kather 2016's labels (7, background:
#: none).
_PREFIX_TISSUE = {
    "TUM": TUMOUR, "NORM": "mucosa", "STR": "stroma", "MUS": "muscle",
    "LYM": "lymphocytes", "ADI": "adipose", "DEB": "debris", "MUC": "mucus",
}  # fmt: skip
_LABEL_TISSUE = {
    "0": TUMOUR, "1": "stroma", "2": "stroma", "3": "lymphocytes", "4": "debris",
    "5": "mucosa", "6": "adipose",
}  # fmt: skip


def tile_tissue(path: Path) -> str | None:
    """The tissue of a tile from its file name (``tumour``, ``lymphocytes``, ``stroma``,
    ``mucosa``, ``muscle``, ``adipose``, ``debris``, ``mucus``), None for background
    or unknown names."""
    stem = path.stem
    if "_label_" in stem:
        return _LABEL_TISSUE.get(stem.rsplit("_label_", 1)[1])
    return _PREFIX_TISSUE.get(stem.split("-", 1)[0].split("_", 1)[0].upper())


def tile_class(path: Path) -> str | None:
    """``"tumour"``, ``"normal"`` or None (background or unknown) from a tile's file name."""
    tissue = tile_tissue(path)
    return None if tissue is None else TUMOUR if tissue == TUMOUR else NORMAL


@dataclass
class MosaicCohort:
    root: Path
    csv_path: Path
    slide_ids: list[str]
    labels: list[int]
    splits: list[str]
    lesion_fractions: list[float]


def tile_pools(
    tiles_dir: Path, size: int, seed: int, lesion_kinds: Sequence[str] = (TUMOUR,)
) -> dict[tuple[str, str], list[np.ndarray]]:
    """``{(split, kind): [tile images]}`` for each lesion kind (a tissue) and ``normal``
    (every other tissue); each kind's files split in half by ``seed``."""
    from PIL import Image

    files: dict[str, list[Path]] = {kind: [] for kind in (*lesion_kinds, NORMAL)}
    for path in sorted(tiles_dir.rglob("*")):
        tissue = tile_tissue(path) if path.suffix.lower() in _IMAGE_SUFFIXES else None
        if tissue:
            files[tissue if tissue in lesion_kinds else NORMAL].append(path)
    rng = np.random.default_rng([seed, 7])
    pools = {}
    for kind, paths in files.items():
        if len(paths) < 2:
            raise ValueError(f"{tiles_dir}: need at least 2 {kind} tiles, found {len(paths)}")
        order = rng.permutation(len(paths))
        half = len(paths) // 2
        for split, chosen in (("train", order[:half]), ("test", order[half:])):
            pools[(split, kind)] = [
                np.asarray(Image.open(paths[i]).convert("RGB").resize((size, size))) for i in chosen
            ]
    return pools


def _lesion_cells(rows: int, cols: int, count: int, rng: np.random.Generator) -> set:
    """``count`` grid cells forming one connected blob grown from a random cell."""
    start = (int(rng.integers(rows)), int(rng.integers(cols)))
    blob, frontier = {start}, [start]
    while len(blob) < count and frontier:
        r, c = frontier[int(rng.integers(len(frontier)))]
        free = [
            (r + dr, c + dc)
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))
            if 0 <= r + dr < rows and 0 <= c + dc < cols and (r + dr, c + dc) not in blob
        ]
        if not free:
            frontier.remove((r, c))
            continue
        cell = free[int(rng.integers(len(free)))]
        blob.add(cell)
        frontier.append(cell)
    return blob


def mosaic_slide(
    pools: dict,
    split: str,
    rows: int,
    cols: int,
    lesion_fraction: float,
    seed: int,
    size: int,
    lesion_kind: str = TUMOUR,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One slide image (a one-tile white margin around the grid) and its lesion squares
    (tiles of ``lesion_kind``)."""
    rng = np.random.default_rng(seed)
    margin = size // 2
    image = np.full((rows * size + 2 * margin, cols * size + 2 * margin, 3), 242, np.uint8)
    count = int(round(lesion_fraction * rows * cols))
    lesion = _lesion_cells(rows, cols, max(count, 1), rng) if lesion_fraction > 0 else set()
    polygons = []
    for r in range(rows):
        for c in range(cols):
            kind = lesion_kind if (r, c) in lesion else NORMAL
            pool = pools[(split, kind)]
            tile = np.rot90(pool[int(rng.integers(len(pool)))], int(rng.integers(4)))
            if rng.random() < 0.5:
                tile = tile[:, ::-1]
            y, x = margin + r * size, margin + c * size
            image[y : y + size, x : x + size] = tile
            if kind != NORMAL:
                polygons.append(
                    np.array([[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]])
                )
    return image, polygons


def make_mosaic_cohort_job(
    tiles_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    n_slides: int = 24,
    rows: int = 8,
    cols: int = 10,
    lesion_fractions: Sequence[float] = (0.1,),
    tile_size: int = 224,
    mpp: float = 0.5,
    test_fraction: float = 0.3,
    seed: int = 0,
    lesion_kinds: Sequence[str] = (TUMOUR,),
) -> Job[MosaicCohort]:
    """Write ``slides/<id>.tiff``, ``annotations/<id>.geojson`` and ``cohort.csv`` (as
    :func:`~napari_wsi_mil.slide.synthetic.make_cohort_job`); half the slides positive,
    lesion fractions cycling over them, splits stratified by label. With several
    ``lesion_kinds`` the classes are ``normal`` and each kind, in equal shares, and the
    labels (class indices in the result, names in the CSV) are stratified the same way.
    Existing slides are rewritten; everything follows from ``seed``.
    """
    root = Path(out_dir)
    pools = tile_pools(Path(tiles_dir), tile_size, seed, lesion_kinds)
    rng = np.random.default_rng([seed, 31337])
    if len(lesion_kinds) == 1:
        labels, splits = assign_cases(n_slides, 0.5, test_fraction, rng)
    else:
        labels, splits = assign_classes(n_slides, 1 + len(lesion_kinds), test_fraction, rng)
    names = (0, 1) if len(lesion_kinds) == 1 else (NORMAL, *lesion_kinds)
    seeds = np.random.SeedSequence([seed, 4243]).generate_state(n_slides).tolist()
    ids, fractions = [f"mosaic_{i:03d}" for i in range(n_slides)], []
    yield Progress("mosaic", 0, n_slides)
    for i, slide_id in enumerate(ids):
        fraction = float(lesion_fractions[sum(map(bool, labels[:i])) % len(lesion_fractions)])
        fraction = fraction if labels[i] else 0.0
        kind = lesion_kinds[max(labels[i] - 1, 0)]
        image, polygons = mosaic_slide(
            pools, splits[i], rows, cols, fraction, seeds[i], tile_size, kind
        )
        write_pyramid(root / "slides" / f"{slide_id}.tiff", image, mpp, f"mosaic|seed={seeds[i]}")
        name = "Tumor" if len(lesion_kinds) == 1 else kind
        write_geojson(root / "annotations" / f"{slide_id}.geojson", polygons, name)
        fractions.append(len(polygons) / (rows * cols))
        yield Progress("mosaic", i + 1, n_slides, message=slide_id)
    csv_path = root / "cohort.csv"
    with atomic_file(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide_id", "label", "path", "split"])
        for slide_id, label, split in zip(ids, labels, splits, strict=True):
            writer.writerow([slide_id, names[label], f"slides/{slide_id}.tiff", split])
    return MosaicCohort(root, csv_path, ids, labels, splits, fractions)


def assign_classes(
    n_cases: int, n_classes: int, test_fraction: float, rng: np.random.Generator
) -> tuple[list[int], list[str]]:
    """Per case: a class index (equal shares, shuffled) and a split, stratified by class."""
    labels = rng.permutation(np.arange(n_cases) % n_classes)
    splits = np.full(n_cases, "train", dtype=object)
    for label in range(n_classes):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = min(max(int(round(len(members) * test_fraction)), 1), len(members) - 1)
        splits[members[:n_test]] = "test"
    return labels.tolist(), splits.tolist()


def make_mosaic_cohort(tiles_dir, out_dir, **kwargs) -> MosaicCohort:
    """Run :func:`make_mosaic_cohort_job` to the end; same arguments."""
    return run_job(make_mosaic_cohort_job(tiles_dir, out_dir, **kwargs))
