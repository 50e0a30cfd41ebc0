"""Tissue detection on a low-resolution RGB image of a slide.

The method is the one of the CLAM and HistoQC-style pipelines: threshold the
HSV saturation of a median-blurred thumbnail with Otsu's method, then clean the
mask with morphology, hole filling and a minimum object area. Three changes make
it safe on real cohorts:

- the Otsu threshold is clipped to ``[SATURATION_FLOOR, SATURATION_CEILING]``,
  so an empty slide (whose saturation is only noise) gives an empty mask, and a
  slide that is nearly all tissue is not split into "dark" and "light" tissue;
- near-white, near-black and pen-ink pixels are excluded before thresholding;
- every size is physical (micrometres), so small biopsies survive the minimum
  object area at any pyramid level.

Images finer than :data:`WORKING_PIXEL_SIZE_UM` are detected on block means and the
mask is upsampled (Dice >= 0.98 against full resolution). The filters are OpenCV's
(importing it costs about 30 ms, scipy.ndimage and scikit-image's rank filters about
0.9 s, most of a first tiling call): the median is OpenCV's, run on the image framed by
0s and 255s so that a window past one edge takes the median of its pixels inside (the
four corners are sorted), which is scikit-image's rank median; disk morphology,
labelling and Otsu's threshold give the same masks as scipy's footprints,
``binary_fill_holes`` and scikit-image's Otsu (tested). The per-pixel colour work runs
on strips of rows, whose small buffers are reused: memory a process has not touched yet
can cost more to fault in than the arithmetic done on it.

Everything here works on plain numpy arrays; reading the thumbnail is the
caller's job. A user-painted napari Labels layer becomes a mask through
:func:`mask_from_labels` and :func:`resize_mask`.
"""

from __future__ import annotations

import warnings as _warnings
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = [
    "ASSUMED_PIXEL_SIZE_UM",
    "SATURATION_CEILING",
    "SATURATION_FLOOR",
    "TissueMask",
    "detect_tissue",
    "mask_from_labels",
    "pen_mask",
    "resize_mask",
]

#: Pixel size assumed when the caller does not know it (a typical thumbnail
#: level). The physical defaults then become: median 7 px, closing/opening
#: radius 2 px, minimum tissue 156 px, holes below 78 px filled; pen margin
#: 6 px, pen window 9 px, smallest ink core 100 px.
ASSUMED_PIXEL_SIZE_UM = 8.0
#: Finer images are detected on block means at about this pixel size: the physical sizes
#: of the method (a 50 um median, 16 um morphology, 0.01 mm^2 pieces) need no finer grid,
#: and the work falls with the square of the factor.
WORKING_PIXEL_SIZE_UM = 4.0
#: Lowest saturation threshold (of [0, 1]); glass, dust and scanner noise stay below.
SATURATION_FLOOR = 0.07
#: Highest saturation threshold; pale H&E stroma lies above it.
SATURATION_CEILING = 0.15

_NEAR_WHITE = 230  # a pixel whose darkest channel is at least this is background
_NEAR_BLACK = 50  # a pixel whose brightest channel is below this is ink, dirt or an edge
_MORPH_RADIUS_UM = 16.0  # radius of the closing and opening footprints
_PEN_MARGIN_UM = 48.0  # ink masks grow by this much: strokes on the coverslip are out of focus
_PEN_MIN_CORE_UM2 = 6_400.0  # smaller patches of strong ink colour are blood or eosin
_PEN_WINDOW_UM = 72.0  # window in which 40% of pixels must have strong ink colour
_MAX_MEDIAN_PX = 31  # caps filter cost on high-resolution input
_MAX_RADIUS_PX = 10


@dataclass
class TissueMask:
    """Result of :func:`detect_tissue`.

    Attributes
    ----------
    mask : numpy.ndarray
        Boolean (H, W) array, True on tissue, the shape of the input image (or the
        ``mask_shape`` asked for).
    pixel_size_um : float or None
        Pixel size of the input image in micrometres, as passed by the caller.
    tissue_fraction : float
        Fraction of mask pixels that are tissue, in [0, 1].
    warnings : list of str
        Human-readable notes, e.g. ``"no tissue found"``; empty when all is well.
    threshold : float
        Saturation threshold used, in [0, 1].
    """

    mask: np.ndarray
    pixel_size_um: float | None
    tissue_fraction: float
    warnings: list[str] = field(default_factory=list)
    threshold: float = 0.0


