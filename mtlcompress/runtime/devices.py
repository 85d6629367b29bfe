"""The one check of a ``--device`` / ``device=`` value, shared by the CLI and the engines."""

from __future__ import annotations

import torch

from mtlcompress.errors import MtlCompressError


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a ``torch.device``; a clear error for
    an unknown name or a CUDA device this machine does not have."""
    if isinstance(device, torch.device):
        resolved = device
    elif device in ("cpu", "cuda") or device.startswith("cuda:"):
        try:
            resolved = torch.device(device)
        except RuntimeError:
            raise MtlCompressError(f"unknown device '{device}'; use cpu or cuda") from None
    else:
        raise MtlCompressError(f"unknown device '{device}'; use cpu or cuda")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise MtlCompressError("--device cuda was asked for but no CUDA GPU is available")
    return resolved
