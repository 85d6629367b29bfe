"""The one dataset interface every layout implements, and the sample conventions.

Training, distillation and evaluation code is written against ``DenseDataset`` only, so
it never branches on where the data came from (``layouts.open_dataset`` picks the
layout). Every sample is a dict that the default ``torch.utils.data.default_collate``
batches (images of one dataset must share a size, or pass ``size``)::

    "image"     float32 [3,H,W] in [0,1]
    "stem"      str
    "semseg"    int64   [H,W]   class ids, 255 = ignore
    "parts"     int64   [H,W]   part ids (0 = background), 255 = ignore
    "depth"     float32 [1,H,W] metres, 0 = invalid
    "normals"   float32 [3,H,W] unit vectors, all-zero vector = invalid pixel
    "edges"     float32 [1,H,W] in {0,1}
    "saliency"  float32 [1,H,W] in {0,1}

In general: categorical tasks (see the task registry) give int64 [H,W], other tasks
float32 [C,H,W]. ``size`` (one number, or (height, width)) resizes the image
bilinearly (with antialiasing) and every label with nearest-neighbour sampling to that
size, so ignore values and unit normals survive. With ``keep_native_labels`` set, a
sample also carries ``"native"``: {task: the label at the image's own size}, which
evaluation scores against (the references' protocol); batch such samples with
``collate_samples``.

A layout also says how the reference codebases train and score it:
``metric_options[task]`` and ``loss_options[task]`` are keyword options for the task's
registry ``metric`` and ``loss`` (e.g. PASCAL-Context's edge tolerance and
``pos_weight``); layouts without a reference protocol leave them empty.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtlcompress.data.readers import read_image_float
from mtlcompress.errors import DataError
from mtlcompress.io.image_size import SizeLike, image_size
from mtlcompress.tasks.registry import get_task, task_names

IGNORE_INDEX = 255


class DenseDataset(torch.utils.data.Dataset):
    """Base of every layout: task selection, checks, tensor conversion and resizing.

    A layout subclass sets ``stems`` and implements ``_image_path``, ``_label_files``
    and ``_read_label``; this class does everything that must behave identically
    across layouts.
    """

    root: Path
    split: str
    tasks: tuple[str, ...]
    available_tasks: tuple[str, ...]
    num_classes: dict[str, int]
    class_names: dict[str, list[str]]
    stems: list[str]
    metric_options: dict[str, dict] = {}
    loss_options: dict[str, dict] = {}
    keep_native_labels: bool = False

    def __init__(self, root: Path, split: str, *, available_tasks: Sequence[str], tasks: Sequence[str] | None,
                 size: SizeLike | None, class_names: dict[str, list[str]]) -> None:
        self.root = root
        self.split = split
        self.available_tasks = tuple(available_tasks)
        self.tasks = select_tasks(tasks, self.available_tasks, root)
        self.size = check_size(size)
        self.class_names = {task: list(names) for task, names in class_names.items()}
        self.num_classes = {task: len(names) for task, names in self.class_names.items()}
        self.stems = []

    # -- what a layout provides ----------------------------------------------------
    def _image_path(self, stem: str) -> Path:
        raise NotImplementedError

    def _label_files(self, task: str, stem: str) -> tuple[Path, ...]:
        """Every file the label of ``task`` for ``stem`` is read from, main file first."""
        raise NotImplementedError

    def _read_label(self, task: str, stem: str, shape: tuple[int, int]) -> np.ndarray:
        """The label as numpy: [H,W] maps, [H,W,C] vector labels such as normals."""
        raise NotImplementedError

    # -- shared behaviour -------------------------------------------------------------
    def _check_files(self) -> None:
        """Fail at construction, not mid-epoch, when a split names a file that is absent."""
        for stem in self.stems:
            image = self._image_path(stem)
            if not image.is_file():
                raise DataError(f"missing image {image} for stem {stem!r} listed in split {self.split!r}: "
                                "add the image or remove the stem from the split file")
            for task in self.tasks:
                for path in self._label_files(task, stem):
                    if not path.is_file():
                        raise DataError(f"missing {task} label file {path} for stem {stem!r}: add it, "
                                        f"remove the stem from split {self.split!r}, or leave {task!r} out of tasks")

    def __len__(self) -> int:
        return len(self.stems)

    def __getitem__(self, index: int) -> dict:
        stem = self.stems[index]
        image = read_image_float(self._image_path(stem))
        shape = image.shape[:2]
        sample: dict = {"image": torch.from_numpy(image).permute(2, 0, 1), "stem": stem}
        for task in self.tasks:
            label = self._read_label(task, stem, shape)
            main_file = self._label_files(task, stem)[0]
            if label.shape[:2] != shape:
                raise DataError(f"{task} label {main_file} is {label.shape[1]}x{label.shape[0]} but its image is "
                                f"{shape[1]}x{shape[0]}: labels must have the image's size")
            if get_task(task).categorical:
                check_class_ids(label, self.num_classes[task], main_file)
            sample[task] = label_to_tensor(task, label)
        if self.size is not None:
            resized = resize_sample(sample, self.size)
            if self.keep_native_labels:
                resized["native"] = {task: sample[task] for task in self.tasks}
            sample = resized
        elif self.keep_native_labels:
            sample["native"] = {task: sample[task] for task in self.tasks}
        return sample

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
                f"tasks={self.tasks}, n={len(self)})")


# -- building blocks shared by the layouts ----------------------------------------------
def existing_dir(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"dataset folder {path} does not exist: check the path")
    return path


def check_size(size: SizeLike | None) -> tuple[int, int] | None:
    """``None`` (keep each image's size), or ``(height, width)`` from one number or two."""
    return None if size is None else image_size(size, "size", DataError)


def select_tasks(tasks: Sequence[str] | None, available: Sequence[str], root: Path) -> tuple[str, ...]:
    """``tasks`` in the order given (duplicates dropped), or all available when None."""
    if tasks is None:
        return tuple(available)
    if isinstance(tasks, str):
        tasks = (tasks,)
    unknown = [t for t in tasks if t not in available]
    if unknown:
        raise DataError(f"task {unknown[0]!r} is not available in {root}: available tasks are "
                        f"{', '.join(available) or '(none)'}")
    return tuple(dict.fromkeys(tasks))


def check_class_ids(label: np.ndarray, num_classes: int, path: Path) -> None:
    bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= num_classes))
    if bad.any():
        value = int(label[bad][0])
        raise DataError(f"label {path} has class id {value}, outside 0..{num_classes - 1} "
                        f"(and {IGNORE_INDEX} = ignore): fix the label or the class list")


