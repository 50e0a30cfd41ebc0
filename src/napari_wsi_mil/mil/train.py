"""The MIL training job: fixed seeds, optional k-fold cross-validation over the training
cases, per-epoch metrics, and a run folder with the config, metrics and model.

Run folder::

    RUN_DIR/config.json      what was asked for, with the defaults filled in
    RUN_DIR/history.csv      epoch, loss parts, validation metrics
    RUN_DIR/metrics.json     cross-validation summary (mean, std), val and test metrics
    RUN_DIR/model.safetensors  the final model (trained on all training cases)

Class imbalance is handled by sampling each epoch's bags with weights inverse to their
class frequency (``balance``), which works for every model.

The model file and ``metrics.json`` record the bag decision ``threshold`` and the
``mask_threshold`` from which a tile is tumour. Both are 0.5, except for models that fit
their threshold (WENO: its bag probability is its largest instance probability, so its
masks are cut at the same fitted threshold). Such a threshold is fitted on predictions
the model did not train on (:func:`threshold_job`): the validation bags, else
out-of-fold predictions on the training bags, and kept within [0.05, 0.95].

Every split's metrics carry class counts and 95% bootstrap intervals; a split with fewer
than 10 slides of a class is warned about, and a model whose training bag AUC is below
0.5 is flagged ``failed`` (in ``metrics.json`` and the model file), not silently saved.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from napari_wsi_mil.errors import ParamError, WsiMilError
from napari_wsi_mil.jobs import Job, Progress, atomic_file
from napari_wsi_mil.mil import DEFAULT_THRESHOLD, MODELS
from napari_wsi_mil.mil.bags import Bag, check_trainable, load_bags
from napari_wsi_mil.mil.base import MilModel, TrainingEpoch
from napari_wsi_mil.mil.metrics import (
    bag_metrics,
    instance_metrics,
    localisation_metrics,
    multiclass_bag_metrics,
    small_split_warning,
    summarise,
)
from napari_wsi_mil.mil.predict import BagPrediction, predict_bags, save_model
from napari_wsi_mil.mil.registry import build_model, model_class, training_defaults
from napari_wsi_mil.store.keys import FEATURES
from napari_wsi_mil.validate import check_float, check_fraction, check_int

if TYPE_CHECKING:
    from napari_wsi_mil.store.cohort import Cohort
    from napari_wsi_mil.store.project import ProjectStore


@dataclass
class MilConfig:
    """MIL training settings; ``None`` means the model's default (``mil.registry``)."""

    model: str = "abmil"
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    seed: int = 0
    folds: int = 1
    balance: bool = True
    tile_label_fraction: float = 1.0  # positive training cases whose tile labels MS-CLAM sees
    hparams: dict = field(default_factory=dict)  # architecture overrides
    threads: int | None = None

    def __post_init__(self):
        if self.model not in MODELS:
            raise ParamError(f"unknown MIL model {self.model!r}; choose one of {MODELS}")
        for key in ("epochs", "threads"):
            if getattr(self, key) is not None:
                check_int(key, getattr(self, key))
        if self.lr is not None:
            check_float("lr", self.lr)
        if self.weight_decay is not None:
            check_float("weight_decay", self.weight_decay, open_minimum=False)
        check_int("seed", self.seed, minimum=0)
        check_int("folds", self.folds)
        check_fraction("tile_label_fraction", self.tile_label_fraction)
        if not isinstance(self.hparams, dict):
            raise ParamError(f"hparams must be a dict, not {self.hparams!r}")
        try:
            with torch.device("meta"):  # a trial build: shapes only, nothing allocated
                build_model(self.model, 8, **self.hparams)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ParamError(f"hparams {self.hparams}: {exc}") from None


@dataclass
class MilRunResult:
    out_dir: Path
    model_path: Path
    metrics: dict
    history: list[dict]


def _epoch_order(bags: list[Bag], balance: bool, rng: np.random.Generator) -> np.ndarray:
    if not balance:
        return rng.permutation(len(bags))
    labels = np.array([b.label for b in bags])
    counts = np.bincount(labels, minlength=2)
    p = 1.0 / counts[labels]
    return rng.choice(len(bags), size=len(bags), replace=True, p=p / p.sum())


