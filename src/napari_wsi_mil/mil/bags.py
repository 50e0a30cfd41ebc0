"""Bags for MIL: a case's slides' features, labels and (where known) tile labels.

A bag is a *case*: the union of the patches of its slides (one slide per case when the
cohort has no ``case_id``), as in the WeakSupCon paper's renal-vein-thrombosis and
kidney cohorts. ``slide_of_patch`` and ``patch_index`` map every row back to its slide
and TileGrid position, so attention and instance scores land on the right slide.

Tile labels (1 tumour, 0 normal, -1 unknown) come from, in order: labels painted in
napari and stored in the project (``tile_labels/<slide_id>``), QuPath GeoJSON files
``<annotations>/<slide_id>.geojson``, and, for slides of negative bags, 0 everywhere
(a normal slide has no tumour).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.store.cohort import BINARY_CLASSES, Cohort
from napari_wsi_mil.store.geojson import read_geojson_polygons
from napari_wsi_mil.store.keys import FEATURES, TILE_LABELS
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tile_labels import DEFAULT_MIN_COVERAGE, tile_labels_from_polygons
from napari_wsi_mil.wording import counted

if TYPE_CHECKING:
    from napari_wsi_mil.slide.tiling import TileGrid


@dataclass
class Bag:
    bag_id: str
    label: int
    split: str
    slide_ids: list[str]
    features: np.ndarray  # (N, D) float32
    slide_of_patch: np.ndarray  # (N,) index into slide_ids
    patch_index: np.ndarray  # (N,) row in that slide's TileGrid
    tile_labels: np.ndarray  # (N,) int8: 1, 0 or -1 (unknown)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def has_tile_labels(self) -> bool:
        """Whether any tumour tile is known (what MS-CLAM's mixed supervision uses)."""
        return bool((self.tile_labels == 1).any())


def slide_tile_labels(
    project: ProjectStore | None,
    slide_id: str,
    bag_label: int,
    annotations: str | os.PathLike | None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    grid: TileGrid | None = None,
) -> np.ndarray:
    """Tile labels of one slide (see the module doc for the sources and their order).

    The one rule for training and evaluation. ``grid`` is the slide's TileGrid, read from
    ``project`` when not given; without a project (``None``) only the GeoJSON files and
    the bag label decide.
    """

    if grid is None:
        grid, _ = project.read_tiles(slide_id)
    if project is not None and project.has_result(TILE_LABELS, None, slide_id):
        return project.read_result(TILE_LABELS, None, slide_id)[0]["labels"].astype(np.int8)
    if annotations is not None:
        path = Path(annotations) / f"{slide_id}.geojson"
        if path.exists():
            return tile_labels_from_polygons(grid, read_geojson_polygons(path), min_coverage)
    fill = 0 if bag_label == 0 else -1
    return np.full(len(grid), fill, np.int8)


def load_bags(
    project: ProjectStore,
    cohort: Cohort,
    feature_name: str,
    *,
    annotations: str | os.PathLike | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
) -> list[Bag]:
    """One :class:`Bag` per case of ``cohort``, with every problem reported at once."""
    problems = []
    missing = [
        e.slide_id for e in cohort if not project.has_result(FEATURES, feature_name, e.slide_id)
    ]
    if missing:
        problems.append(
            f"{counted(len(missing), 'slide')} without features {feature_name!r}: "
            f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        )
    bags = []
    if not problems:
        for case_id, entries in cohort.cases().items():
            parts, owners, rows, tiles = [], [], [], []
            for k, entry in enumerate(entries):
                feats = project.read_result(FEATURES, feature_name, entry.slide_id)[0]["features"]
                feats = feats.astype(np.float32)
                if not np.isfinite(feats).all():
                    problems.append(f"slide {entry.slide_id}: features contain NaN or inf")
                parts.append(feats)
                owners.append(np.full(len(feats), k, np.int32))
                rows.append(np.arange(len(feats)))
                tiles.append(
                    slide_tile_labels(
                        project, entry.slide_id, entry.label, annotations, min_coverage
                    )
                )
            dims = {p.shape[1] for p in parts}
            if len(dims) > 1:
                problems.append(f"case {case_id}: slides have features of sizes {sorted(dims)}")
                continue
            bags.append(
                Bag(
                    case_id,
                    entries[0].label,
                    entries[0].split,
                    [e.slide_id for e in entries],
                    np.concatenate(parts),
                    np.concatenate(owners),
                    np.concatenate(rows),
                    np.concatenate(tiles),
                )
            )
        dims = {b.features.shape[1] for b in bags}
        if len(dims) > 1:
            problems.append(f"feature sizes differ between slides: {sorted(dims)}")
    if problems:
        raise WsiMilError("cannot build bags:\n" + "\n".join(f"  - {p}" for p in problems))
    return bags


def check_trainable(bags: list[Bag], classes: tuple[str, ...] = BINARY_CLASSES) -> list[str]:
    """Raise for sets no MIL model can learn from (one class, or a class without
    training bags); return warnings for odd bags."""
    labels = {b.label for b in bags}
    if len(classes) < 2:
        raise WsiMilError(f"the cohort has one class ({', '.join(classes)}): MIL needs two or more")
    if len(classes) == 2 and len(labels) < 2:
        which = "negative" if labels == {0} else "positive"
        raise WsiMilError(f"the training bags are all {which}: MIL needs both labels")
    missing = [name for c, name in enumerate(classes) if c not in labels]
    if missing:
        raise WsiMilError(
            f"no training slide of class {', '.join(repr(m) for m in missing)}: every class "
            f"({', '.join(classes)}) needs slides in the training split"
        )
    return [f"bag {b.bag_id} has no patches and is left out" for b in bags if len(b) == 0]
