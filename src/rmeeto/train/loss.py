"""The re-training objective: ``CE(student, targets) + alpha * KL(p_teacher || p_student)`` (batch mean, T = 1).

The classification term is soft-target cross-entropy under mixup/cutmix, label-smoothing cross-entropy
otherwise. :func:`distillation_forward` is the forward half of one step, shared by the loop and the
training-step benchmark (``rmeeto bench``) so the benchmark times what the loop runs.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from rmeeto.train.config import TrainConfig
from rmeeto.train.graphs import TeacherForward

__all__ = ["DistillationLoss", "build_criterion", "distillation_forward"]


class DistillationLoss(nn.Module):
    """``base(student, targets) + alpha * KL(p_teacher || p_student)`` with T = 1 and batch-mean reduction.

    student_logits, teacher_logits: [batch, classes] (scored in float32); targets: [batch] class indices or
    [batch, classes] soft targets (mixup). ``teacher_logits=None`` (or alpha = 0) leaves only the base loss.
    Returns (total, {"cls": base term, "kd": KL term}) with the parts detached.
    """

    def __init__(self, base: nn.Module, alpha: float = 0.5):
        super().__init__()
        self.base = base
        self.alpha = float(alpha)

    @staticmethod
    def kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.kl_div(
            F.log_softmax(student_logits.float(), dim=-1),
            F.log_softmax(teacher_logits.float(), dim=-1),
            reduction="batchmean",
            log_target=True,
        )

    def forward(self, student_logits, targets, teacher_logits=None):
        cls_loss = self.base(student_logits.float(), targets)
        if teacher_logits is None or self.alpha == 0:
            return cls_loss, {"cls": cls_loss.detach(), "kd": torch.zeros_like(cls_loss).detach()}
        kd = self.kl(student_logits, teacher_logits)
        return cls_loss + self.alpha * kd, {"cls": cls_loss.detach(), "kd": kd.detach()}


def build_criterion(config: TrainConfig) -> DistillationLoss:
    """The loss ``config`` asks for: soft-target CE under mixup/cutmix (which folds the label smoothing into the
    targets), label-smoothing CE when ``smoothing > 0``, plain CE otherwise; KL weight ``config.alpha``."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy  # timm is imported only to train

    if config.mixup_active:
        base: nn.Module = SoftTargetCrossEntropy()
    elif config.smoothing > 0:
        base = LabelSmoothingCrossEntropy(smoothing=config.smoothing)
    else:
        base = nn.CrossEntropyLoss()
    return DistillationLoss(base, config.alpha)


def distillation_forward(student: nn.Module, teacher: Optional[TeacherForward], criterion: DistillationLoss,
                         images: torch.Tensor, targets: torch.Tensor, amp_dtype: torch.dtype):
    """The forward half of one re-training step: the teacher's logits (:class:`TeacherForward`), the student's
    under autocast (off for float32), and the distillation loss -> (loss, parts). The training loop and the
    training-step benchmark both call this, so the benchmark times what the loop runs.

    images: [batch, 3, H, W]; targets: [batch] class indices or [batch, classes] soft targets.
    """
    teacher_logits = teacher(images) if teacher is not None else None
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
        logits = student(images)
        return criterion(logits, targets, teacher_logits)
