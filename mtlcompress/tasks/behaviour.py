"""Per-kind task behaviour that is not a loss or a metric: how a label flips with its
image, how a student matches a teacher without labels, and the best constant output.

The registry names one function of each kind per task, so training, sparsify and
evaluation never branch on a task's name.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from mtlcompress.tasks.losses import normals_loss

IGNORED_CLASS = 255


# -- horizontal flips: a batch of flipped samples' maps [N, ..., H, W] ----------------------
def flip_width(maps: torch.Tensor) -> torch.Tensor:
    """Maps of the scene (class ids, depth, masks) flip with the image as they are."""
    return maps.flip(-1)


def flip_vectors(maps: torch.Tensor) -> torch.Tensor:
    """Direction maps [N, 3, H, W] also turn: a mirrored surface faces the other way in x."""
    flipped = maps.flip(-1)
    flipped[:, 0] = -flipped[:, 0]
    return flipped


# -- label-free distillation: loss(student_raw, teacher_raw) --------------------------------
def distill_classes(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL to the teacher's class distribution, per pixel."""
    return F.kl_div(F.log_softmax(student, dim=1), F.log_softmax(teacher, dim=1), log_target=True,
                    reduction="batchmean") / (student.shape[-1] * student.shape[-2])


def distill_directions(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return normals_loss(student, F.normalize(teacher, dim=1))


def distill_values(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L1 to the teacher's raw output: the default for regression maps."""
    return F.l1_loss(student, teacher)


def distill_probabilities(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Binary maps: cross-entropy to the teacher's probabilities."""
    return F.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))


# -- the best input-independent raw output, from the training labels ----------------------
def majority_class(targets: Iterable[torch.Tensor], num_classes: int | None) -> torch.Tensor:
    hist = None
    for target in targets:
        counts = torch.bincount(target[target != IGNORED_CLASS].flatten(), minlength=num_classes).double()
        hist = counts if hist is None else hist + counts
    raw = torch.full((num_classes,), -10.0)
    raw[int(hist.argmax())] = 10.0
    return raw


def mean_direction(targets: Iterable[torch.Tensor], num_classes: int | None) -> torch.Tensor:
    total = sum(target.double().sum(dim=(0, 2, 3)) for target in targets)
    return (total / total.norm().clamp_min(1e-12)).float()


def _mean(targets: Iterable[torch.Tensor], positive_only: bool) -> torch.Tensor:
    total, count = torch.zeros((), dtype=torch.float64), torch.zeros(())
    for target in targets:
        valid = target > 0 if positive_only else torch.ones_like(target, dtype=torch.bool)
        total = total + target[valid].double().sum()
        count = count + valid.sum()
    return total / count


def mean_value(targets: Iterable[torch.Tensor], num_classes: int | None) -> torch.Tensor:
    """Regression maps: the mean label, the default for a new task."""
    return _mean(targets, positive_only=False).float().reshape(1)


def mean_positive_value(targets: Iterable[torch.Tensor], num_classes: int | None) -> torch.Tensor:
    """Depth: the mean over valid (positive) pixels; 0 marks a missing measurement."""
    return _mean(targets, positive_only=True).float().reshape(1)


def positive_rate_logit(targets: Iterable[torch.Tensor], num_classes: int | None) -> torch.Tensor:
    """Binary maps: the positive rate, as the logit the head would output."""
    rate = _mean(targets, positive_only=False).clamp(1e-4, 1 - 1e-4)
    return torch.logit(rate).float().reshape(1)
