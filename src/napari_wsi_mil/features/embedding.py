"""2-D embeddings of patch features (PCA, optionally UMAP) and the train/test figure.

The WeakSupCon paper shows the feature space as PCA scatters of patches from
training slides and from test slides side by side, coloured by the label of the
bag (slide) a patch comes from. :func:`embed_features` builds that table: it
samples up to ``max_per_slide`` patches per slide (deterministically, per slide),
fits the projection on the **train** split only and projects every sampled patch
with it, so both panels share one pair of axes. :func:`plot_embedding` draws the
figure to a PNG; :func:`draw_embedding` draws it into any matplotlib ``Figure``
(the napari widget uses it with the viewer's theme colours).

Nothing here imports Qt or napari; matplotlib is used without pyplot.
"""

from __future__ import annotations

import importlib.util
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Job, Progress, atomic_file, run_job
from napari_wsi_mil.store.keys import FEATURES

__all__ = [
    "BAG_COLORS",
    "HIGHLIGHT_COLOR",
    "EmbeddingPlot",
    "EmbeddingTable",
    "draw_embedding",
    "embed_features",
    "embedding_job",
    "plot_embedding",
    "sample_patches",
    "set_highlight",
]

METHODS = ("pca", "umap")
#: Colours of negative (0) and positive (1) bags (Okabe-Ito blue and vermillion).
BAG_COLORS = {0: "#0072B2", 1: "#D55E00"}
BAG_NAMES = {0: "negative bags", 1: "positive bags"}
#: Colour of selected / highlighted patches, in the plot and on the slide.
HIGHLIGHT_COLOR = "#F0E442"
#: A panel with more points than this is drawn as a 2-D histogram per label.
HIST_THRESHOLD = 20_000


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
        The cohort label of the patch's slide (0 negative, 1 positive).
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


def _open_store(store):
    from napari_wsi_mil.store.project import ProjectStore

    return store if isinstance(store, ProjectStore) else ProjectStore(store)


def _open_cohort(cohort):
    from napari_wsi_mil.store.cohort import Cohort, read_cohort

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
    store,
    cohort,
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
    else:
        unknown = [s for s in slide_ids if s not in entries]
        if unknown:
            raise WsiMilError(f"slides not in the cohort: {', '.join(unknown)}")
        missing = [s for s in slide_ids if s not in available]
        if missing:
            raise WsiMilError(
                f"{store.root}: no features '{feature_name}' for slides {', '.join(missing)}"
            )
        chosen, skipped = [entries[s] for s in dict.fromkeys(slide_ids)], []

    parts, dim, n_total = [], None, {}
    yield Progress("loading", 0, len(chosen))
    for i, entry in enumerate(chosen):
        arrays, _ = store.read_result(FEATURES, feature_name, entry.slide_id)
        feats = arrays.get("features")
        where = f"{store.result_dir(FEATURES, feature_name, entry.slide_id)}"
        if feats is None or feats.ndim != 2 or feats.shape[1] < 2:
            raise WsiMilError(f"{where}: 'features' must be an (N, D) array with D >= 2")
        if dim is None:
            dim = feats.shape[1]
        elif feats.shape[1] != dim:
            raise WsiMilError(
                f"{where}: {feats.shape[1]} feature dimensions, other slides have {dim}"
            )
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
        n_total[entry.slide_id] = int(len(feats))
        parts.append(
            (
                entry,
                pick,
                x,
                coords[pick] if coords is not None else np.full((len(pick), 2), -1, np.int64),
            )
        )
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
    if method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(features[train])
        xy = pca.transform(features)
        attrs["explained_variance_ratio"] = [float(v) for v in pca.explained_variance_ratio_]
    else:
        import umap

        reducer = umap.UMAP(n_components=2, random_state=seed).fit(features[train])
        xy = reducer.transform(features)
    yield Progress("fitting", 1, 1)
    return EmbeddingTable(
        xy=xy,
        slide_id=np.concatenate([np.full(len(p[1]), p[0].slide_id) for p in parts]),
        patch_index=np.concatenate([p[1] for p in parts]),
        bag_label=np.concatenate([np.full(len(p[1]), p[0].label) for p in parts]),
        split=split,
        coords=np.concatenate([p[3] for p in parts]),
        method=method,
        attrs=attrs,
    )


