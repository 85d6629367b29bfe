"""Writing viewable predictions (each task in its registered colour map)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mtlcompress.report.media import prediction_image, save_predictions
from mtlcompress.tasks.colormaps import class_palette


def test_each_task_writes_a_png_of_the_right_size_and_mode(tmp_path):
    torch.manual_seed(0)
    raw = {"semseg": torch.randn(5, 24, 16), "depth": torch.rand(1, 24, 16) * 3,
           "normals": torch.randn(3, 24, 16), "edges": torch.randn(1, 24, 16), "saliency": torch.randn(1, 24, 16)}
    written = save_predictions(tmp_path / "img", raw, save_raw=True)
    assert sorted(p.name for p in written) == sorted([f"{t}.png" for t in raw] + [f"{t}.npy" for t in raw])
    modes = {"semseg": "RGB", "depth": "RGB", "normals": "RGB", "edges": "L", "saliency": "L"}
    for task, mode in modes.items():
        with Image.open(tmp_path / "img" / f"{task}.png") as img:
            assert img.size == (16, 24) and img.mode == mode
        np.testing.assert_array_equal(np.load(tmp_path / "img" / f"{task}.npy"), raw[task].numpy())
    seg = np.asarray(Image.open(tmp_path / "img" / "semseg.png"))
    np.testing.assert_array_equal(seg, class_palette()[raw["semseg"].argmax(0).numpy()])
    normals = np.asarray(Image.open(tmp_path / "img" / "normals.png")).astype(float) / 255
    unit = torch.nn.functional.normalize(raw["normals"], dim=0).permute(1, 2, 0).numpy()
    assert np.abs(normals - (unit + 1) / 2).max() <= 1 / 255
    edges = np.asarray(Image.open(tmp_path / "img" / "edges.png")).astype(float) / 255
    assert np.abs(edges - torch.sigmoid(raw["edges"][0]).numpy()).max() <= 1 / 255


def test_depth_uses_the_full_colour_range():
    depth = torch.linspace(0, 5, 64).view(1, 8, 8)
    image = np.asarray(prediction_image("depth", depth))
    assert image[0, 0].tolist() == [68, 1, 84] and image[-1, -1].tolist() == [253, 231, 37]
