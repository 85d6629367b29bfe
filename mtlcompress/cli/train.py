"""``mtlcompress pretrain``, ``train`` and ``evaluate``: step 0, single-task models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlcompress.cli._options import (
    TASK_NAMES,
    AccumulateOpt,
    DataOpt,
    DeviceOpt,
    ImgSizeOpt,
    JsonOpt,
    OverwriteOpt,
    PrecisionOpt,
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    WorkersOpt,
)
from mtlcompress.cli._output import emit, info, make_table
from mtlcompress.io.outputs import SAFETENSORS_SUFFIXES, check_output
from mtlcompress.training.config import TrainConfig

StepsOpt = Annotated[int, typer.Option(min=1, help="Optimiser steps.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Global batch size (split across ranks under torchrun).")]
LrOpt = Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW, warm-up then cosine).")]
BackboneOpt = Annotated[str, typer.Option(help="Backbone preset ('tiny', 'micro') or any timm ViT name.")]


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
    app.command("train")(train)
    app.command("evaluate")(evaluate)


def pretrain(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Backbone initialisation to write (.safetensors).")],
    backbone: BackboneOpt = "tiny",
    img_size: ImgSizeOpt = None,
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks; default: every labelled task.")] = "",
    steps: StepsOpt = 800,
    batch_size: BatchOpt = 32,
    lr: LrOpt = 1e-3,
    seed: SeedOpt = 0,
    accumulate: AccumulateOpt = 1,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    workers: WorkersOpt = 0,
    resume: ResumeOpt = True,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train one backbone on all tasks: the shared initialisation for `train --init`."""
    check_output(out, [data], overwrite=overwrite, suffixes=SAFETENSORS_SUFFIXES)
    from mtlcompress.training.pretrain import pretrain_backbone  # torch: only once a command runs

    config = _checked(TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, eval_every=10**9,
                                  accumulate=accumulate, device=device, precision=precision, workers=workers))
    selected = [t for t in tasks.split(",") if t] or None
    result = pretrain_backbone(data=data, out=out, backbone=backbone, img_size=img_size, tasks=selected,
                               config=config, resume=resume, show_progress=not (quiet or as_json))
    if as_json:
        emit({"init": str(out), "backbone": result.to_dict()}, as_json)
    info(f"wrote {out} ({result.describe()})", quiet or as_json)


def train(
    task: Annotated[str, typer.Option(help=f"Task to train: {', '.join(TASK_NAMES)}.")],
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Single-task checkpoint to write (.safetensors).")],
    init: Annotated[Path | None, typer.Option(help="Shared initial weights: an `mtlcompress pretrain` file or "
                                              "a timm ViT state dict (.safetensors/.pt/.pth).")] = None,
    backbone: BackboneOpt = "tiny",
    img_size: ImgSizeOpt = None,
    steps: StepsOpt = 400,
    batch_size: BatchOpt = 32,
    lr: LrOpt = 3e-4,
    eval_every: Annotated[int, typer.Option(min=1, help="Validate every N steps.")] = 200,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Save resumable state every N steps.")] = 50,
    seed: SeedOpt = 0,
    accumulate: AccumulateOpt = 1,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    workers: WorkersOpt = 0,
    resume: ResumeOpt = True,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune one single-task model (runs unchanged under torchrun for DDP)."""
    check_output(out, [data, init], overwrite=overwrite, suffixes=SAFETENSORS_SUFFIXES)
    # torch and timm: imported once a command runs, so that `--help` answers at once.
    from mtlcompress.tasks.registry import get_task
    from mtlcompress.training.single_task import train_single_task

    get_task(task)
    config = _checked(TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, eval_every=eval_every,
                                  checkpoint_every=checkpoint_every, accumulate=accumulate, device=device,
                                  precision=precision, workers=workers))
    result = train_single_task(task=task, data=data, out=out, init=init, backbone=backbone, img_size=img_size,
                               config=config, resume=resume, overwrite=overwrite,
                               show_progress=not (quiet or as_json))
    emit({"checkpoint": str(out), "task": task, "metrics": result.metrics}, as_json,
         make_table(f"{task} -> {out}", ["metric", "value"], sorted(result.metrics.items())))


def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Single-task checkpoint (.safetensors).")],
    data: DataOpt,
    split: Annotated[str, typer.Option(help="Split to evaluate on.")] = "val",
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    workers: WorkersOpt = 0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Print a checkpoint's task metrics on a dataset split."""
    from mtlcompress.data.layouts import open_dataset
    from mtlcompress.devices import resolve_device
    from mtlcompress.models.checkpoint import load_checkpoint
    from mtlcompress.tasks.registry import get_task
    from mtlcompress.training.evaluate import evaluate_model, evaluation_protocol
    from mtlcompress.training.precision import check_precision

    target = resolve_device(device)
    check_precision(precision)
    model, ckpt = load_checkpoint(checkpoint)
    spec = get_task(ckpt.task)
    dataset = open_dataset(data, split=split, tasks=[ckpt.task], size=ckpt.backbone.img_size, native_labels=True)
    metrics = evaluate_model(model, dataset, spec, ckpt.num_classes, batch_size=batch_size, device=target,
                             show_progress=not (quiet or as_json), precision=precision, workers=workers)
    protocol = evaluation_protocol(spec, dataset, ckpt.num_classes)
    emit({"checkpoint": str(checkpoint), "task": ckpt.task, "split": split, "images": len(dataset),
          "metrics": metrics, "protocol": protocol}, as_json,
         make_table(f"{ckpt.task} on {data} ({split}, {len(dataset)} images)", ["metric", "value"],
                    [*sorted(metrics.items()), ("protocol", protocol)]))


def _checked(config: TrainConfig) -> TrainConfig:
    """The config, once its device exists here and its precision is known (one-line errors
    before any data is read)."""
    from mtlcompress.devices import resolve_device
    from mtlcompress.training.precision import check_precision

    resolve_device(config.device)
    check_precision(config.precision)
    return config
