"""Engine registry: the names users pass to ``--engine``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlcompress.errors import MtlCompressError

ENGINES = ("shared", "dense")


def make_engine(bundle, kind: str, tasks: Sequence[str] | None = None, device: str | torch.device = "cpu"):  # noqa: ANN001, ANN201
    if kind == "dense":
        from mtlcompress.runtime.dense_engine import DenseEngine

        return DenseEngine(bundle, tasks, device)
    if kind == "shared":
        from mtlcompress.runtime.shared_engine import SharedEngine

        return SharedEngine(bundle, tasks, device)
    raise MtlCompressError(f"unknown engine '{kind}'; choose from {', '.join(ENGINES)}")
