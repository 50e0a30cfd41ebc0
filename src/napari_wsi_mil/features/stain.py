"""Stain normalisation of patches before an encoder: Macenko and Reinhard, per slide.

A normaliser maps every slide's stain onto one *target*:

- **Macenko** (Macenko et al., ISBI 2009): stain vectors (H and E columns in optical
  density) and the 99th percentile of each stain's concentration.
- **Reinhard** (Reinhard et al., 2001): mean and standard deviation of each LAB channel.

Stain statistics are fitted with ``torchstain`` (its Macenko and Reinhard ``fit``): the
target on a reference image or on patches sampled from the cohort, and each slide's
source on patches sampled from that slide (:data:`SAMPLE_PATCHES`). A slide's whole
stain is estimated once, so every patch of the slide gets the same transform (a patch
of background or of one stain alone would give Macenko nonsense on its own) and the
transform is applied to whole batches on the device (:meth:`StainNormaliser.apply`).

The target and the method are recorded with the feature set (``stain`` in its attrs,
:meth:`StainNormaliser.attrs`) and each slide's fitted source beside it, so a model's
slides are analysed later with the same normalisation
(:meth:`StainNormaliser.from_attrs`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_wsi_mil.errors import WsiMilError

METHODS = ("macenko", "reinhard")
#: Patches per slide (evenly spaced over its tile grid) its stain is fitted on.
SAMPLE_PATCHES = 64
#: ``reference`` that fits the target on patches of every slide being extracted.
COHORT = "cohort"
#: Macenko's transmitted light intensity and the optical-density floor of tissue pixels
#: (``torchstain``'s defaults).
IO, BETA = 240.0, 0.15


def fit_stain(method: str, pixels: np.ndarray) -> dict[str, list]:
    """The stain statistics of ``pixels`` (uint8 ``[H, W, 3]``, any layout of pixels).

    Raises :class:`WsiMilError` when they cannot be fitted (too little tissue)."""
    import torchstain

    image = torch.from_numpy(np.array(pixels, np.uint8)).permute(2, 0, 1)
    try:
        if method == "macenko":
            norm = torchstain.normalizers.MacenkoNormalizer(backend="torch")
            norm.fit(image, Io=IO, beta=BETA)
            stats = {"he": norm.HERef.tolist(), "max_c": norm.maxCRef.tolist()}
        elif method == "reinhard":
            norm = torchstain.normalizers.ReinhardNormalizer(backend="torch")
            norm.fit(image)
            stats = {"mean": norm.target_means.tolist(), "std": norm.target_stds.tolist()}
        else:
            raise WsiMilError(f"unknown stain normalisation {method!r}: use one of {METHODS}")
    except (RuntimeError, IndexError, ValueError) as exc:
        raise WsiMilError(
            f"cannot fit {method} stain statistics (too little tissue?): {exc}"
        ) from None
    if not all(np.isfinite(np.asarray(v, float)).all() for v in stats.values()):
        raise WsiMilError(f"cannot fit {method} stain statistics: too little tissue")
    return stats


def check_stain(method: str, reference: str | os.PathLike) -> None:
    """Refuse an unknown method or a reference image that is not there."""
    if method not in METHODS:
        raise WsiMilError(f"unknown stain normalisation {method!r}: use one of {METHODS}")
    if str(reference) != COHORT and not Path(reference).is_file():
        raise WsiMilError(f"{reference}: the stain reference image does not exist")


def read_reference(path: str | os.PathLike) -> np.ndarray:
    """A reference image (PNG, JPEG or TIFF) as uint8 ``[H, W, 3]``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise WsiMilError(f"{path}: not a readable reference image ({exc})") from None


