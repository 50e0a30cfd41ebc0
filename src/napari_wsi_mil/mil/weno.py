"""WENO (Qu et al. 2022, "Bi-directional weakly supervised knowledge distillation for
whole slide image classification"), as ALGORITHMS.md restates the reference.

Teacher: gated AB-MIL bag classifier (:class:`~napari_wsi_mil.mil.abmil.ABMIL`).
Student: instance classifier ``Linear(E, 2)``. Both share the instance encoder
``Linear(D, E) + BatchNorm1d`` (the reference's encoder on features).

Training alternates, each epoch (:meth:`WENO.train_epoch`, built from the pure functions
here):

1. teacher epoch over bags: :meth:`WENO.loss`, the bag CE (optionally on the
   instances kept by hard positive mining), with the encoder's BatchNorm on its
   running statistics (a deviation from the reference, which normalises each bag by
   its own statistics in training; see :meth:`WENO._attend_with_running_statistics`);
2. student epoch over shuffled instances (batch 512): soft pseudo-labels
   :func:`soft_pseudo_labels` from the teacher's attention logits, min-max
   normalised with the global min/max over all training instances
   (:func:`attention_logit_range`), and :func:`student_loss` (:meth:`WENO.student_step`);
3. from epoch ``E_hpm`` on, hard positive mining on positive bags only:
   :func:`hard_positive_mask` drops instances the student scores above 0.5 before
   the teacher sees the bag.

Inference: the student's ``p1`` per instance, bag score ``max_k p1``; the
teacher's bag probability is reported too (``MilOutput.teacher_probability``).

Shapes: ``N`` instances, ``D`` feature size, ``E`` embedding size.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    check_bag,
)
from napari_wsi_mil.mil.blocks import InstanceEncoder

#: Clamp of the soft pseudo-labels of positive bags' instances.
PSEUDO_LABEL_CLAMP = (1e-5, 1.0 - 1e-5)


def attention_logit_range(attention_logits_per_bag: Sequence[torch.Tensor]) -> tuple[float, float]:
    """Global min and max of the teacher's attention logits over all instances.

    Parameters
    ----------
    attention_logits_per_bag : sequence of torch.Tensor
        One ``[N_i]`` tensor per training bag (all bags, both classes).

    Returns
    -------
    (float, float)
        ``(global_min, global_max)``.
    """
    flat = torch.cat([torch.as_tensor(x).detach().reshape(-1) for x in attention_logits_per_bag])
    return float(flat.min()), float(flat.max())


def soft_pseudo_labels(
    attention_logits_per_bag: Sequence[torch.Tensor],
    bag_labels: Sequence[int] | torch.Tensor,
    global_min: float,
    global_max: float,
) -> list[torch.Tensor]:
    """WENO's soft instance pseudo-labels from the teacher's attention logits.

    Positive bag: ``y_k = clamp((s_k - global_min) / (global_max - global_min),
    1e-5, 1 - 1e-5)``; negative bag: ``y_k = 0`` for every instance.

    Parameters
    ----------
    attention_logits_per_bag : sequence of torch.Tensor
        One ``[N_i]`` tensor of raw attention logits per bag.
    bag_labels : sequence of int or torch.Tensor
        One 0/1 label per bag.
    global_min, global_max : float
        Range over all training instances (:func:`attention_logit_range`); a
        zero range is treated as 1e-12 (every positive instance then clamps).

    Returns
    -------
    list of torch.Tensor
        One ``[N_i]`` float tensor per bag (no gradient).
    """
    labels = [int(y) for y in torch.as_tensor(bag_labels).reshape(-1).tolist()]
    if len(labels) != len(attention_logits_per_bag):
        raise ValueError(
            f"{len(attention_logits_per_bag)} bags of logits but {len(labels)} bag labels"
        )
    span = max(global_max - global_min, 1e-12)
    lo, hi = PSEUDO_LABEL_CLAMP
    out = []
    for logits, label in zip(attention_logits_per_bag, labels, strict=True):
        s = torch.as_tensor(logits).detach().float()
        if label == 1:
            out.append(((s - global_min) / span).clamp(lo, hi))
        else:
            out.append(torch.zeros_like(s))
    return out


def student_loss(p: torch.Tensor, y_soft: torch.Tensor, w_n: float = 0.1) -> torch.Tensor:
    """WENO's weighted soft cross-entropy of the student.

    ``-mean_k[ w_n (1 - y_k) log p_k0 + (1 - w_n) y_k log p_k1 ]``; ``log`` sees
    ``max(p, 1e-12)``.

    Parameters
    ----------
    p : torch.Tensor
        ``[N, 2]`` student probabilities (softmax over the two classes).
    y_soft : torch.Tensor
        ``[N]`` soft labels in ``[0, 1]``.
    w_n : float
        Weight of the negative term (0.1).

    Returns
    -------
    torch.Tensor
        0-d.
    """
    logp = torch.log(p.clamp_min(1e-12))
    y = y_soft.to(p.dtype)
    return -(w_n * (1.0 - y) * logp[:, 0] + (1.0 - w_n) * y * logp[:, 1]).mean()


def hard_positive_mask(student_p1: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Hard positive mining: which instances of a positive bag the teacher keeps.

    Instances the student scores ``p1 > threshold`` are dropped; if that would drop
    all of them, the top-scoring instance is kept. Apply to positive bags only.

    Parameters
    ----------
    student_p1 : torch.Tensor
        ``[N]`` student ``P(positive)``.
    threshold : float
        0.5.

    Returns
    -------
    torch.Tensor
        ``[N]`` bool, True = kept; at least one True.
    """
    keep = student_p1 <= threshold
    if not bool(keep.any()):
        keep = torch.zeros_like(keep)
        keep[torch.argmax(student_p1)] = True
    return keep


