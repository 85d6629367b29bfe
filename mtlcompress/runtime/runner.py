"""The Python entry point to a bundle file: read and verify it once, build one engine,
and run that engine for every ``predict`` and ``stream`` call.

    model = mtlcompress.load("bundle.safetensors")
    outputs = model.predict(images)                 # {task: [B, C, H, W]}
    for frame in model.stream(frames, keyframe_every=16): ...
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.bundle.format import load_bundle
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.engines import make_engine
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.runtime.results import FrameResult
from mtlcompress.runtime.shared_engine import SharedEngine


class BundleRunner:
    """A bundle and the one engine that runs it (built here, reused by every call: an
    engine builds each task's model and sparse operands, and keeps path statistics
    and stream memory that later calls benefit from).

    Args:
        bundle: the plain-data bundle (``load_bundle`` or ``Bundle.from_checkpoints``).
        engine: ``"shared"`` (real shared computation) or ``"dense"`` (the reference).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        tasks: tasks to return (default: all); the base task always runs.
    """

    def __init__(self, bundle: Bundle, engine: str = "shared", device: str | torch.device = "cpu",
                 tasks: Sequence[str] | None = None) -> None:
        self.bundle = bundle
        self.engine: SharedEngine | DenseEngine = make_engine(bundle, engine, tasks=tasks, device=device)

    @property
    def tasks(self) -> list[str]:
        """The tasks every call returns, in bundle order."""
        return list(self.engine.tasks)

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs ``{task: [B, C, H, W]}`` for images ``[B, 3, H, W]`` in [0, 1]."""
        return self.engine.predict(images)

    def stream(self, frames: Iterable[torch.Tensor], **policy: Any) -> Iterator[FrameResult]:
        """Per-frame results for video frames in order; ``policy`` is ``KeyframePolicy``'s
        fields (``keyframe_every``, ``max_drift``)."""
        return self.engine.stream(frames, KeyframePolicy(**policy))


def load(path: str | os.PathLike, engine: str = "shared", device: str | torch.device = "cpu",
         tasks: Sequence[str] | None = None) -> BundleRunner:
    """Read and fully verify a bundle file and build its engine, once.

    Args:
        path: a bundle written by ``export_bundle`` / ``mtlcompress export``.
        engine: ``"shared"`` (computes the base once and each sub-task's deltas) or
            ``"dense"`` (every task as its own model: the reference).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        tasks: tasks to return (default: all); the base task always runs.

    Returns:
        A ``BundleRunner``: call ``predict`` and ``stream`` on it.

    Raises:
        BundleError: the file is damaged, edited or of an unknown version (one line).
    """
    return BundleRunner(load_bundle(path), engine=engine, device=device, tasks=tasks)