def optimizers_for(model: MilModel, hp: dict) -> list[torch.optim.Optimizer]:
    """One optimiser per parameter group of the model (:meth:`MilModel.param_groups`)."""
    lr, wd = hp["lr"], hp["weight_decay"]
    if hp["optimizer"] == "sgd":
        momentum = hp.get("momentum", 0.9)
        return [
            torch.optim.SGD(group, lr=lr, momentum=momentum, weight_decay=wd)
            for group in model.param_groups()
        ]
    betas = tuple(hp.get("betas", (0.9, 0.999)))
    # fused: one kernel per step instead of a Python loop over the parameters (an AB-MIL
    # epoch of 200 bags of 10 instances took 0.6x the time on the CPU, benchmarks README)
    return [
        torch.optim.Adam(group, lr=lr, betas=betas, weight_decay=wd, fused=True)
        for group in model.param_groups()
    ]


def schedules_for(optimizers: list[torch.optim.Optimizer], hp: dict) -> list:
    """Per-epoch learning-rate schedules: DTFD's milestones, DSMIL's cosine annealing."""
    if "lr_milestones" in hp:
        return [
            torch.optim.lr_scheduler.MultiStepLR(o, list(hp["lr_milestones"]), hp["lr_gamma"])
            for o in optimizers
        ]
    if hp.get("schedule") == "cosine":
        return [
            torch.optim.lr_scheduler.CosineAnnealingLR(o, hp["epochs"], hp.get("min_lr", 0.0))
            for o in optimizers
        ]
    return []


def _step(
    optimizers: list[torch.optim.Optimizer],
    clip: float | None,
    model: MilModel,
    loss: torch.Tensor,
) -> None:
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    for opt in optimizers:
        opt.step()


def evaluate_bags(
    model: MilModel,
    bags: list[Bag],
    threshold: float = DEFAULT_THRESHOLD,
    mask_threshold: float | None = None,
    classes: tuple[str, ...] | None = None,
) -> dict:
    """Bag, instance and localisation metrics of ``model`` on ``bags``.

    Bags are called positive at ``threshold`` (with more than two classes: called the
    most probable class, metrics per class named by ``classes``, default their
    indices); tiles are tumour (Dice, specificity) at ``mask_threshold``, by default
    the model's (:meth:`MilModel.mask_threshold`: ``threshold`` for WENO, else 0.5).
    """
    if mask_threshold is None:
        mask_threshold = model.mask_threshold(threshold)
    if not bags:
        return {}
    classes = classes or tuple(str(c) for c in range(model.n_classes))
    preds = predict_bags(model, bags)
    return prediction_metrics(bags, preds, threshold, mask_threshold, classes)


def prediction_metrics(
    bags: list[Bag],
    preds: list[BagPrediction],
    threshold: float,
    mask_threshold: float,
    classes: tuple[str, ...] | None = None,
) -> dict:
    """:func:`evaluate_bags` on predictions already made."""
    labels = [b.label for b in bags]
    if classes is not None and len(classes) > 2:
        metrics = multiclass_bag_metrics(labels, [p.class_probability for p in preds], classes)
    else:
        metrics = bag_metrics(labels, [p.probability for p in preds], threshold)
    tiles = np.concatenate([b.tile_labels for b in bags])
    scores = np.concatenate([p.instance_probability for p in preds])
    metrics.update(instance_metrics(tiles, scores))
    metrics.update(
        localisation_metrics(
            [
                (b.label, b.tile_labels, p.instance_probability)
                for b, p in zip(bags, preds, strict=True)
            ],
            mask_threshold,
        )
    )
    return metrics


#: A fitted bag threshold stays at least this far from 0 and 1.
THRESHOLD_MARGIN = 0.05
#: Folds of the out-of-fold predictions a threshold is fitted on (no validation bags).
#: k folds cost k - 1 extra trainings' worth of epochs: 2 keeps WENO's training (and
#: ``wsi-mil demo``) within one extra training.
THRESHOLD_FOLDS = 2


def fit_threshold(labels, probabilities) -> float:
    """The P(positive) cut that maximises balanced accuracy (Youden's J) on these bags.

    Cuts lie halfway between neighbouring distinct scores (or beyond the extremes); of
    equally good cuts the one nearest 0.5 wins; the result is kept within
    [:data:`THRESHOLD_MARGIN`, 1 - :data:`THRESHOLD_MARGIN`], so it never calls every
    bag, or none, one class. 0.5 when the bags hold one class only."""
    y = np.asarray(labels, int)
    p = np.asarray(probabilities, float)
    if len(np.unique(y)) < 2:
        return DEFAULT_THRESHOLD
    scores = np.unique(p)
    cuts = np.concatenate([[scores[0] / 2], (scores[:-1] + scores[1:]) / 2, [(scores[-1] + 1) / 2]])
    called = p[None, :] >= cuts[:, None]
    j = called[:, y == 1].mean(1) - called[:, y == 0].mean(1)
    best = cuts[np.isclose(j, j.max())]
    cut = best[np.argmin(np.abs(best - DEFAULT_THRESHOLD))]
    return float(np.clip(cut, THRESHOLD_MARGIN, 1 - THRESHOLD_MARGIN))


