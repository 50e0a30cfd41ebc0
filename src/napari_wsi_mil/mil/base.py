"""The output type and base class shared by every MIL model.

Convention (one for all models): a bag is a float tensor ``features [N, D]`` (``N``
patches in TileGrid order, ``N >= 1``); a model returns class logits ``[C]`` (``C = 2``
for a binary cohort: index 0 = negative / normal, index 1 = positive / tumour, as CLAM
and DTFD-MIL do) and ``probability = 1 - softmax(logit)[0]``, the probability that the
bag is not of the negative class 0 (``softmax(logit)[1]`` when ``C = 2``). Bag labels
are class indices ``0 .. C - 1``.

Shapes: ``N`` instances (patches) of one bag, ``D`` feature size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_wsi_mil.mil import DEFAULT_MASK_THRESHOLD

if TYPE_CHECKING:
    from napari_wsi_mil.mil.bags import Bag

#: Number of bag classes of a model unless it is built for more (negative, positive).
N_CLASSES = 2


class MilOutput(NamedTuple):
    """What every MIL model's ``forward`` returns for one bag.

    All tensors live on the features' device; they carry gradients when the
    forward pass did.
    """

    logit: torch.Tensor
    """Bag logits ``[C]`` (negative class first); ``softmax(logit)`` is the bag's class
    probability for every model."""
    probability: torch.Tensor
    """0-d float tensor in ``[0, 1]``, ``P(not negative) = softmax(logit)[1:].sum()``
    (``P(positive)`` of a binary model)."""
    attention: torch.Tensor
    """``[N]`` attention weights, non-negative and summing to 1 over the bag."""
    instance_probability: torch.Tensor
    """``[N]`` the model's own per-instance estimate in ``[0, 1]`` (each model's
    docstring says how it is derived)."""
    teacher_probability: torch.Tensor | None = None
    """WENO only: the teacher's (attention bag classifier's) ``P(positive)``, 0-d;
    ``None`` for the other models."""
    class_attention: torch.Tensor | None = None
    """``[C, N]`` one attention map per class, each summing to 1, for models with one
    attention branch per class (CLAM-MB, DSMIL); ``None`` for the others."""

    @property
    def class_probability(self) -> torch.Tensor:
        """``[C]`` the bag's class probabilities, ``softmax(logit)``."""
        return torch.softmax(self.logit, dim=0)

    @classmethod
    def from_logit(
        cls, logit: torch.Tensor, attention: torch.Tensor, instance_probability: torch.Tensor
    ) -> MilOutput:
        """The output of a model whose bag probability is ``softmax(logit)[1:].sum()``.

        (WENO's bag probability is its top instance's and DTFD-MIL averages it over
        draws, so they build theirs directly.)
        """
        return cls(logit, not_negative(logit, dim=0), attention, instance_probability)


