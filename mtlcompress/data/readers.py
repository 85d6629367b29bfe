"""Reading the files datasets are made of: split lists, images, label PNGs and ``.npy``
arrays, each failure reported as one ``DataError`` naming the file.

Images go through ``mtlcompress.io.images``, so the pixel limit and 16-bit scaling of
``mtlcompress run`` hold for training data too; a ``.npy`` header is checked against
its image before the array is loaded, so a bad file cannot ask for gigabytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from mtlcompress.errors import DataError
from mtlcompress.io.images import open_image, rgb_array
from mtlcompress.tasks import labels

# A label has at most this many values per image pixel ([H,W], [1,H,W], [H,W,3] ...).
_MAX_LABEL_VALUES_PER_PIXEL = 4


def read_split(path: Path) -> list[str]:
    """Stems listed one per line; blank lines are skipped."""
    if not path.is_file():
        others = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        hint = f" (splits present: {', '.join(others)})" if others else ""
        raise DataError(f"missing split file {path}{hint}: create it with one image stem per line")
    stems = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not stems:
        raise DataError(f"split file {path} lists no stems: add one image stem per line")
    return stems


def read_image_float(path: Path) -> np.ndarray:
    """float32 [H,W,3] in [0,1] (16-bit images scaled by 65535)."""
    try:
        with open_image(path) as img:
            return rgb_array(img)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path} ({exc}): replace it with a valid PNG or JPEG") from None


def read_rgb(path: Path) -> np.ndarray:
    """uint8 [H,W,3], for images that encode labels (8-bit by definition)."""
    try:
        with open_image(path) as img:
            return np.array(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path} ({exc}): replace it with a valid PNG or JPEG") from None


def read_index_png(path: Path) -> np.ndarray:
    """A single-channel PNG as its stored integers (palette PNGs give their indices)."""
    try:
        with open_image(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "1"):
                raise DataError(f"label image {path} has mode {img.mode}: save it as a single-channel "
                                "(L or P mode) PNG of integer ids")
            return np.asarray(img).astype(np.int64)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read label image {path} ({exc}): replace it with a valid PNG") from None


def read_npy(path: Path, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The array in ``path``; with ``image_shape`` (H, W) its header is checked first."""
    try:
        if image_shape is not None:
            _check_npy_header(path, image_shape)
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({exc}): save it with numpy.save as a plain float array") from None


def read_depth_npy(path: Path, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """float32 [H,W] metres; NaN becomes 0 (invalid), negative or infinite depth is an error."""
    return labels.depth_metres(read_npy(path, image_shape), path)


def read_normals_npy(path: Path, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """float32 [H,W,3] unit vectors, zero = invalid."""
    return labels.normal_vectors(read_npy(path, image_shape), path)


def _check_npy_header(path: Path, image_shape: tuple[int, int]) -> None:
    """Refuse an array far larger than a label of its image before allocating it.

    Smaller or slightly larger arrays pass: the shape checks after loading give the
    precise message for those.
    """
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            return  # other versions: np.load checks them
        shape, _, dtype = read_header(file)
    height, width = image_shape
    if math.prod(shape) > _MAX_LABEL_VALUES_PER_PIXEL * height * width:
        raise DataError(f"label {path} holds a {'x'.join(map(str, shape))} {dtype} array, far more than its "
                        f"{width}x{height} image needs: labels must have the image's size")
