"""Make the documentation screenshots: ``docs/images/analyse.png`` and the user guide's.

Run under a display, or headless with ``xvfb-run -a python scripts/screenshot.py``.

It builds everything from nothing (cached in ``--workdir``, so a second run of the
"Analyse slide" part takes seconds): a synthetic cohort (12 slides of 2048 x 1536 px at
0.5 um/px, half with lesions, GeoJSON outlines), tiles it into 32-px patches at 1 um/px,
extracts features with the seeded random ResNet-18 (or ``--encoder``), trains MS-CLAM
with the lesion outlines as tile labels (mixed supervision), then opens a new, held-out
slide with a lesion in napari, outlines the true lesion in cyan (a Shapes layer, as the
"Demo cohort" sample does), runs the "Analyse slide" widget on it exactly as a user
would, clicks the most attended patch of the gallery (outlined in white on the slide)
and saves a screenshot of the window: the attention heatmap, the only result layer
visible at first, with its colour bar. About 3 minutes on 2 CPU cores the first time.

The user guide (``docs/user-guide.md``) gets one screenshot per dock widget of the
workflow, made by driving the widgets as a user would on the same cohort, with a
third of each class held out as ``split=test`` (``guide.csv``) and tiny settings, in a
fresh ``<workdir>/guide`` folder each run: ``tiling.png`` (a slide with its tissue
mask and patch grid, after the widget tiled the whole cohort), ``pretrain.png`` (a
30-step WeakSupCon run at learning rate 0.001, below the default, and its loss curve),
``extract.png`` (features of every slide with that encoder), ``embedding.png`` (PCA of
those features, train and test side by side, coloured by bag label; the patches with
the highest first component selected, as a lasso would, and shown on the slide) and
``train.png`` (AB-MIL for 20 epochs and its loss curve). About 2 to 3 more minutes on 2 CPU cores.

Screenshots are reduced to 256 colours (PNG, optimised) to keep the repository small.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_synthetic_cohort(workdir: Path):
    """The script's cohort (generated once; existing slides are kept)."""
    from napari_wsi_mil.slide.synthetic import make_cohort

    return make_cohort(
        workdir / "cohort",
        n_slides=12,
        width=2048,
        height=1536,
        lesion_fractions=(0.1, 0.2),
        test_fraction=0.0,
    )


def train_model(workdir: Path, patch_size: int, model_name: str, encoder: str) -> Path:
    from napari_wsi_mil.features.extract import extract_features_job
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.mil.train import MilConfig, train_mil_job
    from napari_wsi_mil.slide.tiling import TilingParams
    from napari_wsi_mil.store.cohort import read_cohort
    from napari_wsi_mil.store.project import ProjectStore
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    features = "rand" if encoder == "random" else Path(encoder).stem
    run = workdir / f"run-{model_name}-{patch_size}-{features}"
    model = run / "model.safetensors"
    if model.exists():
        return model
    print("synthetic cohort, tiling, features ...", flush=True)
    synthetic = make_synthetic_cohort(workdir)
    cohort = read_cohort(synthetic.csv_path)
    project = workdir / f"project-{patch_size}"
    store = ProjectStore(project, create=not project.exists())
    params = TilingParams(target_mpp=1.0, patch_size=patch_size)
    run_job(tile_slides_job(store, [(e.slide_id, e.path) for e in cohort], params))
    run_job(extract_features_job(store, store.slide_ids(), encoder, features, num_workers=0))
    print(f"training {model_name} ...", flush=True)
    run_job(
        train_mil_job(
            store,
            cohort,
            features,
            run,
            MilConfig(model=model_name, epochs=20, threads=2),
            annotations=workdir / "cohort" / "annotations" if model_name == "msclam" else None,
        )
    )
    return model


