"""What a sparsify stage learns from: the task labels, or label-free distillation
from the sub-task's original checkpoint (the teacher), for data without labels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from mtlcompress.errors import MtlCompressError
from mtlcompress.tasks.registry import TaskSpec

SUPERVISION = ("auto", "labels", "distill")


def resolve_supervision(requested: str, task: str, available_tasks: tuple[str, ...]) -> str:
    """``auto`` means labels when the data has them for this task, distillation otherwise."""
    if requested not in SUPERVISION:
        raise MtlCompressError(f"supervision must be one of {', '.join(SUPERVISION)}, got '{requested}'")
    if requested == "auto":
        return "labels" if task in available_tasks else "distill"
    if requested == "labels" and task not in available_tasks:
        raise MtlCompressError(f"the data has no '{task}' labels; use --supervision distill")
    return requested


def distillation_loss(spec: TaskSpec, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Match the teacher's raw outputs in the way that suits the task's output."""
    if spec.categorical:
        return F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1), log_target=True,
                        reduction="batchmean") / (student.shape[-1] * student.shape[-2])
    if spec.name == "normals":
        return spec.loss(student, F.normalize(teacher, dim=1))
    if spec.name == "depth":
        return F.l1_loss(student, teacher)
    return F.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))


def make_objective(spec: TaskSpec, supervision: str, teacher: torch.nn.Module | None
                   ) -> Callable[[dict[str, Any], torch.Tensor], torch.Tensor]:
    """``objective(batch, student_raw) -> loss`` for the chosen supervision."""
    if supervision == "labels":
        return lambda batch, raw: spec.loss(raw, batch[spec.name])
    if teacher is None:
        raise MtlCompressError("distillation needs the sub-task's original checkpoint as teacher")
    teacher.eval()

    def objective(batch: dict[str, Any], raw: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(batch["image"])
        return distillation_loss(spec, raw, target)

    return objective