def label_to_tensor(task: str, label: np.ndarray) -> torch.Tensor:
    """Categorical: int64 [H,W]; vector labels [H,W,C] -> [C,H,W]; maps [H,W] -> [1,H,W]."""
    if get_task(task).categorical:
        return torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
    values = torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))
    return values.permute(2, 0, 1).contiguous() if label.ndim == 3 else values.unsqueeze(0)


def collate_samples(samples: list[dict]) -> dict:
    """``default_collate``, except ``"native"`` labels (sizes differ) stay a list of dicts."""
    samples = [dict(sample) for sample in samples]
    native = [sample.pop("native") for sample in samples if "native" in sample]
    batch = torch.utils.data.default_collate(samples)
    if native:
        batch["native"] = native
    return batch


def resize_sample(sample: dict, size: SizeLike) -> dict:
    """To ``size`` (one number, or (height, width)). Image: bilinear with antialiasing.
    Labels: nearest, so ids and unit vectors stay exact."""
    out = dict(sample)
    size = image_size(size, "size", DataError)
    image = sample["image"].unsqueeze(0)
    out["image"] = F.interpolate(image, size=size, mode="bilinear", align_corners=False,
                                 antialias=True).squeeze(0).clamp_(0.0, 1.0)
    for task in task_names():
        if task not in sample:
            continue
        label = sample[task]
        as_float = (label.unsqueeze(0) if label.ndim == 2 else label).unsqueeze(0).float()
        resized = F.interpolate(as_float, size=size, mode="nearest-exact").squeeze(0)
        if get_task(task).categorical:
            out[task] = resized.squeeze(0).round().long()
        else:
            out[task] = resized.contiguous()
    return out
