"""Knowledge distillation from a finished teacher run (`train.distill`; RIDE's RIDELossWithDistill, Wang et al., ICLR
2021: a 6-expert RIDE model teaches a 3- or 4-expert one).

The training forward gains the teacher's prediction beside the student's logits (`Taught`), and the loss adds
T^2 KL(softmax(t / T) || softmax(z / T)) of the two predictions (the experts' mean logits), a batch mean, with the
teacher held fixed (`DistillLoss`). RIDE's loop over the student's experts adds the whole loss once per expert:
`repeat: experts` keeps that factor K.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import DistillConfig
from bench.methods.losses import LossFn
from bench.models.parts import prediction


class Taught(nn.Module):
    """x -> (h, {"logits": the student's logits, "teacher": the teacher's prediction}) around the student's training
    forward. The teacher is frozen, runs without gradients and stays in the BatchNorm mode it was given (RIDE's
    teacher is never set to eval, so its BatchNorm normalises with the batch's statistics)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, teacher_bn: str) -> None:
        super().__init__()
        self.student, self.teacher, self.teacher_bn = student, teacher, teacher_bn
        teacher.requires_grad_(False)
        teacher.train(teacher_bn == "train")

    def train(self, mode: bool = True) -> Taught:
        self.student.train(mode)
        self.teacher.train(self.teacher_bn == "train")     # whatever the student does
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h, z = self.student(x)
        with torch.no_grad():
            t = prediction(self.teacher(x))
        return h, {"logits": z, "teacher": t}


class DistillLoss(LossFn):
    """r (inner(z, y) + weight T^2 KL(softmax(t / T) || softmax(z_bar / T))), z the student's logits ((B, K, C) for
    experts), z_bar its prediction, t the teacher's; the KL a batch mean (F.kl_div's batchmean, as RIDE). r = K with
    repeat=experts (RIDE adds its loss once per student expert), else 1. The distillation term is label-free, so it
    goes with the inner loss's own batch means in `extra` (under DDP they take the sample share)."""

    def __init__(self, inner: LossFn, cfg: DistillConfig, experts: int) -> None:
        super().__init__()
        self.inner, self.temperature, self.weight = inner, cfg.temperature, cfg.weight
        self.repeat = float(experts) if cfg.repeat == "experts" else 1.0
        self.multi_expert = inner.multi_expert

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def normalizer(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.normalizer(y)

    def forward(self, logits: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return self.repeat * self.inner(logits["logits"], y)

    def distillation(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        """T^2 KL(softmax(t / T) || softmax(z_bar / T)), a batch mean."""
        T = self.temperature
        student = F.log_softmax(prediction(logits["logits"]).float() / T, dim=1)
        teacher = F.softmax(logits["teacher"].float() / T, dim=1)
        return T * T * F.kl_div(student, teacher, reduction="batchmean")

    def extra(self, logits: dict[str, torch.Tensor]) -> torch.Tensor | float:   # type: ignore[override]
        return self.repeat * (self.inner.extra(logits["logits"]) + self.weight * self.distillation(logits))
