"""Pretraining models (trunk, heads, ImageNet init from the local cache) and augmentations."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.pretrain.architecture import ClusterHead
from napari_wsi_mil.pretrain.augment import (
    HISTOLOGY,
    AugmentParams,
    augment_batch,
    blur_kernel_size,
    two_views,
)
from napari_wsi_mil.pretrain.encoder_file import EncoderFile, save_encoder
from napari_wsi_mil.pretrain.models import (
    ContrastiveModel,
    imagenet_weights_path,
    resnet18_trunk,
)

SIDE = 32


def _images(n: int = 4, side: int = SIDE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)


def _float_images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("method", ["simclr", "supcon", "weaksupcon"])
def test_contrastive_model_output_shapes(method):
    model = ContrastiveModel(method)
    out = model(_float_images())
    assert set(out) == {"h", "z"}
    assert out["h"].shape == (4, 512) and out["z"].shape == (4, 128)
    assert torch.allclose(out["z"].norm(dim=1), torch.ones(4), atol=1e-5)


def test_clusiam_model_output_shapes_and_cluster_head():
    model = ContrastiveModel("clusiam", k=7)
    out = model(_float_images())
    assert out["h"].shape == (4, 512)
    assert out["z"].shape == (4, 2048) and out["p"].shape == (4, 2048)
    assert out["logits"].shape == (4, 7)
    head = ClusterHead(k=7)
    head.load_state_dict(model.cluster_head_state_dict())
    model.eval()
    head.eval()
    with torch.no_grad():
        h = model.trunk(_float_images())
        assert torch.allclose(head(h), model(_float_images())["logits"], atol=1e-5)
    with pytest.raises(ValueError):
        ContrastiveModel("simclr").cluster_head_state_dict()


def test_encoder_state_dict_loads_into_fresh_trunk():
    model = ContrastiveModel("weaksupcon").eval()
    state = model.encoder_state_dict()
    assert not any(k.startswith(("head", "fc.")) for k in state)
    trunk = resnet18_trunk().eval()
    trunk.load_state_dict(state)
    with torch.no_grad():
        x = _float_images(2)
        assert torch.equal(trunk(x), model(x)["h"])


def test_unknown_method_and_init_are_rejected(tmp_path):
    with pytest.raises(ValueError):
        ContrastiveModel("moco")
    with pytest.raises(WsiMilError, match="no such weights file"):
        resnet18_trunk("timm")
    bad = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(WsiMilError, match="not a ResNet-18 trunk"):
        resnet18_trunk(str(bad))


def test_trunk_starts_from_an_encoder_file_or_a_state_dict(tmp_path):
    """Continue pretraining from an earlier encoder, or from ImageNet weights kept
    anywhere: the trunk computes what the file's trunk computes."""
    source = ContrastiveModel("simclr").eval()
    x = _float_images(2)
    with torch.no_grad():
        expected = source(x)["h"]
    pth = tmp_path / "resnet18.pth"
    torch.save({**source.encoder_state_dict(), "fc.weight": torch.zeros(1000, 512)}, pth)
    encoder = tmp_path / "simclr.safetensors"
    meta = {"arch": "resnet18", "input_size": 224, "mean": [0.5] * 3, "std": [0.25] * 3}
    save_encoder(encoder, EncoderFile(source.encoder_state_dict(), meta))
    for path in (pth, encoder):
        with torch.no_grad():
            assert torch.equal(resnet18_trunk(str(path)).eval()(x), expected)


def test_imagenet_init_without_cached_file_raises_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_weights_path() == expected
    with pytest.raises(WsiMilError, match="resnet18-f37072fd.pth") as info:
        resnet18_trunk("imagenet")
    assert str(expected.parent) in str(info.value)
    assert "wsi-mil encoders --download imagenet" in str(info.value)
    with pytest.raises(WsiMilError):
        ContrastiveModel("simclr", init="imagenet")


