"""mtlcompress: share computation between single-task vision transformers."""

from mtlcompress.errors import MtlCompressError

__version__ = "0.1.0"

__all__ = ["MtlCompressError", "__version__"]
