"""feature_separation on bags with known answers."""

import numpy as np
import pytest

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.features.quality import feature_separation
from napari_wsi_mil.mil.bags import Bag


def _bag(name, label, split, features, tiles):
    n = len(features)
    return Bag(name, label, split, [name], features, np.zeros(n, np.int32), np.arange(n), tiles)


def _bags(shift: float, seed: int = 0, dim: int = 16):
    """Normal tiles ~ N(mu, 1); tumour tiles (a quarter of each positive bag) shifted."""
    rng = np.random.default_rng(seed)
    mu = np.full(dim, 3.0)
    bags = []
    for i, (label, split) in enumerate(
        [(0, "train"), (1, "train")] * 3 + [(0, "test"), (1, "test")] * 2
    ):
        tiles = np.zeros(80, np.int8)
        if label:
            tiles[:20] = 1
        x = rng.normal(mu, 1.0, (80, dim))
        x[tiles == 1, 0] += shift
        bags.append(_bag(f"b{i}", label, split, x.astype(np.float32), tiles))
    return bags


def test_separable_tumour_tiles_score_high_and_noise_scores_chance():
    clear = feature_separation(_bags(shift=8.0))
    assert clear.probe_auc > 0.99 and clear.novelty_auc > 0.95
    none = feature_separation(_bags(shift=0.0))
    assert 0.35 < none.probe_auc < 0.65 and 0.35 < none.novelty_auc < 0.65
    assert clear.test_tiles == 4 * 80 and clear.train_tiles == 6 * 80


def test_mean_cosine_detects_collapsed_features():
    bags = _bags(shift=0.0)
    assert feature_separation(bags).mean_cosine > 0.8  # all features near mu
    for b in bags:
        b.features = b.features - 3.0
    assert abs(feature_separation(bags).mean_cosine) < 0.1


def test_missing_labels_are_a_clear_error():
    bags = _bags(shift=1.0)
    for b in bags:
        if b.split == "test":
            b.tile_labels[:] = -1
    with pytest.raises(WsiMilError, match="test bags need both"):
        feature_separation(bags)
