"""TransMIL (Shao et al., NeurIPS 2021, "TransMIL: Transformer based correlated multiple
instance learning for whole slide image classification"), with Nystrom attention (Xiong
et al., AAAI 2021, "Nystromformer"), both written from the papers.

``h = ReLU(Linear(D, E)(x))``; the ``N`` tokens are padded to the next square
``S x S`` by repeating the first ones; a class token is prepended; then TransLayer
(pre-norm Nystrom self-attention with a residual), PPEG (the ``S x S`` token map plus
its depthwise 7x7, 5x5 and 3x3 convolutions; the class token passes through), a second
TransLayer, LayerNorm, and ``Linear(E, C)`` on the class token; trained with the bag
cross-entropy (:meth:`napari_wsi_mil.mil.base.MilModel.loss`).

The token map follows the bag's instance order (TileGrid order), not the tiles' slide
coordinates, as in the paper; so TransMIL is not invariant to the order of instances.

Shapes: ``N`` instances, ``T`` tokens, ``D`` feature size, ``E`` embedding size,
``H`` heads, ``M`` landmarks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_wsi_mil.mil.abmil import minmax_attention
from napari_wsi_mil.mil.base import N_CLASSES, MilModel, MilOutput, check_bag
from napari_wsi_mil.mil.blocks import InstanceEncoder

#: Length of the depthwise convolution over the sequence that Nystromformer adds to the
#: attention output as a skip connection of the values (its reference setting).
VALUE_CONV_KERNEL = 33
#: PPEG's depthwise convolution sizes (Shao et al.).
PPEG_KERNELS = (7, 5, 3)


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of square matrices by Nystromformer's iteration.

    ``Z_0 = A^T / (||A||_1 ||A||_inf)``,
    ``Z_{j+1} = Z_j (13 I - A Z_j (15 I - A Z_j (7 I - A Z_j))) / 4``
    (Razavi et al. 2014), each matrix scaled by its own norms.

    Parameters
    ----------
    a : torch.Tensor
        ``[..., M, M]``.
    iterations : int
        Number of iterations (6 in TransMIL).

    Returns
    -------
    torch.Tensor
        ``[..., M, M]`` approximate pseudo-inverses.
    """
    magnitude = a.abs()
    scale = magnitude.sum(-1).amax(-1) * magnitude.sum(-2).amax(-1)
    z = a.transpose(-1, -2) / scale[..., None, None]
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def segment_means(x: torch.Tensor, m: int) -> torch.Tensor:
    """Means of ``m`` contiguous segments of the sequence (Nystromformer's landmarks).

    The ``T`` positions are split into ``m <= T`` segments of ``floor(T/m)`` or
    ``ceil(T/m)`` positions (the paper pads ``T`` to a multiple of ``m`` instead; these
    segments need no padding tokens).

    Parameters
    ----------
    x : torch.Tensor
        ``[H, T, d]``.
    m : int
        Number of segments, ``1 <= m <= T``.

    Returns
    -------
    torch.Tensor
        ``[H, m, d]``.
    """
    t = x.shape[1]
    segment = torch.arange(t, device=x.device) * m // t
    sums = x.new_zeros(x.shape[0], m, x.shape[2]).index_add(1, segment, x)
    counts = torch.bincount(segment, minlength=m).to(x.dtype)
    return sums / counts[:, None]


