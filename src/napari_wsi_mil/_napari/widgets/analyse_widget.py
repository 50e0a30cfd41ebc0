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
- for a model of more than two classes (the negative class first): the predicted class
  by name, ``"<slide_id> predicted class"`` (a Labels map: the mask's tiles in the
  slide's evidence class, its most probable class but the negative one, coloured per
  class, its name under the pointer) with a legend of the class colours while it is
  visible, and, for models with one attention map per class (CLAM-MB, DSMIL),
  ``"<slide_id> attention: <class>"`` for each class; the attention heatmap is then the
  evidence class's branch, as CLAM's heatmaps show the predicted class's;
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

The widget binds to a Qt-free :class:`~napari_wsi_mil.review.session.SlideReview`
(``widget.review``), which holds the settings and results and runs every non-Qt step;
the widget builds the controls, puts layers into the viewer, reads the painted and
drawn layers and passes their arrays to the review, and reacts to its signals.

Annotations: "Paint annotations" adds a Labels layer over the slide (1 tumour, 2
normal); "Draw annotation shapes" adds a Shapes layer whose new shapes get the class
chosen in "shape class". "Use as tile labels" turns both into tile labels 1/0/-1 of
the slide in the project (``tile_labels/<slide_id>``), which MS-CLAM training and
evaluation read first. "Export" writes QuPath GeoJSON (tiles, mask), the heatmap as
pyramidal OME-TIFF and a PNG snapshot with a legend.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, FileEdit, FloatSlider, Label, PushButton, SpinBox
from matplotlib.backends.qt_compat import _isdeleted

from napari_wsi_mil._napari.layers import (
    Frame,
    analysis_layer_data,
    annotation_layer_data,
    annotation_shapes_layer_data,
    annotation_shapes_world,
    patch_outline_shapes_data,
    patch_view,
    put_layer,
)
from napari_wsi_mil._napari.widgets.colour_bar import ClassLegend, ColourBar
from napari_wsi_mil._napari.widgets.job_widget import JobWidget, slide_layers
from napari_wsi_mil.errors import ParamError
from napari_wsi_mil.mil import DEFAULT_MASK_THRESHOLD
from napari_wsi_mil.review.analyse import suggested_inputs
from napari_wsi_mil.review.heatmap import NORMALISATIONS
from napari_wsi_mil.review.session import HEATMAP_LEGENDS, SHAPE_CLASSES, SlideReview

#: Layer kinds of outlines kept above the result layers (the true lesion, QuPath's).
OUTLINE_KINDS = ("true_lesion", "qupath_annotations")


def _camera(viewer):
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


