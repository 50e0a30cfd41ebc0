"""A feature-only cohort for MIL tests: no slide files, known tumour instances."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_wsi_mil.slide.tiling import PatchGeometry, TiledSlide, TileGrid
from napari_wsi_mil.store.cohort import BINARY_CLASSES, Cohort, CohortEntry
from napari_wsi_mil.store.project import ProjectStore

#: Small architectures for fast model tests (each model's own size keywords).
SMALL_HPARAMS = {
    "transmil": {"embed_dim": 8, "heads": 2, "landmarks": 4},
    "dsmil": {"query_dim": 4},
}


def small_hparams(name: str) -> dict:
    """Small architecture keywords of model ``name`` (embedding 8, attention 4)."""
    return dict(SMALL_HPARAMS.get(name, {"embed_dim": 8, "attention_dim": 4}))


def feature_cohort(
    root: Path,
    n_cases: int = 24,
    n_patches: int = 40,
    dim: int = 16,
    tumour_fraction: float = 0.2,
    shift: float = 3.0,
    seed: int = 0,
    two_slide_cases: int = 2,
    test_fraction: float = 0.25,
    classes: tuple[str, ...] = BINARY_CLASSES,
) -> tuple[ProjectStore, Cohort, dict[str, np.ndarray]]:
    """Negative bags: N(0, 1) features. Positive bags: a ``tumour_fraction`` of
    instances shifted by ``shift`` along the first axis. The first ``two_slide_cases``
    cases have two slides. With more ``classes``, case ``c`` is of class ``c % C`` and
    a bag of class ``k >= 1`` has its tumour instances shifted along axis ``k - 1``.
    Returns the store (feature set ``f``), the cohort and the true tile labels per
    slide (also stored as painted tile labels)."""
    rng = np.random.default_rng(seed)
    store = ProjectStore(root / "project", create=True)
    entries, truth = [], {}
    n_test = int(round(n_cases * test_fraction))
    for c in range(n_cases):
        label = c % len(classes)
        split = "test" if c >= n_cases - n_test else "train"
        for k in range(2 if c < two_slide_cases else 1):
            slide_id = f"case{c:02d}_s{k}"
            n = int(rng.integers(max(1, n_patches // 2), n_patches + 1))
            feats = rng.normal(size=(n, dim)).astype(np.float32)
            tiles = np.zeros(n, np.int8)
            if label >= 1:
                tumour = rng.choice(n, max(1, int(tumour_fraction * n)), replace=False)
                tiles[tumour] = 1
                feats[tumour, label - 1] += shift
            coords = np.stack([np.arange(n) % 10 * 224, np.arange(n) // 10 * 224], 1)
            geo = PatchGeometry(0.5, 0.5, 224, 224, 224, 0, 224)
            grid = TileGrid(coords.astype(np.int64), np.ones(n, np.float32), geo, (n // 10 + 1, 10))
            store.write_tiles(
                slide_id,
                TiledSlide(grid, np.zeros((1, 1), bool), (1.0, 1.0), []),
                {"path": None},
                {},
            )
            store.write_result(
                "features", "f", slide_id, {"features": feats}, {"encoder": "synthetic", "dim": dim}
            )
            store.write_result("tile_labels", None, slide_id, {"labels": tiles}, {})
            truth[slide_id] = tiles
            entries.append(CohortEntry(slide_id, label, None, f"case{c:02d}", split))
    return store, Cohort(entries, classes=classes), truth
