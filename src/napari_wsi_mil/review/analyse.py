"""Analyse one slide with a trained MIL model: tile, extract, infer, all as one job.

The model file records what it needs (``feature_attrs`` of its feature set): the
resolution and patch size of the tiling (``target_mpp``, ``patch_size``) and the
encoder (``encoder`` name and ``encoder_sha256``). :func:`analyse_slide_job` reuses the
slide's tiles and features when the project has them with those settings, and makes
them otherwise, then infers and returns a :class:`SlideAnalysis` with everything the
viewer's layers need. Encoder files are looked up beside the run folder and in the
project unless a path is given, and must match the recorded checksum.

The model file also records its mask threshold (the instance probability from which a
tile is tumour: WENO's fitted bag threshold, 0.5 for the other models and for files
without one); :func:`model_mask_threshold_of` reads it for the viewer's initial mask
threshold and :class:`SlideAnalysis` carries it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.jobs import Job, Progress, relay
from napari_wsi_mil.mil import DEFAULT_MASK_THRESHOLD
from napari_wsi_mil.mil.infer import infer_job
from napari_wsi_mil.mil.predict import (
    MODEL_FORMAT,
    read_model_metadata,
    recorded_classes,
    recorded_mask_threshold,
)
from napari_wsi_mil.review.heatmap import evidence_class
from napari_wsi_mil.slide.tiling import TileGrid, TilingParams
from napari_wsi_mil.store.keys import FEATURES, PREDICTIONS
from napari_wsi_mil.store.project import ProjectStore
from napari_wsi_mil.store.tiling_job import slide_id_for, tile_slides_job
from napari_wsi_mil.weights_file import load_tensors


def _named(spec: object) -> bool:
    """True for an encoder name (``random``, ``uni``, ``hf-hub:...``), not a file."""
    from napari_wsi_mil.features.encoders import names_a_model

    return isinstance(spec, str) and bool(spec) and names_a_model(spec)


#: Share of the analysis progress bar per stage: (start, end) in per-mille.
_STAGES = {"tiling": (0, 100), "extract": (100, 880), "infer": (880, 960), "clusters": (960, 1000)}

#: Slide-layer metadata keys that suggest a model and a project for analysing the slide
#: (set by the "Demo cohort" sample; "Analyse slide" fills its fields from them).
MODEL_KEY = "analyse_model"
PROJECT_KEY = "analyse_project"


def model_mask_threshold_of(model_path: str | os.PathLike | None) -> float:
    """The mask threshold recorded in a model file (see the module doc); 0.5 for a file
    without one, or that cannot be read (the analysis itself reports that)."""

    if model_path is None or not Path(model_path).is_file():
        return DEFAULT_MASK_THRESHOLD
    try:
        return recorded_mask_threshold(read_model_metadata(model_path))
    except (WsiMilError, TypeError, ValueError):
        return DEFAULT_MASK_THRESHOLD


def suggested_inputs(metadata: Mapping) -> tuple[Path | None, Path | None]:
    """``(model, project)`` that a slide's metadata suggests; the model only when its file
    exists, the project only with a model."""
    model = metadata.get(MODEL_KEY)
    if not model or not Path(model).is_file():
        return None, None
    project = metadata.get(PROJECT_KEY)
    return Path(model), Path(project) if project else None


@dataclass
class SlideAnalysis:
    """A slide's predictions, in its TileGrid order, and what is needed to show them."""

    slide_id: str
    slide_path: Path
    grid: TileGrid
    attention: np.ndarray  # (N,) softmax weights
    instance_probability: np.ndarray  # (N,)
    probability: float
    prediction: int
    threshold: float
    prediction_name: str  # predictions/<name>/<slide_id> in the store
    model_name: str
    feature_name: str
    slide_size: tuple[int, int]  # level-0 (width, height)
    clusters: np.ndarray | None = None  # (N,) CluSiam cluster ids when the encoder has them
    warnings: tuple[str, ...] = ()
    mask_threshold: float = 0.5  # the model's: a tile is tumour from this probability
    classes: tuple[str, ...] = ("normal", "tumor")  # the model's, negative first
    class_probability: np.ndarray | None = None  # (C,) the slide's; None: binary, old
    class_attention: np.ndarray | None = None  # (N, C) one map per class (CLAM-MB, DSMIL)

    @property
    def is_multiclass(self) -> bool:
        """More than two classes: class maps and class names instead of tumour/normal."""
        return len(self.classes) > 2

    @property
    def predicted_class(self) -> str:
        return self.classes[self.prediction]

    @property
    def evidence_class(self) -> int:
        """The class of the mask's tiles (:func:`~napari_wsi_mil.review.heatmap.evidence_class`)."""

        if self.class_probability is None:
            return 1
        return evidence_class(self.class_probability)

    def call(self) -> str:
        """The slide's call in words: ``P(tumour) = 0.812 -> tumour`` with two classes,
        ``luad (P = 0.710; P(not normal) = 0.850)`` with more."""
        if not self.is_multiclass:
            called = "tumour" if self.prediction else "normal"
            return f"P(tumour) = {self.probability:.3f} -> {called}"
        p = float(self.class_probability[self.prediction])
        return (
            f"{self.predicted_class} (P = {p:.3f}; "
            f"P(not {self.classes[0]}) = {self.probability:.3f})"
        )


