"""Encoders for feature extraction, from a spec string: ``random``, ``imagenet`` or a file.

Files are loaded without unpickling arbitrary objects: our safetensors encoder files or
ResNet-18 state dicts read with ``torch.load(weights_only=True)``. Pickled modules,
``torch.export`` programs (``.pt2``) and TorchScript archives can run code when loaded
and are refused with an explanation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.pretrain.augment import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class LoadedEncoder:
    """An encoder ready for inference and the facts recorded with its features."""

    model: nn.Module
    name: str
    sha256: str
    dim: int
    input_size: int | None  # None: patches go in at their stored size
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    cluster_head: nn.Module | None = None
    metadata: dict = field(default_factory=dict)

    def attrs(self) -> dict:
        return {
            "encoder": self.name,
            "encoder_sha256": self.sha256,
            "dim": self.dim,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_encoder_spec(spec: str) -> LoadedEncoder:
    """``random`` (seeded ResNet-18), ``imagenet`` (torchvision weights from the local
    cache), or the path of an encoder file."""
    from napari_wsi_mil.pretrain.models import imagenet_weights_path, resnet18_trunk

    if spec == "random":
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = resnet18_trunk("random").eval()
        return LoadedEncoder(model, "random", "random-resnet18-seed0", 512, None)
    if spec == "imagenet":
        model = resnet18_trunk("imagenet").eval()
        return LoadedEncoder(model, "imagenet", file_sha256(imagenet_weights_path()), 512, None)
    path = Path(spec)
    if not path.is_file():
        raise WsiMilError(f"{spec}: no such encoder file (or use 'random' or 'imagenet')")
    if path.suffix == ".safetensors":
        return _from_encoder_file(path)
    return _from_torch_file(path)


def _from_encoder_file(path: Path) -> LoadedEncoder:
    from napari_wsi_mil.pretrain.encoder_file import load_encoder, load_trunk
    from napari_wsi_mil.pretrain.models import ClusterHead

    encoder = load_encoder(path)
    meta = encoder.metadata
    head = None
    if encoder.cluster_head_state:
        head = ClusterHead(int(meta["clusters"]))
        head.load_state_dict(encoder.cluster_head_state)
        head.eval()
    return LoadedEncoder(
        load_trunk(encoder),
        path.name,
        file_sha256(path),
        512,
        int(meta["input_size"]),
        tuple(meta["mean"]),
        tuple(meta["std"]),
        head,
        meta,
    )


def _from_torch_file(path: Path) -> LoadedEncoder:
    from napari_wsi_mil.pretrain.models import resnet18_trunk

    model = resnet18_trunk(str(path))  # a ResNet-18 state dict, read safely
    return LoadedEncoder(model.eval(), path.name, file_sha256(path), 512, None)
