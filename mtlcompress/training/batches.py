"""The training input pipeline: which samples each rank sees at each step, loaded by
DataLoader workers (pinned memory on CUDA) and split into micro-batches for gradient
accumulation.

Batches are a pure function of (seed, step, rank), so a resumed run sees exactly the
batches an uninterrupted run would have seen. That is why this is a step-indexed batch
sampler and not torch's ``DistributedSampler``: the same even split of each global
batch across ranks, but a resume can start at any step, not only at an epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate


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


class StepBatchSampler(Sampler[list[int]]):
    """This rank's batch for every step from ``start`` to ``steps`` (see ``batch_indices``)."""

    def __init__(self, *, start: int, steps: int, dataset_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.start, self.steps = start, steps
        self.arguments = {"dataset_size": dataset_size, "batch_size": batch_size, "seed": seed,
                          "rank": rank, "world_size": world_size}

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            yield batch_indices(step, **self.arguments)


class MemoryCachedDataset(Dataset):
    """Keeps decoded samples in memory: small datasets are read from disk once (per
    worker process, when DataLoader workers load them)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index not in self._cache:
            self._cache[index] = self.dataset[index]
        return self._cache[index]


def step_loader(dataset: Dataset, sampler: StepBatchSampler, *, workers: int = 0,
                device: torch.device = torch.device("cpu")) -> DataLoader:
    """Batches in step order; ``workers`` processes decode (or generate) samples ahead
    of the GPU, into pinned memory when training on CUDA."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=default_collate,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None)


def micro_batches(batch: dict[str, Any], parts: int) -> list[tuple[dict[str, Any], float]]:
    """``batch`` split into at most ``parts`` micro-batches, each with its share of the
    samples (the weight of its mean loss, so accumulated gradients equal one big batch's)."""
    size = len(batch["image"])
    bounds = torch.arange(size).tensor_split(min(parts, size))
    out = []
    for chunk in bounds:
        start, stop = int(chunk[0]), int(chunk[-1]) + 1
        micro = {k: v[start:stop] if isinstance(v, torch.Tensor) and v.dim() > 0 and len(v) == size else v
                 for k, v in batch.items()}
        out.append((micro, (stop - start) / size))
    return out


def batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors to ``device`` (asynchronously from pinned memory on CUDA)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
