"""How well patch features separate tumour from normal tiles: the encoder check.

Two scores on bags with tile labels (:func:`napari_wsi_mil.mil.bags.load_bags` with
annotations), both ROC AUCs of tumour (1) against normal (0) tiles of **test** bags:

- ``probe_auc``: a linear probe (standardised features, L2-regularised logistic
  regression) fitted on the tile labels of the training bags. The usual linear
  evaluation of self-supervised features; it needs tile labels for training.
- ``novelty_auc``: label-free and what WeakSupCon aims at (its paper's PCA figure:
  negative-bag features cluster, part of the positive-bag features sits apart). A
  tile's score is its mean cosine distance to its ``k`` nearest patches of the
  training **negative** bags, so tiles unlike anything in normal slides score high.
  Scored on the tiles of positive test bags.

``mean_cosine`` is the mean pairwise cosine similarity of test features: near 1
means the features have collapsed onto one direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from napari_wsi_mil.errors import WsiMilError


@dataclass(frozen=True)
class Separation:
    probe_auc: float
    novelty_auc: float
    mean_cosine: float
    train_tiles: int
    test_tiles: int

    def as_dict(self) -> dict:
        return asdict(self)


def _stack(bags, what: str) -> np.ndarray:
    return np.concatenate([getattr(b, what) for b in bags]) if bags else np.empty(0)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def feature_separation(
    bags: Sequence, k: int = 5, max_reference: int = 20000, seed: int = 0
) -> Separation:
    """Probe and novelty AUCs of ``bags`` (see the module doc).

    Parameters
    ----------
    bags : sequence of Bag
        Bags with ``split`` ``"train"`` or ``"test"`` and tile labels; the training
        bags need tumour and normal tiles, the test bags tumour and normal tiles
        within positive bags.
    k : int
        Neighbours for the novelty score.
    max_reference : int
        At most this many negative-bag training patches (sampled with ``seed``)
        serve as the novelty reference.

    Raises
    ------
    WsiMilError
        A split lacks tumour or normal tiles, or there is no negative training bag.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    train = [b for b in bags if b.split == "train"]
    test = [b for b in bags if b.split == "test"]
    x, y = _stack(train, "features"), _stack(train, "tile_labels")
    xt, yt = _stack(test, "features"), _stack(test, "tile_labels")
    for name, labels in (("training", y), ("test", yt)):
        if not ((labels == 1).any() and (labels == 0).any()):
            raise WsiMilError(f"the {name} bags need both tumour and normal tile labels")
    known, known_t = y >= 0, yt >= 0
    mean, std = x.mean(0), x.std(0) + 1e-6
    probe = LogisticRegression(C=0.1, max_iter=3000).fit((x[known] - mean) / std, y[known])
    probe_auc = roc_auc_score(yt[known_t], probe.decision_function((xt[known_t] - mean) / std))

    reference = _unit(_stack([b for b in train if b.label == 0], "features"))
    if not len(reference):
        raise WsiMilError("no negative training bag to measure novelty against")
    rng = np.random.default_rng(seed)
    if len(reference) > max_reference:
        reference = reference[rng.choice(len(reference), max_reference, replace=False)]
    positive = [b for b in test if b.label == 1]
    xp, yp = _unit(_stack(positive, "features")), _stack(positive, "tile_labels")
    if not ((yp == 1).any() and (yp == 0).any()):
        raise WsiMilError("the positive test bags need both tumour and normal tile labels")
    k = min(k, len(reference))
    novelty = np.concatenate(
        [
            np.partition(1 - rows @ reference.T, k - 1, axis=1)[:, :k].mean(1)
            for rows in np.array_split(xp, max(1, len(xp) // 4096))
        ]
    )
    novelty_auc = roc_auc_score(yp[yp >= 0], novelty[yp >= 0])

    sample = _unit(xt[rng.permutation(len(xt))[:2000]])
    return Separation(
        round(float(probe_auc), 4),
        round(float(novelty_auc), 4),
        round(float((sample @ sample.T).mean()), 4),
        int(known.sum()),
        int(known_t.sum()),
    )
