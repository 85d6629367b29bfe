"""Engine registry: the names users pass to ``--engine``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from mtlcompress.errors import MtlCompressError

if TYPE_CHECKING:  # the engines import the bundle, which imports this module lazily
    from mtlcompress.bundle.bundle import Bundle
    from mtlcompress.runtime.dense_engine import DenseEngine
    from mtlcompress.runtime.shared_engine import SharedEngine

ENGINES = ("shared", "dense")


def make_engine(bundle: Bundle, kind: str, tasks: Sequence[str] | None = None,
                device: str | torch.device = "cpu") -> SharedEngine | DenseEngine:
    """``"shared"``: real shared computation; ``"dense"``: the simulated reference."""
    if kind == "dense":
        from mtlcompress.runtime.dense_engine import DenseEngine

        return DenseEngine(bundle, tasks, device)
    if kind == "shared":
        from mtlcompress.runtime.shared_engine import SharedEngine

        return SharedEngine(bundle, tasks, device)
    raise MtlCompressError(f"unknown engine '{kind}'; choose from {', '.join(ENGINES)}")