def test_imagenet_init_loads_cached_file_weights_only(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reference = resnet18(weights=None)  # stands in for the real ImageNet weights
    path = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir()
    torch.save(reference.state_dict(), path)

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    trunk = resnet18_trunk("imagenet")
    assert calls == [True]
    assert torch.equal(trunk.conv1.weight, reference.conv1.weight)
    assert torch.equal(trunk.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_imagenet_init_with_bad_file_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir()
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(WsiMilError, match="resnet18-f37072fd.pth"):
        resnet18_trunk("imagenet")


# --------------------------------------------------------------------------- augment

#: Only geometry that permutes pixels: no crop, jitter, grayscale, blur or normalisation.
PERMUTE_ONLY = dataclasses.replace(
    HISTOLOGY,
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    jitter_p=0.0,
    grayscale_p=0.0,
    blur_p=0.0,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
)


def test_augment_shape_dtype_and_range():
    out = augment_batch(_images(6), generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, SIDE, SIDE) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    mean = torch.tensor(HISTOLOGY.mean).view(1, 3, 1, 1)
    std = torch.tensor(HISTOLOGY.std).view(1, 3, 1, 1)
    low, high = (0 - mean) / std, (1 - mean) / std
    assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()


def test_augment_is_deterministic_with_a_seeded_generator():
    images = _images()
    a = augment_batch(images, generator=torch.Generator().manual_seed(3))
    b = augment_batch(images, generator=torch.Generator().manual_seed(3))
    c = augment_batch(images, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("out_size", [16, 48])
def test_augment_resizes_to_out_size(out_size):
    out = augment_batch(_images(), out_size, generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, out_size, out_size)


def test_augment_non_square_input_needs_out_size():
    images = torch.zeros(2, 3, 20, 30, dtype=torch.uint8)
    assert augment_batch(images, 24).shape == (2, 3, 24, 24)
    with pytest.raises(ValueError):
        augment_batch(images)


def test_rotation_and_flips_keep_the_pixel_multiset():
    images = _images(8)
    out = augment_batch(images, params=PERMUTE_ONLY, generator=torch.Generator().manual_seed(5))
    pixels = torch.round(out * 255).to(torch.uint8)
    changed = 0
    for src, dst in zip(images, pixels, strict=True):
        # Each RGB triplet moves as a whole: compare the sorted lists of pixels.
        a = src.reshape(3, -1).T.tolist()
        b = dst.reshape(3, -1).T.tolist()
        assert sorted(a) == sorted(b)
        changed += not torch.equal(src, dst)
    assert changed > 0  # some images were rotated or flipped


def test_full_image_crop_without_other_steps_is_identity():
    params = dataclasses.replace(PERMUTE_ONLY, rotate90=False, hflip_p=0.0, vflip_p=0.0)
    images = _images()
    out = augment_batch(images, params=params)
    assert torch.equal(torch.round(out * 255).to(torch.uint8), images)


def test_each_step_runs_alone():
    images = _images()
    off = dataclasses.replace(PERMUTE_ONLY, rotate90=False, hflip_p=0.0, vflip_p=0.0)
    for step in (
        {"jitter_p": 1.0},
        {"grayscale_p": 1.0},
        {"blur_p": 1.0},
        {"crop_scale": (0.2, 0.5), "crop_ratio": (0.75, 1.333)},
    ):
        out = augment_batch(images, params=dataclasses.replace(off, **step))
        assert out.shape == (4, 3, SIDE, SIDE)
        assert (out >= -1e-5).all() and (out <= 1 + 1e-5).all()
        assert not torch.equal(torch.round(out * 255).to(torch.uint8), images), step
    gray = augment_batch(images, params=dataclasses.replace(off, grayscale_p=1.0))
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])


def test_hue_shift_keeps_gray_pixels():
    gray = torch.full((2, 3, 8, 8), 128, dtype=torch.uint8)
    no_geometry = dataclasses.replace(PERMUTE_ONLY, rotate90=False, hflip_p=0.0, vflip_p=0.0)
    hue_only = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.5}
    params = dataclasses.replace(no_geometry, jitter_p=1.0, **hue_only)
    out = augment_batch(gray, params=params)
    assert torch.allclose(out, torch.full_like(out, 128 / 255), atol=1e-6)


def test_two_views_differ():
    v1, v2 = two_views(_images(), generator=torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == (4, 3, SIDE, SIDE)
    assert not torch.equal(v1, v2)


def test_blur_kernel_size_is_odd_and_about_ten_percent():
    assert blur_kernel_size(224, 0.1) == 23
    assert blur_kernel_size(32, 0.1) == 3
    assert blur_kernel_size(100, 0.1) == 11


def test_params_are_validated():
    with pytest.raises(ValueError):
        AugmentParams(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError):
        AugmentParams(blur_p=1.5)


def test_color_ops_and_blur_match_torchvision():
    import torchvision.transforms.v2.functional as TF

    from napari_wsi_mil.pretrain.augment import _gaussian_blur, _jitter_op

    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    factor = torch.tensor([0.6, 1.0, 1.4])
    shift = torch.tensor([-0.1, 0.02, 0.1])
    ops = [
        (TF.adjust_brightness, factor),
        (TF.adjust_contrast, factor),
        (TF.adjust_saturation, factor),
        (TF.adjust_hue, shift),
    ]
    for op, (reference, values) in enumerate(ops):
        expected = torch.stack([reference(x[i], values[i].item()) for i in range(3)])
        assert torch.allclose(_jitter_op(x, op, values), expected, atol=1e-5), reference
    sigma = torch.tensor([0.1, 0.7, 2.0])
    expected = torch.stack(
        [TF.gaussian_blur(x[i], [5, 5], [sigma[i].item()] * 2) for i in range(3)]
    )
    assert torch.allclose(_gaussian_blur(x, sigma, 5), expected, atol=1e-5)
