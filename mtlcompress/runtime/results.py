"""What the engines hand back besides raw outputs: one video frame's result, and the
measured activation-delta densities."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class FrameResult:
    """One streamed frame: ``outputs`` is ``{task: [B, C, H, W]}``; ``drift`` is the
    unpropagated error measured on it (0 on a keyframe). ``path``: how it was computed,
    ``"keyframe"``, ``"delta"`` or ``"per-task"`` (the tasks' own models, also exact:
    ``keyframe`` is true); ``reason``: set on the frame after which the stream computes
    every frame in full, saying why."""

    index: int
    keyframe: bool
    outputs: dict[str, torch.Tensor]
    drift: float = 0.0
    path: str = ""
    reason: str | None = None


@dataclass
class DensityStats:
    """Kept fraction of activation deltas per task and layer, averaged over calls.

    Keeps a running sum and count per layer, not every value, so memory stays flat
    however long a video stream runs.
    """

    totals: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # task -> layer -> [sum, count]

    def add(self, task: str, layer_stats: dict[str, list[float]]) -> None:
        for layer, values in layer_stats.items():
            total = self.totals.setdefault(task, {}).setdefault(layer, [0.0, 0])
            total[0] += sum(values)
            total[1] += len(values)

    def mean(self) -> dict[str, dict[str, float]]:
        return {task: {layer: total / count for layer, (total, count) in layers.items() if count}
                for task, layers in self.totals.items()}

    def reset(self) -> None:
        self.totals.clear()


def record_measured(stats: DensityStats, densities: dict[tuple[str, str], float],
                    measured: list[tuple[str, str, torch.Tensor, torch.Tensor]]) -> None:
    """Add the kept fractions of ``measured`` (``(task key, layer, kept mask, changed
    rows)``) to ``stats`` and refresh ``densities``, the ones paths are chosen by (one sync)."""
    if not measured:
        return
    element = measured[0][2].dim() != measured[0][3].dim()
    fractions = [m.float().mean() for _, _, m, _ in measured]
    if element:  # the token paths are priced by the rows with any kept entry
        fractions += [r.float().mean() for _, _, _, r in measured]
    values = torch.stack(fractions).tolist()
    per_task: dict[str, dict[str, list[float]]] = {}
    for i, (key, name, _, _) in enumerate(measured):
        per_task.setdefault(key, {}).setdefault(name, []).append(values[i])
        densities[(key, name)] = values[len(measured) + i] if element else values[i]
        if element:
            densities[(key, name + "#element")] = values[i]
    for key, layer_stats in per_task.items():
        stats.add(key, layer_stats)