def find_encoder(
    meta: dict,
    model_path: str | os.PathLike,
    project: ProjectStore | None = None,
    encoder: str | os.PathLike | None = None,
) -> str:
    """The encoder spec (a name such as ``imagenet`` or ``uni``, or a file path) the
    model's features need.

    ``encoder`` (a path) is used when given; otherwise the file named in the model's
    ``feature_attrs['encoder']`` is looked for in the run folder, its parent, the
    project folder and ``<project>/encoders``. A file must have the recorded sha256.
    """
    attrs = meta.get("feature_attrs") or {}
    name, sha = attrs.get("encoder"), attrs.get("encoder_sha256")
    if encoder is None and _named(name):
        return name
    from napari_wsi_mil.features.encoders import file_sha256

    if encoder is not None:
        spec = str(encoder)
        if _named(spec):
            if name != spec:
                raise WsiMilError(
                    f"{model_path}: the model was trained on features of {name!r}, not {spec!r}"
                )
            return spec
        path = Path(spec)
        if not path.is_file():
            raise WsiMilError(f"{path}: no such encoder file")
        if sha and file_sha256(path) != sha:
            raise WsiMilError(
                f"{path}: not the encoder the model {model_path} was trained with "
                f"({name!r}, sha256 {sha[:12]}...); its features would not match"
            )
        return str(path)
    if not name:
        raise WsiMilError(f"{model_path}: the model file does not record its encoder")
    run_dir = Path(model_path).resolve().parent
    folders = [run_dir, run_dir.parent]
    if project is not None:
        folders += [project.root, project.root / "encoders"]
    for folder in folders:
        candidate = folder / name
        if candidate.is_file() and (not sha or file_sha256(candidate) == sha):
            return str(candidate)
    raise WsiMilError(
        f"{model_path}: the model needs features from the encoder file {name!r} "
        f"(sha256 {str(sha)[:12]}...), which is not in {', '.join(str(f) for f in folders)}; "
        "give its path (Analyse slide: 'encoder'; Python: encoder=...)"
    )


def _check_tiles(project: ProjectStore, slide_id: str, slide_path: Path, fa: dict) -> bool:
    """Whether the slide is tiled as the model needs; raise when tiled differently."""
    if not project.has_tiles(slide_id):
        return False
    _, attrs = project.read_tiles(slide_id)
    geo, stored = attrs["geometry"], (attrs.get("slide") or {}).get("path")
    if stored and Path(stored).resolve() != slide_path.resolve():
        raise WsiMilError(
            f"{project.root}: slide id {slide_id!r} is already tiled from another file "
            f"({stored}); give this slide another id or use another project"
        )
    want = (fa.get("target_mpp"), fa.get("patch_size"))
    have = (geo.get("target_mpp"), geo.get("patch_size"))
    if None not in want and (
        abs(float(want[0]) - float(have[0] or 0)) > 1e-6 or int(want[1]) != int(have[1])
    ):
        raise WsiMilError(
            f"{project.root}: slide {slide_id!r} is tiled at {have[0]} um/px, {have[1]} px "
            f"but the model needs {want[0]} um/px, {want[1]} px; use another project"
        )
    return True


