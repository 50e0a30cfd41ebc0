"""Metrics the MIL papers report: bag, instance and localisation, and their spread.

- Bag: AUC, accuracy, balanced accuracy, F1 (threshold on P(positive)), the confusion
  matrix, the count of each class and stratified percentile bootstrap intervals (95%)
  of the AUC and the balanced accuracy; :func:`describe_bag_metrics` says all of it in
  one line, and :func:`small_split_warning` flags a split too small to trust. With
  more than two classes (:func:`multiclass_bag_metrics`) the call is the most probable
  class, ``auc`` is the macro mean of the one-vs-rest AUCs (each class's in
  ``class_auc``), F1 is macro and every count is per class.
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


#: Fewer slides of a class than this in a split, and its metrics get a warning.
MIN_PER_CLASS = 10


def bag_metrics(labels, probabilities, threshold: float = 0.5) -> dict:
    """Bag metrics at ``threshold``, class counts, the confusion matrix (rows: true
    class, columns: called class) and 95% bootstrap intervals (``auc_interval``,
    ``balanced_accuracy_interval``: ``[low, high]`` or None)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    y = np.asarray(labels, int)
    p = np.asarray(probabilities, float)
    pred = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    counts = {
        "n": int(len(y)),
        "n_positive": int((y == 1).sum()),
        "n_negative": int((y == 0).sum()),
        "confusion_matrix": _confusion(y, pred, 2),
    }
    if len(y) == 0:
        return {
            "auc": None,
            "auc_interval": None,
            "accuracy": None,
            "balanced_accuracy": None,
            "balanced_accuracy_interval": None,
            "f1": None,
            **counts,
        }
    return {
        "auc": _auc(y, p),
        "auc_interval": _listed(bootstrap_auc_interval(y, p)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if both else None,
        "balanced_accuracy_interval": _listed(bootstrap_balanced_accuracy_interval(y, pred)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        **counts,
    }


def multiclass_bag_metrics(labels, class_probabilities, classes) -> dict:
    """Bag metrics of ``C > 2`` classes (see the module doc): ``auc`` (macro one-vs-rest
    over the classes present, None with fewer than two) and ``class_auc`` (``{class:
    AUC or None}``), accuracy, balanced accuracy (mean
    recall over the classes present), macro F1, ``class_counts``, the confusion matrix
    and stratified 95% bootstrap intervals of the macro AUC and balanced accuracy."""
    from sklearn.metrics import accuracy_score, f1_score

    y = np.asarray(labels, int)
    probs = np.asarray(class_probabilities, float).reshape(len(y), len(classes))
    pred = probs.argmax(1) if len(y) else y
    present = [c for c in range(len(classes)) if (y == c).any()]
    class_auc = {name: _auc((y == c).astype(int), probs[:, c]) for c, name in enumerate(classes)}
    aucs = [a for a in class_auc.values() if a is not None]
    counts = {
        "n": int(len(y)),
        "class_counts": {name: int((y == c).sum()) for c, name in enumerate(classes)},
        "confusion_matrix": _confusion(y, pred, len(classes)),
    }
    if len(y) == 0:
        return {
            "auc": None,
            "class_auc": class_auc,
            "accuracy": None,
            "balanced_accuracy": None,
            "f1": None,
            **counts,
        }
    recalls = [float((pred[y == c] == c).mean()) for c in present]
    return {
        "auc": float(np.mean(aucs)) if len(present) > 1 else None,
        "auc_interval": _listed(bootstrap_macro_auc_interval(y, probs)),
        "class_auc": class_auc,
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(np.mean(recalls)) if len(present) > 1 else None,
        "balanced_accuracy_interval": _listed(bootstrap_balanced_accuracy_interval(y, pred)),
        "f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        **counts,
    }


def _confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]]:
    matrix = np.zeros((n_classes, n_classes), int)
    np.add.at(matrix, (y, pred), 1)
    return matrix.tolist()


def _listed(interval: tuple[float, float] | None) -> list[float] | None:
    return None if interval is None else [interval[0], interval[1]]


def describe_bag_metrics(metrics: dict, digits: int = 2) -> str:
    """One line for people: ``AUC 0.91 [0.80-1.00], balanced accuracy 0.85 [0.70-0.95],
    n = 12 tumour / 8 normal`` (what is unknown is left out)."""

    def number(key: str) -> str | None:
        value = metrics.get(key)
        if value is None:
            return None
        text = f"{value:.{digits}f}"
        interval = metrics.get(f"{key}_interval")
        if interval is not None:
            text += f" [{interval[0]:.{digits}f}-{interval[1]:.{digits}f}]"
        return text

    parts = [
        f"{name} {number(key)}"
        for key, name in (("auc", "AUC"), ("balanced_accuracy", "balanced accuracy"))
        if number(key) is not None
    ]
    if "class_counts" in metrics:
        parts.append("n = " + " / ".join(f"{n} {c}" for c, n in metrics["class_counts"].items()))
    elif "n_positive" in metrics:
        parts.append(f"n = {metrics['n_positive']} tumour / {metrics['n_negative']} normal")
    return ", ".join(parts)