def save_screenshot(viewer, path: Path) -> None:
    """The whole window as a 256-colour, optimised PNG (a fraction of the RGB size)."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(viewer.screenshot(canvas_only=False, flash=False))[..., :3]
    image = Image.fromarray(np.ascontiguousarray(rgb)).quantize(
        256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    print(f"wrote {path} ({image.width} x {image.height}, {path.stat().st_size // 1024} KiB)")


def settle(seconds: float = 1.0) -> None:
    """Let Qt draw (and queued signals arrive) for a moment."""
    from qtpy.QtWidgets import QApplication

    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.05)


def close_notifications() -> None:
    """Close napari's notification pop-ups (a job's messages and warnings), so that a
    screenshot shows the slide and the widget, not a pop-up over them."""
    from qtpy.QtWidgets import QApplication

    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # moved in another napari version: keep the pop-ups
        NapariQtNotification = ()  # noqa: N806
    for widget in QApplication.allWidgets():
        if isinstance(widget, NapariQtNotification):
            widget.close()


def wait_for(widget) -> None:
    """Let the widget's job run to its end."""
    from qtpy.QtWidgets import QApplication

    while widget.busy:
        QApplication.processEvents()
        time.sleep(0.05)
    settle(0.5)


def run_widget(widget, what: str) -> None:
    """Press the widget's run button and wait for its job, as a user would."""
    from qtpy.QtWidgets import QApplication

    start = time.time()
    widget.run_button.clicked.emit()
    while widget.busy:
        QApplication.processEvents()
        time.sleep(0.05)
    settle(0.5)
    status = widget.status.value
    print(f"{what}: {time.time() - start:.1f} s: {status}", flush=True)
    if status.startswith("error"):
        raise SystemExit(f"{what} failed: {status}")


