"""Engine registry: the names users pass to ``--engine``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.errors import MtlCompressError
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.graphed_images import GRAPH_MODES
from mtlcompress.runtime.shared_engine import SharedEngine

ENGINES = ("shared", "dense")


def make_engine(bundle: Bundle, kind: str, tasks: Sequence[str] | None = None,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                graphs: str = "off") -> SharedEngine | DenseEngine:
    """``"shared"``: real shared computation; ``"dense"``: the simulated reference.

    The engine computes in ``dtype`` (the bundle is cast once, ``Bundle.cast``) and
    expects inputs in it; fp32 by default, whatever the bundle stores, so callers that
    pass fp32 images work with 16-bit bundles (``BundleRunner`` handles precision).

    A backbone the shared engine cannot share (``BackboneConfig.dense_path_reason``,
    e.g. qk-norm blocks) runs by the dense path whichever engine is asked for.

    ``graphs``: the shared engine's static-shape image path (``SharedEngine``'s option:
    ``"off"``, ``"auto"``, ``"on"``); the dense engine has none."""
    if graphs not in GRAPH_MODES:
        raise MtlCompressError(f"unknown graphs mode '{graphs}'; choose from {', '.join(GRAPH_MODES)}")
    bundle = bundle.cast(dtype)
    if kind == "dense" or (kind == "shared" and bundle.backbone.dense_path_reason):
        return DenseEngine(bundle, tasks, device)
    if kind == "shared":
        return SharedEngine(bundle, tasks, device, graphs=graphs)
    raise MtlCompressError(f"unknown engine '{kind}'; choose from {', '.join(ENGINES)}")
