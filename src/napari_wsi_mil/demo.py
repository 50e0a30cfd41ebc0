"""``wsi-mil demo``: the whole mission on a cohort of real tissue, on a CPU in minutes.

Stages: a cohort of mosaic slides built from the packaged real H&E tiles (lesion blobs
of tumour tiles among normal tissue, :mod:`napari_wsi_mil.slide.mosaic`) -> tiling ->
WeakSupCon pretraining (short) -> features from that encoder and from a random-init
encoder -> AB-MIL, WENO and MS-CLAM on both -> inference on the held-out test slides ->
evaluation -> ``report.html`` and ``report.json`` with the same numbers: a headline that
says whether learning happened (bag AUC with a 95% bootstrap interval), a red banner
when a result is at chance or the encoder collapsed, the PCA figures, ROC curves, a
metrics table and one test slide with its heatmap and predicted tiles. Every stage
reuses the jobs of the library and resumes when run again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from napari_wsi_mil.features.embedding import embedding_job
from napari_wsi_mil.features.embedding_plot import plot_embedding
from napari_wsi_mil.jobs import Job, Progress, relay
from napari_wsi_mil.mil.infer import evaluate_predictions, infer_job
from napari_wsi_mil.mil.predict import recorded_mask_threshold
from napari_wsi_mil.report import findings, roc_figure, slide_figure, write_report
from napari_wsi_mil.slide import open_slide
from napari_wsi_mil.slide.tiling import TilingParams
from napari_wsi_mil.store.cohort import Cohort, read_cohort
from napari_wsi_mil.store.geojson import read_geojson_polygons
from napari_wsi_mil.store.keys import PREDICTIONS
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tiling_job import tile_slides_job

#: The packaged real H&E tiles (CC BY 4.0, see ``data/tiles/ATTRIBUTION.md``) that the
#: demo and the "Demo cohort" sample build their slides from.
DEMO_TILES = Path(__file__).resolve().parent / "data" / "tiles"

#: The demo's WeakSupCon pretraining, the one place to change it (fields of
#: :class:`~napari_wsi_mil.pretrain.trainer.PretrainConfig`; the demo adds the view size,
#: loader workers and seed). The method's default lr (0.025 at batch 64) collapses the
#: projections within ~50 steps (benchmarks/README.md, sections 14 and 19); lr 0.001 kept
#: them above the collapse threshold for 600 steps there (section 19).
PRETRAINING = {
    "method": "weaksupcon",
    "epochs": 1,
    "steps_per_epoch": 60,
    "batch_size": 64,
    "lr": 0.001,
    "warmup_epochs": 0.0,  # measured so: a warm-up from 0.001 to 0.001 was flat
}


@dataclass
class DemoSettings:
    """Small enough for a 2-core CPU; every number is a documented demo choice."""

    slides: int = 40
    rows: int = 6  # tiles of 224 px at 0.5 um/px per slide: 6 x 8 tiles, 336 x 448 um
    cols: int = 8
    lesion_fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    test_fraction: float = 0.5  # 20 held-out test slides
    target_mpp: float = 1.0
    patch_size: int = 28  # 16 patches per tile
    pretraining: dict = field(default_factory=lambda: dict(PRETRAINING))
    models: tuple[str, ...] = ("abmil", "weno", "msclam")
    mil_epochs: dict[str, int] = field(
        default_factory=lambda: {"abmil": 40, "weno": 30, "msclam": 40}
    )
    mil_lr: float = 5e-4
    tile_label_fraction: float = 0.3  # MS-CLAM sees the annotations of ~30% tumour cases
    seed: int = 0


#: The result the headline is about: the paper's encoder with the plainest MIL model.
HEADLINE = ("weaksupcon", "abmil")


@dataclass
class DemoResult:
    report: Path
    metrics: dict[tuple[str, str], dict]
    findings: dict  # report.json: headline, alarms, results, ...


def cohort_job(settings, out: Path) -> Job:
    """:func:`~napari_wsi_mil.slide.mosaic.make_mosaic_cohort_job` on :data:`DEMO_TILES`
    with the cohort fields of :class:`DemoSettings` (or of
    ``demo_sample.DemoSampleSettings``: slides, rows, cols, lesion_fractions,
    test_fraction, seed). Test slides are made from other tile images than training
    slides."""
    from napari_wsi_mil.slide.mosaic import make_mosaic_cohort_job

    return make_mosaic_cohort_job(
        DEMO_TILES,
        out,
        n_slides=settings.slides,
        rows=settings.rows,
        cols=settings.cols,
        lesion_fractions=settings.lesion_fractions,
        test_fraction=settings.test_fraction,
        seed=settings.seed,
    )


class _Clock:
    """Wall and CPU seconds per stage (CPU counts every thread and finished loader
    worker: on a shared machine it shows what the stage costs, wall what it took)."""

    def __init__(self):
        self.timings: dict[str, dict[str, float]] = {}
        self._wall, self._cpu = time.perf_counter(), self._cpu_now()

    @staticmethod
    def _cpu_now() -> float:
        return sum(os.times()[:4])

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), self._cpu_now()
        self.timings[name] = {"wall_s": wall - self._wall, "cpu_s": cpu - self._cpu}
        self._wall, self._cpu = wall, cpu


def demo_job(out_dir: str | os.PathLike, settings: DemoSettings | None = None) -> Job[DemoResult]:
    from napari_wsi_mil.features.extract import extract_features_job

    s = settings or DemoSettings()
    out = Path(out_dir)
    clock = _Clock()
    mosaic = yield from relay("1/7 real-tile cohort", cohort_job(s, out / "cohort"))
    cohort = read_cohort(mosaic.csv_path)
    annotations = mosaic.root / "annotations"
    clock.lap("cohort")
    store = ProjectStore(out / "project", create=not (out / "project").exists())
    yield from relay(
        "2/7 tiling",
        tile_slides_job(
            store,
            [(e.slide_id, e.path) for e in cohort],
            TilingParams(target_mpp=s.target_mpp, patch_size=s.patch_size),
        ),
    )
    clock.lap("tiling")
    encoder = out / "weaksupcon.safetensors"
    yield from _pretraining_stage(store, cohort, s, encoder)
    clock.lap("pretraining")
    encoders = {"weaksupcon": _encoder_state(encoder), "random": _encoder_state(None)}
    specs = {"weaksupcon": str(encoder), "random": "random"}
    ids = [e.slide_id for e in cohort]
    for name, spec in specs.items():
        yield from relay(
            f"4/7 features ({name})", extract_features_job(store, ids, spec, name, num_workers=1)
        )
    clock.lap("feature extraction")
    figures = yield from _embedding_stage(store, cohort, specs, s, out)
    clock.lap("PCA")
    test_cohort = Cohort([e for e in cohort if e.split == "test"])
    metrics, curves = yield from _mil_stage(store, cohort, test_cohort, specs, s, out, annotations)
    clock.lap("MIL training, inference, evaluation")
    yield Progress("7/7 report", 0, 1)
    figures.append(("ROC curves on the test slides", roc_figure(curves, out / "roc.png")))
    figures.append(
        ("A test slide", _slide_figure(store, mosaic, test_cohort, out / "test-slide.png"))
    )
    clock.lap("report")
    report = findings(
        title="napari-wsi-mil demo",
        metrics=metrics,
        encoders=encoders,
        headline=HEADLINE,
        summary=_summary(s, cohort, test_cohort),
        settings=asdict(s),
        figures=figures,
        timings=clock.timings,
    )
    path = write_report(out / "report.html", report)
    yield Progress("7/7 report", 1, 1)
    return DemoResult(path, metrics, report)


def _pretraining_stage(
    store: ProjectStore, cohort: Cohort, s: DemoSettings, encoder: Path
) -> Generator:
    """Stage 3: WeakSupCon pretraining into ``encoder`` (skipped when it exists)."""
    from napari_wsi_mil.pretrain.trainer import PretrainConfig, pretrain_job

    if not encoder.exists():
        config = PretrainConfig(
            **s.pretraining,
            image_size=s.patch_size,
            num_workers=1,
            seed=s.seed,
            allow_collapse=True,  # the report shows the collapse warning beside the results
        )
        yield from relay("3/7 WeakSupCon pretraining", pretrain_job(store, cohort, config, encoder))


def _embedding_stage(
    store: ProjectStore, cohort: Cohort, specs: dict, s: DemoSettings, out: Path
) -> Generator:
    """Stage 5: a PCA figure of each feature set; returns ``[(caption, png path)]``."""

    figures = []
    for name in specs:
        table = yield from relay(
            f"5/7 PCA ({name})", embedding_job(store, cohort, name, max_per_slide=200, seed=s.seed)
        )
        figures.append(
            (
                f"PCA of patch features, {name} encoder",
                plot_embedding(table, out / f"pca-{name}.png", title=f"PCA, {name} encoder"),
            )
        )
    return figures


def _mil_stage(
    store: ProjectStore,
    cohort: Cohort,
    test_cohort,
    specs: dict,
    s: DemoSettings,
    out: Path,
    annotations: Path,
) -> Generator:
    """Stage 6: every MIL model on every feature set, trained, run on the test slides and
    evaluated; returns ``(metrics, curves)``: metrics by ``(feature set, model)``, ROC
    inputs ``(truth, probabilities)`` by feature set and model."""
    from napari_wsi_mil.mil.train import MilConfig, train_mil_job

    test_ids = [e.slide_id for e in test_cohort]
    labels = test_cohort.labels()
    metrics, curves = {}, {}
    for name in specs:
        for model in s.models:
            run = f"{name}-{model}"
            config = MilConfig(
                model=model,
                epochs=s.mil_epochs[model],
                lr=s.mil_lr,
                seed=s.seed,
                tile_label_fraction=s.tile_label_fraction,
                threads=1,  # small models: one thread is fastest
            )
            result = yield from relay(
                f"6/7 {model} on {name} features",
                train_mil_job(
                    store, cohort, name, out / "runs" / run, config, annotations=annotations
                ),
            )
            report = yield from relay(
                f"6/7 infer {run}",
                infer_job(
                    store,
                    result.model_path,
                    slide_ids=test_ids,
                    cohort=cohort,
                    out_dir=out / "predictions" / run,
                    name=run,
                ),
            )
            truth = [labels[i] for i in report.probabilities]
            probabilities = list(report.probabilities.values())
            metrics[(name, model)] = evaluate_predictions(
                out / "predictions" / run, test_cohort, annotations, project=store
            )
            metrics[(name, model)]["failed"] = result.metrics.get("failed")
            curves.setdefault(name, {})[model] = (truth, probabilities)
    return metrics, curves


def _summary(s: DemoSettings, cohort: Cohort, test_cohort) -> list[str]:
    """The report's lines on the data, the pretraining and the tumour outlines."""
    pretraining = ", ".join(f"{k} {v}" for k, v in s.pretraining.items() if k != "method")
    return [
        f"{len(cohort)} slides of {s.rows} x {s.cols} real H&E tiles (CRC-VAL-HE-7K and "
        f"Kather 2016, CC BY 4.0), {sum(e.label for e in cohort)} with a tumour lesion on "
        f"{', '.join(f'{f:.0%}' for f in s.lesion_fractions)} of the tiles; "
        f"{len(test_cohort)} held out for testing, made from tile images no training slide uses",
        f"patches of {s.patch_size} px at {s.target_mpp} um/px; {s.pretraining['method']} "
        f"pretraining from random init ({pretraining}); the random-init encoder is the baseline",
        f"MS-CLAM sees the tumour outlines of {s.tile_label_fraction:.0%} of the training "
        "tumour cases; instance metrics use every outline",
    ]


