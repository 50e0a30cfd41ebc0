"""Torch access to patches: :class:`PatchDataset` and :class:`BagBalancedBatchSampler`.

Imports torch; never imported by the package's ``__init__``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from napari_wsi_mil.errors import SlideError
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.slide.tiling import TileGrid
from napari_wsi_mil.store.project import ProjectStore

if TYPE_CHECKING:
    from napari_wsi_mil.slide.slide import Slide

#: A batch's neighbouring patches of one slide are read as one region of at most this
#: many pixels at the read level (48 MiB as RGB), which bounds what one read holds.
MAX_REGION_PIXELS = 4096 * 4096
#: ... when the patches cover at least this fraction of the region's area (overlapping
#: patches count more than once). Decoding costs about the same per pixel for one big
#: read as for many small ones, so a sparser region would decode pixels no patch uses.
MIN_REGION_COVERAGE = 0.9


def read_patch(slide: Slide, grid: TileGrid, index: int) -> np.ndarray:
    """One ``(patch_size, patch_size, 3)`` uint8 patch, read at the grid's read level."""
    geo = grid.geometry
    x, y = grid.coords[index]
    size = geo.read_size
    return _resized(slide.read_region(geo.read_level, int(x), int(y), size, size), geo)


def _resized(region: np.ndarray, geo) -> np.ndarray:
    from PIL import Image

    if geo.read_size == geo.patch_size:
        return region
    return np.array(  # writable, as torch.from_numpy needs
        Image.fromarray(np.ascontiguousarray(region)).resize(
            (geo.patch_size, geo.patch_size), Image.Resampling.BILINEAR, reducing_gap=2.0
        )
    )


def level_corners(slide: Slide, grid: TileGrid, indices: np.ndarray) -> np.ndarray:
    """``(N, 2)`` top-left ``x, y`` of patches ``indices`` in pixels of the read level,
    rounded as :meth:`Slide.read_region` rounds them."""
    ds = slide.level_downsamples[grid.geometry.read_level]
    return np.array(
        [(round(int(x) / ds), round(int(y) / ds)) for x, y in grid.coords[indices]], np.int64
    ).reshape(-1, 2)


def plan_regions(
    corners: np.ndarray,
    size: int,
    max_pixels: int = MAX_REGION_PIXELS,
    min_coverage: float = MIN_REGION_COVERAGE,
) -> list[np.ndarray]:
    """Split patches (top-left ``corners``, ``size`` px squares) into groups read as one
    region each: the bounding box of a group has at most ``max_pixels`` and the group's
    patches cover at least ``min_coverage`` of it, or the group is a single patch. A group
    that fails is cut in two along x or y where the two bounding boxes are smallest (a
    batch of a row-major grid loses its partial first and last rows first). Returns
    positions into ``corners``; every position is in exactly one group.
    """
    groups, todo = [], [np.arange(len(corners))]
    while todo:
        pos = todo.pop()
        lo, hi = corners[pos].min(axis=0), corners[pos].max(axis=0) + size
        box = int(np.prod(hi - lo))
        if len(pos) == 1 or (box <= max_pixels and len(pos) * size * size >= min_coverage * box):
            groups.append(pos)
            continue
        best = None
        for axis in (0, 1):
            order = pos[np.argsort(corners[pos, axis], kind="stable")]
            c = corners[order]
            head = np.prod(np.maximum.accumulate(c) - np.minimum.accumulate(c) + size, axis=1)
            tail = c[::-1]
            tail = np.prod(np.maximum.accumulate(tail) - np.minimum.accumulate(tail) + size, 1)
            cost = head[:-1] + tail[::-1][1:]  # cut after position k
            k = int(np.argmin(cost))
            if best is None or cost[k] < best[0]:
                best = (cost[k], order[: k + 1], order[k + 1 :])
        todo += [best[2], best[1]]
    return groups


