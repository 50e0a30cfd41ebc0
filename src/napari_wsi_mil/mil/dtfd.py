"""DTFD-MIL (Zhang et al. 2022, "DTFD-MIL: Double-tier feature distillation multiple
instance learning for histopathology whole slide image classification"), as
ALGORITHMS.md restates the reference.

Per bag, the instances are shuffled into ``M`` pseudo-bags (:func:`pseudo_bag_indices`;
``M = 4`` as on Camelyon16 in the reference). Tier 1: an instance reduction
``Linear(D, E, bias=False)-ReLU`` (the reference's), gated attention per pseudo-bag
and a classifier on each pseudo-bag embedding; every pseudo-bag inherits the bag
label and the CE is averaged over pseudo-bags. Instance probability from the
linear head (the reference's class-activation derivation): ``s_k = W_c (a_k h_k)``
without the bias, ``p_k = softmax(s_k)``, with ``a_k`` normalised within the
instance's pseudo-bag. Distillation builds tier 2's input: ``"afs"`` (pseudo-bag
embedding, default), ``"maxs"`` (embedding ``h_k`` of the instance with the highest
``p_k[1]``), ``"maxmins"`` (highest and lowest). Tier 2: gated attention and a
classifier on the distilled vectors.

The tier-2 input is **detached** from tier 1: tier 1 learns from its own CE only.
(The reference relied on an old PyTorch quirk that had that effect.) Train with
two Adam optimisers on :meth:`DTFDMIL.tier1_parameters` and
:meth:`DTFDMIL.tier2_parameters` (lr 1e-4, wd 1e-4, grad-norm clip 5 per group);
because of the detach, back-propagating ``loss1 + loss2`` gives each group exactly
the gradient of its own tier's loss.

Inference is random through the pseudo-bag split: :meth:`DTFDMIL.forward` averages
over ``draws`` random splits; pass a ``torch.Generator`` for reproducible output.

Shapes: ``N`` instances, ``D`` feature size, ``E`` embedding size, ``M`` pseudo-bags,
``V`` distilled vectors (``M`` for afs/maxs, ``2M`` for maxmins).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
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
from napari_wsi_mil.mil.blocks import GatedAttention, InstanceEncoder, attention_pool

#: Distillation rules feeding tier 2.
DISTILLATIONS = ("afs", "maxs", "maxmins")


def pseudo_bag_indices(
    n: int, m: int, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Random split of ``range(n)`` into ``min(m, n)`` pseudo-bags.

    Parameters
    ----------
    n : int
        Number of instances (>= 1).
    m : int
        Requested number of pseudo-bags; a bag with fewer instances than ``m``
        gets ``n`` pseudo-bags of one instance (no empty pseudo-bag).
    generator : torch.Generator, optional
        CPU generator for a reproducible split; the global RNG when ``None``.

    Returns
    -------
    list of torch.Tensor
        ``min(m, n)`` CPU long tensors whose sizes differ by at most one; together
        a permutation of ``range(n)``.
    """
    if n < 1 or m < 1:
        raise ValueError(f"need n >= 1 and m >= 1; got n={n}, m={m}")
    perm = torch.randperm(n, generator=generator)
    return list(torch.tensor_split(perm, min(m, n)))


class Tier1Result(NamedTuple):
    """Tier-1 results of one split of one bag."""

    logits: torch.Tensor
    """``[M, 2]`` pseudo-bag logits."""
    distilled: torch.Tensor
    """``[V, E]`` tier-2 input, detached from tier 1."""
    owner: torch.Tensor
    """``[V]`` long: pseudo-bag of each distilled vector."""
    group: torch.Tensor
    """``[N]`` long: pseudo-bag of each instance."""
    attention: torch.Tensor
    """``[N]`` attention ``a_k``, softmax within the instance's pseudo-bag."""
    instance_probability: torch.Tensor
    """``[N]`` ``softmax(W_c (a_k h_k))[1]``."""


