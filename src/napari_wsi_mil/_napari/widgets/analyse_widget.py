"""The "Analyse slide" dock widget: a trained model's evidence on the open slide.

"Analyse slide" runs :func:`~napari_wsi_mil.review.analyse.analyse_slide_job` (tiling and
feature extraction with the model's settings when the project lacks them, then
inference) in a thread worker with one progress bar, and shows:

- the slide probability and predicted class;
- ``"<slide_id> attention"``: an Image heatmap, normalised raw / min-max / percentile
  rank (live), explicit contrast limits, NaN (transparent) off tissue;
- ``"<slide_id> probability"``: the instance-probability heatmap on [0, 1];
- ``"<slide_id> predicted tumour"``: a Labels mask whose threshold is live; choosing a
  model sets the threshold to the model's recorded mask threshold (WENO's fitted bag
  threshold, else 0.5);
- ``"<slide_id> clusters"``: CluSiam clusters when the encoder has a cluster head;
- a colour bar of the heatmap on top among those visible;
- a gallery of the k most and least attended patches; a click centres the viewer on
  the patch and outlines it (``"<slide_id> gallery patch"``, replaced at each click).

Only the attention heatmap starts visible (at half opacity), the others are a click
away in the layer list; outlines of the true lesion (the "Demo cohort" sample) and
QuPath annotations are kept on top of the result layers.

A slide layer whose metadata names a model and a project (``analyse_model``,
``analyse_project``; the "Demo cohort" sample sets them) fills those fields when it is
chosen, so the sample can be analysed at once.

Every layer is a patch-grid raster placed by
:func:`~napari_wsi_mil._napari.layers.raster_transform` over the slide layer.

Annotations: "Paint annotations" adds a Labels layer over the slide (1 tumour, 2
normal); "Draw annotation shapes" adds a Shapes layer whose new shapes get the class
chosen in "shape class". "Use as tile labels" turns both into tile labels 1/0/-1 of
the slide in the project (``tile_labels/<slide_id>``), which MS-CLAM training and
evaluation read first. "Export" writes QuPath GeoJSON (tiles, mask), the heatmap as
pyramidal OME-TIFF and a PNG snapshot with a legend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, FloatSlider, Label, PushButton, SpinBox
from matplotlib.backends.qt_compat import _isdeleted

from napari_wsi_mil._napari.layers import place_layer, slide_layer_frame
from napari_wsi_mil._napari.widgets.colour_bar import ColourBar
from napari_wsi_mil._napari.widgets.job_widget import JobWidget, slide_layers
from napari_wsi_mil.mil import DEFAULT_MASK_THRESHOLD
from napari_wsi_mil.review.heatmap import NORMALISATIONS

SHAPE_CLASSES = ("tumour", "normal")
#: Layer kinds of outlines kept above the result layers (the true lesion, QuPath's).
OUTLINE_KINDS = ("true_lesion", "qupath_annotations")
#: The colour bar's wording of each heatmap: (title, low end, high end).
HEATMAP_WORDS = {
    "attention": ("attention", "least", "most attended"),
    "probability": ("instance P(tumour)", "normal", "tumour"),
}
NORMALISATION_WORDS = {"raw": "raw weights", "minmax": "min-max", "rank": "percentile rank"}


def _camera(viewer):
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


class AnalyseWidget(JobWidget):
    """Run a trained MIL model on the chosen slide and review its evidence."""

    def __init__(self, napari_viewer):
        from napari_wsi_mil._napari.widgets.gallery import PatchGallery

        super().__init__(napari_viewer, run_text="Analyse slide")
        self.slide = ComboBox(label="slide", choices=self._slide_choices)
        self.project = FileEdit(label="project", mode="d", value=Path.home() / "wsi-mil-project")
        self.model = FileEdit(
            label="model", mode="r", filter="*.safetensors", value=None, nullable=True
        )
        self.encoder = FileEdit(label="encoder (if not found)", mode="r", value=None, nullable=True)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.extend([self.slide, self.project, self.model, self.encoder, self.device])
        self.add_controls()

        self.result = Label(value="")
        self.colour_bar = ColourBar()
        self.normalisation = ComboBox(label="attention scale", choices=NORMALISATIONS, value="rank")
        self.threshold = FloatSlider(
            label="mask threshold", value=DEFAULT_MASK_THRESHOLD, min=0.0, max=1.0, step=0.01
        )
        self.k = SpinBox(label="gallery patches", value=8, min=1, max=64)
        self.paint_button = PushButton(text="Paint annotations")
        self.shapes_button = PushButton(text="Draw annotation shapes")
        self.shape_class = ComboBox(label="shape class", choices=SHAPE_CLASSES, value="tumour")
        self.labels_button = PushButton(text="Use as tile labels")
        self.export_dir = FileEdit(label="export folder", mode="d", value=None, nullable=True)
        self.export_button = PushButton(text="Export")
        self._review = [
            self.normalisation,
            self.threshold,
            self.k,
            self.paint_button,
            self.shapes_button,
            self.shape_class,
            self.labels_button,
            self.export_dir,
            self.export_button,
        ]
        self.extend([self.result, self.colour_bar, *self._review])
        for widget in self._review:
            widget.enabled = False
        self.gallery = PatchGallery(self.centre_on_patch)
        self.add_native(self.gallery)

        self.analysis = None  # SlideAnalysis of the last run
        self.tile_labels = None  # the last tile labels stored
        self.exported: list[Path] = []  # the files of the last export
        self._slide_layer = None
        self._names: dict[str, str] = {}  # what -> layer name

        self.run_button.changed.connect(self.guard(self.run))
        self.normalisation.changed.connect(self._update_attention)
        self.threshold.changed.connect(self._update_mask)
        self.k.changed.connect(self._update_gallery)
        self.paint_button.changed.connect(self.add_paint_layer)
        self.shapes_button.changed.connect(self.add_shapes_layer)
        self.shape_class.changed.connect(self._set_shape_class)
        self.labels_button.changed.connect(self.guard(self.use_as_tile_labels))
        self.export_button.changed.connect(self.guard(self.export))
        napari_viewer.layers.events.inserted.connect(self.slide.reset_choices)
        napari_viewer.layers.events.removed.connect(self.slide.reset_choices)
        napari_viewer.layers.events.removed.connect(self._update_colour_bar)
        napari_viewer.layers.events.moved.connect(self._update_colour_bar)
        self.model.changed.connect(self._use_model_mask_threshold)
        self.slide.changed.connect(self._use_suggestions)
        self._use_suggestions()

    def _slide_choices(self, _widget=None) -> list:
        return [(layer.name, layer) for layer in slide_layers(self.viewer)]

    def _use_suggestions(self, value=None) -> None:
        """Fill model and project from a slide layer that names them (the demo sample)."""
        from napari_wsi_mil.review.analyse import suggested_inputs

        layer = self.slide.value
        model, project = suggested_inputs(layer.metadata) if layer is not None else (None, None)
        if model is not None:
            self.model.value = model
        if project is not None:
            self.project.value = project

    def _use_model_mask_threshold(self, value=None) -> None:
        """Start the mask threshold at the chosen model's (0.5 unless it records one)."""
        from napari_wsi_mil.review.analyse import model_mask_threshold_of

        self.threshold.value = model_mask_threshold_of(self.model.value)

    # -- analysis ------------------------------------------------------------------
    def run(self) -> None:
        layer = self.slide.value
        if layer is None:
            self._on_error(ValueError("open a slide first (File > Open)"))
            return
        if self.model.value is None or not Path(self.model.value).is_file():
            self._on_error(ValueError("choose a trained model (RUN_DIR/model.safetensors)"))
            return
        self._slide_layer = layer
        self.start(
            self._job(
                Path(self.project.value),
                layer.metadata["slide_path"],
                Path(self.model.value),
                self.encoder.value,
                self.device.value,
                self.k.value,
            ),
            self._show,
        )

    @staticmethod
    def _job(project, slide_path, model_path, encoder, device, k):
        def job():
            from napari_wsi_mil.review.analyse import analyse_slide_job
            from napari_wsi_mil.review.gallery import build_gallery

            analysis = yield from analyse_slide_job(
                project, slide_path, model_path, encoder=encoder, device=device
            )
            gallery = build_gallery(slide_path, analysis.grid, analysis.attention, k)
            return analysis, gallery

        return job

    def _slide_transform(self) -> tuple[tuple, tuple]:
        scale, translate, _ = slide_layer_frame(self._slide_layer)
        return scale, translate

    def _frame(self) -> dict:
        """The slide layer's translate and units, as the ``*_layer_data`` keywords."""
        _, translate, units = slide_layer_frame(self._slide_layer)
        return {"slide_translate": translate, "slide_units": units}

    def _put_layer(self, what: str, data, kwargs: dict, kind: str):
        """Add a layer or replace the data and placement of the existing one."""
        name = kwargs.pop("name")
        self._names[what] = name
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = data
            place_layer(layer, kwargs)
            if "contrast_limits" in kwargs:
                layer.contrast_limits = kwargs["contrast_limits"]
            layer.metadata = {**layer.metadata, **kwargs.get("metadata", {})}
            return layer
        add = self.viewer.add_image if kind == "image" else self.viewer.add_labels
        layer = add(data, name=name, **kwargs)
        if what in HEATMAP_WORDS:
            for event in ("visible", "contrast_limits", "colormap"):
                getattr(layer.events, event).connect(self._update_colour_bar)
        return layer

    def _show(self, result) -> None:
        from napari_wsi_mil._napari.layers import analysis_layer_data

        analysis, gallery = result
        self.analysis = analysis
        scale, _ = self._slide_transform()
        whats = ["attention", "probability", "mask", "clusters"]
        layers = analysis_layer_data(
            analysis,
            scale,
            mode=self.normalisation.value,
            threshold=self.threshold.value,
            **self._frame(),
        )
        for what, (data, kwargs, kind) in zip(whats, layers, strict=False):
            self._put_layer(what, data, kwargs, kind)
        self._raise_outlines()
        self._update_colour_bar()
        self.viewer.layers.selection.active = self._slide_layer
        for widget in self._review:
            widget.enabled = True
        self._show_gallery(gallery)
        self._set_result()
        note = "; ".join(analysis.warnings)
        self._set_status(f"{len(analysis.grid)} patches analysed" + (f"; {note}" if note else ""))

    def _set_result(self) -> None:
        a = self.analysis
        label = "tumour" if a.prediction else "normal"
        n = int((a.instance_probability >= self.threshold.value).sum())
        self.result.value = (
            f"P(tumour) = {a.probability:.3f} -> {label} (cut-off {a.threshold:.2f})\n"
            f"{n} of {len(a.grid)} tiles >= {self.threshold.value:.2f}"
        )

    def _layer(self, what: str):
        name = self._names.get(what)
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _update_attention(self, mode=None) -> None:
        from napari_wsi_mil._napari.layers import attention_layer_data

        layer = self._layer("attention")
        if self.analysis is None or layer is None:
            return
        mode = self.normalisation.value
        data, kwargs, _ = attention_layer_data(
            self.analysis.grid, self.analysis.attention, (1.0, 1.0), mode=mode
        )
        layer.data = data
        layer.contrast_limits = kwargs["contrast_limits"]
        layer.metadata = {**layer.metadata, "normalisation": mode}
        self._update_colour_bar()

    def _update_colour_bar(self, event=None) -> None:
        """Show the colour bar of the visible heatmap on top (none: hide it)."""
        if _isdeleted(self.root_native_widget):  # the dock is closed; the viewer remains
            return
        heatmaps = {self._names[what]: what for what in HEATMAP_WORDS if what in self._names}
        shown = [
            (heatmaps[layer.name], layer)
            for layer in self.viewer.layers
            if layer.name in heatmaps and layer.visible
        ]
        if not shown:
            self.colour_bar.show_layer(None)
            return
        what, layer = shown[-1]  # the top one
        title, low, high = HEATMAP_WORDS[what]
        if what == "attention":
            title += f" ({NORMALISATION_WORDS[self.normalisation.value]})"
        self.colour_bar.show_layer(layer, title, (low, high))

    def _raise_outlines(self) -> None:
        """Move the outline layers (the gallery patch, true lesions, QuPath annotations)
        to the top of the layer list, in that order: the lesion above all."""
        layers = self.viewer.layers
        kinds = ("gallery_patch", *OUTLINE_KINDS)
        for kind in kinds:
            for layer in [la for la in layers if la.metadata.get("kind") == kind]:
                layers.move(layers.index(layer), len(layers))

    def _update_mask(self, value=None) -> None:
        from napari_wsi_mil._napari.layers import tumour_mask_raster

        layer = self._layer("mask")
        if self.analysis is None or layer is None:
            return
        threshold = float(self.threshold.value)
        layer.data = tumour_mask_raster(
            self.analysis.grid, self.analysis.instance_probability, threshold
        )
        layer.metadata = {**layer.metadata, "threshold": threshold}
        self._set_result()

    # -- gallery -------------------------------------------------------------------
    def _show_gallery(self, gallery) -> None:
        self.gallery.set_patches("top", gallery.top, gallery.top_images, gallery.scores)
        self.gallery.set_patches("bottom", gallery.bottom, gallery.bottom_images, gallery.scores)

    def _update_gallery(self, value=None) -> None:
        if self.analysis is None or self.busy:
            return
        from napari_wsi_mil.review.gallery import build_gallery

        a = self.analysis
        self._show_gallery(build_gallery(a.slide_path, a.grid, a.attention, self.k.value))

    def centre_on_patch(self, index: int) -> None:
        """Centre the view on patch ``index`` and zoom so that it is clearly visible."""
        from napari_wsi_mil.review.gallery import patch_centre_level0

        if self.analysis is None or self._slide_layer is None:
            return
        x, y = patch_centre_level0(self.analysis.grid, index)
        # level-0 continuous coordinate u is napari data coordinate u - 1/2
        world = np.asarray(self._slide_layer.data_to_world((y - 0.5, x - 0.5)))
        camera = _camera(self.viewer)
        camera.center = tuple(world[-2:])
        size = self.analysis.grid.geometry.patch_size_level0 * float(self._slide_layer.scale[-1])
        canvas = getattr(getattr(self.viewer, "canvas", None), "size", None) or (600, 800)
        camera.zoom = min(canvas) / (6 * size)
        self._outline_patch(index)

    def _outline_patch(self, index: int) -> None:
        """Outline patch ``index`` on the slide, replacing the last outline."""
        from napari_wsi_mil._napari.layers import patch_outline_shapes_data

        a = self.analysis
        data, kwargs, _ = patch_outline_shapes_data(
            a.grid, index, self._slide_layer, name=f"{a.slide_id} gallery patch"
        )
        name = kwargs.pop("name")
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = [(data[0], kwargs["shape_type"])]
            place_layer(layer, kwargs)
            layer.metadata = kwargs["metadata"]
        else:
            self.viewer.add_shapes(data, name=name, **kwargs)
            self._raise_outlines()
        self.viewer.layers.selection.active = self._slide_layer

    # -- annotations ---------------------------------------------------------------
    def _need_analysis(self) -> bool:
        if self.analysis is None:
            self._on_error(ValueError("analyse the slide first"))
            return False
        return True

    def add_paint_layer(self) -> None:
        """A Labels layer over the slide for painting: 1 tumour, 2 normal."""
        from napari_wsi_mil._napari.layers import annotation_layer_data

        if not self._need_analysis():
            return
        a = self.analysis
        scale, _ = self._slide_transform()
        step = max(1, a.grid.geometry.stride_level0 // 4)
        data, kwargs, _ = annotation_layer_data(
            a.slide_size,
            step,
            scale,
            name=f"{a.slide_id} annotations",
            metadata={"slide_id": a.slide_id},
            **self._frame(),
        )
        if kwargs["name"] in self.viewer.layers:
            layer = self.viewer.layers[kwargs["name"]]
        else:
            layer = self.viewer.add_labels(data, **kwargs)
        layer.selected_label = 1
        layer.brush_size = 8
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self._set_status("paint 1 = tumour, 2 = normal; then 'Use as tile labels'")

    def add_shapes_layer(self) -> None:
        """A Shapes layer whose new shapes get the class of "shape class"."""
        import pandas as pd

        if not self._need_analysis():
            return
        name = f"{self.analysis.slide_id} annotation shapes"
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
        else:
            layer = self.viewer.add_shapes(
                ndim=2,
                name=name,
                features={"label": pd.Categorical([], categories=list(SHAPE_CLASSES))},
                face_color="label",
                face_color_cycle=["red", "green"],
                edge_color="white",
                opacity=0.4,
                units=self._frame()["slide_units"],
                metadata={"kind": "annotation_shapes", "slide_id": self.analysis.slide_id},
            )
        self._set_shape_class()
        layer.mode = "add_polygon"
        self.viewer.layers.selection.active = layer

    def _set_shape_class(self, value=None) -> None:
        for layer in self._annotation_layers("annotation_shapes"):
            layer.feature_defaults = {"label": self.shape_class.value}

    def _annotation_layers(self, kind: str) -> list:
        sid = self.analysis.slide_id if self.analysis is not None else None
        return [
            layer
            for layer in self.viewer.layers
            if layer.metadata.get("kind") == kind and layer.metadata.get("slide_id") == sid
        ]

    def _shape_polygons(self) -> tuple[list, list]:
        """Level-0 ``(x, y)`` polygons of the annotation shapes: (tumour, normal)."""
        from napari_wsi_mil.review.annotations import ellipse_polygon, world_to_level0

        scale, translate = self._slide_transform()
        tumour, normal = [], []
        for layer in self._annotation_layers("annotation_shapes"):
            labels = (
                layer.features["label"].astype(str).tolist()
                if "label" in layer.features
                else ["tumour"] * len(layer.data)
            )
            for data, shape_type, label in zip(layer.data, layer.shape_type, labels, strict=True):
                if shape_type in ("line", "path"):
                    continue  # no area
                points = np.asarray(data)[:, -2:]
                if shape_type == "ellipse":
                    points = ellipse_polygon(points)
                world = np.array([np.asarray(layer.data_to_world(p))[-2:] for p in points])
                polygon = world_to_level0(world, scale, translate)
                (normal if label == "normal" else tumour).append(polygon)
        return tumour, normal

    def use_as_tile_labels(self) -> None:
        """Painted and drawn annotations -> tile labels of the slide in the project."""
        from napari_wsi_mil.review.annotations import raster_placement

        if not self._need_analysis():
            return
        scale, translate = self._slide_transform()
        painted = [
            (
                np.asarray(layer.data).copy(),
                raster_placement(layer.scale, layer.translate, scale, translate),
            )
            for layer in self._annotation_layers("annotations")
        ]
        tumour, normal = self._shape_polygons()
        if not painted and not tumour and not normal:
            self._on_error(ValueError("paint or draw annotations first"))
            return
        project, a = Path(self.project.value), self.analysis

        def job():
            from napari_wsi_mil.jobs import Progress
            from napari_wsi_mil.review.annotations import (
                combine_tile_labels,
                tile_labels_from_painted,
                tile_labels_from_shapes,
                write_tile_labels,
            )
            from napari_wsi_mil.store.project import ProjectStore

            yield Progress("tile labels", 0, 1)
            sets = [tile_labels_from_painted(a.grid, d, f, o) for d, (f, o) in painted]
            if tumour or normal:
                sets.append(tile_labels_from_shapes(a.grid, tumour, normal))
            labels = combine_tile_labels(*sets)
            write_tile_labels(ProjectStore(project), a.slide_id, labels, "napari")
            yield Progress("tile labels", 1, 1)
            return labels

        self.start(job, self._labels_written)

    def _labels_written(self, labels) -> None:
        self.tile_labels = labels
        self._set_status(
            f"tile labels stored: {int((labels == 1).sum())} tumour, "
            f"{int((labels == 0).sum())} normal, {int((labels == -1).sum())} unknown"
        )

    # -- export --------------------------------------------------------------------
    def export(self) -> None:
        if not self._need_analysis():
            return
        if self.export_dir.value is None:
            self._on_error(ValueError("choose an export folder"))
            return
        folder, a = Path(self.export_dir.value), self.analysis
        mode, threshold = self.normalisation.value, float(self.threshold.value)

        def job():
            from napari_wsi_mil.jobs import Progress
            from napari_wsi_mil.review.export import export_slide_predictions
            from napari_wsi_mil.review.heatmap import tumour_mask
            from napari_wsi_mil.review.snapshot import write_snapshot_png
            from napari_wsi_mil.slide import open_slide

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
            )
            yield Progress("export", 1, 2, message="snapshot")
            label = "tumour" if a.prediction else "normal"
            with open_slide(a.slide_path) as slide:
                paths.append(
                    write_snapshot_png(
                        folder / f"{a.slide_id}.snapshot.png",
                        slide,
                        a.grid,
                        a.attention,
                        mode=mode,
                        mask=tumour_mask(a.instance_probability, threshold),
                        title=f"{a.slide_id}: P(tumour) = {a.probability:.3f} -> {label}",
                    )
                )
            yield Progress("export", 2, 2)
            return paths

        self.start(job, self._exported)

    def _exported(self, paths) -> None:
        self.exported = list(paths)
        self._set_status(f"exported {len(paths)} files to {Path(paths[0]).parent}")
