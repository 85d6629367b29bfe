"""Training throughput (images/s) of our loops against the plain timm loop a user would write.

    python benchmarks/training_throughput.py [--models vit_small_patch16_224,vit_base_patch16_224]
        [--img-size 64] [--batch 4] [--steps 1] [--variants ...] [--repeats 2] [--device auto] [--precision fp32] [--write]

For each model: a plain PyTorch/timm loop (DataLoader, AdamW, clip, step) on the same
single-task model, batch and data; ``train_single_task`` (our fine-tune); and the
training loop of each sparsify stage (weights = L0 gates, finetune = masked delta,
activations = + base forward and penalty, temporal = frame pairs). Variants are
interleaved within each repeat, so machine load hits them alike. Only the optimiser
steps are timed: each run does one warm-up step, ``--steps`` timed steps and one last
step (whose end-of-run evaluation and state write are not timed), timed from
``run_training``'s ``before_step`` hook. Weights are random (nothing is downloaded):
throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _markdown import replace_section, table  # noqa: E402

import mtlcompress.sparsify.stage_activations as stage_activations  # noqa: E402
import mtlcompress.sparsify.stage_finetune as stage_finetune  # noqa: E402
import mtlcompress.sparsify.stage_temporal as stage_temporal  # noqa: E402
import mtlcompress.sparsify.stage_weights as stage_weights  # noqa: E402
import mtlcompress.training.single_task as single_task  # noqa: E402
from mtlcompress.data.layouts import open_dataset  # noqa: E402
from mtlcompress.data.synth import generate_scenes  # noqa: E402
from mtlcompress.devices import resolve_device  # noqa: E402
from mtlcompress.models.backbone import BackboneConfig, resolve_backbone  # noqa: E402
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint  # noqa: E402
from mtlcompress.models.weights import save_backbone_init  # noqa: E402
from mtlcompress.tasks.registry import get_task  # noqa: E402
from mtlcompress.training.config import TrainConfig  # noqa: E402
from mtlcompress.training.precision import autocast, grad_scaler  # noqa: E402

BASE, SUB = "depth", "normals"
VARIANTS = ("plain timm loop", "train (ours)", "sparsify weights", "sparsify finetune", "sparsify activations",
            "sparsify temporal")


class StepTimer:
    """Wraps a module's ``run_training`` to time steps ``[warmup, last)`` via ``before_step``."""

    def __init__(self, module: Any, warmup: int) -> None:
        self.module, self.warmup, self.marks = module, warmup, []
        self.real = module.run_training

    def __enter__(self) -> StepTimer:
        def timed(**kwargs: Any):
            def before_step(step: int) -> None:
                if step >= self.warmup:
                    _sync()
                    self.marks.append(time.perf_counter())
            return self.real(**kwargs, before_step=before_step)
        self.module.run_training = timed
        return self

    def __exit__(self, *exc: Any) -> None:
        self.module.run_training = self.real

    def images_per_second(self, batch: int) -> float:
        return (len(self.marks) - 1) * batch / (self.marks[-1] - self.marks[0])


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_timm_loop(checkpoint_info: CheckpointInfo, data: Path, config: TrainConfig, warmup: int) -> float:
    """What a user would write: timm model + head, DataLoader, AdamW, autocast, clip, step."""
    device = resolve_device(config.device)
    torch.manual_seed(0)
    model = build_model(checkpoint_info).to(device).train()
    spec = get_task(checkpoint_info.task)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = grad_scaler(device, config.precision)
    dataset = open_dataset(data, split="train", tasks=[spec.name], size=checkpoint_info.backbone.img_size)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True,
                        num_workers=config.workers, pin_memory=device.type == "cuda")
    marks = []
    step = 0
    while step < config.steps:
        for batch in loader:
            if step >= warmup:
                _sync()
                marks.append(time.perf_counter())
            if step == config.steps - 1:
                break
            images, target = batch["image"].to(device), batch[spec.name].to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, config.precision):
                loss = spec.loss(model(images), target)
            (loss if scaler is None else scaler.scale(loss)).backward()
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            loss.item()  # as a user's logging would (ours logs every step too)
            step += 1
        else:
            continue
        break
    return (len(marks) - 1) * config.batch_size / (marks[-1] - marks[0])