def read_patches(slide: Slide, grid: TileGrid, corners: np.ndarray) -> list:
    """The patches at read-level ``corners`` (see :func:`level_corners`) with one read of
    their bounding box (``slide.read_region``). The pixels are
    those :func:`read_patch` reads wherever the read level is pixel-aligned: the tifffile
    backend, OpenSlide's level 0 and integer downsamples, and synthesized levels; patches
    needing no resize are views into the region."""
    geo = grid.geometry
    (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0) + geo.read_size
    x0, y0, width, height = int(x0), int(y0), int(x1 - x0), int(y1 - y0)
    ds = slide.level_downsamples[geo.read_level]
    region = slide.read_region(geo.read_level, round(x0 * ds), round(y0 * ds), width, height)
    size = geo.read_size
    return [
        _resized(region[y - y0 : y - y0 + size, x - x0 : x - x0 + size], geo)
        for x, y in corners.tolist()
    ]


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
    descriptors.
    ``max_per_slide`` draws a fixed random subset of each slide's patches.
    With ``skip_errors`` a slide that cannot be read gives blank images and
    ``ok=False`` instead of raising, so one bad slide does not stop a loader. A
    ``DataLoader`` batch reads each slide's neighbouring patches as one region
    (:meth:`__getitems__`).

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
    max_region_pixels
        The largest region (pixels at the read level) that one read of a batch's
        neighbouring patches may cover; see :meth:`__getitems__`.
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
        max_region_pixels: int = MAX_REGION_PIXELS,
    ):
        if max_open_slides < 1:
            raise ValueError(f"max_open_slides must be at least 1, not {max_open_slides}")
        self.skip_errors = skip_errors
        self.max_open_slides = max_open_slides
        self.max_region_pixels = max_region_pixels
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
        self._forget_handles()

    def _forget_handles(self) -> None:
        """Start with no open slide handles, owned by this process."""
        self._slides: OrderedDict[int, object] = OrderedDict()  # least recently used first
        self._owner = os.getpid()

    def __len__(self) -> int:
        return len(self.slide_index)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, int, bool]:
        s, p = int(self.slide_index[item]), int(self.patch_index[item])
        try:
            patch = read_patch(self._slide(s), self.grids[s], p)
        except SlideError:
            if not self.skip_errors:
                raise
            return self._blank(s, p)
        return torch.from_numpy(patch).permute(2, 0, 1), s, p, True  # a view; collate copies

    def __getitems__(self, items: list[int]) -> list[tuple[torch.Tensor, int, int, bool]]:
        """A batch of items, as ``DataLoader`` asks for them. Each slide's patches in the
        batch are grouped by :func:`plan_regions` and every group is read with one read
        (:func:`read_patches`; a batch of neighbouring patches, as in extraction, is a few
        reads; a random batch, as in pretraining, is mostly single-patch reads). A group
        whose read fails is read patch by patch, so ``skip_errors`` blanks only the
        patches that cannot be read. Nothing is kept between batches."""
        out: list = [None] * len(items)
        slides, patches = self.slide_index[items], self.patch_index[items]
        for s in np.unique(slides).tolist():
            where = np.flatnonzero(slides == s)
            try:
                slide = self._slide(s)
            except SlideError:
                if not self.skip_errors:
                    raise
                for i in where.tolist():
                    out[i] = self._blank(s, int(patches[i]))
                continue
            grid = self.grids[s]
            corners = level_corners(slide, grid, patches[where])
            for group in plan_regions(corners, grid.geometry.read_size, self.max_region_pixels):
                try:
                    images = read_patches(slide, grid, corners[group])
                except SlideError:  # again patch by patch: only bad patches fail
                    for i in where[group].tolist():
                        out[i] = self[items[i]]
                    continue
                for i, image in zip(where[group].tolist(), images, strict=True):
                    out[i] = (torch.from_numpy(image).permute(2, 0, 1), s, int(patches[i]), True)
        return out

    def _blank(self, s: int, p: int) -> tuple[torch.Tensor, int, int, bool]:
        size = self.grids[s].geometry.patch_size
        return torch.zeros(3, size, size, dtype=torch.uint8), s, p, False

    def _slide(self, s: int):
        """Slide ``s``'s handle, opened if needed; before opening one, the least
        recently used handles are closed so that at most ``max_open_slides`` are open.
        A forked loader worker does not use the handles it inherited: their file offsets
        are shared with the parent's, so reads of both would interleave."""
        if self._owner != os.getpid():
            self._forget_handles()  # the parent's to close, not this process's
        slide = self._slides.get(s)
        if slide is not None:
            self._slides.move_to_end(s)
            return slide
        while len(self._slides) >= self.max_open_slides:
            self._close(next(iter(self._slides)))
        slide = self._slides[s] = open_slide(self.paths[s])
        return slide

    def _close(self, s: int) -> None:
        self._slides.pop(s).close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_slides"], state["_owner"] = OrderedDict(), None
        return state

    def close(self) -> None:
        while self._slides:
            self._close(next(iter(self._slides)))


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
