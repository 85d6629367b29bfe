"""The colour maps task registrations draw predictions with."""

from __future__ import annotations

import numpy as np

from mtlcompress.tasks.colormaps import class_palette, viridis


def test_palette_and_colour_map_are_fixed_and_distinct():
    palette = class_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[0].tolist() == [0, 0, 0] and palette[1].tolist() == [128, 0, 0]
    assert len({tuple(c) for c in palette}) == 256
    ramp = viridis(np.linspace(0, 1, 256))
    assert ramp[0].tolist() == [68, 1, 84] and ramp[-1].tolist() == [253, 231, 37]
    assert np.all(np.diff(ramp.astype(int).sum(axis=1)[::32]) > 0)  # gets brighter
