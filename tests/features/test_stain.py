"""Stain normalisation: the batched transforms against torchstain's per-image reference,
and extraction that fits, applies and records it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_wsi_mil.cli import main
from napari_wsi_mil.demo import DEMO_TILES
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.features.extract import extract_features_job, read_features
from napari_wsi_mil.features.stain import StainNormaliser, fit_stain, read_reference
from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.store.project import ProjectStore
from pretrain_fixtures import tiny_cohort


def _tile(prefix: str, k: int = 0) -> Path:
    return sorted(DEMO_TILES.glob(f"{prefix}-*"))[k]


def _batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _image(batch: torch.Tensor, k: int) -> np.ndarray:
    return batch[k].permute(1, 2, 0).numpy().astype(int)


def test_macenko_matches_torchstain_on_one_image():
    import torchstain

    source, target = read_reference(_tile("TUM")), read_reference(_tile("NORM"))
    reference = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    reference.fit(torch.from_numpy(target.copy()).permute(2, 0, 1))
    expected, _, _ = reference.normalize(torch.from_numpy(source.copy()).permute(2, 0, 1))
    normaliser = StainNormaliser.fit("macenko", _tile("NORM"))
    normaliser.fit_slide("s", source)  # a slide of one image: its source is that image's
    ours = _image(normaliser.apply(_batch(source), "s"), 0)
    assert np.abs(ours - expected.numpy()).max() <= 1  # rounding: torchstain truncates


def test_reinhard_matches_torchstain_on_one_image():
    import torchstain

    source, target = read_reference(_tile("TUM")), read_reference(_tile("NORM"))
    reference = torchstain.normalizers.ReinhardNormalizer(backend="torch")
    reference.fit(torch.from_numpy(target.copy()).permute(2, 0, 1))
    expected = reference.normalize(torch.from_numpy(source.copy()).permute(2, 0, 1))
    normaliser = StainNormaliser.fit("reinhard", _tile("NORM"))
    normaliser.fit_slide("s", source)
    ours = _image(normaliser.apply(_batch(source), "s"), 0)
    assert np.abs(ours - expected.numpy().astype(int)).max() <= 1


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_a_slide_gets_one_transform_in_any_batch(method):
    """Patches are normalised by their slide's stain, not their own: the same patch
    comes out the same whatever batch it is in; a slide onto its own stain barely moves."""
    a, b = read_reference(_tile("TUM", 0)), read_reference(_tile("TUM", 1))
    normaliser = StainNormaliser.fit(method, _tile("TUM", 0))
    normaliser.fit_slide("s", np.concatenate([a, b]))
    together = normaliser.apply(_batch(a, b), "s")
    alone = normaliser.apply(_batch(b), "s")
    assert torch.equal(together[1], alone[0])
    normaliser.fit_slide("a", a)
    assert np.abs(_image(normaliser.apply(_batch(a), "a"), 0) - a).mean() < 3


def test_reinhard_moves_colour_statistics_to_the_target():
    source = read_reference(_tile("TUM"))
    normaliser = StainNormaliser.fit("reinhard", _tile("STR"))
    normaliser.fit_slide("s", source)
    out = _image(normaliser.apply(_batch(source), "s"), 0).astype(np.uint8)
    before = np.abs(fit_stain("reinhard", source)["mean"] - np.array(normaliser.target["mean"]))
    after = np.abs(fit_stain("reinhard", out)["mean"] - np.array(normaliser.target["mean"]))
    assert (after < 0.2 * before + 1).all(), (before, after)


def test_blank_pixels_cannot_be_fitted_and_are_left_alone():
    with pytest.raises(WsiMilError, match="cannot fit macenko"):
        fit_stain("macenko", np.full((32, 32, 3), 250, np.uint8))
    normaliser = StainNormaliser.fit("macenko", _tile("NORM"))
    assert "stain not normalised" in normaliser.fit_slide(
        "blank", np.full((32, 32, 3), 250, np.uint8)
    )
    patch = _batch(np.full((32, 32, 3), 250, np.uint8))
    assert torch.equal(normaliser.apply(patch, "blank"), patch)


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    return tiny_cohort(tmp_path_factory.mktemp("stain"), n_slides=3)


def _copy(tiled, tmp_path) -> ProjectStore:
    shutil.copytree(tiled[0].root, tmp_path / "p")
    return ProjectStore(tmp_path / "p")


def test_extraction_normalises_records_and_resumes_with_the_same_target(tiled, tmp_path):
    store = _copy(tiled, tmp_path)
    ids = store.slide_ids()
    run_job(extract_features_job(store, ids, "random", "plain", num_workers=0))
    report = run_job(
        extract_features_job(store, ids[:2], "random", "mac", num_workers=0, stain="macenko")
    )
    assert sorted(report.extracted) == ids[:2]
    attrs = store.read_result_attrs("features", "mac", ids[0])
    assert attrs["stain"]["method"] == "macenko" and attrs["stain"]["reference"] == "cohort"
    assert np.asarray(attrs["stain_source"]["he"]).shape == (3, 2)
    assert not np.allclose(
        read_features(store, "mac", ids[0]), read_features(store, "plain", ids[0])
    )
    # the third slide joins later: the set's recorded target is used, not a new one
    run_job(extract_features_job(store, ids, "random", "mac", num_workers=0, stain="macenko"))
    later = store.read_result_attrs("features", "mac", ids[2])
    assert later["stain"] == attrs["stain"]
    with pytest.raises(WsiMilError, match="made with macenko stain normalisation, not reinhard"):
        run_job(
            extract_features_job(
                store, ids, "random", "mac", num_workers=0, stain="reinhard", overwrite=True
            )
        )
    assert store.read_result_attrs("features", "plain", ids[0])["stain"] is None


def test_each_slide_is_sampled_once_when_the_target_is_fitted_on_the_cohort(
    tiled, tmp_path, monkeypatch
):
    from napari_wsi_mil.features import extract

    store = _copy(tiled, tmp_path)
    calls = []
    sample = extract._sample
    monkeypatch.setattr(extract, "_sample", lambda ds, i: calls.append(i) or sample(ds, i))
    run_job(extract_features_job(store, store.slide_ids(), "random", "m", stain="macenko"))
    assert sorted(calls) == list(range(len(store.slide_ids())))


def test_cli_stain_options_and_bad_reference(tiled, tmp_path, capsys):
    store = _copy(tiled, tmp_path)
    args = ["extract", "--project", str(store.root), "--encoder", "random", "--workers", "0"]
    reference = str(_tile("NORM"))
    assert (
        main([*args, "--name", "r", "--stain-norm", "reinhard", "--stain-reference", reference])
        == 0
    )
    recorded = store.read_result_attrs("features", "r", store.slide_ids()[0])["stain"]
    assert recorded["method"] == "reinhard" and recorded["reference"] == reference
    capsys.readouterr()
    missing = str(tmp_path / "nope.png")
    code = main([*args, "--name", "x", "--stain-norm", "macenko", "--stain-reference", missing])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "stain reference image does not exist" in err[0]
    assert not store.result_ids("features", "x")
