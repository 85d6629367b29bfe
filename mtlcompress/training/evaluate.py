"""Evaluate task models (and the trivial baselines they must beat) on a dataset."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from mtlcompress.progress import progress_bar
from mtlcompress.tasks.registry import TaskSpec
from mtlcompress.training.precision import autocast


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

    ``show_progress`` counts images on stderr (off by default: the training loops
    evaluate between steps, under their own bar). ``precision`` autocasts the forward
    pass; the metric is computed in fp32 on the CPU either way.
    """
    device = torch.device(device)
    metric = spec.metric(num_classes)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    with progress_bar(f"evaluating {spec.name}", len(dataset), enabled=show_progress) as advance:
        for batch in loader:
            with autocast(device, precision):
                raw = predict_raw(batch["image"].to(device, non_blocking=True))
            metric.update(spec.predict(raw.float()).cpu(), batch[spec.name])
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
    targets = (batch[spec.name] for batch in DataLoader(train, batch_size=64))
    return spec.constant_output(targets, num_classes)


def evaluate_constant_baseline(spec: TaskSpec, train: Dataset, val: Dataset, num_classes: int | None,
                               batch_size: int = 32) -> dict[str, float]:
    constant = constant_baseline(spec, train, num_classes)

    def predict(images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return constant.view(1, -1, 1, 1).expand(b, -1, h, w)

    return evaluate_predictor(predict, val, spec, num_classes, batch_size)
