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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mtlcompress.errors import MtlCompressError
from mtlcompress.io.image_size import SizeLike, image_size
from mtlcompress.io.limits import MAX_PIXELS as DEFAULT_MAX_PIXELS
from mtlcompress.io.output_paths import output_names
from mtlcompress.io.video import VIDEO_SUFFIXES

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")

# The pixel limit (width x height). Set this, or pass ``max_pixels`` (``mtlcompress run --max-pixels``), to read bigger
# images on purpose; the default and why it is that size: ``io.limits``.
MAX_PIXELS = DEFAULT_MAX_PIXELS

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


@dataclass(frozen=True)
class Photo:
    """One input picture, seen twice: ``pixels`` is what the network reads (``[3, h, w]``
    float in [0, 1], resized to the bundle's image size ``(h, w)``), ``rgb`` the picture
    at its own size (uint8 ``[H, W, 3]``), which every output map is resized back to.

    The policy is a plain resize, not a letterbox: every pixel of the photo is seen and
    every output pixel maps back onto the photo, at the cost of stretching a photo whose
    aspect differs from the model's (train or import the model at the photos' aspect,
    ``--img-size H W``, to avoid it)."""

    pixels: torch.Tensor
    rgb: np.ndarray
    notes: tuple[str, ...] = ()

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def photo_from_image(img: Image.Image, size: SizeLike, label: str) -> Photo:
    """The network's view and the viewable RGB of a decoded picture; ``label`` names it
    in the notes about what was adjusted (colour conversion, resizing)."""
    notes: list[str] = []
    if img.mode != "RGB":
        notes.append(f"{label}: converted {img.mode} to RGB")
        if img.mode in _SIXTEEN_BIT_MODES:  # resize the 16-bit values, not an 8-bit copy
            img = Image.fromarray(rgb_array(img)[:, :, 0])  # mode "F"
        else:
            img = img.convert("RGB")
    if img.mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        rgb = np.repeat(np.round(grey * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    else:
        rgb = np.asarray(img, dtype=np.uint8)
    height, width = image_size(size)
    if img.size != (width, height):
        notes.append(f"{label}: resized {img.size[0]}x{img.size[1]} to {width}x{height} "
                     "(the bundle's image size, width x height)")
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    if img.mode == "F":
        array = np.repeat(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)[:, :, None], 3, axis=2)
    else:
        array = np.asarray(img, dtype=np.float32) / 255.0
    return Photo(torch.from_numpy(array).permute(2, 0, 1).contiguous(), rgb, tuple(notes))


def read_photo(path: str | os.PathLike, size: SizeLike, max_pixels: int | None = None) -> Photo:
    """Read one image file as a ``Photo``; any problem is one ``MtlCompressError`` line."""
    path = Path(path)
    try:
        with open_image(path, max_pixels) as img:
            img.load()
            return photo_from_image(img, size, path.name)
    except FileNotFoundError:
        raise MtlCompressError(f"{path}: no such image file") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise MtlCompressError(f"{path}: cannot read image ({exc}); use a valid PNG or JPEG") from None


def read_image(path: str | os.PathLike, size: SizeLike, max_pixels: int | None = None
               ) -> tuple[torch.Tensor, list[str]]:
    """``[3, h, w]`` float in [0, 1] (``size`` is one number or (h, w)) and the warnings
    about what was adjusted."""
    photo = read_photo(path, size, max_pixels)
    return photo.pixels, list(photo.notes)


def read_images(paths: Sequence[str | os.PathLike], size: SizeLike, max_pixels: int | None = None
                ) -> tuple[torch.Tensor, list[str]]:
    """A batch ``[N, 3, h, w]`` and all warnings."""
    tensors, notes = [], []
    for path in paths:
        tensor, adjusted = read_image(path, size, max_pixels)
        tensors.append(tensor)
        notes.extend(adjusted)
    return torch.stack(tensors), notes


@dataclass(frozen=True)
class MediaInput:
    """One thing to predict on: a single image, a video given as ordered frames, or a
    video file (``frames`` holds the file itself).

    ``name`` is the input's output folder name and ``frame_names`` those of a frame
    folder's frames, made safe and unique by ``io.output_paths.output_names``.
    """

    name: str
    frames: tuple[Path, ...]
    video: bool = False
    frame_names: tuple[str, ...] = ()

    @property
    def is_video_file(self) -> bool:
        return self.video and len(self.frames) == 1 and self.frames[0].suffix.lower() in VIDEO_SUFFIXES


def find_inputs(paths: Sequence[str | os.PathLike], video: bool = False,
                video_files: bool = False) -> list[MediaInput]:
    """Expand files and folders into inputs; with ``video`` a folder is one clip, and
    with ``video_files`` a video file (``io.video.VIDEO_SUFFIXES``) is one too.

    Folders hold images (PNG/JPEG, read in sorted name order); other files in them
    are ignored. Missing paths, empty folders and unsupported files are errors. Output
    names are the file stems, or whole file names where stems coincide; inputs whose
    names still coincide are an error (their outputs would collide).
    """
    found: list[tuple[str, str, Path | tuple[Path, ...], bool]] = []  # (short name, full name, what, video)
    accepted = "a PNG or JPEG image" + (f" or a video file ({', '.join(VIDEO_SUFFIXES)})" if video_files else "")
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            frames = tuple(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
            if not frames:
                raise MtlCompressError(f"{path}: folder holds no PNG or JPEG images")
            if video:
                name = path.resolve().name  # "clip/.." has no name of its own
                found.append((name, name, frames, True))
            else:
                found.extend((p.stem, p.name, p, False) for p in frames)
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                found.append((path.stem, path.name, path, False))
            elif video_files and suffix in VIDEO_SUFFIXES:
                found.append((path.stem, path.name, path, True))
            else:
                hint = "" if video_files else " (video must be a folder of frames)"
                raise MtlCompressError(f"{path}: not {accepted}{hint}")
        else:
            raise MtlCompressError(f"{path}: no such file or folder")
    names = output_names([short for short, _, _, _ in found], [full for _, full, _, _ in found])
    inputs = []
    for name, (_, _, what, is_video) in zip(names, found):
        if isinstance(what, tuple):  # a frame folder
            frame_names = output_names([p.stem for p in what], [p.name for p in what])
            inputs.append(MediaInput(name, what, True, tuple(frame_names)))
        else:
            inputs.append(MediaInput(name, (what,), is_video))
    return inputs
