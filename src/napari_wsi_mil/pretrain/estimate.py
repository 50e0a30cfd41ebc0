"""How long a pretraining run will take here, before it starts: a few timed steps.

A step is timed as the trainer runs it (two augmented views of a batch, the method's
loss, backward, optimiser step, the frozen stages as :func:`pretrain_job` freezes them),
on random patches at the view size, with random weights (the start's weights do not
change the time, and nothing is downloaded). The first step warms up and is not counted.
Loading patches from slides is not included: with loader workers it overlaps the steps.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from napari_wsi_mil.device import pick_device
from napari_wsi_mil.pretrain.presets import CPU_QUICK


@dataclass
class Estimate:
    step_seconds: float
    steps: int

    @property
    def seconds(self) -> float:
        return self.step_seconds * self.steps


def estimate_run(config, timed_steps: int = 2) -> Estimate:
    """The estimated duration of pretraining with ``config`` (a ``PretrainConfig``)."""
    from napari_wsi_mil.pretrain.augment import RECIPES, two_views
    from napari_wsi_mil.pretrain.models import ContrastiveModel, freeze_before, keep_frozen_eval
    from napari_wsi_mil.pretrain.optim import build_optimizer
    from napari_wsi_mil.pretrain.trainer import contrastive_loss

    device = pick_device(config.device)
    torch.manual_seed(0)
    model = ContrastiveModel(config.method, "random", config.clusters).to(device)
    frozen = freeze_before(model.trunk, config.train_from)
    model.train()
    keep_frozen_eval(frozen)
    optimizer = build_optimizer(
        config.optimizer, model, config.lr, config.momentum, config.weight_decay
    )
    size = config.image_size
    images = torch.randint(0, 256, (config.batch_size, 3, size, size), dtype=torch.uint8)
    labels = (torch.arange(config.batch_size) % 2).to(device)
    times = []
    for _ in range(timed_steps + 1):
        started = time.perf_counter()
        v1, v2 = two_views(images.to(device), size, RECIPES[config.augment], generator=None)
        loss, _ = contrastive_loss(model, v1, v2, labels, config, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return Estimate(statistics.median(times[1:]), config.epochs * config.steps_per_epoch)


def describe_estimate(config) -> str:
    """``about 14 min on this machine at these settings (1.9 s per step x 400 steps);
    the cpu-quick preset: about 11 min``."""
    from napari_wsi_mil.pretrain.trainer import PretrainConfig

    mine = estimate_run(config)
    text = (
        f"about {_duration(mine.seconds)} on this machine at these settings "
        f"({mine.step_seconds:.2f} s per step x {mine.steps} steps)"
    )
    if config.preset != CPU_QUICK:
        quick = PretrainConfig.from_preset(CPU_QUICK, device=config.device)
        text += f"; the {CPU_QUICK} preset: about {_duration(estimate_run(quick).seconds)}"
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
