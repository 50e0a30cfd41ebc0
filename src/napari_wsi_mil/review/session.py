"""The review of one slide as a Qt-free model: what "Analyse slide" shows and does.

:class:`SlideReview` holds the settings of a review (project, model file, encoder,
device, attention normalisation, mask threshold, gallery size) and its results (the
last :class:`~napari_wsi_mil.review.analyse.SlideAnalysis`, its patch gallery, the last
stored tile labels, the last exported files). It announces every change through psygnal
signals, so a view (the napari dock widget) only reacts; driven from Python it needs no
Qt and no viewer.

Each heavy step is a pair: ``*_job`` checks its inputs at once (a
:class:`~napari_wsi_mil.errors.ParamError`), then returns a job that computes and
writes without touching the review; ``accept_*`` takes the job's result into the
review and emits. A widget runs the job in a thread and hands the result to
``accept_*`` on the main thread; :meth:`SlideReview.analyse`,
:meth:`~SlideReview.store_tile_labels` and :meth:`~SlideReview.export` do both at once
for Python callers.

Annotations arrive as plain arrays in the viewer's world coordinates over the slide
layer (whose ``scale`` and ``translate`` are the *slide frame*): painted rasters with
their layer's scale and translate (1 tumour, 2 normal), and shapes as world ``(y, x)``
vertices with their shape type and class.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from psygnal import Signal

from napari_wsi_mil.errors import ParamError
from napari_wsi_mil.jobs import Job, Progress, run_job
from napari_wsi_mil.mil import DEFAULT_MASK_THRESHOLD
from napari_wsi_mil.review.analyse import SlideAnalysis, analyse_slide_job, model_mask_threshold_of
from napari_wsi_mil.review.annotations import (
    combine_tile_labels,
    ellipse_polygon,
    raster_placement,
    tile_labels_from_painted,
    tile_labels_from_shapes,
    world_to_level0,
    write_tile_labels,
)
from napari_wsi_mil.review.export import (
    class_attention_by_name,
    export_slide_predictions,
    tile_classes,
)
from napari_wsi_mil.review.gallery import Gallery, build_gallery
from napari_wsi_mil.review.heatmap import NORMALISATIONS, class_colour, tumour_mask
from napari_wsi_mil.review.snapshot import write_snapshot_png
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.store.project import ProjectStore

#: Classes of drawn annotation shapes; any other class counts as tumour.
SHAPE_CLASSES = ("tumour", "normal")

#: The legend of each heatmap: (title, low end, high end).
HEATMAP_LEGENDS = {
    "attention": ("attention", "least", "most attended"),
    "probability": ("instance P(tumour)", "normal", "tumour"),
}
NORMALISATION_WORDS = {"raw": "raw weights", "minmax": "min-max", "rank": "percentile rank"}

#: A painted raster: ``(labels, layer_scale, layer_translate)`` (1 tumour, 2 normal).
Painted = tuple[np.ndarray, Sequence[float], Sequence[float]]
#: A drawn shape: ``(world (y, x) vertices, napari shape type, class)``.
Shape = tuple[np.ndarray, str, str]
_OnProgress = Callable[[Progress], None] | None


def shape_polygons(
    shapes: Sequence[Shape], slide_scale, slide_translate
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Level-0 ``(x, y)`` polygons of drawn shapes, ``(tumour, normal)``; lines and paths
    (no area) are left out, ellipses become 64-gons."""
    tumour, normal = [], []
    for world, shape_type, label in shapes:
        if shape_type in ("line", "path"):
            continue
        points = np.asarray(world, np.float64)[:, -2:]
        if shape_type == "ellipse":  # an affine image of an ellipse is one
            points = ellipse_polygon(points)
        polygon = world_to_level0(points, slide_scale, slide_translate)
        (normal if label == "normal" else tumour).append(polygon)
    return tumour, normal


def tile_labels_job(
    project: ProjectStore,
    analysis: SlideAnalysis,
    painted: Sequence[Painted],
    shapes: Sequence[Shape],
    slide_scale,
    slide_translate,
) -> Job[np.ndarray]:
    """Painted and drawn annotations -> tile labels 1/0/-1 of the analysed slide, stored
    as ``tile_labels/<slide_id>`` (source ``"napari"``). Returns the labels."""
    yield Progress("tile labels", 0, 1)
    grid = analysis.grid
    sets = [
        tile_labels_from_painted(grid, data, *raster_placement(s, t, slide_scale, slide_translate))
        for data, s, t in painted
    ]
    tumour, normal = shape_polygons(shapes, slide_scale, slide_translate)
    if tumour or normal:
        sets.append(tile_labels_from_shapes(grid, tumour, normal))
    labels = combine_tile_labels(*sets)
    write_tile_labels(project, analysis.slide_id, labels, "napari")
    yield Progress("tile labels", 1, 1)
    return labels


