"""The "Demo cohort" sample core: one cached build per settings, atomic, resumable."""

import json
from dataclasses import asdict

import pytest

from conftest import SMALL_DEMO_SAMPLE
from napari_wsi_mil import demo_sample as ds
from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.store.cohort import read_cohort


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("demo-cache")
    return cache, ds.demo_sample(cache, SMALL_DEMO_SAMPLE)


def _check(sample):
    cohort = {e.slide_id: e for e in read_cohort(sample.root / "cohort" / "cohort.csv")}
    entry = cohort[sample.slide_id]
    assert entry.split == "test" and entry.label == 1 == sample.label
    assert entry.path.resolve() == sample.slide_path.resolve()
    assert sample.model_path.is_file() and sample.annotation_path.is_file()
    assert sample.project == sample.root / "analysis" and not sample.project.exists()
    assert not (sample.root / "project").exists()  # the training project is dropped


def test_small_build_is_a_positive_test_slide_with_a_model(small):
    from napari_wsi_mil.mil.predict import MODEL_FORMAT
    from napari_wsi_mil.weights_file import load_tensors

    cache, sample = small
    _check(sample)
    assert sample.root.parent == cache and sample.root.name.startswith(ds.VERSION + "-")
    assert [p.name for p in cache.iterdir()] == [sample.root.name]  # no temporary left
    _, meta = load_tensors(sample.model_path, MODEL_FORMAT)
    assert meta["model"] == SMALL_DEMO_SAMPLE.model and meta["feature_attrs"]["encoder"] == "random"
    assert meta["feature_attrs"]["patch_size"] == SMALL_DEMO_SAMPLE.patch_size
    manifest = json.loads((sample.root / ds.MANIFEST).read_text())
    assert 0 <= manifest["test_probability"] <= 1 and 0 <= manifest["threshold"] <= 1


def test_second_call_uses_the_cache(small, monkeypatch):
    cache, sample = small

    def no_build(*args):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(ds, "_build", no_build)
    assert ds.demo_sample(cache, SMALL_DEMO_SAMPLE) == sample


def test_cache_key_and_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_WSI_MIL_CACHE", str(tmp_path))
    assert ds.sample_dir() == tmp_path / ds.VERSION
    assert ds.sample_dir(settings=ds.DemoSampleSettings()) == tmp_path / ds.VERSION
    other = ds.sample_dir(settings=SMALL_DEMO_SAMPLE)
    assert other != ds.sample_dir(settings=ds.DemoSampleSettings(epochs=6))
    assert other.parent == tmp_path and other.name.startswith(f"{ds.VERSION}-")


def test_cancelled_build_leaves_nothing_and_broken_cache_is_rebuilt(small, tmp_path):
    import shutil

    _, built = small
    job = ds.demo_sample_job(tmp_path, SMALL_DEMO_SAMPLE)
    next(job)
    next(job)
    job.close()  # cancel during cohort generation
    assert list(tmp_path.iterdir()) == []
    # a build whose model went missing is not used: it is rebuilt in place
    root = ds.sample_dir(tmp_path, SMALL_DEMO_SAMPLE)
    shutil.copytree(built.root, root)
    root.joinpath("run", "model.safetensors").unlink()
    assert ds.load_demo_sample(root) is None
    sample = run_job(ds.demo_sample_job(tmp_path, SMALL_DEMO_SAMPLE))
    assert sample.model_path.is_file() and json.loads((root / ds.MANIFEST).read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == [root.name]


@pytest.mark.slow
def test_default_build_is_what_users_get(tmp_path):
    """The default sample: its model calls the held-out lesion slide tumour."""
    sample = ds.demo_sample(tmp_path)
    assert sample.root == tmp_path / ds.VERSION
    _check(sample)
    meta = json.loads((sample.root / ds.MANIFEST).read_text())
    assert meta["settings"] == json.loads(json.dumps(asdict(ds.DemoSampleSettings())))
    assert meta["test_probability"] >= meta["threshold"]
    print(
        f"default demo sample built in {meta['build_seconds']} s; P(tumour) of "
        f"{sample.slide_id} = {meta['test_probability']:.3f} (threshold {meta['threshold']:.3f})"
    )
