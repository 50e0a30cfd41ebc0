"""Semi-real mosaic cohorts built from the packaged real H&E tiles (the demo's)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from napari_wsi_mil.demo import DEMO_TILES
from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.mil.bags import slide_tile_labels
from napari_wsi_mil.slide.mosaic import NORMAL, TUMOUR, make_mosaic_cohort, tile_class, tile_pools
from napari_wsi_mil.slide.slide import open_slide
from napari_wsi_mil.slide.tiling import TilingParams
from napari_wsi_mil.store.cohort import read_cohort
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tiling_job import tile_slides_job


@pytest.mark.parametrize(
    "name, kind",
    [
        ("TUM-TCGA-ABC_1.jpg", TUMOUR),
        ("NORM-TCGA-XYZ.png", NORMAL),
        ("ADI-TCGA-Q.png", NORMAL),
        ("image_3_label_0.png", TUMOUR),
        ("image_4_label_5.png", NORMAL),
        ("image_5_label_7.png", None),
        ("README.md", None),
    ],
)
def test_tile_class_from_file_names(name, kind):
    assert tile_class(Path(name)) == kind


def test_packaged_tiles_have_both_classes_and_their_licence():
    kinds = [tile_class(p) for p in DEMO_TILES.glob("*.jpg")]
    assert kinds.count(TUMOUR) == 32 and kinds.count(NORMAL) == 159
    attribution = (DEMO_TILES / "ATTRIBUTION.md").read_text()
    assert "CC BY 4.0" in attribution and "creativecommons.org/licenses/by/4.0" in attribution


def test_mosaic_cohort_has_lesions_where_its_annotations_say(tmp_path):
    tiles = DEMO_TILES
    cohort = make_mosaic_cohort(
        tiles, tmp_path / "cohort", n_slides=6, rows=4, cols=5, lesion_fractions=(0.2,), seed=3
    )
    rows = list(csv.DictReader(open(cohort.csv_path)))
    assert [int(r["label"]) for r in rows] == cohort.labels and sum(cohort.labels) == 3
    assert {r["split"] for r in rows} == {"train", "test"}
    assert cohort.lesion_fractions == [0.2 if label else 0.0 for label in cohort.labels]

    table = read_cohort(cohort.csv_path)
    store = ProjectStore(tmp_path / "project", create=True)
    params = TilingParams(target_mpp=1.0, patch_size=28)
    run_job(tile_slides_job(store, [(e.slide_id, e.path) for e in table], params))
    for entry in table:
        slide = open_slide(entry.path)
        assert slide.mpp == pytest.approx(0.5)
        grid, _ = store.read_tiles(entry.slide_id)
        labels = slide_tile_labels(
            store, entry.slide_id, entry.label, tmp_path / "cohort" / "annotations"
        )
        # 4 x 5 tiles of 224 px = 16 patches of 56 level-0 px each; background tiles may drop out
        assert 0.6 * 320 <= len(grid) <= 320
        tumour = int((labels == 1).sum())
        # 4 tumour tiles = 64 patches (a few may fall below the tissue threshold)
        assert 48 <= tumour <= 64 if entry.label else tumour == 0


def test_test_slides_never_reuse_training_tiles():
    pools = tile_pools(DEMO_TILES, 32, seed=0)
    for kind in (TUMOUR, NORMAL):
        train = {a.tobytes() for a in pools[("train", kind)]}
        test = {a.tobytes() for a in pools[("test", kind)]}
        assert train and test and not train & test
