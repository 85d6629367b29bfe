"""Image sizes as ``(height, width)`` in pixels; one number ``n`` means ``n x n``.

The one parser every layer uses (configs, files, dataset loaders, the CLI), so an old
file's single int and a new file's ``[H, W]`` mean the same everywhere. Torch-free, so
the CLI can parse ``--img-size`` without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

from mtlcompress.errors import MtlCompressError

# What callers may pass: an int (square) or two ints (height, width).
SizeLike = Union[int, Sequence[int]]


def image_size(value: SizeLike, what: str = "image size",
               error: type[MtlCompressError] = MtlCompressError) -> tuple[int, int]:
    """``n`` -> ``(n, n)``; ``[H, W]`` or ``(H, W)`` -> ``(H, W)``: positive ints (not bools),
    or one ``error`` line naming ``what``."""
    sides = [value] if isinstance(value, int) else value
    if (isinstance(value, (str, bytes)) or not isinstance(sides, Sequence) or len(sides) not in (1, 2)
            or not all(isinstance(side, int) and not isinstance(side, bool) for side in sides)):
        raise error(f"{what} must be one integer or two (height, width), got {value!r}")
    if not all(side > 0 for side in sides):
        raise error(f"{what} must be positive, got {value!r}")
    return (sides[0], sides[-1])


def describe_image_size(size: tuple[int, int]) -> str:
    """``"64 px"`` for a square size, ``"192x256 px (height x width)"`` otherwise."""
    height, width = size
    return f"{height} px" if height == width else f"{height}x{width} px (height x width)"
