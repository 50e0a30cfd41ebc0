"""The "Train MIL" dock widget: a MIL model on stored features, with live curves."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, Label, LineEdit, SpinBox

from napari_wsi_mil._napari.widgets.job_widget import JobWidget, feature_sets
from napari_wsi_mil._napari.widgets.plot_canvas import CurveCanvas
from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.mil import MODELS
from napari_wsi_mil.mil.metrics import describe_bag_metrics
from napari_wsi_mil.store.cohort import read_cohort
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.validate import check_class_list


class TrainMilWidget(JobWidget):
    """Train a MIL model of :data:`~napari_wsi_mil.mil.MODELS` on a project's features.

    Zero epochs or learning rate mean the model's default from the papers. The loss
    and, when the cohort has ``split=val`` cases, the validation AUC are plotted live.
    The classes read from the cohort are shown under it (negative class first); "class
    order" (comma-separated, the negative class first) sets them as ``wsi-mil train
    --classes`` does. WENO and MS-CLAM refuse more than two classes in one line.
    """

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer, run_text="Train")
        home = Path.home()
        self.project = FileEdit(label="project", mode="d", value=home / "wsi-mil-project")
        self.cohort = FileEdit(
            label="cohort CSV", mode="r", filter="*.csv", value=home / "cohort.csv"
        )
        self.class_order = LineEdit(label="class order (optional)", value="")
        self.class_order.tooltip = "class names, the negative class first: normal,luad,lusc"
        self.classes = Label(value="")
        self.classes.native.setWordWrap(True)
        self.features = ComboBox(label="feature set", choices=self._feature_choices)
        self.model = ComboBox(label="model", choices=list(MODELS), value="abmil")
        self.epochs = SpinBox(label="epochs (0 = default)", value=0, min=0, max=10_000)
        self.lr = FloatSpinBox(
            label="learning rate (0 = default)", value=0.0, min=0.0, max=1.0, step=1e-4
        )
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.annotations = FileEdit(label="annotations (optional)", mode="d", value="")
        self.out = FileEdit(label="run folder", mode="d", value=home / "wsi-mil-run")
        self.extend(
            [
                self.project,
                self.cohort,
                self.class_order,
                self.classes,
                self.features,
                self.model,
                self.epochs,
                self.lr,
                self.seed,
                self.annotations,
                self.out,
            ]
        )
        self.add_controls()
        self.canvas = CurveCanvas(napari_viewer, xlabel="epoch", ylabel="loss / AUC")
        self.add_native(self.canvas)
        self.project.changed.connect(self.features.reset_choices)
        self.cohort.changed.connect(self._show_classes)
        self.class_order.changed.connect(self._show_classes)
        self.run_button.changed.connect(self.guard(self.run))
        self._show_classes()

    def read_cohort(self):
        """The chosen cohort, its classes in the "class order" when one is given."""

        order = self.class_order.value.strip()
        classes = check_class_list("class order", order) if order else None
        return read_cohort(Path(self.cohort.value), classes=classes)

    def _show_classes(self, value=None) -> None:
        """The classes the cohort gives, negative first, or why it cannot be read."""
        if not Path(self.cohort.value).is_file():
            self.classes.value = ""
            return
        try:
            classes = self.read_cohort().classes
        except (WsiMilError, OSError) as exc:
            first = [line.strip() for line in str(exc).splitlines()[:2]]  # and its first problem
            self.classes.value = f"classes: ? ({'; '.join(first)})"
            return
        self.classes.value = f"classes: {', '.join(classes)} (negative: {classes[0]})"

    def _feature_choices(self, _widget=None) -> list[str]:
        return feature_sets(self.project.value) if hasattr(self, "project") else []

    def config(self):
        from napari_wsi_mil.mil.train import MilConfig

        return MilConfig(
            model=self.model.value,
            epochs=self.epochs.value or None,
            lr=self.lr.value or None,
            seed=self.seed.value,
        )

    def run(self) -> None:
        from napari_wsi_mil.mil.train import train_mil_job

        if not self.features.value:
            self._on_error(ValueError("the project has no features yet: extract them first"))
            return
        project, cohort = Path(self.project.value), self.read_cohort()
        annotations = str(self.annotations.value).strip()
        annotations = annotations if annotations not in ("", ".") else None
        features, out, config = self.features.value, Path(self.out.value), self.config()

        def job():
            return (
                yield from train_mil_job(
                    ProjectStore(project),
                    cohort,
                    features,
                    out,
                    config,
                    annotations=annotations,
                )
            )

        self.canvas.clear()
        self.start(job, self.show_result)

    def show_progress(self, event) -> None:
        super().show_progress(event)
        info = event.info or {}
        if "loss" in info and event.stage == "train":
            self.canvas.add_point("loss", info["epoch"], info["loss"])
            if info.get("val_auc") is not None:
                self.canvas.add_point("val AUC", info["epoch"], info["val_auc"])
            self.canvas.redraw()

    def show_result(self, result) -> None:
        from napari.utils.notifications import show_warning

        metrics = result.metrics
        shown = [
            f"{split}: {describe_bag_metrics(metrics[split])}"
            for split in ("val", "test")
            if split in metrics
        ]
        # the key numbers first, then what to be wary of: the path is long
        warnings = [f"Warning: {w}" for w in metrics.get("warnings", [])]
        self._set_status("; ".join([*shown, *warnings, f"model: {result.model_path}"]))
        if metrics.get("failed"):
            show_warning(metrics["failed"])