def fit_job(
    config: MilConfig, train: list[Bag], val: list[Bag], stage: str
) -> Job[tuple[MilModel, list[dict]]]:
    """Train one model; yields one progress event per epoch; returns (model, history).

    The model's own rule trains it (:meth:`MilModel.train_epoch`, with one optimiser
    per :meth:`MilModel.param_groups` group)."""
    hp = training_defaults(config.model)
    for key in ("epochs", "lr", "weight_decay"):
        if getattr(config, key) is not None:
            hp[key] = getattr(config, key)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_model(config.model, train[0].features.shape[1], **config.hparams)
    optimizers = optimizers_for(model, hp)
    schedulers = schedules_for(optimizers, hp)
    supervised = _supervised_mask(train, config.tile_label_fraction, rng)
    history = []
    for epoch in range(hp["epochs"]):
        started = time.perf_counter()
        model.train()
        parts = model.train_epoch(
            TrainingEpoch(
                index=epoch,
                bags=train,
                hp=hp,
                rng=rng,
                generator=generator,
                supervised=supervised,
                order=partial(_epoch_order, train, config.balance, rng),
                step=partial(_step, optimizers, hp.get("grad_clip"), model),
            )
        )
        for scheduler in schedulers:
            scheduler.step()
        row = {"epoch": epoch + 1, **parts, "seconds": time.perf_counter() - started}
        if val:
            row.update(
                {
                    f"val_{k}": v
                    for k, v in evaluate_bags(model, val).items()
                    if k in ("auc", "balanced_accuracy", "instance_auc")
                }
            )
        history.append(row)
        message = f"loss {parts['loss']:.4f}" + (
            f", val AUC {row['val_auc']:.3f}" if row.get("val_auc") is not None else ""
        )
        yield Progress(stage, epoch + 1, hp["epochs"], message=message, info=row)
    return model, history


def out_of_fold_job(
    config: MilConfig, bags: list[Bag], k: int, stage: str
) -> Job[list[BagPrediction]]:
    """Predictions for every bag by a model trained on the other folds (stratified)."""
    preds: list[BagPrediction | None] = [None] * len(bags)
    for fold, (fit_idx, held_idx) in enumerate(_folds(bags, k, config.seed)):
        model, _ = yield from fit_job(
            config, [bags[i] for i in fit_idx], [], f"{stage} {fold + 1}/{k}"
        )
        for i, pred in zip(held_idx, predict_bags(model, [bags[i] for i in held_idx]), strict=True):
            preds[i] = pred
    return preds


def threshold_job(
    config: MilConfig,
    model: MilModel,
    train: list[Bag],
    val: list[Bag],
    out_of_fold: list[BagPrediction] | None = None,
) -> Job[tuple[float, str]]:
    """``(bag decision threshold, what it was fitted on)``: 0.5 unless the model fits its
    threshold (:attr:`MilModel.fits_threshold`); then :func:`fit_threshold` on the
    validation bags when they hold both classes, else on ``out_of_fold`` predictions of
    the training bags (made here with :data:`THRESHOLD_FOLDS` folds when not given),
    else, with a single case of a class, on the model's own training predictions."""
    if not model.fits_threshold:
        return DEFAULT_THRESHOLD, "fixed"
    if len({b.label for b in val}) == 2:
        return fit_threshold(
            [b.label for b in val], [p.probability for p in predict_bags(model, val)]
        ), "validation bags"
    k = min(THRESHOLD_FOLDS, *np.bincount([b.label for b in train], minlength=2))
    if out_of_fold is None and k >= 2:
        out_of_fold = yield from out_of_fold_job(config, train, k, "threshold fold")
    if out_of_fold is not None:
        return fit_threshold(
            [b.label for b in train], [p.probability for p in out_of_fold]
        ), "out-of-fold training predictions"
    return fit_threshold(
        [b.label for b in train], [p.probability for p in predict_bags(model, train)]
    ), "training predictions (too few cases for folds)"


