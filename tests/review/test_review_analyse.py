"""analyse_slide_job with a real (tiny) trained model, and infer's export hooks."""

import json

import pytest

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.features.extract import extract_features_job
from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.review.analyse import analyse_slide_job, find_encoder
from napari_wsi_mil.slide.synthetic import write_synthetic_slide
from pretrain_fixtures import tiny_cohort


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny cohort (32-px patches at 1 um/px), random-encoder features, an ABMIL model."""
    from napari_wsi_mil.mil.train import MilConfig, train_mil_job

    root = tmp_path_factory.mktemp("review-model")
    store, cohort = tiny_cohort(root, n_slides=4)
    run_job(extract_features_job(store, store.slide_ids(), "random", "rand", num_workers=0))
    result = run_job(
        train_mil_job(store, cohort, "rand", root / "run", MilConfig(epochs=5, threads=1))
    )
    return store, cohort, result.model_path


@pytest.fixture(scope="module")
def lesion_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("review-slide") / "lesion.tiff"
    return write_synthetic_slide(path, width=1024, height=768, seed=11, lesion_fraction=0.15)


def test_analyse_tiles_extracts_and_infers_a_new_slide(trained, lesion_slide, tmp_path):
    _, _, model = trained
    events = []
    analysis = run_job(
        analyse_slide_job(tmp_path / "proj", lesion_slide.path, model, device="cpu"),
        events.append,
    )
    stages = {e.stage for e in events}
    assert {"tiling", "extract", "infer"} <= stages
    assert all(e.total == 1000 for e in events)
    done = [e.done for e in events]
    assert done == sorted(done) and done[-1] == 1000
    grid = analysis.grid
    assert grid.geometry.patch_size == 32 and grid.geometry.target_mpp == 1.0
    assert analysis.slide_id == "lesion" and analysis.slide_size == (1024, 768)
    assert analysis.attention.shape == analysis.instance_probability.shape == (len(grid),)
    assert analysis.attention.sum() == pytest.approx(1.0, abs=1e-4)
    assert 0 <= analysis.probability <= 1 and analysis.prediction in (0, 1)
    assert analysis.prediction_name == "run" and analysis.clusters is None
    # a second run reuses tiles and features
    again = []
    second = run_job(analyse_slide_job(tmp_path / "proj", lesion_slide.path, model), again.append)
    assert not {"tiling", "extract"} & {e.stage for e in again}
    assert second.probability == pytest.approx(analysis.probability)


def test_analyse_uses_the_training_project_as_is(trained):
    from napari_wsi_mil.mil.infer import infer_job

    store, cohort, model = trained
    entry = cohort.entries[0]
    events = []
    analysis = run_job(analyse_slide_job(store, entry.path, model), events.append)
    assert not {"tiling", "extract"} & {e.stage for e in events}
    report = run_job(infer_job(store, model, slide_ids=[entry.slide_id], name="check"))
    assert analysis.probability == pytest.approx(report.probabilities[entry.slide_id])


def test_analyse_refuses_mismatched_inputs(trained, lesion_slide, tmp_path):
    from napari_wsi_mil.slide.tiling import TilingParams
    from napari_wsi_mil.store.project import ProjectStore
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    _, _, model = trained
    with pytest.raises(WsiMilError, match="no such model"):
        run_job(analyse_slide_job(tmp_path / "p0", lesion_slide.path, tmp_path / "none"))
    store = ProjectStore(tmp_path / "p1", create=True)
    run_job(
        tile_slides_job(
            store, [("lesion", lesion_slide.path)], TilingParams(target_mpp=2.0, patch_size=32)
        )
    )
    with pytest.raises(WsiMilError, match="tiled at 2.0 um/px, 32 px but the model needs 1.0"):
        run_job(analyse_slide_job(store, lesion_slide.path, model))


def test_find_encoder(tmp_path):
    from napari_wsi_mil.features.encoders import file_sha256

    run = tmp_path / "run"
    run.mkdir()
    model = run / "model.safetensors"
    assert find_encoder({"feature_attrs": {"encoder": "random"}}, model) == "random"
    encoder = tmp_path / "enc.safetensors"
    encoder.write_bytes(b"not really an encoder")
    meta = {"feature_attrs": {"encoder": "enc.safetensors", "encoder_sha256": "0" * 64}}
    with pytest.raises(WsiMilError, match="encoder file 'enc.safetensors'.*give its path"):
        find_encoder(meta, model)
    with pytest.raises(WsiMilError, match="not the encoder the model"):
        find_encoder(meta, model, encoder=encoder)
    meta["feature_attrs"]["encoder_sha256"] = file_sha256(encoder)
    assert find_encoder(meta, model) == str(encoder)  # found beside the run folder
    assert find_encoder(meta, model, encoder=encoder) == str(encoder)


def test_stored_predictions_export_to_geojson_and_heatmap_tiff(trained, tmp_path):
    import tifffile

    from napari_wsi_mil.mil.infer import infer_job
    from napari_wsi_mil.review.export import export_predictions_job

    store, _, model = trained
    ids = store.slide_ids()[:2]
    run_job(infer_job(store, model, slide_ids=ids, name="exp"))
    written = run_job(
        export_predictions_job(
            store, "exp", ids, geojson_dir=tmp_path / "geo", heatmap_dir=tmp_path / "tif"
        )
    )
    assert len(written) == 3 * len(ids)
    for slide_id in ids:
        grid, _ = store.read_tiles(slide_id)
        tiles = json.loads((tmp_path / "geo" / f"{slide_id}.tiles.geojson").read_text())
        assert len(tiles["features"]) == len(grid)
        mask = json.loads((tmp_path / "geo" / f"{slide_id}.mask.geojson").read_text())
        assert all(f["properties"]["objectType"] == "annotation" for f in mask["features"])
        with tifffile.TiffFile(tmp_path / "tif" / f"{slide_id}.heatmap.ome.tif") as tif:
            assert tif.is_ome and tif.series[0].shape == (2, *grid.grid_shape)


def test_clusiam_encoder_beside_the_run_gives_clusters(trained, lesion_slide, tmp_path):
    """An encoder file with a cluster head: found beside the run folder by its recorded
    name and checksum, used for extraction, and its clusters come back per patch."""
    from napari_wsi_mil._napari.layers import Frame, analysis_layer_data
    from napari_wsi_mil.mil.train import MilConfig, train_mil_job
    from napari_wsi_mil.pretrain.trainer import PretrainConfig, pretrain_job

    store, cohort, _ = trained
    encoder = tmp_path / "clu.safetensors"
    config = PretrainConfig(
        method="clusiam", epochs=1, steps_per_epoch=1, batch_size=8, clusters=4,
        image_size=32, num_workers=0, device="cpu",
    )  # fmt: skip
    run_job(pretrain_job(store, cohort, config, encoder))
    run_job(extract_features_job(store, store.slide_ids(), str(encoder), "clu", num_workers=0))
    result = run_job(
        train_mil_job(store, cohort, "clu", tmp_path / "run", MilConfig(epochs=1, threads=1))
    )
    analysis = run_job(
        analyse_slide_job(tmp_path / "proj", lesion_slide.path, result.model_path, device="cpu")
    )
    assert analysis.clusters is not None and analysis.clusters.shape == (len(analysis.grid),)
    assert analysis.clusters.min() >= 0 and analysis.clusters.max() < 4
    layers = analysis_layer_data(analysis, Frame((0.5, 0.5)))
    assert [kw["name"] for _, kw, _ in layers][-1] == "lesion clusters"
    assert (layers[-1][0] > 0).sum() == len(analysis.grid)
    encoder.rename(tmp_path / "moved.safetensors")  # features stay usable without it
    again = run_job(analyse_slide_job(tmp_path / "proj", lesion_slide.path, result.model_path))
    assert again.clusters is None and "no CluSiam clusters" in again.warnings[0]
