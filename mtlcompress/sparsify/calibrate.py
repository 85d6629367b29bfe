"""Per-layer activation thresholds, calibrated on held-in images.

One knob drives all layers: the fraction ``keep`` of activation deltas that survive.
For each tapped layer the threshold is the ``1 - keep`` quantile of that layer's delta
magnitudes (token RMS for token granularity, ``|dx|`` for element), measured without
thresholds. A bisection on ``keep`` then finds the sparsest setting whose task metric
stays within a relative tolerance of the unthresholded model, or whose measured
density hits a requested target.

Everything runs in fp32 on ``device`` (the stages pass their training device; the
default is where the student's weights are): the models must already be there, each
batch is moved to it, and what comes back (thresholds, metrics, densities) is Python
floats, so a checkpoint records the same kind of values whichever device calibrated it.
Metrics are accumulated on the CPU, as ``training.evaluate`` does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mtlcompress.models.taps import record_linear_inputs, thresholded_linear_inputs
from mtlcompress.tasks.registry import TaskSpec
from mtlcompress.training.evaluate import evaluate_predictor

# Quantiles on at most this many values per layer (torch.quantile's input is bounded).
_MAX_SAMPLES = 200_000
BISECTION_STEPS = 8


@dataclass
class Calibration:
    thresholds: dict[str, float]
    keep: float
    metrics: dict[str, float]
    reference_metrics: dict[str, float]
    density: float
    layer_density: dict[str, float]


def _device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    """``device``, or where ``model``'s weights are."""
    return next(model.parameters()).device if device is None else torch.device(device)


def delta_magnitudes(delta: torch.Tensor, granularity: str) -> torch.Tensor:
    """What a threshold is compared with (see ``runtime.kernels.threshold_delta``)."""
    if granularity == "token":
        return torch.linalg.vector_norm(delta.float(), dim=-1).flatten() / math.sqrt(delta.shape[-1])
    return delta.abs().float().flatten()


@contextlib.contextmanager
def _recorded_pair(student: torch.nn.Module, base: torch.nn.Module, layers: list[str]) -> Iterator[tuple[dict, dict]]:
    with record_linear_inputs(base.backbone, layers, detach=True) as base_inputs, \
            record_linear_inputs(student.backbone, layers, detach=True) as task_inputs:
        yield base_inputs, task_inputs


