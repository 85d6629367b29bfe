"""The colour maps task registrations draw predictions with."""

from __future__ import annotations

import numpy as np

from mtlcompress.tasks.colormaps import class_palette, viridis, viridis_own_range


def test_palette_and_colour_map_are_fixed_and_distinct():
    palette = class_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert len({tuple(c) for c in palette}) == 256
    ramp = viridis(np.linspace(0, 1, 256))
    assert ramp[0].tolist() == [68, 1, 84] and ramp[-1].tolist() == [253, 231, 37]
    assert np.all(np.diff(ramp.astype(int).sum(axis=1)[::32]) > 0)  # gets brighter


def test_depth_is_stretched_over_its_own_range_not_from_zero():
    depth = np.linspace(2.0, 5.0, 64).reshape(1, 8, 8)
    image = viridis_own_range(depth)
    assert image[0, 0].tolist() == [68, 1, 84] and image[-1, -1].tolist() == [253, 231, 37]
    flat = viridis_own_range(np.full((1, 4, 4), 3.0))  # a constant map is one colour, not NaN
    assert (flat == flat[0, 0]).all()
