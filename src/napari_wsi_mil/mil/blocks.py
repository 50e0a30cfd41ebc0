"""Building blocks shared by the MIL models, each written once.

- :class:`GatedAttention`: Ilse et al.'s gated attention scorer (raw logits).
- :class:`InstanceEncoder`: the per-instance projection of frozen features.
- :func:`attention_pool`: softmax over the bag and the attention-weighted mean.
- :func:`smooth_top1_svm_loss`: Berrada et al.'s smooth top-1 SVM (CLAM's option).
- :func:`normalised_entropy`: ``H(a) = -sum a log a / log n`` (MS-CLAM).

Shapes: ``N`` instances of one bag, ``D`` input size, ``E`` embedding size,
``C`` classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Smallest value ``log`` sees in :func:`normalised_entropy` (guards ``log(0)``).
LOG_EPS = 1e-12


class GatedAttention(nn.Module):
    """Gated attention scorer (Ilse, Tomczak & Welling 2018, "Attention-based deep MIL").

    ``s_k = w^T (tanh(V h_k) * sigmoid(U h_k)) + b``: one raw logit per instance;
    ``softmax`` over the bag (:func:`attention_pool`) gives the attention weights.
    As in CLAM's reference, dropout (when > 0) follows both the tanh and the
    sigmoid branch.

    Parameters
    ----------
    in_dim : int
        Instance embedding size ``E``.
    hidden_dim : int
        Attention size (Ilse's ``D``; 128..256 for histology).
    dropout : float
        Dropout probability after each branch (0 disables it).
    branches : int
        Attention maps scored from the shared branches (1; CLAM-MB: one per class).
    """

    def __init__(self, in_dim: int, hidden_dim: int, dropout: float = 0.0, branches: int = 1):
        super().__init__()
        self.tanh_branch = nn.Linear(in_dim, hidden_dim)  # V
        self.gate_branch = nn.Linear(in_dim, hidden_dim)  # U
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(hidden_dim, branches)  # w, one row per branch

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Raw attention logits.

        Parameters
        ----------
        h : torch.Tensor
            ``[N, E]`` instance embeddings.

        Returns
        -------
        torch.Tensor
            ``[N]`` logits (not normalised); ``[N, branches]`` with several branches.
        """
        v = self.dropout(torch.tanh(self.tanh_branch(h)))
        u = self.dropout(torch.sigmoid(self.gate_branch(h)))
        scores = self.score(v * u)
        return scores.squeeze(-1) if scores.shape[-1] == 1 else scores


class InstanceEncoder(nn.Module):
    """Per-instance projection of frozen features: ``[N, D] -> [N, E]``.

    Default (AB-MIL, CLAM, MS-CLAM; Ilse et al. / Lu et al.):
    ``Linear(D, E) -> ReLU -> Dropout``. WENO variant (``batch_norm=True``; Qu et
    al.'s feature-level encoder, as ALGORITHMS.md states it): ``Linear(D, E) ->
    BatchNorm1d`` with no nonlinearity and no dropout.

    A bag of one instance cannot give batch statistics: in training mode the
    batch-norm variant then normalises that instance with the running statistics
    (as in eval mode) instead of raising.

    Parameters
    ----------
    in_dim : int
        Feature size ``D``.
    out_dim : int
        Embedding size ``E`` (512 in the references).
    dropout : float
        Dropout after the ReLU (ignored by the batch-norm variant).
    batch_norm : bool
        WENO's ``Linear + BN`` variant.
    bias : bool
        Bias of the linear layer (DTFD-MIL's reference reduction has none).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 512,
        dropout: float = 0.0,
        *,
        batch_norm: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=bias)
        self.norm = nn.BatchNorm1d(out_dim) if batch_norm else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [N, D] -> h [N, E]``."""
        y = self.linear(x)
        if self.norm is None:
            return self.dropout(F.relu(y))
        if self.training and y.shape[0] < 2:
            bn = self.norm
            return F.batch_norm(
                y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
        return self.norm(y)


def attention_pool(logits: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention weights and the pooled bag embedding.

    ``a = softmax_k(logits)``, ``z = sum_k a_k h_k``.

    Parameters
    ----------
    logits : torch.Tensor
        ``[N]`` raw attention logits.
    h : torch.Tensor
        ``[N, E]`` instance embeddings.

    Returns
    -------
    a : torch.Tensor
        ``[N]`` weights summing to 1.
    z : torch.Tensor
        ``[E]`` bag embedding.
    """
    a = torch.softmax(logits, dim=0)
    return a, a @ h


def smooth_top1_svm_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0, tau: float = 1.0
) -> torch.Tensor:
    """Smooth top-1 multi-class SVM loss (Berrada, Zisserman & Kumar 2018), mean over rows.

    Written from the paper's definition (CLAM's ``--inst_loss svm`` option uses it
    with ``alpha = tau = 1``):
    ``L(s, y) = tau * log sum_j exp((alpha * [j != y] + s_j - s_y) / tau)``,
    a smooth upper bound of the hinge ``max_j(alpha [j != y] + s_j) - s_y``.

    Parameters
    ----------
    logits : torch.Tensor
        ``[M, C]`` scores.
    targets : torch.Tensor
        ``[M]`` class indices.
    alpha : float
        Margin.
    tau : float
        Temperature (smoothing), > 0.

    Returns
    -------
    torch.Tensor
        0-d mean loss; an empty batch (``M = 0``) gives a graph-connected 0.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    margin = alpha * (1.0 - F.one_hot(targets, logits.shape[1]).to(logits.dtype))
    true_score = logits.gather(1, targets.view(-1, 1)).squeeze(1)
    smooth_max = tau * torch.logsumexp((logits + margin) / tau, dim=1)
    return (smooth_max - true_score).mean()


def normalised_entropy(a: torch.Tensor) -> torch.Tensor:
    """Normalised Shannon entropy ``H(a) = -sum_k a_k log a_k / log n`` (MS-CLAM).

    ``a`` is used as given (MS-CLAM's reference does not renormalise a subset of
    the bag's attention before taking its entropy). ``0 log 0 = 0``: ``log`` sees
    ``max(a, 1e-12)``, so zeros give neither NaN values nor NaN gradients.

    Parameters
    ----------
    a : torch.Tensor
        ``[n]`` non-negative weights.

    Returns
    -------
    torch.Tensor
        0-d; 1 for a uniform distribution, 0 for a one-hot one; 0 (graph-connected)
        when ``n <= 1``, where ``log n = 0``.
    """
    n = a.numel()
    if n <= 1:
        return a.sum() * 0.0
    return -(a * torch.log(a.clamp_min(LOG_EPS))).sum() / math.log(n)