def _supervised_mask(bags: list[Bag], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Which training bags lend their tile labels to mixed supervision."""
    candidates = np.flatnonzero([b.label == 1 and b.has_tile_labels for b in bags])
    keep = rng.permutation(candidates)[: int(round(fraction * len(candidates)))]
    mask = np.zeros(len(bags), bool)
    mask[keep] = True
    return mask


def _folds(bags: list[Bag], k: int, seed: int) -> list[tuple[list[int], list[int]]]:
    from sklearn.model_selection import StratifiedKFold

    labels = [b.label for b in bags]
    if min(np.bincount(labels)) < k:
        raise WsiMilError(f"{k} folds need at least {k} training cases of each label")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(list(a), list(b)) for a, b in splitter.split(np.zeros(len(labels)), labels)]


def train_mil_job(
    project: ProjectStore,
    cohort: Cohort,
    feature_name: str,
    out_dir: str | os.PathLike,
    config: MilConfig,
    annotations: str | os.PathLike | None = None,
) -> Job[MilRunResult]:
    """Train ``config.model`` on the cohort's ``split=train`` cases (see the module doc)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    out_dir = Path(out_dir)
    bags = [b for b in load_bags(project, cohort, feature_name, annotations=annotations) if len(b)]
    train = [b for b in bags if b.split == "train"]
    val = [b for b in bags if b.split == "val"]
    test = [b for b in bags if b.split == "test"]
    classes = tuple(cohort.classes)
    warnings = check_trainable(train, classes)
    config = _for_classes(config, classes)
    metrics: dict = {"classes": list(classes), "warnings": warnings}
    out_of_fold = None
    if config.folds > 1:
        out_of_fold = yield from out_of_fold_job(config, train, config.folds, "fold")
    model, history = yield from fit_job(config, train, val, "train")
    threshold, fitted_on = yield from threshold_job(config, model, train, val, out_of_fold)
    mask_threshold = model.mask_threshold(threshold)
    metrics["threshold"] = threshold
    metrics["threshold_fitted_on"] = fitted_on
    metrics["mask_threshold"] = mask_threshold
    if out_of_fold is not None:
        fold_metrics = [
            prediction_metrics(
                [train[i] for i in held],
                [out_of_fold[i] for i in held],
                threshold,
                mask_threshold,
                classes,
            )
            for _, held in _folds(train, config.folds, config.seed)
        ]
        metrics["cv"] = {"folds": fold_metrics, "summary": summarise(fold_metrics)}
    for split, split_bags in (("train", train), ("val", val), ("test", test)):
        if split_bags:
            metrics[split] = evaluate_bags(model, split_bags, threshold, mask_threshold, classes)
            if split != "train" and (warning := small_split_warning(split, metrics[split])):
                warnings.append(warning)
    failed = _failure(metrics["train"])
    if failed:
        metrics["failed"] = failed
        warnings.append(failed)
    first = train[0].slide_ids[0]
    feature_attrs = project.read_result(FEATURES, feature_name, first)[1]
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": config.model,
        "in_dim": int(train[0].features.shape[1]),
        "hparams": config.hparams,
        "classes": list(classes),
        "threshold": threshold,
        "mask_threshold": mask_threshold,
        "failed": failed,
        "features": feature_name,
        "feature_attrs": feature_attrs,
        "config": asdict(config),
    }
    model_path = out_dir / "model.safetensors"
    save_model(model_path, model, meta)
    _write_json(
        out_dir / "config.json",
        {
            **asdict(config),
            "features": feature_name,
            "annotations": str(annotations) if annotations else None,
            "project": str(project.root),
        },
    )
    _write_json(out_dir / "metrics.json", metrics)
    _write_history(out_dir / "history.csv", history)
    return MilRunResult(out_dir, model_path, metrics, history)


def _for_classes(config: MilConfig, classes: tuple[str, ...]) -> MilConfig:
    """``config`` with the model built for ``classes``; raises for a binary-only model
    (WENO, MS-CLAM) and more than two classes."""
    if len(classes) == 2:
        return config
    if model_class(config.model).binary_only:
        multi = [m for m in MODELS if not model_class(m).binary_only]
        raise ParamError(
            f"{config.model} is for two classes (negative vs positive) and the cohort has "
            f"{len(classes)} ({', '.join(classes)}): choose {', '.join(multi)}, or relabel "
            "the cohort as two classes"
        )
    return replace(config, hparams={**config.hparams, "n_classes": len(classes)})


def _failure(train_metrics: dict) -> str | None:
    """Why a trained model is not to be used (training bag AUC below 0.5), or None."""
    auc = train_metrics.get("auc")
    if auc is None or auc >= 0.5:
        return None
    return (
        f"training failed: bag AUC {auc:.2f} on its own training slides is below chance "
        "(0.5); do not use this model (try more epochs, another learning rate or other features)"
    )


def _write_json(path: Path, data: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=float))


def _write_history(path: Path, history: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
