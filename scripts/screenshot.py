"""Make the README screenshot of the "Analyse slide" widget: ``docs/images/analyse.png``.

Run under a display, or headless with ``xvfb-run -a python scripts/screenshot.py``.

It builds everything from nothing (cached in ``--workdir``, so a second run takes
seconds): a synthetic cohort (12 slides of 2048 x 1536 px at 0.5 um/px, half with
lesions, GeoJSON outlines), tiles it into 32-px patches at 1 um/px, extracts features
with the seeded random ResNet-18 (or ``--encoder``), trains MS-CLAM with the lesion
outlines as tile labels (mixed supervision), then opens a new, held-out slide with a
lesion in napari, runs the "Analyse slide" widget on it exactly as a user would,
outlines the true lesion in cyan (a Shapes layer) and saves a screenshot of the
window. About 3 minutes on 2 CPU cores the first time.

A model on random features is weak: its attention ranks lesion patches first (AUC
about 0.88 on the held-out slide) but its instance probabilities stay below 0.5, so
the script lowers the mask threshold to the most probable 5% of tiles (and says so),
as a user would with the slider. Predicted tumour tiles are magenta.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_model(workdir: Path, patch_size: int, model_name: str, encoder: str) -> Path:
    from napari_wsi_mil.features.extract import extract_features_job
    from napari_wsi_mil.jobs import run_job
    from napari_wsi_mil.mil.train import MilConfig, train_mil_job
    from napari_wsi_mil.slide.synthetic import make_cohort
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
    synthetic = make_cohort(
        workdir / "cohort",
        n_slides=12,
        width=2048,
        height=1536,
        lesion_fractions=(0.1, 0.2),
        test_fraction=0.0,
    )
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
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
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
    widget.run_button.clicked.emit()
    start = time.time()
    while widget.busy:
        QApplication.processEvents()
        time.sleep(0.05)
    print(f"analysed in {time.time() - start:.1f} s: {widget.result.value}", flush=True)
    if widget.analysis is None:
        raise SystemExit(f"analysis failed: {widget.status.value}")

    a = widget.analysis
    sid = a.slide_id
    if (a.instance_probability >= widget.threshold.value).mean() < 0.02:
        # a tiny model's instance probabilities may all sit below 0.5: show its most
        # probable 5%, as a user would with the threshold slider
        widget.threshold.value = np.floor(np.quantile(a.instance_probability, 0.95) * 100) / 100
        print(f"mask threshold lowered to {widget.threshold.value:.2f}", flush=True)
    viewer.layers[f"{sid} probability"].visible = False
    viewer.layers[f"{sid} attention"].opacity = 0.45
    viewer.layers[f"{sid} predicted tumour"].opacity = 0.8
    # the true lesion, for comparison: level-0 (x, y) -> world through the slide layer
    outlines = [
        np.array([slide_layer.data_to_world((y - 0.5, x - 0.5)) for x, y in polygon])
        for polygon in synthetic.lesion_polygons
    ]
    viewer.add_shapes(
        outlines,
        shape_type="polygon",
        name="true lesion",
        edge_color="cyan",
        edge_width=6,
        face_color="transparent",
        units=tuple(slide_layer.units),
    )
    viewer.layers.selection.active = slide_layer
    for _ in range(10):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.reset_view()
    # zoom onto the largest lesion (with some context) so patches and tissue are visible
    largest = max(outlines, key=lambda o: np.ptp(o[:, 0]) * np.ptp(o[:, 1]))
    lo, hi = largest.min(axis=0), largest.max(axis=0)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = tuple((lo + hi) / 2)
    camera.zoom = camera.zoom * min(
        2.5, 0.4 * float(np.min(slide_layer.extent.world[1][:2] / (hi - lo)))
    )
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False, flash=False)
    print(f"wrote {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
