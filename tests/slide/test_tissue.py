"""Tissue detection on real tiles, the CMU-1 small region and synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_wsi_mil.slide.tissue import (
    TissueMask,
    detect_tissue,
    mask_from_labels,
    pen_mask,
    resize_mask,
)

MOSTLY_TISSUE = [
    "high-nuclei-score-level0.png",
    "medium-nuclei-score-level0.png",
    "medium-nuclei-score-level1-2.png",
    "medium-nuclei-score-level2.png",
    "very-low-nuclei-score-level0.png",
    "tissue-level0-7352-11762-7864-12274.png",
    "tissue-level2-1784-6289-5880-10386.png",
    "tissue-level2-3000-7666-7096-11763.png",
    "tissue-level2-4640-4649-8736-8746.png",
    "tissue-level2-4760-5241-8856-9338.png",
]
SOME_TISSUE = [
    "high-nuclei-score-level2.png",  # a strip of tissue along one edge
    "low-nuclei-score-level0.png",  # fat: thin membranes around empty cells
    "low-nuclei-score-level1.png",
    "medium-nuclei-score-level1.png",
    "tissue-level0-4302-10273-4814-10785.png",  # loose, lacy stroma
]
NO_TISSUE = [
    "no-tissue.png",
    "no-tissue2.png",
    "no-tissue-line.png",
    "no-tissue-green-pen.png",
    "no-tissue-red-pen.png",
    "almost-white-1.png",
    "almost-white-2.png",  # a sliver of tissue in one corner
    "almost-white-ihc.png",
]
TISSUE_WITH_PEN = [
    "high-nuclei-score-red-pen-level1.png",
    "medium-nuclei-score-green-pen-level1.png",
    "very-low-nuclei-score-red-pen-level1.png",
]


def _tile(shared_data: Path, name: str) -> np.ndarray:
    from skimage import io

    path = shared_data / "tiles" / name
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return io.imread(path)[..., :3]


def _main_stroke(rgb: np.ndarray) -> np.ndarray:
    """Pixels of unmistakable ink in the largest stroke of a tile.

    The rule is independent of the one under test. Only the largest stroke
    counts: a faint smear cut by a tile edge is a fair miss.
    """
    from scipy import ndimage as ndi

    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    ink = (g > r + 40) | ((r > 180) & (g < 90) & (b < 110) & (b - g < 25))
    labels, count = ndi.label(ndi.binary_closing(ink, np.ones((9, 9), dtype=bool)))
    if count == 0:
        return ink
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return ink & (labels == largest)


@pytest.mark.parametrize("name", MOSTLY_TISSUE)
def test_tissue_tiles_are_mostly_tissue(shared_data, name):
    result = detect_tissue(_tile(shared_data, name))
    assert result.tissue_fraction > 0.4
    assert result.warnings == []


@pytest.mark.parametrize("name", SOME_TISSUE)
def test_sparse_tissue_tiles_have_tissue(shared_data, name):
    assert detect_tissue(_tile(shared_data, name)).tissue_fraction > 0.05


@pytest.mark.parametrize("name", NO_TISSUE)
def test_empty_tiles_have_almost_no_tissue(shared_data, name):
    assert detect_tissue(_tile(shared_data, name)).tissue_fraction < 0.04


@pytest.mark.parametrize("name", ["no-tissue-green-pen.png", "no-tissue-red-pen.png"])
def test_pen_on_glass_is_not_tissue_at_scan_resolution(shared_data, name):
    # At its real resolution (about 1 um/px) the blurred ink fringe is covered too.
    result = detect_tissue(_tile(shared_data, name), 1.0)
    assert result.tissue_fraction < 0.01
    assert result.warnings == ["no tissue found"]


@pytest.mark.parametrize("name", TISSUE_WITH_PEN)
def test_pen_over_tissue_is_excluded(shared_data, name):
    rgb = _tile(shared_data, name)
    ink = _main_stroke(rgb)
    assert ink.mean() > 0.01, "the tile should contain ink"
    result = detect_tissue(rgb)
    assert (result.mask & ink).sum() < 0.05 * ink.sum()
    assert pen_mask(rgb)[ink].mean() > 0.9


@pytest.mark.parametrize("name", TISSUE_WITH_PEN[:2])
def test_pen_over_tissue_keeps_the_tissue(shared_data, name):
    assert detect_tissue(_tile(shared_data, name)).tissue_fraction > 0.2


def test_pen_removal_can_be_turned_off(shared_data):
    rgb = _tile(shared_data, "no-tissue-green-pen.png")
    assert detect_tissue(rgb, remove_pen=False).tissue_fraction > 0.5


def test_cmu_small_region(shared_data):
    import tifffile
    from skimage.transform import downscale_local_mean

    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    full = tifffile.imread(path)
    assert full.shape == (2967, 2220, 3)
    thumb = downscale_local_mean(full, (16, 16, 1)).round().astype(np.uint8)
    result = detect_tissue(thumb, 0.499 * 16)
    assert isinstance(result, TissueMask)
    assert result.mask.shape == thumb.shape[:2]
    assert 0.2 < result.tissue_fraction < 0.9
    assert result.pixel_size_um == pytest.approx(0.499 * 16)


def _white_canvas(height_um: float, width_um: float, px: float) -> np.ndarray:
    shape = (int(height_um / px), int(width_um / px), 3)
    rng = np.random.default_rng(0)
    return np.clip(240 + rng.normal(0, 2, shape), 0, 255).astype(np.uint8)


def test_small_biopsy_is_found():
    px = 8.0
    rgb = _white_canvas(4000, 4000, px)
    yy, xx = np.mgrid[: rgb.shape[0], : rgb.shape[1]]
    # A 0.5 mm x 0.3 mm ellipse of eosin pink in the middle.
    blob = ((yy - 250) / (150 / px)) ** 2 + ((xx - 250) / (250 / px)) ** 2 <= 1.0
    rgb[blob] = (225, 150, 190)
    result = detect_tissue(rgb, px)
    assert result.warnings == []
    found = result.mask.sum()
    assert 0.8 * blob.sum() < found < 1.3 * blob.sum()
    assert result.mask[blob].mean() > 0.9


def test_specks_smaller_than_min_area_are_dropped():
    px = 8.0
    rgb = _white_canvas(2000, 2000, px)
    rgb[100:104, 100:104] = (120, 60, 140)  # 32 um x 32 um of purple dirt
    result = detect_tissue(rgb, px)
    assert not result.mask.any()
    assert result.warnings == ["no tissue found"]


def test_small_holes_are_filled_and_large_ones_kept():
    px = 8.0
    rgb = _white_canvas(2400, 2400, px)
    rgb[50:250, 50:250] = (200, 110, 170)
    rgb[70:74, 70:74] = 240  # 1,024 um^2: filled
    rgb[120:180, 120:180] = 240  # 230,400 um^2: kept
    mask = detect_tissue(rgb, px).mask
    assert mask[71, 71]
    assert not mask[150, 150]


@pytest.mark.parametrize("value", [0, 255])
def test_blank_images_give_empty_mask_and_warning(value):
    rgb = np.full((200, 300, 3), value, dtype=np.uint8)
    result = detect_tissue(rgb, 8.0)
    assert result.mask.shape == (200, 300)
    assert result.mask.dtype == bool
    assert not result.mask.any()
    assert result.tissue_fraction == 0.0
    assert result.warnings == ["no tissue found"]


def test_zero_size_image_gives_empty_mask():
    result = detect_tissue(np.zeros((0, 5, 3), dtype=np.uint8))
    assert result.mask.shape == (0, 5)
    assert result.warnings


def test_rgba_and_float_input_are_accepted():
    rgb = _white_canvas(1600, 1600, 8.0)
    rgb[50:150, 50:150] = (200, 110, 170)
    expected = detect_tissue(rgb, 8.0).mask
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert np.array_equal(detect_tissue(rgba, 8.0).mask, expected)
    assert np.array_equal(detect_tissue(rgb / 255.0, 8.0).mask, expected)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((np.zeros((4, 4), np.uint8),), {}),
        ((np.zeros((4, 4, 3), np.uint8), 0.0), {}),
        ((np.zeros((4, 4, 3), np.uint8), -1.0), {}),
        ((np.zeros((4, 4, 3), np.uint8),), {"saturation_threshold": 2.0}),
        ((np.zeros((4, 4, 3), np.uint8),), {"min_tissue_area_um2": -1.0}),
    ],
)
def test_invalid_arguments_raise_value_error(args, kwargs):
    with pytest.raises(ValueError):
        detect_tissue(*args, **kwargs)


def test_fixed_saturation_threshold_is_used():
    rgb = _white_canvas(800, 800, 8.0)
    rgb[20:80, 20:80] = (200, 170, 190)  # saturation 0.15
    assert detect_tissue(rgb, 8.0, saturation_threshold=0.1).mask[50, 50]
    assert not detect_tissue(rgb, 8.0, saturation_threshold=0.2).mask.any()


def test_mask_from_labels():
    labels = np.array([[0, 1], [2, 0]], dtype=np.int32)
    assert mask_from_labels(labels).tolist() == [[False, True], [True, False]]
    with pytest.raises(ValueError):
        mask_from_labels(np.zeros((2, 2, 2)))


def test_resize_mask_nearest_neighbour():
    mask = np.array([[1, 0], [0, 1]], dtype=bool)
    up = resize_mask(mask, (4, 6))
    assert up.shape == (4, 6)
    assert up[:2, :3].all() and up[2:, 3:].all()
    assert not up[:2, 3:].any() and not up[2:, :3].any()
    assert np.array_equal(resize_mask(up, (2, 2)), mask)
    assert resize_mask(mask, (0, 3)).shape == (0, 3)


@pytest.mark.parametrize("radius", [1, 2, 5, 10])
def test_disk_morphology_equals_scipy(radius):
    from scipy import ndimage as ndi

    from napari_wsi_mil.slide.tissue import _dilate, _erode

    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    disk = x * x + y * y <= radius * radius
    rng = np.random.default_rng(radius)
    for density in (0.02, 0.5, 0.97):
        mask = rng.random((61, 47)) < density
        assert np.array_equal(_dilate(mask, radius), ndi.binary_dilation(mask, disk))
        assert np.array_equal(_erode(mask, radius), ndi.binary_erosion(mask, disk))
    empty = np.zeros((9, 9), bool)
    assert not _dilate(empty, radius).any() and not _erode(empty, radius).any()
    assert _erode(~empty, 1).sum() == 7 * 7  # outside the image counts as background


@pytest.mark.parametrize("size", [3, 7, 13])
def test_window_median_equals_skimage_rank_median(size, monkeypatch):
    """OpenCV on the image framed by 0s and 255s, the corners sorted: the median of the
    pixels inside the image, as scikit-image's rank filter, on images smaller and larger
    than the window, and in row strips (600 rows with three threads allowed: two strips)."""
    from napari_wsi_mil.slide import tissue
    from napari_wsi_mil.slide.tissue import _median, _window_median

    monkeypatch.setattr(tissue.cv2, "getNumThreads", lambda: 3)
    rng = np.random.default_rng(size)
    for shape in [(1, 1), (4, 9), (size, size), (37, 52), (600, 31)]:
        image = rng.integers(0, 256, shape).astype(np.uint8)
        reference = _reference_median(image, size)
        assert np.array_equal(_window_median(image, size), reference)
        needed = rng.random(shape) < 0.3  # only these need to be right
        assert np.array_equal(_median(image, size, needed)[needed], reference[needed])
        needed = np.zeros(shape, bool)
        needed[shape[0] // 3 : shape[0] // 2 + 1, shape[1] // 4 : shape[1] // 3 + 1] = True
        assert np.array_equal(_median(image, size, needed)[needed], reference[needed])


@pytest.mark.parametrize("density", [0.0, 0.3, 0.55, 0.8, 1.0])
def test_holes_and_small_pieces_equal_scipy(density):
    """Hole filling (a background frame joins the pieces that touch the border) and small
    piece removal (areas counted on the pieces' pixels) give scipy's masks, pixel for
    pixel, with none, a few and thousands of pieces to change."""
    from napari_wsi_mil.slide.tissue import _fill_small_holes, _remove_small_objects

    rng = np.random.default_rng(int(density * 100))
    for shape, area in [((1, 1), 2), ((1, 7), 2), ((40, 60), 3), ((200, 300), 6), ((200, 300), 40)]:
        mask = rng.random(shape) < density
        expected = _reference_fill_small_holes(mask, area)
        assert np.array_equal(_fill_small_holes(mask.copy(), area), expected)
        expected = _reference_remove_small_objects(mask, area)
        assert np.array_equal(_remove_small_objects(mask.copy(), area), expected)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def test_fine_images_are_detected_on_block_means_with_the_same_mask(shared_data, monkeypatch):
    """Images finer than the working pixel size are detected on block means; the mask
    agrees with detection at full resolution (Dice >= 0.98) and keeps the input's shape."""
    from napari_wsi_mil.slide import open_slide, tissue
    from napari_wsi_mil.slide.synthetic import sample_slide_path

    images = []
    cmu = shared_data / "slides" / "CMU-1-Small-Region.svs"
    for path in [cmu] if cmu.is_file() else []:
        with open_slide(path) as slide:  # a 741 x 555 level at 2 um/px
            w, h = slide.level_dimensions[2]
            images.append((slide.read_region(2, 0, 0, w, h), slide.level_mpp(2)))
    with open_slide(sample_slide_path()) as slide:
        w, h = slide.level_dimensions[2]
        images.append((slide.read_region(2, 0, 0, w, h), slide.level_mpp(2)))
    for rgb, px in images:
        assert px < tissue.WORKING_PIXEL_SIZE_UM / 1.5
        coarse = detect_tissue(rgb, px)
        with monkeypatch.context() as m:
            m.setattr(tissue, "WORKING_PIXEL_SIZE_UM", 0.0)
            fine = detect_tissue(rgb, px)
        assert coarse.mask.shape == fine.mask.shape == rgb.shape[:2]
        assert coarse.pixel_size_um == px
        assert _dice(coarse.mask, fine.mask) >= 0.98


# -- the method as first written (scipy footprints, binary_fill_holes, skimage's Otsu,
#    float block means); the fast one must give the same masks --------------------------
def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _reference_fill_small_holes(mask, max_area_px, labels=None):
    from scipy import ndimage as ndi

    holes = ndi.binary_fill_holes(mask) & ~mask
    if not holes.any():
        return mask
    labels, count = ndi.label(holes)
    small = np.bincount(labels.ravel(), minlength=count + 1) < max_area_px
    small[0] = False
    return mask | small[labels]


def _reference_remove_small_objects(mask, min_area_px, labels=None):
    from scipy import ndimage as ndi

    labels, count = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    keep = np.bincount(labels.ravel(), minlength=count + 1) >= min_area_px
    keep[0] = False
    return keep[labels]


def _reference_median(image, size, needed=None):
    from skimage.filters.rank import median

    return median(image, footprint=np.ones((size, size), dtype=bool))


def _reference_block_mean(image, factor):
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, -h % factor), (0, -w % factor), (0, 0)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor, 3)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def _reference_otsu(counts):
    from skimage.filters import threshold_otsu

    from napari_wsi_mil.slide.tissue import SATURATION_CEILING, SATURATION_FLOOR

    values = np.repeat(np.arange(len(counts)), counts.astype(np.int64))
    if values.size == 0 or values.min() == values.max():
        return SATURATION_FLOOR
    otsu = float(threshold_otsu(values)) / 255.0
    return float(np.clip(otsu, SATURATION_FLOOR, SATURATION_CEILING))


