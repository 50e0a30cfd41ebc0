"""The one rule for choosing a torch device (pretraining and feature extraction)."""

from __future__ import annotations

import os

import torch

from napari_wsi_mil.validate import check_device


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present (this process's ``LOCAL_RANK`` under torchrun), else Apple MPS,
    else CPU; or exactly what ``name`` says (one that exists here)."""
    if check_device(name) != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
