"""The one training loop every stage uses (single-task training, shared pretraining,
and each sparsify stage): deterministic batches, warm-up + cosine learning rate,
periodic checkpoints that resume bit-exactly, NaN guard, DDP, progress.

Batches are a pure function of (seed, step, rank), so a resumed run sees exactly the
batches an uninterrupted run would have seen and ends with the same weights.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, default_collate

from mtlcompress.progress import progress_bar
from mtlcompress.errors import TrainingDiverged
from mtlcompress.training.augment import random_hflip
from mtlcompress.training.state import (
    TrainingStateSnapshot,
    first_non_finite,
    resume_training_state,
    run_learning_rate,
    snapshot_training_state,
    write_training_state,
)


@dataclass
class TrainConfig:
    """Hyper-parameters shared by every training stage."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    checkpoint_every: int = 50
    augment: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; stored in checkpoints so a resume can refuse other settings."""
        return asdict(self)


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    last_losses: dict[str, float]
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    # [{"step", "lr"}, ...]: more than one entry when a resume changed the learning rate.
    lr_changes: list[dict[str, Any]] = field(default_factory=list)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside ``torchrun``.

    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the process group is
    created on first use, so every training entry point runs unchanged: gloo on CPU,
    NCCL when CUDA is available.
    """
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_indices(step: int, *, dataset_size: int, batch_size: int, seed: int,
                  rank: int = 0, world_size: int = 1) -> list[int]:
    """The samples of this rank's share of the global batch at ``step``.

    Each epoch is a fresh permutation seeded by (seed, epoch); the global batch is
    split evenly across ranks, so DDP needs no sampler state.
    """
    global_batch = min(batch_size, dataset_size)
    global_batch -= global_batch % world_size
    if global_batch == 0:
        raise ValueError(f"batch of {batch_size} cannot be split over {world_size} ranks "
                         f"with {dataset_size} samples")
    per_epoch = dataset_size // global_batch
    epoch, position = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(dataset_size, generator=generator)
    batch = order[position * global_batch:(position + 1) * global_batch]
    share = global_batch // world_size
    return batch[rank * share:(rank + 1) * share].tolist()


def lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class MemoryCachedDataset(Dataset):
    """Keeps decoded samples in memory: small datasets are read from disk once."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self._cache:
            self._cache[index] = self.dataset[index]
        return self._cache[index]


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
    """Train ``model`` (already wrapped in DDP by the caller if distributed).

    ``compute_loss(batch, step)`` returns the loss and scalars to log. The state file
    at ``state_path`` is rewritten every ``config.checkpoint_every`` steps and holds
    the last good state: a non-finite loss, weight or optimizer moment stops training
    with ``TrainingDiverged``. Only finite state is written, and a state counts as good
    only once the next step's loss, computed from exactly its weights, is finite
    (weights can be finite and still useless, e.g. 1e19): if that loss is not, the file
    is rolled back to the previous good state, so resuming from it with a lower
    learning rate can recover. (A copy of the good state is kept in memory for that.)
    """
    rank, world_size = world()
    state_path = Path(state_path)
    inner = model.module if hasattr(model, "module") else model
    start = 0
    lr = run_learning_rate(run_id)
    lr_changes: list[dict[str, Any]] = [] if lr is None else [{"step": 0, "lr": lr}]
    # The good state on disk (None: none yet) and a written state its next loss has not vouched for.
    good: TrainingStateSnapshot | None = None
    unconfirmed: TrainingStateSnapshot | None = None
    if resume and state_path.exists():
        resumed = resume_training_state(state_path, model=inner, optimizer=optimizer, run=run_id)
        start, lr_changes = resumed.step, resumed.lr_changes
        good = snapshot_training_state(step=start, model=inner, optimizer=optimizer, run=run_id,
                                       lr_changes=lr_changes)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
    data = MemoryCachedDataset(dataset)
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
            indices = batch_indices(step, dataset_size=len(data), batch_size=config.batch_size,
                                    seed=config.seed, rank=rank, world_size=world_size)
            batch = default_collate([data[i] for i in indices])
            if config.augment:
                batch = random_hflip(batch, torch.Generator().manual_seed(config.seed * 7919 + step))
            loss, losses = compute_loss(batch, step)
            if not torch.isfinite(loss):  # NaN, +Inf and -Inf alike
                raise diverged(f"loss became {loss.item()}", step)
            if unconfirmed is not None:  # this finite loss came from its weights: it is good
                good, unconfirmed = unconfirmed, None
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                # Gradient-ascent groups (Lagrange multipliers) are not clipped with the model.
                torch.nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups if not g.get("maximize") for p in g["params"]],
                    config.grad_clip)
            optimizer.step()
            done = step + 1
            status = " ".join(f"{k}={v:.4g}" for k, v in losses.items())
            if evaluate is not None and (done % config.eval_every == 0 or done == config.steps):
                result = evaluate(done)
                evaluations.append({"step": done, **result})
                model.train()
                status += " | " + " ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float))
            if done % config.checkpoint_every == 0 or done == config.steps:
                snapshot = snapshot_training_state(step=done, model=inner, optimizer=optimizer, run=run_id,
                                                   lr_changes=lr_changes)
                bad = first_non_finite(snapshot.tensors)
                if bad is not None:
                    raise diverged(f"'{bad}' became NaN or Inf with a finite loss", step)
                if rank == 0:  # written now, so a killed run resumes from here
                    write_training_state(state_path, snapshot)
                unconfirmed = snapshot
            advance(1, status)
    return TrainResult(steps=config.steps, resumed_from=start, last_losses=losses, evaluations=evaluations,
                       lr_changes=lr_changes)


def maybe_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """Wrap in DistributedDataParallel when running under ``torchrun``."""
    if world()[1] == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model)


def adamw(params: Any, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def resume_state_path(out: str | os.PathLike) -> Path:
    """Where a run writing ``out`` keeps its resumable state (next to the output)."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".resume.safetensors")
