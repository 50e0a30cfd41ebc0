"""Torch access to patches: :class:`PatchDataset` and :class:`BagBalancedBatchSampler`.

Imports torch; never imported by the package's ``__init__``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from napari_wsi_mil.errors import SlideError
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.slide.tiling import TileGrid
from napari_wsi_mil.store.project import ProjectStore


def read_patch(slide, grid: TileGrid, index: int) -> np.ndarray:
    """One ``(patch_size, patch_size, 3)`` uint8 patch, read at the grid's read level."""
    from PIL import Image

    geo = grid.geometry
    x, y = grid.coords[index]
    region = slide.read_region(geo.read_level, int(x), int(y), geo.read_size, geo.read_size)
    if geo.read_size != geo.patch_size:
        region = np.array(  # writable, as torch.from_numpy needs
            Image.fromarray(region).resize(
                (geo.patch_size, geo.patch_size), Image.Resampling.BILINEAR, reducing_gap=2.0
            )
        )
    return region


def collate_patches(items: list[tuple]) -> list:
    """``default_collate`` for :class:`PatchDataset` items, with a cheaper image stack.

    Items' images are ``(3, H, W)`` views of ``(H, W, 3)`` arrays; stacking them as
    ``(H, W, 3)`` is a plain copy (``torch.stack`` of the channel-first views is a
    strided gather, about 2.5x slower). The batch is ``(N, 3, H, W)`` in
    ``torch.channels_last`` memory format, which is also what the models run fastest
    with on a GPU.
    """
    from torch.utils.data import default_collate

    images = torch.stack([item[0].permute(1, 2, 0) for item in items]).permute(0, 3, 1, 2)
    rest = default_collate([item[1:] for item in items])
    return [images, *rest]


class PatchDataset(Dataset):
    """Patches of the tiled slides of a project, in each slide's TileGrid order.

    Items are ``(image, slide_index, patch_index, ok)`` with ``image`` a ``(3, H, W)``
    uint8 tensor. Every loader worker opens its own slide handles (handles are not
    pickled) and keeps at most ``max_open_slides`` of them open, closing the least
    recently used, so a cohort of thousands of slides does not exhaust file
    descriptors. ``max_per_slide`` draws a fixed random subset of each slide's patches.
    With ``skip_errors`` a slide that cannot be read gives blank images and
    ``ok=False`` instead of raising, so one bad slide does not stop a loader.

    Parameters
    ----------
    project
        The project store.
    slide_ids
        Slides to read (they must be tiled).
    slide_paths
        Slide file of each id; defaults to the path recorded at tiling.
    max_per_slide, seed
        Optional per-slide subsampling, deterministic from ``seed``.
    skip_errors
        Return blank patches flagged ``ok=False`` for unreadable slides.
    max_open_slides
        Slide handles each process (main or loader worker) keeps open at most; a slide
        read again after being closed is reopened.
    """

    def __init__(
        self,
        project: ProjectStore,
        slide_ids: Sequence[str],
        slide_paths: dict[str, str | os.PathLike] | None = None,
        max_per_slide: int | None = None,
        seed: int = 0,
        skip_errors: bool = False,
        max_open_slides: int = 32,
    ):
        if max_open_slides < 1:
            raise ValueError(f"max_open_slides must be at least 1, not {max_open_slides}")
        self.skip_errors = skip_errors
        self.max_open_slides = max_open_slides
        self.slide_ids = list(slide_ids)
        self.grids: list[TileGrid] = []
        self.paths: list[str] = []
        rng = np.random.default_rng(seed)
        slide_index, patch_index = [], []
        for i, slide_id in enumerate(self.slide_ids):
            grid, attrs = project.read_tiles(slide_id)
            self.grids.append(grid)
            paths = slide_paths or {}
            self.paths.append(str(paths.get(slide_id, attrs["slide"]["path"])))
            idx = np.arange(len(grid))
            if max_per_slide is not None and len(idx) > max_per_slide:
                idx = np.sort(rng.choice(idx, max_per_slide, replace=False))
            slide_index.append(np.full(len(idx), i, np.int64))
            patch_index.append(idx)
        self.slide_index = np.concatenate(slide_index) if slide_index else np.zeros(0, np.int64)
        self.patch_index = np.concatenate(patch_index) if patch_index else np.zeros(0, np.int64)
        self._slides: OrderedDict[int, object] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self.slide_index)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, int, bool]:
        s, p = int(self.slide_index[item]), int(self.patch_index[item])
        try:
            patch = read_patch(self._slide(s), self.grids[s], p)
        except SlideError:
            if not self.skip_errors:
                raise
            size = self.grids[s].geometry.patch_size
            return torch.zeros(3, size, size, dtype=torch.uint8), s, p, False
        return torch.from_numpy(patch).permute(2, 0, 1), s, p, True  # a view; collate copies

    def _slide(self, s: int):
        """Slide ``s``'s handle, opened if needed; before opening one, the least
        recently used handles are closed so that at most ``max_open_slides`` are open."""
        slide = self._slides.get(s)
        if slide is not None:
            self._slides.move_to_end(s)
            return slide
        while len(self._slides) >= self.max_open_slides:
            self._slides.popitem(last=False)[1].close()
        slide = self._slides[s] = open_slide(self.paths[s])
        return slide

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_slides"] = OrderedDict()
        return state

    def close(self) -> None:
        for slide in self._slides.values():
            slide.close()
        self._slides.clear()


