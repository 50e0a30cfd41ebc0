"""The "Pretrain encoder" dock widget: presets, live loss and spread curves, patches/s and
ETA, pause/cancel, collapse warnings worded with its own fields."""

from __future__ import annotations

import time
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, PushButton, SpinBox

from napari_wsi_mil._napari.layers import patch_grid_layer_data
from napari_wsi_mil._napari.widgets.job_widget import JobWidget, slide_layers
from napari_wsi_mil._napari.widgets.plot_canvas import CurveCanvas
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Progress
from napari_wsi_mil.pretrain import METHODS
from napari_wsi_mil.pretrain.presets import PRESETS, preset_settings
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.store.cohort import read_cohort
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tiling_job import slide_id_for

NO_PRESET = "none"


class PretrainWidget(JobWidget):
    """Pretrain a patch encoder on a tiled project with the cohort's bag labels.

    Defaults follow the papers (see ``PretrainConfig``); a learning rate of 0 means the
    method's default scaled by the batch size. Choosing a preset fills the fields with
    its settings, which can then be changed. The projection spread is plotted beside the
    loss (for WeakSupCon per bag group); a run that collapses stops with advice naming
    this widget's fields ("Apply advice" sets them), unless "allow collapse" is ticked.
    Cancel keeps the last epoch checkpoint,
    from which ``wsi-mil pretrain --resume`` continues. For CluSiam encoders, "Show
    clusters" colours the current slide's patches by cluster.
    """

    def __init__(self, napari_viewer):
        from napari_wsi_mil.features.encoder_cards import RESNET18_CARDS

        super().__init__(napari_viewer, run_text="Train")
        home = Path.home()
        self.project = FileEdit(label="project", mode="d", value=home / "wsi-mil-project")
        self.cohort = FileEdit(
            label="cohort CSV", mode="r", filter="*.csv", value=home / "cohort.csv"
        )
        from napari_wsi_mil.pretrain.augment import RECIPES
        from napari_wsi_mil.pretrain.models import TRUNK_STAGES

        self.preset = ComboBox(label="preset", choices=[NO_PRESET, *PRESETS], value=NO_PRESET)
        self.method = ComboBox(label="method", choices=list(METHODS), value="weaksupcon")
        self.epochs = SpinBox(label="epochs", value=10, min=1, max=10_000)
        self.steps = SpinBox(label="steps / epoch", value=50, min=1, max=1_000_000)
        self.batch_size = SpinBox(label="batch size", value=64, min=2, max=8192, step=2)
        self.lr = FloatSpinBox(
            label="learning rate (0 = default)", value=0.0, min=0.0, max=10.0, step=0.001
        )
        self.init = ComboBox(label="init", choices=list(RESNET18_CARDS), value="random")
        self.image_size = SpinBox(label="view size (px)", value=224, min=16, max=1024)
        self.train_from = ComboBox(label="train from", choices=list(TRUNK_STAGES), value="conv1")
        self.augment = ComboBox(label="augmentation", choices=list(RECIPES), value="histology")
        self.warmup = FloatSpinBox(label="warm-up epochs", value=1.0, min=0.0, max=1000, step=0.5)
        self.negative_weight = FloatSpinBox(
            label="negative-group weight", value=1.0, min=0.0, max=100.0, step=0.05
        )
        self.allow_collapse = CheckBox(label="allow collapse", value=False)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.out = FileEdit(
            label="encoder file",
            mode="w",
            filter="*.safetensors",
            value=home / "encoder.safetensors",
        )
        self.pause_button = PushButton(text="Pause", enabled=False)
        self.clusters_button = PushButton(text="Show clusters on slide", visible=False)
        self.estimate_button = PushButton(text="Estimate time")
        self.advice_button = PushButton(text="Apply advice", enabled=False)
        self.extend(
            [
                self.project,
                self.cohort,
                self.preset,
                self.method,
                self.epochs,
                self.steps,
                self.batch_size,
                self.lr,
                self.init,
                self.image_size,
                self.train_from,
                self.augment,
                self.warmup,
                self.negative_weight,
                self.allow_collapse,
                self.device,
                self.out,
            ]
        )
        self.add_controls()
        self.extend(
            [self.estimate_button, self.pause_button, self.advice_button, self.clusters_button]
        )
        self.canvas = CurveCanvas(napari_viewer, xlabel="step", ylabel="loss")
        self.spread_canvas = CurveCanvas(napari_viewer, xlabel="step", ylabel="spread")
        self.add_native(self.canvas)
        self.add_native(self.spread_canvas)
        self._advice: dict[str, object] = {}
        self.preset.changed.connect(self.apply_preset)
        self.advice_button.changed.connect(self.apply_advice)
        self.run_button.changed.connect(self.guard(self.run))
        self.pause_button.changed.connect(self.toggle_pause)
        self.clusters_button.changed.connect(self.guard(self.show_clusters))
        self.estimate_button.changed.connect(self.guard(self.estimate))
        self.method.changed.connect(self._show_clusters_button)
        self._started = 0.0
        self._paused = False

    #: ``PretrainConfig`` field -> this widget's field attribute.
    FIELDS = {
        "preset": "preset",
        "method": "method",
        "epochs": "epochs",
        "steps_per_epoch": "steps",
        "batch_size": "batch_size",
        "lr": "lr",
        "init": "init",
        "image_size": "image_size",
        "train_from": "train_from",
        "augment": "augment",
        "warmup_epochs": "warmup",
        "negative_weight": "negative_weight",
        "allow_collapse": "allow_collapse",
        "device": "device",
    }

    def field_labels(self) -> dict[str, str]:
        """``PretrainConfig`` field -> the label the user sees, quoted."""
        return {k: f'"{getattr(self, a).label}"' for k, a in self.FIELDS.items()}

    def apply_preset(self, name: str | None = None) -> None:
        """Fill the fields a preset sets (its other settings have no field here)."""

        name = self.preset.value
        settings = preset_settings(None if name == NO_PRESET else name)
        for key, value in settings.items():
            if key in self.FIELDS and key != "preset":
                getattr(self, self.FIELDS[key]).value = value

    def apply_advice(self) -> None:
        """Set the fields a collapse suggested (the first suggestion: the preset, or else
        the learning rate and negative-group weight)."""
        advice = dict(self._advice)
        if "preset" in advice:
            self.preset.value = advice["preset"]  # fills its fields
            self.apply_preset()
        else:
            for key, value in advice.items():
                if key != "allow_collapse" and key in self.FIELDS:
                    getattr(self, self.FIELDS[key]).value = value
        self.advice_button.enabled = False

    def config(self):
        from napari_wsi_mil.pretrain.trainer import PretrainConfig

        preset = None if self.preset.value == NO_PRESET else self.preset.value
        hidden = {k: v for k, v in preset_settings(preset).items() if k not in self.FIELDS}
        return PretrainConfig(
            **hidden,
            preset=preset,
            method=self.method.value,
            epochs=self.epochs.value,
            steps_per_epoch=self.steps.value,
            batch_size=self.batch_size.value,
            lr=self.lr.value or None,
            init=self.init.value,
            image_size=self.image_size.value,
            train_from=self.train_from.value,
            augment=self.augment.value,
            warmup_epochs=self.warmup.value,
            negative_weight=self.negative_weight.value,
            allow_collapse=self.allow_collapse.value,
            device=self.device.value,
        )

    def run(self) -> None:
        project, cohort, out = Path(self.project.value), Path(self.cohort.value), self.out.value
        config = self.config()

        def job():
            from napari_wsi_mil.pretrain.trainer import pretrain_job

            return (
                yield from pretrain_job(ProjectStore(project), read_cohort(cohort), config, out)
            )

        self.canvas.clear()
        self.spread_canvas.clear()
        self._advice = {}
        self.advice_button.enabled = False
        self._started = time.perf_counter()
        self.start(job, self.show_result)
        self.pause_button.enabled = self.busy

    def estimate(self) -> None:
        """Time a few steps at these settings in the background; the status says how
        long the run and the cpu-quick preset would take here."""
        config = self.config()

        def job():
            from napari_wsi_mil.pretrain.estimate import describe_estimate

            yield Progress("timing a few steps", 0, None)
            return describe_estimate(config)

        self.start(job, self._set_status)

    def _show_clusters_button(self, method=None) -> None:
        """ "Show clusters on slide" is there for CluSiam encoders only (they have clusters)."""
        self.clusters_button.visible = self.method.value == "clusiam"

    def toggle_pause(self) -> None:
        if self.worker is not None:
            self._paused = not self._paused
            if self._paused:
                self.worker.pause()  # takes effect at the next step
            else:
                self.worker.resume()
            self.pause_button.text = "Resume" if self._paused else "Pause"
            self._set_status("paused" if self._paused else "running")

    def show_progress(self, event) -> None:
        super().show_progress(event)
        info = event.info or {}
        if "loss" not in info:
            return
        step = event.done
        self.canvas.add_point("loss", step, info["loss"])
        for key, value in info.items():
            if key.startswith("spread"):
                name = key.replace("spread_", "") if key != "spread" else "batch"
                self.spread_canvas.add_point(name, step, value)
        if step % 5 == 0 or step == 1:
            self.canvas.redraw()
            self.spread_canvas.redraw()
        if "warning" in info:
            from napari.utils.notifications import show_warning

            show_warning(info["warning"])
        elapsed = time.perf_counter() - self._started
        eta = elapsed / step * (event.total - step)
        self._set_status(
            f"step {step}/{event.total} (epoch {info['epoch'] + 1}/{self.epochs.value}): "
            f"loss {info['loss']:.4f}, {info['patches_per_second']:.0f} "
            f"patches/s, ETA {eta / 60:.1f} min"
        )

    def _on_error(self, exc: BaseException) -> None:
        """A collapse: the message names this widget's fields and "Apply advice" sets them."""
        from napari_wsi_mil.pretrain.collapse import CollapseError

        if isinstance(exc, CollapseError):
            self._advice = exc.suggestions
            self.advice_button.enabled = True
            exc = WsiMilError(f'{exc.describe(self.field_labels())} Or press "Apply advice".')
        super()._on_error(exc)

    def _on_finished(self) -> None:
        super()._on_finished()
        self.canvas.redraw()
        self.spread_canvas.redraw()
        self.pause_button.enabled = False
        self.pause_button.text = "Pause"
        self._paused = False

    def show_result(self, result) -> None:
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

        layer = layers[-1]
        path = layer.metadata["slide_path"]
        slide_id = slide_id_for(path)
        from napari_wsi_mil.features.clusters import slide_clusters_job

        project, encoder = Path(self.project.value), Path(self.out.value)

        def job():
            store = ProjectStore(project)
            clusters = yield from slide_clusters_job(store, slide_id, encoder, num_workers=0)
            grid, _ = store.read_tiles(slide_id)
            return open_slide(path), grid, clusters

        self.start(job, self.show_cluster_layer)

    def show_cluster_layer(self, result) -> None:
        """The clusters of :meth:`show_clusters`' job (``(slide, grid, clusters)``) as a
        Labels layer over the slide."""

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