def nystrom_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, landmarks: int, iterations: int
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Nystrom approximation of ``softmax(q k^T) v`` (Xiong et al. 2021).

    With landmarks ``q~, k~`` (:func:`segment_means`):
    ``softmax(q k~^T) pinv(softmax(q~ k~^T)) softmax(q~ k^T) v``. With as many landmarks
    as positions it is exact attention, up to the iterative pseudo-inverse.

    Parameters
    ----------
    q, k, v : torch.Tensor
        ``[H, T, d]``; ``q`` already scaled by ``1 / sqrt(d)``.
    landmarks : int
        Number of landmarks; ``min(landmarks, T)`` are used.
    iterations : int
        Pseudo-inverse iterations (:func:`iterative_pinv`).

    Returns
    -------
    out : torch.Tensor
        ``[H, T, d]``.
    kernels : tuple of torch.Tensor
        ``(softmax(q k~^T) [H, T, m], pinv [H, m, m], softmax(q~ k^T) [H, m, T])``:
        the approximate attention matrix is their product.
    """
    m = min(landmarks, q.shape[1])
    q_landmarks, k_landmarks = segment_means(q, m), segment_means(k, m)
    left = torch.softmax(q @ k_landmarks.transpose(1, 2), dim=-1)
    middle = iterative_pinv(
        torch.softmax(q_landmarks @ k_landmarks.transpose(1, 2), dim=-1), iterations
    )
    right = torch.softmax(q_landmarks @ k.transpose(1, 2), dim=-1)
    return (left @ middle) @ (right @ v), (left, middle, right)


class NystromSelfAttention(nn.Module):
    """Multi-head self-attention by :func:`nystrom_attention`, plus Nystromformer's
    depthwise convolution of the values along the sequence as a skip connection.

    A sequence of at most ``landmarks`` tokens gets exact softmax attention: what the
    approximation with one landmark per token converges to, without the iterative
    pseudo-inverse's error (a few percent after 6 iterations) and its ``O(T^3)`` cost.

    Parameters
    ----------
    dim : int
        Token size ``E`` (a multiple of ``heads``).
    heads : int
        Number of heads ``H``; each has ``E / H`` channels.
    landmarks : int
        Number of landmarks ``M``.
    pinv_iterations : int
        Pseudo-inverse iterations.
    dropout : float
        Dropout on the output projection.
    """

    def __init__(
        self, dim: int, heads: int, landmarks: int, pinv_iterations: int, dropout: float = 0.0
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not a multiple of heads {heads}")
        self.heads, self.landmarks, self.pinv_iterations = heads, landmarks, pinv_iterations
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.value_conv = nn.Conv1d(
            heads, heads, VALUE_CONV_KERNEL, padding=VALUE_CONV_KERNEL // 2, groups=heads,
            bias=False,
        )  # fmt: skip
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))

    def forward(
        self, x: torch.Tensor, attention_row: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x [T, E] -> [T, E]``, and row ``attention_row`` of the approximate attention
        matrix averaged over heads ``[T]`` (``None`` when not asked for)."""
        t, dim = x.shape
        q, k, v = self.qkv(x).view(t, 3, self.heads, dim // self.heads).permute(1, 2, 0, 3)
        q = q / math.sqrt(q.shape[-1])
        row = None
        if t <= self.landmarks:  # one landmark per token: exact attention
            weights = torch.softmax(q @ k.transpose(1, 2), dim=-1)
            mixed = weights @ v
            if attention_row is not None:
                row = weights[:, attention_row].mean(0)
        else:
            mixed, (left, middle, right) = nystrom_attention(
                q, k, v, self.landmarks, self.pinv_iterations
            )
            if attention_row is not None:
                row = ((left[:, attention_row, None] @ middle) @ right).mean(0).squeeze(0)
        # each head's values [T, d] as one channel: a convolution along T per channel
        skip = self.value_conv(v.permute(2, 0, 1)).permute(1, 2, 0)
        return self.out((mixed + skip).transpose(0, 1).reshape(t, dim)), row


class TransLayer(nn.Module):
    """``x + NystromSelfAttention(LayerNorm(x))`` (TransMIL's pre-norm layer)."""

    def __init__(self, dim: int, heads: int, landmarks: int, pinv_iterations: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = NystromSelfAttention(dim, heads, landmarks, pinv_iterations, dropout)

    def forward(
        self, x: torch.Tensor, attention_row: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x [T, E] -> [T, E]`` and the attention row (see :class:`NystromSelfAttention`)."""
        mixed, row = self.attention(self.norm(x), attention_row)
        return x + mixed, row


class PPEG(nn.Module):
    """Pyramid position encoding generator: the instance tokens as an ``S x S`` map
    (row-major) plus its depthwise 7x7, 5x5 and 3x3 convolutions; the class token
    (position 0) passes through unchanged."""

    def __init__(self, dim: int):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in PPEG_KERNELS
        )

    def forward(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        """``tokens [1 + S*S, E] -> [1 + S*S, E]``."""
        dim = tokens.shape[1]
        grid = tokens[1:].transpose(0, 1).reshape(1, dim, side, side)
        grid = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([tokens[:1], grid.reshape(dim, side * side).transpose(0, 1)])


class TransMIL(MilModel):
    """TransMIL (Shao et al. 2021) on frozen features.

    ``attention`` is the class token's row of the last layer's (approximate) attention
    matrix, averaged over heads, over the bag's own instances (the class token itself
    and the padding copies left out), negative values of the Nystrom approximation
    clipped to 0, and normalised to sum 1 (uniform if nothing is left).
    ``instance_probability`` is that attention min-max scaled within the bag
    (:func:`~napari_wsi_mil.mil.abmil.minmax_attention`, as AB-MIL): it ranks
    instances within a bag and is not calibrated across bags.

    Parameters
    ----------
    in_dim : int
        Feature size ``D``.
    embed_dim : int
        Token size ``E`` (512 in the paper).
    heads : int
        Attention heads (8).
    landmarks : int
        Nystrom landmarks (``E / 2`` = 256); a sequence of at most that many tokens gets
        exact attention (:class:`NystromSelfAttention`).
    pinv_iterations : int
        Pseudo-inverse iterations (6).
    dropout : float
        Dropout on each attention output.
    n_classes : int
        Number of bag classes ``C``.
    """

    def __init__(
        self,
        in_dim: int,
        embed_dim: int = 512,
        heads: int = 8,
        landmarks: int = 256,
        pinv_iterations: int = 6,
        dropout: float = 0.1,
        n_classes: int = N_CLASSES,
    ):
        super().__init__()
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.encoder = InstanceEncoder(in_dim, embed_dim)
        self.class_token = nn.Parameter(torch.randn(embed_dim))
        self.layer1 = TransLayer(embed_dim, heads, landmarks, pinv_iterations, dropout)
        self.ppeg = PPEG(embed_dim)
        self.layer2 = TransLayer(embed_dim, heads, landmarks, pinv_iterations, dropout)
        self.norm = nn.LayerNorm(embed_dim)
        self.classifier = nn.Linear(embed_dim, n_classes)

    def forward(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> MilOutput:
        """``features [N, D] -> MilOutput`` (see :class:`~napari_wsi_mil.mil.base.MilOutput`)."""
        check_bag(features, self.in_dim)
        h = self.encoder(features)
        n = h.shape[0]
        side = math.isqrt(n - 1) + 1  # ceil(sqrt(n))
        padded = h[torch.arange(side * side, device=h.device) % n]  # repeat the first ones
        tokens = torch.cat([self.class_token[None], padded])
        tokens, _ = self.layer1(tokens)
        tokens = self.ppeg(tokens, side)
        tokens, row = self.layer2(tokens, attention_row=0)
        logit = self.classifier(self.norm(tokens[0]))
        attention = class_attention(row, n)
        return MilOutput.from_logit(logit, attention, minmax_attention(attention))


def class_attention(row: torch.Tensor, n: int) -> torch.Tensor:
    """The class token's attention ``[1 + S*S]`` over the ``n`` instances ``[n]``:
    positions ``1..n``, clipped at 0, summing to 1 (uniform when nothing is left)."""
    a = row[1 : n + 1].clamp_min(0)
    total = a.sum()
    if float(total.detach()) <= 0:
        return torch.full_like(a, 1.0 / n)
    return a / total
