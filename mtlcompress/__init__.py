"""mtlcompress: share computation between single-task vision transformers.

``mtlcompress.Bundle.load(path)`` / ``bundle.predict(images)`` / ``bundle.stream(frames)``
is the Python entry point to a packed multi-task bundle.
"""

__version__ = "0.1.0"

from mtlcompress.bundle.bundle import Bundle  # noqa: E402 - needs __version__ defined first
from mtlcompress.errors import MtlCompressError  # noqa: E402

__all__ = ["Bundle", "MtlCompressError", "__version__"]
