"""CluSiam cluster ids of patches: the encoder file's cluster head over stored features.

Inference follows CluSiam: cluster id = argmax of the assigner logits, no Gumbel noise.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Job
from napari_wsi_mil.store.project import ProjectStore


def assign_clusters(features: np.ndarray, head: torch.nn.Module, batch: int = 4096) -> np.ndarray:
    """``(N,)`` int cluster ids of trunk features ``(N, 512)``."""
    head = head.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(features), batch):
            chunk = torch.as_tensor(features[start : start + batch], dtype=torch.float32)
            out.append(head(chunk).argmax(dim=1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def slide_clusters_job(
    project: ProjectStore, slide_id: str, encoder_path: str | os.PathLike, **extract_options
) -> Job[np.ndarray]:
    """Extract the slide's features with a CluSiam encoder (if not stored yet) and return
    the cluster id of every patch, in TileGrid order."""
    from pathlib import Path

    from napari_wsi_mil.features.encoders import load_encoder_spec
    from napari_wsi_mil.features.extract import extract_features_job, read_features

    encoder = load_encoder_spec(str(encoder_path))
    if encoder.cluster_head is None:
        raise WsiMilError(f"{encoder_path}: has no cluster head (pretrain with CluSiam)")
    name = Path(encoder_path).stem
    yield from extract_features_job(project, [slide_id], encoder, name, **extract_options)
    return assign_clusters(read_features(project, name, slide_id), encoder.cluster_head)
