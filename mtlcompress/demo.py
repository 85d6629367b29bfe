"""``mtlcompress demo``: the whole pipeline on built-in synthetic scenes.

train:    synthetic scenes -> shared pretraining -> one single-task model per task
sparsify: a plan (written to ``out/plan.toml``) run by ``sparsify all``
export:   the packed multi-task bundle
run:      the shared engine on held-out images and a video clip: accuracy, agreement
          with the dense reference, and speed against the T single-task models

Every step writes its output under ``out`` and is skipped when that output already
exists, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlcompress.progress import progress_bar
from mtlcompress.bundle.format import export_bundle, load_bundle
from mtlcompress.data.layouts import open_dataset
from mtlcompress.data.synth import generate_scenes
from mtlcompress.io.atomic import write_json_atomic, write_text_atomic
from mtlcompress.models.checkpoint import load_checkpoint
from mtlcompress.report.benchmark import benchmark_bundle, static_clip, synthetic_images
from mtlcompress.report.check import compare_engines
from mtlcompress.sparsify.pipeline import run_plan
from mtlcompress.sparsify.plan import load_plan
from mtlcompress.tasks.registry import get_task
from mtlcompress.training.evaluate import evaluate_constant_baseline, evaluate_model
from mtlcompress.training.loop import TrainConfig
from mtlcompress.training.pretrain import pretrain_backbone
from mtlcompress.training.single_task import train_single_task

DEMO_STAGES = ("train", "sparsify", "export", "run")


@dataclass(frozen=True)
class DemoPreset:
    images: int
    videos: int
    frames: int
    size: int
    backbone: str
    pretrain: TrainConfig
    finetune: TrainConfig
    # Per-stage options of the sparsify plan (see sparsify/plan.py).
    sparsify: dict[str, dict[str, Any]] = field(default_factory=dict)
    base: str = "semseg"
    tasks: tuple[str, ...] = ("semseg", "depth", "normals", "edges", "saliency")


DEMO_PRESETS: dict[str, DemoPreset] = {
    "default": DemoPreset(
        images=800, videos=4, frames=16, size=64, backbone="tiny",
        pretrain=TrainConfig(steps=600, batch_size=32, lr=1e-3, warmup_steps=50, eval_every=10**9),
        finetune=TrainConfig(steps=300, batch_size=32, lr=3e-4, warmup_steps=20, eval_every=10**9),
        sparsify={"weights": {"density": 0.02, "steps": 300}, "finetune": {"steps": 200},
                  "activations": {"steps": 100, "tolerance": 0.02}},
    ),
    # Seconds, not minutes: a smoke test of the pipeline, not of accuracy.
    "quick": DemoPreset(
        images=40, videos=2, frames=4, size=32, backbone="micro",
        pretrain=TrainConfig(steps=6, batch_size=8, warmup_steps=2, eval_every=10**9, checkpoint_every=3),
        finetune=TrainConfig(steps=4, batch_size=8, warmup_steps=2, eval_every=10**9, checkpoint_every=2),
        sparsify={"weights": {"density": 0.05, "steps": 4, "batch_size": 8},
                  "finetune": {"steps": 2, "batch_size": 8},
                  "activations": {"steps": 2, "batch_size": 8, "calibration_images": 8}},
    ),
}


def run_demo(
    out: str | os.PathLike,
    preset: str = "default",
    *,
    stages: Sequence[str] = DEMO_STAGES,
    show_progress: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Run the demo pipeline into ``out`` and return its report (also saved as JSON)."""
    settings = DEMO_PRESETS[preset]
    out = Path(out)
    data = out / "data"
    timings: dict[str, float] = {}
    report: dict[str, Any] = {"preset": preset, "settings": dataclasses.asdict(settings), "data": str(data)}

    start = time.perf_counter()
    checkpoints = _train(settings, out, data, show_progress, log)
    report["checkpoints"] = {task: str(path) for task, path in checkpoints.items()}
    report["single_task"] = evaluate_checkpoints(checkpoints, data)
    timings["train"] = time.perf_counter() - start

    if "sparsify" in stages:
        start = time.perf_counter()
        plan_path = out / "plan.toml"
        if not plan_path.exists():
            write_text_atomic(plan_path, demo_plan(settings, checkpoints))
        plan_result = run_plan(load_plan(plan_path), show_progress=show_progress, log=log)
        report["sparsify"] = plan_result.to_dict()
        timings["sparsify"] = time.perf_counter() - start
        if "export" in stages:
            start = time.perf_counter()
            bundle_path = out / "bundle.safetensors"
            final, base = plan_result.final, plan_result.base
            report["bundle"] = export_bundle(final[base], [final[t] for t in final if t != base], bundle_path)
            timings["export"] = time.perf_counter() - start
            if "run" in stages:
                start = time.perf_counter()
                log("running the bundle: shared vs dense engine on held-out images and a video clip")
                bundle = load_bundle(bundle_path)
                report["run"] = compare_engines(bundle, data)
                log("timing the bundle against the single-task models it replaces")
                report["run"]["speed"] = speed_vs_models(bundle, frames=settings.frames)
                timings["run"] = time.perf_counter() - start
    report["seconds"] = timings
    write_json_atomic(out / "demo-report.json", report)
    return report