@dataclass
class StainNormaliser:
    """``method`` and the ``target`` statistics; ``sources`` holds fitted slides' own."""

    method: str
    target: dict[str, list]
    reference: str  # what the target was fitted on: an image path or "cohort"
    sources: dict[str, dict[str, list] | None] = field(default_factory=dict)

    @classmethod
    def fit(cls, method: str, reference: str | os.PathLike, cohort_pixels=None):
        """Fit the target on a reference image, or on ``cohort_pixels()`` (uint8
        ``[H, W, 3]``) when ``reference`` is :data:`COHORT`."""
        check_stain(method, reference)
        pixels = cohort_pixels() if str(reference) == COHORT else read_reference(reference)
        return cls(method, fit_stain(method, pixels), str(reference))

    def attrs(self) -> dict:
        """What the feature set records (``stain`` in its attrs)."""
        return {"method": self.method, "target": self.target, "reference": self.reference}

    @classmethod
    def from_attrs(cls, attrs: dict | None) -> StainNormaliser | None:
        """The normaliser a feature set was made with (None: none)."""
        if not attrs:
            return None
        if attrs.get("method") not in METHODS or not isinstance(attrs.get("target"), dict):
            raise WsiMilError(f"feature set records an unreadable stain normalisation {attrs}")
        return cls(attrs["method"], attrs["target"], str(attrs.get("reference", "")))

    def fit_slide(self, slide_id: str, pixels: np.ndarray) -> str | None:
        """Fit a slide's source statistics; returns a warning when they cannot be fitted
        (the slide's patches are then left as they are)."""
        try:
            self.sources[slide_id] = fit_stain(self.method, pixels)
        except WsiMilError as exc:
            self.sources[slide_id] = None
            return f"stain not normalised: {exc}"
        return None

    def apply(self, images: torch.Tensor, slide_id: str) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` patches of ``slide_id`` -> normalised, same shape and
        dtype, on the device they are on."""
        source = self.sources[slide_id]
        if source is None:
            return images
        if self.method == "macenko":
            out = _macenko(images, source, self.target)
        else:
            out = _reinhard(images, source, self.target)
        return out.round_().clamp_(0, 255).to(torch.uint8)


def _macenko(images: torch.Tensor, source: dict, target: dict) -> torch.Tensor:
    """Concentrations from the source stain vectors, rescaled to the target's maxima and
    mixed with the target's vectors (torchstain's ``normalize``, batched)."""
    dev = images.device
    b, c, h, w = images.shape
    od = -torch.log((images.float() + 1) / IO).permute(1, 0, 2, 3).reshape(3, -1)
    he_source = torch.tensor(source["he"], device=dev)
    he_target = torch.tensor(target["he"], device=dev)
    concentrations = torch.linalg.pinv(he_source) @ od
    scale = torch.tensor(target["max_c"], device=dev) / torch.tensor(source["max_c"], device=dev)
    rgb = IO * torch.exp(-he_target @ (concentrations * scale[:, None]))
    return rgb.reshape(3, b, h, w).permute(1, 0, 2, 3)


def _reinhard(images: torch.Tensor, source: dict, target: dict) -> torch.Tensor:
    """Each LAB channel standardised by the source's statistics and given the target's
    (torchstain's ``normalize``, batched; its colour conversions run on the CPU)."""
    from torchstain.torch.utils.lab2rgb import lab2rgb
    from torchstain.torch.utils.rgb2lab import rgb2lab
    from torchstain.torch.utils.split import lab_merge, lab_split

    b, c, h, w = images.shape
    # torchstain converts [3, H, W] images: the batch as one image of B * H rows
    rgb = images.cpu().float().div(255).permute(1, 0, 2, 3).reshape(3, b * h, w)
    lab = torch.stack(lab_split(rgb2lab(rgb)))
    mean_s, std_s, mean_t, std_t = (
        torch.tensor(v).view(3, 1, 1)
        for v in (source["mean"], source["std"], target["mean"], target["std"])
    )
    lab = (lab - mean_s) / std_s.clamp_min(1e-6) * std_t + mean_t
    out = lab2rgb(lab_merge(*lab)) * 255  # [B * H, W, 3]
    return out.reshape(b, h, w, 3).permute(0, 3, 1, 2).to(images.device)
