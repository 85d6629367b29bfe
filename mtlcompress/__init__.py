"""mtlcompress: share computation between single-task vision transformers.

``model = mtlcompress.load(path)`` reads and verifies a multi-task bundle and builds
one engine for it; ``model.predict(images)`` / ``model.stream(frames)`` run it.
``load_bundle`` / ``save_bundle`` read and write the plain-data ``Bundle``.

Names are resolved lazily (PEP 562) so that ``import mtlcompress`` and the CLI's
``--version`` do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mtlcompress.version import __version__

if TYPE_CHECKING:
    from mtlcompress.bundle.bundle import Bundle
    from mtlcompress.bundle.format import load_bundle, save_bundle
    from mtlcompress.errors import MtlCompressError
    from mtlcompress.runtime.runner import load

# public name -> module that defines it
_LAZY = {
    "Bundle": "mtlcompress.bundle.bundle",
    "load_bundle": "mtlcompress.bundle.format",
    "save_bundle": "mtlcompress.bundle.format",
    "MtlCompressError": "mtlcompress.errors",
    "load": "mtlcompress.runtime.runner",
}

__all__ = ["Bundle", "MtlCompressError", "__version__", "load", "load_bundle", "save_bundle"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mtlcompress' has no attribute '{name}'")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
