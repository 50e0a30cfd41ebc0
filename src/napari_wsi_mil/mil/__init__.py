"""Slide-level multiple-instance learning (MIL) on frozen patch features.

Submodules (import them directly; importing this package loads nothing heavy):

- :mod:`napari_wsi_mil.mil.base`: :class:`~napari_wsi_mil.mil.base.MilOutput` (the one
  output type of every model) and :class:`~napari_wsi_mil.mil.base.MilModel`.
- :mod:`napari_wsi_mil.mil.blocks`: shared building blocks (gated attention, instance
  encoder, attention pooling, smooth top-1 SVM loss, normalised entropy).
- :mod:`napari_wsi_mil.mil.abmil`: gated attention MIL (Ilse et al. 2018).
- :mod:`napari_wsi_mil.mil.clam`: CLAM-SB and CLAM-MB (Lu et al. 2021).
- :mod:`napari_wsi_mil.mil.dtfd`: DTFD-MIL (Zhang et al. 2022).
- :mod:`napari_wsi_mil.mil.weno`: WENO (Qu et al. 2022) and its pseudo-label rules.
- :mod:`napari_wsi_mil.mil.msclam`: MS-CLAM (Tourniaire et al. 2023) and its samplers.
- :mod:`napari_wsi_mil.mil.transmil`: TransMIL (Shao et al. 2021) with Nystrom attention.
- :mod:`napari_wsi_mil.mil.dsmil`: DSMIL (Li et al. 2021).
- :mod:`napari_wsi_mil.mil.registry`: ``build_model`` and per-model default
  hyperparameters (architecture and training), the one place a trainer or CLI reads.

Output convention (all models): class logits ``[C]`` (index 0 = the negative class;
``C = 2`` for tumour / normal), ``probability = 1 - softmax(logit)[0]``
(``softmax(logit)[1]`` with two classes); see :class:`~napari_wsi_mil.mil.base.MilOutput`.
WENO and MS-CLAM are binary (:attr:`~napari_wsi_mil.mil.base.MilModel.binary_only`).
"""

#: The MIL models, by registry name.
MODELS = ("abmil", "clam", "clam-mb", "dtfd", "weno", "msclam", "transmil", "dsmil")

#: The bag decision threshold on ``probability`` of a model that does not fit its own
#: (:attr:`~napari_wsi_mil.mil.base.MilModel.fits_threshold`), and of model files and
#: prediction folders that do not record one.
DEFAULT_THRESHOLD = 0.5

#: The instance probability from which a tile is tumour in a model's mask unless the
#: model says otherwise (:meth:`~napari_wsi_mil.mil.base.MilModel.mask_threshold`), and
#: in model files and prediction folders that do not record one.
DEFAULT_MASK_THRESHOLD = 0.5
