"""Contrastive losses for patch-level encoder pretraining.

Every function takes tensors that are already gathered across processes (under DDP
the trainer all-gathers the embeddings first); nothing here calls
``torch.distributed``. Embeddings are L2-normalised inside each loss, so raw
projections and already-normalised ones give the same value.

Shapes: ``N`` patches, ``V`` views per patch, ``D`` embedding size, ``K`` clusters.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

#: Default temperature of NT-Xent / SupCon / WeakSupCon (Ciga et al. found 0.1 best).
TAU = 0.1
#: SupCon's base temperature ``tau_b`` (Khosla et al.'s reference code).
BASE_TAU = 0.07


class WeakSupConLoss(NamedTuple):
    """The WeakSupCon loss and its two parts (all 0-d tensors)."""

    loss: torch.Tensor
    """``negative_weight * similarity + simclr``."""
    similarity: torch.Tensor
    """Similarity loss of the negative-bag group."""
    simclr: torch.Tensor
    """SimCLR (SupCon with identity mask) of the positive-bag group."""


class CluSiamLoss(NamedTuple):
    """The CluSiam loss and its two unweighted parts (all 0-d tensors)."""

    loss: torch.Tensor
    """``(1 - alpha) * invariance + alpha * cluster``."""
    invariance: torch.Tensor
    """SimSiam invariance term, in ``[-2, 2]``."""
    cluster: torch.Tensor
    """Mean cosine between occupied cluster centroids, in ``[-1, 1]``."""


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A 0-d zero that keeps ``like`` in the autograd graph (so ``backward`` works)."""
    return like.sum() * 0.0


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen et al. 2020).

    For the ``2N`` views ``z = cat(z1, z2)``, anchor ``i`` with partner ``i'``:
    ``l_i = -log(exp(z_i.z_i'/tau) / sum_{k != i} exp(z_i.z_k/tau))``, averaged over
    all ``2N`` anchors. Equals pytorch-metric-learning's ``NTXentLoss(temperature=tau)``
    on ``embeddings = cat(z1, z2)`` with ``labels = cat(arange(N), arange(N))``.

    Parameters
    ----------
    z1, z2 : torch.Tensor
        ``[N, D]`` projections of the two views of each patch (row ``n`` of ``z1``
        and of ``z2`` come from the same patch). L2-normalised inside.
    tau : float
        Temperature.

    Returns
    -------
    torch.Tensor
        0-d loss.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be [N, D]; got {tuple(z1.shape)}, {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # [2N, D]
    logits = (z @ z.T) / tau  # [2N, 2N]
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)  # [2N]
    return F.cross_entropy(logits, partner)


def supcon(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    tau: float = TAU,
    base_tau: float = BASE_TAU,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, "SupCon", ``contrast_mode='all'``).

    With all ``M = N*V`` views as anchors, ``P(i)`` the other views with the same
    label and ``A(i)`` all other views::

        l_i = -(tau/base_tau) / |P(i)| * sum_{p in P(i)} log(exp(z_i.z_p/tau)
                                                        / sum_{a in A(i)} exp(z_i.z_a/tau))

    The denominator includes the positives. The loss is the mean of ``l_i`` over
    the anchors that have at least one positive; an anchor without positives
    contributes nothing (never NaN), and a batch where no anchor has a positive
    gives 0. This reduction is pytorch-metric-learning's (``AvgNonZeroReducer``),
    so ``supcon(f, y, tau, base_tau) == (tau/base_tau) * SupConLoss(tau)(cat of views,
    y repeated)``; pml has no ``tau/base_tau`` factor. Two differences from the
    references: Khosla's code averages over *all* anchors (those without
    positives count as 0), and pml returns 0 when the batch has no negatives at
    all (single label), where this function still returns the loss above.

    With ``labels`` and ``mask`` both ``None`` the mask is the identity (each
    view's only positives are the other views of the same patch): SimCLR, and for
    ``V = 2`` exactly ``nt_xent(f[:, 0], f[:, 1], tau) * tau / base_tau``.

    Parameters
    ----------
    features : torch.Tensor
        ``[N, V, D]`` projections, ``V`` views per patch. L2-normalised inside.
    labels : torch.Tensor or None
        ``[N]`` integer labels; views of patches with equal labels are positives.
    tau : float
        Temperature.
    base_tau : float
        Base temperature; the loss is scaled by ``tau / base_tau``.
    mask : torch.Tensor or None
        ``[N, N]`` positive mask, ``mask[i, j] = 1`` when patch ``j`` is a positive
        of patch ``i``; instead of ``labels``.

    Returns
    -------
    torch.Tensor
        0-d loss.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be [N, V, D]; got {tuple(features.shape)}")
    if labels is not None and mask is not None:
        raise ValueError("give labels or mask, not both")
    n, v, _ = features.shape
    device = features.device
    if mask is not None:
        if mask.shape != (n, n):
            raise ValueError(f"mask must be [{n}, {n}]; got {tuple(mask.shape)}")
        pos = mask.to(device=device, dtype=features.dtype)
    elif labels is not None:
        labels = labels.reshape(-1).to(device)
        if labels.shape[0] != n:
            raise ValueError(f"{labels.shape[0]} labels for {n} patches")
        pos = (labels[:, None] == labels[None, :]).to(features.dtype)
    else:
        pos = torch.eye(n, dtype=features.dtype, device=device)
    m = n * v
    if m < 2:
        return _zero(features)

    # View-major order as in Khosla's code: row k*N + i is view k of patch i.
    z = F.normalize(torch.cat(features.unbind(dim=1)), dim=1)  # [M, D]
    self_mask = torch.eye(m, dtype=torch.bool, device=device)
    pos = pos.repeat(v, v).masked_fill(self_mask, 0.0)  # [M, M]
    logits = (z @ z.T) / tau  # [M, M]
    log_denominator = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1)
    log_prob = logits - log_denominator[:, None]  # [M, M]
    n_pos = pos.sum(dim=1)  # [M]
    mean_log_prob_pos = (pos * log_prob).sum(dim=1) / n_pos.clamp(min=1.0)
    per_anchor = -(tau / base_tau) * mean_log_prob_pos  # [M]
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return _zero(features)
    return per_anchor[has_pos].mean()


def bag_similarity(features: torch.Tensor, base_tau: float = BASE_TAU) -> torch.Tensor:
    """WeakSupCon's similarity loss for the negative-bag group (Zhang et al.).

    Every view is a positive of every other view; following the reference
    ``SimilarityLoss`` there is no softmax denominator, and its ``tau`` cancels:
    ``L = (1/base_tau) * mean_{i != j} (1 - z_i.z_j)`` over all ``M = N*V`` views.
    (The reference averages per anchor and then over anchors; every anchor has
    ``M - 1`` partners, so that is this plain mean.)

    Parameters
    ----------
    features : torch.Tensor
        ``[N, V, D]`` projections. L2-normalised inside.
    base_tau : float
        Base temperature.

    Returns
    -------
    torch.Tensor
        0-d loss; 0 (still in the autograd graph) when there are fewer than 2 views.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be [N, V, D]; got {tuple(features.shape)}")
    z = F.normalize(features.reshape(-1, features.shape[-1]), dim=1)  # [M, D]
    m = z.shape[0]
    if m < 2:
        return _zero(features)
    sim = z @ z.T  # [M, M]
    off_diagonal = ~torch.eye(m, dtype=torch.bool, device=z.device)
    return (1.0 - sim[off_diagonal]).mean() / base_tau


def weaksupcon(
    z_views: torch.Tensor,
    bag_labels: torch.Tensor,
    tau: float = TAU,
    base_tau: float = BASE_TAU,
    negative_weight: float = 1.0,
) -> WeakSupConLoss:
    """WeakSupCon loss (Zhang et al.): similarity on negative bags + SimCLR on positive bags.

    The batch (one forward pass, so BatchNorm statistics are shared) is split by
    bag label. Negative-bag patches (label 0) get :func:`bag_similarity`;
    positive-bag patches (label != 0) get SimCLR on their own views only, i.e.
    :func:`supcon` with the identity mask, so negative-bag patches are never used
    as negatives of positive-bag patches. ``L = w L_sim + L_simclr`` (``w`` =
    ``negative_weight``, 1 in the paper); a group that is empty (or has a single view)
    contributes 0, never NaN.

    Parameters
    ----------
    z_views : torch.Tensor
        ``[N, V, D]`` projections of ``V`` views of each patch. L2-normalised inside.
    bag_labels : torch.Tensor
        ``[N]`` label of the bag (slide) each patch comes from; 0 is negative.
    tau : float
        Temperature of the SimCLR part.
    base_tau : float
        Base temperature of both parts.
    negative_weight : float
        Weight ``w`` of the similarity term (the negative-bag group).

    Returns
    -------
    WeakSupConLoss
        ``(loss, similarity, simclr)``, 0-d tensors.
    """
    if z_views.ndim != 3:
        raise ValueError(f"z_views must be [N, V, D]; got {tuple(z_views.shape)}")
    bag_labels = bag_labels.reshape(-1).to(z_views.device)
    if bag_labels.shape[0] != z_views.shape[0]:
        raise ValueError(f"{bag_labels.shape[0]} bag labels for {z_views.shape[0]} patches")
    positive = bag_labels != 0
    negatives, positives = z_views[~positive], z_views[positive]
    similarity = bag_similarity(negatives, base_tau) if len(negatives) else _zero(z_views)
    simclr = supcon(positives, None, tau, base_tau) if len(positives) else _zero(z_views)
    return WeakSupConLoss(negative_weight * similarity + simclr, similarity, simclr)


def gumbel_softmax(
    logits: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Soft Gumbel-softmax sample ``softmax((logits + g) / tau)``, ``g ~ Gumbel(0, 1)``.

    Same as ``torch.nn.functional.gumbel_softmax(logits, tau, hard=False)`` but the
    noise can come from ``generator`` (it must live on ``logits``' device); with
    ``generator=None`` the global RNG is used, as in ``F.gumbel_softmax``.

    Parameters
    ----------
    logits : torch.Tensor
        ``[M, K]`` unnormalised log-probabilities.
    tau : float
        Gumbel-softmax temperature.
    generator : torch.Generator or None
        Source of the noise.

    Returns
    -------
    torch.Tensor
        ``[M, K]`` rows on the probability simplex.
    """
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
    return torch.softmax((logits + gumbels) / tau, dim=-1)


def centroid_similarity(
    z: torch.Tensor,
    assign_logits: torch.Tensor,
    tau_gumbel: float = 1.0,
    generator: torch.Generator | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """CluSiam's cluster loss: mean cosine between occupied cluster centroids (Wu et al.).

    Following the reference ``final_cluster_similarity``: soft assignments
    ``s = gumbel_softmax(a)``, hard one-hot by argmax with the straight-through
    estimator ``onehot - sg(s) + s``; centroids
    ``c_k = normalise(sum_i hard_ik * normalise(sg z_i) / max(count_k, 1))``; the
    loss is the mean cosine over pairs ``k < l`` of occupied clusters, and 1 when
    only one cluster is occupied. Gradients reach the assigner logits only, through
    the straight-through estimator (``z`` is detached here).

    The reference selects the pairs as the *non-zero* entries of the upper
    triangle of the centroid cosine matrix: unoccupied centroids are zero vectors,
    so that is the occupied pairs, except that it would also drop occupied pairs
    whose cosine is exactly 0 (and return 1 when all are). This function selects
    the occupied pairs explicitly, so exactly orthogonal centroids give 0.

    Parameters
    ----------
    z : torch.Tensor
        ``[M, D]`` projections of all views (``M = 2B`` for two views); detached.
    assign_logits : torch.Tensor
        ``[M, K]`` cluster-assigner logits of the same rows.
    tau_gumbel : float
        Gumbel-softmax temperature.
    generator : torch.Generator or None
        Source of the Gumbel noise (see :func:`gumbel_softmax`).
    eps : float
        Norm floor of the normalisations (the reference's ``1e-8``).

    Returns
    -------
    torch.Tensor
        0-d loss in ``[-1, 1]``.
    """
    if z.ndim != 2 or assign_logits.ndim != 2 or z.shape[0] != assign_logits.shape[0]:
        raise ValueError(
            f"z must be [M, D] and assign_logits [M, K]; got {tuple(z.shape)}, "
            f"{tuple(assign_logits.shape)}"
        )
    k = assign_logits.shape[1]
    reps = F.normalize(z.detach(), dim=1, eps=eps)  # [M, D]
    soft = gumbel_softmax(assign_logits, tau_gumbel, generator)  # [M, K]
    index = soft.argmax(dim=1)  # [M]
    hard = F.one_hot(index, k).to(soft.dtype) - soft.detach() + soft  # [M, K]
    counts = hard.sum(dim=0).clamp(min=1.0)  # [K]
    centroids = F.normalize((hard.T @ reps) / counts[:, None], dim=1, eps=eps)  # [K, D]
    occupied = torch.bincount(index, minlength=k) > 0  # [K]
    c = centroids[occupied]  # [C, D]
    if c.shape[0] < 2:
        return _zero(assign_logits) + 1.0
    rows, cols = torch.triu_indices(c.shape[0], c.shape[0], offset=1, device=c.device)
    return (c @ c.T)[rows, cols].mean()


def clusiam_loss(
    p1: torch.Tensor,
    p2: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    assign_logits: torch.Tensor,
    alpha: float = 0.5,
    tau_gumbel: float = 1.0,
    generator: torch.Generator | None = None,
) -> CluSiamLoss:
    """CluSiam loss (Wu et al.): SimSiam invariance plus cluster separation.

    ``L_inv = -[mean cos(p1, sg z2) + mean cos(p2, sg z1)]`` as in the CluSiam
    reference, i.e. the sum of the two terms (range ``[-2, 2]``), not SimSiam's
    ``0.5 * (...)``. ``L_clu`` is :func:`centroid_similarity` of ``cat(z1, z2)``
    and ``assign_logits``. ``L = (1 - alpha) L_inv + alpha L_clu``; the returned
    parts are unweighted (the reference logs the weighted ones).

    Parameters
    ----------
    p1, p2 : torch.Tensor
        ``[B, D]`` predictor outputs of view 1 and view 2.
    z1, z2 : torch.Tensor
        ``[B, D]`` projector outputs of view 1 and view 2 (stop-gradient applied here).
    assign_logits : torch.Tensor
        ``[2B, K]`` assigner logits of ``cat(z1, z2)`` (computed from non-detached z).
    alpha : float
        Weight of the cluster term.
    tau_gumbel : float
        Gumbel-softmax temperature.
    generator : torch.Generator or None
        Source of the Gumbel noise; ``None`` uses the global RNG.

    Returns
    -------
    CluSiamLoss
        ``(loss, invariance, cluster)``, 0-d tensors.
    """
    invariance = -(
        F.cosine_similarity(p1, z2.detach(), dim=1).mean()
        + F.cosine_similarity(p2, z1.detach(), dim=1).mean()
    )
    cluster = centroid_similarity(torch.cat([z1, z2]), assign_logits, tau_gumbel, generator)
    return CluSiamLoss((1.0 - alpha) * invariance + alpha * cluster, invariance, cluster)
