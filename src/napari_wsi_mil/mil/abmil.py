"""Gated attention MIL (Ilse, Tomczak & Welling 2018, "Attention-based deep multiple
instance learning"), histology sizes from ALGORITHMS.md.

``h = ReLU(Linear(D, 512)(x))``, ``a = softmax(GatedAttention(h))``,
``z = sum_k a_k h_k``, ``logit = Linear(512, C)(z)``; trained with the bag
cross-entropy (:meth:`napari_wsi_mil.mil.base.MilModel.loss`).

Shapes: ``N`` instances, ``D`` feature size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from napari_wsi_mil.mil.base import N_CLASSES, MilModel, MilOutput, check_bag
from napari_wsi_mil.mil.blocks import GatedAttention, InstanceEncoder, attention_pool


class AttentionBag(NamedTuple):
    """Intermediate results of one AB-MIL pass (for models built on AB-MIL)."""

    h: torch.Tensor
    """``[N, E]`` instance embeddings."""
    attention_logits: torch.Tensor
    """``[N]`` raw gated-attention logits."""
    attention: torch.Tensor
    """``[N]`` softmax of the logits over the bag."""
    logit: torch.Tensor
    """``[C]`` bag logits."""


def minmax_attention(a: torch.Tensor) -> torch.Tensor:
    """AB-MIL's instance score: attention min-max normalised within the bag.

    ``(a - min a) / (max a - min a)``: the most attended instance gets 1, the least
    attended 0. It ranks instances within one bag and is not calibrated across
    bags (a negative bag has a top instance too). A bag of one instance, or one
    whose attention is constant, gets 1 everywhere (every instance is "the top").

    Parameters
    ----------
    a : torch.Tensor
        ``[N]`` attention weights.

    Returns
    -------
    torch.Tensor
        ``[N]`` scores in ``[0, 1]``.
    """
    lo, hi = a.min(), a.max()
    span = hi - lo
    tiny = torch.finfo(a.dtype).eps * max(float(hi.detach().abs()), 1e-30)
    if float(span.detach()) <= tiny:
        return torch.ones_like(a)
    return (a - lo) / span


class ABMIL(MilModel):
    """Gated attention MIL (Ilse et al. 2018) with ``Linear(D, 512)-ReLU`` in front.

    ``instance_probability`` is :func:`minmax_attention` of the attention weights.

    Parameters
    ----------
    in_dim : int
        Feature size ``D``.
    embed_dim : int
        Instance embedding size (512 in ALGORITHMS.md).
    attention_dim : int
        Gated attention size ``D`` (128..256).
    dropout : float
        Dropout after the encoder and in the attention branches (Ilse: none).
    encoder : torch.nn.Module, optional
        Instance encoder ``[N, D] -> [N, embed_dim]`` to use instead of
        ``InstanceEncoder(in_dim, embed_dim, dropout)`` (WENO passes its
        batch-norm variant, shared with its student).
    n_classes : int
        Bag classes ``C`` (2).
    """

    def __init__(
        self,
        in_dim: int,
        embed_dim: int = 512,
        attention_dim: int = 128,
        dropout: float = 0.0,
        encoder: nn.Module | None = None,
        n_classes: int = N_CLASSES,
    ):
        super().__init__()
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.encoder = (
            encoder if encoder is not None else InstanceEncoder(in_dim, embed_dim, dropout)
        )
        self.attention = GatedAttention(embed_dim, attention_dim, dropout)
        self.classifier = nn.Linear(embed_dim, n_classes)

    def attend(self, features: torch.Tensor) -> AttentionBag:
        """Embeddings, attention and bag logits of one bag.

        Parameters
        ----------
        features : torch.Tensor
            ``[N, D]``.

        Returns
        -------
        AttentionBag
            ``h [N, E]``, ``attention_logits [N]``, ``attention [N]``, ``logit [C]``.
        """
        check_bag(features, self.in_dim)
        h = self.encoder(features)
        logits = self.attention(h)
        a, z = attention_pool(logits, h)
        return AttentionBag(h, logits, a, self.classifier(z))

    def forward(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> MilOutput:
        """``features [N, D] -> MilOutput`` (see :class:`~napari_wsi_mil.mil.base.MilOutput`)."""
        bag = self.attend(features)
        return MilOutput.from_logit(bag.logit, bag.attention, minmax_attention(bag.attention))
