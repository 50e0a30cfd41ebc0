import numpy as np
import pytest
import tifffile

from napari_wsi_mil.errors import CohortError, SlideError, StoreError
from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.slide.tiling import PatchGeometry, TilingParams, grid_from_mask, tile_slide
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tiling_job import (
    folder_slides,
    slide_id_for,
    tile_slides_job,
    tiled_slide_path,
)


def _write_slide(path, h=2048, w=3072, mpp=0.25, blob=True, levels=3):
    """A white slide with a pink rectangle of 'tissue' at x 1024..2560, y 512..1536."""
    img = np.full((h, w, 3), 245, np.uint8)
    if blob:
        rng = np.random.default_rng(0)
        img[512:1536, 1024:2560] = (220, 130, 180)
        img[512:1536, 1024:2560] -= rng.integers(0, 40, (1024, 1536, 1), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        kw = dict(
            tile=(256, 256),
            photometric="rgb",
            compression="jpeg",
            resolution=(1e4 / mpp, 1e4 / mpp),
            resolutionunit="CENTIMETER",
        )
        tif.write(img, subifds=levels - 1, **kw)
        for i in range(1, levels):
            tif.write(img[:: 2**i, :: 2**i], subfiletype=1, **kw)
    return path


def test_geometry_reads_from_best_level(tmp_path):
    path = _write_slide(tmp_path / "s.tif", mpp=0.25)
    with open_slide(path) as slide:
        geo = PatchGeometry.for_slide(slide, TilingParams(target_mpp=1.0, patch_size=128))
        assert geo.patch_size_level0 == 512
        assert geo.read_level == 2 and geo.read_size == 128  # level 2 is 1.0 um/px
        geo = PatchGeometry.for_slide(slide, TilingParams(target_mpp=0.75, patch_size=100))
        assert geo.read_level == 1 and geo.read_size == 150  # never the coarser level
        assert geo.patch_size_level0 == 300


def test_missing_mpp_needs_explicit_choice(tmp_path):
    path = tmp_path / "nompp.tif"
    tifffile.imwrite(path, np.full((512, 512, 3), 200, np.uint8), photometric="rgb")
    with open_slide(path) as slide:
        with pytest.raises(SlideError, match="--slide-mpp"):
            PatchGeometry.for_slide(slide, TilingParams())
        geo = PatchGeometry.for_slide(slide, TilingParams(target_mpp=None, level=0))
        assert geo.target_mpp is None and geo.patch_size_level0 == 224
        geo = PatchGeometry.for_slide(slide, TilingParams(slide_mpp=0.25))
        assert geo.source_mpp == 0.25 and geo.patch_size_level0 == 448


def test_grid_tissue_fraction_and_raster():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # left half is tissue; one mask pixel = 100 level-0 px
    geo = PatchGeometry(0.5, 0.5, 224, 200, 200, 0, 200)
    grid = grid_from_mask((1000, 1000), mask, (100.0, 100.0), geo, min_tissue=0.5)
    assert grid.grid_shape == (5, 5)
    assert len(grid) == 15 and set(grid.coords[:, 0]) == {0, 200, 400}
    assert np.allclose(grid.tissue_fraction[grid.coords[:, 0] == 400], 0.5)
    grid = grid_from_mask((1000, 1000), mask, (100.0, 100.0), geo, min_tissue=0.6)
    assert len(grid) == 10 and np.allclose(grid.tissue_fraction, 1.0)
    half = grid_from_mask(
        (1000, 1000),
        mask,
        (100.0, 100.0),
        PatchGeometry(0.5, 0.5, 224, 200, 200, 0, 200),
        min_tissue=0.0,
    )
    assert len(half) == 25
    raster = grid.grid_raster(np.arange(1, 11))
    assert raster.shape == (5, 5) and raster[:, 2:].sum() == 0 and raster[0, 0] == 1


def test_tile_slide_finds_the_tissue(tmp_path):
    path = _write_slide(tmp_path / "s.tif")
    with open_slide(path) as slide:
        tiled = tile_slide(slide, TilingParams(target_mpp=0.5, patch_size=128, min_tissue=0.9))
    coords = tiled.grid.coords
    assert len(coords) > 0
    # all kept patches lie inside the tissue rectangle (level-0 px, patch 256 px at level 0)
    assert coords[:, 0].min() >= 1024 - 256 and coords[:, 0].max() + 256 <= 2560 + 256
    assert coords[:, 1].min() >= 512 - 256 and coords[:, 1].max() + 256 <= 1536 + 256
    assert len(coords) >= 0.7 * (1536 // 256) * (1024 // 256)


def test_white_slide_gives_empty_grid_and_warning(tmp_path):
    path = _write_slide(tmp_path / "white.tif", blob=False)
    with open_slide(path) as slide:
        tiled = tile_slide(slide, TilingParams())
    assert len(tiled.grid) == 0 and tiled.warnings
    assert not tiled.tissue_mask.any()


def test_painted_mask_replaces_detection(tmp_path):
    path = _write_slide(tmp_path / "s.tif")
    painted = np.zeros((8, 12), np.uint8)
    painted[0:2, 0:2] = 3  # top-left corner only: level-0 0..512
    with open_slide(path) as slide:
        tiled = tile_slide(slide, TilingParams(patch_size=128, min_tissue=1.0), painted)
    assert len(tiled.grid) == 4
    assert tiled.grid.coords.max() < 512


def test_store_round_trip_resume_and_skip_errors(tmp_path, shared_data):
    good = _write_slide(tmp_path / "good.tif")
    store = ProjectStore(tmp_path / "proj", create=True)
    slides = [("good", good), ("bad", shared_data / "bad" / "empty.svs")]
    with pytest.raises(SlideError):
        run_job(tile_slides_job(store, slides, TilingParams()))
    assert store.slide_ids() == ["good"]  # finished before the error
    report = run_job(tile_slides_job(store, slides, TilingParams(), skip_errors=True))
    assert report.skipped == ["good"] and "bad" in report.failed and "empty" in report.failed["bad"]
    grid, attrs = store.read_tiles("good")
    assert attrs["slide"]["mpp"] == pytest.approx(0.25)
    assert attrs["geometry"]["patch_size_level0"] == 448
    assert len(grid) == attrs["n_patches"] > 0
    assert ProjectStore(tmp_path / "proj").slide_ids() == ["good"]


def test_killed_between_and_mid_slide_resumes(tmp_path, monkeypatch):
    paths = [_write_slide(tmp_path / f"s{i}.tif") for i in range(3)]
    slides = [(f"s{i}", p) for i, p in enumerate(paths)]
    store = ProjectStore(tmp_path / "proj", create=True)
    job = tile_slides_job(store, slides, TilingParams())
    next(job), next(job)  # first slide done, the job paused at the second
    job.close()  # killed between slides
    assert store.slide_ids() == ["s0"]
    # killed mid-slide: the write of s1 fails half-way
    from napari_wsi_mil.store import project as project_module

    real = project_module.ProjectStore.write_result

    def crash(self, kind, name, slide_id, arrays, attrs, overwrite=False):
        if slide_id == "s1":
            import zarr

            from napari_wsi_mil.jobs import atomic_dir

            with atomic_dir(self.result_dir(kind, name, slide_id)) as tmp:
                zarr.open_group(tmp, mode="w").create_array("coords", data=arrays["coords"])
                raise KeyboardInterrupt
        return real(self, kind, name, slide_id, arrays, attrs, overwrite)

    monkeypatch.setattr(project_module.ProjectStore, "write_result", crash)
    with pytest.raises(KeyboardInterrupt):
        run_job(tile_slides_job(store, slides, TilingParams()))
    assert store.slide_ids() == ["s0"]
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "proj" / "slides").iterdir())
    monkeypatch.setattr(project_module.ProjectStore, "write_result", real)
    report = run_job(tile_slides_job(store, slides, TilingParams()))
    assert report.skipped == ["s0"] and sorted(report.tiled) == ["s1", "s2"]


