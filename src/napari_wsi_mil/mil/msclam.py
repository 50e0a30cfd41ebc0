"""MS-CLAM (Tourniaire et al. 2023, "MS-CLAM: Mixed supervision for the classification
and localization of tumors in whole slide images"), as ALGORITHMS.md restates it.

CLAM-SB's bag branch (gated AB-MIL, attention size 256, dropout 0.25) with ONE
shared tile classifier ``Linear(E, 2)`` and mixed supervision: some tumour slides
carry tile labels (``tile_labels [N]``: 1 tumour, 0 normal, -1 unknown). Three slide
kinds (:func:`slide_kind`):

- ``"normal"`` (bag label 0): every tile is normal;
- ``"tumour"`` (bag label 1, no known tile label);
- ``"tumour_labelled"`` (bag label 1, at least one tile label 0 or 1).

Tile sampling (:func:`instance_targets`), attention loss (:func:`attention_loss`),
loss ``0.6 CE_bag + 0.4 L_inst + 1.0 L_att`` (:meth:`MSCLAM.loss`); training pairs
one normal and one tumour slide per step (:func:`paired_batches`,
:meth:`MSCLAM.paired_loss`), tumour slides drawn with exponentially decaying
weights (:func:`tumour_slide_weights`). Predicted tumour mask: tile probability
> 0.5 (``MilOutput.instance_probability``).

Shapes: ``N`` tiles of one slide, ``D`` feature size, ``E`` embedding size, ``S``
slides, ``T`` steps.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from napari_wsi_mil.mil.abmil import ABMIL
from napari_wsi_mil.mil.base import (
    MilModel,
    MilOutput,
    TrainingEpoch,
    bag_cross_entropy,
    bag_label_tensor,
    bag_tensor,
)
from napari_wsi_mil.mil.blocks import normalised_entropy
from napari_wsi_mil.mil.clam import INSTANCE_LOSSES, instance_loss

#: Slide kinds of the mixed supervision.
SLIDE_KINDS = ("normal", "tumour", "tumour_labelled")
#: Tile-label value of an unknown tile.
UNKNOWN = -1


def slide_kind(bag_label: int, tile_labels: torch.Tensor | None = None) -> str:
    """``"normal"``, ``"tumour"`` or ``"tumour_labelled"`` (see the module docstring).

    Tile labels of a normal slide are ignored (all its tiles are normal).
    """
    if int(bag_label) == 0:
        return "normal"
    if tile_labels is not None and bool((torch.as_tensor(tile_labels) != UNKNOWN).any()):
        return "tumour_labelled"
    return "tumour"


def _random_subset(
    candidates: torch.Tensor, k: int, generator: torch.Generator | None
) -> torch.Tensor:
    """``k`` of ``candidates`` drawn without replacement (CPU generator)."""
    perm = torch.randperm(candidates.numel(), generator=generator).to(candidates.device)
    return candidates[perm[:k]]


def instance_targets(
    attention: torch.Tensor,
    bag_label: int,
    tile_labels: torch.Tensor | None = None,
    b: int = 8,
    b_plus: int = 1024,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MS-CLAM's tile sampling for the shared tile classifier.

    - normal slide: the ``min(B // 2, N)`` most attended tiles -> 0 (ALGORITHMS.md's
      count ``B/2``; which tiles follows the reference, which takes the most
      attended ones, i.e. the hardest negatives);
    - unlabelled tumour slide: ``k = min(B, N // 2)`` most attended -> 1 and the
      ``k // 2`` least attended -> 0 (disjoint; a one-tile slide samples nothing);
    - tile-labelled tumour slide: ``min(B+, #tumour)`` random true tumour tiles -> 1
      and half as many random true normal tiles -> 0 (at most ``B+/2``, capped by the
      normal tiles known; the reference's "half as many" rule). Unknown tiles (-1)
      are never sampled.

    Parameters
    ----------
    attention : torch.Tensor
        ``[N]`` attention weights (or logits; only the order is used).
    bag_label : int
        0 or 1.
    tile_labels : torch.Tensor, optional
        ``[N]`` in {-1, 0, 1}.
    b, b_plus : int
        ``B`` (8) and ``B+`` (1024).
    generator : torch.Generator, optional
        CPU generator for the random draws of tile-labelled slides.

    Returns
    -------
    indices : torch.Tensor
        ``[M]`` long tile indices.
    targets : torch.Tensor
        ``[M]`` long targets, ones first.
    """
    n = attention.numel()
    device = attention.device
    kind = slide_kind(bag_label, tile_labels)
    order = torch.argsort(attention.detach(), descending=True)
    if kind == "normal":
        neg = order[: min(b // 2, n)]
        pos = order[:0]
    elif kind == "tumour":
        k = min(b, n // 2)
        pos = order[:k]
        neg = order.flip(0)[: k // 2]
    else:
        labels = torch.as_tensor(tile_labels, device=device).reshape(-1)
        if labels.numel() != n:
            raise ValueError(f"tile_labels has {labels.numel()} entries for {n} tiles")
        tumour = torch.nonzero(labels == 1).flatten()
        normal = torch.nonzero(labels == 0).flatten()
        pos = _random_subset(tumour, min(b_plus, tumour.numel()), generator)
        neg = _random_subset(normal, min(pos.numel() // 2, normal.numel()), generator)
    targets = torch.cat(
        [torch.ones(pos.numel(), dtype=torch.long), torch.zeros(neg.numel(), dtype=torch.long)]
    ).to(device)
    return torch.cat([pos, neg]), targets


def attention_loss(
    attention: torch.Tensor, bag_label: int, tile_labels: torch.Tensor | None = None
) -> torch.Tensor:
    """MS-CLAM's attention loss with normalised entropy ``H``.

    - normal slide: ``-H(A)`` (spread attention over the whole slide);
    - tile-labelled tumour slide: ``sum A_normal - H(A_tumour) - sum A_tumour``, with
      ``A_normal``/``A_tumour`` the bag-softmax weights of tiles labelled 0/1 (not
      renormalised, ``H`` over the tumour tiles' count, as in the reference; one
      tumour tile gives ``H = 0``); unknown tiles take no part;
    - unlabelled tumour slide: 0.

    Parameters
    ----------
    attention : torch.Tensor
        ``[N]`` softmax attention of the slide.
    bag_label : int
        0 or 1.
    tile_labels : torch.Tensor, optional
        ``[N]`` in {-1, 0, 1}.

    Returns
    -------
    torch.Tensor
        0-d (graph-connected zero for unlabelled tumour slides).
    """
    kind = slide_kind(bag_label, tile_labels)
    if kind == "normal":
        return -normalised_entropy(attention)
    if kind == "tumour":
        return attention.sum() * 0.0
    labels = torch.as_tensor(tile_labels, device=attention.device).reshape(-1)
    if labels.numel() != attention.numel():
        raise ValueError(f"tile_labels has {labels.numel()} entries for {attention.numel()} tiles")
    a_tumour = attention[labels == 1]
    return attention[labels == 0].sum() - normalised_entropy(a_tumour) - a_tumour.sum()


def tumour_slide_weights(
    has_tile_labels: np.ndarray, epoch: int, w: float = 90.0, gamma: float = 0.9
) -> np.ndarray:
    """Exponentially decaying sampling weights of tumour slides.

    ``max(w * gamma**epoch, 1)`` for tile-labelled slides, 1 for the others
    (normal slides included, so the array can cover every slide).

    Parameters
    ----------
    has_tile_labels : array-like of bool
        ``[S]``.
    epoch : int
        0-based epoch.
    w, gamma : float
        Initial weight (90) and per-epoch factor (0.9).

    Returns
    -------
    numpy.ndarray
        ``[S]`` float64 weights >= 1.
    """
    has = np.asarray(has_tile_labels, dtype=bool)
    return np.where(has, max(w * gamma**epoch, 1.0), 1.0)


def paired_batches(
    labels: np.ndarray,
    weights: np.ndarray,
    rng: np.random.Generator,
    steps: int | None = None,
) -> np.ndarray:
    """One epoch of (normal, tumour) slide pairs, one pair per step.

    Normal slides go through a fresh random permutation (repeated when more steps
    than normal slides); tumour slides are drawn with replacement with probability
    proportional to their ``weights`` (:func:`tumour_slide_weights`).

    Parameters
    ----------
    labels : array-like of int
        ``[S]`` bag labels (0 normal, 1 tumour).
    weights : array-like of float
        ``[S]`` sampling weights (only the tumour slides' entries are used).
    rng : numpy.random.Generator
        Source of randomness.
    steps : int, optional
        Pairs per epoch; ``max(#normal, #tumour)`` when ``None``.

    Returns
    -------
    numpy.ndarray
        ``[T, 2]`` int64 slide indices, column 0 normal, column 1 tumour.

    Raises
    ------
    ValueError
        No normal or no tumour slide, or mismatched lengths.
    """
    labels = np.asarray(labels)
    weights = np.asarray(weights, dtype=float)
    if labels.shape != weights.shape:
        raise ValueError(f"labels {labels.shape} and weights {weights.shape} differ in shape")
    normal = np.flatnonzero(labels == 0)
    tumour = np.flatnonzero(labels == 1)
    if normal.size == 0 or tumour.size == 0:
        raise ValueError("paired batches need at least one normal and one tumour slide")
    steps = max(normal.size, tumour.size) if steps is None else steps
    reps = -(-steps // normal.size)
    normal_col = np.concatenate([rng.permutation(normal) for _ in range(reps)])[:steps]
    p = weights[tumour] / weights[tumour].sum()
    tumour_col = rng.choice(tumour, size=steps, replace=True, p=p)
    return np.stack([normal_col, tumour_col], axis=1).astype(np.int64)


class MSCLAM(MilModel):
    """MS-CLAM (Tourniaire et al. 2023): CLAM-SB with one shared tile classifier.

    ``instance_probability`` is the tile classifier's ``softmax(.)[1]``
    (P(tumour) per tile; > 0.5 is the predicted tumour mask).

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
    b, b_plus : int
        Tile sampling sizes ``B`` (8) and ``B+`` (1024).
    inst_loss : {"ce", "svm"}
        Tile-classifier loss.
    loss_weights : tuple of float
        Weights of ``(CE_bag, L_inst, L_att)``: ``(0.6, 0.4, 1.0)``.
    """

    binary_only = True

    def __init__(
        self,
        in_dim: int,
        embed_dim: int = 512,
        attention_dim: int = 256,
        dropout: float = 0.25,
        b: int = 8,
        b_plus: int = 1024,
        inst_loss: str = "ce",
        loss_weights: tuple[float, float, float] = (0.6, 0.4, 1.0),
    ):
        super().__init__()
        if inst_loss not in INSTANCE_LOSSES:
            raise ValueError(f"inst_loss must be one of {INSTANCE_LOSSES}; got {inst_loss!r}")
        self.in_dim = in_dim
        self.bag = ABMIL(in_dim, embed_dim, attention_dim, dropout)
        self.tile_classifier = nn.Linear(embed_dim, 2)
        self.b = b
        self.b_plus = b_plus
        self.inst_loss = inst_loss
        self.loss_weights = tuple(loss_weights)

    def forward(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> MilOutput:
        """``features [N, D] -> MilOutput`` (see :class:`~napari_wsi_mil.mil.base.MilOutput`)."""
        bag = self.bag.attend(features)
        tile_p = torch.softmax(self.tile_classifier(bag.h), dim=1)[:, 1]
        return MilOutput.from_logit(bag.logit, bag.attention, tile_p)

    def loss(
        self,
        features: torch.Tensor,
        bag_label: int | torch.Tensor,
        tile_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **extra: object,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``0.6 CE_bag + 0.4 L_inst + 1.0 L_att`` for one slide.

        Parameters
        ----------
        features : torch.Tensor
            ``[N, D]``.
        bag_label : int or torch.Tensor
            0 (normal) or 1 (tumour).
        tile_labels : torch.Tensor, optional
            ``[N]`` in {-1, 0, 1}; ``None`` or all -1 for an unlabelled slide.
        generator : torch.Generator, optional
            CPU generator for the tile draws of tile-labelled slides.

        Returns
        -------
        loss : torch.Tensor
            0-d.
        parts : dict of str to float
            ``{"bag", "instance", "attention"}`` (unweighted).
        """
        if extra:
            raise TypeError(f"unexpected arguments {sorted(extra)}")
        label = bag_label_tensor(bag_label, features.device)
        bag = self.bag.attend(features)
        ce = bag_cross_entropy(bag.logit, label)
        idx, targets = instance_targets(
            bag.attention, int(label), tile_labels, self.b, self.b_plus, generator
        )
        inst = instance_loss(self.tile_classifier(bag.h[idx]), targets, self.inst_loss)
        att = attention_loss(bag.attention, int(label), tile_labels)
        w_bag, w_inst, w_att = self.loss_weights
        total = w_bag * ce + w_inst * inst + w_att * att
        parts = {"bag": ce, "instance": inst, "attention": att}
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def train_epoch(self, epoch: TrainingEpoch) -> dict[str, float]:
        """One epoch of paired steps (:func:`paired_batches`): a normal and a tumour
        slide per step, tumour slides drawn with :func:`tumour_slide_weights` (weight on
        ``epoch.supervised`` slides, whose tile labels the step sees)."""
        bags, hp, supervised = epoch.bags, epoch.hp, epoch.supervised
        labels = np.array([b.label for b in bags])
        weights = tumour_slide_weights(
            supervised, epoch.index, hp["sampling_weight"], hp["sampling_gamma"]
        )
        total, pairs = 0.0, paired_batches(labels, weights, epoch.rng)
        for normal, tumour in pairs:
            tiles = (
                torch.from_numpy(bags[tumour].tile_labels.astype(np.int64))
                if supervised[tumour]
                else None
            )
            loss, _ = self.paired_loss(
                bag_tensor(bags[normal]), bag_tensor(bags[tumour]), tiles, epoch.generator
            )
            epoch.step(loss)
            total += float(loss.detach()) / len(pairs)
        return {"loss": total}

    def paired_loss(
        self,
        normal_features: torch.Tensor,
        tumour_features: torch.Tensor,
        tumour_tile_labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One training step's loss: a normal and a tumour slide, averaged.

        The mean of the two slides' :meth:`loss` (so the bag CE is one CE averaged
        over both slides, as are the instance and attention terms).

        Returns
        -------
        loss : torch.Tensor
            0-d.
        parts : dict of str to float
            Means of the two slides' parts.
        """
        loss_n, parts_n = self.loss(normal_features, 0, generator=generator)
        loss_t, parts_t = self.loss(tumour_features, 1, tumour_tile_labels, generator)
        parts = {k: 0.5 * (parts_n[k] + parts_t[k]) for k in parts_n}
        return 0.5 * (loss_n + loss_t), parts
