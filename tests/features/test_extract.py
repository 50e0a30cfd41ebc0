import h5py
import numpy as np
import pytest
import torch

from napari_wsi_mil.errors import SlideError, WsiMilError
from napari_wsi_mil.features.encoders import load_encoder_spec
from napari_wsi_mil.features.extract import extract_features_job, preprocess, read_features
from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.store.h5_interop import export_features_job, import_features_job
from napari_wsi_mil.store.patches import read_patch
from napari_wsi_mil.store.project import ProjectStore
from pretrain_fixtures import tiny_cohort


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    return tiny_cohort(tmp_path_factory.mktemp("extract"), n_slides=3)


def _fresh_store(tiled, tmp_path):
    """A copy of the tiled project, so tests can write features independently."""
    import shutil

    store, cohort = tiled
    shutil.copytree(store.root, tmp_path / "p")
    return ProjectStore(tmp_path / "p"), cohort


def test_features_match_the_encoder_and_resume(tiled, tmp_path, monkeypatch):
    store, cohort = _fresh_store(tiled, tmp_path)
    ids = store.slide_ids()
    reads = []
    read_tiles = store.read_tiles
    monkeypatch.setattr(store, "read_tiles", lambda s: reads.append(s) or read_tiles(s))
    report = run_job(extract_features_job(store, ids, "random", "rand", num_workers=0))
    assert sorted(report.extracted) == ids and not report.failed
    assert sorted(reads) == ids  # each slide's tiles are read once
    monkeypatch.undo()
    grid, _ = store.read_tiles(ids[0])
    feats = read_features(store, "rand", ids[0])
    assert feats.shape == (len(grid), 512) and feats.dtype == np.float16
    attrs = store.read_result("features", "rand", ids[0])[1]
    assert attrs["encoder_sha256"] == "random-resnet18-seed0" and attrs["target_mpp"] == 1.0
    encoder = load_encoder_spec("random")
    path = cohort.entries[0].path
    with open_slide(path) as slide:
        patches = np.stack([read_patch(slide, grid, i) for i in range(4)])
    images = torch.from_numpy(patches).permute(0, 3, 1, 2)
    with torch.inference_mode():
        expected = encoder.model(preprocess(images, encoder, torch.device("cpu"))).numpy()
    np.testing.assert_allclose(feats[:4].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    again = run_job(extract_features_job(store, ids, "random", "rand", num_workers=0))
    assert again.skipped == ids and not again.extracted


def test_killed_run_resumes_and_loader_workers_agree(tiled, tmp_path):
    store, _ = _fresh_store(tiled, tmp_path)
    ids = store.slide_ids()
    job = extract_features_job(store, ids, "random", "rand", batch_size=8, num_workers=2)
    for _ in job:
        if store.result_ids("features", "rand"):
            job.close()  # killed after the first slide was written
            break
    first = store.result_ids("features", "rand")
    assert 1 <= len(first) < len(ids)
    report = run_job(extract_features_job(store, ids, "random", "rand", num_workers=0))
    assert report.skipped == first and len(report.extracted) == len(ids) - len(first)


def test_empty_grid_and_damaged_slide(tmp_path):
    from napari_wsi_mil.slide.synthetic import write_synthetic_slide
    from napari_wsi_mil.slide.tiling import TilingParams
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    store = ProjectStore(tmp_path / "p", create=True)
    good = write_synthetic_slide(tmp_path / "good.tiff", width=1024, height=768).path
    gone = write_synthetic_slide(tmp_path / "gone.tiff", width=1024, height=768, seed=2).path
    params = TilingParams(target_mpp=1.0, patch_size=32)
    run_job(tile_slides_job(store, [("good", good), ("gone", gone)], params))
    # patches larger than the slide: an empty tile grid
    run_job(tile_slides_job(store, [("white", good)], TilingParams(patch_size=2048)))
    gone.unlink()  # the slide file disappears after tiling
    with pytest.raises(SlideError):
        run_job(extract_features_job(store, ["gone"], "random", "f", num_workers=0))
    report = run_job(
        extract_features_job(
            store, ["good", "gone", "white"], "random", "f", num_workers=0, skip_errors=True
        )
    )
    assert "gone" in report.failed and report.extracted["white"] == 0
    assert report.warnings["white"] and read_features(store, "f", "white").shape == (0, 512)
    assert not store.has_result("features", "f", "gone")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # to write a TorchScript file
def test_encoder_files_state_dict_and_refusal_of_code(tmp_path):
    """State dicts load; TorchScript and pickled modules are refused (loading them can
    run code)."""
    from napari_wsi_mil.pretrain.models import resnet18_trunk

    trunk = resnet18_trunk().eval()
    torch.save(trunk.state_dict(), tmp_path / "state.pth")
    loaded = load_encoder_spec(str(tmp_path / "state.pth"))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), trunk(x))
    torch.jit.save(torch.jit.script(trunk), tmp_path / "script.pt")
    torch.save(trunk, tmp_path / "pickled.pt")  # a whole pickled module
    for refused in ("script.pt", "pickled.pt"):  # both can run code when loaded
        with pytest.raises(WsiMilError, match="pickled modules and TorchScript archives are"):
            load_encoder_spec(str(tmp_path / refused))
    with pytest.raises(WsiMilError, match="no such encoder"):
        load_encoder_spec(str(tmp_path / "missing.safetensors"))


