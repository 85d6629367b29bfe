"""``mtlcompress demo``: the whole pipeline on built-in synthetic scenes.

Every step writes its output under ``out`` and is skipped when that output already
exists, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlcompress._progress import progress_bar
from mtlcompress.data.datasets import open_dataset
from mtlcompress.data.synth import generate_scenes
from mtlcompress.io.atomic import write_json_atomic
from mtlcompress.models.checkpoint import load_checkpoint
from mtlcompress.tasks.registry import get_task
from mtlcompress.training.evaluate import evaluate_constant_baseline, evaluate_model
from mtlcompress.training.loop import TrainConfig
from mtlcompress.training.pretrain import pretrain_backbone
from mtlcompress.training.single_task import train_single_task


@dataclass(frozen=True)
class DemoPreset:
    images: int
    videos: int
    frames: int
    size: int
    backbone: str
    pretrain: TrainConfig
    finetune: TrainConfig
    tasks: tuple[str, ...] = ("semseg", "depth", "normals", "edges", "saliency")


DEMO_PRESETS: dict[str, DemoPreset] = {
    "default": DemoPreset(
        images=800, videos=4, frames=16, size=64, backbone="tiny",
        pretrain=TrainConfig(steps=800, batch_size=32, lr=1e-3, warmup_steps=50, eval_every=10**9),
        finetune=TrainConfig(steps=400, batch_size=32, lr=3e-4, warmup_steps=20, eval_every=200),
    ),
    # Seconds, not minutes: for smoke tests of the pipeline, not for accuracy.
    "quick": DemoPreset(
        images=40, videos=1, frames=4, size=32, backbone="micro",
        pretrain=TrainConfig(steps=6, batch_size=8, warmup_steps=2, eval_every=10**9, checkpoint_every=3),
        finetune=TrainConfig(steps=4, batch_size=8, warmup_steps=2, eval_every=10**9, checkpoint_every=2),
    ),
}


def run_demo(
    out: str | os.PathLike,
    preset: str = "default",
    *,
    show_progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Run the demo pipeline into ``out`` and return its report (also saved as JSON)."""
    settings = DEMO_PRESETS[preset]
    out = Path(out)
    data = out / "data"
    timings: dict[str, float] = {}

    start = time.perf_counter()
    if not (data / "manifest.json").exists():
        log(f"generating {settings.images} synthetic scenes and {settings.videos} clips in {data}")
        with progress_bar("synthetic scenes", settings.images + settings.videos * settings.frames,
                          enabled=show_progress) as advance:
            generate_scenes(data, images=settings.images, videos=settings.videos, frames=settings.frames,
                            size=settings.size, seed=0, progress=lambda done, total: advance(1))
    timings["data"] = time.perf_counter() - start

    start = time.perf_counter()
    init = out / "init.safetensors"
    if not init.exists():
        log(f"shared pretraining of a '{settings.backbone}' ViT on all tasks -> {init}")
        pretrain_backbone(data=data, out=init, backbone=settings.backbone, tasks=settings.tasks,
                          config=settings.pretrain, show_progress=show_progress)
    timings["pretrain"] = time.perf_counter() - start

    checkpoints: dict[str, Path] = {}
    start = time.perf_counter()
    for task in settings.tasks:
        path = out / "checkpoints" / f"{task}.safetensors"
        if not path.exists():
            log(f"fine-tuning the single-task '{task}' model -> {path}")
            train_single_task(task=task, data=data, out=path, init=init, config=settings.finetune,
                              show_progress=show_progress)
        checkpoints[task] = path
    timings["finetune"] = time.perf_counter() - start

    start = time.perf_counter()
    single_task = evaluate_checkpoints(checkpoints, data)
    timings["evaluate"] = time.perf_counter() - start
    report = {
        "preset": preset,
        "settings": dataclasses.asdict(settings),
        "data": str(data),
        "checkpoints": {task: str(path) for task, path in checkpoints.items()},
        "single_task": single_task,
        "seconds": timings,
    }
    write_json_atomic(out / "demo-report.json", report)
    return report


def evaluate_checkpoints(checkpoints: dict[str, Path], data: Path) -> dict[str, dict[str, Any]]:
    """Each checkpoint's held-out metrics next to the trivial constant baseline's."""
    results: dict[str, dict[str, Any]] = {}
    for task, path in checkpoints.items():
        model, info = load_checkpoint(path)
        spec = get_task(task)
        train = open_dataset(data, split="train", tasks=[task], size=info.backbone.img_size)
        val = open_dataset(data, split="val", tasks=[task], size=info.backbone.img_size)
        metric = spec.metric(info.num_classes)
        results[task] = {
            "primary": metric.primary,
            "higher_is_better": metric.higher_is_better,
            "model": evaluate_model(model, val, spec, info.num_classes),
            "baseline": evaluate_constant_baseline(spec, train, val, info.num_classes),
        }
    return results
