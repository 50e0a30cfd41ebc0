"""Encoders for feature extraction, from one spec string.

A spec is a name or a file:

- ``random``, ``imagenet``, ``ciga`` (ResNet-18 trunks) and the foundation-model
  aliases of :mod:`napari_wsi_mil.features.encoder_cards` (``uni``, ``virchow2``, ...);
- ``hf-hub:ORG/NAME`` (a timm model on the Hugging Face hub) or any timm model name;
- the path of an encoder file of this package (``.safetensors``) or a ResNet-18 state
  dict (``.pth``).

Named weights come from the standard caches (:mod:`napari_wsi_mil.weight_caches`),
or from ``weights=FILE``. Nothing is unpickled: safetensors, or
``torch.load(weights_only=True)``; ``torch.export`` programs and TorchScript archives
are refused because loading them unpickles.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.features import timm_encoders as te
from napari_wsi_mil.features.encoder_cards import CARDS
from napari_wsi_mil.jobs import Job, Progress
from napari_wsi_mil.pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
from napari_wsi_mil.weight_caches import (
    file_sha256,
    hf_hub_cache,
    hf_token,
    offline,
    torch_hub_checkpoints,
    torch_hub_steps,
)

__all__ = [
    "LoadedEncoder",
    "default_feature_name",
    "file_sha256",
    "load_encoder_spec",
    "names_a_model",
]


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
            "resize": "bilinear, antialiased",
        }


def names_a_model(spec: str) -> bool:
    """True when ``spec`` names an encoder (rather than being a file path)."""
    from napari_wsi_mil.features.timm_encoders import HUB_PREFIXES, is_timm_name

    return (
        spec in CARDS
        or spec.startswith(HUB_PREFIXES)
        or (not Path(spec).is_file() and is_timm_name(spec))
    )


def default_feature_name(spec: str) -> str:
    """The feature-set name an encoder spec suggests: the name (``hf-hub:org/name`` ->
    ``name``) or the file's stem."""
    if names_a_model(spec):
        return spec.rsplit("/", 1)[-1].split(":")[-1]
    return Path(spec).stem


def load_encoder_spec(spec: str, weights: str | Path | None = None) -> LoadedEncoder:
    """The encoder ``spec`` names (see the module doc), with ``weights`` (a local
    safetensors or state-dict file) instead of the cached weights when given."""

    spec = str(spec).strip()
    if weights is not None and not Path(weights).is_file():
        raise WsiMilError(f"{weights}: no such weights file")
    card = CARDS.get(spec)
    if card is not None and card.arch == "resnet18":
        return _resnet18(spec, weights)
    if card is not None:
        return _timm(te.card_source(card), weights, card.output, card.prefix_tokens)
    if spec.startswith(te.HUB_PREFIXES):
        return _timm(te.hub_source(spec), weights)
    path = Path(spec)
    if path.is_file():
        if weights is not None:
            raise WsiMilError(f"{spec}: --weights is for named encoders, not encoder files")
        return _from_encoder_file(path) if path.suffix == ".safetensors" else _resnet18(spec)
    if te.is_timm_name(spec):
        return _timm(te.name_source(spec), weights)
    if path.suffix or len(path.parts) > 1:
        raise WsiMilError(f"{spec}: no such encoder file")
    raise WsiMilError(f"{spec}: unknown encoder{_suggestion(spec)}")


def download_encoder(spec: str) -> Path | None:
    """Fill the cache with the weights ``spec`` names (``wsi-mil encoders --download``);
    the cached file, or None for ``random``."""
    from napari_wsi_mil.pretrain.models import trunk_weights_path

    card = CARDS.get(spec)
    if card is not None and card.arch == "resnet18":
        return trunk_weights_path(spec)
    if card is not None:
        return te.card_source(card).weights()
    if spec.startswith(te.HUB_PREFIXES):
        return te.hub_source(spec).weights()
    if te.is_timm_name(spec):
        return te.name_source(spec).weights()
    raise WsiMilError(f"{spec}: unknown encoder{_suggestion(spec)}")


def download_job(spec: str) -> Job[None]:
    """Fill the cache for an encoder alias as a job stage (the widgets show it): the
    bytes of a torch hub download, or one message while the Hugging Face hub fetches.
    Nothing for other specs, cached aliases or ``random`` (loading fetches those)."""

    card = CARDS.get(spec)
    if card is None or card.name == "random" or cached_weights(spec) is not None:
        return
    if card.url:
        for done, total in torch_hub_steps(card.url, spec):
            mb = f"{done / 1e6:.0f}" + (f" of {total / 1e6:.0f}" if total else "")
            yield Progress("download", done, total, message=f"{spec} weights, {mb} MB")
    else:
        if not offline() and not (card.gated and not hf_token()):  # else: the one error
            yield Progress("download", 0, None, message=f"downloading {spec} from {card.repo}")
        download_encoder(spec)


def cached_weights(name: str) -> Path | None:
    """Where the cache holds the weights of the alias ``name``; None if not cached."""
    from huggingface_hub import try_to_load_from_cache

    card = CARDS[name]
    if card.url:
        path = torch_hub_checkpoints() / Path(card.url).name
        return path if path.is_file() else None
    for filename in card.weight_files if card.repo else ():
        found = try_to_load_from_cache(card.repo, filename, cache_dir=hf_hub_cache())
        if isinstance(found, str):
            return Path(found)
    return None


def _suggestion(spec: str) -> str:
    import timm

    close = difflib.get_close_matches(spec.lower(), [*CARDS, *timm.list_models()], n=3)
    guess = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"{guess} (`wsi-mil encoders` lists the names)"


def _resnet18(spec: str, weights: str | Path | None = None) -> LoadedEncoder:
    from napari_wsi_mil.pretrain.models import resnet18_trunk, trunk_weights_path

    path = trunk_weights_path(spec, weights)
    if path is None:  # random
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = resnet18_trunk("random").eval()
        return LoadedEncoder(model, "random", "random-resnet18-seed0", 512, None)
    model = resnet18_trunk(str(path)).eval()
    name = spec if spec in CARDS else path.name
    return LoadedEncoder(model, name, file_sha256(path), 512, None)


def _timm(source, weights, output: str = "pooled", prefix_tokens: int = 1) -> LoadedEncoder:

    path = Path(weights) if weights is not None else source.weights()
    model = te.build_with_weights(source, path)
    dim = int(model.num_features)
    if output == "class+mean_patch":
        model, dim = te.ClassAndMeanPatchTokens(model, prefix_tokens), 2 * dim
    return LoadedEncoder(
        model.eval(),
        source.spec,
        file_sha256(path),
        dim,
        source.input_size,
        tuple(source.mean),
        tuple(source.std),
        metadata={"arch": source.arch},
    )


def _from_encoder_file(path: Path) -> LoadedEncoder:
    from napari_wsi_mil.pretrain.architecture import ClusterHead
    from napari_wsi_mil.pretrain.encoder_file import load_encoder
    from napari_wsi_mil.pretrain.models import load_trunk

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
