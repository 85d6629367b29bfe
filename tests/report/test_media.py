"""Writing viewable predictions (each task in its registered colour map)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcompress.report.media import overview_image, prediction_image, resize_raw, save_predictions
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


def test_overview_is_the_photo_then_each_task_png_side_by_side(tmp_path):
    torch.manual_seed(0)
    photo = np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    raw = {"semseg": torch.randn(4, 30, 45), "depth": torch.rand(1, 30, 45), "edges": torch.randn(1, 30, 45)}
    written = save_predictions(tmp_path / "img", raw, photo=photo)
    assert (tmp_path / "img" / "overview.png") in written
    with Image.open(tmp_path / "img" / "overview.png") as overview:
        overview = np.asarray(overview.convert("RGB"))
    assert overview.shape[1] == 45 * 4 and overview.shape[0] > 30  # a caption strip under the panels
    np.testing.assert_array_equal(overview[:30, :45], photo)
    for i, task in enumerate(raw, start=1):
        with Image.open(tmp_path / "img" / f"{task}.png") as png:
            np.testing.assert_array_equal(overview[:30, 45 * i:45 * (i + 1)], np.asarray(png.convert("RGB")))
    strip = overview[30:]
    assert (strip < 128).any(axis=2).any(), "the task names are drawn on the strip"


def test_overview_panels_must_match_the_photo():
    with pytest.raises(ValueError, match="not the photo's"):
        overview_image(np.zeros((8, 8, 3), np.uint8), {"depth": Image.new("RGB", (4, 4))})


def test_resize_raw_interpolates_logits_then_class_maps_take_the_argmax():
    logits = torch.tensor([[[0.0, 4.0]], [[1.0, 0.0]]])  # [C=2, 1, 2]: class 1 left, class 0 right
    wide = resize_raw(logits, (3, 8))
    assert wide.shape == (2, 3, 8)
    ids = wide.argmax(0)
    assert ids[:, :3].eq(1).all() and ids[:, -3:].eq(0).all()  # the border moves smoothly, not in blocks
    same = torch.randn(3, 5, 7)
    assert resize_raw(same, (5, 7)) is same  # the network's size needs no resampling


def test_a_link_at_an_output_file_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "depth.png").symlink_to(victim)
    save_predictions(tmp_path / "img", {"depth": torch.rand(1, 8, 8)})
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "img" / "depth.png").is_symlink()
    assert [p.name for p in (tmp_path / "img").iterdir()] == ["depth.png"]  # no temp files left
