"""Encoders by name: what each model card says, in one table.

A card records how to build the encoder without the network (torchvision ResNet-18,
or a timm architecture with the card's keyword arguments), where its weights live
(a torch hub URL or a Hugging Face repo), its output convention, transforms
(input size, mean/std), feature dimension, recommended magnification and licence.
Facts are from the model cards and the reference code that loads them
(``/work/shared/ALGORITHMS.md``, "Pretrained starts and foundation encoders").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torchvision.models import ResNet18_Weights

from napari_wsi_mil.pretrain.augment import IMAGENET_MEAN, IMAGENET_STD

#: H-optimus-0/1's own normalisation (its model card), not ImageNet's.
H_OPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
H_OPTIMUS_STD = (0.211883, 0.230117, 0.177517)

#: The torchvision ImageNet ResNet-18 (``.../resnet18-f37072fd.pth``: sha256 prefix in the name).
IMAGENET_URL = ResNet18_Weights.IMAGENET1K_V1.url
#: Ciga et al.'s SimCLR ResNet-18 ("tenpercent" release; no published hash).
CIGA_URL = (
    "https://github.com/ozanciga/self-supervised-histopathology/releases/download/"
    "tenpercent/tenpercent_resnet18.ckpt"
)


@dataclass(frozen=True)
class EncoderCard:
    """One encoder by name.

    ``arch`` ``"resnet18"`` is torchvision's ResNet-18 trunk; anything else is a timm
    architecture built with ``timm_kwargs`` (``mlp_layer``/``act_layer`` given by
    name: ``"swiglu_packed"``, ``"silu"``). ``output`` is ``"pooled"`` (the model's
    pooled ``[N, D]``) or ``"class+mean_patch"`` (Virchow2: the class token beside the
    mean of the patch tokens after ``prefix_tokens`` class and register tokens).
    """

    name: str
    arch: str
    dim: int
    description: str
    licence: str
    gated: bool = False
    url: str | None = None  # a torch hub file
    repo: str | None = None  # a Hugging Face repo
    weight_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    timm_kwargs: dict = field(default_factory=dict)
    output: str = "pooled"
    prefix_tokens: int = 1
    input_size: int | None = 224  # None: patches go in at their stored size
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mpp: float | None = 0.5  # recommended um/px (0.5 = 20x)

    def transforms(self) -> dict:
        return {
            "input_size": self.input_size,
            "resize": "bilinear, antialiased",
            "mean": list(self.mean),
            "std": list(self.std),
        }


_VIT = dict(init_values=1e-5, dynamic_img_size=True)  # num_classes=0 is always set

CARDS: dict[str, EncoderCard] = {
    card.name: card
    for card in (
        EncoderCard(
            "random",
            "resnet18",
            512,
            "ResNet-18, random weights (seed 0): a baseline",
            "none",
            input_size=None,
            mpp=None,
        ),
        EncoderCard(
            "imagenet",
            "resnet18",
            512,
            "torchvision ResNet-18, ImageNet IMAGENET1K_V1",
            "BSD-3-Clause (torchvision)",
            url=IMAGENET_URL,
            input_size=None,
            mpp=None,
        ),
        EncoderCard(
            "ciga",
            "resnet18",
            512,
            "Ciga et al. 2022, SimCLR ResNet-18 on 57 histology datasets",
            "see github.com/ozanciga/self-supervised-histopathology",
            url=CIGA_URL,
            input_size=None,
            mpp=None,
        ),
        EncoderCard(
            "uni",
            "vit_large_patch16_224",
            1024,
            "UNI (Mahmood lab), ViT-L/16",
            "CC-BY-NC-ND-4.0, gated",
            gated=True,
            repo="MahmoodLab/UNI",
            timm_kwargs=dict(_VIT, img_size=224, patch_size=16),
        ),
        EncoderCard(
            "uni2-h",
            "vit_giant_patch14_224",
            1536,
            "UNI2-h (Mahmood lab), ViT-H/14",
            "CC-BY-NC-ND-4.0, gated",
            gated=True,
            repo="MahmoodLab/UNI2-h",
            timm_kwargs=dict(
                _VIT,
                img_size=224,
                patch_size=14,
                depth=24,
                num_heads=24,
                embed_dim=1536,
                mlp_ratio=2.66667 * 2,
                no_embed_class=True,
                mlp_layer="swiglu_packed",
                act_layer="silu",
                reg_tokens=8,
            ),
        ),
        EncoderCard(
            "virchow2",
            "vit_huge_patch14_224",
            2560,
            "Virchow2 (Paige), ViT-H/14; class token + mean patch token",
            "CC-BY-NC-ND-4.0, gated",
            gated=True,
            repo="paige-ai/Virchow2",
            timm_kwargs=dict(
                _VIT,
                img_size=224,
                reg_tokens=4,
                mlp_ratio=5.3375,
                global_pool="",
                mlp_layer="swiglu_packed",
                act_layer="silu",
            ),
            output="class+mean_patch",
            prefix_tokens=5,
        ),
        EncoderCard(
            "h-optimus-0",
            "vit_giant_patch14_reg4_dinov2",
            1536,
            "H-optimus-0 (Bioptimus), ViT-g/14",
            "Apache-2.0, gated (terms accepted on the hub)",
            gated=True,
            repo="bioptimus/H-optimus-0",
            timm_kwargs=dict(_VIT, img_size=224, global_pool="token"),
            mean=H_OPTIMUS_MEAN,
            std=H_OPTIMUS_STD,
        ),
        EncoderCard(
            "h-optimus-1",
            "vit_giant_patch14_reg4_dinov2",
            1536,
            "H-optimus-1 (Bioptimus), ViT-g/14",
            "non-commercial licence, gated",
            gated=True,
            repo="bioptimus/H-optimus-1",
            timm_kwargs=dict(_VIT, img_size=224, global_pool="token"),
            mean=H_OPTIMUS_MEAN,
            std=H_OPTIMUS_STD,
        ),
        EncoderCard(
            "prov-gigapath",
            "vit_giant_patch14_dinov2",
            1536,
            "Prov-GigaPath tile encoder (Microsoft/Providence), ViT-g/16",
            "Apache-2.0 for research, gated",
            gated=True,
            repo="prov-gigapath/prov-gigapath",
            timm_kwargs=dict(
                _VIT,
                img_size=224,
                in_chans=3,
                patch_size=16,
                embed_dim=1536,
                depth=40,
                num_heads=24,
                mlp_ratio=5.33334,
            ),
        ),
    )
}

#: Names whose encoder is a torchvision ResNet-18: the starts a pretraining trunk takes.
RESNET18_CARDS = tuple(name for name, card in CARDS.items() if card.arch == "resnet18")
