"""Batched histology augmentations that run where the images are (CPU or GPU).

:data:`HISTOLOGY` is the recipe; :func:`augment_batch` applies it to a whole batch
with tensor ops and per-sample random parameters, so the data loader only has to
deliver uint8 patches. Crop + resize of the whole batch is one
``torchvision.ops.roi_align`` call.

Shapes: ``N`` images, ``H x W`` input size, ``S`` output side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from napari_wsi_mil.pretrain import AUGMENTATIONS

#: ImageNet channel mean and standard deviation (inputs of ImageNet-initialised trunks).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ITU-R 601 luma weights, as torchvision's ``rgb_to_grayscale``.
_LUMA = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentParams:
    """Parameters of the augmentation recipe; ``dataclasses.replace`` to vary one.

    The defaults are the histology recipe of Ciga et al. (2022, "Self supervised
    contrastive learning for digital histopathology", Machine Learning with
    Applications 7), see :data:`HISTOLOGY`.

    Steps, in order: RandomResizedCrop (``crop_scale`` of the area, aspect ratio in
    ``crop_ratio``) resized to ``S x S``; rotation by 0/90/180/270 degrees with
    probability 1/4 each (``rotate90``); horizontal and vertical flips; ColorJitter
    with probability ``jitter_p`` (brightness, contrast, saturation factors drawn
    from ``[1 - x, 1 + x]``, hue shift from ``[-hue, hue]``, the four in a random
    order per image, as torchvision); HED jitter when ``hed_sigma`` > 0 (each image's
    haematoxylin, eosin and DAB optical densities scaled by a factor from
    ``[1 - s, 1 + s]`` and shifted by ``[-s, s]``, Tellez et al. 2018); RandomGrayscale;
    Gaussian blur with sigma in
    ``blur_sigma`` and a kernel ``blur_kernel_fraction`` of the side (made odd,
    at least 3); normalisation with ``mean`` / ``std``. A probability of 0 or a
    jitter strength of 0 switches that step off.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    rotate90: bool = True
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    hed_sigma: float = 0.0
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1; got {self.crop_scale}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max; got {self.crop_ratio}")
        for name in ("hflip_p", "vflip_p", "jitter_p", "grayscale_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError("hue must be in [0, 0.5]")
        if min(self.brightness, self.contrast, self.saturation, self.hed_sigma) < 0.0:
            raise ValueError("jitter strengths must be non-negative")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max; got {self.blur_sigma}")


#: The histology recipe (Ciga et al. 2022, "Self supervised contrastive learning for
#: digital histopathology"; as used by the WeakSupCon and CluSiam references):
#: RandomResizedCrop scale (0.2, 1), 90-degree rotations, h/v flips,
#: ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, RandomGrayscale p=0.2, Gaussian blur
#: sigma [0.1, 2] p=0.5 with a kernel ~10% of the side, ImageNet normalisation.
HISTOLOGY = AugmentParams()

#: H&E-appropriate recipe: the same crops, rotations, flips and blur, but lighter colour
#: jitter (0.2, 0.2, 0.2, hue 0.02: a hue shift of 0.1 turns eosin pink into orange or
#: purple), stain variation as HED jitter (sigma 0.05) and no grayscale (colour tells
#: haematoxylin-dense tumour from stroma).
HE = AugmentParams(
    brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, hed_sigma=0.05, grayscale_p=0.0
)

#: The recipes by name (``PretrainConfig.augment``).
RECIPES = dict(zip(AUGMENTATIONS, (HISTOLOGY, HE), strict=True))

#: Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB optical density
#: in R, G, B), as scikit-image's ``rgb_from_hed``.
_RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``[n]`` uniform [0, 1) numbers drawn on the generator's device, moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=where).to(device)


def _uniform(lo: float, hi: float, u: torch.Tensor) -> torch.Tensor:
    return lo + (hi - lo) * u


def crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    attempts: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop boxes for ``n`` images, sampled as torchvision does.

    Up to ``attempts`` tries per image of area fraction in ``scale`` and log-uniform
    aspect ratio in ``ratio``; the first that fits wins; otherwise the centre crop
    with the aspect ratio clamped to ``ratio``.

    Returns
    -------
    torch.Tensor
        ``[n, 4]`` float boxes ``(x1, y1, x2, y2)`` in pixel-edge coordinates.
    """
    device = torch.device(device)
    u = _rand(4 * n * attempts, generator, device).reshape(4, n, attempts)
    area = height * width * _uniform(scale[0], scale[1], u[0])  # [n, A]
    aspect = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), u[1]))
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)  # [n, A]
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # [n, 1]
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    i = torch.floor(u[2].gather(1, first)[:, 0] * (height - h + 1))
    j = torch.floor(u[3].gather(1, first)[:, 0] * (width - w + 1))

    # Fallback: centre crop with the aspect ratio clamped into ``ratio``.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    ok = fits.any(dim=1)
    w = torch.where(ok, w, torch.full_like(w, fw))
    h = torch.where(ok, h, torch.full_like(h, fh))
    i = torch.where(ok, i, torch.full_like(i, (height - fh) // 2))
    j = torch.where(ok, j, torch.full_like(j, (width - fw) // 2))
    return torch.stack([j, i, j + w, i + h], dim=1)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """``[N,3,S,S] -> [N,1,S,S]`` luma."""
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other`` clamped to [0, 1]; ``factor`` is ``[N]``."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * other).clamp(0.0, 1.0)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``[N,3,S,S]`` RGB in [0, 1] -> HSV with every channel in [0, 1]."""
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    flat = maxc == minc
    chroma = maxc - minc
    ones = torch.ones_like(maxc)
    s = chroma / torch.where(flat, ones, maxc)
    chroma = torch.where(flat, ones, chroma)
    rc, gc, bc = (maxc - r) / chroma, (maxc - g) / chroma, (maxc - b) / chroma
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~is_r & ~is_g
    h = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + is_b * (4.0 + gc - rc)
    h = torch.remainder(h / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, maxc], dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """``[N,3,S,S]`` HSV in [0, 1] -> RGB in [0, 1]."""
    h, s, v = x.unbind(dim=1)
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # Per sector 0..5: (r, g, b) = (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q).
    table = torch.stack(
        [
            torch.stack([v, q, p, p, t, v], dim=1),
            torch.stack([t, v, v, q, p, p], dim=1),
            torch.stack([p, p, t, v, v, q], dim=1),
        ],
        dim=1,
    )  # [N, 3, 6, S, S]
    index = sector[:, None, None].expand(-1, 3, 1, -1, -1)
    return table.gather(2, index)[:, :, 0]


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], dim=1))


