"""Engine registry: the names users pass to ``--engine``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.errors import MtlCompressError
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.shared_engine import SharedEngine

ENGINES = ("shared", "dense")


def make_engine(bundle: Bundle, kind: str, tasks: Sequence[str] | None = None,
                device: str | torch.device = "cpu") -> SharedEngine | DenseEngine:
    """``"shared"``: real shared computation; ``"dense"``: the simulated reference.

    A backbone the shared engine cannot share (``BackboneConfig.dense_path_reason``,
    e.g. qk-norm blocks) runs by the dense path whichever engine is asked for."""
    if kind == "dense" or (kind == "shared" and bundle.backbone.dense_path_reason):
        return DenseEngine(bundle, tasks, device)
    if kind == "shared":
        return SharedEngine(bundle, tasks, device)
    raise MtlCompressError(f"unknown engine '{kind}'; choose from {', '.join(ENGINES)}")
