"""Patch-level encoder pretraining: augmentations, contrastive losses and models.

Submodules (import them directly; importing this package loads nothing heavy):

- :mod:`napari_wsi_mil.pretrain.augment`: the histology augmentation recipe as a
  batched tensor transform that runs on CPU or GPU.
- :mod:`napari_wsi_mil.pretrain.losses`: NT-Xent, SupCon, WeakSupCon and CluSiam losses.
- :mod:`napari_wsi_mil.pretrain.models`: the ResNet-18 trunk, the heads and
  :class:`~napari_wsi_mil.pretrain.models.ContrastiveModel`.
"""