def export_analysis_job(
    analysis: SlideAnalysis, folder: str | os.PathLike, threshold: float, mode: str = "rank"
) -> Job[list[Path]]:
    """Write the analysis to ``folder``: QuPath GeoJSON of the tiles and of the mask cut
    at ``threshold`` (class names of a multi-class model), the heatmaps as OME-TIFF
    (attention, and each class's when the model has them, normalised with ``mode``) and
    a PNG snapshot with a legend. Returns the written paths."""

    a, folder = analysis, Path(folder)
    yield Progress("export", 0, 2, message="GeoJSON, OME-TIFF")
    paths = export_slide_predictions(
        a.grid,
        a.attention,
        a.instance_probability,
        threshold,
        a.slide_id,
        geojson_dir=folder,
        heatmap_dir=folder,
        attention_mode=mode,
        classes=tile_classes(a.classes, a.class_probability),
        class_attention=class_attention_by_name(a.classes, a.class_attention),
    )
    yield Progress("export", 1, 2, message="snapshot")
    with open_slide(a.slide_path) as slide:
        paths.append(
            write_snapshot_png(
                folder / f"{a.slide_id}.snapshot.png",
                slide,
                a.grid,
                a.attention,
                mode=mode,
                mask=tumour_mask(a.instance_probability, threshold),
                title=f"{a.slide_id}: {a.call()}",
            )
        )
    yield Progress("export", 2, 2)
    return paths


