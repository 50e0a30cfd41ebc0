"""Optimisers and learning-rate schedules for pretraining."""

from __future__ import annotations

import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """LARS as used by SimCLR (You et al. 2017): SGD with momentum whose step for each
    weight matrix is scaled by the trust ratio ``eta * ||w|| / (||g|| + wd * ||w||)``.
    Biases and BatchNorm parameters (1-D) get plain SGD with momentum and no decay."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        eta: float = 1e-3,
    ):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if p.ndim > 1:
                    grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.norm(p), torch.norm(grad)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["eta"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                    grad = grad.mul(trust)
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.clone(grad).detach()
                else:
                    state["momentum"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum"], alpha=-group["lr"])


def build_optimizer(
    name: str, model: nn.Module, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: use sgd, lars or adam")


def learning_rate(
    step: int,
    total_steps: int,
    steps_per_epoch: int,
    base_lr: float,
    warmup_epochs: float,
    schedule: str,
    step_every_epochs: int,
) -> float:
    """LR at a global step: linear warm-up from ``min(0.001, base_lr / 10)`` (0.001 is the
    WeakSupCon reference's start, for its base rate of 0.2; a tenth of a lower base rate
    keeps the warm-up a warm-up), then ``cosine`` to 0, ``step`` (x0.5 every
    ``step_every_epochs``) or ``constant``. A pure function of the step, so a resumed run
    follows the same curve."""
    warm = int(round(warmup_epochs * steps_per_epoch))
    if step < warm:
        start = min(0.001, base_lr / 10)
        return start + (base_lr - start) * step / warm
    if schedule == "cosine":
        progress = (step - warm) / max(1, total_steps - warm)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return base_lr * 0.5 ** ((step // steps_per_epoch) // max(1, step_every_epochs))
    if schedule == "constant":
        return base_lr
    raise ValueError(f"unknown schedule {schedule!r}: use cosine, step or constant")
