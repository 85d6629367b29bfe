"""Reading image files safely: the image suffixes mtlcompress accepts, a pixel limit
checked before any pixel is decoded, 16-bit images scaled to [0, 1], and the inputs of
``mtlcompress run`` (files, folders, video frame folders).

Everything that reads a picture (``run``, ``bench``, the dataset loaders) goes through
``open_image``, so one limit guards them all. Reading never prints: adjustments a user
should know about (resizing, colour conversion) come back as warning strings.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mtlcompress.errors import MtlCompressError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")

# The default pixel limit (width x height). 50 MP covers every camera photo short of
# medium format, while a declared 20000x20000 header (400 MP, a few bytes on disk) or a
# 12000x12000 scan (~700 MB once decoded) is refused. Set this, or pass ``max_pixels``
# (``mtlcompress run --max-pixels``), to read bigger images on purpose.
MAX_PIXELS = 50_000_000

_RAISE_HINT = ("if it is genuine, raise the limit (mtlcompress run --max-pixels, or "
               "mtlcompress.io.images.MAX_PIXELS)")

# Pillow opens 16-bit greyscale PNGs in these modes; their values run to 65535, not 255.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageTooLargeError(MtlCompressError):
    """An image declares more pixels than the limit allows."""


@contextmanager
def open_image(path: str | os.PathLike, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """``Image.open`` that refuses images over ``max_pixels`` (default ``MAX_PIXELS``)
    from the header alone, before decoding: a tiny file can declare a huge image."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below decides
            img = Image.open(path)
    except Image.DecompressionBombError:  # not an OSError; Pillow refuses over 2x MAX_IMAGE_PIXELS itself
        bomb = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        fix = _RAISE_HINT if limit < bomb else "that is Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS)"
        raise ImageTooLargeError(f"{path}: image declares more than {bomb} pixels, over the limit of "
                                 f"{min(limit, bomb)} pixels; {fix}") from None
    with img:
        width, height = img.size
        if width * height > limit:
            raise ImageTooLargeError(f"{path}: image is {width}x{height} ({width * height} pixels), over the "
                                     f"limit of {limit} pixels; {_RAISE_HINT}")
        yield img


def rgb_array(img: Image.Image) -> np.ndarray:
    """float32 ``[H, W, 3]`` in [0, 1]; 16-bit images are scaled by 65535, not clipped."""
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0.0, 1.0)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def read_image(path: str | os.PathLike, size: int, max_pixels: int | None = None
               ) -> tuple[torch.Tensor, list[str]]:
    """``[3, size, size]`` float in [0, 1] and the warnings about what was adjusted."""
    path = Path(path)
    notes: list[str] = []
    try:
        with open_image(path, max_pixels) as img:
            img.load()
            if img.mode != "RGB":
                notes.append(f"{path.name}: converted {img.mode} to RGB")
                if img.mode in _SIXTEEN_BIT_MODES:  # resize the 16-bit values, not an 8-bit copy
                    img = Image.fromarray(rgb_array(img)[:, :, 0])  # mode "F"
                else:
                    img = img.convert("RGB")
            if img.size != (size, size):
                notes.append(f"{path.name}: resized {img.size[0]}x{img.size[1]} to {size}x{size} "
                             "(the bundle's image size)")
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            if img.mode == "F":
                array = np.repeat(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)[:, :, None], 3, axis=2)
            else:
                array = np.asarray(img, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise MtlCompressError(f"{path}: no such image file") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise MtlCompressError(f"{path}: cannot read image ({exc}); use a valid PNG or JPEG") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), notes


def read_images(paths: Sequence[str | os.PathLike], size: int, max_pixels: int | None = None
                ) -> tuple[torch.Tensor, list[str]]:
    """A batch ``[N, 3, size, size]`` and all warnings."""
    tensors, notes = [], []
    for path in paths:
        tensor, adjusted = read_image(path, size, max_pixels)
        tensors.append(tensor)
        notes.extend(adjusted)
    return torch.stack(tensors), notes


@dataclass(frozen=True)
class MediaInput:
    """One thing to predict on: a single image, or a video given as ordered frames."""

    name: str
    frames: tuple[Path, ...]
    video: bool = False


def find_inputs(paths: Sequence[str | os.PathLike], video: bool = False) -> list[MediaInput]:
    """Expand files and folders into inputs; with ``video`` a folder is one clip.

    Folders hold images (PNG/JPEG, read in sorted name order); other files in them
    are ignored. Missing paths, empty folders and non-image files are errors, and so
    are two inputs of the same name (their outputs would collide).
    """
    inputs: list[MediaInput] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            frames = tuple(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
            if not frames:
                raise MtlCompressError(f"{path}: folder holds no PNG or JPEG images")
            if video:
                inputs.append(MediaInput(path.name, frames, video=True))
            else:
                inputs.extend(MediaInput(p.stem, (p,)) for p in frames)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise MtlCompressError(f"{path}: not a PNG or JPEG image (video must be a folder of frames)")
            inputs.append(MediaInput(path.stem, (path,)))
        else:
            raise MtlCompressError(f"{path}: no such file or folder")
    counts = Counter(i.name for i in inputs)  # one pass: 12,000 inputs must not cost 12,000 list scans
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise MtlCompressError(f"several inputs are named {', '.join(duplicates)}; their outputs would collide "
                               "(rename them or run them separately)")
    return inputs
