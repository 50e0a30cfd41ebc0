"""DSMIL (Li, Li & Eliceiri, CVPR 2021, "Dual-stream multiple instance learning network
for whole slide image classification with self-supervised contrastive learning"),
written from the paper.

Instance stream: ``s = Linear(D, C)(x)`` scores every instance; the critical instance
of class ``c`` is ``argmax_i s_ic`` and the instance stream's bag score is
``max_i s_i`` (max pooling). Bag stream: queries ``q_i = Tanh(Linear(ReLU(Linear(x_i))))``,
values ``v_i = Linear(D, D)(Dropout(x_i))``, attention of class ``c``
``A_ic = softmax_i(<q_i, q_crit(c)> / sqrt(d_q))``, bag embeddings
``B_c = sum_i A_ic v_i`` and bag logits ``Conv1d(C, C, kernel=D)(B)``.

Loss: ``0.5 * CE(bag logits) + 0.5 * CE(max instance scores)`` (the paper's equal
weights; it uses binary cross-entropies per class, this project's bags have one class
each, so the cross-entropy over the ``C`` classes). Prediction: the mean of the two
streams' class probabilities (as the paper's reference evaluation).

Shapes: ``N`` instances, ``D`` feature size, ``C`` classes, ``d_q`` query size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from napari_wsi_mil.mil.base import (
    N_CLASSES,
    MilModel,
    MilOutput,
    bag_cross_entropy,
    bag_label_tensor,
    check_bag,
    not_negative,
)

#: The first non-negative class: with two classes the class whose attention a
#: ``MilOutput`` carries, the class of ``MilOutput.probability`` (positive / tumour).
POSITIVE = 1


class DualStream(NamedTuple):
    """Both streams of one DSMIL pass."""

    instance_logits: torch.Tensor
    """``[N, C]`` instance classifier scores."""
    max_logit: torch.Tensor
    """``[C]`` the largest instance score of each class (the instance stream's bag score)."""
    attention: torch.Tensor
    """``[N, C]`` each class's attention over the bag (columns sum to 1)."""
    bag_logit: torch.Tensor
    """``[C]`` the bag stream's logits."""


class DSMIL(MilModel):
    """DSMIL (Li et al. 2021) on frozen features.

    ``logit`` is the log of the mean of the two streams' class probabilities (so
    ``softmax(logit)`` is that mean) and ``probability`` its ``P(not negative)``
    (``P(class 1)`` with two classes). ``attention`` is the attention column of the most
    probable non-negative class (class 1's with two classes: its distances to class 1's
    critical instance), ``class_attention`` every column; ``instance_probability`` is
    the instance classifier's ``1 - softmax(s_i)[0]`` (``softmax(s_i)[1]`` with two
    classes): a per-instance estimate, trained through the max-instance loss.

    Parameters
    ----------
    in_dim : int
        Feature size ``D``.
    query_dim : int
        Query size ``d_q`` (128 in the paper).
    dropout : float
        Dropout before the value projection.
    value_projection : bool
        ``v_i = Linear(D, D)(x_i)`` as in the paper; ``False``: ``v_i = x_i``.
    n_classes : int
        Number of bag classes ``C``.
    """

    def __init__(
        self,
        in_dim: int,
        query_dim: int = 128,
        dropout: float = 0.0,
        value_projection: bool = True,
        n_classes: int = N_CLASSES,
    ):
        super().__init__()
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.instance_classifier = nn.Linear(in_dim, n_classes)
        self.query = nn.Sequential(
            nn.Linear(in_dim, query_dim), nn.ReLU(), nn.Linear(query_dim, query_dim), nn.Tanh()
        )
        self.value = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, in_dim))
            if value_projection
            else nn.Dropout(dropout)
        )
        self.bag_classifier = nn.Conv1d(n_classes, n_classes, kernel_size=in_dim)

    def streams(self, features: torch.Tensor) -> DualStream:
        """Both streams of one bag ``features [N, D]``."""
        check_bag(features, self.in_dim)
        s = self.instance_classifier(features)
        max_logit, critical = s.max(dim=0)
        q = self.query(features)
        a = torch.softmax(q @ q[critical].T / math.sqrt(q.shape[1]), dim=0)
        b = a.T @ self.value(features)
        bag_logit = self.bag_classifier(b[None]).reshape(-1)
        return DualStream(s, max_logit, a, bag_logit)

    def forward(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> MilOutput:
        """``features [N, D] -> MilOutput`` (see :class:`~napari_wsi_mil.mil.base.MilOutput`)."""
        dual = self.streams(features)
        mean = 0.5 * (torch.softmax(dual.bag_logit, 0) + torch.softmax(dual.max_logit, 0))
        logit = torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))
        instance = not_negative(dual.instance_logits, dim=1)
        shown = POSITIVE + int(torch.argmax(mean[POSITIVE:]))
        return MilOutput(
            logit,
            not_negative(logit, dim=0),
            dual.attention[:, shown],
            instance,
            class_attention=dual.attention.T,
        )

    def loss(
        self,
        features: torch.Tensor,
        bag_label: int | torch.Tensor,
        generator: torch.Generator | None = None,
        **extra: object,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``0.5 * CE(bag stream) + 0.5 * CE(max instance scores)``.

        Returns
        -------
        loss : torch.Tensor
            0-d tensor to back-propagate.
        parts : dict of str to float
            ``{"bag": CE of the bag stream, "max_instance": CE of the instance stream}``.
        """
        if extra:
            raise TypeError(f"unexpected arguments {sorted(extra)}")
        label = bag_label_tensor(bag_label, features.device, self.n_classes)
        dual = self.streams(features)
        bag = bag_cross_entropy(dual.bag_logit, label)
        max_instance = bag_cross_entropy(dual.max_logit, label)
        parts = {"bag": float(bag.detach()), "max_instance": float(max_instance.detach())}
        return 0.5 * bag + 0.5 * max_instance, parts
