"""Colour maps that turn a task's decoded prediction into a viewable picture.

Numpy only, so the task registry (which names each task's colour map) stays at the
bottom of the package. Every function takes a prediction as ``[C, H, W]`` (class ids
as ``[H, W]``) and returns uint8 pixels: ``[H, W, 3]`` RGB or ``[H, W]`` grey.
"""

from __future__ import annotations

import numpy as np

# Viridis at 9 evenly spaced stops (matplotlib's table, rounded); interpolated to 256.
_VIRIDIS_STOPS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float64)


def class_palette(count: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved, fixed): ``[count, 3]`` uint8."""
    ids = np.arange(count)
    palette = np.zeros((count, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


def viridis(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to viridis RGB uint8 (``values.shape + (3,)``)."""
    positions = np.clip(np.nan_to_num(values), 0.0, 1.0) * (len(_VIRIDIS_STOPS) - 1)
    low = np.floor(positions).astype(np.int64).clip(0, len(_VIRIDIS_STOPS) - 2)
    frac = (positions - low)[..., None]
    rgb = _VIRIDIS_STOPS[low] * (1 - frac) + _VIRIDIS_STOPS[low + 1] * frac
    return np.round(rgb).astype(np.uint8)


def class_colours(ids: np.ndarray) -> np.ndarray:
    """Class ids ``[H, W]`` in the fixed palette (ids wrap at 256)."""
    return class_palette()[ids.astype(np.int64) % 256]


def viridis_own_range(values: np.ndarray) -> np.ndarray:
    """Channel 0 in viridis, stretched over the map's own range (lowest = dark)."""
    channel = values[0]
    low, high = float(channel.min()), float(channel.max())
    return viridis((channel - low) / max(high - low, 1e-12))


def normals_rgb(normals: np.ndarray) -> np.ndarray:
    """Unit vectors ``[3, H, W]`` as ``(n + 1) / 2`` RGB."""
    rgb = np.clip((normals.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


def grey(values: np.ndarray) -> np.ndarray:
    """Channel 0 in [0, 1] as grey: 0 -> black, 1 -> white."""
    return np.round(np.clip(values[0], 0.0, 1.0) * 255).astype(np.uint8)