def analyse_slide_job(
    project: ProjectStore | str | os.PathLike,
    slide_path: str | os.PathLike,
    model_path: str | os.PathLike,
    *,
    encoder: str | os.PathLike | None = None,
    slide_id: str | None = None,
    min_tissue: float = 0.5,
    slide_mpp: float | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
    name: str | None = None,
) -> Job[SlideAnalysis]:
    """Tile (if needed), extract features (if needed), infer; return the analysis.

    Parameters
    ----------
    project
        Project store (or its folder; created when missing).
    slide_path, model_path
        The slide file and a trained model (``RUN_DIR/model.safetensors``).
    encoder
        The encoder file, when it is not beside the run folder or in the project.
    slide_id
        Store id of the slide (default: the file name without extension).
    min_tissue, slide_mpp
        Tiling settings the model does not record (tissue fraction per patch; a pixel
        size for files that lack one).
    name
        Prediction name in the store (default: the run folder's name).

    Progress is one bar over the stages (``total`` 1000): tiling, extract, infer and,
    when the encoder has a CluSiam cluster head, clusters.
    """

    if not isinstance(project, ProjectStore):
        project = ProjectStore(project, create=True)
    slide_path, model_path = Path(slide_path), Path(model_path)
    if not model_path.is_file():
        raise WsiMilError(f"{model_path}: no such model file")

    _, meta = load_tensors(model_path, MODEL_FORMAT)
    fa = meta.get("feature_attrs") or {}
    feature_name = meta["features"]
    slide_id = slide_id or slide_id_for(slide_path)
    name = name or model_path.resolve().parent.name
    warnings: list[str] = (
        [f"this model is not to be trusted: {meta['failed']}"] if meta.get("failed") else []
    )

    yield from _tiling_stage(
        project, slide_id, slide_path, model_path, fa, min_tissue, slide_mpp, warnings
    )
    have, loaded = _stored_features_and_encoder(
        project, slide_id, model_path, meta, encoder, warnings
    )
    if not have:
        yield from _extract_stage(
            project, slide_id, slide_path, loaded, fa, feature_name, batch_size, num_workers, device
        )

    infer = infer_job(project, model_path, slide_ids=[slide_id], name=name)
    yield from relay(None, infer, _STAGES["infer"])

    clusters = None
    if loaded is not None and loaded.cluster_head is not None:
        clusters = yield from _cluster_stage(project, feature_name, slide_id, loaded)
    yield Progress("done", 1000, 1000)
    return replace(
        read_analysis(project, slide_id, name, slide_path),
        model_name=str(meta["model"]),
        feature_name=feature_name,
        clusters=clusters,
        warnings=tuple(warnings),
    )


def _tiling_stage(
    project: ProjectStore, slide_id, slide_path, model_path, fa, min_tissue, slide_mpp, warnings
):
    """Tile the slide at the model's settings unless it is tiled so already; tiling
    warnings go to ``warnings``."""

    if not _check_tiles(project, slide_id, slide_path, fa):
        if fa.get("target_mpp") is None:
            raise WsiMilError(
                f"{model_path}: the model's features record no target resolution; tile the "
                "slide with the settings used for training first"
            )
        params = TilingParams(
            target_mpp=float(fa["target_mpp"]),
            patch_size=int(fa["patch_size"]),
            min_tissue=min_tissue,
            slide_mpp=slide_mpp,
        )
        tiling = tile_slides_job(project, [(slide_id, slide_path)], params)
        report = yield from relay(None, tiling, _STAGES["tiling"])
        for message in report.warnings.get(slide_id, []):
            warnings.append(message)
    grid, _ = project.read_tiles(slide_id)
    if len(grid) == 0:
        raise WsiMilError(f"{slide_path}: no patches (no tissue found at the model's settings)")


