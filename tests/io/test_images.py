"""Reading inputs for ``run``: images, folders, video frame folders, the pixel limit
and 16-bit images."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcompress.errors import MtlCompressError
from mtlcompress.io import images
from mtlcompress.io.images import ImageTooLargeError, find_inputs, read_image, read_images


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


# -- the pixel limit and 16-bit images (issue #21.4) --------------------------------------
def _declare_size(path, width: int, height: int):
    """Patch a PNG's IHDR to declare ``width`` x ``height``: a tiny file claiming a huge image."""
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_a_tiny_png_declaring_20000_squared_pixels_is_one_clear_error(tmp_path):
    bomb = _declare_size(_png(tmp_path / "bomb.png", size=(1, 1)), 20000, 20000)
    assert bomb.stat().st_size < 100
    with pytest.raises(ImageTooLargeError, match=r"more than 178956970 pixels, over the limit of 50000000 pixels; "
                                                 "if it is genuine, raise the limit.*--max-pixels") as caught:
        read_image(bomb, 32)
    assert "\n" not in str(caught.value) and isinstance(caught.value, MtlCompressError)


def test_the_limit_counts_declared_pixels_and_can_be_raised(tmp_path):
    path = _png(tmp_path / "a.png", size=(40, 30))
    with pytest.raises(ImageTooLargeError, match="40x30 .* limit of 1199 pixels"):
        read_image(path, 32, max_pixels=1199)
    tensor, _ = read_image(path, 32, max_pixels=1200)
    assert tensor.shape == (3, 32, 32)


def test_the_module_default_is_the_limit_when_none_is_passed(tmp_path, monkeypatch):
    path = _png(tmp_path / "a.png", size=(40, 30))
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(ImageTooLargeError, match="limit of 1000 pixels"):
        read_image(path, 32)
    assert images.MAX_PIXELS < 12000 * 12000  # a 12000x12000 scan (~700 MB decoded) is refused by default


def test_pillows_own_bomb_guard_is_a_clear_error_even_past_our_limit(tmp_path):
    bomb = _declare_size(_png(tmp_path / "bomb.png", size=(1, 1)), 20000, 20000)
    with pytest.raises(ImageTooLargeError, match="over the limit of 178956970 pixels; that is Pillow's decompression"):
        read_image(bomb, 32, max_pixels=10**12)


def test_a_declared_size_under_pillows_guard_but_over_ours_names_the_size(tmp_path):
    big = _declare_size(_png(tmp_path / "big.png", size=(1, 1)), 12000, 12000)
    with pytest.raises(ImageTooLargeError, match=r"12000x12000 \(144000000 pixels\), over the limit of 50000000"):
        read_image(big, 32)


def test_16_bit_greyscale_is_scaled_by_65535_not_clipped(tmp_path):
    values = np.array([[0, 16384], [32768, 65535]], dtype=np.uint16).repeat(16, 0).repeat(16, 1)
    Image.fromarray(values).save(tmp_path / "deep.png")
    tensor, warnings = read_image(tmp_path / "deep.png", 32)
    expected = torch.from_numpy(values.astype(np.float32) / 65535)
    assert torch.allclose(tensor, expected.expand(3, 32, 32), atol=1e-6)
    assert any("converted I;16 to RGB" in w for w in warnings)
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "half.png")
    resized, _ = read_image(tmp_path / "half.png", 32)
    assert abs(float(resized.mean()) - 0.5) < 1e-3  # was 1.0: values clipped to 255 then / 255


def test_duplicate_names_over_thousands_of_inputs_are_all_reported(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, names in ((first, range(0, 1500)), (second, range(1497, 3000))):
        folder.mkdir()
        for i in names:
            (folder / f"{i:05d}.png").touch()
    with pytest.raises(MtlCompressError, match="several inputs are named 01497.png, 01498.png, 01499.png; "):
        find_inputs([first, second])
    assert len(find_inputs([first])) == 1500
