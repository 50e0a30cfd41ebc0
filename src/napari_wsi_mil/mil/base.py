"""The output type and base class shared by every MIL model.

Convention (one for all models): a bag is a float tensor ``features [N, D]`` (``N``
patches in TileGrid order, ``N >= 1``); a model returns two-class logits ``[2]``
(index 0 = negative / normal, index 1 = positive / tumour), as CLAM and DTFD-MIL do,
and ``probability = softmax(logit)[1]``. Bag labels are ``0`` or ``1``.

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

#: Number of bag classes of every model (negative, positive).
N_CLASSES = 2


class MilOutput(NamedTuple):
    """What every MIL model's ``forward`` returns for one bag.

    All tensors live on the features' device; they carry gradients when the
    forward pass did.
    """

    logit: torch.Tensor
    """Bag logits ``[2]`` (negative, positive)."""
    probability: torch.Tensor
    """0-d float tensor, ``P(positive) = softmax(logit)[1]``, in ``[0, 1]``."""
    attention: torch.Tensor
    """``[N]`` attention weights, non-negative and summing to 1 over the bag."""
    instance_probability: torch.Tensor
    """``[N]`` the model's own per-instance estimate in ``[0, 1]`` (each model's
    docstring says how it is derived)."""
    teacher_probability: torch.Tensor | None = None
    """WENO only: the teacher's (attention bag classifier's) ``P(positive)``, 0-d;
    ``None`` for the other models."""

    @classmethod
    def from_logit(
        cls, logit: torch.Tensor, attention: torch.Tensor, instance_probability: torch.Tensor
    ) -> MilOutput:
        """The output of a model whose bag probability is ``softmax(logit)[1]``.

        (WENO's bag probability is its top instance's and DTFD-MIL averages it over
        draws, so they build theirs directly.)
        """
        return cls(logit, torch.softmax(logit, dim=0)[1], attention, instance_probability)


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


def bag_label_tensor(bag_label: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A bag label (``0`` or ``1``, int or tensor) as a 0-d ``long`` tensor on ``device``.

    Raises
    ------
    ValueError
        The label is not 0 or 1.
    """
    label = torch.as_tensor(bag_label, device=device).long().reshape(())
    if int(label) not in (0, 1):
        raise ValueError(f"bag_label must be 0 or 1; got {int(label)}")
    return label


def bag_cross_entropy(logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one bag's logits ``[2]`` against a 0-d label -> 0-d tensor."""
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
            0 or 1.
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
        ce = bag_cross_entropy(out.logit, bag_label_tensor(bag_label, features.device))
        return ce, {"bag": float(ce.detach())}
