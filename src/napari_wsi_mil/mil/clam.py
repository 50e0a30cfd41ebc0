"""CLAM (Lu et al. 2021, "Data-efficient and weakly supervised computational
pathology on whole-slide images"): CLAM-SB, one attention branch, and CLAM-MB, one
attention branch and one bag classifier per class, as ALGORITHMS.md restates them.

CLAM-SB's bag branch is gated AB-MIL (:class:`~napari_wsi_mil.mil.abmil.ABMIL`,
attention size 256, dropout 0.25). CLAM-MB scores ``C`` attention maps from shared
gated branches, pools one embedding per class and gives each its own ``Linear(E, 1)``,
whose outputs are the bag logits ``[C]``.

Instance clustering (:func:`clam_instance_loss`): one instance classifier ``Linear(E,
2)`` per bag class; for a bag of class ``y`` the top-``B`` instances of class ``y``'s
attention get target 1 and its bottom-``B`` target 0 for classifier ``y``. With two
classes the other classifier is not trained on that bag (the reference's binary rule);
with more (subtyping) every other class ``c`` is trained out of class: the top-``B``
of ``c``'s attention get target 0 for classifier ``c``, and the loss is the mean over
classes. ``B = 8`` capped at ``N // 2`` so the two sets never overlap; a bag of one
instance has no instance loss. Loss ``0.7 * CE_bag + 0.3 * L_inst`` with ``L_inst``
cross-entropy (the reference's code default) or the smooth top-1 SVM (the reference
README's examples).

Shapes: ``N`` instances, ``D`` feature size, ``E`` embedding size, ``C`` classes.
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
    check_bag,
    not_negative,
)
from napari_wsi_mil.mil.blocks import GatedAttention, InstanceEncoder, smooth_top1_svm_loss

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


def clam_instance_loss(
    classifiers: nn.ModuleList,
    h: torch.Tensor,
    attention: torch.Tensor,
    label: int,
    b: int = 8,
    kind: str = "ce",
) -> torch.Tensor:
    """CLAM's instance-clustering loss of one bag (see the module doc).

    Parameters
    ----------
    classifiers : torch.nn.ModuleList
        ``C`` instance classifiers ``Linear(E, 2)``.
    h : torch.Tensor
        ``[N, E]`` instance embeddings.
    attention : torch.Tensor
        ``[N]`` (one branch, shared by every class) or ``[N, C]`` attention.
    label : int
        The bag's class ``y``.
    b : int
        ``B``, instances per side.
    kind : {"ce", "svm"}
        Instance loss.

    Returns
    -------
    torch.Tensor
        0-d.
    """
    subtyping = len(classifiers) > 2
    total = h.sum() * 0.0
    for c, classifier in enumerate(classifiers):
        scores = attention if attention.ndim == 1 else attention[:, c]
        top, bottom = top_bottom_indices(scores, b)
        if c == label:
            idx = torch.cat([top, bottom])
            targets = torch.cat([torch.ones_like(top), torch.zeros_like(bottom)])
        elif subtyping:
            idx, targets = top, torch.zeros_like(top)
        else:
            continue
        total = total + instance_loss(classifier(h[idx]), targets, kind)
    return total / len(classifiers) if subtyping else total


def positive_evidence(classifiers: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
    """``[N]`` each instance's largest ``softmax(.)[1]`` over the instance classifiers
    of the non-negative classes: how likely it is evidence for any of them (the
    positive class's with two classes)."""
    return torch.stack(
        [torch.softmax(classifier(h), dim=1)[:, 1] for classifier in classifiers[1:]]
    ).amax(0)


class CLAMSB(MilModel):
    """CLAM-SB (Lu et al. 2021): one attention branch.

    ``instance_probability`` is :func:`positive_evidence`: with two classes the
    positive-class instance classifier's ``softmax(.)[1]``, the probability that an
    instance is evidence for the positive (tumour) class.

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
    n_classes : int
        Bag classes ``C`` (2).
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
        n_classes: int = N_CLASSES,
    ):
        super().__init__()
        if inst_loss not in INSTANCE_LOSSES:
            raise ValueError(f"inst_loss must be one of {INSTANCE_LOSSES}; got {inst_loss!r}")
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.build_bag_branch(embed_dim, attention_dim, dropout)
        self.instance_classifiers = nn.ModuleList(nn.Linear(embed_dim, 2) for _ in range(n_classes))
        self.b = b
        self.inst_loss = inst_loss
        self.bag_weight = bag_weight

    def build_bag_branch(self, embed_dim: int, attention_dim: int, dropout: float) -> None:
        """The bag branch: gated AB-MIL with ``n_classes`` logits."""
        self.bag = ABMIL(self.in_dim, embed_dim, attention_dim, dropout, n_classes=self.n_classes)

    def forward(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> MilOutput:
        """``features [N, D] -> MilOutput`` (see :class:`~napari_wsi_mil.mil.base.MilOutput`)."""
        bag = self.bag.attend(features)
        tile_p = positive_evidence(self.instance_classifiers, bag.h)
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
            The bag's class index.
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
        label = bag_label_tensor(bag_label, features.device, self.n_classes)
        ce = bag_cross_entropy(bag.logit, label)
        inst = clam_instance_loss(
            self.instance_classifiers, bag.h, bag.attention, int(label), self.b, self.inst_loss
        )
        total = self.bag_weight * ce + (1.0 - self.bag_weight) * inst
        return total, {"bag": float(ce.detach()), "instance": float(inst.detach())}


class CLAMMB(CLAMSB):
    """CLAM-MB (Lu et al. 2021): one attention branch and one bag classifier per class.

    ``attention`` is the branch of the most probable non-negative class (the positive
    class's with two classes), ``class_attention`` holds every branch ``[C, N]`` and
    ``instance_probability`` is :func:`positive_evidence`, as in CLAM-SB. Parameters
    as :class:`CLAMSB`.
    """

    def build_bag_branch(self, embed_dim: int, attention_dim: int, dropout: float) -> None:
        """Shared gated branches scoring one attention map per class, and one
        ``Linear(E, 1)`` bag classifier per class."""
        self.encoder = InstanceEncoder(self.in_dim, embed_dim, dropout)
        self.attention = GatedAttention(embed_dim, attention_dim, dropout, branches=self.n_classes)
        self.bag_classifiers = nn.ModuleList(nn.Linear(embed_dim, 1) for _ in range(self.n_classes))

    def attend(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(h [N, E], attention [N, C] summing to 1 per column, logit [C])``."""
        check_bag(features, self.in_dim)
        h = self.encoder(features)
        a = torch.softmax(self.attention(h).reshape(len(h), self.n_classes), dim=0)
        z = a.T @ h  # [C, E]: one pooled embedding per class
        logit = torch.cat([classifier(z[c]) for c, classifier in enumerate(self.bag_classifiers)])
        return h, a, logit

    def forward(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> MilOutput:
        """``features [N, D] -> MilOutput`` with ``class_attention``."""
        h, a, logit = self.attend(features)
        shown = 1 + int(torch.argmax(logit[1:]))
        return MilOutput(
            logit,
            not_negative(logit, dim=0),
            a[:, shown],
            positive_evidence(self.instance_classifiers, h),
            class_attention=a.T,
        )

    def loss(
        self,
        features: torch.Tensor,
        bag_label: int | torch.Tensor,
        generator: torch.Generator | None = None,
        **extra: object,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``0.7 * CE_bag + 0.3 * L_inst``, each class's instances chosen by its own
        attention branch (see :meth:`CLAMSB.loss`)."""
        if extra:
            raise TypeError(f"unexpected arguments {sorted(extra)}")
        h, a, logit = self.attend(features)
        label = bag_label_tensor(bag_label, features.device, self.n_classes)
        ce = bag_cross_entropy(logit, label)
        inst = clam_instance_loss(
            self.instance_classifiers, h, a, int(label), self.b, self.inst_loss
        )
        total = self.bag_weight * ce + (1.0 - self.bag_weight) * inst
        return total, {"bag": float(ce.detach()), "instance": float(inst.detach())}
