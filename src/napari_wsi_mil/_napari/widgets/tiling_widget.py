"""The "Tiling" dock widget: tissue mask and patch grid of one slide or a whole cohort."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    FloatSpinBox,
    PushButton,
    SpinBox,
)

from napari_wsi_mil._napari.layers import (
    patch_outline_layer_data,
    place_layer,
    slide_layer_data,
    tissue_mask_layer_data,
)
from napari_wsi_mil._napari.widgets.job_widget import JobWidget, slide_layers
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Progress
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.slide.tiling import TilingParams
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tiling_job import (
    cohort_slides,
    folder_slides,
    slide_id_for,
    tile_slides_job,
    tiled_slide_path,
)
from napari_wsi_mil.wording import counted

#: What "Tile" tiles: the slide layer chosen, every slide of the cohort CSV, or every
#: slide file in a folder.
SOURCES = ("slide on screen", "cohort CSV", "slide folder")


class TilingWidget(JobWidget):
    """Detect tissue and tile into a project: the chosen slide layer (its mask and grid
    are shown), or every slide of the cohort CSV or of a folder in the background, one
    progress step per slide; slides already tiled are kept unless "redo tiled slides".

    "tiled slide" lists the project's tiled slides; "Show tiled slide" opens one (if it
    is not open yet) with its tissue mask and patch grid. The tissue mask layer is
    editable: paint or erase it, then "Re-tile with edited mask" tiles again from it.
    """

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer, run_text="Tile")
        self.source = ComboBox(label="tile", choices=SOURCES, value=SOURCES[0])
        self.slide = ComboBox(label="slide", choices=self._slide_choices)
        self.cohort = FileEdit(
            label="cohort CSV", mode="r", filter="*.csv", value=None, nullable=True
        )
        self.slide_dir = FileEdit(
            label="slide folder",
            mode="d",
            value=None,
            nullable=True,
            tooltip=(
                "slide folder mode: its slide files; cohort mode: where rows without a "
                "path are looked for (<slide_id>.svs, .tiff, ...)"
            ),
        )
        self.overwrite = CheckBox(text="redo tiled slides", value=False)
        self.project = FileEdit(label="project", mode="d", value=Path.home() / "wsi-mil-project")
        self.target_mpp = FloatSpinBox(label="target µm/px", value=0.5, min=0.05, max=64, step=0.05)
        self.patch_size = SpinBox(label="patch size (px)", value=224, min=16, max=4096)
        self.stride = SpinBox(label="stride (px, 0 = patch)", value=0, min=0, max=4096)
        self.min_tissue = FloatSpinBox(label="min tissue", value=0.5, min=0.0, max=1.0, step=0.05)
        self.slide_mpp = FloatSpinBox(
            label="slide µm/px (0 = file)", value=0.0, min=0.0, max=100.0, step=0.01
        )
        self.retile_button = PushButton(text="Re-tile with edited mask", enabled=False)
        self.tiled = ComboBox(label="tiled slide", choices=self._tiled_choices)
        self.show_button = PushButton(text="Show tiled slide")
        self.extend(
            [
                self.source,
                self.slide,
                self.cohort,
                self.slide_dir,
                self.overwrite,
                self.project,
                self.target_mpp,
                self.patch_size,
                self.stride,
                self.min_tissue,
                self.slide_mpp,
            ]
        )
        self.add_controls()
        self.extend([self.retile_button, self.tiled, self.show_button])
        self.run_button.changed.connect(self.guard(self.run))
        self.retile_button.changed.connect(self.guard(self.retile))
        self.show_button.changed.connect(self.guard(self.show_tiled))
        self.source.changed.connect(self._show_source_fields)
        self.project.changed.connect(self.tiled.reset_choices)
        napari_viewer.layers.events.inserted.connect(self.slide.reset_choices)
        napari_viewer.layers.events.removed.connect(self.slide.reset_choices)
        self._mask_layer = None
        self.report = None  # TilingReport of the last cohort or folder run
        self._show_source_fields()

    def _slide_choices(self, _widget=None) -> list:
        return [(layer.name, layer) for layer in slide_layers(self.viewer)]

    def _tiled_choices(self, _widget=None) -> list[str]:

        project = Path(self.project.value)
        if not (project / "project.json").is_file():
            return []
        try:
            return ProjectStore(project).slide_ids()
        except (WsiMilError, OSError, ValueError):  # a damaged project: nothing to list
            return []

    def _show_source_fields(self, value=None) -> None:
        source = self.source.value
        self.slide.visible = source == "slide on screen"
        self.cohort.visible = source == "cohort CSV"
        self.slide_dir.visible = source != "slide on screen"
        self.overwrite.visible = source != "slide on screen"

    def params(self):

        return TilingParams(
            target_mpp=self.target_mpp.value,
            patch_size=self.patch_size.value,
            stride=self.stride.value or None,
            min_tissue=self.min_tissue.value,
            slide_mpp=self.slide_mpp.value or None,
        )

    def run(self) -> None:
        if self.source.value == "slide on screen":
            self.tile_on_screen()
        else:
            self.tile_many()

    # -- the slide on screen --------------------------------------------------------
    def tile_on_screen(self) -> None:
        layer = self.slide.value
        if layer is None:
            self._on_error(ValueError("open a slide first (File > Open)"))
            return
        self._tile_one(layer.metadata["slide_path"], mask=None)

    def retile(self) -> None:
        """Tile the slide of the shown tissue mask again, from the mask as edited."""
        layer = self._mask_layer
        if layer is None or layer not in self.viewer.layers:
            self._on_error(ValueError("show a slide's tissue mask first"))
            return
        self._tile_one(layer.metadata["slide_path"], mask=layer.data.copy())

    def _tile_one(self, path: str, mask) -> None:

        slide_id = slide_id_for(path)
        masks = None if mask is None else {slide_id: mask}
        self.start(
            self._job(Path(self.project.value), slide_id, path, self.params(), masks), self._show
        )

    @staticmethod
    def _job(project_dir: Path, slide_id: str, path: str, params, masks):
        def job():

            store = ProjectStore(project_dir, create=True)
            report = yield from tile_slides_job(
                store, [(slide_id, path)], params, overwrite=True, masks=masks
            )
            return _read_tiling(store, slide_id, report.warnings.get(slide_id, []))

        return job

    # -- a cohort or a folder -------------------------------------------------------
    def tile_many(self) -> None:
        """Tile every slide of the cohort CSV (or the slide folder) in the background."""

        if self.source.value == "cohort CSV":
            if self.cohort.value is None or not Path(self.cohort.value).is_file():
                self._on_error(ValueError("choose a cohort CSV (here or in the Project panel)"))
                return
            slides = cohort_slides(self.cohort.value, self.slide_dir.value)
        else:
            if self.slide_dir.value is None:
                self._on_error(ValueError("choose a slide folder"))
                return
            slides = folder_slides(self.slide_dir.value)
        project, params, overwrite = Path(self.project.value), self.params(), self.overwrite.value

        def job():

            store = ProjectStore(project, create=True)
            return (
                yield from tile_slides_job(
                    store, slides, params, overwrite=overwrite, skip_errors=True
                )
            )

        self.start(job, self._tiled_many)

    def _tiled_many(self, report) -> None:

        self.report = report
        self.tiled.reset_choices()
        if report.tiled and self.tiled.value not in report.tiled:
            self.tiled.value = next(iter(report.tiled))
        patches = sum(report.tiled.values())
        parts = [
            f"tiled {counted(len(report.tiled), 'slide')} ({counted(patches, 'patch', 'patches')})"
        ]
        if report.skipped:
            parts.append(f"{counted(len(report.skipped), 'slide')} already tiled, kept")
        parts.extend(f"{sid}: {'; '.join(w)}" for sid, w in report.warnings.items())
        parts.extend(f"FAILED {sid}: {error}" for sid, error in report.failed.items())
        self._set_status("; ".join(parts))

    # -- showing a tiled slide ------------------------------------------------------
    def show_tiled(self) -> None:
        """Open the chosen tiled slide (unless open) with its tissue mask and patch grid."""
        slide_id = self.tiled.value
        if slide_id is None:
            self._on_error(ValueError("no tiled slide in this project: tile first"))
            return
        project = Path(self.project.value)

        def job():

            yield Progress("reading tiling", 0, 1, message=slide_id)
            tiling = _read_tiling(ProjectStore(project), slide_id, [])
            yield Progress("reading tiling", 1, 1, message=slide_id)
            return tiling

        self.start(job, self._show)

    def _show(self, result) -> None:

        slide, grid, mask, downsample, warnings = result
        with slide:
            path = slide.path.resolve()
            if not any(
                Path(layer.metadata["slide_path"]).resolve() == path
                for layer in slide_layers(self.viewer)
            ):
                data, kwargs, _ = slide_layer_data(slide)
                self.viewer.add_image(data, **kwargs)
            for data, kwargs, _ in (
                tissue_mask_layer_data(slide, mask, downsample),
                patch_outline_layer_data(slide, grid),
            ):
                name = kwargs.pop("name")
                if name in self.viewer.layers:
                    existing = self.viewer.layers[name]
                    existing.data = data
                    existing.metadata = kwargs["metadata"]
                    place_layer(existing, kwargs)
                else:
                    self.viewer.add_labels(data, name=name, **kwargs)
            self._mask_layer = self.viewer.layers[f"{slide.path.stem} tissue"]
        self.viewer.layers.selection.active = self._mask_layer  # ready to be edited
        self.retile_button.enabled = True
        note = f"{len(grid)} patches" + (f"; {'; '.join(warnings)}" if warnings else "")
        self._set_status(note)


def _read_tiling(store: ProjectStore, slide_id: str, warnings: list[str]) -> tuple:
    """``(slide, grid, tissue mask, mask downsample, warnings)`` of a tiled slide."""

    grid, _ = store.read_tiles(slide_id)
    mask, downsample = store.read_tissue_mask(slide_id)
    slide = open_slide(tiled_slide_path(store, slide_id), cache=store)
    return slide, grid, mask, downsample, warnings
