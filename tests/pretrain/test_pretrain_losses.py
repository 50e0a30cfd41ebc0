"""Contrastive losses: oracles from pytorch-metric-learning and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from napari_wsi_mil.pretrain.losses import (
    BASE_TAU,
    bag_similarity,
    centroid_similarity,
    clusiam_loss,
    nt_xent,
    supcon,
    weaksupcon,
)

TAU = 0.1


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _views(n: int, v: int = 2, d: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, v, d, generator=_gen(seed), dtype=torch.float64)


# --------------------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("n", [2, 5, 8])
def test_nt_xent_matches_pml(n):
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    z1, z2 = _views(n, seed=n).unbind(dim=1)
    labels = torch.arange(n).repeat(2)
    oracle = losses.NTXentLoss(temperature=TAU)(torch.cat([z1, z2]), labels)
    assert nt_xent(z1, z2, TAU).item() == pytest.approx(oracle.item(), abs=1e-5)


def test_nt_xent_is_scale_invariant():
    z1, z2 = _views(4).unbind(dim=1)
    assert torch.allclose(nt_xent(z1, z2), nt_xent(3 * z1, 0.5 * z2))


# --------------------------------------------------------------------------- SupCon


@pytest.mark.parametrize(
    "labels",
    [
        [0, 1, 0, 1, 2, 2],
        [0, 0, 1, 2, 3, 3, 1, 4],  # label 2 and 4 appear once: anchors with one positive (V=2)
    ],
)
@pytest.mark.parametrize("v", [1, 2, 3])
def test_supcon_matches_pml_times_tau_ratio(labels, v):
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    y = torch.tensor(labels)
    f = _views(len(labels), v=v, seed=v)
    ours = supcon(f, y, TAU, BASE_TAU)
    # pml takes the views in view-major order with the labels repeated.
    embeddings = torch.cat(f.unbind(dim=1))
    oracle = losses.SupConLoss(temperature=TAU)(embeddings, y.repeat(v))
    assert torch.isfinite(ours)
    assert ours.item() == pytest.approx((TAU / BASE_TAU) * oracle.item(), abs=1e-5)


def test_supcon_anchor_without_positive_is_skipped_not_nan():
    # One view per patch: the patch with the unique label 2 has no positive at all.
    f = _views(5, v=1).requires_grad_()
    loss = supcon(f, torch.tensor([0, 0, 1, 1, 2]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()


def test_supcon_without_any_positive_is_zero():
    f = _views(3, v=1).requires_grad_()
    loss = supcon(f, torch.tensor([0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(f.grad).all()


def test_supcon_without_labels_is_nt_xent_times_tau_ratio():
    f = _views(6)
    expected = nt_xent(f[:, 0], f[:, 1], TAU) * TAU / BASE_TAU
    assert supcon(f, None, TAU, BASE_TAU).item() == pytest.approx(expected.item(), abs=1e-6)


def test_supcon_mask_equals_labels():
    y = torch.tensor([0, 1, 0, 2])
    f = _views(4)
    mask = (y[:, None] == y[None, :]).float()
    assert torch.allclose(supcon(f, mask=mask), supcon(f, y))
    with pytest.raises(ValueError):
        supcon(f, y, mask=mask)


# --------------------------------------------------------------------------- WeakSupCon


def test_bag_similarity_hand_computed():
    # 2 negative patches x 2 views in 2-d: angles 0, 90 (patch 0) and 0, 180 (patch 1).
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    z = torch.stack([torch.stack([e1, e2]), torch.stack([e1, -e1])])  # [2, 2, 2]
    # Views: a=e1, b=e2, c=e1, d=-e1. Off-diagonal (1 - cos) over the 6 unordered pairs:
    # ab 1, ac 0, ad 2, bc 1, bd 1, cd 2 -> mean 7/6.
    expected = (7.0 / 6.0) / BASE_TAU
    assert bag_similarity(z).item() == pytest.approx(expected, rel=1e-6)
    loss = weaksupcon(z, torch.tensor([0, 0]))
    assert loss.similarity.item() == pytest.approx(expected, rel=1e-6)
    assert loss.simclr.item() == 0.0
    assert loss.loss.item() == pytest.approx(expected, rel=1e-6)


def test_bag_similarity_identical_views_is_zero():
    z = torch.tensor([1.0, 2.0, 3.0]).expand(3, 2, 3)
    assert bag_similarity(z).item() == pytest.approx(0.0, abs=1e-5)


def test_weaksupcon_all_negative_and_all_positive():
    z = _views(4)
    neg = weaksupcon(z, torch.zeros(4, dtype=torch.long))
    assert neg.simclr.item() == 0.0
    assert neg.loss.item() == pytest.approx(bag_similarity(z).item())
    pos = weaksupcon(z, torch.ones(4, dtype=torch.long))
    assert pos.similarity.item() == 0.0
    assert pos.loss.item() == pytest.approx(supcon(z, None, TAU, BASE_TAU).item())


def test_weaksupcon_groups_do_not_mix():
    z = _views(6)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    loss = weaksupcon(z, y)
    assert loss.similarity.item() == pytest.approx(bag_similarity(z[y == 0]).item())
    # Negatives never serve as negatives for positives: SimCLR on the positives alone.
    assert loss.simclr.item() == pytest.approx(supcon(z[y == 1]).item())
    assert loss.loss.item() == pytest.approx(loss.similarity.item() + loss.simclr.item())


@pytest.mark.parametrize("labels", [[0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 1, 1]])
def test_weaksupcon_gradients_flow_and_no_nan(labels):
    z = _views(4).requires_grad_()
    loss = weaksupcon(z, torch.tensor(labels)).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_weaksupcon_single_view_groups_are_zero():
    z = _views(2, v=1).requires_grad_()
    loss = weaksupcon(z, torch.tensor([0, 1]))
    loss.loss.backward()
    assert loss.loss.item() == 0.0 and torch.isfinite(z.grad).all()


# --------------------------------------------------------------------------- CluSiam


def _confident_logits(clusters: list[int], k: int = 5) -> torch.Tensor:
    """Logits so large that Gumbel noise cannot change the argmax."""
    return F.one_hot(torch.tensor(clusters), k).double() * 1e3


def test_clusiam_invariance_of_identical_views_is_minus_two():
    z = _views(4, d=16)[:, 0]
    loss = clusiam_loss(z, z, z, z, _confident_logits([0, 0, 0, 0] * 2), generator=_gen())
    assert loss.invariance.item() == pytest.approx(-2.0)
    assert loss.cluster.item() == pytest.approx(1.0)  # one occupied cluster
    assert loss.loss.item() == pytest.approx(0.5 * -2.0 + 0.5 * 1.0)


def test_centroid_similarity_one_cluster_is_one():
    z = _views(6, v=1)[:, 0]
    assert centroid_similarity(z, _confident_logits([2] * 6), generator=_gen()).item() == 1.0


def test_centroid_similarity_orthogonal_centroids_is_zero():
    e = torch.eye(3, dtype=torch.float64)
    z = torch.stack([e[0], 2 * e[0], e[1], e[1], e[2], 3 * e[2]])
    logits = _confident_logits([0, 0, 3, 3, 4, 4])
    assert centroid_similarity(z, logits, generator=_gen()).item() == pytest.approx(0.0)


def test_centroid_similarity_known_angle():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    loss = centroid_similarity(z, _confident_logits([0, 0, 1]), generator=_gen())
    assert loss.item() == pytest.approx(1 / math.sqrt(2))


def test_clusiam_gradient_reaches_assigner_logits():
    g = _gen(1)
    b, k = 8, 4
    z1, z2 = torch.randn(b, 16, generator=g), torch.randn(b, 16, generator=g)
    p1, p2 = torch.randn(b, 16, generator=g), torch.randn(b, 16, generator=g)
    logits = (torch.arange(2 * b) % k).float()
    logits = (F.one_hot(logits.long(), k).float() * 5.0).requires_grad_()
    loss = clusiam_loss(p1, p2, z1, z2, logits, generator=_gen(2))
    loss.loss.backward()
    assert torch.isfinite(loss.loss)
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_clusiam_stop_gradient_on_z():
    g = _gen(3)
    z1, z2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    z1.requires_grad_()
    p1, p2 = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    p2.requires_grad_()
    logits = torch.zeros(8, 3)
    loss = clusiam_loss(p1, p2, z1, z2, logits, generator=_gen())
    loss.loss.backward()
    # z1 is only used behind stop-gradients (in the invariance and centroids).
    assert z1.grad is None or z1.grad.abs().sum() == 0
    assert p2.grad.abs().sum() > 0


def test_clusiam_generator_makes_gumbel_deterministic():
    g = _gen(4)
    z = torch.randn(16, 8, generator=g)
    logits = torch.randn(16, 6, generator=g)
    a = centroid_similarity(z, logits, generator=_gen(7))
    b = centroid_similarity(z, logits, generator=_gen(7))
    assert a.item() == b.item()
