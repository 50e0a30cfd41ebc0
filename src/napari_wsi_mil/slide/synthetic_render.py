"""Procedural H&E-like appearance of the synthetic slides.

A slide is described by a :class:`SlideLayout`: two smooth low-resolution fields
(tissue and lesion, each roughly a signed distance in mask pixels, positive
inside) from which every pyramid level is rendered tile by tile by a
:class:`TileRenderer`. Nuclei are placed on a jittered grid whose cell
parameters come from a hash of (seed, cell index), so they are identical across
tile borders and independent of the rendering order. Fine levels (downsample
<= 2) draw every nucleus; coarser levels draw the mean colour of the nuclei.

Lesions differ from normal tissue mostly by texture (larger, pleomorphic,
irregular, paler vesicular nuclei with a dark rim and a nucleolus, covering
more of the area and less regularly spaced than the small, dark, round nuclei
of normal tissue) and only a little by mean colour. Every slide gets its
own :class:`Stain` (H&E vectors, stain amounts, section thickness, scanner
gains), drawn from the seed, which shifts its colours by more than the
lesion/normal difference in mean colour, as between slides of a real cohort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_TEX = 1024  # period of the stationary textures, in level pixels
_MASK_SIDE = 512  # longer side of the layout fields, in mask pixels
_TISSUE_RAMP = 6.0  # width of the tissue/background edge, level-0 pixels
_LESION_RAMP = 3.0
_LESION_MARGIN = 6.0  # lesions stay this many mask pixels inside the tissue
_BACKGROUNDS = {"white": 241.0, "gray": 214.0, "black": 12.0}


@dataclass(frozen=True)
class NucleusKind:
    """Distribution of the nuclei of one tissue type (lengths in level-0 pixels)."""

    salt: int
    cell: float  # jitter grid cell size; density = p / cell**2
    p: float  # probability that a cell holds a nucleus
    radius: tuple[float, float]  # semi-major axis range
    aspect: tuple[float, float]  # minor / major range
    irregular: float  # amplitude of the boundary wobble
    alpha: tuple[float, float]  # peak opacity range
    color: tuple[float, float, float]
    jitter: float = 1.0  # displacement range within the grid cell (0: on a lattice)
    rim: float = 0.0  # vesicular chromatin: centre opacity is (1 - rim) of the rim's
    nucleolus: float = 0.0  # opacity of a central nucleolus (0: none)

    @property
    def coverage(self) -> float:
        """Expected fraction of the area covered, times the mean opacity."""
        area = np.pi * np.mean(self.radius) ** 2 * np.mean(self.aspect)
        profile = 1 - self.rim / 2  # mean of (1 - rim * (1 - q**2)) over the disc
        return float((1 - np.exp(-self.p * area / self.cell**2)) * np.mean(self.alpha) * profile)


# normal: small, dark, round, evenly spaced nuclei
NORMAL = NucleusKind(
    salt=1,
    cell=15.0,
    p=0.7,
    radius=(3.2, 4.6),
    aspect=(0.75, 0.95),
    irregular=0.0,
    alpha=(0.75, 0.95),
    color=(88, 48, 138),
    jitter=0.55,
)
# lesion: large, pleomorphic, irregular, vesicular nuclei with a nucleolus; about
# the same optical coverage as normal tissue, so the mean colour hardly changes
LESION = NucleusKind(
    salt=2,
    cell=20.0,
    p=0.8,
    radius=(5.0, 9.5),
    aspect=(0.45, 0.95),
    irregular=0.3,
    alpha=(0.6, 0.85),
    color=(70, 34, 122),
    rim=0.45,
    nucleolus=0.9,
)
STROMA = np.array([232.0, 150.0, 192.0], np.float32)
LESION_STROMA = np.array([229.0, 147.0, 194.0], np.float32)
GAP = np.array([246.0, 226.0, 236.0], np.float32)

# Optical-density directions of haematoxylin and eosin (Ruifrok & Johnston 2001).
_H_REF = np.array([0.650, 0.704, 0.286])
_E_REF = np.array([0.072, 0.990, 0.105])


@dataclass(frozen=True)
class Stain:
    """A slide's staining and scanning: how the reference palette looks on it.

    Colours are unmixed (Beer-Lambert, optical density) into haematoxylin, eosin
    and a residual, then remixed with this slide's stain vectors, stain amounts
    and section thickness, and multiplied by per-channel scanner gains. The
    reference stain (all variation 0) leaves colours unchanged.
    """

    hematoxylin: tuple[float, float, float]  # unit OD vector
    eosin: tuple[float, float, float]
    amounts: tuple[float, float]  # haematoxylin, eosin concentration factors
    thickness: float  # scales all optical densities
    gain: tuple[float, float, float]  # scanner gain per RGB channel

    @classmethod
    def draw(cls, seed: int, variation: float = 1.0) -> Stain:
        """A random stain from ``seed``; ``variation`` scales every spread (0: reference)."""
        if variation < 0:
            raise ValueError(f"stain_variation must be >= 0, not {variation}")
        rng = np.random.default_rng([seed, 5209])
        z = rng.standard_normal(12) * variation

        def vector(ref, dz):
            v = np.clip(ref + 0.07 * dz, 0.01, None)
            return tuple(float(x) for x in v / np.linalg.norm(v))

        return cls(
            hematoxylin=vector(_H_REF / np.linalg.norm(_H_REF), z[0:3]),
            eosin=vector(_E_REF / np.linalg.norm(_E_REF), z[3:6]),
            amounts=(float(np.exp(0.2 * z[6])), float(np.exp(0.2 * z[7]))),
            thickness=float(np.exp(0.12 * z[8])),
            gain=tuple(float(np.exp(0.03 * x)) for x in z[9:12]),
        )

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Reference colours ``(..., 3)`` in 0-255 as they appear with this stain (float32)."""
        h_ref, e_ref = _H_REF / np.linalg.norm(_H_REF), _E_REF / np.linalg.norm(_E_REF)
        residual = np.cross(h_ref, e_ref)
        residual /= np.linalg.norm(residual)
        od = -np.log(np.clip(np.asarray(rgb, np.float64), 1.0, 255.0) / 255.0)
        conc = od @ np.linalg.inv(np.stack([h_ref, e_ref, residual]))
        basis = np.stack(
            [
                np.asarray(self.hematoxylin) * self.amounts[0],
                np.asarray(self.eosin) * self.amounts[1],
                residual,
            ]
        )
        out = 255.0 * np.exp(-self.thickness * (conc @ basis)) * np.asarray(self.gain)
        return np.clip(out, 0, 255).astype(np.float32)

    def as_dict(self) -> dict:
        """The draw as plain floats (JSON-friendly), as recorded in :class:`SyntheticSlide`."""
        return {
            "hematoxylin": list(self.hematoxylin),
            "eosin": list(self.eosin),
            "amounts": list(self.amounts),
            "thickness": self.thickness,
            "gain": list(self.gain),
        }


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise (periodic), scaled to unit standard deviation."""
    spectrum = np.fft.rfft2(rng.standard_normal(shape))
    field = np.fft.irfft2(ndimage.fourier_gaussian(spectrum, sigma, n=shape[1]), s=shape)
    return (field - field.mean()) / (field.std() + 1e-12)


def _as_distance(field: np.ndarray, level: float) -> np.ndarray:
    """Shift ``field`` to zero at ``level`` and scale it to about mask pixels near that contour."""
    gy, gx = np.gradient(field)
    grad = np.hypot(gx, gy)
    near = np.abs(field - level) < 0.05 * (field.std() + 1e-12)
    scale = float(np.median(grad[near])) if near.sum() > 10 else float(np.median(grad))
    return ((field - level) / max(scale, 1e-9)).astype(np.float32)


def _top_threshold(values: np.ndarray, count: int) -> float:
    """A level with exactly ``count`` of ``values`` above it (barring ties)."""
    ordered = np.sort(values)[::-1]
    count = int(np.clip(count, 1, ordered.size))
    return float(ordered[count - 1] + ordered[count]) / 2 if count < ordered.size else -np.inf


@dataclass
class SlideLayout:
    """Where tissue and lesions are: two fields of shape ``(H/scale, W/scale)``.

    ``tissue`` and ``lesion`` are about signed distances in mask pixels,
    positive inside. Mask pixel (r, c) sits at level-0 ((c+0.5)*scale, (r+0.5)*scale).
    """

    width: int
    height: int
    scale: int
    tissue: np.ndarray
    lesion: np.ndarray

    @classmethod
    def build(cls, width: int, height: int, seed: int, lesion_fraction: float) -> SlideLayout:
        """Draw a layout: tissue covers 35-55 % of the slide, lesions ``lesion_fraction`` of it."""
        scale = 2 ** max(0, int(np.ceil(np.log2(max(width, height) / _MASK_SIDE))))
        shape = (max(8, -(-height // scale)), max(8, -(-width // scale)))
        rng = np.random.default_rng([seed, 7919])
        side = max(shape)
        noise = _smooth_noise(rng, shape, 0.12 * side) + 0.35 * _smooth_noise(
            rng, shape, 0.035 * side
        )
        ry, rx = np.ogrid[-1 : 1 : shape[0] * 1j, -1 : 1 : shape[1] * 1j]
        edge = np.maximum(np.abs(rx), np.abs(ry))
        field = noise - 2.5 * (rx**2 + ry**2) - 12.0 * np.maximum(edge - 0.85, 0)
        border = np.zeros(shape, bool)
        edge = max(2, side // 40)
        border[:edge], border[-edge:], border[:, :edge], border[:, -edge:] = (True,) * 4
        target = int(rng.uniform(0.35, 0.55) * field.size)
        tissue = _as_distance(field, _top_threshold(field[~border], target))
        tissue[border] = -1e3

        lesion = np.full(shape, -1e3, np.float32)
        n_tissue = int((tissue > 0).sum())
        if lesion_fraction > 0 and n_tissue:
            lf = _smooth_noise(rng, shape, 0.045 * side)
            margin = _LESION_MARGIN
            if (tissue > margin).sum() < lesion_fraction * n_tissue:
                margin = 0.0
            level = _top_threshold(lf[tissue > margin], round(lesion_fraction * n_tissue))
            lesion = np.minimum(_as_distance(lf, level), tissue - margin)
        return cls(width, height, scale, tissue, lesion.astype(np.float32))

    @property
    def tissue_fraction(self) -> float:
        return float((self.tissue > 0).mean())

    @property
    def lesion_fraction(self) -> float:
        """Lesion area over tissue area, measured on the mask."""
        return float((self.lesion > 0).sum() / max(1, (self.tissue > 0).sum()))

    def lesion_polygons(self) -> list[np.ndarray]:
        """Outer contours of the lesions, ``(K, 2)`` level-0 (x, y), closed."""
        from skimage.measure import find_contours

        padded = np.pad(self.lesion, 1, constant_values=-1e3)
        polygons = []
        for contour in find_contours(padded, 0.0, positive_orientation="high"):
            rows, cols = contour[:, 0] - 1, contour[:, 1] - 1
            # with positive_orientation="high", outer rings have negative (x, y) shoelace area
            area = 0.5 * np.sum(cols[:-1] * rows[1:] - cols[1:] * rows[:-1])
            if area >= 0:
                continue
            xy = np.stack([(cols + 0.5) * self.scale, (rows + 0.5) * self.scale], axis=1)
            polygons.append(xy.astype(np.float64))
        return polygons


def _hash_uniform(seed: int, salt: int, i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """``(len(i), n)`` uniforms in [0, 1) from a splitmix64 hash of (seed, salt, i, j, k)."""
    x = i.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x ^= j.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    x ^= np.uint64((seed * 1_000_003 + salt * 7_919) % 2**64)
    x = x[:, None] + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _axis_weights(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = np.clip(coords, 0, n - 1)
    i0 = np.minimum(c.astype(np.intp), n - 2) if n > 1 else np.zeros(c.shape, np.intp)
    return i0, np.minimum(i0 + 1, n - 1), (c - i0).astype(np.float32)


def _bilinear_grid(field: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``field`` interpolated at the grid of rows ``v`` x columns ``u`` (mask coordinates)."""
    j0, j1, fv = _axis_weights(v, field.shape[0])
    i0, i1, fu = _axis_weights(u, field.shape[1])
    lo, hi = j0.min(), j1.max() + 1
    sub = field[lo:hi, i0] * (1 - fu) + field[lo:hi, i1] * fu
    return sub[j0 - lo] * (1 - fv)[:, None] + sub[j1 - lo] * fv[:, None]


