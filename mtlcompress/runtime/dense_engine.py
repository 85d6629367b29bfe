"""The dense engine: every task runs as its own dense model and activation
thresholds are *simulated* with taps. It saves no compute; it is the reference the
shared engine must match (the DeltaCNN lesson: keep simulation and fast path apart).

Semantics (the shared engine implements exactly these):

Images. The base task runs exactly and its linear-layer inputs ``x_0`` are recorded.
A sub-task ``t`` runs with each tapped input replaced by
``x_0 + threshold(x_t - x_0, tau_t)`` (``ActivationSparsity.task_thresholds``).

Video. Each task keeps, per tapped layer, the last *propagated* input. On a keyframe
every task runs exactly (no thresholds: a keyframe resets every approximation) and
its inputs become the references. On other frames each tapped input becomes
``ref + threshold(x - ref, tau_temporal)`` and the reference is updated to that value;
layers without a temporal threshold run exactly. A keyframe is forced by
``KeyframePolicy``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.models.taps import (
    propagated_linear_inputs,
    record_linear_inputs,
    shared_linear_names,
    thresholded_linear_inputs,
)
from mtlcompress.runtime.devices import resolve_device
from mtlcompress.runtime.inputs import check_images, select_tasks
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.runtime.results import DensityStats, FrameResult


class DenseEngine:
    """Reference execution of a bundle: simulated sparsity, no savings."""

    name = "dense"

    def __init__(self, bundle: Bundle, tasks: Sequence[str] | None = None, device: str | torch.device = "cpu") -> None:
        self.bundle = bundle
        self.tasks = select_tasks(bundle, tasks)
        self.device = resolve_device(device)
        self.models = {t: bundle.task_model(t).to(self.device, bundle.dtype)  # computes in the bundle's dtype
                       for t in {bundle.base_task, *self.tasks}}
        # Tapped layers this backbone has (a SwiGLU MLP has fc1_g and fc1_x, no fc1).
        modules = dict(self.models[bundle.base_task].backbone.named_modules())
        self.layers = [name for name in shared_linear_names(bundle.backbone.depth) if name in modules]
        self.stats = DensityStats()

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs ``{task: [B, C, H, W]}`` for images ``[B, 3, H, W]`` in [0, 1]."""
        images = images.to(self.device)
        check_images(images, self.bundle.backbone.img_size)
        base = self.bundle.base_task
        outputs: dict[str, torch.Tensor] = {}
        with record_linear_inputs(self.models[base].backbone, self.layers, detach=True) as recorded:
            outputs[base] = self.models[base](images)
        base_inputs = dict(recorded)
        for task in self.tasks:
            if task == base:
                continue
            layer_stats: dict[str, list[float]] = {}
            activation = self.bundle.task(task).activation
            with thresholded_linear_inputs(self.models[task].backbone, base_inputs, activation.task_thresholds,
                                           activation.granularity, layer_stats):
                outputs[task] = self.models[task](images)
            self.stats.add(task, layer_stats)
        return {t: outputs[t] for t in self.tasks}

    @torch.no_grad()
    def stream(self, frames: Iterable[torch.Tensor], policy: KeyframePolicy | None = None) -> Iterator[FrameResult]:
        """Process video frames ``[B, 3, H, W]`` in order, reusing the previous frame."""
        policy = policy or KeyframePolicy()
        references: dict[str, dict[str, torch.Tensor]] = {}
        since_keyframe: int | None = None
        drift = 0.0
        for index, frame in enumerate(frames):
            frame = frame.to(self.device)
            if policy.is_keyframe(since_keyframe, drift):
                outputs, references = self._keyframe(frame)
                since_keyframe, drift = 0, 0.0
                yield FrameResult(index, True, {t: outputs[t] for t in self.tasks}, path="keyframe")
                continue
            check_images(frame, self.bundle.backbone.img_size)
            since_keyframe += 1
            outputs = {}
            drift = 0.0
            for task in self.models:
                out, task_drift = self._temporal_step(task, frame, references[task])
                outputs[task] = out
                drift = max(drift, task_drift)
            yield FrameResult(index, False, {t: outputs[t] for t in self.tasks}, drift, path="delta")

    def _keyframe(self, frame: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
        """Every task exactly; returns outputs and each task's linear-layer inputs."""
        check_images(frame, self.bundle.backbone.img_size)
        outputs: dict[str, torch.Tensor] = {}
        inputs: dict[str, dict[str, torch.Tensor]] = {}
        for task, model in self.models.items():
            with record_linear_inputs(model.backbone, self.layers, detach=True) as recorded:
                outputs[task] = model(frame)
            inputs[task] = dict(recorded)
        return outputs, inputs

    def _temporal_step(self, task: str, frame: torch.Tensor, refs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
        activation = self.bundle.task(task).activation
        layer_stats: dict[str, list[float]] = {}
        drifts = [0.0]
        with propagated_linear_inputs(self.models[task].backbone, refs, activation.temporal_thresholds,
                                      activation.granularity, layer_stats, drifts):
            out = self.models[task](frame)
        self.stats.add(f"{task}/temporal", layer_stats)
        return out, max(drifts)