def _reference_detect(monkeypatch, rgb, px):
    from scipy import ndimage as ndi

    from napari_wsi_mil.slide import tissue

    with monkeypatch.context() as m:
        m.setattr(tissue, "_dilate", lambda mask, r: ndi.binary_dilation(mask, _disk(r)))
        m.setattr(tissue, "_erode", lambda mask, r: ndi.binary_erosion(mask, _disk(r)))
        m.setattr(tissue, "_fill_small_holes", _reference_fill_small_holes)
        m.setattr(tissue, "_remove_small_objects", _reference_remove_small_objects)
        m.setattr(tissue, "_window_median", _reference_median)
        m.setattr(tissue, "_block_mean", _reference_block_mean)
        m.setattr(tissue, "_clipped_otsu", _reference_otsu)
        return detect_tissue(rgb, px)


def _reference_images(shared_data):
    """``(name, rgb, pixel size)``: every shared tile (at the assumed 8 um/px and at its
    scan resolution, ~1 um/px), CMU's and the sample slide's tissue level."""
    from napari_wsi_mil.slide import open_slide
    from napari_wsi_mil.slide.synthetic import sample_slide_path

    for path in sorted((shared_data / "tiles").glob("*.png")):
        rgb = _tile(shared_data, path.name)
        yield path.name, rgb, None
        yield path.name, rgb, 1.0
    cmu = shared_data / "slides" / "CMU-1-Small-Region.svs"
    for path in [cmu] if cmu.is_file() else []:
        with open_slide(path) as slide:
            w, h = slide.level_dimensions[2]
            yield "cmu", slide.read_region(2, 0, 0, w, h), slide.level_mpp(2)
    with open_slide(sample_slide_path()) as slide:
        w, h = slide.level_dimensions[-1]
        yield "sample", slide.read_region(slide.level_count - 1, 0, 0, w, h), slide.level_mpp(-1)