class SlideReview:
    """The settings and results of reviewing one slide with a trained MIL model.

    Setting ``model_path`` starts ``threshold`` at the model's recorded mask threshold;
    setting ``gallery_size`` rebuilds the gallery of the current analysis.
    """

    #: A new analysis was accepted (its SlideAnalysis).
    analysed = Signal(object)
    #: The attention normalisation changed (its name).
    normalisation_changed = Signal(str)
    #: The mask threshold changed (its value).
    threshold_changed = Signal(float)
    #: The gallery changed (the new Gallery).
    gallery_changed = Signal(object)
    #: Tile labels were stored (the labels).
    tile_labels_stored = Signal(object)
    #: Files were exported (their paths).
    exported_files = Signal(list)

    def __init__(
        self,
        project: str | os.PathLike | None = None,
        model_path: str | os.PathLike | None = None,
        *,
        encoder: str | os.PathLike | None = None,
        device: str = "auto",
        normalisation: str = "rank",
        gallery_size: int = 8,
    ) -> None:
        self.project = Path(project) if project is not None else None
        self.encoder = encoder
        self.device = device
        self._model_path: Path | None = None
        self._threshold = DEFAULT_MASK_THRESHOLD
        self._normalisation = "rank"
        self.normalisation = normalisation
        self._gallery_size = int(gallery_size)
        self.analysis: SlideAnalysis | None = None
        self.gallery: Gallery | None = None
        self.tile_labels: np.ndarray | None = None  # the last labels stored
        self.exported: list[Path] = []  # the files of the last export
        self.model_path = model_path

    # -- settings --------------------------------------------------------------
    @property
    def model_path(self) -> Path | None:
        return self._model_path

    @model_path.setter
    def model_path(self, value: str | os.PathLike | None) -> None:
        self._model_path = Path(value) if value is not None else None
        self.threshold = model_mask_threshold_of(value)

    @property
    def threshold(self) -> float:
        """Instance probability from which a tile is in the predicted tumour mask."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if float(value) != self._threshold:
            self._threshold = float(value)
            self.threshold_changed.emit(self._threshold)

    @property
    def normalisation(self) -> str:
        """How attention is scaled for showing and exporting (raw, minmax, rank)."""
        return self._normalisation

    @normalisation.setter
    def normalisation(self, value: str) -> None:
        if value not in NORMALISATIONS:
            raise ParamError(f"attention normalisation {value!r}: choose one of {NORMALISATIONS}")
        if value != self._normalisation:
            self._normalisation = value
            self.normalisation_changed.emit(value)

    @property
    def gallery_size(self) -> int:
        """Patches shown among the most and among the least attended."""
        return self._gallery_size

    @gallery_size.setter
    def gallery_size(self, value: int) -> None:
        if int(value) == self._gallery_size:
            return
        self._gallery_size = int(value)
        a = self.analysis
        if a is not None:
            self.gallery = build_gallery(a.slide_path, a.grid, a.attention, self._gallery_size)
            self.gallery_changed.emit(self.gallery)

    # -- what to show ----------------------------------------------------------
    def summary(self) -> str:
        """Two lines: the slide's probability and class, the tiles in the mask."""
        a = self.require_analysis()
        n = int((a.instance_probability >= self.threshold).sum())
        if a.is_multiclass:  # the most probable class is called: no cut-off
            evidence = a.classes[a.evidence_class]
            return f"{a.call()}\n{n} of {len(a.grid)} tiles >= {self.threshold:.2f}: {evidence}"
        return (
            f"{a.call()} (cut-off {a.threshold:.2f})\n"
            f"{n} of {len(a.grid)} tiles >= {self.threshold:.2f}"
        )

    def heatmap_legend(self, what: str) -> tuple[str, str, str]:
        """``(title, low end, high end)`` of heatmap ``what`` (attention: its scale):
        ``attention``, ``probability`` or one class's attention, ``attention: <class>``."""
        kind, _, of_class = what.partition(": ")
        title, low, high = HEATMAP_LEGENDS[kind]
        a = self.analysis
        if a is not None and a.is_multiclass:
            if kind == "probability":
                negative = a.classes[0]
                title, low, high = f"instance P(not {negative})", negative, f"not {negative}"
            elif not of_class and a.class_attention is not None:
                of_class = a.classes[a.evidence_class]  # the branch models show
        if of_class:
            title += f": {of_class}"
        if kind == "attention":
            title += f" ({NORMALISATION_WORDS[self.normalisation]})"
        return title, low, high

    def class_legend(self) -> list[tuple[str, tuple[int, int, int]]]:
        """``(name, RGB 0-255)`` of each class of a multi-class analysis's predicted-class
        map (empty for a binary one)."""
        a = self.require_analysis()
        if not a.is_multiclass:
            return []
        return [(name, class_colour(k)) for k, name in enumerate(a.classes)]

    def analysis_note(self) -> str:
        """What the last analysis did, with its warnings."""
        a = self.require_analysis()
        return "; ".join([f"{len(a.grid)} patches analysed", *a.warnings])

    def paint_step(self) -> int:
        """Level-0 pixels per pixel of a paint raster: a quarter of the patch stride."""
        return max(1, self.require_analysis().grid.geometry.stride_level0 // 4)

    def require_analysis(self) -> SlideAnalysis:
        """The current analysis (a ParamError without one)."""
        if self.analysis is None:
            raise ParamError("analyse the slide first")
        return self.analysis

    # -- jobs --------------------------------------------------------------------
    def analyse_job(self, slide_path: str | os.PathLike) -> Job[tuple[SlideAnalysis, Gallery]]:
        """Analyse a slide with the model (see ``analyse_slide_job``) and build its
        gallery; returns both, for :meth:`accept_analysis`."""
        if self.model_path is None or not self.model_path.is_file():
            raise ParamError("choose a trained model (RUN_DIR/model.safetensors)")
        if self.project is None:
            raise ParamError("choose a project folder")
        args = (self.project, slide_path, self.model_path)
        options = {"encoder": self.encoder, "device": self.device}

        def job():
            analysis = yield from analyse_slide_job(*args, **options)
            k = self.gallery_size  # read at the end: it may change while the job runs
            return analysis, build_gallery(slide_path, analysis.grid, analysis.attention, k)

        return job()

    def accept_analysis(self, result: tuple[SlideAnalysis, Gallery]) -> None:
        self.analysis, self.gallery = result
        self.analysed.emit(self.analysis)
        self.gallery_changed.emit(self.gallery)

    def tile_labels_job(
        self,
        painted: Sequence[Painted],
        shapes: Sequence[Shape],
        slide_scale=(1.0, 1.0),
        slide_translate=(0.0, 0.0),
    ) -> Job[np.ndarray]:
        """:func:`tile_labels_job` for the analysed slide in the project."""
        analysis = self.require_analysis()
        if not len(painted) and not len(shapes):
            raise ParamError("paint or draw annotations first")
        if self.project is None:
            raise ParamError("choose a project folder")
        project = ProjectStore(self.project)
        return tile_labels_job(project, analysis, painted, shapes, slide_scale, slide_translate)

    def accept_tile_labels(self, labels: np.ndarray) -> None:
        self.tile_labels = labels
        self.tile_labels_stored.emit(labels)

    def tile_labels_note(self) -> str:
        """What the last stored tile labels say."""
        counts = [int((self.tile_labels == v).sum()) for v in (1, 0, -1)]
        return "tile labels stored: {} tumour, {} normal, {} unknown".format(*counts)

    def export_job(self, folder: str | os.PathLike | None) -> Job[list[Path]]:
        """:func:`export_analysis_job` at the review's threshold and normalisation."""
        analysis = self.require_analysis()
        if folder is None:
            raise ParamError("choose an export folder")
        return export_analysis_job(analysis, folder, self.threshold, self.normalisation)

    def accept_export(self, paths: Sequence[Path]) -> None:
        self.exported = list(paths)
        self.exported_files.emit(self.exported)

    def export_note(self) -> str:
        """Where the last export went."""
        return f"exported {len(self.exported)} files to {Path(self.exported[0]).parent}"

    # -- driving from Python -------------------------------------------------------
    def analyse(self, slide_path: str | os.PathLike, on_progress: _OnProgress = None):
        """Run :meth:`analyse_job` and accept it; returns the SlideAnalysis."""
        self.accept_analysis(run_job(self.analyse_job(slide_path), on_progress))
        return self.analysis

    def store_tile_labels(
        self, painted=(), shapes=(), slide_scale=(1.0, 1.0), slide_translate=(0.0, 0.0)
    ) -> np.ndarray:
        """Run :meth:`tile_labels_job` and accept it; returns the labels."""
        job = self.tile_labels_job(painted, shapes, slide_scale, slide_translate)
        self.accept_tile_labels(run_job(job))
        return self.tile_labels

    def export(self, folder: str | os.PathLike, on_progress: _OnProgress = None) -> list[Path]:
        """Run :meth:`export_job` and accept it; returns the written paths."""
        self.accept_export(run_job(self.export_job(folder), on_progress))
        return self.exported
