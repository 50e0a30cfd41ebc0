import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.slide.tiling import TilingParams
from napari_wsi_mil.store.patches import (
    BagBalancedBatchSampler,
    PatchDataset,
    collate_patches,
    plan_regions,
    read_patch,
)
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

        def __getattr__(self, name):  # facts such as level_downsamples
            return getattr(self.slide, name)

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


class CountedReads:
    """Records the backend class and ``(width, height)`` of every backend read."""

    def __init__(self, monkeypatch):
        from napari_wsi_mil.slide.openslide_backend import OpenSlideBackend
        from napari_wsi_mil.slide.tiff_backend import TiffBackend

        self.reads: list[tuple[str, int, int]] = []
        for backend in (OpenSlideBackend, TiffBackend):
            monkeypatch.setattr(backend, "read_level", self._counted(backend.read_level))

    def _counted(self, read):
        def counted(backend, level, x, y, width, height):
            self.reads.append((type(backend).__name__, int(width), int(height)))
            return read(backend, level, x, y, width, height)

        return counted


def _loader_patches(store, slide_id, batch_size=64, **kwargs) -> dict[int, np.ndarray]:
    ds = PatchDataset(store, [slide_id], **kwargs)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=0, collate_fn=collate_patches)
    got = {}
    for images, _, patches, ok in loader:
        assert ok.all()
        for img, p in zip(images, patches, strict=True):
            got[int(p)] = img.permute(1, 2, 0).numpy()
    ds.close()
    return got


@pytest.mark.parametrize(
    "params",
    [
        TilingParams(min_tissue=0.0, stride=112),  # level 0, overlapping patches
        TilingParams(target_mpp=1.0, min_tissue=0.0),  # a synthesized level, no resize
        TilingParams(target_mpp=1.5, patch_size=64, min_tissue=0.0),  # resized from level 1
    ],
    ids=["level0-overlap", "synthesized", "resized"],
)
def test_batch_region_reads_match_patch_reads_on_a_real_slide(
    shared_data, tmp_path, monkeypatch, params
):
    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    store = ProjectStore(tmp_path / "p", create=True)
    run_job(tile_slides_job(store, [("cmu", path)], params))
    grid, _ = store.read_tiles("cmu")
    reads = CountedReads(monkeypatch)
    got = _loader_patches(store, "cmu")
    assert len(got) == len(grid) > 20
    assert len(reads.reads) < len(grid) / 8  # whole batches were read as regions
    assert {name for name, _, _ in reads.reads} == {"TiffBackend"}  # Aperio JPEG tiles
    with open_slide(path) as slide:
        for p, image in got.items():
            np.testing.assert_array_equal(image, read_patch(slide, grid, p))


def test_batch_region_reads_match_patch_reads_on_synthetic_slides(tmp_path, monkeypatch):
    store, cohort = tiny_cohort(tmp_path, n_slides=2)
    reads = CountedReads(monkeypatch)
    paths = {e.slide_id: e.path for e in cohort}
    for slide_id in store.slide_ids():
        grid, _ = store.read_tiles(slide_id)
        del reads.reads[:]
        got = _loader_patches(store, slide_id, batch_size=16)
        assert len(got) == len(grid) and len(reads.reads) < len(grid)
        with open_slide(paths[slide_id]) as slide:
            for p, image in got.items():
                np.testing.assert_array_equal(image, read_patch(slide, grid, p))


def test_forked_workers_do_not_share_the_parents_open_slides(tmp_path):
    """The main process reads first (as stain fitting does), then forked loader workers
    read: a worker must open its own handles (shared file offsets interleave reads)."""
    store, cohort = tiny_cohort(tmp_path, n_slides=2)
    ds = PatchDataset(store, store.slide_ids())
    first = ds[0][0]  # opens slide 0 in this process
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
    seen = [
        (int(s), int(p), img)
        for imgs, ss, ps, _ in loader
        for img, s, p in zip(imgs, ss, ps, strict=True)
    ]
    paths = {e.slide_id: e.path for e in cohort}
    for s, p, image in seen:
        slide_id = store.slide_ids()[s]
        grid, _ = store.read_tiles(slide_id)
        with open_slide(paths[slide_id]) as slide:
            np.testing.assert_array_equal(
                image.permute(1, 2, 0).numpy(), read_patch(slide, grid, p)
            )
    assert torch.equal(first, seen[0][2])


def test_region_plan_groups_neighbours_within_bounds():
    rows, cols = np.mgrid[0:4, 0:10]
    block = np.stack([cols.ravel(), rows.ravel()], axis=1) * 32
    far = block + [100_000, 0]
    corners = np.concatenate([block, far])
    groups = plan_regions(corners, 32, max_pixels=10**9)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(corners)))
    assert sorted(len(g) for g in groups) == [40, 40]  # two dense blocks, not the gap
    small = plan_regions(corners, 32, max_pixels=64 * 64 * 4)
    for group in small:
        extent = corners[group].max(axis=0) + 32 - corners[group].min(axis=0)
        assert np.prod(extent) <= 64 * 64 * 4
    scattered = np.array([[0, 0], [5000, 0], [0, 5000], [5000, 5000]])
    assert [len(g) for g in plan_regions(scattered, 32)] == [1, 1, 1, 1]
    assert [len(g) for g in plan_regions(np.array([[0, 0]]), 10_000, max_pixels=1)] == [1]


def test_region_reads_stay_within_the_memory_bound(shared_data, tmp_path, monkeypatch):
    import tracemalloc

    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    store = ProjectStore(tmp_path / "p", create=True)
    run_job(tile_slides_job(store, [("cmu", path)], TilingParams(min_tissue=0.0, stride=112)))
    grid, _ = store.read_tiles("cmu")
    limit = 600 * 600
    reads = CountedReads(monkeypatch)
    ds = PatchDataset(store, ["cmu"], max_region_pixels=limit)
    batch = list(range(64))
    tracemalloc.start()
    try:
        for start in range(0, len(ds), 64):
            items = ds.__getitems__(list(range(start, min(start + 64, len(ds)))))
            del items
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reads.reads and all(w * h <= limit for _, w, h in reads.reads)
    # a batch holds its regions, at most its patches' pixels over the coverage floor
    assert peak < 2 * len(batch) * 224 * 224 * 3 + 4 * limit * 3
    assert ds.__getstate__().keys() == ds.__dict__.keys()  # no region cache to pickle
    ds.close()


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