def _bilinear_points(field: np.ndarray, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    j0, j1, fv = _axis_weights(v, field.shape[0])
    i0, i1, fu = _axis_weights(u, field.shape[1])
    top = field[j0, i0] * (1 - fu) + field[j0, i1] * fu
    return top * (1 - fv) + (field[j1, i0] * (1 - fu) + field[j1, i1] * fu) * fv


class TileRenderer:
    """Render ``tile x tile`` RGB tiles of any pyramid level of a layout."""

    def __init__(
        self,
        layout: SlideLayout,
        seed: int,
        tile: int = 256,
        background: str = "white",
        stain: Stain | None = None,
    ):
        if background not in _BACKGROUNDS:
            raise ValueError(
                f"background must be one of {sorted(_BACKGROUNDS)}, not {background!r}"
            )
        if tile & (tile - 1) or not 16 <= tile <= _TEX:
            raise ValueError(f"tile size must be a power of two in [16, {_TEX}], not {tile}")
        self.layout, self.seed, self.tile = layout, seed, tile
        self.stain = stain if stain is not None else Stain.draw(seed, 0.0)
        self.stroma = self.stain.apply(STROMA)
        self.lesion_stroma = self.stain.apply(LESION_STROMA)
        self.gap = self.stain.apply(GAP)
        self.nucleus_color = {k.salt: self.stain.apply(k.color) for k in (NORMAL, LESION)}
        rng = np.random.default_rng([seed, 104729])
        white = rng.standard_normal((_TEX, _TEX)).astype(np.float32)
        self.fine = ndimage.gaussian_filter(white, 0.7, mode="wrap")
        self.fine /= self.fine.std()
        self.coarse = _smooth_noise(rng, (_TEX, _TEX), 6.0).astype(np.float32)
        fiber = ndimage.gaussian_filter(white, (1.2, 4.0), mode="wrap")
        self.fiber = fiber / fiber.std()
        bg = _BACKGROUNDS[background] + 1.5 * rng.standard_normal((_TEX, _TEX, 3))
        self.background = np.clip(bg, 0, 255).astype(np.uint8)

    def _tex(self, texture: np.ndarray, x0: int, y0: int, shift: int = 0) -> np.ndarray:
        y, x = (y0 + shift) % _TEX, (x0 + shift) % _TEX
        if y + self.tile <= _TEX and x + self.tile <= _TEX:
            return texture[y : y + self.tile, x : x + self.tile]
        rows, cols = np.arange(y, y + self.tile) % _TEX, np.arange(x, x + self.tile) % _TEX
        return texture[rows[:, None], cols]

    def render(self, level: int, x0: int, y0: int) -> np.ndarray:
        """The tile whose top-left corner is level pixel (x0, y0); ``(tile, tile, 3)`` uint8."""
        lay, t, d = self.layout, self.tile, 2**level
        u = (np.arange(x0, x0 + t) + 0.5) * d / lay.scale - 0.5
        v = (np.arange(y0, y0 + t) + 0.5) * d / lay.scale - 0.5
        rows = slice(max(0, int(v[0]) - 1), max(0, int(v[-1]) + 3))
        cols = slice(max(0, int(u[0]) - 1), max(0, int(u[-1]) + 3))
        window = lay.tissue[rows, cols]
        if window.size == 0 or window.max() * lay.scale < -max(_TISSUE_RAMP, d):
            return self._tex(self.background, x0, y0).copy()
        ramp = max(_TISSUE_RAMP, d) / lay.scale
        tissue = np.clip(_bilinear_grid(lay.tissue, v, u) / ramp + 0.5, 0, 1)
        lesion = np.clip(
            _bilinear_grid(lay.lesion, v, u) / (max(_LESION_RAMP, d) / lay.scale) + 0.5, 0, 1
        )

        coarse, fine = self._tex(self.coarse, x0, y0), self._tex(self.fine, x0, y0)
        shade = 1 + 0.05 * coarse + 0.035 * self._tex(self.fiber, x0, y0)
        stroma = self.stroma + (self.lesion_stroma - self.stroma) * lesion[..., None]
        color = stroma * shade[..., None]
        gap = np.clip((self._tex(self.coarse, x0, y0, _TEX // 2) - 1.5) * 1.5, 0, 0.8) * (
            1 - lesion
        )
        color += (self.gap - color) * gap[..., None]
        chromatin = np.clip(0.85 + 0.15 * fine, 0, 1)
        for kind in (NORMAL, LESION):
            if d <= 2:
                alpha = self._nuclei(kind, level, x0, y0)
            else:
                region = lesion if kind is LESION else 1 - lesion
                alpha = kind.coverage * region * (1 + 0.25 * coarse)
            alpha *= chromatin
            color += (self.nucleus_color[kind.salt] - color) * alpha[..., None]
        color += 3.0 * fine[..., None]
        bg = self._tex(self.background, x0, y0).astype(np.float32)
        out = bg + (color - bg) * tissue[..., None]
        return np.clip(out, 0, 255).astype(np.uint8)

    def _nuclei(self, kind: NucleusKind, level: int, x0: int, y0: int) -> np.ndarray:
        """Opacity of the nuclei of ``kind`` in one tile, ``(tile, tile)`` float32."""
        lay, t, d, c = self.layout, self.tile, 2**level, kind.cell
        out = np.zeros((t, t), np.float32)
        reach = kind.radius[1] * (1 + kind.irregular) + 1.5 * d
        ci = np.arange(np.floor((x0 * d - reach) / c), np.floor(((x0 + t) * d + reach) / c) + 1)
        cj = np.arange(np.floor((y0 * d - reach) / c), np.floor(((y0 + t) * d + reach) / c) + 1)
        ii, jj = (a.ravel().astype(np.int64) for a in np.meshgrid(ci, cj))
        h = _hash_uniform(self.seed, kind.salt, ii, jj, 10)
        lo = 0.5 - kind.jitter / 2
        cx = (ii + lo + kind.jitter * h[:, 0]) * c
        cy = (jj + lo + kind.jitter * h[:, 1]) * c
        keep = h[:, 2] < kind.p
        mu, mv = cx / lay.scale - 0.5, cy / lay.scale - 0.5
        in_lesion = _bilinear_points(lay.lesion, mv, mu) > 0
        if kind is LESION:
            keep &= in_lesion
        else:
            keep &= ~in_lesion & (_bilinear_points(lay.tissue, mv, mu) > 0)
        if not keep.any():
            return out
        h, cx, cy = h[keep], cx[keep], cy[keep]
        a = (kind.radius[0] + (kind.radius[1] - kind.radius[0]) * h[:, 3])[:, None, None]
        b = a * (kind.aspect[0] + (kind.aspect[1] - kind.aspect[0]) * h[:, 4])[:, None, None]
        cos, sin = np.cos(h[:, 5] * np.pi)[:, None, None], np.sin(h[:, 5] * np.pi)[:, None, None]
        peak = (kind.alpha[0] + (kind.alpha[1] - kind.alpha[0]) * h[:, 6])[:, None, None]
        size = int(np.ceil(2 * reach / d)) + 1
        px = np.floor((cx - reach) / d).astype(np.int64)[:, None] + np.arange(size)
        py = np.floor((cy - reach) / d).astype(np.int64)[:, None] + np.arange(size)
        dx = ((px + 0.5) * d - cx[:, None])[:, None, :]
        dy = ((py + 0.5) * d - cy[:, None])[:, :, None]
        along, across = dx * cos + dy * sin, dy * cos - dx * sin
        q = np.sqrt((along / a) ** 2 + (across / b) ** 2)
        if kind.irregular:
            angle = np.arctan2(across, along)
            wobble = np.cos(3 * angle + 6.2832 * h[:, 7, None, None])
            wobble += 0.7 * np.cos(2 * angle + 6.2832 * h[:, 8, None, None])
            wobble += 0.5 * np.cos(5 * angle + 6.2832 * h[:, 9, None, None])
            q /= 1 + kind.irregular * wobble / 2.2
        alpha = np.clip((1 - q) * b / d + 0.5, 0, 1) * peak
        if kind.rim:
            alpha *= 1 - kind.rim * (1 - np.minimum(q, 1) ** 2)
        if kind.nucleolus:
            dot = np.clip((0.22 - q) * b / d + 0.5, 0, 1) * kind.nucleolus
            alpha = np.maximum(alpha, dot)
        alpha = alpha.astype(np.float32)
        lx, ly = (px - x0)[:, None, :], (py - y0)[:, :, None]
        valid = (lx >= 0) & (lx < t) & (ly >= 0) & (ly < t) & (alpha > 0)
        flat = np.broadcast_to(ly * t + lx, alpha.shape)
        np.maximum.at(out.ravel(), flat[valid], alpha[valid])
        return out
