"""A function of one fixed-shape input, captured once as a CUDA graph and replayed.

PyTorch's recipe (``torch.cuda.graphs``): warm the function up on a side stream (so
lazy initialisation, cuBLAS workspaces and the caching allocator settle outside the
capture), capture one call into a ``torch.cuda.CUDAGraph`` with a static input buffer,
then for every input copy it into that buffer and replay. The outputs are the static
tensors the captured call wrote: the next replay overwrites them, so callers copy what
they keep. The function must not synchronise with the host (no ``.item()``,
``nonzero()``, no branching on tensor values) and must launch the same kernels with the
same shapes on every call.

CUDA only; nothing here runs on a CPU (``CapturedCall`` refuses a CPU input).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mtlcompress.errors import MtlCompressError

__all__ = ["CapturedCall", "cuda_graphs_available"]

WARMUP_CALLS = 3  # PyTorch's examples warm up with three iterations


def cuda_graphs_available(device: torch.device | str) -> bool:
    """Whether ``device`` is a CUDA device this process can capture graphs on."""
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


class CapturedCall:
    """``fn(input)`` captured as a CUDA graph for inputs shaped like ``example``.

    Args:
        fn: the function; called ``warmup`` times on a side stream, then once under
            capture, always with the same static input tensor and under ``no_grad``.
        example: an input of the shape, dtype and (CUDA) device every later call has.
        warmup: calls before the capture.
    """

    def __init__(self, fn: Callable[[Tensor], Any], example: Tensor, warmup: int = WARMUP_CALLS) -> None:
        if not cuda_graphs_available(example.device):
            raise MtlCompressError(f"CUDA graphs need a CUDA device, got {example.device}")
        self.input = example.detach().clone()
        device = example.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(warmup):
                fn(self.input)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.output = fn(self.input)

    def __call__(self, x: Tensor) -> Any:
        """Replay on ``x`` (copied into the static input); returns the static outputs."""
        if x.shape != self.input.shape or x.dtype != self.input.dtype:
            raise MtlCompressError(f"captured for {tuple(self.input.shape)} {self.input.dtype}, got "
                                   f"{tuple(x.shape)} {x.dtype}")
        self.input.copy_(x)
        self.graph.replay()
        return self.output
