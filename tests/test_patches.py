import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.slide.tiling import TilingParams
from napari_wsi_mil.store.patches import BagBalancedBatchSampler, PatchDataset, read_patch
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tiling_job import tile_slides_job


@pytest.fixture
def cmu_store(tmp_path, shared_data):
    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    store = ProjectStore(tmp_path / "p", create=True)
    run_job(tile_slides_job(store, [("cmu", path)], TilingParams()))
    return store, path


def test_dataset_matches_direct_reads_with_workers(cmu_store):
    store, path = cmu_store
    ds = PatchDataset(store, ["cmu"])
    grid, _ = store.read_tiles("cmu")
    assert len(ds) == len(grid) > 10
    loader = DataLoader(ds, batch_size=8, num_workers=2)
    images, slides, patches, ok = next(iter(loader))
    assert ok.all()
    assert images.shape == (8, 3, 224, 224) and images.dtype == torch.uint8
    with open_slide(path) as slide:
        for img, p in zip(images, patches, strict=True):
            x, y = grid.coords[int(p)]
            expected = slide.read_region(0, int(x), int(y), 224, 224)
            np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), expected)


def test_dataset_resizes_from_read_level(cmu_store, tmp_path):
    store, path = cmu_store
    store2 = ProjectStore(tmp_path / "p2", create=True)
    run_job(tile_slides_job(store2, [("cmu", path)], TilingParams(target_mpp=1.5, patch_size=64)))
    grid, _ = store2.read_tiles("cmu")
    assert grid.geometry.read_level == 1 and grid.geometry.read_size == 96
    with open_slide(path) as slide:
        assert read_patch(slide, grid, 0).shape == (64, 64, 3)


def test_subsampling_is_deterministic(cmu_store):
    store, _ = cmu_store
    a = PatchDataset(store, ["cmu"], max_per_slide=5, seed=1)
    b = PatchDataset(store, ["cmu"], max_per_slide=5, seed=1)
    c = PatchDataset(store, ["cmu"], max_per_slide=5, seed=2)
    assert len(a) == 5
    assert (a.patch_index == b.patch_index).all() and (a.patch_index != c.patch_index).any()


def test_bag_balanced_sampler_halves_and_replacement():
    labels = np.array([0] * 3 + [1] * 50)
    sampler = BagBalancedBatchSampler(labels, per_class=8, batches=20, seed=0)
    batches = list(sampler)
    assert len(batches) == 20
    for batch in batches:
        assert (labels[batch[:8]] == 0).all() and (labels[batch[8:]] == 1).all()
    assert len(set(batches[0][:8])) <= 3  # only 3 negatives: drawn with replacement
    sampler.set_epoch(1)
    assert list(sampler) != batches
    sampler.set_epoch(0)
    assert list(sampler) == batches
    with pytest.raises(ValueError, match="label 1"):
        BagBalancedBatchSampler([0, 0, 0], per_class=2, batches=1)
