"""Check a bundle end to end on labelled data: accuracy per task through the shared
engine, agreement with the dense reference, wall-clock of both, and the same on a clip."""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.data.layouts import list_video_clips, open_clip, open_dataset
from mtlcompress.runtime.engines import make_engine
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.tasks.registry import get_task


@torch.inference_mode()
def compare_engines(bundle: Bundle, data: str | os.PathLike, *, batch_size: int = 32,
                    policy: KeyframePolicy | None = None) -> dict[str, Any]:
    """Run the held-out split and the first video clip through both engines."""
    size = bundle.backbone.img_size
    probe = open_dataset(data, split="val", tasks=[], size=size)
    labelled = [t for t in bundle.tasks if t in probe.available_tasks]
    val = open_dataset(data, split="val", tasks=labelled, size=size)
    engines = {kind: make_engine(bundle, kind) for kind in ("dense", "shared")}
    _ = engines["shared"].timings  # the cost model's one-off calibration (then cached) is not per-image time
    metrics = {t: get_task(t).metric(bundle.task(t).info.num_classes) for t in labelled}
    seconds = {kind: 0.0 for kind in engines}
    max_diff = {t: 0.0 for t in bundle.tasks}
    for batch in DataLoader(val, batch_size=batch_size):
        outputs = {}
        for kind, engine in engines.items():
            start = time.perf_counter()
            outputs[kind] = engine.predict(batch["image"])
            seconds[kind] += time.perf_counter() - start
        for task in bundle.tasks:
            max_diff[task] = max(max_diff[task], float((outputs["shared"][task] - outputs["dense"][task]).abs().max()))
        for task, metric in metrics.items():
            metric.update(get_task(task).predict(outputs["shared"][task]), batch[task])
    result: dict[str, Any] = {
        "images": len(val),
        "metrics": {t: {k: float(v) for k, v in m.compute().items()} for t, m in metrics.items()},
        "original_metrics": {t: bundle.task(t).provenance.get("metrics", {}) for t in labelled},
        "seconds": seconds,
        "max_abs_diff": max_diff,
        "activation_density": engines["shared"].stats.mean(),
    }
    clips = list_video_clips(data)
    if clips:
        clip = open_clip(clips[-1], tasks=[], size=size)
        frames = [clip[i]["image"].unsqueeze(0) for i in range(len(clip))]
        streams = {kind: list(engine.stream(frames, policy)) for kind, engine in engines.items()}
        result["video"] = {
            "clip": str(clips[-1]),
            "frames": len(frames),
            "keyframes": sum(r.keyframe for r in streams["shared"]),
            "max_abs_diff": max(float((s.outputs[t] - d.outputs[t]).abs().max())
                                for s, d in zip(streams["shared"], streams["dense"]) for t in s.outputs),
        }
    return result
