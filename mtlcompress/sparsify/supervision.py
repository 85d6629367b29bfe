"""What a sparsify stage learns from: the task labels, or label-free distillation
from the sub-task's original checkpoint (the teacher), for data without labels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

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
    return spec.distill(student, teacher)


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