class WENO(MilModel):
    """WENO teacher (gated AB-MIL) and student (instance classifier) on one encoder.

    Output: ``instance_probability`` = student ``p1`` (``[N]``); bag ``probability``
    = ``max_k p1`` and ``logit`` = the student's logits of that instance (so
    ``softmax(logit)[1] == probability``); ``attention`` = the teacher's softmax
    attention; ``teacher_probability`` = the teacher's bag ``P(positive)``.

    Parameters
    ----------
    in_dim : int
        Feature size ``D``.
    embed_dim : int
        Encoder size ``E`` (512).
    attention_dim : int
        Teacher's gated attention size (128).
    dropout : float
        Dropout in the teacher's attention branches (0).
    """

    bag_is_max_instance = True
    binary_only = True

    def __init__(
        self,
        in_dim: int,
        embed_dim: int = 512,
        attention_dim: int = 128,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_dim = in_dim
        encoder = InstanceEncoder(in_dim, embed_dim, batch_norm=True)
        self.teacher = ABMIL(in_dim, embed_dim, attention_dim, dropout, encoder=encoder)
        self.student = nn.Linear(embed_dim, 2)

    @property
    def encoder(self) -> nn.Module:
        """The shared instance encoder."""
        return self.teacher.encoder

    @torch.no_grad()
    def calibrate_norm(self, features: torch.Tensor) -> None:
        """Set the encoder's BatchNorm running statistics to those of ``features``
        (all training instances, ``[N, D]``), so the first teacher epoch normalises
        like the rest."""
        norm = self.encoder.norm
        y = self.encoder.linear(features)
        norm.running_mean.copy_(y.mean(0))
        norm.running_var.copy_(y.var(0))

    def _attend_with_running_statistics(self, features: torch.Tensor):
        """The teacher's forward pass with the encoder's BatchNorm on its running
        statistics, in training as in inference.

        A bag is not an i.i.d. batch: normalising each bag by its own statistics (the
        reference's train mode) lets the teacher learn on per-bag-centred features and
        then see globally normalised ones at inference. On the mosaic cohorts that
        mismatch took the eval-mode teacher's test bag AUC to 0.19-0.41 against 1.0
        in train mode. The running statistics come from the student's shuffled
        instance batches (:meth:`student_step`), which are i.i.d. samples.
        """
        norm = self.encoder.norm
        was_training = norm.training
        norm.eval()
        try:
            return self.teacher.attend(features)
        finally:
            norm.train(was_training)

    def attention_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Teacher's raw attention logits ``[N]`` (input of :func:`soft_pseudo_labels`)."""
        return self.teacher.attend(features).attention_logits

    def student_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Student ``softmax`` over (negative, positive) per instance: ``[N, D] -> [N, 2]``.

        ``features`` may be any batch of instances (e.g. shuffled across bags).
        """
        check_bag(features, self.in_dim)
        return torch.softmax(self.student(self.encoder(features)), dim=1)

    def forward(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> MilOutput:
        """``features [N, D] -> MilOutput`` with ``teacher_probability`` set."""
        bag = self.teacher.attend(features)
        inst_logits = self.student(bag.h)
        p1 = torch.softmax(inst_logits, dim=1)[:, 1]
        top = torch.argmax(p1)
        return MilOutput(
            logit=inst_logits[top],
            probability=p1[top],
            attention=bag.attention,
            instance_probability=p1,
            teacher_probability=torch.softmax(bag.logit, dim=0)[1],
        )

    def loss(
        self,
        features: torch.Tensor,
        bag_label: int | torch.Tensor,
        keep: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **extra: object,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Teacher step: bag CE on the (optionally mined) bag.

        Parameters
        ----------
        features : torch.Tensor
            ``[N, D]``.
        bag_label : int or torch.Tensor
            0 or 1.
        keep : torch.Tensor, optional
            ``[N]`` bool from :func:`hard_positive_mask` (positive bags, from epoch
            ``E_hpm`` on); all instances when ``None``.
        generator : torch.Generator, optional
            Unused (the teacher step draws nothing).

        Returns
        -------
        loss : torch.Tensor
            0-d.
        parts : dict of str to float
            ``{"teacher": CE}``.
        """
        if extra:
            raise TypeError(f"unexpected arguments {sorted(extra)}")
        if keep is not None:
            features = features[keep]
        bag = self._attend_with_running_statistics(features)
        ce = bag_cross_entropy(bag.logit, bag_label_tensor(bag_label, features.device))
        return ce, {"teacher": float(ce.detach())}

    def train_epoch(self, epoch: TrainingEpoch) -> dict[str, float]:
        """A teacher epoch over the bags, then a student epoch over shuffled instances
        (see the module doc); returns ``loss`` (their sum), ``teacher`` and ``student``.

        Before the first epoch the encoder's BatchNorm statistics are set from all
        training instances (:meth:`calibrate_norm`).
        """
        bags, hp = epoch.bags, epoch.hp
        teacher = 0.0
        if epoch.index == 0:
            self.calibrate_norm(torch.from_numpy(np.concatenate([b.features for b in bags])))
        order = epoch.order()
        for i in order:
            x, keep = bag_tensor(bags[i]), None
            if epoch.index >= hp["hpm_start_epoch"] and bags[i].label == 1:
                with torch.no_grad():
                    self.eval()
                    keep = hard_positive_mask(
                        self.student_probabilities(x)[:, 1], hp["hpm_threshold"]
                    )
                    self.train()
            loss, _ = self.loss(x, bags[i].label, keep=keep)
            epoch.step(loss)
            teacher += float(loss.detach()) / len(order)
        self.eval()
        with torch.no_grad():
            logits = [self.attention_logits(bag_tensor(b)) for b in bags]
        self.train()
        lo, hi = attention_logit_range(logits)
        targets = torch.cat(soft_pseudo_labels(logits, [b.label for b in bags], lo, hi))
        features = torch.from_numpy(np.concatenate([b.features for b in bags]))
        perm = torch.from_numpy(epoch.rng.permutation(len(features)))
        student, batch = 0.0, hp["student_batch_size"]
        steps = range(0, len(perm), batch)
        for start in steps:
            rows = perm[start : start + batch]
            if len(rows) < 2:  # BatchNorm needs two instances
                continue
            loss, _ = self.student_step(
                features[rows], targets[rows], hp["student_negative_weight"]
            )
            epoch.step(loss)
            student += float(loss.detach()) / len(steps)
        return {"loss": teacher + student, "teacher": teacher, "student": student}

    def student_step(
        self, features: torch.Tensor, y_soft: torch.Tensor, w_n: float = 0.1
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Student step on a batch of instances: :func:`student_loss`.

        Parameters
        ----------
        features : torch.Tensor
            ``[B, D]`` instances (e.g. 512 shuffled across bags).
        y_soft : torch.Tensor
            ``[B]`` soft pseudo-labels from :func:`soft_pseudo_labels`.
        w_n : float
            Negative-term weight (0.1).

        Returns
        -------
        loss : torch.Tensor
            0-d.
        parts : dict of str to float
            ``{"student": loss}``.
        """
        loss = student_loss(self.student_probabilities(features), y_soft.to(features.device), w_n)
        return loss, {"student": float(loss.detach())}
