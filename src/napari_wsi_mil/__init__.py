"""napari-wsi-mil: weakly supervised learning on whole-slide images.

Importing the package is cheap: it never imports torch, Qt or napari. The heavy
pieces live in subpackages (``slide``, ``store``, ...) that import what they need.
The jobs (generators driven by :func:`run_job`, see ``docs/architecture.md``) are
listed here and imported on first use (PEP 562), so ``napari_wsi_mil.tile_slides_job``
works without making ``import napari_wsi_mil`` heavy.
"""

import importlib

from napari_wsi_mil.errors import CohortError, JobCancelled, SlideError, StoreError, WsiMilError

__version__ = "0.1.0"

#: Public name -> the module that defines it (imported on first access).
_LAZY = {
    "Progress": "napari_wsi_mil.jobs",
    "run_job": "napari_wsi_mil.jobs",
    "make_cohort_job": "napari_wsi_mil.slide.synthetic",
    "make_mosaic_cohort_job": "napari_wsi_mil.slide.mosaic",
    "tile_slides_job": "napari_wsi_mil.store.tiling_job",
    "export_tiles_job": "napari_wsi_mil.store.h5_interop",
    "export_features_job": "napari_wsi_mil.store.h5_interop",
    "import_features_job": "napari_wsi_mil.store.h5_interop",
    "pretrain_job": "napari_wsi_mil.pretrain.trainer",
    "extract_features_job": "napari_wsi_mil.features.extract",
    "extract_with_dask_job": "napari_wsi_mil.features.distributed",
    "slide_clusters_job": "napari_wsi_mil.features.clusters",
    "embedding_job": "napari_wsi_mil.features.embedding",
    "train_mil_job": "napari_wsi_mil.mil.train",
    "infer_job": "napari_wsi_mil.mil.infer",
    "analyse_slide_job": "napari_wsi_mil.review.analyse",
    "export_predictions_job": "napari_wsi_mil.review.export",
    "demo_job": "napari_wsi_mil.demo",
    "demo_sample_job": "napari_wsi_mil.demo_sample",
}

__all__ = [
    "CohortError",
    "JobCancelled",
    "SlideError",
    "StoreError",
    "WsiMilError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
