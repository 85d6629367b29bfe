"""Thinning binary masks to one-pixel-wide curves (Guo & Hall 1989, algorithm A1).

Shared by the PASCAL-Context edge labels (the references thin label boundaries with
``skimage.morphology.thin``, which runs this algorithm) and by the BSDS-style edge
metric, which thins each thresholded prediction before matching, as the BSDS
benchmark's ``bwmorph(..., 'thin', inf)`` does.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["thin"]


def _thin_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables of Guo & Hall's algorithm A1, indexed by an 8-neighbour code.

    Bit k of the code is neighbour x_{k+1}, counter-clockwise from east:
    x1=E, x2=NE, x3=N, x4=NW, x5=W, x6=SW, x7=S, x8=SE.
    """
    x = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(bool)
    crossings = sum((~x[:, i] & (x[:, i + 1] | x[:, (i + 2) % 8])).astype(int) for i in (0, 2, 4, 6))
    n1 = sum((x[:, k - 1] | x[:, k]).astype(int) for k in (1, 3, 5, 7))
    n2 = sum((x[:, k] | x[:, (k + 1) % 8]).astype(int) for k in (1, 3, 5, 7))
    keeps_shape = (crossings == 1) & np.isin(np.minimum(n1, n2), (2, 3))
    first = keeps_shape & ~((x[:, 1] | x[:, 2] | ~x[:, 7]) & x[:, 0])
    second = keeps_shape & ~((x[:, 5] | x[:, 6] | ~x[:, 3]) & x[:, 4])
    return first, second


_THIN_FIRST, _THIN_SECOND = _thin_tables()
_NEIGHBOUR_WEIGHTS = np.array([[8, 4, 2], [16, 0, 1], [32, 64, 128]], dtype=np.int32)


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a boolean mask to one-pixel-wide curves, keeping its connectivity."""
    skeleton = np.asarray(mask, dtype=bool).copy()
    while True:
        before = int(skeleton.sum())
        for table in (_THIN_FIRST, _THIN_SECOND):
            code = ndimage.correlate(skeleton.astype(np.int32), _NEIGHBOUR_WEIGHTS, mode="constant", cval=0)
            skeleton &= ~table[code]
        if int(skeleton.sum()) == before:
            return skeleton
