"""The task registry: one place that says, per dense task, its channels, loss, metric,
label reader, how raw head outputs become predictions, and how those are drawn.

Everything else (data loaders, models, training, bundles, reports) looks tasks up here
by name and never branches on it, so adding a task means adding one ``register_task``
call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtlcompress.errors import MtlCompressError
from mtlcompress.tasks import behaviour, binary_metrics, colormaps, edge_matching, labels, losses, metrics

LABEL_SUFFIXES = (".png", ".npy")


@dataclass(frozen=True)
class TaskSpec:
    """What mtlcompress needs to know about one dense-prediction task.

    Attributes:
        name: registry key, also the label folder name in the generic layout.
        description: one line for ``--help`` and reports.
        categorical: labels are class ids (int64 [B,H,W]); otherwise float maps.
        channels: output channels, or None when it equals the dataset's class count.
        loss: ``loss(raw_output, target, **options) -> scalar``; a dataset's
            ``loss_options[name]`` (e.g. the references' edge ``pos_weight``) are the options.
        metric: ``metric(num_classes, **options) -> accumulator`` from ``tasks.metrics``;
            a dataset's ``metric_options[name]`` (e.g. an edge tolerance) are the options.
        loss_weight: the weight multi-task codebases give this loss when summing tasks.
        label_suffix: how the label file is stored in the scenes layout
            (``ROOT/<name>/<stem><suffix>``): ``.png`` read as its stored integers,
            ``.npy`` as a numpy array.
        read_label: ``read_label(raw_array, path) -> label`` ([H,W] or [H,W,C]); checks
            the values and raises ``DataError`` naming ``path``.
        decode: ``decode(raw_output) -> prediction`` (class ids, metres, unit vectors,
            probabilities): what metrics and users consume.
        colormap: ``colormap(prediction [C,H,W] or ids [H,W]) -> uint8 [H,W,3] or [H,W]``.
        hflip: ``hflip(maps [N,...,H,W])``: the labels of horizontally flipped images.
        distill: ``distill(student_raw, teacher_raw) -> scalar``: the loss that stands in
            for labels when a sub-task is sparsified by distillation.
        constant_output: ``constant_output(training targets, num_classes) -> raw [C]``: the
            best input-independent output, the baseline evaluation reports.
    """

    name: str
    description: str
    categorical: bool
    channels: int | None
    loss: Callable[..., torch.Tensor]
    metric: Callable[..., object]
    loss_weight: float
    label_suffix: str
    read_label: Callable[[np.ndarray, Path], np.ndarray]
    decode: Callable[[torch.Tensor], torch.Tensor]
    colormap: Callable[[np.ndarray], np.ndarray]
    hflip: Callable[[torch.Tensor], torch.Tensor] = behaviour.flip_width
    distill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = behaviour.distill_values
    constant_output: Callable[[Iterable[torch.Tensor], int | None], torch.Tensor] = behaviour.mean_value

    def out_channels(self, num_classes: int | None = None) -> int:
        if self.channels is not None:
            return self.channels
        if not num_classes:
            raise MtlCompressError(f"task '{self.name}' needs the dataset's number of classes")
        return num_classes

    def predict(self, raw: torch.Tensor) -> torch.Tensor:
        """Turn raw head outputs into the predictions metrics and users consume."""
        return self.decode(raw)


_REGISTRY: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"task '{spec.name}' is registered twice")
    if spec.label_suffix not in LABEL_SUFFIXES:
        raise ValueError(f"task '{spec.name}': label_suffix must be one of {', '.join(LABEL_SUFFIXES)}")
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


# -- the built-in tasks ------------------------------------------------------------------
def _class_ids(raw: torch.Tensor) -> torch.Tensor:
    return raw.argmax(dim=1)


def _non_negative(raw: torch.Tensor) -> torch.Tensor:
    return raw.clamp_min(0.0)


def _unit_vectors(raw: torch.Tensor) -> torch.Tensor:
    return F.normalize(raw, dim=1)


def _edge_metric(num_classes: int | None, max_dist: float | None = None) -> metrics.StreamingMetric:
    """BSDS-style matching when the dataset names a tolerance, else the cheap approximation."""
    if max_dist is None:
        return binary_metrics.EdgeFMeasure()
    return edge_matching.EdgeMatchedFMeasure(max_dist)


register_task(TaskSpec(
    name="semseg", description="semantic segmentation (class per pixel, mIoU)",
    categorical=True, channels=None, loss=losses.segmentation_loss,
    metric=lambda num_classes: metrics.MeanIoU(num_classes), loss_weight=1.0,
    label_suffix=".png", read_label=labels.class_ids, decode=_class_ids, colormap=colormaps.class_colours,
    distill=behaviour.distill_classes, constant_output=behaviour.majority_class,
))
register_task(TaskSpec(
    name="parts", description="human parts segmentation (mIoU)",
    categorical=True, channels=None, loss=losses.segmentation_loss,
    metric=lambda num_classes: metrics.MeanIoU(num_classes), loss_weight=2.0,
    label_suffix=".png", read_label=labels.class_ids, decode=_class_ids, colormap=colormaps.class_colours,
    distill=behaviour.distill_classes, constant_output=behaviour.majority_class,
))
register_task(TaskSpec(
    name="depth", description="metric depth in metres (RMSE)",
    categorical=False, channels=1, loss=losses.depth_loss,
    metric=lambda _: metrics.DepthErrors(), loss_weight=1.0,
    label_suffix=".npy", read_label=labels.depth_metres, decode=_non_negative, colormap=colormaps.viridis_own_range,
    distill=behaviour.distill_values, constant_output=behaviour.mean_positive_value,
))
register_task(TaskSpec(
    name="normals", description="surface normals, unit vectors (mean angular error)",
    categorical=False, channels=3, loss=losses.normals_loss,
    metric=lambda _: metrics.NormalsAngularError(), loss_weight=10.0,
    label_suffix=".npy", read_label=labels.normal_vectors, decode=_unit_vectors, colormap=colormaps.normals_rgb,
    hflip=behaviour.flip_vectors, distill=behaviour.distill_directions,
    constant_output=behaviour.mean_direction,
))
register_task(TaskSpec(
    name="edges", description="object boundaries (odsF)",
    categorical=False, channels=1, loss=losses.edge_loss,
    metric=_edge_metric, loss_weight=50.0,
    label_suffix=".png", read_label=labels.binary_mask, decode=torch.sigmoid, colormap=colormaps.grey,
    distill=behaviour.distill_probabilities, constant_output=behaviour.positive_rate_logit,
))
register_task(TaskSpec(
    name="saliency", description="salient foreground objects (maxF)",
    categorical=False, channels=1, loss=losses.saliency_loss,
    metric=lambda _: binary_metrics.SaliencyMaxF(), loss_weight=5.0,
    label_suffix=".png", read_label=labels.binary_mask, decode=torch.sigmoid, colormap=colormaps.grey,
    distill=behaviour.distill_probabilities, constant_output=behaviour.positive_rate_logit,
))