def test_retiling_removes_results_of_the_old_patches_only_when_they_change(tmp_path):
    path = _write_slide(tmp_path / "s.tif")
    store = ProjectStore(tmp_path / "proj", create=True)
    run_job(tile_slides_job(store, [("s", path)], TilingParams()))

    def derive(slide_id):
        n = len(store.read_tiles(slide_id)[0]) if store.has_tiles(slide_id) else 3
        for name in ("a", "b"):
            store.write_result("features", name, slide_id, {"features": np.zeros((n, 4))}, {})
        store.write_result("predictions", "run", slide_id, {"attention": np.ones(n)}, {})
        store.write_result("tile_labels", None, slide_id, {"labels": np.zeros(n, np.int8)}, {})

    derived = [("features", "a"), ("features", "b"), ("predictions", "run"), ("tile_labels", None)]

    def present(slide_id):
        return [r for r in derived if store.has_result(*r, slide_id)]

    derive("s"), derive("other")
    # the same patches again (resume, or an identical re-tiling): everything is kept
    report = run_job(tile_slides_job(store, [("s", path)], TilingParams()))
    assert report.skipped == ["s"] and present("s") == derived
    report = run_job(tile_slides_job(store, [("s", path)], TilingParams(), overwrite=True))
    assert "s" in report.tiled and "s" not in report.warnings and present("s") == derived
    # a painted mask that changes the patches: the old results of this slide are gone
    painted = np.zeros((8, 12), np.uint8)
    painted[0:2, 0:2] = 1
    report = run_job(
        tile_slides_job(store, [("s", path)], TilingParams(), overwrite=True, masks={"s": painted})
    )
    assert present("s") == [] and present("other") == derived
    assert "features/a, features/b, predictions/run, tile_labels" in report.warnings["s"][-1]
    assert not [p for p in (tmp_path / "proj").rglob(".trash-*")]
    # other tiling parameters: the same
    derive("s")
    report = run_job(
        tile_slides_job(store, [("s", path)], TilingParams(patch_size=128), overwrite=True)
    )
    assert present("s") == [] and "extract features" in report.warnings["s"][-1]
    assert store.read_tiles("s")[1]["geometry"]["patch_size"] == 128


