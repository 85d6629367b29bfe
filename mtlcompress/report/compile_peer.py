"""The honest CPU peer: the T single-task models under ``torch.compile`` (default mode),
timed interleaved with the eager T models and the shared engine on the same images.

``torch.compile`` on CPU needs a working C++ compiler (inductor generates C++); where it
cannot compile, the peer is reported as unavailable with the reason, never as a crash.
Ratios are ratios of medians, like :mod:`~mtlcompress.report.benchmark`'s; ``best_models``
is the faster of the eager and the compiled T models.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.report.timing import interleaved_samples, median_ratios, run_models, summarize_samples
from mtlcompress.runtime.cost_model import KernelTimings
from mtlcompress.runtime.shared_engine import SharedEngine

__all__ = ["COMPILE_VARIANTS", "compile_models", "compiled_peer"]

COMPILE_VARIANTS = ("independent", "independent_compiled", "shared")


def compile_models(bundle: Bundle, images: Tensor, device: torch.device) -> tuple[dict[str, Any] | None, str, float]:
    """Every task's model compiled and run once (compiling it): ``(models, "", seconds)``,
    or ``(None, reason, 0.0)`` where ``torch.compile`` is unavailable or fails."""
    start = time.perf_counter()
    try:
        models = {t: torch.compile(bundle.task_model(t).to(device).eval()) for t in bundle.tasks}
        run_models(models.values(), images)
    except Exception as exc:  # any backend failure (no C++ compiler, unsupported op) means "unavailable"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"{type(exc).__name__}: {reason[:300]}", 0.0
    return models, "", time.perf_counter() - start


def compiled_peer(bundle: Bundle, images: Tensor, *, repeats: int = 5, warmup: int = 1,
                  device: str | torch.device = "cpu", timings: KernelTimings | None = None) -> dict[str, Any]:
    """Time the eager T models, the compiled T models and the shared engine, interleaved.

    Returns:
        ``{"available", "reason", "compile_s", "images", "ratios"}``: ``images`` maps each of
        ``COMPILE_VARIANTS`` to :func:`~mtlcompress.report.benchmark.summarize_samples`;
        ``ratios`` holds ``independent/shared``, ``independent_compiled/shared``,
        ``independent/independent_compiled`` and ``best_models/shared`` (the faster T
        models over the shared engine). Without a compiler only the eager two are timed.
    """
    device = torch.device(device)
    images = images.to(device)
    eager = {t: bundle.task_model(t).to(device).eval() for t in bundle.tasks}
    compiled, reason, compile_s = compile_models(bundle, images, device)
    shared = SharedEngine(bundle, device=device, timings=timings)

    variants = {"independent": lambda: run_models(eager.values(), images), "shared": lambda: shared.predict(images)}
    if compiled is not None:
        variants["independent_compiled"] = lambda: run_models(compiled.values(), images)
    samples = interleaved_samples(variants, repeats, warmup, device)
    section = {name: summarize_samples(samples[name], images.shape[0]) for name in COMPILE_VARIANTS if name in samples}
    median = {name: s["median_s"] for name, s in section.items()}
    ratios = median_ratios(section, [("independent", "shared"), ("independent_compiled", "shared"),
                                     ("independent", "independent_compiled")])
    best = min(median["independent"], median.get("independent_compiled", float("inf")))
    ratios["best_models/shared"] = best / median["shared"]
    return {"available": compiled is not None, "reason": reason, "compile_s": compile_s, "images": section,
            "ratios": ratios}
