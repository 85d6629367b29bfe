"""Reading dataset files safely: the image pixel limit, 16-bit images, and ``.npy``
labels checked against their image before they are loaded (issue #21.4 and #21.9)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlcompress.data.layouts import open_dataset
from mtlcompress.errors import DataError
from mtlcompress.io import images
from mtlcompress.io.images import ImageTooLargeError

H, W = 8, 12


def _depth_scenes(root: Path) -> Path:
    """Two frames, depth (.npy) and edges (.png) labels, no manifest."""
    for folder in ("images", "depth", "edges", "splits"):
        (root / folder).mkdir(parents=True)
    for stem in ("a", "b"):
        Image.fromarray(np.full((H, W, 3), 100, np.uint8)).save(root / "images" / f"{stem}.png")
        np.save(root / "depth" / f"{stem}.npy", np.full((H, W), 2.0, np.float32))
        Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "edges" / f"{stem}.png")
    (root / "splits" / "train.txt").write_text("a\nb\n")
    return root


def _declare_size(path: Path, width: int, height: int) -> None:
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("shape", [(10**7, 10**7), (10**13, 1, 1)])  # 800 TB and 80 TB, files of 128 bytes
def test_an_npy_label_declaring_a_huge_array_is_refused_before_loading(tmp_path, shape):
    root = _depth_scenes(tmp_path / "d")
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    with open(root / "depth" / "b.npy", "wb") as file:
        np.lib.format.write_array_header_1_0(file, header)
    dataset = open_dataset(root)
    assert dataset[0]["depth"].shape == (1, H, W)
    declared = "x".join(map(str, shape))
    with pytest.raises(DataError, match=rf"b.npy holds a {declared} float64 array, far more than its "
                                        r"12x8 image needs") as caught:
        dataset[1]
    assert "\n" not in str(caught.value)


def test_an_npy_label_slightly_off_keeps_the_precise_size_message(tmp_path):
    root = _depth_scenes(tmp_path / "d")
    np.save(root / "depth" / "b.npy", np.ones((2 * H, 2 * W), np.float32))  # 4x: passes the header check
    with pytest.raises(DataError, match="is 24x16 but its image is 12x8"):
        open_dataset(root)[1]


def test_dataset_images_and_label_pngs_obey_the_pixel_limit(tmp_path, monkeypatch):
    root = _depth_scenes(tmp_path / "d")
    _declare_size(root / "images" / "b.png", 20000, 20000)
    dataset = open_dataset(root, tasks=["depth"])
    with pytest.raises(ImageTooLargeError, match="more than 178956970 pixels"):
        dataset[1]
    monkeypatch.setattr(images, "MAX_PIXELS", H * W - 1)
    with pytest.raises(ImageTooLargeError, match=r"a.png: image is 12x8 \(96 pixels\), over the limit of 95"):
        dataset[0]
    monkeypatch.setattr(images, "MAX_PIXELS", H * W)
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(root / "edges" / "a.png")
    with pytest.raises(ImageTooLargeError, match=r"edges/a.png: image is 12x9"):
        open_dataset(root, tasks=["edges"])[0]


def test_a_16_bit_dataset_image_is_scaled_by_65535(tmp_path):
    root = _depth_scenes(tmp_path / "d")
    Image.fromarray(np.full((H, W), 32768, np.uint16)).save(root / "images" / "a.png")
    image = open_dataset(root)[0]["image"]
    assert image.shape == (3, H, W)
    assert torch.allclose(image, torch.full_like(image, 32768 / 65535))  # was 1.0 (clipped to 255)