def test_h5_round_trip_and_bad_files(tiled, tmp_path):
    store, _ = _fresh_store(tiled, tmp_path)
    ids = store.slide_ids()
    run_job(extract_features_job(store, ids, "random", "rand", num_workers=0, dtype="float32"))
    run_job(export_features_job(store, "rand", tmp_path / "h5"))
    target = ProjectStore(tmp_path / "imported", create=True)
    assert run_job(import_features_job(tmp_path / "h5", target, "ext")) == ids
    for slide_id in ids:
        np.testing.assert_array_equal(
            read_features(target, "ext", slide_id), read_features(store, "rand", slide_id)
        )
        np.testing.assert_array_equal(
            target.read_tiles(slide_id)[0].coords, store.read_tiles(slide_id)[0].coords
        )
    # importing into the tiled source project checks the coordinates match
    assert run_job(import_features_job(tmp_path / "h5", store, "again")) == ids

    bad = tmp_path / "bad"
    bad.mkdir()
    with h5py.File(bad / "s1.h5", "w") as h5:
        h5["features"] = np.array([[1.0, np.nan], [0.0, 1.0]])
        h5["coords"] = np.array([[0, 0], [224, 0]])
        h5["coords"].attrs["patch_size_level0"] = 224
    with pytest.raises(WsiMilError, match="NaN"):
        run_job(import_features_job(bad, ProjectStore(tmp_path / "x", create=True), "f"))
    with h5py.File(bad / "s1.h5", "w") as h5:
        h5["features"] = np.zeros((3, 4))
        h5["coords"] = np.array([[0, 0], [224, 0]])
    with pytest.raises(WsiMilError, match="3 feature rows but 2"):
        run_job(import_features_job(bad, ProjectStore(tmp_path / "y", create=True), "f"))
    with h5py.File(bad / "s1.h5", "w") as h5:
        h5["features"] = np.zeros((2, 4))
        h5["coords"] = np.array([[0, 0], [224, 0]])
    with pytest.raises(WsiMilError, match="--patch-size-level0"):
        run_job(import_features_job(bad, ProjectStore(tmp_path / "z", create=True), "f"))
    done = run_job(
        import_features_job(
            bad, ProjectStore(tmp_path / "w", create=True), "f", patch_size_level0=224
        )
    )
    assert done == ["s1"]


def test_dask_local_cluster_gives_the_same_features(tiled, tmp_path):
    from napari_wsi_mil.features.distributed import extract_with_dask_job

    store, _ = _fresh_store(tiled, tmp_path)
    ids = store.slide_ids()
    report = run_job(extract_with_dask_job(store, ids, "random", "dask", workers=2))
    assert sorted(report.extracted) == ids and not report.failed
    run_job(extract_features_job(store, ids, "random", "local", num_workers=0))
    for slide_id in ids:
        np.testing.assert_allclose(
            read_features(store, "dask", slide_id).astype(np.float32),
            read_features(store, "local", slide_id).astype(np.float32),
            rtol=1e-3,
            atol=1e-3,
        )
    # a slide that fails on the workers is reported, not dropped
    missing = store.read_tiles(ids[0])[1]["slide"]["path"]
    import os

    os.rename(missing, missing + ".moved")
    try:
        report = run_job(extract_with_dask_job(store, ids, "random", "dask2", workers=2, retries=0))
    finally:
        os.rename(missing + ".moved", missing)
    assert ids[0] in report.failed and sorted(report.extracted) == ids[1:]
