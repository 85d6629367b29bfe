"""Thinning binary masks to one-pixel-wide curves (Guo & Hall 1989, algorithm A1).

Shared by the PASCAL-Context edge labels (the references thin label boundaries with
``skimage.morphology.thin``, which runs this algorithm) and by the BSDS-style edge
metric, which thins each thresholded prediction before matching, as the BSDS
benchmark's ``bwmorph(..., 'thin', inf)`` does.
"""

from __future__ import annotations

import numpy as np

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


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a boolean mask to one-pixel-wide curves, keeping its connectivity.

    A pixel's fate under a table depends only on its 8 neighbours, so after a first
    pass over all set pixels each subiteration looks only at neighbours of pixels
    deleted since that table last ran: the cost follows the deletions, not the number
    of iterations times the image. Deletions within a subiteration are simultaneous,
    as in the algorithm, so the result is the same as full-image passes.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1)  # neighbours outside the image are unset
    width = padded.shape[1]
    pixels = padded.reshape(-1)
    # flat offsets of x1..x8 (E, NE, N, NW, W, SW, S, SE); bit k of a code is x_{k+1}
    offsets = np.array([1, 1 - width, -width, -width - 1, -1, width - 1, width, width + 1])
    # per table, the pixels whose neighbourhood changed since that table last ran
    pending = np.stack([pixels, pixels])
    step = 0
    while pending.any():
        here = step % 2
        step += 1
        candidates = np.flatnonzero(pending[here] & pixels)
        pending[here] = False
        gone = candidates[(_THIN_FIRST, _THIN_SECOND)[here][_neighbour_codes(pixels, candidates, offsets)]]
        pixels[gone] = False
        pending[:, (gone[:, None] + offsets).reshape(-1)] = True
    return padded[1:-1, 1:-1].copy()


def _neighbour_codes(pixels: np.ndarray, at: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """8-neighbour codes (bit k set when neighbour x_{k+1} is set) of flat positions ``at``."""
    codes = np.zeros(len(at), dtype=np.int32)
    for bit, offset in enumerate(offsets):
        codes |= pixels[at + offset].astype(np.int32) << bit
    return codes
