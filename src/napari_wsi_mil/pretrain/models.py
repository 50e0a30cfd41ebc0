"""Encoder trunks from weights files, stage freezing and the pretraining model.

All methods share a torchvision ResNet-18 trunk with ``fc`` removed (512-d output
``h``); downstream MIL uses ``h``, never a projection. The networks' shapes (bare
trunk, heads) are in :mod:`~napari_wsi_mil.pretrain.architecture`.

Shapes: ``N`` images, ``K`` clusters.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.pretrain import METHODS, TRUNK_STAGES
from napari_wsi_mil.pretrain.architecture import (
    ClusterHead,
    ProjectionHead,
    SimSiamPredictor,
    bare_trunk,
)
from napari_wsi_mil.pretrain.encoder_file import ENCODER_FORMAT, EncoderFile, load_encoder
from napari_wsi_mil.weight_caches import torch_hub_checkpoints, torch_hub_file
from napari_wsi_mil.weights_file import brief, file_format, read_state_dict


def imagenet_weights_path() -> Path:
    """Where torch hub caches torchvision's ImageNet ResNet-18 weights.

    Returns
    -------
    pathlib.Path
        ``torch.hub.get_dir()/checkpoints/resnet18-f37072fd.pth`` (the basename of
        ``ResNet18_Weights.IMAGENET1K_V1.url``).
    """

    return torch_hub_checkpoints() / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)


def resnet18_trunk(init: str = "random", weights: str | os.PathLike | None = None) -> nn.Module:
    """Torchvision ResNet-18 with ``fc`` replaced by identity: ``[N,3,H,W] -> [N,512]``.

    Parameters
    ----------
    init : {"random", "imagenet", "ciga"} or path
        ``"imagenet"`` (torchvision's ``IMAGENET1K_V1``) and ``"ciga"`` (Ciga et al.'s
        histology SimCLR checkpoint) come from torch hub's cache, downloaded into it
        when online (:mod:`napari_wsi_mil.weight_caches`; ``HF_HUB_OFFLINE=1``: cache
        only). Any other value is a file to start from: an encoder file of this
        package (``.safetensors``, e.g. to continue pretraining with another method)
        or a ResNet-18 state dict or Lightning checkpoint (``.pth``/``.pt``/``.ckpt``),
        read with ``weights_only=True``.
    weights : path, optional
        A local weights file for ``init`` instead of the cache (same formats).

    Returns
    -------
    torch.nn.Module
        The trunk.

    Raises
    ------
    WsiMilError
        The weights file is missing, cannot be read safely or is not a ResNet-18
        trunk; for a named start that is not cached, the message names the cache.
    """
    trunk = bare_trunk()
    path = trunk_weights_path(init, weights)
    if path is None:
        return trunk

    try:
        trunk.load_state_dict(_trunk_state(path), strict=True)
    except WsiMilError:
        raise
    except Exception as exc:  # any failure means a bad file
        raise WsiMilError(f"{path}: not a ResNet-18 trunk ({brief(exc)})") from exc
    return trunk


def trunk_weights_path(init: str, weights: str | os.PathLike | None = None) -> Path | None:
    """The file a trunk ``init`` (see :func:`resnet18_trunk`) loads; None for random."""
    from napari_wsi_mil.features.encoder_cards import CARDS, RESNET18_CARDS

    if weights is not None:
        if not Path(weights).is_file():
            raise WsiMilError(f"{weights}: no such weights file")
        return Path(weights)
    if init == "random":
        return None
    if init in RESNET18_CARDS:
        return torch_hub_file(CARDS[init].url, init)
    if not Path(init).is_file():
        raise WsiMilError(
            f"{init}: no such weights file; a ResNet-18 trunk starts from "
            f"{', '.join(RESNET18_CARDS)} or the path of an encoder file "
            "(.safetensors) or a ResNet-18 state dict (.pth)"
        )
    return Path(init)


#: Key prefixes of wrapped ResNet-18 state dicts: DDP, our ContrastiveModel, and the
#: Lightning module of Ciga et al.'s checkpoint (``model.resnet.conv1.weight``).
_WRAPPER_PREFIXES = ("module.", "trunk.", "model.", "resnet.")


def _trunk_state(path: Path) -> dict[str, torch.Tensor]:
    """The trunk weights in an encoder file of this package or a ResNet-18 state dict
    (:func:`~napari_wsi_mil.weights_file.read_state_dict`: e.g. Ciga et al.'s Lightning
    checkpoint); wrapper prefixes and ``fc`` dropped."""

    if path.suffix == ".safetensors" and file_format(path) == ENCODER_FORMAT:
        return load_encoder(path).trunk_state

    state = read_state_dict(path)
    renamed = {}
    for key, value in state.items():
        name = key
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        if not name.startswith("fc."):
            renamed[name] = value
    return renamed


def load_trunk(encoder: EncoderFile) -> nn.Module:
    """A ResNet-18 trunk with the file's weights (checked by
    :func:`~napari_wsi_mil.pretrain.encoder_file.load_encoder`), in eval mode."""
    trunk = bare_trunk()
    trunk.load_state_dict(encoder.trunk_state)
    return trunk.eval()


#: The trunk's stages in forward order; ``PretrainConfig.train_from`` names the first
#: trained one ("conv1": the whole trunk).
_STAGE_MODULES = {
    "conv1": ("conv1", "bn1"),
    "layer1": ("layer1",),
    "layer2": ("layer2",),
    "layer3": ("layer3",),
    "layer4": ("layer4",),
}


def freeze_before(trunk: nn.Module, stage: str) -> list[nn.Module]:
    """Freeze the trunk's stages before ``stage`` (no gradients) and return their modules.

    The caller puts the returned modules in eval mode after every ``train()`` call
    (:func:`keep_frozen_eval`), so their BatchNorm layers use and keep their running
    statistics: frozen means the features of those stages do not change at all.
    """
    if stage not in TRUNK_STAGES:
        raise WsiMilError(f"unknown trunk stage {stage!r}: use one of {', '.join(TRUNK_STAGES)}")
    frozen = [
        getattr(trunk, name)
        for earlier in TRUNK_STAGES[: TRUNK_STAGES.index(stage)]
        for name in _STAGE_MODULES[earlier]
    ]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def keep_frozen_eval(frozen: list[nn.Module]) -> None:
    """Eval mode for frozen stages (call after ``model.train()``)."""
    for module in frozen:
        module.eval()


class ContrastiveModel(nn.Module):
    """ResNet-18 trunk plus the heads one pretraining method needs.

    ``forward(images [N,3,H,W] float)`` returns a dict:

    - every method: ``h`` ``[N,512]`` trunk features;
    - simclr / supcon / weaksupcon: ``z`` ``[N,128]`` L2-normalised projection;
    - clusiam: ``z`` ``[N,2048]`` projector output (not normalised, as in SimSiam),
      ``p`` ``[N,2048]`` predictor output and ``logits`` ``[N,K]`` assigner logits
      (computed from the non-detached ``z``).

    Batching follows the references: WeakSupCon passes all views of the negative
    and positive groups in one call (shared BatchNorm statistics); CluSiam calls
    the model once per view.

    Parameters
    ----------
    method : {"simclr", "supcon", "weaksupcon", "clusiam"}
        Pretraining method.
    init : {"random", "imagenet", "ciga"} or path
        Trunk initialisation (see :func:`resnet18_trunk`).
    k : int
        Number of clusters (upper bound) for clusiam.
    """

    def __init__(self, method: str, init: str = "random", k: int = 100):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}; got {method!r}")
        self.method = method
        self.trunk = resnet18_trunk(init)
        if method == "clusiam":
            self.cluster_head = ClusterHead(k)
            self.predictor = SimSiamPredictor()
        else:
            self.head = ProjectionHead()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Trunk features and head outputs of ``images [N,3,H,W]`` (see the class doc)."""
        h = self.trunk(images)
        if self.method != "clusiam":
            return {"h": h, "z": F.normalize(self.head(h), dim=1)}
        z = self.cluster_head.projector(h)
        return {
            "h": h,
            "z": z,
            "p": self.predictor(z),
            "logits": self.cluster_head.assigner(z),
        }

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The trunk's state dict: what downstream feature extraction loads into
        ``resnet18_trunk()``."""
        return self.trunk.state_dict()

    def cluster_head_state_dict(self) -> dict[str, torch.Tensor]:
        """CluSiam projector + assigner state dict, for :class:`ClusterHead`.

        Raises
        ------
        ValueError
            The method is not clusiam.
        """
        if self.method != "clusiam":
            raise ValueError(f"{self.method} has no cluster head")
        return self.cluster_head.state_dict()
