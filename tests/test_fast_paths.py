"""The CUDA fast paths (autocast, channels_last, torch.compile), exercised on the CPU.

CPU autocast supports bfloat16, and channels_last and ``torch.compile`` (here with
the "eager" backend: Dynamo's graph capture without Inductor's minutes of C++
compilation) run on any device, so the code paths the GPU uses are tested here.
"""

import numpy as np
import pytest
import torch

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.features.encoders import load_encoder_spec
from napari_wsi_mil.features.extract import (
    extract_features_job,
    inference_autocast,
    preprocess,
    read_features,
)
from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.pretrain.models import ContrastiveModel
from napari_wsi_mil.pretrain.trainer import PretrainConfig, _autocast, pretrain_job
from pretrain_fixtures import tiny_cohort

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    return tiny_cohort(tmp_path_factory.mktemp("fast"), n_slides=2, test_fraction=0.0)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_extraction_in_bf16_channels_last_and_compiled_matches_float32(tiled):
    store, _ = tiled
    slide = store.slide_ids()[:1]
    encoder = load_encoder_spec("random")
    encoder.input_size = None  # the 32 px patches as they are: a quick test
    runs = {
        "fp32": {"autocast": "off"},
        "bf16": {"autocast": "bfloat16"},
        "compiled": {"autocast": "off", "compile": "eager"},
    }
    for name, options in runs.items():
        run_job(extract_features_job(store, slide, encoder, name, num_workers=0, **options))
    fp32 = read_features(store, "fp32", slide[0])
    # float16 storage rounds both the same way; the graph capture changes nothing
    np.testing.assert_allclose(read_features(store, "compiled", slide[0]), fp32, rtol=1e-3)
    bf16 = read_features(store, "bf16", slide[0])
    assert not np.array_equal(bf16, fp32)  # bfloat16 arithmetic really ran
    assert _cosines(bf16, fp32).min() > 0.99


def test_inference_autocast_and_channels_last_layout():
    assert inference_autocast(CPU) is None
    assert inference_autocast(torch.device("cuda", 0)) is torch.float16
    assert inference_autocast(CPU, "bfloat16") is torch.bfloat16
    assert inference_autocast(torch.device("cuda", 0), "bfloat16") is torch.bfloat16
    assert inference_autocast(CPU, "off") is None
    with pytest.raises(WsiMilError, match="needs a CUDA device"):
        inference_autocast(CPU, "float16")
    with pytest.raises(WsiMilError, match="autocast must be"):
        inference_autocast(CPU, "fp8")
    encoder = load_encoder_spec("random")
    images = torch.zeros(2, 3, 224, 224, dtype=torch.uint8)
    assert preprocess(images, encoder, CPU).is_contiguous()
    fast = preprocess(images, encoder, CPU, channels_last=True)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert not fast.is_contiguous()


def test_pretraining_autocast_is_bf16_on_cpu_only_when_asked_for():
    off, scaler = _autocast(CPU, "auto")
    assert scaler is None and not isinstance(off, torch.autocast)
    bf16, scaler = _autocast(CPU, "bf16")
    assert scaler is None
    model = ContrastiveModel("simclr", "random").eval()
    with torch.no_grad(), bf16:
        z = model(torch.rand(2, 3, 16, 16))["z"]
    assert z.dtype == torch.bfloat16 and torch.isfinite(z.float()).all()


def test_compiled_pretraining_trains_and_writes_an_encoder(tiled, tmp_path):
    store, cohort = tiled
    config = PretrainConfig(
        method="simclr",
        epochs=1,
        steps_per_epoch=2,
        batch_size=4,
        image_size=16,
        num_workers=0,
        device="cpu",
        compile="eager",
    )
    result = run_job(pretrain_job(store, cohort, config, tmp_path / "enc.safetensors"))
    assert result.encoder_path.exists()
    assert np.isfinite(result.epoch_losses).all()
    # the compiled module shares its weights: the written encoder is the trained one
    encoder = load_encoder_spec(str(result.encoder_path))
    assert encoder.input_size == 16
