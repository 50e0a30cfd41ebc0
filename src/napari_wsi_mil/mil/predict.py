"""Running a trained MIL model on bags, and MIL model files.

Importing this module does not import torch (the viewer reads model metadata with it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_wsi_mil.errors import WsiMilError
from napari_wsi_mil.mil import DEFAULT_MASK_THRESHOLD
from napari_wsi_mil.mil.bags import Bag
from napari_wsi_mil.mil.registry import build_model
from napari_wsi_mil.store.cohort import BINARY_CLASSES
from napari_wsi_mil.validate import check_fraction, check_int
from napari_wsi_mil.weights_file import load_metadata, load_tensors, save_tensors

if TYPE_CHECKING:
    from napari_wsi_mil.mil.base import MilModel

MODEL_FORMAT = "napari-wsi-mil-mil-model"


@dataclass
class BagPrediction:
    probability: float  # P(not negative): P(positive) with two classes
    attention: np.ndarray  # (N,) sums to 1
    instance_probability: np.ndarray  # (N,)
    class_probability: np.ndarray  # (C,) sums to 1
    class_attention: np.ndarray | None = None  # (C, N): CLAM-MB, DSMIL

    def called(self, threshold: float) -> int:
        """The called class: positive (1) when ``probability >= threshold`` with two
        classes, else the most probable class."""
        if len(self.class_probability) == 2:
            return int(self.probability >= threshold)
        return int(np.argmax(self.class_probability))


def predict_bag(model: MilModel, features: np.ndarray, seed: int = 0) -> BagPrediction:
    """The model's slide probability, attention and instance probabilities for one bag.

    Every model gets a generator seeded with ``seed``, so models with random inference
    (DTFD-MIL's pseudo-bags) predict reproducibly.
    """
    import torch

    model.eval()
    x = torch.as_tensor(features, dtype=torch.float32)
    with torch.inference_mode():
        out = model(x, generator=torch.Generator().manual_seed(seed))
    return BagPrediction(
        float(out.probability),
        out.attention.numpy().astype(np.float32),
        out.instance_probability.numpy().astype(np.float32),
        out.class_probability.numpy().astype(np.float64),
        None if out.class_attention is None else out.class_attention.numpy().astype(np.float32),
    )


def predict_bags(model: MilModel, bags: list[Bag]) -> list[BagPrediction]:
    return [predict_bag(model, b.features) for b in bags]


def recorded_classes(meta: dict) -> tuple[str, ...]:
    """The class names recorded in a model file's metadata; the binary cohort's
    (``normal``, ``tumor``) for files written without them."""

    return tuple(meta.get("classes") or BINARY_CLASSES)


def recorded_mask_threshold(meta: dict) -> float:
    """The mask threshold recorded in a model file's metadata or a stored prediction's
    attrs; 0.5 for those written without one."""
    return float(meta.get("mask_threshold", DEFAULT_MASK_THRESHOLD))


def save_model(path: str | os.PathLike, model: MilModel, metadata: dict) -> None:
    """``metadata`` holds ``model`` (name), ``in_dim``, ``hparams``, ``classes`` (the class
    names, negative first), ``threshold`` (the bag decision threshold), ``mask_threshold``
    (:meth:`MilModel.mask_threshold`) and the feature set's facts (``features``,
    ``feature_attrs``)."""
    save_tensors(path, model.state_dict(), metadata, MODEL_FORMAT)


def read_model_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a model file, without loading its weights."""
    return load_metadata(path, MODEL_FORMAT)


def load_model(path: str | os.PathLike):
    """``(model in eval mode, metadata)`` from a file written by :func:`save_model`."""

    state, meta = load_tensors(path, MODEL_FORMAT)
    try:
        hparams = meta.get("hparams", {})
        if not isinstance(hparams, dict):
            raise TypeError(f"hparams {hparams!r} are not a JSON object")
        model = build_model(meta.get("model"), check_int("in_dim", meta.get("in_dim")), **hparams)
        model.load_state_dict(state)
        if not isinstance(meta.get("features"), str):
            raise TypeError("no feature-set name ('features') in the metadata")
        if not isinstance(meta.get("feature_attrs", {}), dict):
            raise TypeError("'feature_attrs' is not a JSON object")
        for key in ("threshold", "mask_threshold"):
            if key in meta:
                check_fraction(key, meta[key])
        classes = meta.get("classes", ["normal", "tumor"])
        if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise TypeError(f"'classes' {classes!r} is not a list of names")
        if len(classes) != model.n_classes:
            raise ValueError(f"{len(classes)} class names for a model of {model.n_classes}")
    except (WsiMilError, TypeError, ValueError, RuntimeError, KeyError) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines()] or [type(exc).__name__]
        loading = lines[0].startswith("Error(s) in loading") and len(lines) > 1
        reason = lines[1] if loading else lines[0]
        raise WsiMilError(f"{path}: not a usable model file ({reason[:300]})") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise WsiMilError(f"{path}: weight {bad[0]!r} holds NaN or inf")
    return model.eval(), meta
