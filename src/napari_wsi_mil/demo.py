"""``wsi-mil demo``: the whole mission on a generated cohort, on a CPU in minutes.

Stages: synthetic cohort -> tiling -> WeakSupCon pretraining (short) -> features from
that encoder and from a random-init encoder -> AB-MIL, WENO and MS-CLAM on both ->
inference on the test slides -> evaluation -> ``report.html`` with the PCA figures,
ROC curves, a metrics table and one test slide with its heatmap and predicted tiles.
Every stage reuses the jobs of the library and resumes when run again.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

from napari_wsi_mil.jobs import Job, Progress


@dataclass
class DemoSettings:
    """Small enough for a 2-core CPU; every number is a documented demo choice."""

    slides: int = 24
    width: int = 2048
    height: int = 1536
    lesion_fractions: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3)
    test_fraction: float = 0.25
    target_mpp: float = 1.0
    patch_size: int = 32
    pretrain_steps: int = 60
    pretrain_batch: int = 32
    models: tuple[str, ...] = ("abmil", "weno", "msclam")
    mil_epochs: dict[str, int] = field(
        default_factory=lambda: {"abmil": 30, "weno": 15, "msclam": 30}
    )
    mil_lr: float = 5e-4
    tile_label_fraction: float = 0.3  # MS-CLAM sees the annotations of ~30% tumour cases
    seed: int = 0


@dataclass
class DemoResult:
    report: Path
    metrics: dict[tuple[str, str], dict]


def stage(name: str, job: Generator) -> Generator:
    """Re-yield a job's events under ``name`` and return its result."""
    result = None
    try:
        while True:
            event = next(job)
            label = name if event.stage in name else f"{name}: {event.stage}"
            yield Progress(label, event.done, event.total, event.message, event.info)
    except StopIteration as stop:
        result = stop.value
    return result


def cohort_job(settings, out: Path) -> Job:
    """``make_cohort_job`` with the cohort fields of :class:`DemoSettings` (or of
    ``demo_sample.DemoSampleSettings``: slides, seed, lesion_fractions, width, height,
    test_fraction)."""
    from napari_wsi_mil.slide.synthetic import make_cohort_job

    return make_cohort_job(
        out,
        n_slides=settings.slides,
        seed=settings.seed,
        lesion_fractions=settings.lesion_fractions,
        width=settings.width,
        height=settings.height,
        test_fraction=settings.test_fraction,
    )