def not_negative(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``softmax(logits)`` summed over every class but the negative class 0, along
    ``dim``: ``P(not negative)``, the class-1 probability of two-class logits."""
    return torch.softmax(logits, dim=dim).narrow(dim, 1, logits.shape[dim] - 1).sum(dim)


def check_bag(features: torch.Tensor, in_dim: int) -> None:
    """Raise ``ValueError`` unless ``features`` is one non-empty bag ``[N, in_dim]``.

    Parameters
    ----------
    features : torch.Tensor
        ``[N, D]`` float tensor.
    in_dim : int
        Expected feature size ``D``.
    """
    if features.ndim != 2:
        raise ValueError(f"a bag must be a 2-d tensor [N, D]; got shape {tuple(features.shape)}")
    if features.shape[0] < 1:
        raise ValueError("a bag must contain at least one instance; got N=0")
    if features.shape[1] != in_dim:
        raise ValueError(f"features have D={features.shape[1]}; the model expects D={in_dim}")


def bag_label_tensor(
    bag_label: int | torch.Tensor, device: torch.device, n_classes: int = N_CLASSES
) -> torch.Tensor:
    """A bag label (a class index, int or tensor) as a 0-d ``long`` tensor on ``device``.

    Raises
    ------
    ValueError
        The label is not one of ``0 .. n_classes - 1``.
    """
    label = torch.as_tensor(bag_label, device=device).long().reshape(())
    if not 0 <= int(label) < n_classes:
        raise ValueError(f"bag_label must be a class index below {n_classes}; got {int(label)}")
    return label


def bag_cross_entropy(logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one bag's logits ``[C]`` against a 0-d label -> 0-d tensor."""
    return F.cross_entropy(logit.unsqueeze(0), label.reshape(1))


def bag_tensor(bag: Bag) -> torch.Tensor:
    """A bag's features ``[N, D]`` as a tensor sharing their memory."""
    return torch.from_numpy(bag.features)


@dataclass
class TrainingEpoch:
    """What one training epoch of :meth:`MilModel.train_epoch` works with.

    The trainer (:func:`napari_wsi_mil.mil.train.fit_job`) builds one per epoch; the
    random sources are the run's, so a seeded run is reproducible.
    """

    index: int
    """0-based epoch number."""
    bags: list[Bag]
    """The training bags."""
    hp: dict[str, Any]
    """The model's training settings (``mil.registry.TRAINING_DEFAULTS`` and overrides)."""
    rng: np.random.Generator
    """The run's numpy random source (bag orders, pairings)."""
    generator: torch.Generator
    """The run's CPU torch generator (random draws inside a model's loss)."""
    supervised: np.ndarray
    """``[len(bags)]`` bool: the bags that lend their tile labels to mixed supervision."""
    order: Callable[[], np.ndarray]
    """Draws this epoch's bag order (class-balanced when the run asks for it)."""
    step: Callable[[torch.Tensor], None]
    """One optimiser step on a 0-d loss (zero grads, backward, clip, step)."""


class MilModel(nn.Module):
    """Base class: ``forward(features [N, D], generator=None) -> MilOutput``, ``loss``
    and the model's training rule.

    Subclasses set ``in_dim`` and implement ``forward``. The defaults are AB-MIL's: the
    bag cross-entropy (:meth:`loss`), one optimiser over all parameters
    (:meth:`param_groups`), one step per bag in the epoch's order (:meth:`train_epoch`),
    a bag decision threshold of 0.5. A model with another rule overrides the hook, so
    the trainer and the predictor name no model. ``generator`` (a CPU
    ``torch.Generator``) is every model's source of randomness in ``forward`` and
    ``loss``; models that draw nothing ignore it.
    """

    in_dim: int
    #: Number of bag classes ``C`` (the logits' size).
    n_classes: int = N_CLASSES
    #: Whether the model is for two classes only (negative vs positive: WENO, MS-CLAM).
    binary_only: bool = False
    #: Whether the bag ``probability`` is the max of ``instance_probability`` (WENO).
    #: Such a probability is not calibrated at 0.5, so the bag decision threshold is
    #: fitted (:attr:`fits_threshold`) and the tumour mask is cut
    #: there too (:meth:`mask_threshold`).
    bag_is_max_instance: bool = False

    def forward(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> MilOutput:
        raise NotImplementedError

    @property
    def fits_threshold(self) -> bool:
        """Whether the bag decision threshold is fitted (Youden's J on predictions the
        model did not train on, :func:`napari_wsi_mil.mil.train.threshold_job`) instead
        of 0.5."""
        return self.bag_is_max_instance

    def mask_threshold(self, threshold: float) -> float:
        """The instance probability from which a tile is tumour in this model's mask.

        For a model whose bag probability is the max of its instance probabilities
        (:attr:`bag_is_max_instance`: WENO) it is the bag decision ``threshold``, so a
        slide called negative has no tumour tile and one called positive has at least
        one; the other models' instance probabilities are per-tile estimates, cut at
        :data:`~napari_wsi_mil.mil.DEFAULT_MASK_THRESHOLD` (0.5).
        """
        return float(threshold) if self.bag_is_max_instance else DEFAULT_MASK_THRESHOLD

    def param_groups(self) -> list[Iterable[nn.Parameter]]:
        """The parameter groups, one optimiser each (default: one group, all of them)."""
        return [self.parameters()]

    def train_epoch(self, epoch: TrainingEpoch) -> dict[str, float]:
        """One training epoch; returns the epoch's mean ``loss`` and loss parts.

        Default: one optimiser step per bag of ``epoch.order()`` on :meth:`loss`.
        """
        parts_sum: dict[str, float] = {}
        order = epoch.order()
        for i in order:
            bag = epoch.bags[i]
            loss, parts = self.loss(bag_tensor(bag), bag.label, generator=epoch.generator)
            epoch.step(loss)
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v / len(order)
        return parts_sum

    def loss(
        self,
        features: torch.Tensor,
        bag_label: int | torch.Tensor,
        generator: torch.Generator | None = None,
        **extra: object,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of one bag.

        Parameters
        ----------
        features : torch.Tensor
            ``[N, D]`` instance features.
        bag_label : int or torch.Tensor
            The bag's class index.
        generator : torch.Generator, optional
            Unused by this default (it draws nothing).
        **extra
            Model-specific inputs (none for this default).

        Returns
        -------
        loss : torch.Tensor
            0-d tensor to back-propagate.
        parts : dict of str to float
            ``{"bag": CE}``.
        """
        if extra:
            raise TypeError(f"unexpected arguments {sorted(extra)}")
        out = self(features)
        label = bag_label_tensor(bag_label, features.device, self.n_classes)
        ce = bag_cross_entropy(out.logit, label)
        return ce, {"bag": float(ce.detach())}
