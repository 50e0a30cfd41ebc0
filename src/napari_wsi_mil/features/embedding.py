"""2-D embeddings of patch features (PCA, optionally UMAP) and the train/test figure.

The WeakSupCon paper shows the feature space as PCA scatters of patches from
training slides and from test slides side by side, coloured by the label of the
bag (slide) a patch comes from. :func:`embed_features` builds that table: it
samples up to ``max_per_slide`` patches per slide (deterministically, per slide),
fits the projection on the **train** split only and projects every sampled patch
with it, so both panels share one pair of axes. The figure is drawn by
:mod:`napari_wsi_mil.features.embedding_plot`.
"""

from __future__ import annotations

import importlib.util
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Job, Progress, run_job
from napari_wsi_mil.store.cohort import Cohort, read_cohort
from napari_wsi_mil.store.keys import FEATURES
from napari_wsi_mil.store.project import ProjectStore

__all__ = ["EmbeddingTable", "embed_features", "embedding_job", "sample_patches"]

METHODS = ("pca", "umap")


@dataclass
class EmbeddingTable:
    """One row per sampled patch: its 2-D position and where it comes from.

    Attributes
    ----------
    xy : (M, 2) float32
        Embedding coordinates (PC 1, PC 2 for PCA).
    slide_id : (M,) str
    patch_index : (M,) int64
        Row of the patch in its slide's TileGrid (the order of every per-patch array).
    bag_label : (M,) int8
        The bag group of the patch's slide: 0 negative (the cohort's negative class), 1
        positive (any other class).
    split : (M,) str
        ``train``, ``val`` or ``test``.
    coords : (M, 2) int64
        Level-0 top-left ``(x, y)`` of the patch (``-1`` when the slide has no tiling).
    method : str
        ``"pca"`` or ``"umap"``.
    attrs : dict
        Facts about the fit: feature set, fit split, explained variance, sample sizes.
    """

    xy: np.ndarray
    slide_id: np.ndarray
    patch_index: np.ndarray
    bag_label: np.ndarray
    split: np.ndarray
    coords: np.ndarray | None = None
    method: str = "pca"
    attrs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.xy = np.asarray(self.xy, np.float32).reshape(-1, 2)
        n = len(self.xy)
        self.slide_id = np.asarray(self.slide_id, dtype=str).reshape(n)
        self.patch_index = np.asarray(self.patch_index, np.int64).reshape(n)
        self.bag_label = np.asarray(self.bag_label, np.int8).reshape(n)
        self.split = np.asarray(self.split, dtype=str).reshape(n)
        if self.coords is None:
            self.coords = np.full((n, 2), -1, np.int64)
        self.coords = np.asarray(self.coords, np.int64).reshape(n, 2)

    def __len__(self) -> int:
        return len(self.xy)

    @property
    def axis_names(self) -> tuple[str, str]:
        """Column names of the two coordinates: ``pc1, pc2`` or ``umap1, umap2``."""
        return ("pc1", "pc2") if self.method == "pca" else (f"{self.method}1", f"{self.method}2")

    def slide_ids(self) -> list[str]:
        """Slides in the table, in table order."""
        _, first = np.unique(self.slide_id, return_index=True)
        return [str(self.slide_id[i]) for i in sorted(first)]

    def rows_of(self, slide_id: str) -> np.ndarray:
        """Row indices (into this table) of one slide's patches, by patch index."""
        return np.flatnonzero(self.slide_id == slide_id)

    def subset(self, rows) -> EmbeddingTable:
        """A table of the given rows (indices or a boolean mask)."""
        rows = np.asarray(rows)
        return EmbeddingTable(
            self.xy[rows],
            self.slide_id[rows],
            self.patch_index[rows],
            self.bag_label[rows],
            self.split[rows],
            self.coords[rows],
            self.method,
            dict(self.attrs),
        )

    def columns(self, rows=None) -> dict[str, np.ndarray]:
        """Plain columns (for a DataFrame or ``layer.features``) of all or some rows."""
        rows = slice(None) if rows is None else np.asarray(rows)
        a, b = self.axis_names
        return {
            "slide_id": self.slide_id[rows],
            "patch_index": self.patch_index[rows],
            "x": self.coords[rows, 0],
            "y": self.coords[rows, 1],
            a: self.xy[rows, 0],
            b: self.xy[rows, 1],
            "bag_label": self.bag_label[rows],
            "split": self.split[rows],
        }


