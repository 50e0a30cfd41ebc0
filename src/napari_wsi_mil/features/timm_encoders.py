"""timm encoders: foundation-model cards, ``hf-hub:ORG/NAME`` repos and timm model names.

The architecture is always built locally with ``pretrained=False`` (from the card's
keyword arguments, the repo's ``config.json`` or timm's registry); its weights come
from one file, found in the Hugging Face or torch hub cache (downloaded into it when
online) or given with ``weights``, and read without unpickling code (safetensors, or
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.features.encoder_cards import EncoderCard
from napari_wsi_mil.pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
from napari_wsi_mil.weight_caches import hf_file, torch_hub_file
from napari_wsi_mil.weights_file import brief, read_state_dict

HUB_PREFIXES = ("hf-hub:", "hf_hub:")


class ClassAndMeanPatchTokens(nn.Module):
    """Virchow2's embedding: ``[class token, mean of the patch tokens]``.

    ``vit`` returns all tokens ``[N, T, D]`` (``global_pool=""``); the first
    ``prefix_tokens`` are the class and register tokens. Output ``[N, 2D]``.
    """

    def __init__(self, vit: nn.Module, prefix_tokens: int):
        super().__init__()
        self.vit = vit
        self.prefix_tokens = prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit(x)
        return torch.cat([tokens[:, 0], tokens[:, self.prefix_tokens :].mean(1)], dim=-1)


@dataclass
class TimmSource:
    """How to build one timm encoder and where its weights are."""

    spec: str
    arch: str
    kwargs: dict
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    repo: str | None = None  # weights in this Hugging Face repo ...
    weight_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    url: str | None = None  # ... or at this torch hub URL
    gated: bool = False

    def weights(self) -> Path:
        """The weights file in its cache, downloaded when online."""
        if self.repo:
            return hf_file(self.repo, self.weight_files, self.spec, gated=self.gated)
        if self.url:
            return torch_hub_file(self.url, self.spec)
        raise WsiMilError(
            f"{self.spec}: timm has no pretrained weights for it; give a weights file "
            "(--weights FILE)"
        )


def is_timm_name(name: str) -> bool:
    import timm

    return timm.is_model(name)


def card_source(card: EncoderCard) -> TimmSource:
    return TimmSource(
        card.name,
        card.arch,
        _resolve_layers(card.timm_kwargs),
        card.input_size,
        card.mean,
        card.std,
        repo=card.repo,
        gated=card.gated,
    )


def hub_source(spec: str) -> TimmSource:
    """``hf-hub:ORG/NAME``: the repo's timm ``config.json`` names the architecture,
    its arguments and transforms."""
    repo = spec.split(":", 1)[1]
    config_path = hf_file(repo, ("config.json",), spec)
    try:
        config = json.loads(Path(config_path).read_text())
        arch = config["architecture"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WsiMilError(f"{repo}: config.json is not a timm model config ({exc})") from exc
    if not is_timm_name(arch):
        raise WsiMilError(f"{repo}: architecture {arch!r} is not a timm model")
    kwargs = {k: v for k, v in (config.get("model_args") or {}).items() if k != "num_classes"}
    cfg = config.get("pretrained_cfg") or {}
    return _with_transforms(spec, arch, kwargs, cfg, repo=repo)


def name_source(name: str) -> TimmSource:
    """A timm model name (``vit_base_patch16_224.augreg_in21k``): timm's registry says
    where its pretrained weights are."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    files = tuple(f for f in (cfg.get("hf_hub_filename"),) if f) or (
        "model.safetensors",
        "pytorch_model.bin",
    )
    return _with_transforms(
        name,
        name,
        {},
        cfg,
        repo=cfg.get("hf_hub_id"),
        url=cfg.get("url") or None,
        weight_files=files,
    )


def _with_transforms(spec, arch, kwargs, cfg, **where) -> TimmSource:
    size = cfg.get("input_size") or (3, 224, 224)
    mean = tuple(cfg.get("mean") or IMAGENET_MEAN)
    std = tuple(cfg.get("std") or IMAGENET_STD)
    return TimmSource(spec, arch, kwargs, int(size[-1]), mean, std, **where)


def build(source: TimmSource, device: str | torch.device = "cpu") -> nn.Module:
    """The architecture with random weights (``device="meta"``: shapes only)."""
    import timm

    try:
        with torch.device(device):
            # features, not logits: whatever a repo's config says about the classifier
            return timm.create_model(source.arch, pretrained=False, **source.kwargs, num_classes=0)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise WsiMilError(f"{source.spec}: timm cannot build {source.arch} ({brief(exc)})") from exc


def build_with_weights(source: TimmSource, path: Path) -> nn.Module:
    """The architecture holding the tensors of ``path``, loaded strictly (a classifier
    head in the file is dropped). Built on the meta device and handed the file's tensors,
    so a billion-parameter model is not first initialised at random; built on the CPU
    when the architecture has tensors the file does not hold (non-persistent buffers)."""
    state = read_state_dict(path)
    model = build(source, "meta")
    head = str(getattr(model, "pretrained_cfg", {}).get("classifier") or "head")
    own = model.state_dict()
    state = {
        k: v.to(own[k].dtype) if k in own else v
        for k, v in state.items()
        if k in own or not k.startswith(head + ".")
    }
    try:
        model.load_state_dict(state, strict=True, assign=True)
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            model = build(source)
            model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
        detail = lines[1][:200] if len(lines) > 1 else brief(exc)
        raise WsiMilError(f"{path}: not weights of {source.spec} ({detail})") from exc
    return model


def _resolve_layers(kwargs: dict) -> dict:
    """Card kwargs name their layer classes; timm wants the classes."""
    from timm.layers import SwiGLUPacked

    layers = {"swiglu_packed": SwiGLUPacked, "silu": nn.SiLU}
    return {
        k: layers.get(v, v) if isinstance(v, str) and k.endswith("_layer") else v
        for k, v in kwargs.items()
    }
