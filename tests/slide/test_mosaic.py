"""Semi-real mosaic cohorts built from the packaged real H&E tiles (the demo's)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from napari_wsi_mil.demo import DEMO_TILES
from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.mil.bags import slide_tile_labels
from napari_wsi_mil.slide.mosaic import (
    NORMAL,
    TUMOUR,
    make_mosaic_cohort,
    tile_class,
    tile_pools,
    tile_tissue,
)
from napari_wsi_mil.slide.slide import open_slide
from napari_wsi_mil.slide.tiling import TilingParams
from napari_wsi_mil.store.cohort import read_cohort
from napari_wsi_mil.store.geojson import read_geojson_objects
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


def test_three_class_mosaic_cohort_names_its_classes(tmp_path):
    kinds = (TUMOUR, "lymphocytes")
    pools = tile_pools(DEMO_TILES, 16, seed=0, lesion_kinds=kinds)
    counts = {kind: sum(len(pools[(s, kind)]) for s in ("train", "test")) for kind in kinds}
    tissues = [tile_tissue(p) for p in DEMO_TILES.glob("*.jpg")]
    assert counts == {TUMOUR: tissues.count(TUMOUR), "lymphocytes": tissues.count("lymphocytes")}
    normal = sum(len(pools[(s, NORMAL)]) for s in ("train", "test"))
    assert normal == len(tissues) - sum(counts.values())  # no lymphocytes among the normal tiles

    made = make_mosaic_cohort(
        DEMO_TILES, tmp_path / "c", n_slides=9, rows=3, cols=4, lesion_fractions=(0.25,),
        lesion_kinds=kinds,
    )  # fmt: skip
    assert sorted(made.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    table = read_cohort(made.csv_path)
    assert table.classes == ("normal", "lymphocytes", "tumour")
    tested = {table.class_name(e.label) for e in table if e.split == "test"}
    assert tested == set(table.classes)  # every class is tested
    for entry, label in zip(table, made.labels, strict=True):
        name = (NORMAL, TUMOUR, "lymphocytes")[label]
        assert table.class_name(entry.label) == name
        objects = read_geojson_objects(tmp_path / "c" / "annotations" / f"{entry.slide_id}.geojson")
        assert {o.classification for o in objects} == (set() if label == 0 else {name})
        assert len(objects) == (0 if label == 0 else 3)
