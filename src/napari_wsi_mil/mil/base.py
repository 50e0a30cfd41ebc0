"""The output type and base class shared by every MIL model.

Convention (one for all models): a bag is a float tensor ``features [N, D]`` (``N``
patches in TileGrid order, ``N >= 1``); a model returns two-class logits ``[2]``
(index 0 = negative / normal, index 1 = positive / tumour), as CLAM and DTFD-MIL do,
and ``probability = softmax(logit)[1]``. Bag labels are ``0`` or ``1``.

Shapes: ``N`` instances (patches) of one bag, ``D`` feature size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

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


class MilModel(nn.Module):
    """Base class: ``forward(features [N, D]) -> MilOutput`` and ``loss``.

    Subclasses set ``in_dim`` and implement ``forward``; the default :meth:`loss`
    is the bag cross-entropy (AB-MIL's rule), models with richer rules override it.
    """

    in_dim: int
    #: Whether the bag ``probability`` is the max of ``instance_probability`` (WENO).
    #: Such a model's tumour mask is cut at its bag threshold
    #: (:func:`napari_wsi_mil.mil.predict.mask_threshold_for`).
    bag_is_max_instance: bool = False

    def loss(
        self, features: torch.Tensor, bag_label: int | torch.Tensor, **extra: object
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of one bag.

        Parameters
        ----------
        features : torch.Tensor
            ``[N, D]`` instance features.
        bag_label : int or torch.Tensor
            0 or 1.
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