class _EpochBatchSampler(Sampler[list[int]]):
    """A fixed number of batches per epoch, drawn from a generator seeded by
    ``(seed, epoch)``, so every epoch's draw is reproducible (and resumable)."""

    def __init__(self, batches: int, seed: int):
        self.batches, self.seed, self.epoch = batches, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])


class BagBalancedBatchSampler(_EpochBatchSampler):
    """Batches of ``per_class`` items from negative and from positive bags, drawn with
    replacement.

    WeakSupCon's sampling: every batch is half negative-bag patches (label 0) and half
    positive-bag patches (any other label, so every non-negative class of a
    multi-class cohort); an epoch is a fixed number of batches.

    Parameters
    ----------
    item_labels
        The bag label (class index, 0 negative) of every dataset item.
    per_class
        Items drawn from each group per batch.
    batches
        Batches per epoch.
    seed
        The draw is deterministic from ``seed`` and the epoch (:meth:`set_epoch`).
    """

    def __init__(self, item_labels: Sequence[int], per_class: int, batches: int, seed: int = 0):
        labels = np.asarray(item_labels)
        self.pools = [np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)]
        groups = zip(("negative", "positive"), self.pools, strict=True)
        empty = [name for name, pool in groups if not len(pool)]
        if empty:
            raise ValueError(
                f"no patches from {empty[0]} bags: bag-balanced "
                "sampling needs negative and positive bags"
            )
        super().__init__(batches, seed)
        self.per_class = per_class

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        for _ in range(self.batches):
            batch = [rng.choice(pool, self.per_class, replace=True) for pool in self.pools]
            yield np.concatenate(batch).tolist()


class RandomBatchSampler(_EpochBatchSampler):
    """``batches`` batches of ``batch_size`` items drawn uniformly with replacement,
    deterministic from ``seed`` and the epoch (SimCLR, SupCon and CluSiam batches)."""

    def __init__(self, n_items: int, batch_size: int, batches: int, seed: int = 0):
        if n_items == 0:
            raise ValueError("no patches to sample from")
        super().__init__(batches, seed)
        self.n_items, self.batch_size = n_items, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        for _ in range(self.batches):
            yield rng.integers(0, self.n_items, self.batch_size).tolist()


class RankSlice(Sampler[list[int]]):
    """Every rank's share of a global batch sampler: positions ``rank::world_size``."""

    def __init__(self, sampler, rank: int, world_size: int):
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.sampler:
            yield batch[self.rank :: self.world_size]
