"""The "Extract features" dock widget: an encoder over the project's tiled slides."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, FileEdit, LineEdit, PushButton, SpinBox

from napari_wsi_mil._napari.widgets.job_widget import JobWidget, slide_layers
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tiling_job import slide_id_for


class ExtractWidget(JobWidget):
    """Extract patch features (all tiled slides, or only the slide on screen).

    The encoder is a file from pretraining (or any supported encoder file), or a name
    typed into the encoder field: ``random``, ``imagenet``, ``ciga``, ``uni``,
    ``virchow2``, ... (``wsi-mil encoders`` lists them), ``hf-hub:ORG/NAME`` or a timm
    model name. Named weights are downloaded into the standard caches when online.
    Stain normalisation (Macenko or Reinhard) maps each slide onto a target fitted on a
    reference image or on the slides themselves.
    """

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer, run_text="Extract")
        home = Path.home()
        self.project = FileEdit(label="project", mode="d", value=home / "wsi-mil-project")
        self.encoder = LineEdit(
            label="encoder (name, hf-hub:ORG/NAME or file)", value=str(home / "encoder.safetensors")
        )
        self.encoder_file_button = PushButton(text="Choose encoder file...")
        self.name = LineEdit(label="feature-set name (empty = encoder name)", value="")
        self.batch_size = SpinBox(label="batch size", value=64, min=1, max=4096)
        self.workers = SpinBox(label="loader workers", value=2, min=0, max=64)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.stain = ComboBox(
            label="stain normalisation", choices=["none", "macenko", "reinhard"], value="none"
        )
        self.stain_reference = LineEdit(label="stain reference image (empty = cohort)", value="")
        self.current_only = CheckBox(label="only the slide on screen", value=False)
        self.extend(
            [
                self.project,
                self.encoder,
                self.encoder_file_button,
                self.name,
                self.batch_size,
                self.workers,
                self.device,
                self.stain,
                self.stain_reference,
                self.current_only,
            ]
        )
        self.add_controls()
        self.run_button.changed.connect(self.guard(self.run))
        self.encoder_file_button.changed.connect(self.choose_encoder_file)

    def choose_encoder_file(self) -> None:
        """A file dialog for the encoder field (it also takes names, so it is a text field)."""
        from qtpy.QtWidgets import QFileDialog

        start = self.encoder.value.strip()
        folder = str(Path(start).parent) if start and Path(start).parent.is_dir() else ""
        path, _ = QFileDialog.getOpenFileName(
            self.native, "Encoder file", folder, "Encoders (*.safetensors *.pth *.pt);;All (*)"
        )
        if path:
            self.encoder.value = path

    def run(self) -> None:
        # imported on the main thread (torch's import is not thread-safe under Qt)
        from napari_wsi_mil.features.encoders import default_feature_name
        from napari_wsi_mil.features.extract import extract_features_job

        encoder = self.encoder.value.strip()
        name = self.name.value.strip() or default_feature_name(encoder)
        project = Path(self.project.value)
        only = None
        if self.current_only.value:
            layers = slide_layers(self.viewer)
            if not layers:
                self._on_error(ValueError("open a slide first (File > Open)"))
                return
            only = [slide_id_for(layers[-1].metadata["slide_path"])]
        options = dict(
            batch_size=self.batch_size.value,
            num_workers=self.workers.value,
            device=self.device.value,
        )
        if self.stain.value != "none":
            reference = self.stain_reference.value.strip() or "cohort"
            options.update(stain=self.stain.value, stain_reference=reference)

        def job():
            store = ProjectStore(project)
            ids = only or store.slide_ids()
            return (yield from extract_features_job(store, ids, encoder, name, **options))

        self.start(job, self.show_result)

    def show_result(self, report) -> None:
        note = (
            f"{len(report.extracted)} slides extracted, {len(report.skipped)} already "
            f"done, {report.patches_per_second:.0f} patches/s"
        )
        if report.failed:
            note += f"; failed: {', '.join(report.failed)}"
        self._set_status(note)