def sample_patches(n: int, max_per_slide: int | None, slide_id: str, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_per_slide`` of ``n`` patches.

    The draw depends only on ``(seed, slide_id)``, so a slide gets the same patches
    whichever other slides are embedded with it.
    """
    if max_per_slide is None or max_per_slide <= 0 or n <= max_per_slide:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([int(seed), zlib.crc32(slide_id.encode())])
    return np.sort(rng.choice(n, size=int(max_per_slide), replace=False)).astype(np.int64)


def _open_store(store: ProjectStore | str | os.PathLike) -> ProjectStore:

    return store if isinstance(store, ProjectStore) else ProjectStore(store)


def _open_cohort(cohort: Cohort | str | os.PathLike) -> Cohort:

    return cohort if isinstance(cohort, Cohort) else read_cohort(cohort)


def _check_method(method: str) -> str:
    method = str(method).lower()
    if method not in METHODS:
        raise WsiMilError(f"unknown embedding method {method!r}: use one of {', '.join(METHODS)}")
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise WsiMilError(
            "method 'umap' needs the umap-learn package, which is not installed: "
            "pip install umap-learn (or use method 'pca')"
        )
    return method


def embedding_job(
    store: ProjectStore | str | os.PathLike,
    cohort: Cohort | str | os.PathLike,
    feature_name: str,
    *,
    slide_ids: Sequence[str] | None = None,
    max_per_slide: int | None = 500,
    method: str = "pca",
    seed: int = 0,
) -> Job[EmbeddingTable]:
    """Load, sample and embed patch features; yields ``Progress("loading", i, n)``.

    See :func:`embed_features` for the arguments. Nothing is written.
    """
    method = _check_method(method)
    store = _open_store(store)
    cohort = _open_cohort(cohort)
    chosen, skipped = _chosen_slides(store, cohort, feature_name, slide_ids)
    parts, dim, n_total = [], None, {}
    yield Progress("loading", 0, len(chosen))
    for i, entry in enumerate(chosen):
        pick, x, coords, n = _read_sample(store, feature_name, entry, dim, max_per_slide, seed)
        dim = x.shape[1]
        n_total[entry.slide_id] = n
        parts.append((entry, pick, x, coords))
        yield Progress("loading", i + 1, len(chosen), message=entry.slide_id)

    features = np.concatenate([p[2] for p in parts]) if parts else np.zeros((0, 2), np.float32)
    split = np.concatenate([np.full(len(p[1]), p[0].split) for p in parts])
    train = split == "train"
    fit_split = "train"
    if not train.any():
        train, fit_split = np.ones(len(split), bool), "all"  # no training slides: fit on all
    if train.sum() < 3:
        raise WsiMilError(
            f"only {int(train.sum())} patches to fit the {method.upper()} on; need at least 3"
        )
    yield Progress("fitting", 0, 1, message=f"{method.upper()} on {int(train.sum())} patches")
    attrs = {
        "feature_name": feature_name,
        "fit_split": fit_split,
        "n_fit": int(train.sum()),
        "max_per_slide": max_per_slide,
        "seed": seed,
        "n_patches": n_total,
        "skipped_slides": skipped,
    }
    xy = _fit_and_project(method, features, train, seed, attrs)
    yield Progress("fitting", 1, 1)
    return EmbeddingTable(
        xy=xy,
        slide_id=np.concatenate([np.full(len(p[1]), p[0].slide_id) for p in parts]),
        patch_index=np.concatenate([p[1] for p in parts]),
        bag_label=np.concatenate([np.full(len(p[1]), p[0].label != 0) for p in parts]),
        split=split,
        coords=np.concatenate([p[3] for p in parts]),
        method=method,
        attrs=attrs,
    )


def _chosen_slides(
    store: ProjectStore, cohort: Cohort, feature_name: str, slide_ids
) -> tuple[list, list[str]]:
    """``(entries to embed, ids of cohort slides without the features)``: ``slide_ids``
    (each must have them) or every cohort slide that has them."""
    available = set(store.result_ids(FEATURES, feature_name))
    entries = {e.slide_id: e for e in cohort}
    if slide_ids is None:
        chosen = [e for e in cohort if e.slide_id in available]
        skipped = [e.slide_id for e in cohort if e.slide_id not in available]
        if not chosen:
            raise WsiMilError(
                f"{store.root}: no slide of the cohort ({cohort.source or 'table'}) has "
                f"features '{feature_name}'; extract them first"
            )
        return chosen, skipped
    unknown = [s for s in slide_ids if s not in entries]
    if unknown:
        raise WsiMilError(f"slides not in the cohort: {', '.join(unknown)}")
    missing = [s for s in slide_ids if s not in available]
    if missing:
        raise WsiMilError(
            f"{store.root}: no features '{feature_name}' for slides {', '.join(missing)}"
        )
    return [entries[s] for s in dict.fromkeys(slide_ids)], []


def _read_sample(store: ProjectStore, feature_name: str, entry, dim, max_per_slide, seed: int):
    """One slide's sampled patches: ``(patch indices, features [k, D] float32, level-0
    coords [k, 2] (-1 without a tiling), the slide's patch count)``; checks that the
    features are finite, ``dim`` wide (None: any width >= 2) and match the tiling."""
    arrays, _ = store.read_result(FEATURES, feature_name, entry.slide_id)
    feats = arrays.get("features")
    where = f"{store.result_dir(FEATURES, feature_name, entry.slide_id)}"
    if feats is None or feats.ndim != 2 or feats.shape[1] < 2:
        raise WsiMilError(f"{where}: 'features' must be an (N, D) array with D >= 2")
    if dim is not None and feats.shape[1] != dim:
        raise WsiMilError(f"{where}: {feats.shape[1]} feature dimensions, other slides have {dim}")
    coords = None
    if store.has_tiles(entry.slide_id):
        grid, _ = store.read_tiles(entry.slide_id)
        if len(grid) != len(feats):
            raise WsiMilError(
                f"{where}: {len(feats)} feature rows but the slide's tiling has "
                f"{len(grid)} patches; extract the features again"
            )
        coords = grid.coords
    pick = sample_patches(len(feats), max_per_slide, entry.slide_id, seed)
    x = np.asarray(feats[pick], np.float32)
    if not np.isfinite(x).all():
        raise WsiMilError(f"{where}: features contain NaN or infinite values")
    coords = coords[pick] if coords is not None else np.full((len(pick), 2), -1, np.int64)
    return pick, x, coords, int(len(feats))


def _fit_and_project(method: str, features, train, seed: int, attrs: dict) -> np.ndarray:
    """Fit PCA or UMAP on the ``train`` rows and project every row; PCA's explained
    variance ratios go into ``attrs``."""
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(features[train])
        attrs["explained_variance_ratio"] = [float(v) for v in pca.explained_variance_ratio_]
        return pca.transform(features)
    import umap

    reducer = umap.UMAP(n_components=2, random_state=seed).fit(features[train])
    return reducer.transform(features)


def embed_features(
    store: ProjectStore | str | os.PathLike,
    cohort: Cohort | str | os.PathLike,
    feature_name: str,
    *,
    slide_ids: Sequence[str] | None = None,
    max_per_slide: int | None = 500,
    method: str = "pca",
    seed: int = 0,
) -> EmbeddingTable:
    """Embed sampled patch features of a cohort in 2-D, fitted on the train split.

    Parameters
    ----------
    store : ProjectStore or path
        The project holding ``features/<feature_name>/<slide_id>``.
    cohort : Cohort or path
        Labels and splits (a cohort CSV path is read with ``read_cohort``).
    feature_name : str
        The feature set (the name given to the extraction job).
    slide_ids : sequence of str, optional
        Slides to embed (each must have features). Default: every cohort slide that
        has features (the others are listed in ``table.attrs["skipped_slides"]``).
    max_per_slide : int or None
        Patches sampled per slide (deterministic per slide and ``seed``); None: all.
    method : {"pca", "umap"}
        PCA (scikit-learn) or UMAP (needs ``umap-learn``).
    seed : int
        Seeds the sampling and the fit.

    Returns
    -------
    EmbeddingTable
        The projection is fitted on the train-split sample (on all rows only when
        the cohort has no training slides: ``attrs["fit_split"] == "all"``) and
        applied to every row, so train and test share one pair of axes.
    """
    return run_job(
        embedding_job(
            store,
            cohort,
            feature_name,
            slide_ids=slide_ids,
            max_per_slide=max_per_slide,
            method=method,
            seed=seed,
        )
    )