def _train(settings: DemoPreset, out: Path, data: Path, show_progress: bool,
           log: Callable[[str], None]) -> dict[str, Path]:
    if not (data / "manifest.json").exists():
        log(f"generating {settings.images} synthetic scenes and {settings.videos} clips in {data}")
        with progress_bar("synthetic scenes", settings.images + settings.videos * settings.frames,
                          enabled=show_progress) as advance:
            generate_scenes(data, images=settings.images, videos=settings.videos, frames=settings.frames,
                            size=settings.size, seed=0, progress=lambda done, total: advance(1))
    init = out / "init.safetensors"
    if not init.exists():
        log(f"shared pretraining of a '{settings.backbone}' ViT on all tasks -> {init}")
        pretrain_backbone(data=data, out=init, backbone=settings.backbone, tasks=settings.tasks,
                          config=settings.pretrain, show_progress=show_progress)
    checkpoints: dict[str, Path] = {}
    for task in settings.tasks:
        path = out / "checkpoints" / f"{task}.safetensors"
        if not path.exists():
            log(f"fine-tuning the single-task '{task}' model -> {path}")
            train_single_task(task=task, data=data, out=path, init=init, config=settings.finetune,
                              show_progress=show_progress)
        checkpoints[task] = path
    return checkpoints


def demo_plan(settings: DemoPreset, checkpoints: dict[str, Path]) -> str:
    """The TOML plan the demo runs (kept in ``out/plan.toml`` for users to adapt)."""
    lines = ['# Written by `mtlcompress demo`; run it with `mtlcompress sparsify all --plan plan.toml`.',
             'data = "data"', 'out = "sparse"', f'base = "{settings.base}"', "", "[tasks]"]
    lines += [f'{task} = "checkpoints/{path.name}"' for task, path in checkpoints.items()]
    for stage, options in settings.sparsify.items():
        lines += ["", f"[{stage}]"] + [f"{key} = {value!r}".replace("'", '"') for key, value in options.items()]
    return "\n".join(lines) + "\n"


def speed_vs_models(bundle, *, frames: int, repeats: int = 3) -> dict[str, Any]:
    """The shared engine against what a user would otherwise run, the T single-task
    models, and against the dense reference, on one image and a static-camera clip
    (interleaved medians, ``report.benchmark``): ``{"speedup": {"images"|"video":
    {"vs_models", "vs_dense"}}, "ms_per_item", "network_plan", "stream_plan"}``."""
    size = bundle.backbone.img_size
    result = benchmark_bundle(bundle, synthetic_images(1, size), static_clip(max(frames, 2), size),
                              repeats=repeats, warmup=2, profile=False)
    return {"speedup": result["speedup"],
            "ms_per_item": {section: {name: 1e3 * stats["per_item_s"] for name, stats in result[section].items()}
                            for section in ("images", "video")},
            "network_plan": result["network_plan"], "stream_plan": result["stream_plan"],
            "repeats": repeats}


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