def test_masks_agree_with_the_reference_method(shared_data, monkeypatch):
    """OpenCV's filters and labels, hole filling by background labels, Pillow's block means
    and the numpy Otsu give the masks of the scipy/skimage/float-mean originals: Dice >=
    0.98 (rounding ties up in the block means moves a few pixels; without them, the
    masks agree pixel for pixel), and the same threshold up to one grey level."""
    images = list(_reference_images(shared_data))
    assert len(images) > 2
    for name, rgb, px in images:
        fast = detect_tissue(rgb, px)
        reference = _reference_detect(monkeypatch, rgb, px)
        both_empty = not fast.mask.any() and not reference.mask.any()
        assert both_empty or _dice(fast.mask, reference.mask) >= 0.98, (name, px)
        assert abs(fast.threshold - reference.threshold) <= 1 / 255 + 1e-9, (name, px)


def test_saturation_table_is_the_hsv_saturation():
    from napari_wsi_mil.slide.tissue import _SATURATION

    high = np.arange(256)[:, None]
    low = np.arange(256)[None, :]
    expected = np.where(high > 0, (255 * (high - low) + high // 2) // np.maximum(high, 1), 0)
    valid = low <= high  # min <= max for every real pixel
    assert np.array_equal(_SATURATION[np.broadcast_to(valid, (256, 256))], expected[valid])


def test_tiling_a_slide_without_a_pyramid_keeps_the_mask(shared_data, monkeypatch):
    """CMU has only level 0: tiling detects on block means of it instead of reading the
    synthesized tissue level (2x2 means twice); the mask agrees with the reference method
    on that level and has its shape."""
    from napari_wsi_mil.slide import open_slide
    from napari_wsi_mil.slide.tiling import TilingParams, tile_slide, tissue_level

    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    with open_slide(path) as slide:
        level = tissue_level(slide, slide.mpp)
        assert level >= slide.native_level_count  # synthesized
        w, h = slide.level_dimensions[level]
        reference = _reference_detect(
            monkeypatch, slide.read_region(level, 0, 0, w, h), slide.level_mpp(level)
        )
        tiled = tile_slide(slide, TilingParams())
    assert tiled.tissue_mask.shape == (h, w)
    assert _dice(tiled.tissue_mask, reference.mask) >= 0.98
