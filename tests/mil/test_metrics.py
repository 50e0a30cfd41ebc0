"""Bag metrics and their bootstrap intervals (what the demo report's headline rests on)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from napari_wsi_mil.mil.metrics import bootstrap_auc_interval


def test_separated_and_inverted_scores_have_no_spread():
    labels = [0, 0, 0, 1, 1, 1]
    assert bootstrap_auc_interval(labels, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]) == (1.0, 1.0)
    assert bootstrap_auc_interval(labels, [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]) == (0.0, 0.0)
    assert bootstrap_auc_interval(labels, [0.5] * 6) == (0.5, 0.5)  # ties count half


def test_two_by_two_case_by_hand():
    # negatives 0.1, 0.6; positives 0.5, 0.9. A resample draws each class with
    # replacement: AUC 0 when both negatives are 0.6 and both positives 0.5
    # (1/4 * 1/4 = 6.25% of resamples, more than the 2.5% tail), AUC 1 when both
    # negatives are 0.1 (25%): the 95% interval is [0, 1] and includes chance.
    assert bootstrap_auc_interval([0, 0, 1, 1], [0.1, 0.6, 0.5, 0.9]) == (0.0, 1.0)


def test_one_class_has_no_interval():
    assert bootstrap_auc_interval([1, 1, 1], [0.2, 0.5, 0.9]) is None
    assert bootstrap_auc_interval([], []) is None


def _brute_force(labels, scores, resamples, rng):
    """The same stratified percentile bootstrap, one resample at a time with sklearn."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    aucs = []
    for _ in range(resamples):
        index = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        aucs.append(roc_auc_score(labels[index], scores[index]))
    return np.percentile(aucs, [2.5, 97.5])


def test_agrees_with_a_brute_force_bootstrap_and_is_seeded():
    rng = np.random.default_rng(5)
    labels = np.array([0] * 12 + [1] * 10)
    scores = rng.normal(labels * 1.5, 1.0)  # overlapping classes: AUC 0.83
    low, high = bootstrap_auc_interval(labels, scores, seed=3)
    assert low < roc_auc_score(labels, scores) < high
    assert 0.5 < low and high < 1.0 and high - low > 0.1
    brute_low, brute_high = _brute_force(labels, scores, 4000, np.random.default_rng(9))
    assert low == pytest.approx(brute_low, abs=0.03)
    assert high == pytest.approx(brute_high, abs=0.03)
    assert bootstrap_auc_interval(labels, scores, seed=3) == (low, high)
    assert bootstrap_auc_interval(labels, scores, seed=4) != (low, high)
    narrow = bootstrap_auc_interval(labels, scores, level=0.5, seed=3)
    assert low < narrow[0] < narrow[1] < high


def test_bag_metrics_count_each_class_and_give_intervals():
    from napari_wsi_mil.mil.metrics import bag_metrics

    m = bag_metrics([0, 0, 0, 1, 1], [0.1, 0.2, 0.6, 0.7, 0.9])
    assert (m["n"], m["n_positive"], m["n_negative"]) == (5, 2, 3)
    assert m["auc"] == 1.0 and m["auc_interval"] == [1.0, 1.0]
    # one negative of three called positive: balanced accuracy (1 + 2/3) / 2
    assert m["balanced_accuracy"] == pytest.approx(5 / 6)
    low, high = m["balanced_accuracy_interval"]
    assert 0.5 <= low < 5 / 6 < high == 1.0
    one_class = bag_metrics([1, 1], [0.2, 0.9])
    assert one_class["auc_interval"] is None and one_class["balanced_accuracy_interval"] is None


def test_balanced_accuracy_interval_by_hand():
    from napari_wsi_mil.mil.metrics import bootstrap_balanced_accuracy_interval

    # every call right: no resample can be wrong
    assert bootstrap_balanced_accuracy_interval([0, 1, 1], [0, 1, 1]) == (1.0, 1.0)
    # one positive right, one wrong, one negative right: sensitivity is 0, 0.5 or 1
    low, high = bootstrap_balanced_accuracy_interval([1, 1, 0], [1, 0, 0], level=0.9)
    assert (low, high) == (0.5, 1.0)


def test_describe_bag_metrics_and_small_split_warning():
    from napari_wsi_mil.mil.metrics import describe_bag_metrics, small_split_warning

    m = {
        "auc": 0.913,
        "auc_interval": [0.8, 1.0],
        "balanced_accuracy": 0.85,
        "balanced_accuracy_interval": [0.7, 0.95],
        "n_positive": 12,
        "n_negative": 8,
    }
    assert describe_bag_metrics(m) == (
        "AUC 0.91 [0.80-1.00], balanced accuracy 0.85 [0.70-0.95], n = 12 tumour / 8 normal"
    )
    assert describe_bag_metrics({"auc": None, "n_positive": 2, "n_negative": 0}) == (
        "n = 2 tumour / 0 normal"
    )
    assert "8 normal slides (fewer than 10" in small_split_warning("test", m)
    assert small_split_warning("test", {**m, "n_negative": 10}) is None