@torch.no_grad()
def layer_magnitudes(student: torch.nn.Module, base: torch.nn.Module, loader: DataLoader, layers: list[str],
                     granularity: str, device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """Unthresholded delta magnitudes per layer (subsampled deterministically), on ``device``."""
    device = _device(student, device)
    values: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    with _recorded_pair(student, base, layers) as (base_inputs, task_inputs):
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            base(images)
            student(images)
            for layer in layers:
                values[layer].append(delta_magnitudes(task_inputs[layer] - base_inputs[layer], granularity))
    out = {}
    generator = torch.Generator().manual_seed(0)
    for layer, chunks in values.items():
        flat = torch.cat(chunks)
        if flat.numel() > _MAX_SAMPLES:
            flat = flat[torch.randperm(flat.numel(), generator=generator)[:_MAX_SAMPLES].to(flat.device)]
        out[layer] = flat
    return out


def thresholds_for_keep(magnitudes: dict[str, torch.Tensor], keep: float) -> dict[str, float]:
    """Per-layer thresholds that keep about ``keep`` of each layer's deltas."""
    if keep >= 1.0:
        return {layer: 0.0 for layer in magnitudes}
    return {layer: float(torch.quantile(values, 1.0 - keep)) for layer, values in magnitudes.items()}


@torch.no_grad()
def evaluate_thresholded(student: torch.nn.Module, base: torch.nn.Module, loader: DataLoader, spec: TaskSpec,
                         num_classes: int | None, thresholds: dict[str, float], granularity: str,
                         device: str | torch.device | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Task metrics and kept fraction per layer with thresholds simulated on ``student``, on ``device``."""
    device = _device(student, device)
    metric = spec.metric(num_classes)
    stats: dict[str, list[float]] = {}
    layers = list(thresholds)
    with record_linear_inputs(base.backbone, layers, detach=True) as base_inputs:
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            base(images)
            with thresholded_linear_inputs(student.backbone, base_inputs, thresholds, granularity, stats):
                raw = student(images)
            metric.update(spec.predict(raw).cpu(), batch[spec.name])
    return ({k: float(v) for k, v in metric.compute().items()},
            {layer: sum(v) / len(v) for layer, v in stats.items()})


def within_tolerance(value: float, reference: float, tolerance: float, higher_is_better: bool) -> bool:
    slack = tolerance * abs(reference)
    return value >= reference - slack if higher_is_better else value <= reference + slack


def calibration_loader(dataset: Dataset, images: int, batch_size: int = 32,
                       device: str | torch.device = "cpu") -> DataLoader:
    """The first ``images`` samples in order (pinned for a CUDA ``device``)."""
    return DataLoader(Subset(dataset, range(min(images, len(dataset)))), batch_size=batch_size,
                      pin_memory=torch.device(device).type == "cuda")


def search_keep(evaluate: Callable[[float], tuple[bool, Calibration]], to_target: bool) -> Calibration:
    """Bisect ``keep`` in [0, 1]; ``evaluate(keep)`` says whether the setting is acceptable.

    For a tolerance (``to_target`` False) acceptance grows with ``keep`` and we want the
    smallest acceptable keep. For a density target acceptance ("not denser than the
    target") shrinks with ``keep`` and we want the largest acceptable keep.
    """
    low, high = 0.0, 1.0
    best = evaluate(0.0 if to_target else 1.0)[1]
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        ok, result = evaluate(middle)
        if ok == to_target:
            low = middle
        else:
            high = middle
        if ok:
            best = result
    return best


def calibrate(
    magnitudes: dict[str, torch.Tensor],
    measure: Callable[[dict[str, float]], tuple[dict[str, float], dict[str, float]]],
    reference: dict[str, float],
    metric: object,
    *,
    tolerance: float,
    target_density: float | None,
) -> Calibration:
    """Search the kept fraction; ``measure(thresholds) -> (metrics, kept fraction per layer)``."""
    def evaluate(keep: float) -> tuple[bool, Calibration]:
        thresholds = thresholds_for_keep(magnitudes, keep)
        metrics, layer_density = measure(thresholds)
        density = sum(layer_density.values()) / max(1, len(layer_density))
        result = Calibration(thresholds, keep, metrics, reference, density, layer_density)
        if target_density is not None:
            return density <= target_density, result
        return within_tolerance(metrics[metric.primary], reference[metric.primary], tolerance,
                                metric.higher_is_better), result

    return search_keep(evaluate, target_density is not None)


def calibrate_task_thresholds(
    student: torch.nn.Module, base: torch.nn.Module, dataset: Dataset, spec: TaskSpec, num_classes: int | None,
    layers: list[str], granularity: str, *, tolerance: float = 0.02, target_density: float | None = None,
    images: int = 128, reference_model: torch.nn.Module | None = None, device: str | torch.device | None = None,
) -> Calibration:
    """Thresholds for ``x_t - x_0``: the sparsest within ``tolerance``, or at ``target_density``.

    The tolerance is relative to ``reference_model`` (the original single-task
    checkpoint, so the budget covers every stage's loss), or to the unthresholded
    ``student`` when there is none. Runs on ``device`` (default: the student's), where
    all three models must be.
    """
    device = _device(student, device)
    student.eval()
    base.eval()
    loader = calibration_loader(dataset, images, device=device)
    magnitudes = layer_magnitudes(student, base, loader, layers, granularity, device)
    if reference_model is not None:
        reference = evaluate_predictor(reference_model.eval(), loader.dataset, spec, num_classes, device=device)
    else:
        reference, _ = evaluate_thresholded(student, base, loader, spec, num_classes, {}, granularity, device)
    return calibrate(
        magnitudes,
        lambda thresholds: evaluate_thresholded(student, base, loader, spec, num_classes, thresholds, granularity,
                                                device),
        reference, spec.metric(num_classes), tolerance=tolerance, target_density=target_density)


@torch.no_grad()
def _stream_clip(model: torch.nn.Module, clip: Dataset, layers: list[str], thresholds: dict[str, float] | None,
                 granularity: str, on_frame: Callable[[torch.Tensor, dict, dict], None],
                 device: torch.device) -> None:
    """Frame 0 exact (the keyframe), later frames through temporal taps (or exact when
    ``thresholds`` is None, recording consecutive-frame deltas)."""
    from mtlcompress.models.taps import propagated_linear_inputs

    references: dict[str, torch.Tensor] = {}
    for index in range(len(clip)):
        sample = clip[index]
        image = sample["image"].unsqueeze(0).to(device, non_blocking=True)
        stats: dict[str, list[float]] = {}
        if index == 0 or thresholds is None:
            with record_linear_inputs(model.backbone, layers, detach=True) as recorded:
                raw = model(image)
            previous = dict(references)
            references = dict(recorded)
            if index and thresholds is None:
                on_frame(raw, sample, {layer: references[layer] - previous[layer] for layer in layers})
            continue
        with propagated_linear_inputs(model.backbone, references, thresholds, granularity, stats):
            raw = model(image)
        on_frame(raw, sample, stats)


def calibrate_temporal_thresholds(
    model: torch.nn.Module, clips: list[Dataset], spec: TaskSpec, num_classes: int | None, layers: list[str],
    granularity: str, *, tolerance: float = 0.02, target_density: float | None = None,
    device: str | torch.device | None = None,
) -> Calibration:
    """Thresholds for ``x^f - x^{f-1}`` on held-out clips streamed from one keyframe, on
    ``device`` (default: where ``model`` is)."""
    device = _device(model, device)
    model.eval()
    values: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    reference_metric = spec.metric(num_classes)

    def collect(raw: torch.Tensor, sample: dict, deltas: dict) -> None:
        reference_metric.update(spec.predict(raw).cpu(), sample[spec.name].unsqueeze(0))
        for layer, delta in deltas.items():
            values[layer].append(delta_magnitudes(delta, granularity))

    for clip in clips:
        _stream_clip(model, clip, layers, None, granularity, collect, device)
    magnitudes = {layer: torch.cat(v) for layer, v in values.items()}
    reference = {k: float(v) for k, v in reference_metric.compute().items()}

    def measure(thresholds: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        metric = spec.metric(num_classes)
        kept: dict[str, list[float]] = {}

        def score(raw: torch.Tensor, sample: dict, stats: dict) -> None:
            metric.update(spec.predict(raw).cpu(), sample[spec.name].unsqueeze(0))
            for layer, fractions in stats.items():
                kept.setdefault(layer, []).extend(fractions)

        for clip in clips:
            _stream_clip(model, clip, layers, thresholds, granularity, score, device)
        return ({k: float(v) for k, v in metric.compute().items()},
                {layer: sum(v) / len(v) for layer, v in kept.items()})

    return calibrate(magnitudes, measure, reference, spec.metric(num_classes), tolerance=tolerance,
                     target_density=target_density)
