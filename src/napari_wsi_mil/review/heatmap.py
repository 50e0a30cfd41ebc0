"""Per-patch scores to heatmap values: normalisation, contrast limits, the tumour mask.

Raw attention is a softmax over all patches of a slide; on a slide with 100,000 patches
the largest weight may be 1e-3 and the rest 1e-5, so a linear colour scale shows the
slide "cold everywhere". ``minmax`` stretches to [0, 1]; ``rank`` (percentile rank) is
uniform in (0, 1] whatever the distribution, so the top 10% of patches are always the
top 10% of the colour scale.

A multi-class model (more than two classes, the negative class 0 first) also gives a
*predicted-class map*: the tiles of the tumour mask (instance probability at the mask
threshold or above: tiles called not negative) get the slide's *evidence class*, its
most probable class other than the negative one (the predicted class whenever the slide
is not called negative; CLAM-MB's ``attention`` is that class's branch). A slide called
negative keeps its mask tiles labelled with the class they most likely are.
:data:`CLASS_COLOURS` colours the classes alike in napari and in exported GeoJSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from napari_wsi_mil.slide.tiling import TileGrid

#: Normalisations of attention for display: raw softmax weights, min-max to [0, 1],
#: percentile rank in (0, 1].
NORMALISATIONS = ("raw", "minmax", "rank")


def normalise(values: np.ndarray, mode: str = "rank") -> np.ndarray:
    """``values`` (N,) as float32 for display; see :data:`NORMALISATIONS`.

    ``rank`` gives ties their average rank and maps the largest value to 1 and the
    smallest to ``1/N``; ``minmax`` maps a constant vector to 0.5. Non-finite values
    are kept as NaN (they show as transparent).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if mode not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, not {mode!r}")
    out = np.full(v.shape, np.nan, np.float64)
    ok = np.isfinite(v)
    finite = v[ok]
    if mode == "raw" or finite.size == 0:
        out[ok] = finite
    elif mode == "minmax":
        lo, hi = finite.min(), finite.max()
        out[ok] = (finite - lo) / (hi - lo) if hi > lo else 0.5
    else:
        from scipy.stats import rankdata

        out[ok] = rankdata(finite, method="average") / finite.size
    return out.astype(np.float32)


def contrast_limits(normalised: np.ndarray, mode: str) -> tuple[float, float]:
    """Explicit contrast limits for values from :func:`normalise` with ``mode``.

    ``minmax`` and ``rank`` are on [0, 1]; ``raw`` spans 0 to the largest finite value
    (attention weights are non-negative), never an empty range.
    """
    if mode in ("minmax", "rank"):
        return 0.0, 1.0
    v = np.asarray(normalised, dtype=np.float64)
    v = v[np.isfinite(v)]
    hi = float(v.max()) if v.size else 1.0
    lo = min(0.0, float(v.min())) if v.size else 0.0
    return lo, hi if hi > lo else lo + 1.0


def tumour_mask(instance_probability: np.ndarray, threshold: float) -> np.ndarray:
    """``(N,)`` uint8: 1 where a patch's instance probability reaches ``threshold``."""
    p = np.asarray(instance_probability, dtype=np.float64)
    return (p >= threshold).astype(np.uint8)


def heatmap_raster(grid: TileGrid, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
    """Per-patch ``values`` as a float32 patch-grid raster, ``fill`` (NaN) off-tissue."""
    return grid.grid_raster(np.asarray(values, np.float32), fill=np.float32(fill))


def top_patches(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` highest and ``k`` lowest finite scores, best first / worst
    first. Ties are broken by patch index, so the result is deterministic."""
    s = np.asarray(scores, dtype=np.float64)
    idx = np.flatnonzero(np.isfinite(s))
    k = max(0, min(int(k), idx.size))
    order = idx[np.lexsort((idx, -s[idx]))]
    low = idx[np.lexsort((idx, s[idx]))]
    return order[:k], low[:k]


#: RGB (0-255) of class ``k`` of a multi-class model: the negative class green (as the
#: "Normal" of exports), then red (as "Tumor") and a qualitative palette (none magenta,
#: the binary mask's colour), cycled past its end.
CLASS_COLOURS = (
    (0, 160, 90),
    (200, 0, 0),
    (31, 119, 180),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (23, 190, 207),
    (188, 189, 34),
    (127, 127, 127),
)


def class_colour(index: int) -> tuple[int, int, int]:
    """RGB (0-255) of class ``index`` (see :data:`CLASS_COLOURS`)."""
    if index == 0:
        return CLASS_COLOURS[0]
    return CLASS_COLOURS[1 + (index - 1) % (len(CLASS_COLOURS) - 1)]


def evidence_class(class_probability: np.ndarray) -> int:
    """The most probable class but the negative class 0 (see the module doc)."""
    return 1 + int(np.argmax(np.asarray(class_probability)[1:]))


def class_map(instance_probability: np.ndarray, threshold: float, evidence: int) -> np.ndarray:
    """``(N,)`` int32 labels of the predicted-class map: ``evidence + 1`` on the tiles of
    the mask at ``threshold`` (class ``k`` is label ``k + 1``), 0 elsewhere."""
    return tumour_mask(instance_probability, threshold).astype(np.int32) * (int(evidence) + 1)
