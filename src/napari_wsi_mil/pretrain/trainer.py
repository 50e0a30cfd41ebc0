"""The pretraining job: SimCLR, SupCon, WeakSupCon or CluSiam on a project's patches.

Trains on the cohort's ``split == train`` slides only (val/test slides never enter
pretraining). Randomness is a pure function of ``(seed, epoch, step, rank)``, and
checkpoints are written atomically after every epoch with the optimiser state, so a
killed run resumed with ``resume=True`` ends with the same weights as an
uninterrupted one. Runs single-process or under ``torchrun`` (DDP; features gathered
across ranks, see :mod:`napari_wsi_mil.pretrain.distributed`).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from napari_wsi_mil.device import pick_device
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Job, Progress, atomic_file
from napari_wsi_mil.pretrain import METHODS
from napari_wsi_mil.pretrain import distributed as ddp
from napari_wsi_mil.pretrain.augment import IMAGENET_MEAN, IMAGENET_STD, RECIPES, two_views
from napari_wsi_mil.pretrain.collapse import (  # noqa: F401 (COLLAPSED_SPREAD re-exported)
    COLLAPSED_SPREAD,
    GROUPS,
    CollapseError,
    CollapseMonitor,
    collapse_suggestions,
    collapse_summary,
    collapse_warning,
    projection_spread,
    step_spreads,
    watched_key,
)
from napari_wsi_mil.pretrain.encoder_file import EncoderFile, save_encoder
from napari_wsi_mil.pretrain.losses import clusiam_loss, nt_xent, supcon, weaksupcon
from napari_wsi_mil.pretrain.models import (
    TRUNK_STAGES,
    ContrastiveModel,
    freeze_before,
    keep_frozen_eval,
)
from napari_wsi_mil.pretrain.optim import build_optimizer, learning_rate
from napari_wsi_mil.pretrain.presets import preset_settings
from napari_wsi_mil.validate import check_device, check_float, check_fraction, check_int
from napari_wsi_mil.weights_file import load_weights_only

if TYPE_CHECKING:
    from napari_wsi_mil.store.cohort import Cohort
    from napari_wsi_mil.store.project import ProjectStore

#: Per-method defaults from the papers: learning rate per 256 patches, optimiser, schedule.
METHOD_DEFAULTS = {
    "simclr": {"lr_per_256": 0.3, "optimizer": "lars", "schedule": "cosine", "weight_decay": 1e-6},
    "supcon": {"lr_per_256": 0.1, "optimizer": "sgd", "schedule": "cosine", "weight_decay": 1e-4},
    # WeakSupCon reference: SGD lr 0.2 at batch 512, momentum 0.9, wd 1e-4, step decay
    "weaksupcon": {"lr_per_256": 0.1, "optimizer": "sgd", "schedule": "step", "weight_decay": 1e-4},
    "clusiam": {"lr_per_256": 0.05, "optimizer": "sgd", "schedule": "cosine", "weight_decay": 1e-4},
}


@dataclass
class PretrainConfig:
    """Pretraining settings. ``None`` means the method's default (:data:`METHOD_DEFAULTS`).

    ``batch_size`` is the global number of patches per optimiser micro-step (two views
    each); with ``grad_accum`` > 1 gradients of several micro-batches are summed before
    a step, and contrastive negatives come from within each micro-batch.

    Recipe knobs: ``image_size`` is the side of the augmented views (patches are read
    at their tiling size and cropped/resized to it); ``train_from`` the first trunk
    stage that is trained (earlier ones frozen, BatchNorm in eval mode; "conv1" trains
    everything); ``augment`` the recipe in :data:`~napari_wsi_mil.pretrain.augment.RECIPES`;
    ``negative_weight`` WeakSupCon's similarity-term weight. ``allow_collapse`` lets a
    collapsed run go on with a warning instead of stopping it (see
    :mod:`~napari_wsi_mil.pretrain.collapse`). ``preset`` only records which preset
    the settings came from; build a config from one with :meth:`from_preset`.
    """

    method: str = "weaksupcon"
    epochs: int = 10
    steps_per_epoch: int = 50
    batch_size: int = 64
    lr: float | None = None
    optimizer: str | None = None
    schedule: str | None = None
    warmup_epochs: float = 1.0
    step_every_epochs: int = 3
    weight_decay: float | None = None
    momentum: float = 0.9
    tau: float = 0.1
    base_tau: float = 0.07
    clusters: int = 100
    alpha: float = 0.5
    init: str = "random"
    image_size: int = 224
    train_from: str = "conv1"
    augment: str = "histology"
    negative_weight: float = 1.0
    allow_collapse: bool = False
    preset: str | None = None
    max_patches_per_slide: int | None = None
    amp: str = "auto"  # auto | bf16 | fp16 | off (CUDA; bf16 also on CPU, when asked for)
    channels_last: bool = True  # CUDA only
    compile: str | None = None  # a torch.compile backend ("inductor"); None: eager
    grad_accum: int = 1
    num_workers: int = 2
    device: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise WsiMilError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.method == "weaksupcon" and self.batch_size % 2:
            raise WsiMilError("WeakSupCon needs an even batch size (half negative, half positive)")
        check_int("batch_size", self.batch_size, minimum=2)
        for key in ("epochs", "steps_per_epoch", "step_every_epochs", "clusters", "grad_accum"):
            check_int(key, getattr(self, key))
        check_int("image_size", self.image_size, minimum=16)
        check_int("num_workers", self.num_workers, minimum=0)
        check_int("seed", self.seed, minimum=0)
        if self.max_patches_per_slide is not None:
            check_int("max_patches_per_slide", self.max_patches_per_slide)
        for key in ("tau", "base_tau") + (("lr",) if self.lr is not None else ()):
            check_float(key, getattr(self, key))
        check_float("warmup_epochs", self.warmup_epochs, open_minimum=False)
        check_fraction("momentum", self.momentum)
        check_fraction("alpha", self.alpha)
        if self.weight_decay is not None:
            check_float("weight_decay", self.weight_decay, open_minimum=False)
        check_device(self.device)
        if self.train_from not in TRUNK_STAGES:
            raise WsiMilError(
                f"unknown train_from {self.train_from!r}: use one of {', '.join(TRUNK_STAGES)}"
            )
        if self.augment not in RECIPES:
            raise WsiMilError(
                f"unknown augmentation {self.augment!r}: use one of {', '.join(RECIPES)}"
            )
        check_float("negative_weight", self.negative_weight, open_minimum=False)
        preset_settings(self.preset)  # an unknown preset name fails here
        defaults = METHOD_DEFAULTS[self.method]
        if self.lr is None:
            self.lr = defaults["lr_per_256"] * self.batch_size * self.grad_accum / 256
        self.optimizer = self.optimizer or defaults["optimizer"]
        self.schedule = self.schedule or defaults["schedule"]
        if self.weight_decay is None:
            self.weight_decay = defaults["weight_decay"]

    @classmethod
    def from_preset(cls, preset: str | None, **explicit) -> PretrainConfig:
        """The preset's settings, overridden by every ``explicit`` one."""
        return cls(**{**preset_settings(preset), **explicit, "preset": preset})