def _encoder_state(encoder: Path | None) -> dict:
    """The projection spread a pretrained encoder file recorded, and its collapse warning
    (both None for the random-init encoder, which is not trained)."""
    from napari_wsi_mil.pretrain.encoder_file import load_encoder
    from napari_wsi_mil.pretrain.trainer import PretrainConfig, collapse_warning

    if encoder is None:
        return {"spread": None, "collapse_warning": None}
    metadata = load_encoder(encoder).metadata
    spread = metadata.get("projection_spread")
    warning = (
        None if spread is None else collapse_warning(PretrainConfig(metadata["method"]), spread)
    )
    return {"spread": spread, "collapse_warning": warning}


def _slide_figure(store: ProjectStore, mosaic, test_cohort, path: Path) -> Path:
    """The positive test slide with the largest lesion, scored by the headline pair
    (WeakSupCon + AB-MIL: the demo always trains it)."""

    fractions = dict(zip(mosaic.slide_ids, mosaic.lesion_fractions, strict=True))
    positives = [e for e in test_cohort if e.label == 1] or list(test_cohort)
    entry = max(positives, key=lambda e: fractions[e.slide_id])
    run = "-".join(HEADLINE)
    arrays, attrs = store.read_result(PREDICTIONS, run, entry.slide_id)
    grid, _ = store.read_tiles(entry.slide_id)
    geojson = mosaic.root / "annotations" / f"{entry.slide_id}.geojson"
    polygons = read_geojson_polygons(geojson) if geojson.exists() else []
    with open_slide(entry.path) as slide:
        thumbnail = slide.thumbnail(1024)
        size = slide.dimensions
    title = (
        f"{entry.slide_id} (label {entry.label}): P(tumour) = {attrs['probability']:.2f} by {run}"
    )
    return slide_figure(
        thumbnail,
        size,
        grid.coords,
        grid.geometry.patch_size_level0,
        arrays["instance_probability"],
        recorded_mask_threshold(attrs),
        polygons,
        title,
        path,
    )
