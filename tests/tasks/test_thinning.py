"""Thinning visits only pixels whose neighbourhood changed; it must delete exactly what
full-image passes of Guo & Hall's two subiterations delete."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mtlcompress.tasks.thinning import _THIN_FIRST, _THIN_SECOND, thin

_NEIGHBOUR_WEIGHTS = np.array([[8, 4, 2], [16, 0, 1], [32, 64, 128]])  # bit k: x_{k+1}, E first, counter-clockwise


def _thin_by_full_passes(mask: np.ndarray) -> np.ndarray:
    """The plain algorithm: code every pixel of the image in every subiteration."""
    skeleton = mask.copy()
    while True:
        before = skeleton.copy()
        for table in (_THIN_FIRST, _THIN_SECOND):
            skeleton &= ~table[ndimage.correlate(skeleton.astype(int), _NEIGHBOUR_WEIGHTS, mode="constant")]
        if np.array_equal(skeleton, before):
            return skeleton


@pytest.mark.parametrize("seed", range(40))
def test_same_result_as_full_image_passes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 48, size=2)
    # blobs of all sizes, with holes, touching the image border
    smooth = ndimage.gaussian_filter(rng.random((height, width)), rng.uniform(0, 3))
    mask = smooth > np.quantile(smooth, rng.uniform(0.2, 0.8))
    assert np.array_equal(thin(mask), _thin_by_full_passes(mask))


def test_input_is_left_alone_and_blank_masks_stay_blank() -> None:
    mask = np.ones((6, 9), dtype=bool)
    thinned = thin(mask)
    assert mask.all() and 0 < thinned.sum() < mask.sum()
    assert not thin(np.zeros((5, 4), dtype=bool)).any()