def _jitter_op(x: torch.Tensor, op: int, factor: torch.Tensor) -> torch.Tensor:
    """One ColorJitter operation (0 brightness, 1 contrast, 2 saturation, 3 hue)."""
    if op == 0:
        return (x * factor.view(-1, 1, 1, 1)).clamp(0.0, 1.0)
    if op == 1:
        return _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)
    if op == 2:
        return _blend(x, _grayscale(x), factor)
    return _adjust_hue(x, factor)


def _color_jitter(
    x: torch.Tensor, params: AugmentParams, generator: torch.Generator | None
) -> torch.Tensor:
    n, device = x.shape[0], x.device
    strengths = (params.brightness, params.contrast, params.saturation)
    u = _rand(6 * n, generator, device).reshape(6, n)
    apply = u[0] < params.jitter_p
    factors = [_uniform(1.0 - s, 1.0 + s, u[k + 1]) for k, s in enumerate(strengths)]
    factors.append(_uniform(-params.hue, params.hue, u[4]))
    active = [s > 0 for s in (*strengths, params.hue)]
    order = torch.argsort(_rand(4 * n, generator, device).reshape(n, 4), dim=1)  # [N, 4]
    out = x.clone()
    for step in range(4):
        for op in range(4):
            sel = apply & (order[:, step] == op)
            if active[op] and bool(sel.any()):
                out[sel] = _jitter_op(out[sel], op, factors[op][sel])
    return out