def embed_features(
    store,
    cohort,
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


# -- drawing -----------------------------------------------------------------


@dataclass
class EmbeddingPlot:
    """What :func:`draw_embedding` drew: one panel per split present."""

    axes: list
    splits: list[str]
    panel_rows: list[np.ndarray]  # table rows shown in each panel
    modes: list[str]  # "scatter" or "hist" per panel
    highlight_artists: list = field(default_factory=list)


def _panel_splits(table: EmbeddingTable) -> list[str]:
    present = set(table.split.tolist())
    splits = [s for s in ("train", "val", "test") if s in present]
    return splits or ["train"]


def _marker_size(n: int) -> float:
    return float(np.clip(3000.0 / max(n, 1), 1.0, 16.0))


def _hist_image(xy, labels, extent, bins: int) -> np.ndarray:
    """RGBA image: each bin's colour mixes the bag colours by count, alpha ~ log density."""
    from matplotlib.colors import to_rgb

    (x0, x1), (y0, y1) = extent
    counts = []
    for label in (0, 1):
        sel = labels == label
        h, _, _ = np.histogram2d(
            xy[sel, 1], xy[sel, 0], bins=bins, range=[[y0, y1], [x0, x1]]
        )  # rows = y
        counts.append(h)
    total = counts[0] + counts[1]
    rgb = sum(
        np.asarray(to_rgb(BAG_COLORS[k]))[None, None, :] * counts[k][..., None] for k in (0, 1)
    )
    rgb = rgb / np.maximum(total, 1)[..., None]
    alpha = np.log1p(total) / max(np.log1p(total.max()), 1e-9)
    alpha = np.where(total > 0, 0.25 + 0.75 * alpha, 0.0)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def draw_embedding(
    figure,
    table: EmbeddingTable,
    *,
    title: str | None = None,
    hist_threshold: int = HIST_THRESHOLD,
    bins: int = 150,
    background: str | None = None,
    foreground: str | None = None,
    highlight: Sequence[int] | None = None,
    seed: int = 0,
) -> EmbeddingPlot:
    """Draw train / (val /) test panels side by side into ``figure`` (cleared first).

    Points are coloured by bag label; a panel with more than ``hist_threshold``
    points is drawn as a 2-D histogram per label instead (colour mixed by count,
    opacity by log density). ``background`` / ``foreground`` colour the figure and
    its text (the widget passes napari's theme); ``highlight`` rows are drawn on
    top, larger and in :data:`HIGHLIGHT_COLOR`. All panels share their axes.
    """
    from matplotlib.patches import Patch

    figure.clear()
    splits = _panel_splits(table)
    axes = figure.subplots(1, len(splits), sharex=True, sharey=True, squeeze=False)[0]
    bg = background or "white"
    fg = foreground or "black"
    figure.set_facecolor(bg)
    if len(table):
        lo, hi = table.xy.min(axis=0), table.xy.max(axis=0)
    else:
        lo, hi = np.zeros(2, np.float32), np.ones(2, np.float32)
    pad = np.maximum((hi - lo) * 0.05, 1e-3)
    lo, hi = lo - pad, hi + pad
    extent = ((float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1])))
    a_name, b_name = table.axis_names
    evr = table.attrs.get("explained_variance_ratio")
    xlabel = "PC 1" if table.method == "pca" else a_name.upper()
    ylabel = "PC 2" if table.method == "pca" else b_name.upper()
    if evr:
        xlabel += f" ({100 * evr[0]:.1f} % var.)"
        ylabel += f" ({100 * evr[1]:.1f} % var.)"

    rng = np.random.default_rng(seed)
    panel_rows, modes = [], []
    for k, (ax, split) in enumerate(zip(axes, splits, strict=True)):
        rows = np.flatnonzero(table.split == split)
        rows = rows[rng.permutation(len(rows))]  # neither label hides the other
        panel_rows.append(rows)
        n_slides = len(set(table.slide_id[rows].tolist()))
        ax.set_facecolor(bg)
        if len(rows) > hist_threshold:
            modes.append("hist")
            image = _hist_image(table.xy[rows], table.bag_label[rows], extent, bins)
            ax.imshow(
                image,
                origin="lower",
                extent=(*extent[0], *extent[1]),
                aspect="auto",
                interpolation="nearest",
            )
        else:
            modes.append("scatter")
            colors = np.where(table.bag_label[rows] == 1, BAG_COLORS[1], BAG_COLORS[0])
            ax.scatter(
                table.xy[rows, 0],
                table.xy[rows, 1],
                s=_marker_size(len(rows)),
                c=colors,
                alpha=0.6,
                linewidths=0,
                rasterized=True,
            )
        ax.set_xlim(*extent[0])
        ax.set_ylim(*extent[1])
        density = "; 2-D histogram" if modes[-1] == "hist" else ""
        ax.set_title(f"{split} ({len(rows)} patches, {n_slides} slides{density})", color=fg)
        ax.set_xlabel(xlabel, color=fg)
        if k == 0:
            ax.set_ylabel(ylabel, color=fg)
        ax.tick_params(colors=fg)
        for spine in ax.spines.values():
            spine.set_color(fg)
    handles = [
        Patch(
            color=BAG_COLORS[label],
            label=f"{BAG_NAMES[label]} ({int((table.bag_label == label).sum())})",
        )
        for label in (0, 1)
    ]
    legend = axes[0].legend(handles=handles, loc="best", fontsize="small", framealpha=0.6)
    legend.get_frame().set_facecolor(bg)
    for text in legend.get_texts():
        text.set_color(fg)
    if title:
        figure.suptitle(title, color=fg)
    plot = EmbeddingPlot(list(axes), splits, panel_rows, modes)
    plot.highlight_artists = [
        ax.scatter(
            [],
            [],
            s=max(3 * _marker_size(len(rows)), 12),
            c=HIGHLIGHT_COLOR,
            edgecolors=fg,
            linewidths=0.6,
            zorder=5,
        )
        for ax, rows in zip(plot.axes, panel_rows, strict=True)
    ]
    set_highlight(plot, table, highlight)
    return plot


def set_highlight(plot: EmbeddingPlot, table: EmbeddingTable, rows: Sequence[int] | None) -> None:
    """Show ``rows`` of ``table`` highlighted in every panel (None or empty: none)."""
    rows = np.zeros(0, np.int64) if rows is None else np.asarray(rows, np.int64)
    for artist, split in zip(plot.highlight_artists, plot.splits, strict=True):
        mine = rows[table.split[rows] == split] if len(rows) else rows
        artist.set_offsets(table.xy[mine] if len(mine) else np.zeros((0, 2)))


def plot_embedding(
    table: EmbeddingTable,
    out_png: str | os.PathLike,
    *,
    title: str | None = None,
    hist_threshold: int = HIST_THRESHOLD,
    dpi: int = 150,
) -> Path:
    """Save the train / test figure of ``table`` as a PNG (written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_png)
    n_panels = len(_panel_splits(table))
    figure = Figure(figsize=(4.5 * n_panels + 0.5, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    if title is None:
        name = table.attrs.get("feature_name")
        title = f"{table.method.upper()} of patch features" + (f" '{name}'" if name else "")
    draw_embedding(figure, table, title=title, hist_threshold=hist_threshold)
    with atomic_file(out) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, facecolor=figure.get_facecolor())
    return out
