"""The hooks by which a MIL model brings its own training rule to the one generic
trainer: the epoch rule, parameter groups, the generator keyword, the threshold rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mil_fixtures import small_hparams
from napari_wsi_mil.mil import MODELS
from napari_wsi_mil.mil.bags import Bag
from napari_wsi_mil.mil.base import TrainingEpoch
from napari_wsi_mil.mil.registry import build_model

D = 6


def tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, D, **small_hparams(name))


def bag(label: int, n: int, seed: int) -> Bag:
    features = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return Bag(
        f"b{seed}", label, "train", [f"s{seed}"], features,
        np.zeros(n, np.int32), np.arange(n), np.full(n, -1, np.int8),
    )  # fmt: skip


def test_default_epoch_steps_once_per_bag_in_the_drawn_order():
    model = tiny("abmil").eval()  # no dropout: each step's loss can be recomputed
    bags = [bag(0, 5, 0), bag(1, 7, 1)]
    order, stepped = np.array([1, 0, 1]), []

    def step(loss):
        stepped.append(float(loss.detach()))

    epoch = TrainingEpoch(
        index=0, bags=bags, hp={}, rng=np.random.default_rng(0),
        generator=torch.Generator(), supervised=np.zeros(2, bool),
        order=lambda: order, step=step,
    )  # fmt: skip
    parts = model.train_epoch(epoch)
    expected = [
        float(model.loss(torch.from_numpy(bags[i].features), bags[i].label)[0].detach())
        for i in order
    ]
    assert stepped == pytest.approx(expected)
    assert parts["loss"] == pytest.approx(np.mean(expected))
    assert parts["bag"] == pytest.approx(np.mean(expected))


@pytest.mark.parametrize("name", MODELS)
def test_parameter_groups_partition_the_parameters(name):
    model = tiny(name)
    groups = [[id(p) for p in group] for group in model.param_groups()]
    flat = [i for group in groups for i in group]
    assert len(flat) == len(set(flat))  # no parameter in two optimisers
    assert set(flat) == {id(p) for p in model.parameters()}
    assert len(groups) == (2 if name == "dtfd" else 1)  # DTFD-MIL: one optimiser per tier


@pytest.mark.parametrize("name", MODELS)
def test_every_model_takes_a_generator_and_is_reproducible_with_it(name):
    model = tiny(name).eval()
    x = torch.randn(9, D)
    with torch.no_grad():
        a = model(x, generator=torch.Generator().manual_seed(3))
        b = model(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.probability, b.probability)
    assert torch.equal(a.instance_probability, b.instance_probability)
    loss, _ = model.train().loss(x, 1, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", MODELS)
def test_threshold_rule_follows_bag_is_max_instance(name):
    model = tiny(name)
    assert model.fits_threshold == model.bag_is_max_instance == (name == "weno")
    assert model.mask_threshold(0.8) == (0.8 if name == "weno" else 0.5)
