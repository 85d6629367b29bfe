"""Wall-clock measurement shared by the benchmarks: interleaved round-robin timing,
sample summaries, and the machine the numbers were measured on."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from mtlcompress.progress import Advance
from mtlcompress.runtime.calibration import cpu_model

__all__ = ["environment", "interleaved_samples", "median_ratios", "run_models", "summarize_samples", "synchronize"]


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What the numbers were measured on (recorded next to every result)."""
    device = torch.device(device)
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_cores": _cpu_count(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def summarize_samples(samples: Sequence[float], items: int = 1) -> dict[str, Any]:
    """Median, min/max and quartiles of ``samples`` (seconds per call); ``per_item_s``
    divides the median by the images or frames one call processes."""
    values = sorted(float(s) for s in samples)
    if not values:
        raise ValueError("no timing samples")
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    median = statistics.median(values)
    return {"median_s": median, "min_s": values[0], "max_s": values[-1], "q1_s": q1, "q3_s": q3,
            "per_item_s": median / max(1, items), "repeats": len(values), "samples_s": values}


def median_ratios(section: dict[str, dict[str, Any]], pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """``{"a/b": median(a) / median(b)}`` for the ``pairs`` both timed in ``section``
    (``summarize_samples`` results by name): how many times faster ``b`` is."""
    return {f"{a}/{b}": section[a]["median_s"] / section[b]["median_s"] for a, b in pairs
            if a in section and b in section and section[b]["median_s"] > 0}


@torch.inference_mode()
def run_models(models: Iterable[Callable[[torch.Tensor], object]], images: torch.Tensor) -> None:
    """Every model on ``images`` in turn: the T single-task models a user would run."""
    for model in models:
        model(images)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_samples(variants: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device,
                        before_timed: Callable[[], None] | None = None,
                        advance: Advance | None = None) -> dict[str, list[float]]:
    """Round-robin timing: each round runs every variant once, order rotated per round;
    ``advance(1, name)`` (a ``progress_bar``'s) after each run, outside the timing."""
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        if round_index == warmup and before_timed is not None:
            before_timed()
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            if round_index >= warmup:
                samples[name].append(time.perf_counter() - start)
            if advance is not None:
                advance(1, name)
    return samples