def _stored_features_and_encoder(
    project: ProjectStore, slide_id, model_path, meta, encoder, warnings
):
    """``(have, loaded)``: whether the slide's features are stored (from the model's
    encoder, else an error), and the encoder loaded when extraction or clusters need it
    (None when the features exist and the encoder is named or not found)."""
    fa = meta.get("feature_attrs") or {}
    feature_name = meta["features"]
    loaded = None
    have = project.has_result(FEATURES, feature_name, slide_id)
    if have:
        stored_sha = project.read_result(FEATURES, feature_name, slide_id)[1].get("encoder_sha256")
        if fa.get("encoder_sha256") and stored_sha != fa["encoder_sha256"]:
            raise WsiMilError(
                f"{project.root}: features {feature_name!r} of slide {slide_id!r} come from "
                "another encoder than the model's; use another project"
            )
    if not have or not _named(fa.get("encoder")):
        from napari_wsi_mil.features.encoders import load_encoder_spec

        try:
            spec = find_encoder(meta, model_path, project, encoder)
        except WsiMilError:
            if not have:
                raise
            spec = None  # features exist; the encoder is only needed for clusters
            warnings.append("encoder file not found: no CluSiam clusters")
        loaded = load_encoder_spec(spec) if spec else None
    return have, loaded


def _extract_stage(
    project: ProjectStore,
    slide_id,
    slide_path,
    loaded,
    fa,
    feature_name,
    batch_size,
    num_workers,
    device,
):
    """Extract the slide's features as the model's were (dtype, stain normalisation)."""
    from napari_wsi_mil.features.extract import extract_features_job
    from napari_wsi_mil.features.stain import StainNormaliser

    yield from relay(
        None,
        extract_features_job(
            project,
            [slide_id],
            loaded,
            feature_name,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            dtype=str(fa.get("dtype", "float16")),
            slide_paths={slide_id: slide_path},
            stain=StainNormaliser.from_attrs(fa.get("stain")),  # as the model's features
        ),
        _STAGES["extract"],
    )
    if not project.has_result(FEATURES, feature_name, slide_id):
        raise WsiMilError(f"{slide_path}: feature extraction failed (damaged slide file?)")


def _cluster_stage(project: ProjectStore, feature_name, slide_id, loaded):
    """The CluSiam cluster of each patch, from the stored features."""
    from napari_wsi_mil.features.clusters import assign_clusters
    from napari_wsi_mil.features.extract import read_features

    yield Progress("clusters", _STAGES["clusters"][0], 1000)
    feats = read_features(project, feature_name, slide_id).astype(np.float32)
    return assign_clusters(feats, loaded.cluster_head).astype(np.int32)


def read_analysis(
    project: ProjectStore, slide_id: str, name: str, slide_path: str | os.PathLike | None = None
) -> SlideAnalysis:
    """A stored prediction (``predictions/<name>/<slide_id>``) as a :class:`SlideAnalysis`."""

    grid, tile_attrs = project.read_tiles(slide_id)
    arrays, attrs = project.read_result(PREDICTIONS, name, slide_id)
    facts = tile_attrs.get("slide") or {}
    return SlideAnalysis(
        slide_id=slide_id,
        slide_path=Path(slide_path or facts.get("path") or ""),
        grid=grid,
        attention=arrays["attention"].astype(np.float32),
        instance_probability=arrays["instance_probability"].astype(np.float32),
        probability=float(attrs["probability"]),
        prediction=int(attrs["prediction"]),
        threshold=float(attrs["threshold"]),
        prediction_name=name,
        model_name=str(attrs.get("model_name", "")),
        feature_name=str(attrs.get("features", "")),
        slide_size=tuple(facts.get("dimensions") or (0, 0)),
        mask_threshold=recorded_mask_threshold(attrs),
        classes=recorded_classes(attrs),
        class_probability=(
            np.asarray(attrs["class_probability"], np.float64)
            if "class_probability" in attrs
            else None
        ),
        class_attention=(
            arrays["class_attention"].astype(np.float32) if "class_attention" in arrays else None
        ),
    )
