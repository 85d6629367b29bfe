"""Where training runs: the device of this process and, under ``torchrun``, the process
group (NCCL between GPUs, gloo on CPUs) and the DDP wrapper.

One process per GPU: ``torchrun`` sets ``LOCAL_RANK``, which picks the process's GPU
(``--device auto`` or ``cuda``). Multi-node runs use torchrun's own rendezvous; nothing
here depends on how many nodes there are.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from mtlcompress.devices import resolve_device


def _wants_process_group() -> bool:
    return dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> None:
    """Join ``torchrun``'s process group with the backend that suits ``device`` (no-op
    outside torchrun or when already joined)."""
    if not _wants_process_group():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside ``torchrun``.

    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the process group is
    created on first use, so every training entry point runs unchanged.
    """
    if _wants_process_group():
        init_distributed(resolve_device("auto"))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wait_for_all_ranks() -> None:
    """Block until every ``torchrun`` rank gets here (no-op outside torchrun): after
    rank 0 writes a file that every rank reads next."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def training_device(device: str | torch.device = "auto") -> torch.device:
    """This process's device for ``--device`` (its own GPU under torchrun), with the
    process group joined on it."""
    resolved = resolve_device(device)
    init_distributed(resolved)
    return resolved


def to_device(*modules: torch.nn.Module, device: torch.device) -> None:
    """Move modules in place (their parameters stay the same objects, so an optimizer
    built on them stays valid)."""
    for module in modules:
        module.to(device)


def maybe_ddp(model: torch.nn.Module, device: torch.device | None = None) -> torch.nn.Module:
    """Move ``model`` to ``device`` and wrap it in DistributedDataParallel under ``torchrun``."""
    device = device if device is not None else training_device("auto")
    model.to(device)
    if world()[1] == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