def detect_tissue(
    rgb: np.ndarray,
    pixel_size_um: float | None = None,
    *,
    min_tissue_area_um2: float = 10_000.0,
    min_hole_area_um2: float = 5_000.0,
    median_size_um: float = 50.0,
    remove_pen: bool = True,
    saturation_threshold: float | None = None,
    mask_shape: tuple[int, int] | None = None,
) -> TissueMask:
    """Find tissue in a low-resolution RGB image of a slide.

    Parameters
    ----------
    rgb : numpy.ndarray
        (H, W, 3) image, ideally uint8 at about 8-16 um/px. An alpha channel is
        dropped; other dtypes are converted to uint8.
    pixel_size_um : float, optional
        Size of one pixel of ``rgb`` in micrometres. When None,
        :data:`ASSUMED_PIXEL_SIZE_UM` is used to convert the physical sizes.
    min_tissue_area_um2 : float
        Tissue pieces smaller than this are dropped (default 0.01 mm^2, which
        keeps a 0.5 mm x 0.3 mm biopsy fragment with a wide margin).
    min_hole_area_um2 : float
        Holes in tissue smaller than this are filled (default 0.005 mm^2).
    median_size_um : float
        Side of the median filter applied to the saturation channel.
    remove_pen : bool
        Exclude green, blue and red ink (and its fringe) before thresholding.
        Bright red blood can look exactly like red ink and is then dropped too;
        isolated red cells inside tissue come back with the hole filling.
    saturation_threshold : float, optional
        Fixed saturation threshold in [0, 1] instead of the clipped Otsu one.
    mask_shape : tuple of int, optional
        ``(height, width)`` of the returned mask when it should cover the image at
        another resolution (nearest-neighbour, :func:`resize_mask`); default: the
        image's.

    Returns
    -------
    TissueMask
        An image without tissue (white, black, empty) gives an empty mask and
        a ``"no tissue found"`` warning, never an exception.

    Raises
    ------
    ValueError
        If ``rgb`` is not an (H, W, 3|4) image or a size argument is invalid.
    """
    image = _as_rgb_uint8(rgb)
    px = _check_pixel_size(pixel_size_um)
    for name, value in (
        ("min_tissue_area_um2", min_tissue_area_um2),
        ("min_hole_area_um2", min_hole_area_um2),
        ("median_size_um", median_size_um),
    ):
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if saturation_threshold is not None and not 0.0 <= saturation_threshold <= 1.0:
        raise ValueError(f"saturation_threshold must be in [0, 1], got {saturation_threshold!r}")

    shape = tuple(mask_shape) if mask_shape is not None else image.shape[:2]
    if image.shape[0] == 0 or image.shape[1] == 0:
        empty = np.zeros(shape, dtype=bool)
        return TissueMask(empty, pixel_size_um, 0.0, ["empty image"], SATURATION_FLOOR)

    factor = int(WORKING_PIXEL_SIZE_UM // px)
    if factor >= 2:  # finer than needed: detect on block means, then upsample the mask
        coarse = detect_tissue(
            _block_mean(image, factor),
            px * factor,
            min_tissue_area_um2=min_tissue_area_um2,
            min_hole_area_um2=min_hole_area_um2,
            median_size_um=median_size_um,
            remove_pen=remove_pen,
            saturation_threshold=saturation_threshold,
            mask_shape=shape,
        )
        coarse.pixel_size_um = pixel_size_um
        return coarse

    saturation, excluded, core = _pixel_colours(image, remove_pen)
    if core is not None:
        excluded |= _ink_strokes(core, image, px)
    saturation[excluded] = 0
    candidates = ~excluded
    saturation = _median(saturation, _odd_size_px(median_size_um, px), candidates)

    if saturation_threshold is None:
        counts = cv2.calcHist([saturation], [0], _uint8(candidates), [256], [0, 256])
        threshold = _clipped_otsu(counts.ravel())
    else:
        threshold = float(saturation_threshold)
    mask = saturation > threshold * 255
    mask &= candidates

    mask = _close_then_open(mask, _radius_px(_MORPH_RADIUS_UM, px))
    labels = np.empty((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.int32)  # for both
    mask = _fill_small_holes(mask, min_hole_area_um2 / px**2, labels)
    mask = _remove_small_objects(mask, min_tissue_area_um2 / px**2, labels)
    if mask.shape != shape:
        mask = resize_mask(mask, shape)

    fraction = float(mask.mean())
    notes = [] if mask.any() else ["no tissue found"]
    return TissueMask(mask, pixel_size_um, fraction, notes, threshold)


def pen_mask(rgb: np.ndarray, pixel_size_um: float | None = None) -> np.ndarray:
    """Pixels covered by green, blue or red marker ink.

    H&E (and DAB) colours have red as the largest channel and blue above or
    near green: eosin pink is R > B > G, haematoxylin purple B ~ R > G. Ink is
    found in two passes: strongly coloured *core* pixels, then every weaker
    pixel of the same hue connected to a core (the blurred fringe of a stroke,
    dense dark ink). A core is where over 40% of a 72 um window has strong ink
    colour; cores smaller than 80 um x 80 um (red blood cells, bright eosin
    fibres) are ignored, and the ink mask grows by 48 um to cover the blurred
    edge of a stroke (ink on the coverslip is out of focus).

    - green / teal: G > R + 30 and G >= B - 15 (core); G > R + 10 (fringe).
      Blue-grey IHC haematoxylin (G a little above R, B well above G) is not
      green;
    - blue: B > R + 40, B > G + 40 and G >= R - 10, i.e. not purple (core);
      the same with 25 (fringe);
    - red: R the largest channel, hue within about 10 degrees of pure red:
      (B - G) < 0.16 (R - G) and (G - B) < (R - B) / 6, chroma >= 80 (core);
      (B - G) < 0.25 (R - G), chroma >= 15 (fringe); dark pixels
      (max < 130) of red to magenta-red hue also join a red stroke.

    Bright red blood has the hue of red ink, so a large haemorrhage can be
    taken for ink; eosin has a clearly more magenta hue and is kept.

    Parameters
    ----------
    rgb : numpy.ndarray
        (H, W, 3) uint8 image.
    pixel_size_um : float, optional
        Pixel size in micrometres; :data:`ASSUMED_PIXEL_SIZE_UM` when None.

    Returns
    -------
    numpy.ndarray
        Boolean (H, W) mask, True on ink.
    """
    image = _as_rgb_uint8(rgb)
    _, _, core = _pixel_colours(image, remove_pen=True)
    if core is None:
        return np.zeros(image.shape[:2], dtype=bool)
    return _ink_strokes(core, image, _check_pixel_size(pixel_size_um))


def _pixel_colours(
    image: np.ndarray, remove_pen: bool, rows: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Each pixel's HSV saturation, whether it is near-white or near-black, and (with
    ``remove_pen``) whether it has strong ink colour (None when no pixel has), computed
    ``rows`` rows at a time: the intermediate planes stay small and are reused, which
    matters where memory the process has not touched yet is slow to fault in."""
    h, w = image.shape[:2]
    saturation = np.empty((h, w), dtype=np.uint8)
    excluded = np.empty((h, w), dtype=bool)
    core = None
    for start in range(0, h, rows):
        part = slice(start, start + rows)
        planes, high, low = _channel_range(image[part])
        _saturation(high, low, out=saturation[part])
        np.greater_equal(low, _NEAR_WHITE, out=excluded[part])
        excluded[part] |= high < _NEAR_BLACK
        part_core = _ink_core(planes, high, low) if remove_pen else None
        if part_core is not None:
            core = np.zeros((h, w), dtype=bool) if core is None else core
            core[part] = part_core
    return saturation, excluded, core


def _channel_range(image: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The (R, G, B) planes of a uint8 image and their per-pixel maximum and minimum
    (OpenCV's: several times numpy's ``max(axis=2)``)."""
    planes = list(cv2.split(np.ascontiguousarray(image)))
    high = cv2.max(cv2.max(planes[0], planes[1]), planes[2])
    low = cv2.min(cv2.min(planes[0], planes[1]), planes[2])
    return planes, high, low


def _saturation(high: np.ndarray, low: np.ndarray, out: np.ndarray) -> np.ndarray:
    """HSV saturation (0..255, rounded half up) from each pixel's channel max and min,
    by table lookup, into ``out``."""
    index = high.astype(np.intp)
    index <<= 8
    index |= low
    return _SATURATION.ravel().take(index, out=out)


def _ink_core(planes: list[np.ndarray], high: np.ndarray, low: np.ndarray) -> np.ndarray | None:
    """Pixels of strong ink colour (see :func:`pen_mask`), None when there are none. The
    colours are only tested on the pixels that pass a test each of them implies (G > R +
    30, B > R + 40, or R the largest channel with a chroma of 80 or more): few pixels of
    a slide do."""
    chroma = cv2.subtract(high, low)
    red, green, blue = planes
    candidates = cv2.subtract(green, red) > 30
    candidates |= cv2.subtract(blue, red) > 40
    candidates |= (chroma >= 80) & (red == high)
    candidates = np.flatnonzero(candidates)
    if candidates.size == 0:
        return None
    r, g, b, top, span = (a.ravel()[candidates].astype(np.int16) for a in (*planes, high, chroma))
    green_core = (g > r + 30) & (g >= b - 15)
    blue_core = (b > r + 40) & (b > g + 40) & (g >= r - 10)
    reddish = _reddish(r, g, b, top)
    red_core = reddish & (100 * (b - g) < 16 * (r - g)) & (span >= 80)
    strong = green_core | blue_core | red_core
    if not strong.any():
        return None
    core = np.zeros(high.shape, dtype=bool)
    core.ravel()[candidates] = strong
    return core


def _ink_strokes(core: np.ndarray, image: np.ndarray, px: float) -> np.ndarray:
    """:func:`pen_mask` from the pixels of strong ink colour: where they are dense, grown
    over the weaker fringe of the same hues and by the margin."""
    # A stroke is where strong ink colour is dense, even with nuclei showing
    # through; scattered red blood cells and bright eosin fibres are not.
    window = max(3, _odd_size_px(_PEN_WINDOW_UM, px))
    in_window = cv2.boxFilter(  # strong-ink pixels per window (mirrored at the edges)
        _uint8(core), cv2.CV_32F, (window, window), normalize=False, borderType=cv2.BORDER_REFLECT
    )
    core = 5 * in_window > 2 * window * window  # over 40 % of the window
    core = _remove_small_objects(core, _PEN_MIN_CORE_UM2 / px**2)
    if not core.any():
        return core
    planes, high, low = _channel_range(image)
    chroma = cv2.subtract(high, low)
    r, g, b, high, chroma = (a.astype(np.int16) for a in (*planes, high, chroma))
    reddish = _reddish(r, g, b, high)
    green_fringe = (g > r + 10) & (g >= b - 10) & (chroma >= 10)
    blue_fringe = (b > r + 25) & (b > g + 25) & (g >= r - 10)
    red_fringe = reddish & (chroma >= 15) & (100 * (b - g) < 25 * (r - g))
    dark_fringe = reddish & (high < 130) & (chroma >= 20) & (10 * (b - g) < 8 * (r - g))
    fringe = core | green_fringe | blue_fringe | red_fringe | dark_fringe
    count, labels = cv2.connectedComponents(_uint8(fringe), connectivity=8, ltype=cv2.CV_32S)
    touched = np.zeros(count, dtype=bool)
    touched[labels[core]] = True
    touched[0] = False
    ink = touched[labels]
    return _dilate(ink, _radius_px(_PEN_MARGIN_UM, px))


def mask_from_labels(labels: np.ndarray) -> np.ndarray:
    """Boolean tissue mask from a painted labels image (nonzero means tissue).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer (H, W) array, e.g. the data of a napari Labels layer.

    Returns
    -------
    numpy.ndarray
        Boolean (H, W) array.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D array, got shape {labels.shape}")
    return labels != 0


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask to ``shape`` with nearest-neighbour sampling.

    Each output pixel takes the input pixel under its centre, so a mask painted
    at one pyramid level can be used at another.

    Parameters
    ----------
    mask : numpy.ndarray
        (H, W) array; nonzero means True.
    shape : tuple of int
        Output (height, width).

    Returns
    -------
    numpy.ndarray
        Boolean array of ``shape``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a 2-D array, got shape {mask.shape}")
    out_h, out_w = (int(n) for n in shape)
    if out_h < 0 or out_w < 0:
        raise ValueError(f"shape must be non-negative, got {shape}")
    in_h, in_w = mask.shape
    if in_h == 0 or in_w == 0:
        return np.zeros((out_h, out_w), dtype=bool)
    rows = np.minimum(((np.arange(out_h) + 0.5) * in_h / max(out_h, 1)).astype(np.intp), in_h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * in_w / max(out_w, 1)).astype(np.intp), in_w - 1)
    return mask.astype(bool)[np.ix_(rows, cols)]


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block (edge blocks of the pixels they have),
    rounded half up: Pillow's ``reduce``, 3-20x faster than a numpy mean."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).reduce(factor))


def _as_rgb_uint8(rgb: np.ndarray) -> np.ndarray:
    image = np.asarray(rgb)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image
    if image.size == 0:
        return image.astype(np.uint8)
    from skimage.util import img_as_ubyte

    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        if np.issubdtype(image.dtype, np.floating):
            image = np.clip(np.nan_to_num(image), 0.0, 1.0)
        return img_as_ubyte(image)


def _check_pixel_size(pixel_size_um: float | None) -> float:
    if pixel_size_um is None:
        return ASSUMED_PIXEL_SIZE_UM
    px = float(pixel_size_um)
    if not np.isfinite(px) or px <= 0:
        raise ValueError(f"pixel_size_um must be a positive number, got {pixel_size_um!r}")
    return px


def _odd_size_px(size_um: float, px: float) -> int:
    size = int(round(size_um / px))
    size = min(size, _MAX_MEDIAN_PX)
    return size + 1 if size % 2 == 0 else size


def _radius_px(radius_um: float, px: float) -> int:
    return int(min(max(round(radius_um / px), 1), _MAX_RADIUS_PX))


def _close_then_open(mask: np.ndarray, radius: int) -> np.ndarray:
    """Closing, then opening, by the disk of ``radius``, of the mask padded by its edge
    pixels (tissue that touches the image border is not eroded); two buffers in turn."""
    if radius <= 0:
        return mask.copy()
    disk, border = _disk(radius), {"borderType": cv2.BORDER_CONSTANT, "borderValue": 0}
    padded = cv2.copyMakeBorder(_uint8(mask), *(radius,) * 4, cv2.BORDER_REPLICATE)
    other = np.empty_like(padded)
    cv2.dilate(padded, disk, dst=other, **border)
    cv2.erode(other, disk, dst=padded, **border)
    cv2.erode(padded, disk, dst=other, **border)
    cv2.dilate(other, disk, dst=padded, **border)
    return np.ascontiguousarray(padded[radius:-radius, radius:-radius]).view(bool)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by the disk ``x*x + y*y <= radius*radius``, outside the image False
    (``ndi.binary_dilation`` with that footprint)."""
    if radius <= 0:
        return mask.copy()
    return _morph(cv2.dilate, mask, radius)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by the disk of ``radius``, outside the image False (scipy's default
    ``border_value=0``): a pixel stays set when no unset pixel lies within ``radius``."""
    if radius <= 0:
        return mask.copy()
    return _morph(cv2.erode, mask, radius)


def _reddish(r: np.ndarray, g: np.ndarray, b: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Red is the largest channel and (G - B) < (R - B) / 6 (int16 channels): the reddish
    hues that red ink, its fringe and blood share (see :func:`pen_mask`)."""
    return (r == high) & (6 * (g - b) < (r - b))


def _morph(operation, mask: np.ndarray, radius: int) -> np.ndarray:
    border = {"borderType": cv2.BORDER_CONSTANT, "borderValue": 0}
    return operation(_uint8(mask), _disk(radius), **border).view(bool)


def _disk(radius: int) -> np.ndarray:
    """The footprint ``x*x + y*y <= radius*radius`` as OpenCV takes it."""
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def _uint8(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as the contiguous 0/1 uint8 image OpenCV takes (no copy when it can)."""
    return np.ascontiguousarray(mask).view(np.uint8)


def _saturation_table() -> np.ndarray:
    """HSV saturation in 0..255 of every (max, min) channel pair, rounded half up."""
    high = np.arange(256, dtype=np.int32)[:, None]
    low = np.arange(256, dtype=np.int32)[None, :]
    table = (255 * np.maximum(high - low, 0) + high // 2) // np.maximum(high, 1)
    return table.astype(np.uint8)


_SATURATION = _saturation_table()


def _median(image: np.ndarray, size: int, needed: np.ndarray) -> np.ndarray:
    """Median over ``size`` x ``size`` windows (pixels inside the image) of the ``needed``
    pixels, computed on their bounding box grown by the window (their windows lie in it,
    so their medians are exact); other pixels hold any value."""
    rows, cols = np.flatnonzero(needed.any(axis=1)), np.flatnonzero(needed.any(axis=0))
    if size <= 1 or rows.size == 0:
        return image if size <= 1 else np.zeros_like(image)
    half = size // 2
    r0, r1 = max(rows[0] - half, 0), rows[-1] + half + 1
    c0, c1 = max(cols[0] - half, 0), cols[-1] + half + 1
    if r0 == 0 and c0 == 0 and r1 >= image.shape[0] and c1 >= image.shape[1]:
        return _window_median(image, size)
    out = np.zeros_like(image)
    out[r0:r1, c0:c1] = _window_median(image[r0:r1, c0:c1], size)
    return out


def _window_median(image: np.ndarray, size: int) -> np.ndarray:
    """Median of each pixel's ``size`` x ``size`` window over the window's pixels inside
    the image (the value at index ``n // 2`` of the ``n`` sorted ones), as scikit-image's
    rank median. OpenCV's median runs on the image framed by ``size // 2`` rows and
    columns of 0s and 255s: frame row (or column) ``j`` out from the edge is 0 on
    ``z_j = floor(j size / 2) - floor((j - 1) size / 2)`` pixels of every ``size``, so a
    window missing ``m`` pixels past one edge holds ``floor(m / 2)`` 0s and the rest 255s,
    and its median is the one of its pixels inside. Windows past two edges (the corners)
    are sorted in numpy."""
    half = size // 2
    h, w = image.shape
    if h <= 2 * half or w <= 2 * half:  # every window reaches past two edges
        return _sorted_median(image, size, (0, h, 0, w))
    framed = np.empty((h + 2 * half, w + 2 * half), dtype=np.uint8)
    framed[half : half + h, half : half + w] = image
    for j in range(1, half + 1):
        zeros = (j * size) // 2 - ((j - 1) * size) // 2
        across = np.where(np.arange(w + 2 * half) % size < zeros, 0, 255)
        down = np.where(np.arange(h + 2 * half) % size < zeros, 0, 255)
        framed[half - j], framed[half + h - 1 + j] = across, across
        framed[:, half - j], framed[:, half + w - 1 + j] = down, down
    out = _valid_median(framed, size)
    for r0, c0 in ((0, 0), (0, w - half), (h - half, 0), (h - half, w - half)):
        out[r0 : r0 + half, c0 : c0 + half] = _sorted_median(
            image, size, (r0, r0 + half, c0, c0 + half)
        )
    return out


def _valid_median(framed: np.ndarray, size: int, min_rows: int = 256) -> np.ndarray:
    """Median of each ``size`` x ``size`` window lying wholly inside ``framed`` (uint8),
    of shape ``framed.shape - (size - 1)``: ``cv2.medianBlur`` in horizontal strips on
    OpenCV's thread count (its median for windows over 5 px runs on one thread)."""
    half = size // 2
    h, w = framed.shape[0] - 2 * half, framed.shape[1] - 2 * half
    out = np.empty((h, w), dtype=np.uint8)

    def blur(r0: int, r1: int) -> None:
        strip = cv2.medianBlur(framed[r0 : r1 + 2 * half], size)
        out[r0:r1] = strip[half : half + r1 - r0, half : half + w]

    strips = min(cv2.getNumThreads(), h // min_rows)
    if strips <= 1:
        blur(0, h)
        return out
    from concurrent.futures import ThreadPoolExecutor

    edges = np.linspace(0, h, strips + 1).astype(int)
    with ThreadPoolExecutor(strips) as pool:
        list(pool.map(blur, edges[:-1], edges[1:]))
    return out


def _sorted_median(
    image: np.ndarray, size: int, box: tuple[int, int, int, int], chunk: int = 1 << 20
) -> np.ndarray:
    """:func:`_window_median` of the pixels in ``box`` (rows ``r0:r1``, columns ``c0:c1``)
    by sorting each window: the value at index ``n // 2`` of the ``n`` inside the image;
    about ``chunk`` values are sorted at a time."""
    r0, r1, c0, c1 = box
    half = size // 2
    h, w = image.shape
    top, bottom = max(r0 - half, 0), min(r1 + half, h)
    left, right = max(c0 - half, 0), min(c1 + half, w)
    outside = 256  # sorts after every uint8 value
    region = np.pad(
        image[top:bottom, left:right].astype(np.uint16),
        ((top - r0 + half, r1 + half - bottom), (left - c0 + half, c1 + half - right)),
        constant_values=outside,
    )
    windows = np.lib.stride_tricks.sliding_window_view(region, (size, size))
    out = np.empty((r1 - r0, c1 - c0), dtype=image.dtype)
    step = max(1, chunk // (size * size * max(c1 - c0, 1)))
    for start in range(0, r1 - r0, step):
        values = np.sort(windows[start : start + step].reshape(-1, size * size), axis=1)
        inside = (values < outside).sum(axis=1)
        middle = values[np.arange(len(values)), inside // 2]
        out[start : start + step] = middle.reshape(-1, c1 - c0)
    return out


def _otsu(counts: np.ndarray) -> float:
    """Otsu's threshold from ``counts`` of the grey levels 0, 1, ...: the level (of the
    lowest to the highest present) that maximises the between-class variance of
    ``values <= t`` and ``values > t``."""
    present = np.flatnonzero(counts)
    low, high = int(present[0]), int(present[-1])
    counts = np.asarray(counts[low : high + 1], dtype=np.float64)
    centers = np.arange(low, high + 1, dtype=np.float64)
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centers) / weight1
    mean2 = (np.cumsum((counts * centers)[::-1]) / weight2[::-1])[::-1]
    variance = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centers[int(np.argmax(variance))])


def _clipped_otsu(counts: np.ndarray) -> float:
    """:func:`_otsu` of a saturation histogram, clipped to the floor and ceiling; the
    floor when fewer than two levels are present."""
    if np.count_nonzero(counts) < 2:
        return SATURATION_FLOOR
    otsu = _otsu(counts) / 255.0
    return float(np.clip(otsu, SATURATION_FLOOR, SATURATION_CEILING))


def _fill_small_holes(
    mask: np.ndarray, max_area_px: float, labels: np.ndarray | None = None
) -> np.ndarray:
    """Fill, in place, the holes (background pieces, 4-connected as in
    ``ndi.binary_fill_holes``, that do not touch the border) smaller than ``max_area_px``.
    A frame of background around the image joins the pieces that touch the border into
    one, the frame's: the pixels of the other pieces are the holes. ``labels``: an int32
    buffer of the framed shape, ``(h + 2, w + 2)``."""
    framed = np.ones((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.uint8)
    np.logical_not(mask, out=framed[1:-1, 1:-1].view(bool))
    _, labels = cv2.connectedComponents(framed, labels=labels, connectivity=4, ltype=cv2.CV_32S)
    labels = labels.ravel()
    holes = framed.view(bool).ravel()  # the background, frame included: labels != 0
    holes &= labels != labels[0]  # less the frame's piece
    return _set_small_pieces(mask, labels, np.flatnonzero(holes), max_area_px, True)


def _remove_small_objects(
    mask: np.ndarray, min_area_px: float, labels: np.ndarray | None = None
) -> np.ndarray:
    """Clear, in place, the pieces of ``mask`` (8-connected) smaller than ``min_area_px``;
    ``labels`` as in :func:`_fill_small_holes` (the mask is framed by background)."""
    framed = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.uint8)
    framed[1:-1, 1:-1] = mask
    _, labels = cv2.connectedComponents(framed, labels=labels, connectivity=8, ltype=cv2.CV_32S)
    return _set_small_pieces(mask, labels.ravel(), np.flatnonzero(framed), min_area_px, False)


def _set_small_pieces(
    mask: np.ndarray, labels: np.ndarray, pixels: np.ndarray, area_px: float, value: bool
) -> np.ndarray:
    """Set the mask pixels of the pieces with fewer than ``area_px`` of the framed
    ``pixels`` (flat indices into the framed label image ``labels``) to ``value``."""
    pieces = labels[pixels]
    chosen = pixels[(np.bincount(pieces) < area_px)[pieces]]
    width = mask.shape[1] + 2
    mask[chosen // width - 1, chosen % width - 1] = value
    return mask
