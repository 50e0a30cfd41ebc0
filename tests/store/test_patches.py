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
from pretrain_fixtures import tiny_cohort


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


def test_open_slide_handles_are_capped(tmp_path, monkeypatch):
    import napari_wsi_mil.store.patches as patches

    store, cohort = tiny_cohort(tmp_path, n_slides=4)
    ids = store.slide_ids()
    live, peak, opens = set(), [0], [0]

    class Counted:  # a slide handle that tracks how many are open
        def __init__(self, path):
            self.slide = open_slide(path)
            live.add(self)
            opens[0] += 1
            peak[0] = max(peak[0], len(live))

        def read_region(self, *args, **kwargs):
            assert self in live, "read from a closed handle"
            return self.slide.read_region(*args, **kwargs)

        def close(self):
            live.discard(self)
            self.slide.close()

    monkeypatch.setattr(patches, "open_slide", Counted)
    with pytest.raises(ValueError, match="max_open_slides"):
        PatchDataset(store, ids, max_open_slides=0)
    ds = PatchDataset(store, ids, max_per_slide=6, seed=0, max_open_slides=2)
    assert len(ds) == 6 * len(ids)
    by_slide = [np.flatnonzero(ds.slide_index == s) for s in range(len(ids))]
    round_robin = np.stack(by_slide, axis=1).ravel().tolist()  # every item a new slide
    loader = DataLoader(ds, batch_size=5, sampler=round_robin, num_workers=0)
    got = {}
    for images, slides, items, ok in loader:
        assert ok.all()
        for img, s, p in zip(images, slides, items, strict=True):
            got[int(s), int(p)] = img.permute(1, 2, 0).numpy()
    assert peak[0] == 2 and len(live) == 2
    assert opens[0] > len(ids)  # evicted slides were closed and reopened
    before = opens[0]
    for i in by_slide[0]:  # one slide's patches in a row: one handle, reused
        ds[int(i)]
    assert opens[0] - before <= 1 and len(live) == 2
    ds.close()
    assert not live
    assert len(got) == len(ds)
    paths = {e.slide_id: e.path for e in cohort}
    for s, slide_id in enumerate(ids):
        grid, _ = store.read_tiles(slide_id)
        with open_slide(paths[slide_id]) as slide:
            for p in ds.patch_index[by_slide[s]]:
                np.testing.assert_array_equal(got[s, int(p)], read_patch(slide, grid, int(p)))


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
    with pytest.raises(ValueError, match="no patches from positive bags"):
        BagBalancedBatchSampler([0, 0, 0], per_class=2, batches=1)
    # every class but the negative one is a positive bag (multi-class cohorts)
    three = np.array([0, 0, 1, 2, 2])
    for batch in BagBalancedBatchSampler(three, per_class=4, batches=5, seed=0):
        assert (three[batch[:4]] == 0).all() and (three[batch[4:]] != 0).all()
    assert {int(three[i]) for b in BagBalancedBatchSampler(three, 4, 5) for i in b[4:]} == {1, 2}
