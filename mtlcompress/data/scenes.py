"""The mtlcompress *scenes* layout (written by our synthetic generator or by hand)::

    ROOT/manifest.json        {"format": "mtlcompress.scenes", "version": 1, "tasks": [...],
                               "class_names": [...], "num_classes": N, ...}
    ROOT/images/{stem}.png|.jpg|.jpeg
    ROOT/semseg/{stem}.png    single-channel uint8 class ids, 255 = ignore
    ROOT/parts/{stem}.png     single-channel uint8 part ids, 255 = ignore
    ROOT/depth/{stem}.npy     float32 [H,W] metres, 0 (or NaN) = invalid
    ROOT/normals/{stem}.npy   float32 [H,W,3], zero vector = invalid (others are normalised)
    ROOT/edges/{stem}.png     single-channel 0/255 (>= 128 reads as 1)
    ROOT/saliency/{stem}.png  single-channel 0/255 (>= 128 reads as 1)
    ROOT/splits/{split}.txt   one stem per line, in order (a clip's frames: splits/all.txt)
    ROOT/videos/{clip}/       one clip per folder, same layout, frames in temporal order

Any registered task ``<task>`` lives in ``ROOT/<task>/{stem}<label_suffix>`` and is read
by its registered label reader. The manifest is optional for folders made by hand
(see ``manifest.py``): without it the tasks are the task folders present. A clip folder
without its own manifest or class list uses the one of the dataset it lives in
(``ROOT/videos/{clip}`` -> ``ROOT``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtlcompress.data.base import DenseDataset, existing_dir, select_tasks
from mtlcompress.data.manifest import find_manifest, manifest_tasks, scene_class_names
from mtlcompress.data.readers import read_index_png, read_npy, read_split
from mtlcompress.errors import DataError
from mtlcompress.io.image_size import SizeLike
from mtlcompress.io.images import IMAGE_SUFFIXES
from mtlcompress.tasks.registry import get_task, task_names


class ScenesDataset(DenseDataset):
    """The mtlcompress scenes layout (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 tasks: Sequence[str] | None = None, size: SizeLike | None = None) -> None:
        root = existing_dir(root)
        meta_dirs = [root]
        if root.parent.name == "videos":
            meta_dirs.append(root.parent.parent)
        manifest = find_manifest(meta_dirs)
        if manifest is not None:
            available = manifest_tasks(manifest)
        else:
            available = tuple(t for t in task_names() if (root / t).is_dir())
        selected = select_tasks(tasks, available, root)
        class_names: dict[str, list[str]] = {}
        for task in task_names():
            if task in available and get_task(task).categorical:
                names = scene_class_names(task, manifest, meta_dirs, required=task in selected)
                if names is not None:
                    class_names[task] = names
        super().__init__(root, split, available_tasks=available, tasks=selected, size=size,
                         class_names=class_names)
        for task in self.tasks:
            folder = root / task
            if not folder.is_dir():
                raise DataError(f"task {task!r} is listed in the manifest but {folder} does not exist: "
                                "add the folder or remove the task from manifest.json")
        self._images = _index_files(root / "images", IMAGE_SUFFIXES)
        self.stems = read_split(root / "splits" / f"{split}.txt")
        self._check_files()
        self._check_matching_stems()

    def _image_path(self, stem: str) -> Path:
        return self._images.get(stem, self.root / "images" / f"{stem}.png")

    def _label_files(self, task: str, stem: str) -> tuple[Path, ...]:
        return (self.root / task / f"{stem}{get_task(task).label_suffix}",)

    def _check_matching_stems(self) -> None:
        """A task folder with other stems than images/ means the data were copied halfway."""
        image_stems = set(self._images)
        for task in self.tasks:
            label_stems = set(_index_files(self.root / task, (get_task(task).label_suffix,)))
            extra, lacking = sorted(label_stems - image_stems), sorted(image_stems - label_stems)
            if extra or lacking:
                detail = []
                if extra:
                    detail.append(f"{len(extra)} not in images/ (e.g. {extra[0]!r})")
                if lacking:
                    detail.append(f"lacks {len(lacking)} that images/ has (e.g. {lacking[0]!r})")
                raise DataError(f"stems of {self.root / task} do not match {self.root / 'images'}: "
                                f"{task}/ has {' and '.join(detail)}; every image needs exactly one {task} file")

    def _read_label(self, task: str, stem: str, shape: tuple[int, int]) -> np.ndarray:
        spec = get_task(task)
        path = self._label_files(task, stem)[0]
        raw = read_index_png(path) if spec.label_suffix == ".png" else read_npy(path, shape)
        return spec.read_label(raw, path)


def _index_files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """stem -> path of the files in ``folder`` ending in one of ``suffixes`` (earlier wins)."""
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist: the dataset is incomplete")
    found: dict[str, tuple[int, Path]] = {}
    for entry in os.scandir(folder):
        name = entry.name.lower()
        for rank, suffix in enumerate(suffixes):
            if name.endswith(suffix) and not name.startswith(".") and entry.is_file():
                stem = entry.name[: -len(suffix)]
                if stem not in found or rank < found[stem][0]:
                    found[stem] = (rank, Path(entry.path))
                break
    return {stem: path for stem, (_, path) in found.items()}
