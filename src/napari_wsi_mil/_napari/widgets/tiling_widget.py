"""The "Tiling" dock widget: tissue mask and patch grid of the slide on screen."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, PushButton, SpinBox

from napari_wsi_mil._napari.widgets.job_widget import JobWidget, slide_layers


class TilingWidget(JobWidget):
    """Detect tissue, tile the chosen slide layer into a project, show mask and grid.

    The tissue mask layer is editable: paint or erase it, then "Re-tile with edited
    mask" tiles again from the painted mask.
    """

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer, run_text="Tile slide")
        self.slide = ComboBox(label="slide", choices=self._slide_choices)
        self.project = FileEdit(label="project", mode="d", value=Path.home() / "wsi-mil-project")
        self.target_mpp = FloatSpinBox(label="target µm/px", value=0.5, min=0.05, max=64, step=0.05)
        self.patch_size = SpinBox(label="patch size (px)", value=224, min=16, max=4096)
        self.stride = SpinBox(label="stride (px, 0 = patch)", value=0, min=0, max=4096)
        self.min_tissue = FloatSpinBox(label="min tissue", value=0.5, min=0.0, max=1.0, step=0.05)
        self.slide_mpp = FloatSpinBox(
            label="slide µm/px (0 = file)", value=0.0, min=0.0, max=100.0, step=0.01
        )
        self.retile_button = PushButton(text="Re-tile with edited mask", enabled=False)
        self.extend(
            [
                self.slide,
                self.project,
                self.target_mpp,
                self.patch_size,
                self.stride,
                self.min_tissue,
                self.slide_mpp,
                self.retile_button,
            ]
        )
        self.add_controls()
        self.run_button.changed.connect(self.guard(lambda: self.run(use_mask=False)))
        self.retile_button.changed.connect(self.guard(lambda: self.run(use_mask=True)))
        napari_viewer.layers.events.inserted.connect(self.slide.reset_choices)
        napari_viewer.layers.events.removed.connect(self.slide.reset_choices)
        self._mask_layer = None

    def _slide_choices(self, _widget=None) -> list:
        return [(layer.name, layer) for layer in slide_layers(self.viewer)]

    def params(self):
        from napari_wsi_mil.slide.tiling import TilingParams

        return TilingParams(
            target_mpp=self.target_mpp.value,
            patch_size=self.patch_size.value,
            stride=self.stride.value or None,
            min_tissue=self.min_tissue.value,
            slide_mpp=self.slide_mpp.value or None,
        )

    def run(self, use_mask: bool) -> None:
        layer = self.slide.value
        if layer is None:
            self._on_error(ValueError("open a slide first (File > Open)"))
            return
        from napari_wsi_mil.store.tiling_job import slide_id_for

        path = layer.metadata["slide_path"]
        slide_id = slide_id_for(path)
        masks = None
        if use_mask and self._mask_layer is not None:
            masks = {slide_id: self._mask_layer.data.copy()}
        self.start(
            self._job(Path(self.project.value), slide_id, path, self.params(), masks), self._show
        )

    @staticmethod
    def _job(project_dir: Path, slide_id: str, path: str, params, masks):
        def job():
            from napari_wsi_mil.slide import open_slide
            from napari_wsi_mil.store.project import ProjectStore
            from napari_wsi_mil.store.tiling_job import tile_slides_job

            store = ProjectStore(project_dir, create=True)
            report = yield from tile_slides_job(
                store, [(slide_id, path)], params, overwrite=True, masks=masks
            )
            grid, _ = store.read_tiles(slide_id)
            mask, downsample = store.read_tissue_mask(slide_id)
            return open_slide(path), grid, mask, downsample, report.warnings.get(slide_id, [])

        return job

    def _show(self, result) -> None:
        from napari_wsi_mil._napari.layers import (
            patch_grid_layer_data,
            place_layer,
            tissue_mask_layer_data,
        )

        slide, grid, mask, downsample, warnings = result
        with slide:
            for data, kwargs, _ in (
                tissue_mask_layer_data(slide, mask, downsample),
                patch_grid_layer_data(slide, grid),
            ):
                name = kwargs.pop("name")
                if name in self.viewer.layers:
                    existing = self.viewer.layers[name]
                    existing.data = data
                    place_layer(existing, kwargs)
                else:
                    self.viewer.add_labels(data, name=name, **kwargs)
            self._mask_layer = self.viewer.layers[f"{slide.path.stem} tissue"]
        self.retile_button.enabled = True
        note = f"{len(grid)} patches" + (f"; {'; '.join(warnings)}" if warnings else "")
        self._set_status(note)