def _hed_jitter(x: torch.Tensor, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """Scale and shift each image's H, E and D optical densities (per-image factors)."""
    n, device = x.shape[0], x.device
    rgb_from_hed = torch.tensor(_RGB_FROM_HED, dtype=x.dtype, device=device)
    hed_from_rgb = torch.linalg.inv(rgb_from_hed)
    u = _rand(6 * n, generator, device).reshape(2, n, 1, 3)
    scale, shift = _uniform(1 - sigma, 1 + sigma, u[0]), _uniform(-sigma, sigma, u[1])
    od = -torch.log(x.clamp(min=1e-6)).permute(0, 2, 3, 1).reshape(n, -1, 3)  # [N, P, 3]
    hed = (od @ hed_from_rgb) * scale + shift
    rgb = torch.exp(-(hed @ rgb_from_hed)).clamp(0.0, 1.0)
    return rgb.reshape(n, x.shape[2], x.shape[3], 3).permute(0, 3, 1, 2).contiguous()


def blur_kernel_size(side: int, fraction: float) -> int:
    """Odd Gaussian kernel size ``~fraction * side``, at least 3."""
    k = max(3, int(round(fraction * side)))
    return k if k % 2 else k + 1


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding, one ``sigma [N]`` per image."""
    n, c, hgt, wid = x.shape
    half = kernel_size // 2
    pos = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (pos[None, :] / sigma[:, None]) ** 2)  # [N, k]
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N*C, k]
    pad = min(half, hgt - 1, wid - 1)
    y = x.reshape(1, n * c, hgt, wid)
    if pad < half:  # reflect padding needs pad < side; fall back to replicate for tiny images
        y = F.pad(y, (half, half, half, half), mode="replicate")
    else:
        y = F.pad(y, (half, half, half, half), mode="reflect")
    y = F.conv2d(y, kernel[:, None, None, :], groups=n * c)  # along x
    y = F.conv2d(y, kernel[:, None, :, None], groups=n * c)  # along y
    return y.reshape(n, c, hgt, wid)


def augment_batch(
    images: torch.Tensor,
    out_size: int | None = None,
    params: AugmentParams = HISTOLOGY,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Augment a batch with per-image random parameters; runs on the images' device.

    Parameters
    ----------
    images : torch.Tensor
        ``[N,3,H,W]`` uint8 (0..255) or float (0..1) RGB patches, on any device.
    out_size : int or None
        Output side ``S``; ``None`` keeps the input size (square inputs only).
    params : AugmentParams
        The recipe, :data:`HISTOLOGY` by default.
    generator : torch.Generator or None
        Source of all random draws (it may live on CPU or on the images' device);
        ``None`` uses the global RNG of the images' device. The same seed on the
        same device gives the same output.

    Returns
    -------
    torch.Tensor
        ``[N,3,S,S]`` float32, normalised with ``params.mean`` / ``params.std``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W]; got {tuple(images.shape)}")
    n, _, height, width = images.shape
    if out_size is None:
        if height != width:
            raise ValueError(f"give out_size for non-square images ({height}x{width})")
        out_size = height
    device = images.device
    if images.dtype == torch.uint8:
        x = images.float() / 255.0
    else:
        x = images.float()
    if n == 0:
        return x.new_empty((0, 3, out_size, out_size))

    # Crop + resize of the whole batch; adaptive sampling averages when shrinking.
    boxes = crop_boxes(n, height, width, params.crop_scale, params.crop_ratio, generator, device)
    index = torch.arange(n, dtype=x.dtype, device=device)[:, None]
    x = roi_align(x, torch.cat([index, boxes.to(x.dtype)], dim=1), out_size, aligned=True)

    u = _rand(5 * n, generator, device).reshape(5, n)
    if params.rotate90:
        quarter = torch.clamp((u[0] * 4).long(), max=3)
        for k in (1, 2, 3):
            sel = quarter == k
            if bool(sel.any()):
                x[sel] = torch.rot90(x[sel], k, dims=(2, 3))
    x = torch.where((u[1] < params.hflip_p).view(-1, 1, 1, 1), x.flip(3), x)
    x = torch.where((u[2] < params.vflip_p).view(-1, 1, 1, 1), x.flip(2), x)
    if params.jitter_p > 0:
        x = _color_jitter(x, params, generator)
    if params.hed_sigma > 0:
        x = _hed_jitter(x, params.hed_sigma, generator)
    gray = (u[3] < params.grayscale_p).view(-1, 1, 1, 1)
    x = torch.where(gray, _grayscale(x).expand(-1, 3, -1, -1), x)
    blur = u[4] < params.blur_p
    if bool(blur.any()):
        sigma = _uniform(*params.blur_sigma, _rand(n, generator, device))
        size = blur_kernel_size(out_size, params.blur_kernel_fraction)
        x[blur] = _gaussian_blur(x[blur], sigma[blur], size)
    mean = torch.tensor(params.mean, dtype=x.dtype, device=device).view(1, 3, 1, 1)
    std = torch.tensor(params.std, dtype=x.dtype, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def two_views(
    images: torch.Tensor,
    out_size: int | None = None,
    params: AugmentParams = HISTOLOGY,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of each image (see :func:`augment_batch`).

    Returns
    -------
    tuple of torch.Tensor
        Two ``[N,3,S,S]`` float32 batches; row ``n`` of both comes from ``images[n]``.
    """
    return (
        augment_batch(images, out_size, params, generator),
        augment_batch(images, out_size, params, generator),
    )