class AnalyseWidget(JobWidget):
    """Run a trained MIL model on the chosen slide and review its evidence."""

    def __init__(self, napari_viewer):
        from napari_wsi_mil._napari.widgets.gallery import PatchGallery

        super().__init__(napari_viewer, run_text="Analyse slide")
        self.review = SlideReview()
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
        self.class_legend = ClassLegend()
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
        self._review_controls = [self.normalisation, self.threshold, self.k, self.paint_button]
        self._review_controls += [self.shapes_button, self.shape_class, self.labels_button]
        self._review_controls += [self.export_dir, self.export_button]
        self.extend([self.result, self.colour_bar, self.class_legend, *self._review_controls])
        for widget in self._review_controls:
            widget.enabled = False
        self.gallery = PatchGallery(self.guard(self.centre_on_patch))
        self.add_native(self.gallery)
        self._names: dict[str, str] = {}  # what (the layer name after the slide id) -> name

        review = self.review
        for field, setting in [
            (self.model, "model_path"),
            (self.normalisation, "normalisation"),
            (self.threshold, "threshold"),
            (self.k, "gallery_size"),
        ]:
            field.changed.connect(partial(setattr, review, setting))
        review.analysed.connect(self._show)
        review.normalisation_changed.connect(self._refresh)
        review.threshold_changed.connect(self._refresh)
        review.gallery_changed.connect(self._show_gallery)
        review.tile_labels_stored.connect(self._labels_written)
        review.exported_files.connect(self._exported)
        self.run_button.changed.connect(self.guard(self.run))
        self.paint_button.changed.connect(self.guard(self.add_paint_layer))
        self.shapes_button.changed.connect(self.guard(self.add_shapes_layer))
        self.shape_class.changed.connect(self._set_shape_class)
        self.labels_button.changed.connect(self.guard(self.use_as_tile_labels))
        self.export_button.changed.connect(self.guard(self.export))
        napari_viewer.layers.events.inserted.connect(self.slide.reset_choices)
        napari_viewer.layers.events.removed.connect(self.slide.reset_choices)
        napari_viewer.layers.events.removed.connect(self._update_colour_bar)
        napari_viewer.layers.events.moved.connect(self._update_colour_bar)
        self.slide.changed.connect(self._use_suggestions)
        self._use_suggestions()

    def _slide_choices(self, _widget=None) -> list:
        return [(layer.name, layer) for layer in slide_layers(self.viewer)]

    def _use_suggestions(self, value=None) -> None:
        """Fill model and project from a slide layer that names them (the demo sample)."""
        layer = self.slide.value
        model, project = suggested_inputs(layer.metadata) if layer is not None else (None, None)
        if model is not None:
            self.model.value = model
        if project is not None:
            self.project.value = project

    def _slide_layer(self, required: bool = True):
        """The slide layer of the analysis: the chosen one, else one of the same file."""
        path = Path(self.review.require_analysis().slide_path)
        layers = [self.slide.value, *slide_layers(self.viewer)]
        same = [la for la in layers if la is not None and Path(la.metadata["slide_path"]) == path]
        if not same and required:
            raise ParamError(f"open the analysed slide {path.name} again")
        return same[0] if same else None

    # -- analysis ------------------------------------------------------------------
    def run(self) -> None:
        layer = self.slide.value
        if layer is None:
            raise ParamError("open a slide first (File > Open)")
        review = self.review
        review.project, review.encoder = Path(self.project.value), self.encoder.value
        review.device = self.device.value
        self.start(review.analyse_job(layer.metadata["slide_path"]), review.accept_analysis)

    def _show(self, analysis) -> None:
        self._put_result_layers(add=True)
        self._raise_outlines()
        self.viewer.layers.selection.active = self._slide_layer(required=False)
        for widget in self._review_controls:
            widget.enabled = True
        self._set_status(self.review.analysis_note())

    def _refresh(self, value=None) -> None:
        """Follow a new normalisation or threshold of the review."""
        self.normalisation.value = self.review.normalisation
        self.threshold.value = self.review.threshold
        if self.review.analysis is not None:
            self._put_result_layers(add=False)

    def _put_result_layers(self, add: bool) -> None:
        """The result layers at the review's normalisation and threshold: added or updated
        (``add``), else only those still in the viewer updated."""
        review, slide_layer = self.review, self._slide_layer(required=False)
        if slide_layer is not None:
            layers = analysis_layer_data(
                review.analysis,
                Frame.of_layer(slide_layer),
                mode=review.normalisation,
                threshold=review.threshold,
            )
            if add:
                self._names = {}
            for data, kwargs, kind in layers:
                if not add and kwargs["name"] not in self.viewer.layers:
                    continue  # removed by the user
                layer, added = put_layer(self.viewer, data, kwargs, kind)
                what = layer.name.removeprefix(f"{review.analysis.slide_id} ")
                self._names[what] = layer.name
                heatmap = what.partition(": ")[0] in HEATMAP_LEGENDS
                events = ("visible", "contrast_limits", "colormap") if heatmap else ("visible",)
                for event in events if added else ():
                    getattr(layer.events, event).connect(self._update_colour_bar)
        self._update_colour_bar()
        self.result.value = review.summary()

    def _update_colour_bar(self, event=None) -> None:
        """Show the colour bar of the visible heatmap on top (none: hide it)."""
        if _isdeleted(self.root_native_widget):  # the dock is closed; the viewer remains
            return
        names = {
            w: name for w, name in self._names.items() if w.partition(": ")[0] in HEATMAP_LEGENDS
        }
        words = {name: self.review.heatmap_legend(w) for w, name in names.items()}
        self.colour_bar.show_top(self.viewer.layers, words)
        class_map = self._names.get("predicted class")
        shown = class_map in self.viewer.layers and self.viewer.layers[class_map].visible
        self.class_legend.show_classes(
            "predicted class", self.review.class_legend() if shown else []
        )

    def _raise_outlines(self) -> None:
        """Move the outline layers (the gallery patch, true lesions, QuPath annotations)
        to the top of the layer list, in that order: the lesion above all."""
        layers = self.viewer.layers
        for kind in ("gallery_patch", *OUTLINE_KINDS):
            for layer in [la for la in layers if la.metadata.get("kind") == kind]:
                layers.move(layers.index(layer), len(layers))

    # -- gallery -------------------------------------------------------------------
    def _show_gallery(self, gallery) -> None:
        self.gallery.set_patches("top", gallery.top, gallery.top_images, gallery.scores)
        self.gallery.set_patches("bottom", gallery.bottom, gallery.bottom_images, gallery.scores)

    def centre_on_patch(self, index: int) -> None:
        """Centre the view on patch ``index``, zoom so that it is clearly visible and
        outline it (replacing the last outline)."""
        a, slide_layer, camera = (
            self.review.require_analysis(),
            self._slide_layer(),
            _camera(self.viewer),
        )
        canvas = getattr(getattr(self.viewer, "canvas", None), "size", None) or (600, 800)
        camera.center, camera.zoom = patch_view(slide_layer, a.grid, index, canvas)
        name = f"{a.slide_id} gallery patch"
        outline = patch_outline_shapes_data(a.grid, index, slide_layer, name=name)
        if put_layer(self.viewer, *outline)[1]:
            self._raise_outlines()
        self.viewer.layers.selection.active = slide_layer

    # -- annotations ---------------------------------------------------------------
    def add_paint_layer(self) -> None:
        """A Labels layer over the slide for painting: 1 tumour, 2 normal."""
        step, a = self.review.paint_step(), self.review.analysis
        data, kwargs, _ = annotation_layer_data(
            a.slide_size,
            step,
            Frame.of_layer(self._slide_layer()),
            name=f"{a.slide_id} annotations",
            metadata={"slide_id": a.slide_id},
        )
        layer, _ = put_layer(self.viewer, data, kwargs, "labels", replace=False)
        layer.selected_label, layer.brush_size, layer.mode = 1, 8, "paint"
        self.viewer.layers.selection.active = layer
        self._set_status("paint 1 = tumour, 2 = normal; then 'Use as tile labels'")

    def add_shapes_layer(self) -> None:
        """A Shapes layer whose new shapes get the class of "shape class"."""
        sid = self.review.require_analysis().slide_id
        frame = Frame.of_layer(self._slide_layer())
        shapes = annotation_shapes_layer_data(sid, SHAPE_CLASSES, frame)
        layer, _ = put_layer(self.viewer, *shapes, replace=False)
        self._set_shape_class()
        layer.mode = "add_polygon"
        self.viewer.layers.selection.active = layer

    def _set_shape_class(self, value=None) -> None:
        for layer in self._annotation_layers("annotation_shapes"):
            layer.feature_defaults = {"label": self.shape_class.value}

    def _annotation_layers(self, kind: str) -> list:
        sid = self.review.analysis.slide_id if self.review.analysis is not None else None
        return [
            layer
            for layer in self.viewer.layers
            if layer.metadata.get("kind") == kind and layer.metadata.get("slide_id") == sid
        ]

    def use_as_tile_labels(self) -> None:
        """Painted and drawn annotations -> tile labels of the slide in the project."""
        self.review.require_analysis()
        painted = [
            (np.asarray(layer.data).copy(), layer.scale, layer.translate)
            for layer in self._annotation_layers("annotations")
        ]
        shapes = [
            shape
            for layer in self._annotation_layers("annotation_shapes")
            for shape in annotation_shapes_world(layer)
        ]
        frame = Frame.of_layer(self._slide_layer())
        job = self.review.tile_labels_job(painted, shapes, frame.scale, frame.translate)
        self.start(job, self.review.accept_tile_labels)

    def _labels_written(self, labels) -> None:
        self._set_status(self.review.tile_labels_note())

    # -- export --------------------------------------------------------------------
    def export(self) -> None:
        self.start(self.review.export_job(self.export_dir.value), self.review.accept_export)

    def _exported(self, paths) -> None:
        self._set_status(self.review.export_note())
