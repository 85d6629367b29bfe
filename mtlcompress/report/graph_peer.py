"""The GPU peers a user would deploy, timed interleaved on the same images: the T
single-task models each captured as a CUDA graph (:class:`~mtlcompress.runtime.cuda_graphs.CapturedCall`:
side-stream warm-up, one capture, a replay per call) beside the eager T models, the
base model alone (eager and captured), and the shared engine, eager and by its
static-shape image path captured as CUDA graphs (``SharedEngine(graphs="auto")``).

On a GPU at batch 1 every variant is launch-bound, so eager timings flatter nobody; the
captured ones are what a deployment would run. CUDA only: on any other device the
section says ``unavailable (needs CUDA)`` and times nothing. Written without a GPU to
run it on: no timing from it has been measured yet.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.report.timing import interleaved_samples, median_ratios, run_models, summarize_samples
from mtlcompress.runtime.cost_model import KernelTimings
from mtlcompress.runtime.cuda_graphs import CapturedCall, cuda_graphs_available
from mtlcompress.runtime.shared_engine import SharedEngine

__all__ = ["GRAPH_VARIANTS", "NEEDS_CUDA", "graphed_peer"]

GRAPH_VARIANTS = ("independent", "independent_graphed", "base_only", "base_only_graphed", "shared",
                  "shared_graphed")
NEEDS_CUDA = "unavailable (needs CUDA)"


def _unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason, "images": {}, "ratios": {}, "static_path": None}


def graphed_peer(bundle: Bundle, images: Tensor, *, repeats: int = 5, warmup: int = 1,
                 device: str | torch.device = "cuda", timings: KernelTimings | None = None) -> dict[str, Any]:
    """Time the eager and captured T models, the base model alone and the shared engine.

    Returns:
        ``{"available", "reason", "images", "ratios", "static_path"}``: ``images`` maps
        each of ``GRAPH_VARIANTS`` that ran to :func:`~mtlcompress.report.timing.summarize_samples`;
        ``ratios`` are ratios of medians (``a/b``: how many times faster ``b`` is);
        ``static_path``: whether the shared engine's static path ran (``"shared_graphed"``
        is absent where the bundle's tasks do not allow it, e.g. element granularity),
        its capacities and overflows. Off CUDA: ``available`` false, ``reason`` ``NEEDS_CUDA``.
    """
    device = torch.device(device)
    if not cuda_graphs_available(device):
        return _unavailable(NEEDS_CUDA)
    images = images.to(device, bundle.dtype)
    eager = {t: bundle.task_model(t).to(device, bundle.dtype).eval() for t in bundle.tasks}
    try:
        captured = {t: CapturedCall(model, images) for t, model in eager.items()}
    except Exception as exc:  # a model the capture cannot hold: say so, time nothing
        return _unavailable(f"capture failed: {type(exc).__name__}: {str(exc).strip()[:300]}")
    shared = SharedEngine(bundle, device=device, timings=timings)
    graphed = SharedEngine(bundle, device=device, timings=shared.timings, graphs="auto")
    base = bundle.base_task

    variants = {"independent": lambda: run_models(eager.values(), images),
                "independent_graphed": lambda: run_models(captured.values(), images),
                "base_only": lambda: run_models([eager[base]], images), "base_only_graphed": lambda: captured[base](images),
                "shared": lambda: shared.predict(images)}
    if graphed.graphed is not None:
        variants["shared_graphed"] = lambda: graphed.predict(images)
    samples = interleaved_samples(variants, repeats, warmup, device)
    section = {name: summarize_samples(samples[name], images.shape[0]) for name in GRAPH_VARIANTS if name in samples}
    ratios = median_ratios(section, [("independent", "independent_graphed"), ("independent_graphed", "shared"),
                                     ("independent_graphed", "shared_graphed"), ("base_only_graphed", "shared_graphed"),
                                     ("shared", "shared_graphed")])
    static = None if graphed.graphed is None else {"capacities": graphed.graphed.capacities,
                                                    "overflows": graphed.graphed.overflows}
    return {"available": True, "reason": "", "images": section, "ratios": ratios, "static_path": static}
