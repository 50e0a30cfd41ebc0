"""Encoder files: a trunk's weights plus what extraction needs to use them, in safetensors.

safetensors holds tensors and a string-to-string metadata table only, so a file
received from someone else can never run code when loaded. Keys: the ResNet-18 trunk's
state dict as is; CluSiam's cluster head (projector + assigner) under ``cluster_head.``.
Metadata: ``format`` = ``napari-wsi-mil-encoder``, ``arch``, ``method``, ``input_size``,
``mean``/``std`` (JSON lists), ``target_mpp`` and ``patch_size`` of the tiling it was
trained on, ``clusters`` (CluSiam).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.weights_file import load_tensors, save_tensors

ENCODER_FORMAT = "napari-wsi-mil-encoder"
CLUSTER_PREFIX = "cluster_head."


@dataclass
class EncoderFile:
    """The contents of an encoder file."""

    trunk_state: dict[str, torch.Tensor]
    metadata: dict[str, object]
    cluster_head_state: dict[str, torch.Tensor] = field(default_factory=dict)


def save_encoder(path: str | os.PathLike, encoder: EncoderFile) -> None:
    """Write an encoder file atomically."""
    tensors = dict(encoder.trunk_state)
    tensors.update({CLUSTER_PREFIX + k: v for k, v in encoder.cluster_head_state.items()})
    save_tensors(path, tensors, encoder.metadata, ENCODER_FORMAT)


def load_encoder(path: str | os.PathLike) -> EncoderFile:
    """Read an encoder file written by :func:`save_encoder` (no code is executed)."""
    tensors, metadata = load_tensors(path, ENCODER_FORMAT)
    trunk = {k: v for k, v in tensors.items() if not k.startswith(CLUSTER_PREFIX)}
    head = {k[len(CLUSTER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(CLUSTER_PREFIX)}
    return EncoderFile(trunk, metadata, head)


def load_trunk(encoder: EncoderFile) -> nn.Module:
    """A ResNet-18 trunk with the file's weights, in eval mode."""
    from napari_wsi_mil.pretrain.models import resnet18_trunk

    arch = encoder.metadata.get("arch", "resnet18")
    if arch != "resnet18":
        raise WsiMilError(f"encoder architecture {arch!r} is not supported (resnet18 is)")
    trunk = resnet18_trunk(init="random")
    trunk.load_state_dict(encoder.trunk_state)
    return trunk.eval()
