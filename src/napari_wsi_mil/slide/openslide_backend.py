"""OpenSlide backend for the vendor formats (svs, ndpi, mrxs, scn, vms, ...)."""

from __future__ import annotations

import threading

import numpy as np

from napari_wsi_mil.errors import SlideError
from napari_wsi_mil.slide.backend import NativeLevel, SlideBackend, SlideInfo, positive_float


def rgba_to_rgb(region) -> np.ndarray:
    """An OpenSlide RGBA PIL image as RGB, composited over white where transparent
    (OpenSlide marks areas outside the scanned region transparent). The result is a
    writable array (torch tensors are made from it without another copy). Checking
    the alpha band alone and converting in PIL costs about a third of slicing RGBA in
    numpy (``benchmarks/README.md``, PatchDataset)."""
    from PIL import Image

    if region.getchannel("A").getextrema()[0] < 255:
        background = Image.new("RGBA", region.size, (255, 255, 255, 255))
        background.alpha_composite(region)
        region = background
    return np.array(region.convert("RGB"))


class OpenSlideBackend(SlideBackend):
    """Reads through openslide-python (with ``openslide-bin``, no system library).

    libopenslide is thread-safe, but a handle is unusable after a read error, so
    the handle is reopened (under a lock) when a read fails.
    """

    def __init__(self, path: str):
        import openslide

        self._openslide = openslide
        self.path = path
        self._lock = threading.Lock()
        try:
            self._handle = openslide.OpenSlide(path)
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideError(path, f"OpenSlide cannot open the file ({exc})") from exc
        h = self._handle
        props = dict(h.properties)
        levels = []
        for i, (w, hgt) in enumerate(h.level_dimensions):
            tw = int(props.get(f"openslide.level[{i}].tile-width", 0)) or 512
            th = int(props.get(f"openslide.level[{i}].tile-height", 0)) or 512
            levels.append(NativeLevel(int(w), int(hgt), tw, th))
        mpp_x = positive_float(props.get("openslide.mpp-x"))
        mpp_y = positive_float(props.get("openslide.mpp-y"))
        self.downsamples = [float(d) for d in h.level_downsamples]
        self.info = SlideInfo(
            backend="openslide",
            vendor=props.get("openslide.vendor"),
            levels=levels,
            mpp=(mpp_x, mpp_y or mpp_x) if mpp_x else None,
            objective_power=positive_float(props.get("openslide.objective-power")),
            properties=props,
        )

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self.downsamples[level]
        location = (int(round(x * ds)), int(round(y * ds)))
        handle = self._handle
        try:
            region = handle.read_region(location, level, (int(width), int(height)))
        except self._openslide.OpenSlideError as exc:
            self._reopen(handle)
            raise SlideError(
                self.path, f"cannot read level {level} at ({x}, {y}) size {width}x{height}: {exc}"
            ) from exc
        return rgba_to_rgb(region)

    def _reopen(self, failed) -> None:
        with self._lock:
            if self._handle is failed:
                try:
                    self._handle = self._openslide.OpenSlide(self.path)
                except self._openslide.OpenSlideError:
                    pass  # keep the failed handle; every read will report the error

    def close(self) -> None:
        self._handle.close()
