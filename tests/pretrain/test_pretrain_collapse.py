"""The collapse monitor (per bag group, early stop, advice) and the recipe knobs, on a
small mosaic of real H&E tiles (skipped when ../shared/data/tiles-labelled is absent)."""

import math
import os
import re
from pathlib import Path

import pytest
import torch

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import run_job
from napari_wsi_mil.pretrain.collapse import (
    COLLAPSED_SPREAD,
    WINDOW,
    CollapseError,
    CollapseMonitor,
)
from napari_wsi_mil.pretrain.encoder_file import load_encoder
from napari_wsi_mil.pretrain.models import resnet18_trunk
from napari_wsi_mil.pretrain.presets import CPU_QUICK, PRESETS
from napari_wsi_mil.pretrain.trainer import PretrainConfig, pretrain_job

TILES = (
    Path(os.environ.get("WSI_MIL_SHARED", Path(__file__).resolve().parents[3] / "shared" / "data"))
    / "tiles-labelled"
)
if not TILES.is_dir():
    TILES = Path("/work/shared/data/tiles-labelled")


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """4 training slides (2 with a lesion) of 4 x 4 real tiles, 32 px patches at 1 um/px."""
    if not TILES.is_dir():
        pytest.skip(f"{TILES} is absent")
    from napari_wsi_mil.slide.mosaic import make_mosaic_cohort
    from napari_wsi_mil.slide.tiling import TilingParams
    from napari_wsi_mil.store.cohort import read_cohort
    from napari_wsi_mil.store.project import ProjectStore
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    root = tmp_path_factory.mktemp("mosaic")
    made = make_mosaic_cohort(
        TILES,
        root / "cohort",
        n_slides=4,
        rows=4,
        cols=4,
        lesion_fractions=(0.3,),
        tile_size=128,
        test_fraction=0.0,
    )
    cohort = read_cohort(made.csv_path)
    store = ProjectStore(root / "project", create=True)
    params = TilingParams(target_mpp=1.0, patch_size=32)
    run_job(tile_slides_job(store, [(e.slide_id, e.path) for e in cohort], params))
    return store, cohort


def _quick(**kw):
    small = dict(
        epochs=1,
        steps_per_epoch=WINDOW + 2,
        batch_size=8,
        image_size=32,
        num_workers=0,
        warmup_epochs=0.0,
    )
    return PretrainConfig.from_preset(CPU_QUICK, **{**small, **kw})


def test_weaksupcon_records_both_groups_and_trains_only_the_last_stage(mosaic, tmp_path):
    store, cohort = mosaic
    events = []
    out = tmp_path / "enc.safetensors"
    config = _quick(allow_collapse=True)
    result = run_job(pretrain_job(store, cohort, config, out), events.append)
    events = [e for e in events if e.stage == "pretraining"]  # the steps
    for event in events:
        for group in ("negative", "positive"):
            assert 0 <= event.info[f"spread_{group}"] <= 1.5
    assert set(result.group_spreads) == {"negative", "positive"}
    meta = load_encoder(out).metadata
    assert meta["spread_negative"] == pytest.approx(result.group_spreads["negative"])
    assert meta["spread_positive"] == pytest.approx(result.group_spreads["positive"])
    assert meta["projection_spread"] == pytest.approx(result.final_spread)
    assert meta["collapsed_at_step"] == result.collapsed_at
    assert meta["preset"] == CPU_QUICK and meta["train_from"] == PRESETS[CPU_QUICK]["train_from"]
    assert meta["augment"] == config.augment and meta["negative_weight"] == config.negative_weight
    # frozen stages (weights and BatchNorm statistics) are exactly the start's
    torch.manual_seed(config.seed)
    start = resnet18_trunk("random").state_dict()
    trained = load_encoder(out).trunk_state
    for key, value in start.items():
        if key.startswith("layer4"):
            continue
        torch.testing.assert_close(trained[key], value, rtol=0, atol=0, msg=key)
    assert not torch.equal(trained["layer4.0.conv1.weight"], start["layer4.0.conv1.weight"])
    assert not torch.equal(trained["layer4.0.bn1.running_mean"], start["layer4.0.bn1.running_mean"])


def test_a_collapsing_run_stops_within_the_first_epoch_with_advice(mosaic, tmp_path):
    store, cohort = mosaic
    out = tmp_path / "enc.safetensors"
    config = PretrainConfig(
        method="weaksupcon",
        epochs=3,
        steps_per_epoch=20,
        batch_size=8,
        image_size=32,
        num_workers=0,
        warmup_epochs=0.0,
        lr=5.0,
    )
    with pytest.raises(CollapseError) as caught:
        run_job(pretrain_job(store, cohort, config, out))
    error = caught.value
    # judged after WINDOW steps; the first step or two are still spread out
    step = int(re.search(r"by step (\d+)", str(error)).group(1))
    assert WINDOW <= step <= WINDOW + 3 and "positive-bag group" in str(error)
    assert error.suggestions["preset"] == CPU_QUICK and error.suggestions["lr"] < 5.0
    assert error.suggestions["negative_weight"] == PRESETS[CPU_QUICK]["negative_weight"]
    assert not out.exists()
    named = error.describe({"lr": "--lr", "allow_collapse": "--allow-collapse"})
    assert "--lr 1.25" in named and "--allow-collapse" in named