class DTFDMIL(MilModel):
    """DTFD-MIL (Zhang et al. 2022) with binary bag labels.

    Output: ``logit``/``probability`` from tier 2; ``attention [N]`` is
    ``w_m * a_k`` with ``a_k`` the tier-1 attention within pseudo-bag ``m`` and
    ``w_m`` the tier-2 attention mass of ``m``'s distilled vector(s) (for AFS exactly
    the weight of ``x_k`` in tier 2's pooled embedding); it sums to 1.
    ``instance_probability`` is the linear-head ``p_k[1]``. With ``draws > 1`` all
    three are averaged over draws and ``logit = log(mean softmax)``, so
    ``softmax(logit)`` is the averaged probability.

    Parameters
    ----------
    in_dim : int
        Feature size ``D``.
    embed_dim : int
        Reduced instance size ``E`` (512).
    attention_dim : int
        Gated attention size of both tiers (128).
    pseudo_bags : int
        ``M`` (4).
    distill : {"afs", "maxs", "maxmins"}
        Tier-2 input rule ("afs").
    dropout : float
        Dropout before the tier-1 classifier (the reference's ``droprate``, 0).
    draws : int
        Random splits averaged by :meth:`forward` (4).
    n_classes : int
        Bag classes ``C`` (2).
    """

    def __init__(
        self,
        in_dim: int,
        embed_dim: int = 512,
        attention_dim: int = 128,
        pseudo_bags: int = 4,
        distill: str = "afs",
        dropout: float = 0.0,
        draws: int = 4,
        n_classes: int = N_CLASSES,
    ):
        super().__init__()
        if distill not in DISTILLATIONS:
            raise ValueError(f"distill must be one of {DISTILLATIONS}; got {distill!r}")
        if pseudo_bags < 1 or draws < 1:
            raise ValueError("pseudo_bags and draws must be >= 1")
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.pseudo_bags = pseudo_bags
        self.distill = distill
        self.draws = draws
        # tier 1
        self.encoder = InstanceEncoder(in_dim, embed_dim, bias=False)
        self.attention1 = GatedAttention(embed_dim, attention_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.classifier1 = nn.Linear(embed_dim, n_classes)
        # tier 2
        self.attention2 = GatedAttention(embed_dim, attention_dim)
        self.classifier2 = nn.Linear(embed_dim, n_classes)

    def tier1_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of tier 1 (reduction, attention, classifier): optimiser 1."""
        for module in (self.encoder, self.attention1, self.classifier1):
            yield from module.parameters()

    def tier2_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of tier 2 (attention, classifier): optimiser 2."""
        for module in (self.attention2, self.classifier2):
            yield from module.parameters()

    def param_groups(self) -> list[Iterable[nn.Parameter]]:
        """Two optimisers: :meth:`tier1_parameters` and :meth:`tier2_parameters`."""
        return [self.tier1_parameters(), self.tier2_parameters()]

    def tier1(self, features: torch.Tensor, groups: list[torch.Tensor]) -> Tier1Result:
        """Tier 1 on one split.

        Parameters
        ----------
        features : torch.Tensor
            ``[N, D]``.
        groups : list of torch.Tensor
            The split, e.g. from :func:`pseudo_bag_indices`.

        Returns
        -------
        Tier1Result
        """
        check_bag(features, self.in_dim)
        n, device = features.shape[0], features.device
        m_bags = len(groups)
        group = torch.empty(n, dtype=torch.long)
        for m, idx in enumerate(groups):
            group[idx.cpu()] = m
        group = group.to(device)
        h = self.encoder(features)
        att_logits = self.attention1(h)  # per instance: independent of the split
        # softmax within each pseudo-bag (segment softmax over ``group``)
        top = att_logits.new_full((m_bags,), -torch.inf).scatter_reduce(
            0, group, att_logits.detach(), "amax"
        )
        e = torch.exp(att_logits - top[group])
        a = e / e.new_zeros(m_bags).index_add(0, group, e)[group]
        weighted = a.unsqueeze(1) * h  # a_k h_k
        z = h.new_zeros(m_bags, h.shape[1]).index_add(0, group, weighted)  # [M, E]
        # linear head without bias: s_k = W_c (a_k h_k), p_k = softmax(s_k)
        p = not_negative(weighted @ self.classifier1.weight.T, dim=1)
        logits = self.classifier1(self.dropout1(z))
        if self.distill == "afs":
            distilled, owner = z, torch.arange(m_bags, device=device)
        else:
            picks, owner_list = [], []
            for m, idx in enumerate(groups):
                idx = idx.to(device)
                order = idx[torch.argsort(p.detach()[idx], descending=True)]
                chosen = order[:1] if self.distill == "maxs" else order[[0, -1]]
                picks.append(chosen)
                owner_list.extend([m] * chosen.numel())
            distilled = h[torch.cat(picks)]
            owner = torch.tensor(owner_list, dtype=torch.long, device=device)
        return Tier1Result(
            logits=logits,
            distilled=distilled.detach(),
            owner=owner,
            group=group,
            attention=a,
            instance_probability=p,
        )

    def tier2(self, distilled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tier 2: ``distilled [V, E] -> (logit [2], attention [V])``."""
        b, z = attention_pool(self.attention2(distilled), distilled)
        return self.classifier2(z), b

    def forward(
        self,
        features: torch.Tensor,
        generator: torch.Generator | None = None,
        draws: int | None = None,
    ) -> MilOutput:
        """``features [N, D] -> MilOutput``, averaged over random pseudo-bag splits.

        Parameters
        ----------
        features : torch.Tensor
            ``[N, D]``.
        generator : torch.Generator, optional
            CPU generator for reproducible splits.
        draws : int, optional
            Number of splits to average; ``self.draws`` when ``None``.
        """
        draws = self.draws if draws is None else draws
        probs, attention, inst_p, logit = [], [], [], None
        for _ in range(draws):
            t1 = self.tier1(
                features, pseudo_bag_indices(features.shape[0], self.pseudo_bags, generator)
            )
            logit, b = self.tier2(t1.distilled)
            mass = b.new_zeros(t1.logits.shape[0]).index_add(0, t1.owner, b)
            probs.append(torch.softmax(logit, dim=0))
            attention.append(mass[t1.group] * t1.attention)
            inst_p.append(t1.instance_probability)
        prob = torch.stack(probs).mean(0)
        if draws > 1:
            logit = torch.log(prob.clamp_min(1e-12))
        return MilOutput(
            logit=logit,
            probability=prob[1:].sum(),
            attention=torch.stack(attention).mean(0),
            instance_probability=torch.stack(inst_p).mean(0),
        )

    def tier_losses(
        self,
        features: torch.Tensor,
        bag_label: int | torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both tiers' losses on one random split.

        Returns
        -------
        loss1 : torch.Tensor
            0-d tier-1 CE averaged over pseudo-bags (each with the bag label).
        loss2 : torch.Tensor
            0-d tier-2 CE; has no gradient path into tier 1.
        """
        label = bag_label_tensor(bag_label, features.device, self.n_classes)
        t1 = self.tier1(
            features, pseudo_bag_indices(features.shape[0], self.pseudo_bags, generator)
        )
        loss1 = F.cross_entropy(t1.logits, label.expand(t1.logits.shape[0]))
        loss2 = bag_cross_entropy(self.tier2(t1.distilled)[0], label)
        return loss1, loss2

    def loss(
        self,
        features: torch.Tensor,
        bag_label: int | torch.Tensor,
        generator: torch.Generator | None = None,
        **extra: object,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``loss1 + loss2`` (see :meth:`tier_losses`) and ``{"tier1", "tier2"}`` parts."""
        if extra:
            raise TypeError(f"unexpected arguments {sorted(extra)}")
        loss1, loss2 = self.tier_losses(features, bag_label, generator)
        return loss1 + loss2, {"tier1": float(loss1.detach()), "tier2": float(loss2.detach())}
