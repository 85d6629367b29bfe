"""NYUD-v2 in the ATRC ``NYUD_MT`` layout or InvPT's PNG variant, decoded as those papers do.

The multi-task NYUD-v2 benchmark (795 train / 654 val images) ships as::

    ROOT/images/{id}.jpg          InvPT: {id}.png
    ROOT/segmentation/{id}.png    40 NYU classes stored as 1..40, 0 = void
    ROOT/depth/{id}.npy           float [H,W] metres, 0 = no measurement
    ROOT/normals/{id}.npy         float [H,W,3], zero vector = no ground truth;
                                  InvPT: {id}.png, RGB
    ROOT/edge/{id}.npy            float [H,W] in {0,1}; InvPT: {id}.png, 0 / 255
    ROOT/gt_sets/{train,val}.txt

Each file may be in either form, per image (``.npy`` is preferred when both exist).

Encodings implemented here (checked against ``data/nyud.py`` and the evaluation code of
SimonVandenhende/Multi-Task-Learning-PyTorch, ``src/data/nyud.py`` of brdav/atrc and
``code/data/nyud.py`` of prismformore/Multi-Task-Transformer, the InvPT code):

* semseg: stored value ``v`` becomes ``v - 1`` (0..39), and void 0 becomes 255 (ignore):
  the background is not a class, as in related work. Stored values above 40 are an error.
* depth: read as is; 0 is invalid (the evaluation masks ``label != 0``); NaN reads as 0.
* normals: ``.npy`` read as is, PNG decoded ``2 * v / 255 - 1`` per channel (InvPT's
  ``_load_normals``); then scaled to unit length; zero vectors stay zero (invalid; the
  evaluation masks vectors of norm 0; a PNG cannot store one, so every PNG pixel counts,
  as in InvPT).
* edges: ``.npy`` read as is, PNG as ``v / 255``; binarised at 0.5.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtlcompress.data.base import IGNORE_INDEX, DenseDataset, existing_dir, select_tasks
from mtlcompress.data.readers import (read_depth_npy, read_index_png, read_normals_npy, read_npy, read_rgb,
                                     read_split)
from mtlcompress.errors import DataError
from mtlcompress.io.image_size import SizeLike
from mtlcompress.tasks.labels import unit_normals

NYU40_CLASS_NAMES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)

# task -> (folder, suffixes in order of preference): ATRC's NYUD_MT first, InvPT's PNGs second.
_LABEL_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "semseg": ("segmentation", (".png",)),
    "depth": ("depth", (".npy",)),
    "normals": ("normals", (".npy", ".png")),
    "edges": ("edge", (".npy", ".png")),
}


class NyudDataset(DenseDataset):
    """NYUD-v2 multi-task data: semseg, depth, normals, edges."""

    # ATRC / InvPT: seism edge tolerance 0.011 of the diagonal; edge BCE pos_weight 0.8.
    metric_options = {"edges": {"max_dist": 0.011}}
    loss_options = {"edges": {"pos_weight": 0.8}}

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 tasks: Sequence[str] | None = None, size: SizeLike | None = None) -> None:
        root = existing_dir(root)
        available = tuple(t for t, (folder, _) in _LABEL_FILES.items() if (root / folder).is_dir())
        class_names = {"semseg": list(NYU40_CLASS_NAMES)} if "semseg" in available else {}
        super().__init__(root, split, available_tasks=available, tasks=select_tasks(tasks, available, root),
                         size=size, class_names=class_names)
        self.stems = read_split(root / "gt_sets" / f"{split}.txt")
        self._check_files()

    def _image_path(self, stem: str) -> Path:
        jpg = self.root / "images" / f"{stem}.jpg"
        if jpg.is_file():
            return jpg
        png = self.root / "images" / f"{stem}.png"
        return png if png.is_file() else jpg

    def _label_files(self, task: str, stem: str) -> tuple[Path, ...]:
        folder, suffixes = _LABEL_FILES[task]
        candidates = [self.root / folder / f"{stem}{suffix}" for suffix in suffixes]
        return (next((path for path in candidates if path.is_file()), candidates[0]),)

    def _read_label(self, task: str, stem: str, shape: tuple[int, int]) -> np.ndarray:
        path = self._label_files(task, stem)[0]
        if task == "semseg":
            return decode_nyu40(read_index_png(path), path)
        if task == "depth":
            return read_depth_npy(path, shape)
        if task == "normals":
            if path.suffix == ".png":
                return unit_normals(2.0 * read_rgb(path).astype(np.float32) / 255.0 - 1.0, path)
            return read_normals_npy(path, shape)
        if path.suffix == ".png":
            return (read_index_png(path) >= 128).astype(np.float32)  # v / 255 >= 0.5
        edges = np.asarray(read_npy(path, shape), dtype=np.float32)
        if edges.ndim == 3 and edges.shape[2] == 1:
            edges = edges[:, :, 0]
        if edges.ndim != 2:
            raise DataError(f"edge file {path} has shape {edges.shape}: expected [H,W] of 0/1")
        return (edges >= 0.5).astype(np.float32)


def decode_nyu40(stored: np.ndarray, path: Path) -> np.ndarray:
    """Stored 1..40 -> 0..39, void 0 -> 255."""
    if (stored > len(NYU40_CLASS_NAMES)).any() or (stored < 0).any():
        value = int(stored[(stored > len(NYU40_CLASS_NAMES)) | (stored < 0)][0])
        raise DataError(f"segmentation {path} has value {value}: NYUD stores classes as 1..40 with 0 = void; "
                        "fix or re-extract the label")
    label = stored.astype(np.int64) - 1
    label[stored == 0] = IGNORE_INDEX
    return label
