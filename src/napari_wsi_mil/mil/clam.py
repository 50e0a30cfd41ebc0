"""CLAM-SB (Lu et al. 2021, "Data-efficient and weakly supervised computational
pathology on whole-slide images"), single attention branch, binary task, as
ALGORITHMS.md restates it.

Bag branch: gated AB-MIL (:class:`~napari_wsi_mil.mil.abmil.ABMIL`, attention size
256, dropout 0.25). Instance clustering: one instance classifier ``Linear(E, 2)`` per
bag class; for a bag of class ``y`` the top-``B`` attended instances get target 1
and the bottom-``B`` target 0 for classifier ``y`` only (the binary, non-subtyping
rule of the reference: the other class' classifier is not trained on that bag).
``B = 8`` capped at ``N // 2`` so the two sets never overlap; a bag of one
instance has no instance loss. Loss ``0.7 * CE_bag + 0.3 * L_inst`` with
``L_inst`` cross-entropy (the reference's code default) or the smooth top-1 SVM
(the reference README's examples).

Shapes: ``N`` instances, ``D`` feature size, ``E`` embedding size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_wsi_mil.mil.abmil import ABMIL
from napari_wsi_mil.mil.base import (
    N_CLASSES,
    MilModel,
    MilOutput,
    bag_cross_entropy,
    bag_label_tensor,
)
from napari_wsi_mil.mil.blocks import smooth_top1_svm_loss

#: Instance-loss options of CLAM and MS-CLAM.
INSTANCE_LOSSES = ("ce", "svm")


def instance_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """Mean instance-classifier loss over selected instances.

    Parameters
    ----------
    logits : torch.Tensor
        ``[M, 2]`` instance-classifier logits.
    targets : torch.Tensor
        ``[M]`` targets in {0, 1}.
    kind : {"ce", "svm"}
        Cross-entropy or :func:`~napari_wsi_mil.mil.blocks.smooth_top1_svm_loss`
        (``alpha = tau = 1``).

    Returns
    -------
    torch.Tensor
        0-d; a graph-connected 0 when ``M = 0``.
    """
    if kind not in INSTANCE_LOSSES:
        raise ValueError(f"instance loss must be one of {INSTANCE_LOSSES}; got {kind!r}")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    if kind == "svm":
        return smooth_top1_svm_loss(logits, targets)
    return F.cross_entropy(logits, targets)


def top_bottom_indices(attention: torch.Tensor, b: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """CLAM's instance sampling: the ``k`` most and ``k`` least attended instances.

    ``k = min(b, N // 2)``, so the two sets are disjoint; ``N = 1`` gives two empty
    sets (no instance loss), ``N = 3`` one instance each.

    Parameters
    ----------
    attention : torch.Tensor
        ``[N]`` attention weights or logits (same order).
    b : int
        ``B``, instances per side before the cap.

    Returns
    -------
    top : torch.Tensor
        ``[k]`` long indices, highest attention first.
    bottom : torch.Tensor
        ``[k]`` long indices, lowest attention first.
    """
    k = min(b, attention.numel() // 2)
    order = torch.argsort(attention.detach(), descending=True)
    return order[:k], order.flip(0)[:k]


class CLAMSB(MilModel):
    """CLAM-SB with binary bag labels (Lu et al. 2021).

    ``instance_probability`` is the positive-class instance classifier's
    ``softmax(.)[1]``: the probability that an instance is evidence for the
    positive (tumour) class.

    Parameters
    ----------
    in_dim : int
        Feature size ``D``.
    embed_dim : int
        Instance embedding size ``E`` (512).
    attention_dim : int
        Gated attention size (256).
    dropout : float
        Dropout after the encoder and in the attention branches (0.25).
    b : int
        Instances per side for instance clustering (8, capped at ``N // 2``).
    inst_loss : {"ce", "svm"}
        Instance loss.
    bag_weight : float
        Weight of the bag CE; the instance loss gets ``1 - bag_weight`` (0.7).
    """

    def __init__(
        self,
        in_dim: int,
        embed_dim: int = 512,
        attention_dim: int = 256,
        dropout: float = 0.25,
        b: int = 8,
        inst_loss: str = "ce",
        bag_weight: float = 0.7,
    ):
        super().__init__()
        if inst_loss not in INSTANCE_LOSSES:
            raise ValueError(f"inst_loss must be one of {INSTANCE_LOSSES}; got {inst_loss!r}")
        self.in_dim = in_dim
        self.bag = ABMIL(in_dim, embed_dim, attention_dim, dropout)
        self.instance_classifiers = nn.ModuleList(nn.Linear(embed_dim, 2) for _ in range(N_CLASSES))
        self.b = b
        self.inst_loss = inst_loss
        self.bag_weight = bag_weight

    def forward(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> MilOutput:
        """``features [N, D] -> MilOutput`` (see :class:`~napari_wsi_mil.mil.base.MilOutput`)."""
        bag = self.bag.attend(features)
        tile_p = torch.softmax(self.instance_classifiers[1](bag.h), dim=1)[:, 1]
        return MilOutput.from_logit(bag.logit, bag.attention, tile_p)

    def loss(
        self,
        features: torch.Tensor,
        bag_label: int | torch.Tensor,
        generator: torch.Generator | None = None,
        **extra: object,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``0.7 * CE_bag + 0.3 * L_inst`` for one bag.

        Parameters
        ----------
        features : torch.Tensor
            ``[N, D]``.
        bag_label : int or torch.Tensor
            0 or 1.
        generator : torch.Generator, optional
            Unused (CLAM's instance sampling is deterministic).

        Returns
        -------
        loss : torch.Tensor
            0-d.
        parts : dict of str to float
            ``{"bag": CE_bag, "instance": L_inst}`` (unweighted).
        """
        if extra:
            raise TypeError(f"unexpected arguments {sorted(extra)}")
        bag = self.bag.attend(features)
        label = bag_label_tensor(bag_label, features.device)
        ce = bag_cross_entropy(bag.logit, label)
        top, bottom = top_bottom_indices(bag.attention, self.b)
        idx = torch.cat([top, bottom])
        targets = torch.cat([torch.ones_like(top), torch.zeros_like(bottom)])
        logits = self.instance_classifiers[int(label)](bag.h[idx])
        inst = instance_loss(logits, targets, self.inst_loss)
        total = self.bag_weight * ce + (1.0 - self.bag_weight) * inst
        return total, {"bag": float(ce.detach()), "instance": float(inst.detach())}
