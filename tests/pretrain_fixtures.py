"""A tiny tiled synthetic cohort shared by the pretraining and extraction tests."""

from __future__ import annotations

from pathlib import Path

from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.slide.synthetic import make_cohort
from napari_wsi_mil.slide.tiling import TilingParams
from napari_wsi_mil.store.cohort import Cohort, read_cohort
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tiling_job import tile_slides_job


def tiny_cohort(
    root: Path,
    n_slides: int = 4,
    test_fraction: float = 0.0,
    patch_size: int = 32,
    lesion_fraction: float = 0.3,
) -> tuple[ProjectStore, Cohort]:
    """Small slides tiled into 32-px patches at 1 um/px."""
    synthetic = make_cohort(
        root / "cohort",
        n_slides=n_slides,
        width=1024,
        height=768,
        lesion_fractions=(lesion_fraction,),
        test_fraction=test_fraction,
    )
    cohort = read_cohort(synthetic.csv_path)
    store = ProjectStore(root / "project", create=True)
    run_job(
        tile_slides_job(
            store,
            [(e.slide_id, e.path) for e in cohort],
            TilingParams(target_mpp=1.0, patch_size=patch_size),
        )
    )
    return store, cohort
