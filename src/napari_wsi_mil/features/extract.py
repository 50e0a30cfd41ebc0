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
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from napari_wsi_mil.device import pick_device
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.features.encoders import LoadedEncoder, load_encoder_spec
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
) -> Job[ExtractionReport]:
    """Extract features of ``slide_ids`` into ``features/<name>/<slide_id>`` of the store.

    ``encoder`` is a spec (:func:`~napari_wsi_mil.features.encoders.load_encoder_spec`,
    with ``weights`` as a local weights file for it) or a loaded encoder.
    ``autocast`` is the inference precision (:func:`inference_autocast`); model and
    batches are ``channels_last`` on CUDA and whenever autocast is on. ``compile`` is a
    ``torch.compile`` backend (``"inductor"``), None for eager.
    ``lock=False`` is for workers of a distributed run whose driver holds the lock.
    """
    from torch.utils.data import DataLoader

    from napari_wsi_mil.store.patches import PatchDataset, collate_patches

    if dtype not in ("float16", "float32"):
        raise WsiMilError(f"dtype must be float16 or float32, not {dtype!r}")
    report = ExtractionReport()
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
    if not todo:
        yield Progress("extract", 0, 0, message="all slides already have features")
        return report
    loaded = load_encoder_spec(encoder, weights) if isinstance(encoder, str) else encoder
    dev = pick_device(device)
    amp = inference_autocast(dev, autocast)
    channels_last = dev.type == "cuda" or amp is not None
    model = loaded.model.to(dev).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model, backend=compile)
    dataset = PatchDataset(project, todo, slide_paths, skip_errors=skip_errors)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=collate_patches,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
        prefetch_factor=4 if num_workers else None,
    )
    counts = np.bincount(dataset.slide_index, minlength=len(todo))
    autocasting = (
        torch.autocast(dev.type, dtype=amp) if amp is not None else contextlib.nullcontext()
    )
    context = project.lock() if lock else contextlib.nullcontext()
    with context:
        for i, slide_id in enumerate(todo):
            if counts[i] == 0:
                empty = np.zeros((0, loaded.dim), dtype)
                _write(project, name, slide_id, dataset.grids[i], empty, loaded, dtype)
                report.extracted[slide_id] = 0
                report.warnings[slide_id] = ["no patches: wrote an empty feature array"]
        buffers: dict[int, list[np.ndarray]] = {}
        bad: set[int] = set()
        done, started = 0, time.perf_counter()
        with torch.inference_mode():
            for images, slide_index, _, ok in loader:
                with autocasting:
                    feats = model(preprocess(images, loaded, dev, channels_last))
                feats = feats.float().cpu().numpy()
                for s in np.unique(slide_index.numpy()):
                    rows = (slide_index == int(s)).numpy()
                    buffers.setdefault(int(s), []).append(feats[rows])
                    if not ok[rows].all():
                        bad.add(int(s))
                    if sum(len(b) for b in buffers[int(s)]) == counts[s]:
                        _finish(
                            project,
                            name,
                            todo,
                            dataset.grids,
                            int(s),
                            buffers.pop(int(s)),
                            bad,
                            loaded,
                            dtype,
                            report,
                        )
                done += len(images)
                report.patches_per_second = done / max(time.perf_counter() - started, 1e-9)
                yield Progress(
                    "extract",
                    done,
                    len(dataset),
                    message=f"{todo[int(slide_index[-1])]}, "
                    f"{report.patches_per_second:.0f} patches/s",
                )
    dataset.close()
    return report


def _finish(project, name, todo, grids, s, parts, bad, loaded, dtype, report) -> None:
    slide_id = todo[s]
    if s in bad:
        report.failed[slide_id] = "some patches could not be read (damaged slide file)"
        return
    features = np.concatenate(parts)
    broken = ~np.isfinite(features.astype(dtype)).all(axis=1)
    if broken.any():
        raise WsiMilError(
            f"{loaded.name}: the encoder gives NaN or inf features for {int(broken.sum())} of "
            f"{len(features)} patches of slide {slide_id!r}; nothing was stored for it"
        )
    _write(project, name, slide_id, grids[s], features.astype(dtype), loaded, dtype)
    report.extracted[slide_id] = len(features)


def _write(project, name, slide_id, grid, features, loaded: LoadedEncoder, dtype) -> None:
    """Write a slide's features; ``grid`` is its TileGrid as the dataset read it."""
    attrs = {
        **loaded.attrs(),
        "dtype": dtype,
        "n_patches": len(features),
        "target_mpp": grid.geometry.target_mpp,
        "patch_size": grid.geometry.patch_size,
    }
    project.write_result(FEATURES, name, slide_id, {"features": features}, attrs, overwrite=True)


def read_features(project: ProjectStore, name: str, slide_id: str) -> np.ndarray:
    """A slide's stored features ``(N, D)``, in its TileGrid order."""
    return project.read_result(FEATURES, name, slide_id)[0]["features"]


def feature_dim(project: ProjectStore, name: str, slide_id: str) -> int:
    """The width ``D`` of a slide's stored features, without reading them."""
    import zarr

    group = zarr.open_group(project.result_dir(FEATURES, name, slide_id), mode="r")
    return int(group["features"].shape[1])
