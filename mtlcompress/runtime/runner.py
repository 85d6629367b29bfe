"""The Python entry point to a bundle file: read and verify it once, build one engine,
and run that engine for every ``predict`` and ``stream`` call.

    model = mtlcompress.load("bundle.safetensors")
    outputs = model.predict(images)                 # {task: [B, C, H, W]}
    for frame in model.stream(frames, keyframe_every=16): ...

Precision: the engine computes in one dtype, ``fp32``, ``bf16`` or ``fp16``; the weights
are cast once (``Bundle.cast``), every input is cast on the way in and every output
comes back as fp32. ``"auto"`` (the default) is fp32 on a CPU, whatever the bundle
stores (16 bits only pay off on CPUs with bf16/fp16 matrix instructions), and the
bundle's own stored dtype on a GPU.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.bundle.format import SHORT_DTYPE_NAMES, load_bundle, storage_dtype
from mtlcompress.errors import MtlCompressError
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.devices import resolve_device
from mtlcompress.runtime.engines import make_engine
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.runtime.results import FrameResult
from mtlcompress.runtime.shared_engine import SharedEngine

PRECISIONS = ("auto", *SHORT_DTYPE_NAMES)


def resolve_precision(precision: str, bundle: Bundle, device: str | torch.device = "cpu") -> str:
    """The compute dtype's short name (``fp32``, ``bf16``, ``fp16``) for a ``precision``
    choice; ``"auto"``: fp32 on CPU, the bundle's stored dtype on a GPU."""
    if precision not in PRECISIONS:
        raise MtlCompressError(f"unknown precision '{precision}'; choose from {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cpu":
        return "fp32"
    return next(short for short, full in SHORT_DTYPE_NAMES.items() if storage_dtype(full) == bundle.dtype)


class BundleRunner:
    """A bundle and the one engine that runs it (built here, reused by every call: an
    engine builds each task's model and sparse operands, and keeps path statistics
    and stream memory that later calls benefit from).

    Args:
        bundle: the plain-data bundle (``load_bundle`` or ``Bundle.from_checkpoints``).
        engine: ``"shared"`` (real shared computation) or ``"dense"`` (the reference).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"`` (CUDA when present).
        tasks: tasks to return (default: all); the base task always runs.
        precision: compute dtype, ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (module doc).
        graphs: the shared engine's static image path, ``"off"``, ``"auto"`` (CUDA graphs
            where possible) or ``"on"`` (``SharedEngine``).
    """

    def __init__(self, bundle: Bundle, engine: str = "shared", device: str | torch.device = "cpu",
                 tasks: Sequence[str] | None = None, precision: str = "auto", graphs: str = "off") -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, bundle, self.device)
        self.dtype = storage_dtype(self.precision)
        self.bundle = bundle
        self.engine: SharedEngine | DenseEngine = make_engine(bundle, engine, tasks=tasks, device=self.device,
                                                              dtype=self.dtype, graphs=graphs)

    @property
    def tasks(self) -> list[str]:
        """The tasks every call returns, in bundle order."""
        return list(self.engine.tasks)

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw fp32 outputs ``{task: [B, C, H, W]}`` for images ``[B, 3, H, W]`` in [0, 1]."""
        outputs = self.engine.predict(images.to(self.device, self.dtype))
        return {task: out.float() for task, out in outputs.items()}

    def stream(self, frames: Iterable[torch.Tensor], policy: KeyframePolicy | None = None,
               **fields: Any) -> Iterator[FrameResult]:
        """Per-frame results (fp32 outputs) for video frames in order; ``policy`` or
        ``KeyframePolicy``'s fields (``keyframe_every``, ``max_drift``)."""
        cast = (frame.to(self.device, self.dtype) for frame in frames)
        for result in self.engine.stream(cast, policy or KeyframePolicy(**fields)):
            yield dataclasses.replace(result, outputs={t: out.float() for t, out in result.outputs.items()})


def load(path: str | os.PathLike, engine: str = "shared", device: str | torch.device = "cpu",
         tasks: Sequence[str] | None = None, precision: str = "auto", graphs: str = "off") -> BundleRunner:
    """Read and fully verify a bundle file and build its engine, once.

    Args:
        path: a bundle written by ``export_bundle`` / ``mtlcompress export``.
        engine: ``"shared"`` (computes the base once and each sub-task's deltas) or
            ``"dense"`` (every task as its own model: the reference).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"`` (CUDA when present).
        tasks: tasks to return (default: all); the base task always runs.
        precision: compute dtype: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` (fp32
            on CPU, the bundle's stored dtype on a GPU). Outputs are fp32 either way.
        graphs: ``"off"`` (default), ``"auto"`` or ``"on"``: images by the static-shape
            path, captured as CUDA graphs on a GPU (``SharedEngine``).

    Returns:
        A ``BundleRunner``: call ``predict`` and ``stream`` on it.

    Raises:
        BundleError: the file is damaged, edited or of an unknown version (one line).
    """
    return BundleRunner(load_bundle(path), engine=engine, device=device, tasks=tasks, precision=precision,
                        graphs=graphs)