def test_an_allowed_collapse_warns_early_and_is_recorded(mosaic, tmp_path):
    store, cohort = mosaic
    events = []
    out = tmp_path / "enc.safetensors"
    config = _quick(lr=5.0, negative_weight=1.0, allow_collapse=True, steps_per_epoch=WINDOW + 5)
    result = run_job(pretrain_job(store, cohort, config, out), events.append)
    events = [e for e in events if e.stage == "pretraining"]  # the steps
    warned = [e for e in events if "warning" in e.info]
    assert len(warned) == 1 and warned[0].info["epoch"] == 0  # in the first epoch
    assert WINDOW <= result.collapsed_at <= WINDOW + 3
    assert warned[0].info["step"] + 1 == result.collapsed_at
    assert result.warnings == [warned[0].info["warning"]]
    assert load_encoder(out).metadata["collapsed_at_step"] == result.collapsed_at
    assert result.final_spread < COLLAPSED_SPREAD


def test_cli_stops_a_collapse_naming_its_options(mosaic, tmp_path, capsys):
    from napari_wsi_mil.cli import main

    store, cohort = mosaic
    args = [
        "pretrain",
        "--project",
        str(store.root),
        "--cohort",
        str(cohort.source),
        "--epochs",
        "1",
        "--steps-per-epoch",
        "12",
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--workers",
        "0",
        "--warmup-epochs",
        "0",
        "--lr",
        "5",
        "--out",
        str(tmp_path / "enc.safetensors"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "collapsed" in err and "--preset cpu-quick" in err and "--allow-collapse" in err
    assert "--negative-weight 0.25" in err
    assert main([*args, "--allow-collapse"]) == 0
    out = capsys.readouterr().out
    assert "by bag group: negative" in out and "warning:" in out


def test_monitor_waits_for_a_window_and_skips_empty_groups():
    monitor = CollapseMonitor("weaksupcon", window=3)
    low = {"spread": 0.3, "spread_negative": 0.01, "spread_positive": 0.01}
    assert not monitor.update(1, low) and not monitor.update(2, low)
    assert monitor.update(3, low) and monitor.collapsed_at == 3
    assert not monitor.update(4, low)  # reported once
    healthy = CollapseMonitor("weaksupcon", window=2)
    healthy.update(1, {"spread": 0.3, "spread_negative": 0.01, "spread_positive": math.nan})
    assert not healthy.update(2, {"spread": 0.3, "spread_negative": 0.01, "spread_positive": 0.6})
    # SimCLR watches the whole batch
    simclr = CollapseMonitor("simclr", window=1)
    assert simclr.update(1, {"spread": 0.01})


def test_presets_fill_settings_and_explicit_ones_win():
    config = PretrainConfig.from_preset(CPU_QUICK, epochs=1)
    assert config.epochs == 1 and config.preset == CPU_QUICK
    for key, value in PRESETS[CPU_QUICK].items():
        if key != "epochs":
            assert getattr(config, key) == value
    assert PretrainConfig.from_preset(None).train_from == "conv1"
    with pytest.raises(WsiMilError, match="unknown preset"):
        PretrainConfig.from_preset("gpu-slow")
    with pytest.raises(WsiMilError, match="train_from"):
        PretrainConfig(train_from="layer9")
    with pytest.raises(WsiMilError, match="augmentation"):
        PretrainConfig(augment="sepia")


def test_negative_weight_scales_only_the_similarity_term():
    from napari_wsi_mil.pretrain.losses import weaksupcon

    z = torch.randn(8, 2, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    full, part = weaksupcon(z, labels), weaksupcon(z, labels, negative_weight=0.25)
    torch.testing.assert_close(part.similarity, full.similarity)
    torch.testing.assert_close(part.loss, 0.25 * full.similarity + full.simclr)


def test_he_recipe_varies_stains_without_grayscale():
    from napari_wsi_mil.pretrain.augment import HE, _hed_jitter, augment_batch

    assert HE.grayscale_p == 0 and HE.hed_sigma > 0
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    # the HED round trip is exact when nothing is jittered
    torch.testing.assert_close(_hed_jitter(x, 1e-9, None), x, atol=1e-4, rtol=0)
    jittered = _hed_jitter(x, 0.2, torch.Generator().manual_seed(0))
    assert 0.005 < (jittered - x).abs().mean() < 0.2
    out = augment_batch((x * 255).to(torch.uint8), 16, HE, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 16, 16) and torch.isfinite(out).all()
