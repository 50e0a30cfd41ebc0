"""The :class:`Slide` type: one object for every whole-slide image format.

Coordinates: ``read_region(level, x, y, w, h)`` takes ``x, y`` at level 0 (as
OpenSlide does) and ``w, h`` in pixels of the level read. Slides with few or no
pyramid levels get coarser levels synthesized lazily by 2x2 averaging, so napari
always has a pyramid down to about 1,000 pixels and no level 0 is ever computed to
make them.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np

from napari_wsi_mil.errors import SlideError
from napari_wsi_mil.slide.backend import NativeLevel, SlideBackend, SlideInfo

#: File extensions the plugin's reader claims.
SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".dcm",
    ".btf",
    ".qptiff",
)
#: Synthesized levels are added until the coarsest level's longer side is at most this.
COARSEST_SIDE = 1024
#: Chunks of the dask pyramid are whole native tiles, at least this many pixels a side.
MIN_CHUNK = 512
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Version of the slide facts kept by :meth:`Slide.cache_facts`; facts of another version
#: are parsed again. 2: an Aperio SVS of JPEG tiles is read by tifffile, not OpenSlide.
SLIDE_FACTS_VERSION = 2


class Slide:
    """A whole-slide image opened read-only. Use :func:`open_slide` to make one.

    Reads are thread-safe. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, backend: SlideBackend):
        self.path = Path(path)
        self._backend = backend
        info = backend.info
        self.backend_name = info.backend
        self.vendor = info.vendor
        self.objective_power = info.objective_power
        self.properties = dict(info.properties)
        self.mpp_xy = info.mpp
        self._native = info.levels
        w0, h0 = self._native[0].width, self._native[0].height
        dims = [(lvl.width, lvl.height) for lvl in self._native]
        while max(dims[-1]) > COARSEST_SIDE:
            w, h = dims[-1]
            dims.append((max(1, w // 2), max(1, h // 2)))
        self.level_dimensions: list[tuple[int, int]] = dims
        self.level_downsamples: list[float] = [float(np.mean((w0 / w, h0 / h))) for w, h in dims]
        self._corrupt_warned = threading.Event()
        self._token = file_token(self.path)  # the file version opened

    # -- facts ---------------------------------------------------------------
    @property
    def mpp(self) -> float | None:
        """Microns per pixel at level 0 (mean of x and y), or None when the file does not say."""
        return None if self.mpp_xy is None else float(np.mean(self.mpp_xy))

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def native_level_count(self) -> int:
        """Levels stored in the file; the rest are synthesized."""
        return len(self._native)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    def level_mpp(self, level: int) -> float | None:
        return None if self.mpp is None else self.mpp * self.level_downsamples[level]

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (by more than 1%)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.01:
                best = i
        return best

    def chunk_size(self, level: int) -> tuple[int, int]:
        """``(height, width)`` of the dask chunks of ``level``: whole native tiles."""
        if level < self.native_level_count:
            lvl = self._native[level]
            th, tw = lvl.tile_height, lvl.tile_width
        else:
            th = tw = MIN_CHUNK
        return th * math.ceil(MIN_CHUNK / th), tw * math.ceil(MIN_CHUNK / tw)

    def describe(self) -> dict:
        """A JSON-friendly summary (used by ``wsi-mil info``)."""
        return {
            "path": str(self.path),
            "backend": self.backend_name,
            "vendor": self.vendor,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "native_level_count": self.native_level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": [round(d, 4) for d in self.level_downsamples],
            "mpp": self.mpp,
            "mpp_xy": list(self.mpp_xy) if self.mpp_xy else None,
            "objective_power": self.objective_power,
        }

    # -- reading -------------------------------------------------------------
    def read_region(
        self, level: int, x: int, y: int, width: int, height: int, *, strict: bool = True
    ) -> np.ndarray:
        """Read ``(height, width, 3)`` uint8 RGB at ``level``, top-left ``(x, y)`` at level 0.

        With ``strict=False`` a damaged region comes back white with one warning per
        slide instead of raising :class:`SlideError` (the viewer's behaviour).
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range 0..{self.level_count - 1}")
        ds = self.level_downsamples[level]
        try:
            return self._read_level(level, round(x / ds), round(y / ds), int(width), int(height))
        except SlideError as exc:
            if strict:
                raise
            if not self._corrupt_warned.is_set():
                self._corrupt_warned.set()
                warnings.warn(
                    f"{exc}; showing blank tiles where the file is damaged",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return np.full((int(height), int(width), 3), 255, np.uint8)

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read in *level* pixel coordinates; synthesized levels average the level below."""
        if level < self.native_level_count:
            return self._backend.read_level(level, x, y, width, height)
        finer = self._read_level(level - 1, 2 * x, 2 * y, 2 * width, 2 * height)
        return downsample_2x(finer)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide as RGB with its longer side at most ``max_size``."""
        from PIL import Image

        w0 = max(self.dimensions)
        level = self.best_level_for_downsample(w0 / max_size)
        w, h = self.level_dimensions[level]
        image = Image.fromarray(self.read_region(level, 0, 0, w, h))
        image.thumbnail((max_size, max_size), Image.Resampling.BOX)
        return np.asarray(image)

    def cache_facts(self, cache: SlideInfoCache) -> None:
        """Keep the facts parsed at open in ``cache`` under the file version opened, for
        later ``open_slide(path, cache=cache)`` (callers do this once their work on the
        slide succeeded: a failed command leaves the project as it was)."""
        if not isinstance(self._backend, _DeferredBackend):
            facts = {"version": SLIDE_FACTS_VERSION, **asdict(self._backend.info)}
            cache.cache_slide_info(self._token, facts)

    def pyramid(self) -> list:
        """One lazy dask array per level, ``(H, W, 3)`` uint8, chunked by native tiles."""
        import dask.array as da

        return [
            da.from_array(
                _LevelArray(self, level),
                chunks=(*self.chunk_size(level), 3),
                lock=False,
                asarray=False,
                fancy=False,
                meta=np.empty((0, 0, 0), np.uint8),
                name=f"wsi-mil-{self._token}-level{level}",
            )
            for level in range(self.level_count)
        ]

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Slide({str(self.path)!r}, backend={self.backend_name!r}, "
            f"dimensions={self.dimensions}, levels={self.level_count}, mpp={self.mpp})"
        )


def downsample_2x(rgb: np.ndarray) -> np.ndarray:
    """2x2 box average of an even-sized ``(H, W, 3)`` uint8 image."""
    h, w = rgb.shape[0] // 2, rgb.shape[1] // 2
    blocks = rgb[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).astype(np.uint16)
    return ((blocks.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8)


class _LevelArray:
    """Array-like view of one level for ``dask.array.from_array``."""

    def __init__(self, slide: Slide, level: int):
        w, h = slide.level_dimensions[level]
        self.slide, self.level = slide, level
        self.shape = (h, w, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        try:
            region = self._read(x0, y0, x1 - x0, y1 - y0, strict=True)
        except SlideError:  # blank only the damaged native tiles of this chunk
            region = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
            th, tw = self._native_tile()
            for ty in range(y0, y1, th):
                for tx in range(x0, x1, tw):
                    h, w = min(th, y1 - ty), min(tw, x1 - tx)
                    region[ty - y0 : ty - y0 + h, tx - x0 : tx - x0 + w] = self._read(
                        tx, ty, w, h, strict=False
                    )
        return region[(slice(None), slice(None), *key[2:])]

    def _read(self, x: int, y: int, width: int, height: int, strict: bool) -> np.ndarray:
        ds = self.slide.level_downsamples[self.level]
        return self.slide.read_region(
            self.level, round(x * ds), round(y * ds), width, height, strict=strict
        )

    def _native_tile(self) -> tuple[int, int]:
        slide, level = self.slide, self.level
        if level < slide.native_level_count:
            native = slide._native[level]
            return native.tile_height, native.tile_width
        return slide.chunk_size(level)


def _sniff(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(8)


def file_token(path: Path) -> str:
    """Names one version of a file: a hash of its resolved path, size and mtime."""
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[
        :16
    ]


class SlideInfoCache(Protocol):
    """Where :func:`open_slide` keeps the parsed facts of files it has checked
    (:class:`~napari_wsi_mil.store.project.ProjectStore` is one)."""

    def cached_slide_info(self, token: str) -> dict | None: ...

    def cache_slide_info(self, token: str, info: dict) -> None: ...


def open_slide(path: str | os.PathLike, cache: SlideInfoCache | None = None) -> Slide:
    """Open a whole-slide image with the backend that fits it.

    Vendor formats go to OpenSlide; generic and OME-TIFF, and Aperio SVS of JPEG tiles,
    to tifffile. The file is checked by decoding one tile of its coarsest level, so a
    file that opens but cannot be decoded fails here, with a :class:`SlideError` naming
    the reason.

    With a ``cache`` (a project store), the facts of a file kept there by
    :meth:`Slide.cache_facts`, unchanged since (same path, size and mtime), come from
    the cache and the file itself is opened at the first read (a file damaged in
    between then fails there, with a :class:`SlideError`). Opening writes nothing.
    """
    path = Path(path)
    if not path.exists():
        raise SlideError(path, "file not found")
    if path.is_dir():
        raise SlideError(path, "is a directory, not a slide file")
    if path.stat().st_size == 0:
        raise SlideError(path, "file is empty")
    info = None if cache is None else _info_from_json(cache.cached_slide_info(file_token(path)))
    if info is not None:
        return Slide(path, _DeferredBackend(path, info))
    return Slide(path, _open_checked_backend(path))


def _open_checked_backend(path: Path) -> SlideBackend:
    head = _sniff(path)
    backend = _plain_tiff_backend(path) if head[:4] in _TIFF_MAGIC else None
    if backend is None:
        backend = _backend_by_vendor(path, head)
    try:  # one native tile of the coarsest level: the first screenful's own decoder
        last = backend.info.levels[-1]
        tile_w, tile_h = min(last.width, last.tile_width), min(last.height, last.tile_height)
        backend.read_level(len(backend.info.levels) - 1, 0, 0, tile_w, tile_h)
    except SlideError as exc:
        backend.close()
        raise SlideError(
            path, f"file is damaged or uses an unsupported encoding: {exc.reason}"
        ) from exc
    except Exception as exc:
        backend.close()
        raise SlideError(path, f"file is damaged or uses an unsupported encoding: {exc}") from exc
    return backend


def _plain_tiff_backend(path: Path) -> SlideBackend | None:
    """The tifffile backend for a ``.tif``/``.tiff``/``.svs`` that it reads as OpenSlide
    would (not a vendor format, or an Aperio SVS of JPEG tiles), without importing
    OpenSlide (most of opening such a file); None for the others."""
    if path.suffix.lower() not in (".tif", ".tiff", ".svs"):
        return None
    from napari_wsi_mil.slide.tiff_backend import TiffBackend

    try:
        backend = TiffBackend(str(path))
    except SlideError:  # left to the vendor check, then to the same error
        return None
    if not backend.needs_openslide:
        return backend
    backend.close()
    return None


def _backend_by_vendor(path: Path, head: bytes) -> SlideBackend:
    try:
        import openslide

        vendor = openslide.OpenSlide.detect_format(str(path))
    except Exception:  # detect_format itself can fail on odd files
        vendor = None
    if vendor and vendor != "generic-tiff":
        from napari_wsi_mil.slide.openslide_backend import OpenSlideBackend

        return OpenSlideBackend(str(path))
    if head[:4] in _TIFF_MAGIC:
        from napari_wsi_mil.slide.tiff_backend import TiffBackend

        return TiffBackend(str(path))
    raise SlideError(path, f"not a supported slide format ({_describe_header(head)})")


def _info_from_json(data: dict | None) -> SlideInfo | None:
    """A cached :class:`SlideInfo`, or None when there is none, it is of another
    :data:`SLIDE_FACTS_VERSION` or it does not parse."""
    if not isinstance(data, dict) or data.get("version") != SLIDE_FACTS_VERSION:
        return None
    try:
        mpp = data["mpp"]
        return SlideInfo(
            backend=str(data["backend"]),
            vendor=data["vendor"],
            levels=[NativeLevel(**level) for level in data["levels"]],
            mpp=None if mpp is None else (float(mpp[0]), float(mpp[1])),
            objective_power=data["objective_power"],
            properties={str(k): str(v) for k, v in data["properties"].items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None


class _DeferredBackend(SlideBackend):
    """Cached facts now, the file at the first read (checked as :func:`open_slide` does)."""

    def __init__(self, path: Path, info: SlideInfo):
        self.path, self.info = path, info
        self._backend: SlideBackend | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _opened(self) -> SlideBackend:
        with self._lock:
            if self._closed:
                raise SlideError(self.path, "the slide is closed")
            if self._backend is None:
                backend = _open_checked_backend(self.path)
                if backend.info.levels != self.info.levels:
                    backend.close()
                    raise SlideError(self.path, "the file changed since it was opened")
                self._backend = backend
            return self._backend

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        return self._opened().read_level(level, x, y, width, height)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._backend is not None:
                self._backend.close()


def _describe_header(head: bytes) -> str:
    if head.startswith(b"\x89PNG"):
        return "it is a PNG image; whole-slide formats are svs, ndpi, mrxs, tiff, ..."
    if head.startswith(b"\xff\xd8"):
        return "it is a JPEG image; whole-slide formats are svs, ndpi, mrxs, tiff, ..."
    return f"unrecognised file header {head[:4]!r}"
