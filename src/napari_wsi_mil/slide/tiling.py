"""Tiling a slide into patches at a physical resolution: :class:`TileGrid`.

Every fact about patch geometry lives in the grid (and its stored attrs): level-0
top-left corners, the source and target pixel sizes, the patch size at level 0, and
the pyramid level and size that patches are read at. Leaving these implicit is the
source of the scale confusions users of CLAM and TRIDENT report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from napari_wsi_mil.errors import ParamError, SlideError
from napari_wsi_mil.slide.slide import Slide
from napari_wsi_mil.slide.tissue import detect_tissue, resize_mask
from napari_wsi_mil.validate import check_float, check_fraction, check_int

#: Tissue is detected on the level closest to this pixel size (um/px).
TISSUE_MPP = 8.0
#: ... or, when the slide has no pixel size, closest to this downsample.
TISSUE_DOWNSAMPLE = 16.0
#: A target pixel size may be at most this many times finer than the slide's own.
MAX_UPSAMPLING = 4


@dataclass(frozen=True)
class TilingParams:
    """How to tile. Sizes are in pixels at the target resolution.

    Give ``target_mpp`` (default 0.5 um/px) or, for slides without a pixel size,
    ``level`` (tile that pyramid level's pixels as they are). ``slide_mpp`` overrides
    the pixel size the file states (or supplies a missing one).
    """

    target_mpp: float | None = 0.5
    level: int | None = None
    patch_size: int = 224
    stride: int | None = None
    min_tissue: float = 0.5
    slide_mpp: float | None = None

    def __post_init__(self):
        check_int("patch_size", self.patch_size, minimum=8)
        if self.stride is not None:
            check_int("stride", self.stride)
        check_fraction("min_tissue", self.min_tissue)
        if (self.target_mpp is None) == (self.level is None):
            raise ParamError("give exactly one of target_mpp and level")
        if self.target_mpp is not None:
            check_float("target_mpp", self.target_mpp)
        if self.level is not None:
            check_int("level", self.level, minimum=0)
        if self.slide_mpp is not None:
            check_float("slide_mpp", self.slide_mpp)


@dataclass(frozen=True)
class PatchGeometry:
    """Where patches come from: what ``read_region`` must read and how to resize it."""

    source_mpp: float | None
    target_mpp: float | None
    patch_size: int
    patch_size_level0: int
    stride_level0: int
    read_level: int
    read_size: int

    @classmethod
    def for_slide(cls, slide: Slide, params: TilingParams) -> PatchGeometry:
        source_mpp = params.slide_mpp or slide.mpp
        stride = params.stride or params.patch_size
        if params.level is not None:
            if not 0 <= params.level < slide.level_count:
                raise SlideError(
                    slide.path,
                    f"level {params.level} does not exist "
                    f"(the slide has {slide.level_count} levels)",
                )
            ds = slide.level_downsamples[params.level]
            return cls(
                source_mpp=source_mpp,
                target_mpp=None if source_mpp is None else source_mpp * ds,
                patch_size=params.patch_size,
                patch_size_level0=round(params.patch_size * ds),
                stride_level0=max(1, round(stride * ds)),
                read_level=params.level,
                read_size=params.patch_size,
            )
        if source_mpp is None:
            raise SlideError(
                slide.path,
                "the file does not state its pixel size (microns per pixel); give it with "
                "--slide-mpp X (or TilingParams(slide_mpp=X)), or tile a pyramid level with "
                "--level N",
            )
        factor = params.target_mpp / source_mpp
        if factor < 1 / MAX_UPSAMPLING:
            raise SlideError(
                slide.path,
                f"target {params.target_mpp:g} um/px is more than {MAX_UPSAMPLING}x finer than "
                f"the slide's {source_mpp:g} um/px; patches would be blown-up pixels (use "
                f"--mpp {source_mpp / MAX_UPSAMPLING:g} or coarser)",
            )
        size0 = max(1, round(params.patch_size * factor))
        level = slide.best_level_for_downsample(factor)
        return cls(
            source_mpp=source_mpp,
            target_mpp=params.target_mpp,
            patch_size=params.patch_size,
            patch_size_level0=size0,
            stride_level0=max(1, round(stride * factor)),
            read_level=level,
            read_size=max(1, round(size0 / slide.level_downsamples[level])),
        )


@dataclass
class TileGrid:
    """The patches of one slide, in one fixed order that every per-patch array shares.

    ``coords`` are level-0 top-left ``(x, y)``; ``grid_index`` the ``(row, col)`` of
    each patch in the patch-grid raster (one pixel per stride step, origin at level-0
    (0, 0)), so any per-patch vector becomes an image with ``grid_raster``.
    """

    coords: np.ndarray  # (N, 2) int64, level-0 x, y
    tissue_fraction: np.ndarray  # (N,) float32
    geometry: PatchGeometry
    grid_shape: tuple[int, int]  # rows, cols

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def grid_index(self) -> np.ndarray:
        """``(N, 2)`` row, col of every patch in the patch-grid raster."""
        step = self.geometry.stride_level0
        return np.stack([self.coords[:, 1] // step, self.coords[:, 0] // step], axis=1)

    def grid_raster(self, values: np.ndarray, fill=0) -> np.ndarray:
        """Scatter per-patch ``values`` into a ``grid_shape`` raster (``fill`` elsewhere)."""
        values = np.asarray(values)
        if len(values) != len(self):
            raise ValueError(f"{len(values)} values for {len(self)} patches")
        raster = np.full(self.grid_shape, fill, dtype=np.result_type(values, np.asarray(fill)))
        rows, cols = self.grid_index.T
        raster[rows, cols] = values
        return raster

    def attrs(self) -> dict:
        """The geometry as JSON-friendly attrs (the store and the h5 export write these)."""
        return {**asdict(self.geometry), "grid_shape": list(self.grid_shape)}


def grid_from_mask(
    slide_size: tuple[int, int],
    mask: np.ndarray,
    mask_downsample: tuple[float, float],
    geometry: PatchGeometry,
    min_tissue: float,
) -> TileGrid:
    """Place patches on a regular grid and keep those with enough tissue under them.

    ``mask_downsample`` is level-0 pixels per mask pixel in ``(x, y)``. The tissue
    fraction of a patch is the mean of the mask over its footprint, computed for all
    patches at once with an integral image.
    """
    width, height = slide_size
    size0, step = geometry.patch_size_level0, geometry.stride_level0
    cols = max(0, (width - size0) // step + 1)
    rows = max(0, (height - size0) // step + 1)
    if rows == 0 or cols == 0:
        empty = np.zeros((0, 2), np.int64)
        return TileGrid(empty, np.zeros(0, np.float32), geometry, (max(rows, 1), max(cols, 1)))
    integral = cv2.integral(np.ascontiguousarray(mask, dtype=np.uint8))  # zero first row, column
    xs = np.arange(cols) * step
    ys = np.arange(rows) * step
    fx, fy = mask_downsample

    def edges(start, scale, limit):
        lo = np.clip(np.floor(start / scale).astype(int), 0, limit)
        hi = np.clip(np.ceil((start + size0) / scale).astype(int), 0, limit)
        return lo, np.maximum(hi, np.minimum(lo + 1, limit))

    x0, x1 = edges(xs, fx, mask.shape[1])
    y0, y1 = edges(ys, fy, mask.shape[0])
    total = (
        integral[y1[:, None], x1[None, :]]
        - integral[y0[:, None], x1[None, :]]
        - integral[y1[:, None], x0[None, :]]
        + integral[y0[:, None], x0[None, :]]
    )
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    fraction = np.where(area > 0, total / np.maximum(area, 1), 0.0)
    keep_r, keep_c = np.nonzero(fraction >= min_tissue)  # 0 keeps the whole grid
    coords = np.stack([xs[keep_c], ys[keep_r]], axis=1).astype(np.int64)
    return TileGrid(coords, fraction[keep_r, keep_c].astype(np.float32), geometry, (rows, cols))


def tissue_level(slide: Slide, source_mpp: float | None) -> int:
    """The level tissue detection reads: nearest to 8 um/px (or a 16x downsample)."""
    ds = TISSUE_MPP / source_mpp if source_mpp else TISSUE_DOWNSAMPLE
    return int(np.argmin([abs(np.log(d / ds)) for d in slide.level_downsamples]))


@dataclass
class TiledSlide:
    """A slide's tissue mask and tile grid: what tiling writes to the store."""

    grid: TileGrid
    tissue_mask: np.ndarray  # bool (H, W) at the tissue level
    mask_downsample: tuple[float, float]  # level-0 pixels per mask pixel (x, y)
    warnings: list[str]


def tile_slide(
    slide: Slide, params: TilingParams, tissue_mask: np.ndarray | None = None
) -> TiledSlide:
    """Detect tissue (unless a mask is given, e.g. painted in napari) and place patches.

    ``tissue_mask`` may have any resolution covering the whole slide; nonzero is tissue.
    """
    geometry = PatchGeometry.for_slide(slide, params)
    level = tissue_level(slide, geometry.source_mpp)
    w, h = slide.level_dimensions[level]
    warnings: list[str] = []
    if tissue_mask is None:
        # A synthesized level is 2x2 means of the native one; with a physical pixel size,
        # detection block-averages the native level itself to its working resolution
        # (one pass instead of one per synthesized level).
        mpp = geometry.source_mpp
        read = min(level, slide.native_level_count - 1) if mpp else level
        rw, rh = slide.level_dimensions[read]
        detected = detect_tissue(
            slide.read_region(read, 0, 0, rw, rh),
            mpp * slide.level_downsamples[read] if mpp else None,
            mask_shape=(h, w),
        )
        mask, warnings = detected.mask, list(detected.warnings)
    else:
        mask = np.asarray(tissue_mask) != 0
        if mask.ndim != 2:
            raise ValueError(f"a tissue mask must be 2-D, got shape {mask.shape}")
        if mask.shape != (h, w):
            mask = resize_mask(mask, (h, w))
    w0, h0 = slide.dimensions
    mask_downsample = (w0 / mask.shape[1], h0 / mask.shape[0])
    grid = grid_from_mask(slide.dimensions, mask, mask_downsample, geometry, params.min_tissue)
    if len(grid) == 0:
        warnings.append("no patches: no tissue region is large enough at this patch size")
    return TiledSlide(grid, mask, mask_downsample, warnings)
