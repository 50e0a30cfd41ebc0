"""Metrics the MIL papers report: bag, instance and localisation, and their spread.

- Bag: AUC, accuracy, balanced accuracy, F1 (threshold on P(positive)), and a stratified
  percentile bootstrap interval of the AUC.
- Instance: AUC and average precision of instance scores against known tile labels.
- Localisation, on tile masks cut at the model's mask threshold (``threshold``: 0.5, or
  WENO's fitted bag threshold, see :meth:`napari_wsi_mil.mil.base.MilModel.mask_threshold`):
  Dice on positive slides (with tile labels) and specificity on negative slides (the
  fraction of their tiles called normal).
Undefined values (one class only, no labelled tiles) are ``None``, never a crash.
"""

from __future__ import annotations

import numpy as np


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else None


def bag_metrics(labels, probabilities, threshold: float = 0.5) -> dict[str, float | None]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    y = np.asarray(labels, int)
    p = np.asarray(probabilities, float)
    pred = (p >= threshold).astype(int)
    if len(y) == 0:
        return {"auc": None, "accuracy": None, "balanced_accuracy": None, "f1": None, "n": 0}
    return {
        "auc": _auc(y, p),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": (
            float(balanced_accuracy_score(y, pred)) if len(np.unique(y)) == 2 else None
        ),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "n": int(len(y)),
    }


def instance_metrics(tile_labels, scores) -> dict[str, float | None]:
    """AUC and AP over tiles whose label is known (``tile_labels`` of -1 are ignored)."""
    from sklearn.metrics import average_precision_score

    y = np.asarray(tile_labels)
    s = np.asarray(scores, float)
    known = y >= 0
    y, s = y[known].astype(int), s[known]
    both = len(np.unique(y)) == 2
    return {
        "instance_auc": _auc(y, s) if both else None,
        "instance_ap": float(average_precision_score(y, s)) if both else None,
        "instance_n": int(known.sum()),
    }


def dice(truth: np.ndarray, predicted: np.ndarray) -> float | None:
    truth, predicted = np.asarray(truth, bool), np.asarray(predicted, bool)
    total = truth.sum() + predicted.sum()
    return None if total == 0 else float(2 * (truth & predicted).sum() / total)


def localisation_metrics(
    slides: list[tuple[int, np.ndarray, np.ndarray]], threshold: float = 0.5
) -> dict[str, float | None]:
    """Mean Dice over positive slides with known tiles, mean specificity over negative
    slides, a tile being tumour when its score is at least ``threshold``. ``slides``
    holds ``(slide label, tile labels, instance scores)``."""
    dices, specificities = [], []
    for label, tiles, scores in slides:
        predicted = np.asarray(scores) >= threshold
        known = np.asarray(tiles) >= 0
        if label == 1 and (np.asarray(tiles) == 1).any():
            value = dice(np.asarray(tiles)[known] == 1, predicted[known])
            if value is not None:
                dices.append(value)
        elif label == 0 and len(scores):
            specificities.append(float((~predicted).mean()))
    return {
        "dice": float(np.mean(dices)) if dices else None,
        "specificity": float(np.mean(specificities)) if specificities else None,
    }


def summarise(runs: list[dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Mean, standard deviation and count of every metric over repeated runs or folds."""
    keys = sorted({k for run in runs for k in run})
    out = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = {
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values)) if values else None,
            "runs": len(values),
        }
    return out


def bootstrap_auc_interval(
    labels, scores, *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the ROC AUC (None with one class only).

    Positives and negatives are resampled separately, each with replacement to its own
    count (a stratified bootstrap: every resample has both classes, as the test set has).
    Ties count half, as in :func:`sklearn.metrics.roc_auc_score`.
    """
    y = np.asarray(labels, int)
    s = np.asarray(scores, float)
    positives, negatives = s[y == 1], s[y == 0]
    if len(positives) == 0 or len(negatives) == 0:
        return None
    wins = (positives[:, None] > negatives[None, :]) + 0.5 * (
        positives[:, None] == negatives[None, :]
    )
    rng = np.random.default_rng(seed)
    # how often each slide is drawn in each resample: the AUC of a resample is the
    # count-weighted mean of the pairwise wins
    n_pos, n_neg = len(positives), len(negatives)
    drawn_pos = rng.multinomial(n_pos, np.full(n_pos, 1 / n_pos), resamples)
    drawn_neg = rng.multinomial(n_neg, np.full(n_neg, 1 / n_neg), resamples)
    aucs = np.einsum("bp,pn,bn->b", drawn_pos, wins, drawn_neg) / (n_pos * n_neg)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return float(low), float(high)
