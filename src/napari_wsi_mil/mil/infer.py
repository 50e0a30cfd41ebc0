"""Inference with a trained MIL model, and evaluation of the predictions.

``infer_job`` writes, for each slide, its probability and per-patch attention and
instance probability into the store (``predictions/<name>/<slide_id>``, read by the
viewer) and, with ``out_dir``, as files::

    PRED_DIR/slides.csv               slide_id, case_id, probability, prediction,
                                      n_patches, patch_size_level0, threshold,
                                      mask_threshold, predicted_class,
                                      p_<class> for each class
    PRED_DIR/tiles/<slide_id>.csv     index, x, y, attention, instance_probability
                                      (and attention_<class> for each class of a
                                      model with one attention map per class)

``probability`` is P(not the negative class): P(tumour) of a binary model.
``threshold`` is the model's decision threshold on it (with two classes ``prediction``
is ``probability >= threshold``; WENO's is fitted, the others' 0.5) and
:func:`evaluate_predictions` scores accuracy, balanced accuracy and F1 there. With
more classes ``prediction`` is the index of the most probable class, and
``predicted_class`` names the called class in either case.
``mask_threshold`` is the instance probability from which a tile is tumour: the model's
(recorded in its file: WENO's fitted bag threshold, 0.5 for the other models and for
model files without one) unless ``infer_job(mask_threshold=...)`` gives another. It is
stored with the predictions, the GeoJSON mask exported from them uses it
(:func:`napari_wsi_mil.review.export.export_predictions_job`, which ``wsi-mil infer
--geojson/--heatmap-tiff`` runs after this job) and :func:`evaluate_predictions` cuts
its masks (Dice, specificity) there; prediction folders written before the column
existed count as 0.5.

With a cohort, the slides of one case form one bag (as in training); the case's
probability is every slide's probability and its attention maps back to each slide.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_wsi_mil.errors import StoreError, WsiMilError
from napari_wsi_mil.jobs import Job, Progress, atomic_file
from napari_wsi_mil.mil import DEFAULT_MASK_THRESHOLD, DEFAULT_THRESHOLD
from napari_wsi_mil.mil.bags import slide_tile_labels
from napari_wsi_mil.mil.metrics import (
    bag_metrics,
    instance_metrics,
    localisation_metrics,
    multiclass_bag_metrics,
)
from napari_wsi_mil.mil.predict import (
    load_model,
    predict_bag,
    recorded_classes,
    recorded_mask_threshold,
)
from napari_wsi_mil.slide.tiling import PatchGeometry, TileGrid
from napari_wsi_mil.store.keys import FEATURES, PREDICTIONS
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tile_labels import DEFAULT_MIN_COVERAGE

if TYPE_CHECKING:
    from napari_wsi_mil.store.cohort import Cohort


@dataclass
class InferenceReport:
    name: str
    probabilities: dict[str, float] = field(default_factory=dict)  # slide id -> P(positive)
    predictions: dict[str, int] = field(default_factory=dict)  # slide id -> called class
    classes: tuple[str, ...] = ("normal", "tumor")
    threshold: float = 0.5
    mask_threshold: float = 0.5
    failed: str | None = None  # why the model's training failed (its file says so)


def _groups(slide_ids: list[str], cohort: Cohort | None) -> list[tuple[str, list[str]]]:
    if cohort is None:
        return [(s, [s]) for s in slide_ids]
    case_of = {e.slide_id: e.case_id for e in cohort}
    groups: dict[str, list[str]] = {}
    for s in slide_ids:
        groups.setdefault(case_of.get(s, s), []).append(s)
    return list(groups.items())


def infer_job(
    project: ProjectStore,
    model_path: str | os.PathLike,
    *,
    slide_ids: list[str] | None = None,
    cohort: Cohort | None = None,
    out_dir: str | os.PathLike | None = None,
    name: str | None = None,
    mask_threshold: float | None = None,
) -> Job[InferenceReport]:
    """Predict every slide (or case) with the model in ``model_path`` (see module doc).

    ``mask_threshold`` (default: the model's, see the module doc) is the instance
    probability of a tumour tile, stored with the predictions and written to
    ``slides.csv``.
    """
    from napari_wsi_mil.features.extract import feature_dim, read_features

    model, meta = load_model(model_path)
    feature_name = meta["features"]
    name = name or Path(model_path).resolve().parent.name
    ids = slide_ids or project.result_ids(FEATURES, feature_name)
    missing = [s for s in ids if not project.has_result(FEATURES, feature_name, s)]
    if missing:
        raise WsiMilError(
            f"no features {feature_name!r} (the model's feature set) for "
            f"{', '.join(missing[:8])}; run wsi-mil extract with the encoder "
            f"{meta.get('feature_attrs', {}).get('encoder')!r} first"
        )
    if not ids:
        raise WsiMilError(f"the project has no slides with features {feature_name!r}")
    for slide_id in ids:
        if (dim := feature_dim(project, feature_name, slide_id)) != int(meta["in_dim"]):
            raise WsiMilError(
                f"features {feature_name!r} of slide {slide_id!r} have D={dim}; the model "
                f"{model_path} expects D={meta['in_dim']} (features of another encoder)"
            )
    threshold = float(meta.get("threshold", DEFAULT_THRESHOLD))
    if mask_threshold is None:
        mask_threshold = recorded_mask_threshold(meta)
    mask_threshold = float(mask_threshold)
    classes = recorded_classes(meta)
    report = InferenceReport(
        name,
        threshold=threshold,
        mask_threshold=mask_threshold,
        failed=meta.get("failed"),
        classes=classes,
    )
    groups = _groups(ids, cohort)
    rows = []
    for i, (case_id, members) in enumerate(groups):
        yield Progress("infer", i, len(groups), message=case_id)
        parts = [read_features(project, feature_name, s).astype(np.float32) for s in members]
        sizes = [len(p) for p in parts]
        if sum(sizes) == 0:
            continue
        pred = predict_bag(model, np.concatenate(parts))
        bounds = np.cumsum([0, *sizes])
        for k, slide_id in enumerate(members):
            sl = slice(bounds[k], bounds[k + 1])
            prediction = pred.called(threshold)
            attrs = {
                "probability": pred.probability,
                "prediction": prediction,
                "predicted_class": classes[prediction],
                "classes": list(classes),
                "class_probability": [float(p) for p in pred.class_probability],
                "threshold": threshold,
                "mask_threshold": mask_threshold,
                "case_id": case_id,
                "model": str(model_path),
                "model_name": meta["model"],
                "features": feature_name,
            }
            project.write_result(
                PREDICTIONS,
                name,
                slide_id,
                {
                    "attention": pred.attention[sl],
                    "instance_probability": pred.instance_probability[sl],
                    **(
                        {}
                        if pred.class_attention is None
                        else {"class_attention": pred.class_attention[:, sl].T}
                    ),
                },
                attrs,
                overwrite=True,
            )
            report.probabilities[slide_id] = pred.probability
            report.predictions[slide_id] = prediction
            rows.append((slide_id, case_id, pred, sl))
    yield Progress("infer", len(groups), len(groups))
    if out_dir is not None:
        _write_prediction_files(project, Path(out_dir), rows, threshold, mask_threshold, classes)
    return report


def _write_prediction_files(
    project: ProjectStore, out_dir: Path, rows, threshold, mask_threshold, classes
) -> None:
    (out_dir / "tiles").mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / "slides.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "slide_id",
                "case_id",
                "probability",
                "prediction",
                "n_patches",
                "patch_size_level0",
                "threshold",
                "mask_threshold",
                "predicted_class",
                *(f"p_{c}" for c in classes),
            ]
        )
        for slide_id, case_id, pred, sl in rows:
            grid, _ = project.read_tiles(slide_id)
            writer.writerow(
                [
                    slide_id,
                    case_id,
                    f"{pred.probability:.6f}",
                    pred.called(threshold),
                    len(grid),
                    grid.geometry.patch_size_level0,
                    repr(float(threshold)),
                    repr(mask_threshold),  # exact: tiles are compared with it
                    classes[pred.called(threshold)],
                    *(f"{p:.6f}" for p in pred.class_probability),
                ]
            )
            with (
                atomic_file(out_dir / "tiles" / f"{slide_id}.csv") as tile_tmp,
                open(tile_tmp, "w", newline="") as tile_fh,
            ):
                tiles = csv.writer(tile_fh)
                per_class = (
                    [] if pred.class_attention is None else list(pred.class_attention[:, sl])
                )
                tiles.writerow(
                    ["index", "x", "y", "attention", "instance_probability"]
                    + ([f"attention_{c}" for c in classes] if per_class else [])
                )
                for j, ((x, y), a, p) in enumerate(
                    zip(grid.coords, pred.attention[sl], pred.instance_probability[sl], strict=True)
                ):
                    extra = [f"{maps[j]:.6g}" for maps in per_class]
                    tiles.writerow([j, int(x), int(y), f"{a:.6g}", f"{p:.6f}", *extra])


def read_prediction_dir(pred_dir: str | os.PathLike) -> list[dict]:
    """Rows of ``slides.csv`` with each slide's tiles table attached as arrays,
    ``threshold`` and ``mask_threshold`` as floats (0.5 for folders written without
    those columns) and ``class_probability`` (an array in the order of the ``p_<class>``
    columns; None in folders written without them)."""
    pred_dir = Path(pred_dir)
    path = pred_dir / "slides.csv"
    if not path.exists():
        raise WsiMilError(f"{pred_dir}: no slides.csv (run wsi-mil infer --out first)")
    with open(path, newline="") as fh:
        slides = list(csv.DictReader(fh))
    classes = prediction_classes(slides)
    for row in slides:
        row["class_probability"] = (
            np.array([float(row[f"p_{c}"]) for c in classes]) if classes else None
        )
        row["threshold"] = float(row.get("threshold") or DEFAULT_THRESHOLD)
        row["mask_threshold"] = float(row.get("mask_threshold") or DEFAULT_MASK_THRESHOLD)
        with open(pred_dir / "tiles" / f"{row['slide_id']}.csv", newline="") as fh:
            tiles = list(csv.DictReader(fh))
        row["coords"] = np.array([[int(t["x"]), int(t["y"])] for t in tiles], np.int64)
        row["instance_probability"] = np.array([float(t["instance_probability"]) for t in tiles])
    return slides


def prediction_classes(slides: list[dict]) -> tuple[str, ...]:
    """The class names of a prediction folder's ``slides.csv`` rows (from its ``p_<class>``
    columns; empty for folders written without them)."""
    return tuple(key[2:] for key in (slides[0] if slides else {}) if key.startswith("p_"))


def evaluate_predictions(
    pred_dir: str | os.PathLike,
    cohort: Cohort,
    annotations: str | os.PathLike | None = None,
    min_coverage: float = DEFAULT_MIN_COVERAGE,
    project: ProjectStore | str | os.PathLike | None = None,
) -> dict:
    """Bag metrics per slide; instance and localisation metrics where tile labels are
    known. Tile labels come from :func:`~napari_wsi_mil.mil.bags.slide_tile_labels`, as in
    training: with ``project`` (the one the predictions were made from) labels stored
    there (painted in napari) come first, then GeoJSON ``annotations``; every tile of a
    negative slide without either is normal. Tiles are tumour from the mask threshold
    the predictions were made with (``slides.csv``; 0.5 in older folders), which the
    result holds as ``mask_threshold``."""

    if project is not None and not isinstance(project, ProjectStore):
        project = ProjectStore(project)
    labels = cohort.labels()
    slides = [row for row in read_prediction_dir(pred_dir) if row["slide_id"] in labels]
    if not slides:
        raise WsiMilError(f"{pred_dir}: none of its slides is in the cohort")
    y = [labels[row["slide_id"]] for row in slides]
    classes = prediction_classes(slides)
    if len(classes) > 2:
        y = _class_indices([cohort.classes[label] for label in y], classes, pred_dir)
        metrics = multiclass_bag_metrics(y, [r["class_probability"] for r in slides], classes)
    else:
        metrics = bag_metrics(
            y, [float(r["probability"]) for r in slides], _one(slides, "threshold", pred_dir)
        )
    tile_sets = []
    for row, label in zip(slides, y, strict=True):
        slide_id, coords = row["slide_id"], row["coords"]
        if project is None:
            size0 = int(row["patch_size_level0"])
            geo = PatchGeometry(None, None, size0, size0, size0, 0, size0)
            grid = TileGrid(coords, np.ones(len(coords), np.float32), geo, (1, 1))
        else:
            if not project.has_tiles(slide_id):
                raise StoreError(
                    f"{project.root}: slide {slide_id!r} is not tiled; give the project "
                    f"the predictions in {pred_dir} were made from"
                )
            grid, _ = project.read_tiles(slide_id)
            if not np.array_equal(grid.coords, coords):
                raise StoreError(
                    f"{pred_dir}: the predictions of slide {slide_id!r} were made from "
                    f"other patches than its tiling in {project.root}; run wsi-mil infer again"
                )
        tiles = slide_tile_labels(project, slide_id, label, annotations, min_coverage, grid=grid)
        tile_sets.append((label, tiles, row["instance_probability"]))
    metrics.update(
        instance_metrics(
            np.concatenate([t for _, t, _ in tile_sets]),
            np.concatenate([s for _, _, s in tile_sets]),
        )
    )
    mask_threshold = _one(slides, "mask_threshold", pred_dir)
    metrics.update(localisation_metrics(tile_sets, mask_threshold))
    metrics["mask_threshold"] = mask_threshold
    return metrics


def _class_indices(names: list[str], classes: tuple[str, ...], pred_dir) -> list[int]:
    """Each cohort class name's index among the model's ``classes``."""
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise WsiMilError(
            f"{pred_dir}: the cohort's class {', '.join(map(repr, unknown))} is not one "
            f"the model predicts ({', '.join(classes)})"
        )
    return [classes.index(name) for name in names]


def _one(slides: list[dict], key: str, pred_dir) -> float:
    """The one value of column ``key`` in a prediction folder (one model made it)."""
    values = sorted({row[key] for row in slides})
    if len(values) > 1:
        raise WsiMilError(
            f"{pred_dir}: slides.csv mixes values of {key} {values}; run wsi-mil infer again"
        )
    return values[0]


def write_metrics(path: str | os.PathLike, metrics: dict) -> None:
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=2))
