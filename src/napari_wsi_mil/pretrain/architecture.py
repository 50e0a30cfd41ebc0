"""The pretraining networks' shapes, no weights read: the bare ResNet-18 trunk and the heads.

:mod:`~napari_wsi_mil.pretrain.models` builds trunks from weights files and the
:class:`~napari_wsi_mil.pretrain.models.ContrastiveModel`;
:mod:`~napari_wsi_mil.pretrain.encoder_file` checks encoder files against these shapes.
SimCLR, SupCon and WeakSupCon add :class:`ProjectionHead`; CluSiam adds
:class:`SimSiamProjector`, :class:`SimSiamPredictor` and :class:`ClusterAssigner`
(Wu et al.'s reference).

Shapes: ``N`` images, ``K`` clusters.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

#: Trunk output size (ResNet-18 after global average pooling).
TRUNK_DIM = 512


def bare_trunk() -> nn.Module:
    """Torchvision ResNet-18, randomly initialised, with ``fc`` replaced by identity:
    ``[N,3,H,W] -> [N,512]``."""
    trunk = resnet18(weights=None)
    trunk.fc = nn.Identity()
    return trunk


class ProjectionHead(nn.Module):
    """SimCLR projection ``Linear(512,512) - ReLU - Linear(512,128)``: ``[N,512] -> [N,128]``.

    The output is not normalised; :class:`ContrastiveModel` L2-normalises it.
    """

    def __init__(self, in_dim: int = TRUNK_DIM, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h [N, in_dim] -> [N, out_dim]``."""
        return self.net(h)


class SimSiamProjector(nn.Module):
    """CluSiam projector: ``[N,512] -> z [N,2048]``.

    ``Linear(512,512,no bias)-BN-ReLU-Linear(512,512,no bias)-BN-ReLU-Linear(512,2048)
    -BN(affine=False)``. As in the reference, the last Linear keeps a bias that
    is frozen (``requires_grad=False``), since the following BatchNorm cancels it.
    """

    def __init__(self, in_dim: int = TRUNK_DIM, out_dim: int = 2048):
        super().__init__()
        last = nn.Linear(in_dim, out_dim)
        last.bias.requires_grad_(False)
        self.net = nn.Sequential(
            nn.Linear(in_dim, in_dim, bias=False),
            nn.BatchNorm1d(in_dim),
            nn.ReLU(inplace=True),
            nn.Linear(in_dim, in_dim, bias=False),
            nn.BatchNorm1d(in_dim),
            nn.ReLU(inplace=True),
            last,
            nn.BatchNorm1d(out_dim, affine=False),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h [N, in_dim] -> z [N, out_dim]``."""
        return self.net(h)


class SimSiamPredictor(nn.Module):
    """CluSiam predictor ``Linear(2048,512,no bias)-BN-ReLU-Linear(512,2048)``: ``z -> p``."""

    def __init__(self, dim: int = 2048, hidden_dim: int = 512):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, dim),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z [N, dim] -> p [N, dim]``."""
        return self.net(z)


class ClusterAssigner(nn.Module):
    """CluSiam cluster assigner ``Linear(2048,512)-BN-ReLU-Linear(512,K)``: ``z -> logits``.

    At inference a patch's cluster is ``logits.argmax(1)`` (no Gumbel noise).
    """

    def __init__(self, in_dim: int = 2048, hidden_dim: int = 512, k: int = 100):
        super().__init__()
        if k < 2:
            raise ValueError(f"k must be at least 2; got {k}")
        self.k = k
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, k),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``z [N, in_dim] -> logits [N, K]``."""
        return self.net(z)


class ClusterHead(nn.Module):
    """CluSiam projector + assigner: trunk features ``h [N,512] -> logits [N,K]``.

    Saved apart from the trunk so cluster ids can be computed later from stored
    512-d features: ``ClusterHead(k).load_state_dict(...)``, ``eval()``, then
    ``head(h).argmax(1)``.
    """

    def __init__(self, k: int = 100):
        super().__init__()
        self.projector = SimSiamProjector()
        self.assigner = ClusterAssigner(k=k)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h [N, 512] -> logits [N, K]``."""
        return self.assigner(self.projector(h))