def small_split_warning(split: str, metrics: dict) -> str | None:
    """A warning when ``split`` holds fewer than :data:`MIN_PER_CLASS` slides of a class."""
    if "class_counts" in metrics:
        counts = metrics["class_counts"]
        if min(counts.values()) >= MIN_PER_CLASS:
            return None
        listed = ", ".join(f"{n} {c}" for c, n in counts.items())
        return (
            f"the {split} split has {listed} slides (fewer than {MIN_PER_CLASS} of a "
            "class): its metrics are very uncertain, read the 95% intervals"
        )
    smallest = min(metrics.get("n_positive", 0), metrics.get("n_negative", 0))
    if smallest >= MIN_PER_CLASS:
        return None
    return (
        f"the {split} split has {metrics.get('n_positive', 0)} tumour and "
        f"{metrics.get('n_negative', 0)} normal slides (fewer than {MIN_PER_CLASS} of a "
        "class): its metrics are very uncertain, read the 95% intervals"
    )


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
    """Mean Dice over positive (non-negative class) slides with known tiles, mean
    specificity over negative slides, a tile being tumour when its score is at least
    ``threshold``. ``slides`` holds ``(slide label, tile labels, instance scores)``."""
    dices, specificities = [], []
    for label, tiles, scores in slides:
        predicted = np.asarray(scores) >= threshold
        known = np.asarray(tiles) >= 0
        if label != 0 and (np.asarray(tiles) == 1).any():
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


def _stratified_draws(n_pos: int, n_neg: int, resamples: int, seed: int):
    """How often each positive and each negative is drawn in each bootstrap resample
    (each class resampled with replacement to its own count)."""
    rng = np.random.default_rng(seed)
    drawn_pos = rng.multinomial(n_pos, np.full(n_pos, 1 / n_pos), resamples)
    drawn_neg = rng.multinomial(n_neg, np.full(n_neg, 1 / n_neg), resamples)
    return drawn_pos, drawn_neg


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


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
    n_pos, n_neg = len(positives), len(negatives)
    drawn_pos, drawn_neg = _stratified_draws(n_pos, n_neg, resamples, seed)
    # the AUC of a resample is the count-weighted mean of the pairwise wins
    aucs = np.einsum("bp,pn,bn->b", drawn_pos, wins, drawn_neg) / (n_pos * n_neg)
    return _percentiles(aucs, level)


def bootstrap_balanced_accuracy_interval(
    labels, predicted, *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the balanced accuracy (mean recall over the
    classes) of ``predicted`` calls, each class resampled with replacement to its own
    count as in :func:`bootstrap_auc_interval` (None unless two classes are present)."""
    y = np.asarray(labels, int)
    called = np.asarray(predicted, int)
    classes = np.unique(y)
    if len(classes) < 2:
        return None
    rng = np.random.default_rng(seed)
    recalls = []
    for c in classes[::-1]:  # binary: positives first, as the AUC's draws
        hits = called[y == c] == c
        drawn = rng.multinomial(len(hits), np.full(len(hits), 1 / len(hits)), resamples)
        recalls.append(drawn @ hits / len(hits))
    return _percentiles(np.mean(recalls, axis=0), level)


def bootstrap_macro_auc_interval(
    labels, class_probabilities, *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the macro one-vs-rest AUC over the classes present
    (``class_probabilities [n, C]``), each class resampled with replacement to its own
    count; None with fewer than two classes present."""
    y = np.asarray(labels, int)
    probs = np.asarray(class_probabilities, float)
    present = np.unique(y)
    if len(present) < 2:
        return None
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, len(y)))
    for c in present:
        members = np.flatnonzero(y == c)
        weights[:, members] = rng.multinomial(
            len(members), np.full(len(members), 1 / len(members)), resamples
        )
    aucs = []
    for c in present:
        pos, neg = y == c, y != c
        s_pos, s_neg = probs[pos, c], probs[neg, c]
        wins = (s_pos[:, None] > s_neg[None, :]) + 0.5 * (s_pos[:, None] == s_neg[None, :])
        w_pos, w_neg = weights[:, pos], weights[:, neg]
        total = w_pos.sum(1) * w_neg.sum(1)
        aucs.append(np.einsum("bp,pn,bn->b", w_pos, wins, w_neg) / total)
    return _percentiles(np.mean(aucs, axis=0), level)
