"""Which device a command runs on: the one parser of ``--device`` / ``device=`` that
training, evaluation and the runtime engines share.

``auto`` is CUDA when a GPU is present, else the CPU (``mps`` is only used when asked
for: not every operation the runtime needs exists there). Under ``torchrun`` each
process takes the GPU its ``LOCAL_RANK`` names, so ``cuda`` and ``auto`` mean "my GPU".
"""

from __future__ import annotations

import os

import torch

from mtlcompress.errors import MtlCompressError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def _unknown(device: str) -> MtlCompressError:
    return MtlCompressError(f"unknown device '{device}'; use {DEVICE_CHOICES}")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def parse_device(device: str | torch.device) -> torch.device:
    """The device named by ``device`` without checking this machine has it (``auto``
    already resolved); an unknown name is a one-line ``MtlCompressError``."""
    if isinstance(device, torch.device):
        return device
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name in ("cpu", "cuda", "mps"):
        return torch.device(name)
    if name.startswith("cuda:") and name[5:].isdigit():
        return torch.device("cuda", int(name[5:]))
    raise _unknown(device)


def resolve_device(device: str | torch.device = "auto", *, local_rank: int | None = None) -> torch.device:
    """``device`` as a ``torch.device`` this machine has, or one clear error.

    ``local_rank`` (default: ``$LOCAL_RANK`` under ``torchrun``) picks the GPU of an
    unnumbered ``cuda``/``auto``; an explicit ``cuda:N`` is kept as given.
    """
    resolved = parse_device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise MtlCompressError(f"--device {device} was asked for but no CUDA GPU is available; "
                                   "use --device cpu (or auto)")
        if resolved.index is None:
            if local_rank is None and "LOCAL_RANK" in os.environ:
                local_rank = int(os.environ["LOCAL_RANK"])
            resolved = torch.device("cuda", local_rank or 0)
        if resolved.index >= torch.cuda.device_count():
            raise MtlCompressError(f"--device {resolved} was asked for but this machine has "
                                   f"{torch.cuda.device_count()} CUDA GPU(s)")
    elif resolved.type == "mps" and not mps_available():
        raise MtlCompressError("--device mps was asked for but the MPS backend is not available here")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise _unknown(str(device))
    return resolved
