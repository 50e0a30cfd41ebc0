"""Encoder files: a trunk's weights plus what extraction needs to use them, in safetensors.

safetensors holds tensors and a string-to-string metadata table only, so a file
received from someone else can never run code when loaded. Keys: the ResNet-18 trunk's
state dict as is; CluSiam's cluster head (projector + assigner) under ``cluster_head.``.
Metadata: ``format`` = ``napari-wsi-mil-encoder``, ``arch``, ``method``, ``input_size``,
``mean``/``std`` (JSON lists), ``target_mpp`` and ``patch_size`` of the tiling it was
trained on, ``clusters`` (CluSiam).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.pretrain.architecture import ClusterHead, bare_trunk
from napari_wsi_mil.validate import check_float, check_int
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
    try:
        _check_contents(metadata, trunk, head)
    except WsiMilError as exc:
        raise WsiMilError(f"{path}: not a usable encoder file: {exc}") from None
    return EncoderFile(trunk, metadata, head)


def _check_contents(meta: dict, trunk: dict, head: dict) -> None:
    """Everything extraction reads from an encoder file is there, of the right shape and
    finite, so a damaged or hand-made file fails here with its name, not deep in a run."""
    arch = meta.get("arch", "resnet18")
    if arch != "resnet18":
        raise WsiMilError(f"architecture {arch!r} is not supported (resnet18 is)")
    check_int("input_size", meta.get("input_size"), minimum=8)
    for key in ("mean", "std"):
        values = meta.get(key)
        if not isinstance(values, list) or len(values) != 3:
            raise WsiMilError(f"{key} must be a list of 3 numbers, not {values!r}")
        for value in values:
            check_float(key, value, 0.0 if key == "std" else -math.inf)
    with torch.device("meta"):  # shapes only, nothing allocated
        _check_state("trunk", trunk, bare_trunk())
        if head:
            clusters = check_int("clusters", meta.get("clusters"))
            _check_state("cluster head", head, ClusterHead(clusters))


def _check_state(what: str, state: dict[str, torch.Tensor], module: nn.Module) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise WsiMilError(f"{what} weights: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, value in state.items():
        if tuple(value.shape) != expected[key]:
            shape = tuple(value.shape)
            raise WsiMilError(f"{what} weight {key!r} has shape {shape}, not {expected[key]}")
        if value.is_floating_point() and not value.isfinite().all():
            raise WsiMilError(f"{what} weight {key!r} holds NaN or inf")
