"""Reading inputs for ``run``: images, folders, video frame folders, the pixel limit
and 16-bit images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcompress.errors import MtlCompressError
from mtlcompress.io.images import find_inputs, read_image, read_images


def _png(path, mode: str = "RGB", size: tuple[int, int] = (32, 32), value: int = 128):
    Image.new(mode, size, value if mode in ("L", "P") else (value,) * len(mode)).save(path)
    return path


def test_rgb_image_of_the_right_size_reads_without_warnings(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    tensor, warnings = read_image(tmp_path / "a.png", 32)
    assert warnings == []
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert torch.allclose(tensor, torch.from_numpy(array).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("mode,size,expected", [
    ("L", (32, 32), ["converted L to RGB"]),
    ("RGBA", (32, 32), ["converted RGBA to RGB"]),
    ("RGB", (45, 21), ["resized 45x21 to 32x32"]),
    ("L", (17, 17), ["converted L to RGB", "resized 17x17 to 32x32"]),
])
def test_grey_rgba_and_odd_sizes_are_converted_with_a_warning(tmp_path, mode, size, expected):
    path = _png(tmp_path / "odd.png", mode, size, value=200)
    tensor, warnings = read_image(path, 32)
    assert tensor.shape == (3, 32, 32)
    assert torch.allclose(tensor, torch.full_like(tensor, 200 / 255), atol=1 / 255)
    assert len(warnings) == len(expected)
    assert all(w.startswith("odd.png: ") and e in w for w, e in zip(warnings, expected))


def test_jpeg_reads(tmp_path):
    Image.new("RGB", (32, 32), (10, 200, 30)).save(tmp_path / "x.jpg", quality=95)
    batch, warnings = read_images([tmp_path / "x.jpg", tmp_path / "x.jpg"], 32)
    assert batch.shape == (2, 3, 32, 32) and warnings == []
    assert abs(float(batch[0, 1].mean()) - 200 / 255) < 0.02


def test_unreadable_and_missing_files_are_clear_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(MtlCompressError, match=r"broken.png: cannot read image"):
        read_image(tmp_path / "broken.png", 32)
    with pytest.raises(MtlCompressError, match="no such image file"):
        read_image(tmp_path / "missing.png", 32)
    with pytest.raises(MtlCompressError, match="no such file or folder"):
        find_inputs([tmp_path / "missing.png"])
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(MtlCompressError, match="not a PNG or JPEG"):
        find_inputs([tmp_path / "notes.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MtlCompressError, match="holds no PNG or JPEG"):
        find_inputs([tmp_path / "empty"])


def test_folders_expand_to_images_or_to_one_video_in_name_order(tmp_path):
    clip = tmp_path / "clip"
    clip.mkdir()
    for name in ("f10.png", "f02.png", "f01.jpg"):
        _png(clip / name)
    (clip / "readme.txt").write_text("ignored")
    single = _png(tmp_path / "single.png")
    images = find_inputs([clip, single])
    assert [m.name for m in images] == ["f01", "f02", "f10", "single"]
    assert not any(m.video for m in images)
    videos = find_inputs([clip, single], video=True)
    assert [(m.name, m.video) for m in videos] == [("clip", True), ("single", False)]
    assert [p.name for p in videos[0].frames] == ["f01.jpg", "f02.png", "f10.png"]
    with pytest.raises(MtlCompressError, match="named single"):
        find_inputs([single, single])
