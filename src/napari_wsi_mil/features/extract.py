"""The feature-extraction job: an encoder over every patch of each slide's TileGrid.

One loader spans all slides, in slide order, so the loader workers are already reading
the next slide while the last batches of the current one run (no idle device between
slides). A slide's ``N x D`` array is written atomically once all its patches are done;
finished slides are skipped on a re-run (resume).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from napari_wsi_mil.device import pick_device
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.features.encoders import LoadedEncoder, download_job, load_encoder_spec
from napari_wsi_mil.features.stain import COHORT, SAMPLE_PATCHES, StainNormaliser, check_stain
from napari_wsi_mil.jobs import Job, Progress
from napari_wsi_mil.store.keys import FEATURES
from napari_wsi_mil.store.project import ProjectStore


@dataclass
class ExtractionReport:
    extracted: dict[str, int] = field(default_factory=dict)  # slide id -> patches
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)
    patches_per_second: float = 0.0


def inference_autocast(device: torch.device, autocast: str = "auto") -> torch.dtype | None:
    """The autocast dtype of inference on ``device``, or None for plain float32.

    ``autocast``: ``"auto"`` (float16 on CUDA, off elsewhere), ``"bfloat16"`` (CUDA or
    CPU), ``"float16"`` (CUDA only) or ``"off"``.
    """
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "off": None}
    if autocast == "auto":
        return torch.float16 if device.type == "cuda" else None
    if autocast not in dtypes:
        raise WsiMilError(f"autocast must be auto, bfloat16, float16 or off, not {autocast!r}")
    if autocast == "float16" and device.type != "cuda":
        raise WsiMilError(f"float16 autocast needs a CUDA device, not {device.type}")
    return dtypes[autocast]


def preprocess(
    images: torch.Tensor,
    encoder: LoadedEncoder,
    device: torch.device,
    channels_last: bool | None = None,
) -> torch.Tensor:
    """uint8 ``[B,3,H,W]`` -> normalised float on ``device`` at the encoder's input size.

    ``channels_last`` (default: on CUDA) returns the batch in that memory format.
    """
    x = images.to(device, non_blocking=True).float().div_(255.0)
    size = encoder.input_size
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    mean = torch.tensor(encoder.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if channels_last is None:
        channels_last = device.type == "cuda"
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def extract_features_job(
    project: ProjectStore,
    slide_ids: list[str],
    encoder: str | LoadedEncoder,
    name: str,
    *,
    batch_size: int = 64,
    num_workers: int = 2,
    device: str = "auto",
    dtype: str = "float16",
    overwrite: bool = False,
    skip_errors: bool = False,
    slide_paths: dict[str, str | os.PathLike] | None = None,
    lock: bool = True,
    weights: str | os.PathLike | None = None,
    autocast: str = "auto",
    compile: str | None = None,
    stain: str | StainNormaliser | None = None,
    stain_reference: str | os.PathLike = COHORT,
) -> Job[ExtractionReport]:
    """Extract features of ``slide_ids`` into ``features/<name>/<slide_id>`` of the store.

    ``encoder`` is a spec (:func:`~napari_wsi_mil.features.encoders.load_encoder_spec`,
    with ``weights`` as a local weights file for it) or a loaded encoder.
    ``autocast`` is the inference precision (:func:`inference_autocast`); model and
    batches are ``channels_last`` on CUDA and whenever autocast is on. ``compile`` is a
    ``torch.compile`` backend (``"inductor"``), None for eager.
    ``lock=False`` is for workers of a distributed run whose driver holds the lock.

    ``stain`` (``"macenko"``, ``"reinhard"`` or a fitted
    :class:`~napari_wsi_mil.features.stain.StainNormaliser`) normalises every slide's
    stain onto a target fitted on ``stain_reference`` (an image, or ``"cohort"``:
    patches of these slides) before the encoder; a feature set that already has slides
    keeps the target it recorded, so resumed and added slides match.
    """
    from napari_wsi_mil.store.patches import PatchDataset

    if dtype not in ("float16", "float32"):
        raise WsiMilError(f"dtype must be float16 or float32, not {dtype!r}")
    if isinstance(stain, str):
        check_stain(stain, stain_reference)
    report = ExtractionReport()
    todo = _slides_to_extract(project, slide_ids, name, overwrite, report)
    if not todo:
        yield Progress("extract", 0, 0, message="all slides already have features")
        return report
    if isinstance(encoder, str) and weights is None:
        yield from download_job(encoder)
    loaded = load_encoder_spec(encoder, weights) if isinstance(encoder, str) else encoder
    dev = pick_device(device)
    amp = inference_autocast(dev, autocast)
    channels_last = dev.type == "cuda" or amp is not None
    model = _inference_model(loaded, dev, channels_last, compile)
    dataset = PatchDataset(project, todo, slide_paths, skip_errors=skip_errors)
    normaliser = None
    if stain is not None:
        normaliser = yield from _stain_job(project, name, dataset, todo, stain, stain_reference)
        for slide_id, source in normaliser.sources.items():
            if source is None:
                report.warnings.setdefault(slide_id, []).append(
                    "too little tissue to fit its stain: patches not normalised"
                )
    writer = _FeatureWriter(project, name, todo, dataset, loaded, dtype, normaliser, report)
    context = project.lock() if lock else contextlib.nullcontext()
    with context:
        writer.write_empty_slides()
        yield from _extract_batches(
            _Batches(dataset, todo, batch_size, num_workers, dev, amp, channels_last),
            model,
            loaded,
            normaliser,
            writer,
        )
    dataset.close()
    return report


def _slides_to_extract(
    project: ProjectStore,
    slide_ids: list[str],
    name: str,
    overwrite: bool,
    report: ExtractionReport,
) -> list[str]:
    """The slides whose features are to be computed; those that have them (and are not
    to be overwritten) go to ``report.skipped``. Every slide must be tiled."""
    todo = []
    for slide_id in slide_ids:
        if not project.has_tiles(slide_id):
            raise WsiMilError(
                f"slide {slide_id!r} is not tiled in {project.root}; run wsi-mil tile first"
            )
        if project.has_result(FEATURES, name, slide_id) and not overwrite:
            report.skipped.append(slide_id)
        else:
            todo.append(slide_id)
    return todo


def _inference_model(
    loaded: LoadedEncoder, dev: torch.device, channels_last: bool, compile: str | None
) -> torch.nn.Module:
    """The encoder on ``dev`` in eval mode (``channels_last``, compiled with the
    ``compile`` backend when one is given)."""
    model = loaded.model.to(dev).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model, backend=compile)
    return model


@dataclass
class _Batches:
    """How the patches of ``slide_ids`` (in ``dataset``) reach the device."""

    dataset: object
    slide_ids: list[str]
    batch_size: int
    num_workers: int
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool


def _extract_batches(
    batches: _Batches,
    model: torch.nn.Module,
    loaded: LoadedEncoder,
    normaliser: StainNormaliser | None,
    writer: _FeatureWriter,
) -> Job[None]:
    """Every patch through the encoder, one loader across all slides; an ``extract``
    event per batch. The patches per second go to the writer's report."""
    from torch.utils.data import DataLoader

    from napari_wsi_mil.store.patches import collate_patches

    dataset, todo, dev, amp = batches.dataset, batches.slide_ids, batches.device, batches.amp
    loader = DataLoader(
        dataset,
        batch_size=batches.batch_size,
        collate_fn=collate_patches,
        num_workers=batches.num_workers,
        pin_memory=dev.type == "cuda",
        prefetch_factor=4 if batches.num_workers else None,
    )
    autocasting = (
        torch.autocast(dev.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    )
    report = writer.report
    done, started = 0, time.perf_counter()
    with torch.inference_mode():
        for images, slide_index, _, ok in loader:
            if normaliser is not None:
                images = _normalised(normaliser, images, slide_index, todo, dev)
            with autocasting:
                feats = model(preprocess(images, loaded, dev, batches.channels_last))
            writer.add(feats.float().cpu().numpy(), slide_index.numpy(), ok.numpy())
            done += len(images)
            report.patches_per_second = done / max(time.perf_counter() - started, 1e-9)
            yield Progress(
                "extract",
                done,
                len(dataset),
                message=f"{todo[int(slide_index[-1])]}, {report.patches_per_second:.0f} patches/s",
            )


class _FeatureWriter:
    """Collects a batch's features per slide and writes each slide once all its patches
    are in (atomically, with the encoder's and the stain's facts in its attrs)."""

    def __init__(
        self,
        project: ProjectStore,
        name: str,
        slide_ids: list[str],
        dataset,
        loaded: LoadedEncoder,
        dtype: str,
        normaliser: StainNormaliser | None,
        report: ExtractionReport,
    ):
        self.project, self.name, self.slide_ids = project, name, slide_ids
        self.grids = dataset.grids
        self.counts = np.bincount(dataset.slide_index, minlength=len(slide_ids))
        self.loaded, self.dtype, self.normaliser, self.report = loaded, dtype, normaliser, report
        self.buffers: dict[int, list[np.ndarray]] = {}
        self.damaged: set[int] = set()

    def write_empty_slides(self) -> None:
        for i, slide_id in enumerate(self.slide_ids):
            if self.counts[i] == 0:
                self._write(i, np.zeros((0, self.loaded.dim), self.dtype))
                self.report.warnings[slide_id] = ["no patches: wrote an empty feature array"]

    def add(self, features: np.ndarray, slide_index: np.ndarray, ok: np.ndarray) -> None:
        for i in np.unique(slide_index).tolist():
            rows = slide_index == i
            self.buffers.setdefault(i, []).append(features[rows])
            if not ok[rows].all():
                self.damaged.add(i)
            if sum(len(b) for b in self.buffers[i]) == self.counts[i]:
                self._finish(i, np.concatenate(self.buffers.pop(i)))

    def _finish(self, i: int, features: np.ndarray) -> None:
        slide_id = self.slide_ids[i]
        if i in self.damaged:
            self.report.failed[slide_id] = "some patches could not be read (damaged slide file)"
            return
        broken = ~np.isfinite(features.astype(self.dtype)).all(axis=1)
        if broken.any():
            raise WsiMilError(
                f"{self.loaded.name}: the encoder gives NaN or inf features for "
                f"{int(broken.sum())} of {len(features)} patches of slide {slide_id!r}; "
                "nothing was stored for it"
            )
        self._write(i, features.astype(self.dtype))

    def _write(self, i: int, features: np.ndarray) -> None:
        """Write slide ``i``'s features with the facts of its TileGrid as the dataset
        read it."""
        slide_id, grid, stain = self.slide_ids[i], self.grids[i], self.normaliser
        attrs = {
            **self.loaded.attrs(),
            "dtype": self.dtype,
            "n_patches": len(features),
            "target_mpp": grid.geometry.target_mpp,
            "patch_size": grid.geometry.patch_size,
            "stain": None if stain is None else stain.attrs(),
            "stain_source": None if stain is None else stain.sources.get(slide_id),
        }
        self.project.write_result(
            FEATURES, self.name, slide_id, {"features": features}, attrs, overwrite=True
        )
        self.report.extracted[slide_id] = len(features)


def stain_target(
    project: ProjectStore,
    name: str,
    slide_ids: list[str],
    stain: str | StainNormaliser,
    reference: str | os.PathLike = COHORT,
    slide_paths: dict | None = None,
    samples: Callable[[], list[np.ndarray]] | None = None,
) -> StainNormaliser:
    """The stain normaliser of feature set ``name``: the target it recorded when it has
    slides (its method must be ``stain``), else one fitted on ``reference`` (an image,
    or ``"cohort"``: patches sampled from ``slide_ids``, by ``samples()`` when given,
    one array per slide, so a caller that fits each slide too reads them once)."""
    from napari_wsi_mil.store.patches import PatchDataset

    if isinstance(stain, StainNormaliser):
        return stain
    recorded = next(
        (
            project.read_result_attrs(FEATURES, name, slide_id).get("stain")
            for slide_id in project.result_ids(FEATURES, name)
        ),
        None,
    )
    if recorded is not None:
        normaliser = StainNormaliser.from_attrs(recorded)
        if normaliser.method != stain:
            raise WsiMilError(
                f"feature set {name!r} was made with {normaliser.method} stain normalisation, "
                f"not {stain}; give it another name"
            )
        return normaliser

    def cohort_pixels() -> np.ndarray:
        if samples is not None:
            return np.concatenate(samples())
        dataset = PatchDataset(project, slide_ids, slide_paths)
        try:
            return np.concatenate([_sample(dataset, i) for i in range(len(slide_ids))])
        finally:
            dataset.close()

    return StainNormaliser.fit(stain, reference, cohort_pixels)


def _stain_job(
    project: ProjectStore,
    name: str,
    dataset,
    todo: list[str],
    stain: str | StainNormaliser,
    reference: str | os.PathLike,
) -> Job[StainNormaliser]:
    """:func:`stain_target` with every slide of ``todo`` fitted; each slide's patches are
    read once (kept for its own fit when the target is fitted on the cohort)."""
    yield Progress("stain", 0, len(todo), message="fitting the stain target")
    kept: dict[int, np.ndarray] = {}

    def every_sample() -> list[np.ndarray]:
        kept.update({i: _sample(dataset, i) for i in range(len(todo))})
        return list(kept.values())

    paths = dict(zip(todo, dataset.paths, strict=True))
    normaliser = stain_target(project, name, todo, stain, reference, paths, every_sample)
    for i, slide_id in enumerate(todo):
        yield Progress("stain", i, len(todo), message=f"fitting the stain of {slide_id}")
        normaliser.fit_slide(slide_id, kept.pop(i) if i in kept else _sample(dataset, i))
    return normaliser


def _sample(dataset, i: int) -> np.ndarray:
    """Up to :data:`SAMPLE_PATCHES` patches of the dataset's slide ``i``, evenly spaced,
    stacked as one uint8 ``[K * H, W, 3]`` image."""
    items = np.flatnonzero(dataset.slide_index == i)
    if len(items) == 0:
        return np.zeros((0, 1, 3), np.uint8)
    chosen = items[np.linspace(0, len(items) - 1, min(SAMPLE_PATCHES, len(items))).astype(int)]
    patches = [dataset[int(k)] for k in chosen]
    return np.concatenate([p[0].permute(1, 2, 0).numpy() for p in patches if p[3]])


def _normalised(
    normaliser: StainNormaliser,
    images: torch.Tensor,
    slide_index: torch.Tensor,
    todo: list[str],
    dev: torch.device,
) -> torch.Tensor:
    """The batch with each slide's patches stain-normalised, on ``dev``."""
    images = images.to(dev)
    out = torch.empty_like(images)
    for i in np.unique(slide_index.numpy()):
        rows = (slide_index == int(i)).to(dev)
        out[rows] = normaliser.apply(images[rows], todo[int(i)])
    return out


def read_features(project: ProjectStore, name: str, slide_id: str) -> np.ndarray:
    """A slide's stored features ``(N, D)``, in its TileGrid order."""
    return project.read_result(FEATURES, name, slide_id)[0]["features"]


def feature_dim(project: ProjectStore, name: str, slide_id: str) -> int:
    """The width ``D`` of a slide's stored features, without reading them."""
    import zarr

    group = zarr.open_group(project.result_dir(FEATURES, name, slide_id), mode="r")
    return int(group["features"].shape[1])
