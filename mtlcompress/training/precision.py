"""Mixed precision for training and evaluation: autocast around the forward pass and,
for fp16, a gradient scaler so small gradients do not flush to zero.

Parameters, optimizer moments, gates and the density controller stay fp32 (autocast
only lowers the inputs of matmuls and convolutions), so checkpoints and resumable
state are fp32 whatever ``precision`` a run used.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from mtlcompress.errors import MtlCompressError
from mtlcompress.training.config import PRECISIONS
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise MtlCompressError(f"unknown precision '{precision}'; use {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast to ``precision`` on ``device`` (no-op for fp32)."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 (bf16 has fp32's range and needs none); None otherwise."""
    if check_precision(precision) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
