"""Label readers of the built-in tasks: a label file's raw array -> the task's label.

The dataset layer reads the file (a PNG as its stored integers, a ``.npy`` as its
array) and hands the array here, so each task's label conventions live beside its
registration and not in every loader. Results: ``[H, W]`` maps, or ``[H, W, C]`` for
vector labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlcompress.errors import DataError

_NORMAL_MIN_LENGTH = 1e-6


def class_ids(raw: np.ndarray, path: Path) -> np.ndarray:
    """Stored integers are the class ids (255 = ignore)."""
    return raw.astype(np.int64)


def binary_mask(raw: np.ndarray, path: Path) -> np.ndarray:
    """0/255 images: ``>= 128`` reads as 1."""
    return (raw >= 128).astype(np.float32)


def depth_metres(raw: np.ndarray, path: Path) -> np.ndarray:
    """float32 [H,W] metres; NaN becomes 0 (invalid), negative or infinite depth is an error."""
    depth = np.asarray(raw, dtype=np.float32)
    if depth.ndim == 3 and depth.shape[0] == 1:
        depth = depth[0]
    elif depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2:
        raise DataError(f"depth file {path} has shape {depth.shape}: expected [H,W] metres")
    depth = np.nan_to_num(depth, nan=0.0, posinf=np.inf, neginf=-np.inf)
    if np.isinf(depth).any() or (depth < 0).any():
        raise DataError(f"depth file {path} has negative or infinite values: depth is in metres, 0 = invalid")
    return depth


def normal_vectors(raw: np.ndarray, path: Path) -> np.ndarray:
    """float32 [H,W,3] unit vectors; zero vectors mark invalid pixels."""
    normals = np.asarray(raw, dtype=np.float32)
    if normals.ndim != 3 or normals.shape[2] != 3:
        raise DataError(f"normals file {path} has shape {normals.shape}: expected [H,W,3]")
    return unit_normals(normals, path)


def unit_normals(normals: np.ndarray, path: Path) -> np.ndarray:
    """Scale every vector to unit length; near-zero vectors become exactly zero (invalid)."""
    if not np.isfinite(normals).all():
        raise DataError(f"normals in {path} have NaN or infinite values: use a zero vector for invalid pixels")
    length = np.linalg.norm(normals, axis=2, keepdims=True)
    valid = length > _NORMAL_MIN_LENGTH
    return np.where(valid, normals / np.where(valid, length, 1.0), 0.0).astype(np.float32)
