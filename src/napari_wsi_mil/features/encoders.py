"""Encoders for feature extraction, from a spec string: ``random``, ``imagenet`` or a file.

Files are loaded without unpickling arbitrary objects: our safetensors encoder files,
``torch.export`` programs (``.pt2``, traced at 224 px), TorchScript archives
(``torch.jit.load``), or ResNet-18 state dicts read with
``torch.load(weights_only=True)``. A pickled ``nn.Module`` cannot be loaded safely and
is refused with an explanation.
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


def _output_dim(model: nn.Module, size: int) -> int:
    with torch.inference_mode():
        out = model(torch.zeros(1, 3, size, size))
    if out.ndim != 2:
        raise WsiMilError(f"the encoder returns shape {tuple(out.shape)}; expected (N, D)")
    return int(out.shape[1])


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
    if path.suffix == ".pt2":  # torch.export program
        model = torch.export.load(str(path)).module()
        return LoadedEncoder(model, path.name, file_sha256(path), _output_dim(model, 224), None)
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
    import zipfile

    from napari_wsi_mil.pretrain.models import resnet18_trunk

    digest = file_sha256(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            is_script = any(
                name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist()
            )
        if is_script:
            model = torch.jit.load(str(path), map_location="cpu").eval()
            return LoadedEncoder(model, path.name, digest, _output_dim(model, 224), None)
    model = resnet18_trunk(str(path))  # a ResNet-18 state dict, read safely
    return LoadedEncoder(model.eval(), path.name, digest, 512, None)