def demo_job(out_dir: str | Path, settings: DemoSettings | None = None) -> Job[DemoResult]:
    from napari_wsi_mil.features.embedding import embedding_job, plot_embedding
    from napari_wsi_mil.features.extract import extract_features_job
    from napari_wsi_mil.mil.infer import evaluate_predictions, infer_job
    from napari_wsi_mil.mil.train import MilConfig, train_mil_job
    from napari_wsi_mil.pretrain.trainer import PretrainConfig, pretrain_job
    from napari_wsi_mil.slide.tiling import TilingParams
    from napari_wsi_mil.store.cohort import Cohort, read_cohort
    from napari_wsi_mil.store.project import ProjectStore
    from napari_wsi_mil.store.tiling_job import tile_slides_job

    s = settings or DemoSettings()
    out = Path(out_dir)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    synthetic = yield from stage(
        "1/7 synthetic cohort",
        cohort_job(s, out / "cohort"),
    )
    cohort = read_cohort(synthetic.csv_path)
    annotations = synthetic.root / "annotations"
    lap("synthetic cohort")
    store = ProjectStore(out / "project", create=not (out / "project").exists())
    yield from stage(
        "2/7 tiling",
        tile_slides_job(
            store,
            [(e.slide_id, e.path) for e in cohort],
            TilingParams(target_mpp=s.target_mpp, patch_size=s.patch_size),
        ),
    )
    lap("tiling")
    encoder = out / "weaksupcon.safetensors"
    if not encoder.exists():
        config = PretrainConfig(
            method="weaksupcon",
            epochs=1,
            steps_per_epoch=s.pretrain_steps,
            batch_size=s.pretrain_batch,
            image_size=s.patch_size,
            warmup_epochs=0.1,
            num_workers=1,
            seed=s.seed,
            allow_collapse=True,  # the report shows the collapse warning beside the results
        )
        yield from stage("3/7 WeakSupCon pretraining", pretrain_job(store, cohort, config, encoder))
    lap("pretraining")
    pretrain_warning = _pretrain_warning(encoder)
    encoders = {"weaksupcon": str(encoder), "random": "random"}
    ids = [e.slide_id for e in cohort]
    for name, spec in encoders.items():
        yield from stage(
            f"4/7 features ({name})", extract_features_job(store, ids, spec, name, num_workers=1)
        )
    lap("feature extraction")
    figures = []
    for name in encoders:
        table = yield from stage(
            f"5/7 PCA ({name})", embedding_job(store, cohort, name, max_per_slide=200, seed=s.seed)
        )
        figures.append(
            (
                f"PCA of patch features, {name} encoder",
                plot_embedding(table, out / f"pca-{name}.png", title=f"PCA, {name} encoder"),
            )
        )
    lap("PCA")
    test_cohort = Cohort([e for e in cohort if e.split == "test"])
    test_ids = [e.slide_id for e in test_cohort]
    metrics, curves, predictions = {}, {}, {}
    for name in encoders:
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
            result = yield from stage(
                f"6/7 {model} on {name} features",
                train_mil_job(
                    store, cohort, name, out / "runs" / run, config, annotations=annotations
                ),
            )
            report = yield from stage(
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
            metrics[(name, model)] = evaluate_predictions(
                out / "predictions" / run, test_cohort, annotations, project=store
            )
            labels = test_cohort.labels()
            curves.setdefault(name, {})[model] = (
                [labels[i] for i in report.probabilities],
                list(report.probabilities.values()),
            )
            predictions[(name, model)] = report
    lap("MIL training, inference, evaluation")
    yield Progress("7/7 report", 0, 1)
    from napari_wsi_mil.report import roc_figure, write_report

    figures.append(("ROC curves on the test slides", roc_figure(curves, out / "roc.png")))
    figures.append(
        ("A test slide", _slide_figure(store, synthetic, test_cohort, out / "test-slide.png"))
    )
    lap("report")
    summary = [
        f"{len(cohort)} synthetic slides ({sum(e.label for e in cohort)} with lesions covering "
        f"{', '.join(f'{f:.0%}' for f in s.lesion_fractions)} of the tissue), "
        f"{len(test_cohort)} held out for testing",
        f"patches of {s.patch_size} px at {s.target_mpp} um/px; WeakSupCon pretraining for "
        f"{s.pretrain_steps} steps of {s.pretrain_batch} patches",
        f"MS-CLAM sees the tumour outlines of {s.tile_label_fraction:.0%} of the training "
        "tumour cases; instance metrics use every outline",
        *([f"pretraining warning: {pretrain_warning}"] if pretrain_warning else []),
    ]
    path = write_report(
        out / "report.html",
        title="napari-wsi-mil demo",
        summary=summary,
        metrics=metrics,
        figures=figures,
        timings=timings,
    )
    yield Progress("7/7 report", 1, 1)
    return DemoResult(path, metrics)


def _pretrain_warning(encoder: Path) -> str | None:
    """The collapse warning of a pretrained encoder file, from its recorded spread."""
    from napari_wsi_mil.pretrain.encoder_file import load_encoder
    from napari_wsi_mil.pretrain.trainer import PretrainConfig, collapse_warning

    metadata = load_encoder(encoder).metadata
    spread = metadata.get("projection_spread")
    return None if spread is None else collapse_warning(PretrainConfig(metadata["method"]), spread)


def _slide_figure(store, synthetic, test_cohort, path: Path) -> Path:
    """The positive test slide with the largest lesion, scored by WeakSupCon + AB-MIL
    (the demo always trains that pair)."""
    from napari_wsi_mil.mil.predict import recorded_mask_threshold
    from napari_wsi_mil.report import slide_figure
    from napari_wsi_mil.slide import open_slide
    from napari_wsi_mil.store.geojson import read_geojson_polygons

    by_id = {s.path.stem: s for s in synthetic.slides}
    positives = [e for e in test_cohort if e.label == 1] or list(test_cohort)
    entry = max(positives, key=lambda e: by_id[e.slide_id].lesion_fraction)
    run = store.root.parent / "runs" / "weaksupcon-abmil"  # the demo always trains it
    arrays, attrs = store.read_result("predictions", run.name, entry.slide_id)
    grid, _ = store.read_tiles(entry.slide_id)
    geojson = synthetic.root / "annotations" / f"{entry.slide_id}.geojson"
    polygons = read_geojson_polygons(geojson) if geojson.exists() else []
    with open_slide(entry.path) as slide:
        thumbnail = slide.thumbnail(1024)
        size = slide.dimensions
    title = (
        f"{entry.slide_id} (label {entry.label}): P(tumour) = {attrs['probability']:.2f} "
        f"by {run.name}"
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