@dataclass
class PretrainResult:
    encoder_path: Path
    checkpoint_path: Path
    epoch_losses: list[float] = field(default_factory=list)
    patches_per_second: float = 0.0
    #: mean watched spread (:func:`~napari_wsi_mil.pretrain.collapse.watched_key`: the
    #: positive-bag group for WeakSupCon, the whole batch otherwise) over each epoch
    epoch_spreads: list[float] = field(default_factory=list)
    #: watched spread over the last tenth of the last epoch's steps (what the end-of-run
    #: warning uses: a run that collapses within its only epoch has a healthy epoch mean)
    final_spread: float | None = None
    warnings: list[str] = field(default_factory=list)
    #: WeakSupCon: the last tenth's spread of the ``negative`` and ``positive`` groups
    group_spreads: dict[str, float] = field(default_factory=dict)
    #: the step (from 1) at which the monitor saw the watched group collapse, else None
    collapsed_at: int | None = None


def _autocast(device: torch.device, amp: str):
    if amp == "off" or (device.type != "cuda" and amp != "bf16"):
        return contextlib.nullcontext(), None
    if device.type != "cuda":
        return torch.autocast(device.type, dtype=torch.bfloat16), None
    dtype = torch.bfloat16
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        dtype = torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def contrastive_loss(
    model: nn.Module,
    v1: torch.Tensor,
    v2: torch.Tensor,
    labels: torch.Tensor,
    config: PretrainConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One step's loss on this rank's two views, with features gathered over ranks.

    SimCLR/SupCon/WeakSupCon put both views through one forward pass (shared
    BatchNorm statistics, as the WeakSupCon reference); CluSiam one pass per view.
    """
    gather = ddp.gather_with_grad
    if config.method == "clusiam":
        o1, o2 = model(v1), model(v2)
        logits = torch.cat([gather(o1["logits"]), gather(o2["logits"])]).float()
        out = clusiam_loss(
            gather(o1["p"]).float(),
            gather(o2["p"]).float(),
            gather(o1["z"]).float(),
            gather(o2["z"]).float(),
            logits,
            alpha=config.alpha,
            generator=generator,
        )
        return out.loss, {
            "invariance": float(out.invariance.detach()),
            "cluster": float(out.cluster.detach()),
            "spread": projection_spread(gather(o1["z"])),
        }
    n = len(v1)
    z = model(torch.cat([v1, v2]))["z"].float()
    z1, z2 = gather(z[:n]), gather(z[n:])
    all_labels = ddp.gather_no_grad(labels)
    spread = step_spreads(config.method, z1, all_labels)
    if config.method == "simclr":
        return nt_xent(z1, z2, config.tau), spread
    views = torch.stack([z1, z2], dim=1)
    if config.method == "supcon":
        return supcon(views, all_labels, config.tau, config.base_tau), spread
    out = weaksupcon(views, all_labels, config.tau, config.base_tau, config.negative_weight)
    return out.loss, {
        "similarity": float(out.similarity.detach()),
        "simclr": float(out.simclr.detach()),
        **spread,
    }


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return int(np.random.default_rng([seed, epoch, step, rank]).integers(2**62))


def _training_slides(
    project: ProjectStore, cohort: Cohort
) -> tuple[list[str], dict[str, str], dict[str, int]]:
    train = [e for e in cohort if e.split == "train"]
    if not train:
        raise WsiMilError("the cohort has no split=train slides to pretrain on")
    untiled = [e.slide_id for e in train if not project.has_tiles(e.slide_id)]
    if untiled:
        raise WsiMilError(
            f"{len(untiled)} training slides are not tiled yet "
            f"({', '.join(untiled[:5])}...); run wsi-mil tile first"
        )
    paths = {e.slide_id: str(e.path) for e in train if e.path is not None}
    return [e.slide_id for e in train], paths, {e.slide_id: e.label for e in train}


def _build_loader(dataset, item_labels, config: PretrainConfig, info: ddp.DistInfo):
    from torch.utils.data import DataLoader

    from napari_wsi_mil.store.patches import (
        BagBalancedBatchSampler,
        RandomBatchSampler,
        RankSlice,
        collate_patches,
    )

    if config.method == "weaksupcon":
        try:
            sampler = BagBalancedBatchSampler(
                item_labels, config.batch_size // 2, config.steps_per_epoch, config.seed
            )
        except ValueError as exc:
            raise WsiMilError(f"WeakSupCon needs training slides of both labels: {exc}") from exc
    else:
        sampler = RandomBatchSampler(
            len(dataset), config.batch_size, config.steps_per_epoch, config.seed
        )
    sampler = RankSlice(sampler, info.rank, info.world_size)
    # Persistent workers: the loader is iterated once per epoch; without them every epoch
    # forks new workers, which reopen their slide handles with cold tile caches. Items
    # need no worker randomness (augmentation runs in the main process), so batches
    # are unchanged.
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_patches,
        num_workers=config.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=config.num_workers > 0,
    )
    return loader, sampler


def pretrain_job(
    project: ProjectStore,
    cohort: Cohort,
    config: PretrainConfig,
    out: str | os.PathLike,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
) -> Job[PretrainResult]:
    """Pretrain an encoder and write it to ``out`` (safetensors, see ``encoder_file``).

    Yields a ``loading patches`` event at once, then one ``pretraining`` event per step
    (done and total count the whole run's steps) with ``info`` = epoch, step, loss, its
    parts, learning rate and patches/s. A checkpoint ``<checkpoint_dir>/last.pt`` (default: beside
    ``out``) is written after each epoch; ``resume`` continues from it.
    """
    out = Path(out)
    checkpoint_path = Path(checkpoint_dir or out.parent / f"{out.stem}-checkpoints") / "last.pt"
    device = pick_device(config.device)
    if device.type == "cpu":  # weights decaying towards 0 otherwise slow CPU steps several-fold
        torch.set_flush_denormal(True)
    info = ddp.init_from_env(device)
    if config.batch_size % info.world_size:
        raise WsiMilError(
            f"batch size {config.batch_size} must be a multiple of the {info.world_size} processes"
        )
    slide_ids, paths, labels = _training_slides(project, cohort)
    yield Progress("loading patches", 0, None, message=f"{len(slide_ids)} training slides")
    run = _set_up(project, slide_ids, paths, labels, config, device, info)
    if resume and checkpoint_path.exists():
        _resume(run, checkpoint_path, config)
    for epoch in range(run.history.start_epoch, config.epochs):
        losses, spreads = yield from _train_one_epoch(run, config, epoch)
        _close_epoch(run, config, epoch, losses, spreads)
        if info.is_main:
            _write_checkpoint(run, config, epoch, checkpoint_path)
    run.dataset.close()
    history = run.history
    if info.is_main:
        facts = {
            "projection_spread": history.final_spread,
            **{f"spread_{group}": value for group, value in history.group_spreads.items()},
            "collapsed_at_step": run.monitor.collapsed_at,
        }
        save_encoder(out, _encoder_file(run.model, config, project, slide_ids[0], facts))
    final = history.final_spread
    warning = collapse_warning(config, final) if final is not None else None
    if warning and not run.warnings:
        run.warnings.append(warning)
    return PretrainResult(
        out,
        checkpoint_path,
        history.epoch_losses,
        run.throughput,
        history.epoch_spreads,
        history.final_spread,
        run.warnings,
        history.group_spreads,
        run.monitor.collapsed_at,
    )


@dataclass
class _History:
    """What a run has learnt so far, carried from epoch to epoch and in checkpoints."""

    start_epoch: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    epoch_spreads: list[float] = field(default_factory=list)
    final_spread: float | None = None
    group_spreads: dict[str, float] = field(default_factory=dict)


@dataclass
class _Run:
    """One pretraining run's parts, built by :func:`_set_up`."""

    device: torch.device
    info: ddp.DistInfo
    dataset: object
    loader: object
    sampler: object
    slide_labels: torch.Tensor
    model: ContrastiveModel
    net: nn.Module
    frozen: list[nn.Module]
    optimizer: torch.optim.Optimizer
    autocast: object
    scaler: object
    monitor: CollapseMonitor
    history: _History = field(default_factory=_History)
    warnings: list[str] = field(default_factory=list)
    throughput: float = 0.0


def _set_up(
    project: ProjectStore,
    slide_ids: list[str],
    paths: dict[str, str],
    labels: dict[str, int],
    config: PretrainConfig,
    device: torch.device,
    info: ddp.DistInfo,
) -> _Run:
    """The patches, their loader, the model (wrapped for DDP and compile) and optimiser."""
    from napari_wsi_mil.store.patches import PatchDataset

    dataset = PatchDataset(project, slide_ids, paths, config.max_patches_per_slide, config.seed)
    if len(dataset) == 0:
        raise WsiMilError("the training slides have no patches")
    slide_labels = torch.tensor([labels[s] for s in slide_ids])
    item_labels = slide_labels[torch.from_numpy(dataset.slide_index)].numpy()
    loader, sampler = _build_loader(dataset, item_labels, config, info)

    torch.manual_seed(config.seed)
    model = ContrastiveModel(config.method, config.init, config.clusters).to(device)
    frozen = freeze_before(model.trunk, config.train_from)
    if device.type == "cuda" and config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if info.enabled:
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        net = torch.compile(net, backend=config.compile)
    optimizer = build_optimizer(
        config.optimizer, model, config.lr, config.momentum, config.weight_decay
    )
    autocast, scaler = _autocast(device, config.amp)
    monitor = CollapseMonitor(config.method)
    return _Run(
        device,
        info,
        dataset,
        loader,
        sampler,
        slide_labels,
        model,
        net,
        frozen,
        optimizer,
        autocast,
        scaler,
        monitor,
    )


def _resume(run: _Run, checkpoint_path: Path, config: PretrainConfig) -> None:
    """Model, optimiser, history and collapse step from the last checkpoint."""
    state = _read_checkpoint(checkpoint_path, run.device)
    if state["config"] != asdict(config):
        raise WsiMilError(
            f"{checkpoint_path}: was written with other settings; "
            "start without --resume or use the same settings"
        )
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.history = _History(
            check_int("epoch", state["epoch"], minimum=0) + 1,
            [float(x) for x in state["epoch_losses"]],
            [float(x) for x in state["epoch_spreads"]],
            state["final_spread"],
            {str(k): float(v) for k, v in state["group_spreads"].items()},
        )
        run.monitor.collapsed_at = state["collapsed_at"]
    except (KeyError, TypeError, ValueError, RuntimeError, WsiMilError) as exc:
        raise WsiMilError(f"{checkpoint_path}: not a usable checkpoint ({exc})") from None


def _train_one_epoch(run: _Run, config: PretrainConfig, epoch: int):
    """One epoch's steps, a ``pretraining`` event each; returns the steps' losses and
    spreads."""
    total_steps = config.epochs * config.steps_per_epoch
    watched = watched_key(config.method)
    run.sampler.set_epoch(epoch)
    run.net.train()
    keep_frozen_eval(run.frozen)
    losses, spreads, seen, started = [], [], 0, time.perf_counter()
    run.optimizer.zero_grad(set_to_none=True)
    for step, (images, slide_index, _, _) in enumerate(run.loader):
        loss, parts, lr = _train_step(run, config, epoch, step, images, slide_index)
        losses.append(loss)
        spreads.append({k: v for k, v in parts.items() if k.startswith("spread")})
        seen += len(images) * run.info.world_size
        run.throughput = seen / max(time.perf_counter() - started, 1e-9)
        warning = _collapse_check(run, config, epoch * config.steps_per_epoch + step + 1, spreads)
        yield Progress(
            "pretraining",
            epoch * config.steps_per_epoch + step + 1,
            total_steps,
            message=f"epoch {epoch + 1}/{config.epochs}, loss {losses[-1]:.4f}, "
            f"spread {parts[watched]:.3f}, {run.throughput:.0f} patches/s",
            info={
                "epoch": epoch,
                "step": step,
                "loss": losses[-1],
                "lr": lr,
                "patches_per_second": run.throughput,
                **parts,
                **({"warning": warning} if warning else {}),
            },
        )
    return losses, spreads


def _train_step(run: _Run, config: PretrainConfig, epoch: int, step: int, images, slide_index):
    """One micro-batch: learning rate, two views, loss, backward, and the optimiser step
    every ``grad_accum`` micro-batches. Returns the loss, its parts and the rate."""
    lr = learning_rate(
        epoch * config.steps_per_epoch + step,
        config.epochs * config.steps_per_epoch,
        config.steps_per_epoch,
        config.lr,
        config.warmup_epochs,
        config.schedule,
        config.step_every_epochs,
    )
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    device = run.device
    seed = _step_seed(config.seed, epoch, step, run.info.rank)
    torch.manual_seed(seed)
    generator = torch.Generator(device).manual_seed(seed)
    images = images.to(device, non_blocking=True)
    v1, v2 = two_views(images, config.image_size, RECIPES[config.augment], generator=generator)
    if device.type == "cuda" and config.channels_last:
        v1 = v1.contiguous(memory_format=torch.channels_last)
        v2 = v2.contiguous(memory_format=torch.channels_last)
    with run.autocast:
        loss, parts = contrastive_loss(
            run.net, v1, v2, run.slide_labels[slide_index].to(device), config, generator
        )
    if not torch.isfinite(loss.detach()):
        raise WsiMilError(
            f"the loss is {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}: "
            "training diverged; lower --lr or raise --tau (nothing was written for "
            "this epoch)"
        )
    scaled = loss / config.grad_accum
    scaler = run.scaler
    (scaler.scale(scaled) if scaler else scaled).backward()
    if (step + 1) % config.grad_accum == 0 or step + 1 == config.steps_per_epoch:
        if scaler:
            scaler.step(run.optimizer)
            scaler.update()
        else:
            run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), parts, lr


def _collapse_check(run: _Run, config: PretrainConfig, done: int, spreads) -> str | None:
    """The collapse monitor after ``done`` steps: raises :class:`CollapseError` when it
    saw collapse, or returns the warning when collapse is allowed; None otherwise."""
    if not run.monitor.update(done, spreads[-1]):
        return None
    error = CollapseError(
        collapse_summary(config.method, run.monitor.collapsed_at, run.monitor.means()),
        collapse_suggestions(config),
    )
    if not config.allow_collapse:
        run.dataset.close()
        raise error
    warning = f"{error.summary} Going on (collapse allowed)."
    run.warnings.append(warning)
    return warning


def _close_epoch(run: _Run, config: PretrainConfig, epoch: int, losses, spreads) -> None:
    """The epoch's loss and spreads (averaged over ranks) into the history; stops a run
    whose weights became NaN or inf."""
    watched = watched_key(config.method)
    history = run.history
    history.epoch_losses.append(ddp.all_reduce_mean(float(np.mean(losses))))
    history.epoch_spreads.append(
        ddp.all_reduce_mean(float(np.nanmean([s[watched] for s in spreads])))
    )
    tail = spreads[-max(1, len(spreads) // 10) :]
    history.final_spread = ddp.all_reduce_mean(float(np.nanmean([s[watched] for s in tail])))
    history.group_spreads = {
        group: ddp.all_reduce_mean(float(np.nanmean([s[f"spread_{group}"] for s in tail])))
        for group in GROUPS
        if f"spread_{group}" in tail[0]
    }
    broken = [
        k
        for k, v in run.model.state_dict().items()
        if v.is_floating_point() and not v.isfinite().all()
    ]
    if broken:
        raise WsiMilError(
            f"weight {broken[0]!r} became NaN or inf in epoch {epoch + 1}: training "
            "diverged; lower --lr (nothing was written for this epoch)"
        )


def _write_checkpoint(run: _Run, config: PretrainConfig, epoch: int, path: Path) -> None:
    history = run.history
    with atomic_file(path) as tmp:
        torch.save(
            {
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "epoch": epoch,
                "epoch_losses": history.epoch_losses,
                "epoch_spreads": history.epoch_spreads,
                "final_spread": history.final_spread,
                "group_spreads": history.group_spreads,
                "collapsed_at": run.monitor.collapsed_at,
                "config": asdict(config),
            },
            tmp,
        )


def _read_checkpoint(path: Path, device: torch.device) -> dict:
    """A checkpoint written by :func:`pretrain_job`, read without unpickling code."""
    advice = "start without --resume"
    state = load_weights_only(path, device, advice)
    if not isinstance(state, dict) or "config" not in state:
        raise WsiMilError(f"{path}: not a checkpoint of wsi-mil pretrain; {advice}")
    return state


def _encoder_file(
    model: ContrastiveModel,
    config: PretrainConfig,
    project: ProjectStore,
    slide_id: str,
    spread_facts: dict[str, object],
) -> EncoderFile:
    geometry = project.read_tiles(slide_id)[1]["geometry"]
    metadata = {
        "arch": "resnet18",
        "method": config.method,
        "input_size": config.image_size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "target_mpp": geometry["target_mpp"],
        "patch_size": geometry["patch_size"],
        "epochs": config.epochs,
        "init": config.init,
        "preset": config.preset,
        "train_from": config.train_from,
        "augment": config.augment,
        "negative_weight": config.negative_weight,
        "lr": config.lr,
        **spread_facts,
    }
    head = {}
    if config.method == "clusiam":
        metadata["clusters"] = config.clusters
        head = model.cluster_head_state_dict()
    return EncoderFile(model.encoder_state_dict(), metadata, head)