def guide_cohort(workdir: Path) -> Path:
    """``cohort/guide.csv``: the cohort with the last third of each class as split=test."""
    import dataclasses

    from napari_wsi_mil.store.cohort import read_cohort, write_cohort

    cohort = read_cohort(make_synthetic_cohort(workdir).csv_path)
    test = set()
    for label in (0, 1):
        ids = [e.slide_id for e in cohort if e.label == label]
        test.update(ids[len(ids) - max(1, len(ids) // 3) :])
    entries = [
        dataclasses.replace(e, split="test" if e.slide_id in test else "train") for e in cohort
    ]
    return write_cohort(entries, workdir / "cohort" / "guide.csv")


def guide_screenshots(workdir: Path, patch_size: int, images: Path, size: str) -> None:
    """One screenshot per dock widget of the workflow, for ``docs/user-guide.md``."""
    import shutil

    import napari
    import numpy as np
    from qtpy.QtWidgets import QAbstractSpinBox

    from napari_wsi_mil._napari.widgets.embedding_widget import EmbeddingWidget
    from napari_wsi_mil._napari.widgets.extract_widget import ExtractWidget
    from napari_wsi_mil._napari.widgets.pretrain_widget import PretrainWidget
    from napari_wsi_mil._napari.widgets.tiling_widget import TilingWidget
    from napari_wsi_mil._napari.widgets.train_widget import TrainMilWidget
    from napari_wsi_mil.store.cohort import read_cohort

    folder = workdir / "guide"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    csv = guide_cohort(workdir)
    cohort = read_cohort(csv)
    project = folder / "project"
    shown = next(e for e in cohort if e.label == 1 and e.split == "train")

    viewer = napari.Viewer(title="napari-wsi-mil")
    width, height = (int(v) for v in size.split("x"))
    viewer.window.resize(width, height)
    (slide_layer,) = viewer.open(shown.path, plugin="napari-wsi-mil")
    docks = []

    def show(widget, title: str, dock_width: int = 420):
        for dock in docks:
            viewer.window.remove_dock_widget(dock)
        docks[:] = [viewer.window.add_dock_widget(widget, name=title, area="right")]
        widget.native.setMinimumWidth(dock_width)
        widget.native.setMaximumWidth(dock_width)
        viewer.layers.selection.active = slide_layer
        settle(0.5)
        return widget

    def shoot(
        name: str, widget, zoom: float = 1.0, centre=(0.5, 0.5), scroll_end: bool = False
    ) -> None:
        """Save the window; ``zoom`` onto ``centre`` (fractions of the slide's y, x);
        ``scroll_end`` scrolls the dock to its end (where the plots are)."""
        viewer.reset_view()
        if zoom != 1.0:
            lo, hi = np.asarray(slide_layer.extent.world)[:, -2:]
            camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
            camera.center = tuple(lo + np.asarray(centre) * (hi - lo))
            camera.zoom = camera.zoom * zoom
        widget.run_button.native.setFocus()  # as after a click
        for box in widget.native.findChildren(QAbstractSpinBox):
            box.lineEdit().deselect()  # no number left highlighted by setting it
        if scroll_end:
            settle(0.5)
            bar = widget.native.verticalScrollBar()
            bar.setValue(bar.maximum())
        settle(1.0)
        close_notifications()
        settle(0.5)
        save_screenshot(viewer, images / name)

    # 1. Tiling: the whole cohort, then the tissue mask and patch grid of one slide
    tiling = show(TilingWidget(viewer), "Tiling")
    tiling.project.value = project
    tiling.source.value = "cohort CSV"
    tiling.cohort.value = csv
    tiling.target_mpp.value = 1.0
    tiling.patch_size.value = patch_size
    run_widget(tiling, "tiling")
    tiled = tiling.status.value
    tiling.tiled.value = shown.slide_id
    tiling.show_button.clicked.emit()
    wait_for(tiling)
    tiling.status.value = tiled  # the cohort's result, as after the run
    # closer, so that the patch grid's steps along the tissue edge show
    shoot("tiling.png", tiling, zoom=1.6, centre=(0.4, 0.35))
    for suffix in ("tissue", "patches"):
        viewer.layers[f"{slide_layer.name} {suffix}"].visible = False

    # 2. Pretrain encoder: a very short WeakSupCon run on the train slides
    encoder = folder / "weaksupcon.safetensors"
    pretrain = show(PretrainWidget(viewer), "Pretrain encoder")
    pretrain.project.value = project
    pretrain.cohort.value = csv
    pretrain.method.value = "weaksupcon"
    pretrain.epochs.value = 3
    pretrain.steps.value = 10
    pretrain.batch_size.value = 32
    # the default learning rate (0.1 per 256 patches: 0.0125) collapses this random-init
    # encoder within 30 steps on this cohort (projection spread 0.008); 0.001 does not
    pretrain.lr.value = 0.001
    pretrain.image_size.value = patch_size
    pretrain.device.value = "cpu"
    pretrain.out.value = encoder
    run_widget(pretrain, "pretraining")
    shoot("pretrain.png", pretrain, scroll_end=True)

    # 3. Extract features of every tiled slide with that encoder
    extract = show(ExtractWidget(viewer), "Extract features", dock_width=470)
    extract.project.value = project
    extract.encoder.value = str(encoder)
    extract.workers.value = 0
    extract.device.value = "cpu"
    run_widget(extract, "extraction")
    shoot("extract.png", extract)

    # 4. Embedding: PCA fitted on train, train and test side by side
    embedding = show(EmbeddingWidget(viewer), "Embedding (PCA)", dock_width=640)
    embedding.project.value = project
    embedding.cohort.value = csv
    embedding.feature_set.reset_choices()
    embedding.feature_set.value = encoder.stem
    embedding.max_per_slide.value = 200
    run_widget(embedding, "embedding")
    # what a lasso around the right-hand end of the train cloud selects
    xy = embedding.table.xy
    train = embedding.table.split == "train"
    embedding.select_points(np.flatnonzero(train & (xy[:, 0] >= np.quantile(xy[train, 0], 0.9))))
    shoot("embedding.png", embedding)
    embedding.selection_layer().visible = False

    # 5. Train MIL: AB-MIL on those features, test AUC in the status line
    train_mil = show(TrainMilWidget(viewer), "Train MIL")
    train_mil.project.value = project
    train_mil.cohort.value = csv
    train_mil.features.reset_choices()
    train_mil.features.value = encoder.stem
    train_mil.model.value = "abmil"
    train_mil.epochs.value = 20
    train_mil.out.value = folder / "run-abmil"
    run_widget(train_mil, "MIL training")
    shoot("train.png", train_mil)
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=ROOT / "docs" / "images" / "analyse.png", type=Path)
    parser.add_argument(
        "--workdir", default=Path.home() / ".cache" / "napari-wsi-mil" / "screenshot", type=Path
    )
    parser.add_argument("--size", default="1600x1000", help="window size WxH")
    parser.add_argument("--patch-size", default=32, type=int, help="px at 1 um/px (32)")
    parser.add_argument("--model", default="msclam", help="MIL model to train (msclam)")
    parser.add_argument(
        "--encoder",
        default="random",
        help="encoder for the features: random (default), imagenet or a pretrained encoder "
        "file (a pretrained encoder gives a much sharper heatmap than random features)",
    )
    parser.add_argument(
        "--guide-dir",
        default=ROOT / "docs" / "images",
        type=Path,
        help="folder for the user guide's screenshots (docs/images)",
    )
    parser.add_argument("--guide-size", default="1280x800", help="window size WxH of those")
    parser.add_argument(
        "--only", choices=["analyse", "guide"], help="make only analyse.png or the guide's"
    )
    args = parser.parse_args()
    # the widgets remember their shared project: in the work folder, not the user's config
    os.environ.setdefault("NAPARI_WSI_MIL_CONFIG", str(args.workdir / "config"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.only != "guide":
        analyse_screenshot(args)
    if args.only != "analyse":
        guide_screenshots(args.workdir, args.patch_size, args.guide_dir, args.guide_size)
    print(f"screenshots made in {time.time() - started:.0f} s")


def analyse_screenshot(args: argparse.Namespace) -> None:
    """``analyse.png``: the "Analyse slide" widget on a held-out slide."""
    model = train_model(args.workdir, args.patch_size, args.model, args.encoder)

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_wsi_mil._napari.widgets.analyse_widget import AnalyseWidget
    from napari_wsi_mil.slide.synthetic import write_synthetic_slide

    slide = args.workdir / "held-out" / "biopsy_042.tiff"
    slide.parent.mkdir(exist_ok=True)
    synthetic = write_synthetic_slide(
        slide, width=3072, height=2304, seed=123, lesion_fraction=0.12
    )

    viewer = napari.Viewer(title="napari-wsi-mil: Analyse slide")
    width, height = (int(v) for v in args.size.split("x"))
    viewer.window.resize(width, height)
    (slide_layer,) = viewer.open(synthetic.path, plugin="napari-wsi-mil")
    widget = AnalyseWidget(viewer)
    widget.native.setMaximumWidth(520)
    viewer.window.add_dock_widget(widget, name="Analyse slide", area="right")
    widget.project.value = args.workdir / f"held-out-project-{model.parent.name}"
    widget.model.value = model
    if args.encoder not in ("random", "imagenet"):
        widget.encoder.value = args.encoder
    widget.device.value = "cpu"
    widget.k.value = 4
    # the true lesion, for comparison: level-0 (x, y) -> slide data (y - 1/2, x - 1/2)
    outlines = [np.asarray(p, float)[:, ::-1] - 0.5 for p in synthetic.lesion_polygons]
    viewer.add_shapes(
        outlines,
        shape_type="polygon",
        name="true lesion",
        edge_color="cyan",
        edge_width=6,
        face_color="transparent",
        scale=slide_layer.scale,
        units=tuple(slide_layer.units),
        metadata={"kind": "true_lesion"},
    )
    widget.run_button.clicked.emit()
    start = time.time()
    while widget.busy:
        QApplication.processEvents()
        time.sleep(0.05)
    print(f"analysed in {time.time() - start:.1f} s: {widget.result.value}", flush=True)
    if widget.analysis is None:
        raise SystemExit(f"analysis failed: {widget.status.value}")

    widget.gallery.buttons["top"][0].click()  # the most attended patch, outlined
    viewer.layers.selection.active = slide_layer
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.reset_view()
    # zoom onto the largest lesion (with some context) so patches and tissue are visible
    world = [np.array([slide_layer.data_to_world(p) for p in o]) for o in outlines]
    largest = max(world, key=lambda o: np.ptp(o[:, 0]) * np.ptp(o[:, 1]))
    lo, hi = largest.min(axis=0), largest.max(axis=0)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = tuple((lo + hi) / 2)
    camera.zoom = camera.zoom * min(
        2.5, 0.4 * float(np.min(slide_layer.extent.world[1][:2] / (hi - lo)))
    )
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    save_screenshot(viewer, args.out)
    viewer.close()


if __name__ == "__main__":
    main()
