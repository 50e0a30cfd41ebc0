"""Hand-computed checks of the MIL building blocks and the models' pure rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_wsi_mil.mil.blocks import (
    GatedAttention,
    InstanceEncoder,
    attention_pool,
    normalised_entropy,
    smooth_top1_svm_loss,
)
from napari_wsi_mil.mil.clam import instance_loss, top_bottom_indices
from napari_wsi_mil.mil.dtfd import pseudo_bag_indices
from napari_wsi_mil.mil.msclam import (
    attention_loss,
    instance_targets,
    paired_batches,
    slide_kind,
    tumour_slide_weights,
)
from napari_wsi_mil.mil.weno import (
    attention_logit_range,
    hard_positive_mask,
    soft_pseudo_labels,
    student_loss,
)


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------- blocks


def test_gated_attention_matches_manual_computation():
    att = GatedAttention(2, 2, dropout=0.0)
    with torch.no_grad():
        for lin in (att.tanh_branch, att.gate_branch):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
        att.score.weight.copy_(torch.tensor([[1.0, 1.0]]))
        att.score.bias.zero_()
    h = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    logits = att(h)
    expected = [0.0, math.tanh(1) * _sig(1), math.tanh(2) * _sig(2)]
    assert logits.shape == (3,)
    assert torch.allclose(logits, torch.tensor(expected), atol=1e-6)
    a, z = attention_pool(logits, h)
    den = sum(math.exp(s) for s in expected)
    a_manual = torch.tensor([math.exp(s) / den for s in expected])
    assert torch.allclose(a, a_manual, atol=1e-6)
    assert a.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(z, a_manual @ h, atol=1e-6)


def test_instance_encoder_variants():
    x = torch.randn(6, 4)
    enc = InstanceEncoder(4, 8, dropout=0.5)
    enc.eval()
    assert (enc(x) >= 0).all()  # ReLU
    bn = InstanceEncoder(4, 8, batch_norm=True)
    y = bn(x)  # training mode: batch statistics
    assert torch.allclose(y.mean(0), torch.zeros(8), atol=1e-5)
    assert bn(x[:1]).shape == (1, 8)  # one instance in training mode: running stats
    assert (bn(x) < 0).any()  # no ReLU in the WENO variant


def test_smooth_top1_svm_by_hand():
    logits = torch.tensor([[2.0, 0.5], [2.0, 0.5]])
    # tau = alpha = 1: L = log(sum_j exp([j != y] + s_j - s_y))
    l0 = math.log(1 + math.exp(1 + 0.5 - 2.0))  # y = 0
    l1 = math.log(math.exp(1 + 2.0 - 0.5) + 1)  # y = 1
    got = smooth_top1_svm_loss(logits, torch.tensor([0, 1]))
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # smooth upper bound of the hinge max_j([j != y] + s_j) - s_y
    assert l0 >= max(0.0, 1 + 0.5 - 2.0) and l1 >= 1 + 2.0 - 0.5
    empty = smooth_top1_svm_loss(torch.zeros(0, 2, requires_grad=True), torch.zeros(0).long())
    assert empty.item() == 0.0
    assert instance_loss(logits, torch.tensor([0, 1]), "svm").item() == pytest.approx(got.item())


def test_normalised_entropy():
    assert normalised_entropy(torch.full((4,), 0.25)).item() == pytest.approx(1.0)
    assert normalised_entropy(torch.tensor([0.0, 1.0, 0.0])).item() == pytest.approx(0.0)
    a = torch.tensor([0.5, 0.5, 0.0, 0.0], requires_grad=True)
    h = normalised_entropy(a)
    assert h.item() == pytest.approx(math.log(2) / math.log(4))
    h.backward()
    assert torch.isfinite(a.grad).all()
    assert normalised_entropy(torch.tensor([1.0])).item() == 0.0


# ---------------------------------------------------------------- CLAM


@pytest.mark.parametrize("n", [1, 3, 16])
def test_clam_top_bottom_selection_and_guards(n):
    attention = torch.softmax(torch.arange(n, dtype=torch.float32), 0)  # increasing
    top, bottom = top_bottom_indices(attention, b=8)
    k = {1: 0, 3: 1, 16: 8}[n]
    assert top.numel() == bottom.numel() == k
    assert top.tolist() == list(range(n - 1, n - 1 - k, -1))
    assert bottom.tolist() == list(range(k))
    assert not set(top.tolist()) & set(bottom.tolist())


# ---------------------------------------------------------------- MS-CLAM

A4 = torch.tensor([0.4, 0.3, 0.2, 0.1])


def _plogp(p: float) -> float:
    return p * math.log(p)


def test_msclam_attention_loss_normal_slide():
    h = -(_plogp(0.4) + _plogp(0.3) + _plogp(0.2) + _plogp(0.1)) / math.log(4)
    assert attention_loss(A4, 0).item() == pytest.approx(-h, rel=1e-6)
    # tile labels of a normal slide are ignored
    assert attention_loss(A4, 0, torch.tensor([1, 1, 1, 1])).item() == pytest.approx(-h, rel=1e-6)


def test_msclam_attention_loss_unlabelled_tumour_slide():
    assert attention_loss(A4, 1).item() == 0.0
    assert attention_loss(A4, 1, torch.full((4,), -1)).item() == 0.0


def test_msclam_attention_loss_tile_labelled_tumour_slide():
    labels = torch.tensor([1, 1, 0, -1])
    h_tumour = -(_plogp(0.4) + _plogp(0.3)) / math.log(2)  # not renormalised
    expected = 0.2 - h_tumour - (0.4 + 0.3)
    assert attention_loss(A4, 1, labels).item() == pytest.approx(expected, rel=1e-6)
    # one tumour tile: H = 0
    one = torch.tensor([1, 0, 0, -1])
    assert attention_loss(A4, 1, one).item() == pytest.approx(0.3 + 0.2 - 0.4, rel=1e-6)


def test_msclam_slide_kinds_and_instance_targets():
    att = torch.softmax(torch.arange(16, dtype=torch.float32), 0)
    assert slide_kind(0, torch.ones(16)) == "normal"
    assert slide_kind(1) == "tumour" and slide_kind(1, torch.full((3,), -1)) == "tumour"
    # normal: B/2 most attended -> 0
    idx, tgt = instance_targets(att, 0, b=8)
    assert idx.tolist() == [15, 14, 13, 12] and tgt.tolist() == [0] * 4
    # unlabelled tumour: top B -> 1, bottom B/2 -> 0
    idx, tgt = instance_targets(att, 1, b=8)
    assert idx.tolist() == list(range(15, 7, -1)) + [0, 1, 2, 3]
    assert tgt.tolist() == [1] * 8 + [0] * 4
    idx, tgt = instance_targets(att[:3] / att[:3].sum(), 1, b=8)
    assert idx.tolist() == [2] and tgt.tolist() == [1]
    idx, tgt = instance_targets(torch.ones(1), 1, b=8)
    assert idx.numel() == 0
    # tile-labelled tumour: true tumour -> 1 (up to B+), half as many true normal -> 0
    labels = torch.full((16,), -1)
    labels[[2, 5, 9, 11]] = 1
    labels[[0, 1, 3, 4, 6]] = 0
    g = torch.Generator().manual_seed(0)
    idx, tgt = instance_targets(att, 1, labels, b=8, b_plus=1024, generator=g)
    assert sorted(idx[tgt == 1].tolist()) == [2, 5, 9, 11]
    assert tgt.tolist().count(0) == 2 and set(idx[tgt == 0].tolist()) <= {0, 1, 3, 4, 6}
    idx, tgt = instance_targets(att, 1, labels, b=8, b_plus=2, generator=g)
    assert tgt.tolist() == [1, 1, 0] and set(idx[:2].tolist()) <= {2, 5, 9, 11}


def test_msclam_sampling_weights_decay():
    has = np.array([True, False, True])
    assert tumour_slide_weights(has, 0).tolist() == [90.0, 1.0, 90.0]
    assert tumour_slide_weights(has, 1).tolist() == pytest.approx([81.0, 1.0, 81.0])
    assert tumour_slide_weights(has, 10)[0] == pytest.approx(90 * 0.9**10)
    # 90 * 0.9**42 ~ 1.08, 0.9**43 ~ 0.97 -> floored at 1
    assert tumour_slide_weights(has, 42)[0] > 1.0
    assert tumour_slide_weights(has, 43).tolist() == [1.0, 1.0, 1.0]
    assert tumour_slide_weights(has, 200).tolist() == [1.0, 1.0, 1.0]


def test_msclam_paired_batches():
    labels = np.array([0, 1, 0, 1, 1, 0, 1])
    has = np.array([False, True, False, False, False, False, False])
    rng = np.random.default_rng(0)
    pairs = paired_batches(labels, tumour_slide_weights(has, 0), rng)
    assert pairs.shape == (4, 2)
    assert (labels[pairs[:, 0]] == 0).all() and (labels[pairs[:, 1]] == 1).all()
    assert set(pairs[:3, 0].tolist()) == {0, 2, 5}  # each normal slide once per permutation
    many = paired_batches(labels, tumour_slide_weights(has, 0), rng, steps=2000)
    share = (many[:, 1] == 1).mean()  # 90 / (90 + 3)
    assert share == pytest.approx(90 / 93, abs=0.03)
    late = paired_batches(labels, tumour_slide_weights(has, 60), rng, steps=2000)
    assert (late[:, 1] == 1).mean() == pytest.approx(0.25, abs=0.05)
    with pytest.raises(ValueError):
        paired_batches(np.array([1, 1]), np.ones(2), rng)


# ---------------------------------------------------------------- DTFD


def test_pseudo_bag_split():
    g = torch.Generator().manual_seed(3)
    groups = pseudo_bag_indices(10, 4, g)
    assert len(groups) == 4 and sorted(len(x) for x in groups) == [2, 2, 3, 3]
    assert sorted(torch.cat(groups).tolist()) == list(range(10))
    assert len(pseudo_bag_indices(2, 4)) == 2  # no empty pseudo-bag
    again = pseudo_bag_indices(10, 4, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(groups, again, strict=True))


# ---------------------------------------------------------------- WENO


def test_weno_soft_pseudo_labels_by_hand():
    logits = [torch.tensor([-1.0, 0.0, 3.0]), torch.tensor([1.0, 2.0])]
    lo, hi = attention_logit_range(logits)
    assert (lo, hi) == (-1.0, 3.0)
    y = soft_pseudo_labels(logits, [1, 0], lo, hi)
    assert torch.allclose(y[0], torch.tensor([1e-5, 0.25, 1 - 1e-5]))
    assert torch.equal(y[1], torch.zeros(2))
    # global range wider than this bag's own range
    y = soft_pseudo_labels([torch.tensor([0.0, 1.0])], torch.tensor([1]), -1.0, 3.0)
    assert torch.allclose(y[0], torch.tensor([0.25, 0.5]))


def test_weno_student_loss_by_hand():
    p = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    y = torch.tensor([0.0, 0.5])
    t0 = 0.1 * 1.0 * math.log(0.8)
    t1 = 0.1 * 0.5 * math.log(0.3) + 0.9 * 0.5 * math.log(0.7)
    assert student_loss(p, y, w_n=0.1).item() == pytest.approx(-(t0 + t1) / 2, rel=1e-6)


def test_weno_hard_positive_mining():
    assert hard_positive_mask(torch.tensor([0.2, 0.9, 0.5])).tolist() == [True, False, True]
    assert hard_positive_mask(torch.tensor([0.6, 0.9, 0.7])).tolist() == [False, True, False]
    assert hard_positive_mask(torch.tensor([0.6, 0.9]), threshold=0.95).tolist() == [True, True]
