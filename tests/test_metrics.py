"""The bootstrap interval of the bag AUC (what the demo report's headline rests on)."""

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
