"""Evaluate task models (and the trivial baselines they must beat) on a dataset.

Scoring follows the dataset's protocol: its ``metric_options`` choose the metric's
settings (PASCAL-Context's and NYUD-v2's edge tolerance), and when its samples carry
``"native"`` labels (``open_dataset(..., native_labels=True)``) each raw output is
resized bilinearly to its label's own height and width before decoding, as ATRC and
InvPT score at the label's resolution. ``evaluation_protocol`` names what was done.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mtlcompress.data.base import collate_samples
from mtlcompress.progress import progress_bar
from mtlcompress.tasks.metrics import StreamingMetric
from mtlcompress.tasks.registry import TaskSpec
from mtlcompress.training.precision import autocast


def task_metric(spec: TaskSpec, dataset: Dataset, num_classes: int | None) -> StreamingMetric:
    """The metric of ``spec`` with the options ``dataset`` asks for (none for unknown datasets)."""
    options = getattr(dataset, "metric_options", {}).get(spec.name, {})
    return spec.metric(num_classes, **options)


def evaluation_protocol(spec: TaskSpec, dataset: Dataset, num_classes: int | None) -> str:
    """One line saying how ``evaluate_predictor`` scores ``spec`` on ``dataset``."""
    resolution = ("at each label's native resolution (raw outputs resized bilinearly)"
                  if getattr(dataset, "keep_native_labels", False) else "at the model's input size")
    return f"{task_metric(spec, dataset, num_classes).protocol}; scored {resolution}"


def resize_raw(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Raw outputs ``[N, C, h, w]`` or ``[C, h, w]`` (logits, metres, vectors) bilinearly
    to ``size`` (height, width), decoded afterwards; as is when already that size."""
    if tuple(raw.shape[-2:]) == tuple(size):
        return raw
    maps = raw.detach().float()
    resized = F.interpolate(maps if maps.dim() == 4 else maps[None], size=tuple(size), mode="bilinear",
                            align_corners=False)
    return resized if maps.dim() == 4 else resized[0]


@torch.no_grad()
def evaluate_predictor(
    predict_raw: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    spec: TaskSpec,
    num_classes: int | None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
    precision: str = "fp32",
    workers: int = 0,
) -> dict[str, float]:
    """Run ``predict_raw(images) -> raw maps`` over ``dataset`` and compute the task metric.

    With native labels in the samples, every image is scored against its native label
    (see the module docstring); otherwise against the batch's resized labels.
    ``show_progress`` counts images on stderr (off by default: the training loops
    evaluate between steps, under their own bar). ``precision`` autocasts the forward
    pass; the metric is computed in fp32 on the CPU either way.
    """
    device = torch.device(device)
    metric = task_metric(spec, dataset, num_classes)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", collate_fn=collate_samples)
    with progress_bar(f"evaluating {spec.name}", len(dataset), enabled=show_progress) as advance:
        for batch in loader:
            with autocast(device, precision):
                raw = predict_raw(batch["image"].to(device, non_blocking=True))
            raw = raw.float()
            if "native" in batch:
                for index, labels in enumerate(batch["native"]):
                    target = labels[spec.name].unsqueeze(0)
                    prediction = spec.predict(resize_raw(raw[index:index + 1], target.shape[-2:]))
                    metric.update(prediction.cpu(), target)
            else:
                metric.update(spec.predict(raw).cpu(), batch[spec.name])
            advance(len(raw))
    return {k: float(v) for k, v in metric.compute().items()}


def evaluate_model(model: torch.nn.Module, dataset: Dataset, spec: TaskSpec, num_classes: int | None,
                   batch_size: int = 32, device: str | torch.device | None = None,
                   show_progress: bool = False, precision: str = "fp32", workers: int = 0) -> dict[str, float]:
    """``evaluate_predictor`` for a model, on ``device`` (default: where the model is)."""
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    model.to(device)
    return evaluate_predictor(model, dataset, spec, num_classes, batch_size, device, show_progress, precision,
                              workers)


@torch.no_grad()
def constant_baseline(spec: TaskSpec, train: Dataset, num_classes: int | None) -> torch.Tensor:
    """The best input-independent raw output, as the task's registry entry computes it
    (majority class, mean depth, mean normal, positive rate as a logit, ...)."""
    targets = (batch[spec.name] for batch in DataLoader(train, batch_size=64, collate_fn=collate_samples))
    return spec.constant_output(targets, num_classes)


def evaluate_constant_baseline(spec: TaskSpec, train: Dataset, val: Dataset, num_classes: int | None,
                               batch_size: int = 32) -> dict[str, float]:
    constant = constant_baseline(spec, train, num_classes)

    def predict(images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return constant.view(1, -1, 1, 1).expand(b, -1, h, w)

    return evaluate_predictor(predict, val, spec, num_classes, batch_size)
