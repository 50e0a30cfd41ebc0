"""Patch-level encoder pretraining: augmentations, contrastive losses, models, trainer.

Submodules (import them directly; importing this package loads nothing heavy):

- :mod:`napari_wsi_mil.pretrain.augment`: the histology augmentation recipe as a
  batched tensor transform that runs on CPU or GPU.
- :mod:`napari_wsi_mil.pretrain.losses`: NT-Xent, SupCon, WeakSupCon and CluSiam losses.
- :mod:`napari_wsi_mil.pretrain.architecture`: the bare ResNet-18 trunk and the heads
  (shapes only, no weights read).
- :mod:`napari_wsi_mil.pretrain.models`: trunks from weights files, stage freezing and
  :class:`~napari_wsi_mil.pretrain.models.ContrastiveModel`.
- :mod:`napari_wsi_mil.pretrain.optim`: LARS and the learning-rate schedules.
- :mod:`napari_wsi_mil.pretrain.distributed`: torchrun/DDP helpers (all-gather with grad).
- :mod:`napari_wsi_mil.pretrain.trainer`: the pretraining job.
- :mod:`napari_wsi_mil.pretrain.encoder_file`: encoder files (safetensors + metadata).
"""

#: The pretraining methods, in the order the papers introduce them.
METHODS = ("simclr", "supcon", "weaksupcon", "clusiam")

#: Trunk stages in order; ``train_from`` names the first one trained (earlier ones frozen).
TRUNK_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")

#: Augmentation recipes (:data:`napari_wsi_mil.pretrain.augment.RECIPES`): ``histology``
#: (SimCLR's, rotations and flips added) and ``he`` (lighter colour jitter, HED jitter).
AUGMENTATIONS = ("histology", "he")
