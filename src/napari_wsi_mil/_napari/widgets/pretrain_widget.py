"""The "Pretrain encoder" dock widget: live loss curve, patches/s and ETA, pause/cancel."""

from __future__ import annotations

import time
from pathlib import Path

from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, PushButton, SpinBox

from napari_wsi_mil._napari.widgets.job_widget import JobWidget, slide_layers
from napari_wsi_mil._napari.widgets.plot_canvas import CurveCanvas
from napari_wsi_mil.pretrain import METHODS


class PretrainWidget(JobWidget):
    """Pretrain a patch encoder on a tiled project with the cohort's bag labels.

    Defaults follow the papers (see ``PretrainConfig``); a learning rate of 0 means the
    method's default scaled by the batch size. Cancel keeps the last epoch checkpoint,
    from which ``wsi-mil pretrain --resume`` continues. For CluSiam encoders, "Show
    clusters" colours the current slide's patches by cluster.
    """

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer, run_text="Train")
        home = Path.home()
        self.project = FileEdit(label="project", mode="d", value=home / "wsi-mil-project")
        self.cohort = FileEdit(
            label="cohort CSV", mode="r", filter="*.csv", value=home / "cohort.csv"
        )
        self.method = ComboBox(label="method", choices=list(METHODS), value="weaksupcon")
        self.epochs = SpinBox(label="epochs", value=10, min=1, max=10_000)
        self.steps = SpinBox(label="steps / epoch", value=50, min=1, max=1_000_000)
        self.batch_size = SpinBox(label="batch size", value=64, min=2, max=8192, step=2)
        self.lr = FloatSpinBox(
            label="learning rate (0 = default)", value=0.0, min=0.0, max=10.0, step=0.001
        )
        self.init = ComboBox(label="init", choices=["random", "imagenet"], value="random")
        self.image_size = SpinBox(label="view size (px)", value=224, min=16, max=1024)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.out = FileEdit(
            label="encoder file",
            mode="w",
            filter="*.safetensors",
            value=home / "encoder.safetensors",
        )
        self.pause_button = PushButton(text="Pause", enabled=False)
        self.clusters_button = PushButton(text="Show clusters on slide")
        self.extend(
            [
                self.project,
                self.cohort,
                self.method,
                self.epochs,
                self.steps,
                self.batch_size,
                self.lr,
                self.init,
                self.image_size,
                self.device,
                self.out,
            ]
        )
        self.add_controls()
        self.extend([self.pause_button, self.clusters_button])
        self.canvas = CurveCanvas(napari_viewer, xlabel="step", ylabel="loss")
        self.add_native(self.canvas)
        self.run_button.changed.connect(self.run)
        self.pause_button.changed.connect(self.toggle_pause)
        self.clusters_button.changed.connect(self.show_clusters)
        self._started = 0.0
        self._paused = False

    def config(self):
        from napari_wsi_mil.pretrain.trainer import PretrainConfig

        return PretrainConfig(
            method=self.method.value,
            epochs=self.epochs.value,
            steps_per_epoch=self.steps.value,
            batch_size=self.batch_size.value,
            lr=self.lr.value or None,
            init=self.init.value,
            image_size=self.image_size.value,
            device=self.device.value,
        )

    def run(self) -> None:
        project, cohort, out = Path(self.project.value), Path(self.cohort.value), self.out.value
        config = self.config()

        def job():
            from napari_wsi_mil.pretrain.trainer import pretrain_job
            from napari_wsi_mil.store.cohort import read_cohort
            from napari_wsi_mil.store.project import ProjectStore

            return (
                yield from pretrain_job(ProjectStore(project), read_cohort(cohort), config, out)
            )

        self.canvas.clear()
        self._started = time.perf_counter()
        self.start(job, self._finished)
        self.pause_button.enabled = self.busy

    def toggle_pause(self) -> None:
        if self.worker is not None:
            self._paused = not self._paused
            if self._paused:
                self.worker.pause()  # takes effect at the next step
            else:
                self.worker.resume()
            self.pause_button.text = "Resume" if self._paused else "Pause"
            self._set_status("paused" if self._paused else "running")

    def _on_progress(self, event) -> None:
        super()._on_progress(event)
        info = event.info or {}
        if "loss" not in info:
            return
        config_steps = self.steps.value
        step = info["epoch"] * config_steps + info["step"] + 1
        self.canvas.add_point("loss", step, info["loss"])
        if step % 5 == 0 or step == 1:
            self.canvas.redraw()
        total = self.epochs.value * config_steps
        elapsed = time.perf_counter() - self._started
        eta = elapsed / step * (total - step)
        self._set_status(
            f"{event.stage} step {event.done}/{event.total}: "
            f"loss {info['loss']:.4f}, {info['patches_per_second']:.0f} "
            f"patches/s, ETA {eta / 60:.1f} min"
        )

    def _on_finished(self) -> None:
        super()._on_finished()
        self.canvas.redraw()
        self.pause_button.enabled = False
        self.pause_button.text = "Pause"
        self._paused = False

    def _finished(self, result) -> None:
        """Report the encoder file and every warning of the run (e.g. collapse)."""
        from napari.utils.notifications import show_warning

        for warning in result.warnings:
            show_warning(warning)
        warnings = "".join(f"WARNING: {w} " for w in result.warnings)
        self._set_status(f"{warnings}encoder written: {result.encoder_path}")

    def show_clusters(self) -> None:
        layers = slide_layers(self.viewer)
        if not layers:
            self._on_error(ValueError("open a slide first (File > Open)"))
            return
        from napari_wsi_mil.store.tiling_job import slide_id_for

        layer = layers[-1]
        path = layer.metadata["slide_path"]
        slide_id = slide_id_for(path)
        from napari_wsi_mil.features.clusters import slide_clusters_job
        from napari_wsi_mil.slide import open_slide
        from napari_wsi_mil.store.project import ProjectStore

        project, encoder = Path(self.project.value), Path(self.out.value)

        def job():
            store = ProjectStore(project)
            clusters = yield from slide_clusters_job(store, slide_id, encoder, num_workers=0)
            grid, _ = store.read_tiles(slide_id)
            return open_slide(path), grid, clusters

        self.start(job, self._show_clusters)

    def _show_clusters(self, result) -> None:
        from napari_wsi_mil._napari.layers import patch_grid_layer_data

        slide, grid, clusters = result
        with slide:
            data, kwargs, _ = patch_grid_layer_data(
                slide, grid, clusters + 1, name=f"{slide.path.stem} clusters"
            )
        name = kwargs.pop("name")
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_labels(data, name=name, **kwargs)
        self._set_status(f"{len(set(clusters.tolist()))} clusters occupied")
