"""The task registry: one place that says, per dense task, its channels, loss, metric
and how raw head outputs become predictions.

Everything else (models, training, bundles, reports) looks tasks up here by name, so
adding a task means adding one ``register_task`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mtlcompress.errors import MtlCompressError
from mtlcompress.tasks import losses, metrics


@dataclass(frozen=True)
class TaskSpec:
    """What mtlcompress needs to know about one dense-prediction task.

    Attributes:
        name: registry key, also the label folder name in the generic layout.
        description: one line for ``--help`` and reports.
        categorical: labels are class ids (int64 [B,H,W]); otherwise float maps.
        channels: output channels, or None when it equals the dataset's class count.
        loss: ``loss(raw_output, target) -> scalar``.
        metric: ``metric(num_classes) -> accumulator`` from ``tasks.metrics``.
        loss_weight: the weight multi-task codebases give this loss when summing tasks.
    """

    name: str
    description: str
    categorical: bool
    channels: int | None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric: Callable[[int], object]
    loss_weight: float

    def out_channels(self, num_classes: int | None = None) -> int:
        if self.channels is not None:
            return self.channels
        if not num_classes:
            raise MtlCompressError(f"task '{self.name}' needs the dataset's number of classes")
        return num_classes

    def predict(self, raw: torch.Tensor) -> torch.Tensor:
        """Turn raw head outputs into the predictions metrics and users consume."""
        if self.categorical:
            return raw.argmax(dim=1)
        if self.name == "depth":
            return raw.clamp_min(0.0)
        if self.name == "normals":
            return F.normalize(raw, dim=1)
        return torch.sigmoid(raw)


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"task '{spec.name}' is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MtlCompressError(
            f"unknown task '{name}'; known tasks: {', '.join(task_names())}"
        ) from None


def task_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


register_task(TaskSpec(
    name="semseg", description="semantic segmentation (class per pixel, mIoU)",
    categorical=True, channels=None, loss=losses.segmentation_loss,
    metric=lambda num_classes: metrics.MeanIoU(num_classes), loss_weight=1.0,
))
register_task(TaskSpec(
    name="parts", description="human parts segmentation (mIoU)",
    categorical=True, channels=None, loss=losses.segmentation_loss,
    metric=lambda num_classes: metrics.MeanIoU(num_classes), loss_weight=2.0,
))
register_task(TaskSpec(
    name="depth", description="metric depth in metres (RMSE)",
    categorical=False, channels=1, loss=losses.depth_loss,
    metric=lambda _: metrics.DepthErrors(), loss_weight=1.0,
))
register_task(TaskSpec(
    name="normals", description="surface normals, unit vectors (mean angular error)",
    categorical=False, channels=3, loss=losses.normals_loss,
    metric=lambda _: metrics.NormalsAngularError(), loss_weight=10.0,
))
register_task(TaskSpec(
    name="edges", description="object boundaries (odsF with 1-px tolerance)",
    categorical=False, channels=1, loss=losses.edge_loss,
    metric=lambda _: metrics.EdgeFMeasure(), loss_weight=50.0,
))
register_task(TaskSpec(
    name="saliency", description="salient foreground objects (maxF)",
    categorical=False, channels=1, loss=losses.saliency_loss,
    metric=lambda _: metrics.SaliencyMaxF(), loss_weight=5.0,
))