def prepare(folder: Path, model_name: str, img_size: int, images: int) -> dict[str, Path]:
    """Scenes, a shared init, and random base / sub-task / stage-1 checkpoints."""
    data = folder / "data"
    generate_scenes(data, images=images, videos=2, frames=6, size=img_size)
    backbone = resolve_backbone(model_name, img_size=img_size)
    torch.manual_seed(0)
    base_info = CheckpointInfo(task=BASE, backbone=backbone, out_channels=get_task(BASE).out_channels(None))
    base = build_model(base_info)
    sub_info = CheckpointInfo(task=SUB, backbone=backbone, out_channels=get_task(SUB).out_channels(None))
    sub = build_model(sub_info)
    sub.backbone.load_state_dict(base.backbone.state_dict())
    with torch.no_grad():
        for parameter in sub.backbone.parameters():
            parameter.add_(torch.randn_like(parameter) * 1e-3)
    paths = {"data": data, "base": folder / "base.safetensors", "sub": folder / "sub.safetensors",
             "init": folder / "init.safetensors", "stage1": folder / "stage1.safetensors"}
    save_checkpoint(base, base_info, paths["base"])
    save_checkpoint(sub, sub_info, paths["sub"])
    save_backbone_init(base.backbone, backbone, paths["init"])
    stage_weights.sparsify_weights(base=paths["base"], task=paths["sub"], data=data, out=paths["stage1"],
                                   density=0.05, method="magnitude", show_progress=False)
    return paths


def run_variant(variant: str, paths: dict[str, Path], backbone: BackboneConfig, config: TrainConfig, out: Path,
                warmup: int) -> float:
    common = {"data": paths["data"], "out": out, "config": config, "show_progress": False, "resume": False,
              "overwrite": True}
    pair = {"base": paths["base"], **common}
    calls: dict[str, tuple[Any, Callable[[], Any]]] = {
        "train (ours)": (single_task, lambda: single_task.train_single_task(task=SUB, init=paths["init"], **common)),
        "sparsify weights": (stage_weights, lambda: stage_weights.sparsify_weights(task=paths["sub"], **pair)),
        "sparsify finetune": (stage_finetune, lambda: stage_finetune.finetune_deltas(task=paths["stage1"], **pair)),
        "sparsify activations": (stage_activations, lambda: stage_activations.sparsify_activations(
            task=paths["stage1"], calibration_images=4, **pair)),
        "sparsify temporal": (stage_temporal, lambda: stage_temporal.sparsify_temporal(
            task=paths["stage1"], token_density=0.5, **pair)),
    }
    if variant == "plain timm loop":
        info = CheckpointInfo(task=SUB, backbone=backbone, out_channels=get_task(SUB).out_channels(None))
        return plain_timm_loop(info, paths["data"], config, warmup)
    module, call = calls[variant]
    with StepTimer(module, warmup) as timer:
        call()
    return timer.images_per_second(config.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vit_small_patch16_224,vit_base_patch16_224")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: "
                        + ", ".join(VARIANTS))
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true", help="rewrite the section in docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warmup = 1
    config = TrainConfig(steps=warmup + args.steps + 1, batch_size=args.batch, lr=1e-4, warmup_steps=1,
                         eval_every=10**9, checkpoint_every=10**9, augment=False, device=args.device,
                         precision=args.precision, workers=args.workers)
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models.split(","):
            folder = Path(tmp) / model_name
            folder.mkdir()
            paths = prepare(folder, model_name, args.img_size, images=max(16, 3 * args.batch))
            backbone = resolve_backbone(model_name, img_size=args.img_size)
            variants = [v for v in VARIANTS if v in args.variants.split(",")]
            runs = results.setdefault(model_name, {v: [] for v in variants})
            for repeat in range(args.repeats):
                for variant in variants:
                    stage_config = dataclasses.replace(config, seed=repeat)
                    rate = run_variant(variant, paths, backbone, stage_config, folder / "out.safetensors", warmup)
                    runs[variant].append(rate)
                    print(f"{model_name} repeat {repeat} {variant}: {rate:.2f} img/s", flush=True)
    device = resolve_device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    report = {"device": device_name, "device_type": device.type, "models": args.models, "precision": args.precision, "img_size": args.img_size, "batch": args.batch,
              "timed_steps": args.steps, "repeats": args.repeats, "threads": args.threads, "results": results}
    print(json.dumps(report, indent=2))
    if args.write:
        write_section(report, " ".join(["python", "benchmarks/training_throughput.py", *sys.argv[1:]]))


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def write_section(report: dict[str, Any], command: str) -> None:
    rows = []
    for model_name, runs in report["results"].items():
        plain = statistics.median(runs["plain timm loop"])
        for variant, rates in runs.items():
            rows.append([model_name, variant, f"{min(rates):.2f}-{max(rates):.2f}",
                         f"{plain / statistics.median(rates):.2f}x"])
    section = f"training-throughput-{report['device_type']}-{report['models'].replace(',', '+')}"
    body = (f"`{command}` on {report['device']} ({report['threads']} threads; other jobs shared the machine), "
            f"{report['precision']}, {report['img_size']}-px images, batch {report['batch']}, "
            f"{report['timed_steps']} timed steps per run, {report['repeats']} interleaved repeats (range shown):\n\n"
            + table(["model", "loop", "images/s", "step time vs plain loop (median)"], rows))
    replace_section(section, body)


if __name__ == "__main__":
    main()
