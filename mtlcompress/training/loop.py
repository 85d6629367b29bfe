"""The one training loop every stage uses (single-task training, shared pretraining,
and each sparsify stage): deterministic batches, warm-up + cosine learning rate,
periodic checkpoints that resume bit-exactly, NaN guard, DDP, gradient accumulation,
mixed precision, progress.

Batches are a pure function of (seed, step, rank) (``batches.py``), so a resumed run
sees exactly the batches an uninterrupted run would have seen and ends with the same
weights (for the same world size).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mtlcompress.progress import progress_bar
from mtlcompress.errors import TrainingDiverged
from mtlcompress.training.config import TrainConfig
from mtlcompress.training.augment import random_hflip
from mtlcompress.training.batches import (
    MemoryCachedDataset,
    StepBatchSampler,
    batch_to_device,
    micro_batches,
    step_loader,
)
from mtlcompress.training.distributed import training_device, world
from mtlcompress.training.precision import autocast, grad_scaler
from mtlcompress.training.state import (
    TrainingStateSnapshot,
    first_non_finite,
    resume_training_state,
    run_learning_rate,
    snapshot_training_state,
    write_training_state,
)


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    last_losses: dict[str, float]
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    # [{"step", "lr"}, ...]: more than one entry when a resume changed the learning rate.
    lr_changes: list[dict[str, Any]] = field(default_factory=list)


def lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def run_training(
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    compute_loss: Callable[[dict[str, Any], int], tuple[torch.Tensor, dict[str, float]]],
    dataset: Dataset,
    config: TrainConfig,
    state_path: str | os.PathLike,
    run_id: dict[str, Any],
    description: str = "training",
    evaluate: Callable[[int], dict[str, Any]] | None = None,
    resume: bool = True,
    show_progress: bool = True,
    before_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train ``model`` (already wrapped in DDP by the caller if distributed) on
    ``config.device`` in ``config.precision``.

    ``compute_loss(batch, step)`` returns the loss and scalars to log. The state file
    at ``state_path`` is rewritten every ``config.checkpoint_every`` steps and holds
    the last good state: a non-finite loss, weight or optimizer moment stops training
    with ``TrainingDiverged``. Only finite state is written, and a state counts as good
    only once the next step's loss, computed from exactly its weights, is finite
    (weights can be finite and still useless, e.g. 1e19): if that loss is not, the file
    is rolled back to the previous good state, so resuming from it with a lower
    learning rate can recover. (A copy of the good state is kept in memory for that.)

    Each step's batch is split into ``config.accumulate`` micro-batches whose gradients
    add up to the whole batch's (DDP synchronises only the last); ``compute_loss`` runs
    under autocast and its loss is scaled for fp16.
    """
    device = training_device(config.device)
    rank, world_size = world()
    state_path = Path(state_path)
    inner = model.module if hasattr(model, "module") else model
    inner.to(device)  # before a resume, so that the optimizer's moments land on the device too
    scaler = grad_scaler(device, config.precision)
    start = 0
    lr = run_learning_rate(run_id)
    lr_changes: list[dict[str, Any]] = [] if lr is None else [{"step": 0, "lr": lr}]
    # The good state on disk (None: none yet) and a written state its next loss has not vouched for.
    good: TrainingStateSnapshot | None = None
    unconfirmed: TrainingStateSnapshot | None = None
    if resume and state_path.exists():
        resumed = resume_training_state(state_path, model=inner, optimizer=optimizer, run=run_id)
        start, lr_changes = resumed.step, resumed.lr_changes
        if scaler is not None and resumed.grad_scaler is not None:
            scaler.load_state_dict(resumed.grad_scaler)
        good = snapshot_training_state(step=start, model=inner, optimizer=optimizer, run=run_id,
                                       lr_changes=lr_changes, grad_scaler=_scaler_state(scaler))
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    data = MemoryCachedDataset(dataset)
    batches = iter(step_loader(data, StepBatchSampler(start=start, steps=config.steps, dataset_size=len(data),
                                                      batch_size=config.batch_size, seed=config.seed, rank=rank,
                                                      world_size=world_size),
                               workers=config.workers, device=device))
    losses: dict[str, float] = {}
    evaluations: list[dict[str, Any]] = []

    def diverged(what: str, step: int) -> TrainingDiverged:
        if unconfirmed is not None and rank == 0:  # its weights gave this loss: put the good state back
            if good is None:
                state_path.unlink(missing_ok=True)
            else:
                write_training_state(state_path, good)
        last_good = good.step if good is not None else 0
        return TrainingDiverged(
            f"{what} at step {step}; the last good state (step {last_good}) is kept in {state_path}; "
            "re-run with a lower learning rate (--lr) to resume from it"
        )

    model.train()
    with progress_bar(description, config.steps, enabled=show_progress and rank == 0, completed=start) as advance:
        for step in range(start, config.steps):
            if before_step is not None:
                before_step(step)
            for group in optimizer.param_groups:
                if not group.get("constant_lr"):
                    group["lr"] = group["base_lr"] * lr_factor(step, config)
            batch = next(batches)
            if config.augment:
                batch = random_hflip(batch, torch.Generator().manual_seed(config.seed * 7919 + step))
            optimizer.zero_grad(set_to_none=True)
            parts = micro_batches(batch, config.accumulate)
            losses = {}
            for index, (micro, weight) in enumerate(parts):
                last = index == len(parts) - 1
                # DDP all-reduces the gradients once, on the last micro-batch.
                sync = contextlib.nullcontext() if last or inner is model else model.no_sync()
                with sync:
                    with autocast(device, config.precision):
                        loss, logged = compute_loss(batch_to_device(micro, device), step)
                    if not torch.isfinite(loss):  # NaN, +Inf and -Inf alike
                        raise diverged(f"loss became {loss.item()}", step)
                    if unconfirmed is not None:  # this finite loss came from its weights: it is good
                        good, unconfirmed = unconfirmed, None
                    scaled = loss.float() * weight
                    (scaled if scaler is None else scaler.scale(scaled)).backward()
                for key, value in logged.items():
                    losses[key] = losses.get(key, 0.0) + value * weight
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip the true gradients
            if config.grad_clip:
                # Gradient-ascent groups (Lagrange multipliers) are not clipped with the model.
                torch.nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups if not g.get("maximize") for p in g["params"]],
                    config.grad_clip)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)  # skipped (and the scale lowered) when a gradient overflowed
                scaler.update()
            done = step + 1
            status = " ".join(f"{k}={v:.4g}" for k, v in losses.items())
            if evaluate is not None and (done % config.eval_every == 0 or done == config.steps):
                result = evaluate(done)
                evaluations.append({"step": done, **result})
                model.train()
                status += " | " + " ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float))
            if done % config.checkpoint_every == 0 or done == config.steps:
                snapshot = snapshot_training_state(step=done, model=inner, optimizer=optimizer, run=run_id,
                                                   lr_changes=lr_changes, grad_scaler=_scaler_state(scaler))
                bad = first_non_finite(snapshot.tensors)
                if bad is not None:
                    raise diverged(f"'{bad}' became NaN or Inf with a finite loss", step)
                if rank == 0:  # written now, so a killed run resumes from here
                    write_training_state(state_path, snapshot)
                unconfirmed = snapshot
            advance(1, status)
    return TrainResult(steps=config.steps, resumed_from=start, last_losses=losses, evaluations=evaluations,
                       lr_changes=lr_changes)


def _scaler_state(scaler: torch.amp.GradScaler | None) -> dict[str, Any] | None:
    return None if scaler is None else scaler.state_dict()


def adamw(params: Any, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def resume_state_path(out: str | os.PathLike) -> Path:
    """Where a run writing ``out`` keeps its resumable state (next to the output)."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".resume.safetensors")