def test_store_lock_gives_clear_error(tmp_path):
    store = ProjectStore(tmp_path / "proj", create=True)
    other = ProjectStore(tmp_path / "proj")
    with store.lock():
        with pytest.raises(StoreError, match="another process"):
            with other.lock():
                pass
    with other.lock():
        pass


def test_store_lists_result_names_without_temporaries(tmp_path):
    store = ProjectStore(tmp_path / "proj", create=True)
    assert store.result_names("features") == []
    for name in ("uni", "rand", ".rand.tmp-1"):
        (tmp_path / "proj" / "features" / name).mkdir(parents=True)
    (tmp_path / "proj" / "features" / "notes.txt").write_text("")
    assert store.result_names("features") == ["rand", "uni"]


def test_store_rejects_foreign_dirs_and_unsafe_ids(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("hi")
    with pytest.raises(StoreError, match="not a napari-wsi-mil project"):
        ProjectStore(tmp_path / "x")
    with pytest.raises(StoreError, match="not empty"):
        ProjectStore(tmp_path / "x", create=True)
    store = ProjectStore(tmp_path / "p", create=True)
    for bad in ("../evil", "a/b", ".hidden", ""):
        with pytest.raises(StoreError):
            store.has_tiles(bad)
    assert slide_id_for("/a/b/slide-1.ome.tiff") == "slide-1"


def test_folder_slides_lists_slide_files_by_id_and_refuses_clashes(tmp_path):
    for name in ("b.svs", "a.ome.tiff", "notes.txt", "c.TIF"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.svs").write_bytes(b"")
    slides = folder_slides(tmp_path)
    assert [(sid, path.name) for sid, path in slides] == [
        ("a", "a.ome.tiff"),
        ("b", "b.svs"),
        ("c", "c.TIF"),
    ]
    (tmp_path / "b.tiff").write_bytes(b"")
    with pytest.raises(CohortError, match="b.svs and b.tiff are both slide 'b'"):
        folder_slides(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CohortError, match="no slide files"):
        folder_slides(tmp_path / "empty")
    with pytest.raises(CohortError, match="cannot read the slide folder"):
        folder_slides(tmp_path / "absent")


def test_a_tiling_remembers_its_slide_file(tmp_path):
    path = _write_slide(tmp_path / "s.tiff", levels=1)
    store = ProjectStore(tmp_path / "proj", create=True)
    run_job(tile_slides_job(store, [("s", path)], TilingParams(target_mpp=1.0, patch_size=64)))
    assert tiled_slide_path(store, "s") == path


def test_a_tiling_keeps_the_slide_facts_and_a_failed_one_does_not(tmp_path):
    from napari_wsi_mil.slide.slide import file_token

    path = _write_slide(tmp_path / "s.tiff", levels=2)
    store = ProjectStore(tmp_path / "proj", create=True)
    with pytest.raises(SlideError, match="finer than"):
        run_job(tile_slides_job(store, [("s", path)], TilingParams(target_mpp=1e-6)))
    assert store.cached_slide_info(file_token(path)) is None
    run_job(tile_slides_job(store, [("s", path)], TilingParams(target_mpp=1.0, patch_size=64)))
    cached = store.cached_slide_info(file_token(path))
    with open_slide(path) as slide:
        assert cached["levels"][1]["width"] == slide.level_dimensions[1][0] == 1536
        assert cached["mpp"] == pytest.approx([0.25, 0.25])
