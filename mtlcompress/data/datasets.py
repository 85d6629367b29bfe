"""One dataset interface for every dense-prediction layout mtlcompress reads.

Training, distillation and evaluation code is written against ``DenseDataset`` only, so
it never branches on where the data came from. Three on-disk layouts are understood and
told apart by ``open_dataset``:

* the mtlcompress *scenes* layout (below; written by our synthetic generator or by hand),
* PASCAL-Context in the ATRC / InvPT ``PASCAL_MT`` layout (``pascal_context.py``),
* NYUD-v2 in the ATRC / InvPT ``NYUD_MT`` layout (``nyud.py``).

Every sample is a dict that the default ``torch.utils.data.default_collate`` batches
(images of one dataset must share a size, or pass ``size``)::

    "image"     float32 [3,H,W] in [0,1]
    "stem"      str
    "semseg"    int64   [H,W]   class ids, 255 = ignore
    "parts"     int64   [H,W]   part ids (0 = background), 255 = ignore
    "depth"     float32 [1,H,W] metres, 0 = invalid
    "normals"   float32 [3,H,W] unit vectors, all-zero vector = invalid pixel
    "edges"     float32 [1,H,W] in {0,1}
    "saliency"  float32 [1,H,W] in {0,1}

``size`` resizes the image bilinearly (with antialiasing) and every label with
nearest-neighbour sampling to ``size`` x ``size``, so ignore values and unit normals
survive.

Scenes layout::

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

The manifest is optional for folders made by hand. Without it the tasks are the task
folders present, and class lists come from ``ROOT/classes.txt`` (semseg) and
``ROOT/parts_classes.txt`` (parts), one class name per line, ids counted from 0. The
number of classes is never guessed from the largest label seen: a split that misses
the rarest class would silently shrink the model's head. In a manifest, part classes go
in ``parts_class_names`` / ``parts_num_classes``; ``class_names`` and ``num_classes``
may also be dicts keyed by task. A clip folder without its own manifest or class list
uses the one of the dataset it lives in (``ROOT/videos/{clip}`` -> ``ROOT``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from mtlcompress.errors import DataError
from mtlcompress.tasks.registry import get_task, task_names

DENSE_TASKS: tuple[str, ...] = task_names()
CLASS_TASKS: tuple[str, ...] = tuple(t for t in DENSE_TASKS if get_task(t).categorical)
IGNORE_INDEX = 255

SCENES_FORMAT = "mtlcompress.scenes"
SCENES_VERSION = 1
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")

LAYOUT_SCENES = "scenes"
LAYOUT_PASCAL_CONTEXT = "pascal_context"
LAYOUT_NYUD = "nyud"

_NORMAL_MIN_LENGTH = 1e-6
_CLASS_FILES = {"semseg": "classes.txt", "parts": "parts_classes.txt"}  # scenes layout, no manifest


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

    def __init__(self, root: Path, split: str, *, available_tasks: Sequence[str], tasks: Sequence[str] | None,
                 size: int | None, class_names: dict[str, list[str]]) -> None:
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
        """The label as numpy: [H,W] for class/depth/edge/saliency maps, [H,W,3] normals."""
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
        image = read_rgb(self._image_path(stem))
        shape = image.shape[:2]
        sample: dict = {"image": torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0), "stem": stem}
        for task in self.tasks:
            label = self._read_label(task, stem, shape)
            main_file = self._label_files(task, stem)[0]
            if label.shape[:2] != shape:
                raise DataError(f"{task} label {main_file} is {label.shape[1]}x{label.shape[0]} but its image is "
                                f"{shape[1]}x{shape[0]}: labels must have the image's size")
            if task in CLASS_TASKS:
                check_class_ids(label, self.num_classes[task], main_file)
            sample[task] = label_to_tensor(task, label)
        if self.size is not None:
            sample = resize_sample(sample, self.size)
        return sample

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
                f"tasks={self.tasks}, n={len(self)})")


class ScenesDataset(DenseDataset):
    """The mtlcompress scenes layout (see the module docstring)."""

    _LABEL_FILES = {"semseg": ("semseg", ".png"), "parts": ("parts", ".png"), "depth": ("depth", ".npy"),
                    "normals": ("normals", ".npy"), "edges": ("edges", ".png"), "saliency": ("saliency", ".png")}

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 tasks: Sequence[str] | None = None, size: int | None = None) -> None:
        root = existing_dir(root)
        meta_dirs = [root]
        if root.parent.name == "videos":
            meta_dirs.append(root.parent.parent)
        manifest = _find_manifest(meta_dirs)
        if manifest is not None:
            available = _manifest_tasks(manifest, root)
        else:
            available = tuple(t for t in DENSE_TASKS if (root / self._LABEL_FILES[t][0]).is_dir())
        selected = select_tasks(tasks, available, root)
        class_names: dict[str, list[str]] = {}
        for task in CLASS_TASKS:
            if task in available:
                names = _scene_class_names(task, manifest, meta_dirs, required=task in selected)
                if names is not None:
                    class_names[task] = names
        super().__init__(root, split, available_tasks=available, tasks=selected, size=size,
                         class_names=class_names)
        for task in self.tasks:
            folder = root / self._LABEL_FILES[task][0]
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
        folder, suffix = self._LABEL_FILES[task]
        return (self.root / folder / f"{stem}{suffix}",)

    def _check_matching_stems(self) -> None:
        """A task folder with other stems than images/ means the data were copied halfway."""
        image_stems = set(self._images)
        for task in self.tasks:
            folder, suffix = self._LABEL_FILES[task]
            label_stems = set(_index_files(self.root / folder, (suffix,)))
            extra, lacking = sorted(label_stems - image_stems), sorted(image_stems - label_stems)
            if extra or lacking:
                detail = []
                if extra:
                    detail.append(f"{len(extra)} not in images/ (e.g. {extra[0]!r})")
                if lacking:
                    detail.append(f"lacks {len(lacking)} that images/ has (e.g. {lacking[0]!r})")
                raise DataError(f"stems of {self.root / folder} do not match {self.root / 'images'}: "
                                f"{folder}/ has {' and '.join(detail)}; every image needs exactly one {task} file")

    def _read_label(self, task: str, stem: str, shape: tuple[int, int]) -> np.ndarray:
        path = self._label_files(task, stem)[0]
        if task in CLASS_TASKS:
            return read_index_png(path).astype(np.int64)
        if task in ("edges", "saliency"):
            return (read_index_png(path) >= 128).astype(np.float32)
        if task == "depth":
            return read_depth_npy(path)
        return read_normals_npy(path)


# -- opening datasets --------------------------------------------------------------------
def detect_layout(root: str | os.PathLike) -> str:
    """The layout name of ``root``: ``"scenes"``, ``"pascal_context"`` or ``"nyud"``."""
    return _locate(existing_dir(root))[0]


def open_dataset(root: str | os.PathLike, split: str = "train", tasks: Sequence[str] | None = None,
                 size: int | None = None) -> DenseDataset:
    """Open ``root`` in whichever known layout it is in.

    A folder that holds ``PASCAL_MT/`` or ``NYUD_MT/`` (the ATRC download folder) is
    accepted too.
    """
    layout, base = _locate(existing_dir(root))
    if layout == LAYOUT_PASCAL_CONTEXT:
        from mtlcompress.data.pascal_context import PascalContextDataset
        return PascalContextDataset(base, split=split, tasks=tasks, size=size)
    if layout == LAYOUT_NYUD:
        from mtlcompress.data.nyud import NyudDataset
        return NyudDataset(base, split=split, tasks=tasks, size=size)
    return ScenesDataset(base, split=split, tasks=tasks, size=size)


def list_video_clips(root: str | os.PathLike) -> list[Path]:
    """Clip folders under ``root/videos/``, sorted by name; empty if there is no videos/."""
    videos = existing_dir(root) / "videos"
    if not videos.is_dir():
        return []
    return sorted(p for p in videos.iterdir() if p.is_dir() and not p.name.startswith("."))


def open_clip(clip_dir: str | os.PathLike, tasks: Sequence[str] | None = None,
              size: int | None = None) -> DenseDataset:
    """The frames of one clip, in the temporal order of its ``splits/all.txt``."""
    return ScenesDataset(clip_dir, split="all", tasks=tasks, size=size)


def _locate(root: Path) -> tuple[str, Path]:
    for candidate in (root, root / "PASCAL_MT", root / "NYUD_MT"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "ImageSets" / "Context").is_dir():
            return LAYOUT_PASCAL_CONTEXT, candidate
        if (candidate / "images").is_dir() and (candidate / "gt_sets").is_dir():
            return LAYOUT_NYUD, candidate
        if (candidate / "images").is_dir() and ((candidate / "manifest.json").is_file()
                                               or (candidate / "splits").is_dir()):
            return LAYOUT_SCENES, candidate
    raise DataError(f"{root} is in no dataset layout mtlcompress knows: expected the mtlcompress scenes "
                    "layout (images/ with manifest.json or splits/), PASCAL-Context (JPEGImages/ and "
                    "ImageSets/Context/), or NYUD-v2 (images/ and gt_sets/)")


# -- building blocks shared by the layouts ----------------------------------------------
def existing_dir(root: str | os.PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"dataset folder {path} does not exist: check the path")
    return path


def check_size(size: int | None) -> int | None:
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise DataError(f"size must be a positive integer number of pixels, got {size!r}")
    return size


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


def read_rgb(path: Path) -> np.ndarray:
    """uint8 [H,W,3]."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path} ({exc}): replace it with a valid PNG or JPEG") from None


def read_index_png(path: Path) -> np.ndarray:
    """A single-channel PNG as its stored integers (palette PNGs give their indices)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "1"):
                raise DataError(f"label image {path} has mode {img.mode}: save it as a single-channel "
                                "(L or P mode) PNG of integer ids")
            return np.asarray(img).astype(np.int64)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read label image {path} ({exc}): replace it with a valid PNG") from None


def read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} ({exc}): save it with numpy.save as a plain float array") from None


def read_depth_npy(path: Path) -> np.ndarray:
    """float32 [H,W] metres; NaN becomes 0 (invalid), negative or infinite depth is an error."""
    depth = np.asarray(read_npy(path), dtype=np.float32)
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


def read_normals_npy(path: Path) -> np.ndarray:
    normals = np.asarray(read_npy(path), dtype=np.float32)
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


def check_class_ids(label: np.ndarray, num_classes: int, path: Path) -> None:
    bad = (label != IGNORE_INDEX) & ((label < 0) | (label >= num_classes))
    if bad.any():
        value = int(label[bad][0])
        raise DataError(f"label {path} has class id {value}, outside 0..{num_classes - 1} "
                        f"(and {IGNORE_INDEX} = ignore): fix the label or the class list")


def label_to_tensor(task: str, label: np.ndarray) -> torch.Tensor:
    if task in CLASS_TASKS:
        return torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
    if task == "normals":
        return torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)).permute(2, 0, 1).contiguous()
    return torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32)).unsqueeze(0)


def resize_sample(sample: dict, size: int) -> dict:
    """Image: bilinear with antialiasing. Labels: nearest, so ids and unit vectors stay exact."""
    out = dict(sample)
    image = sample["image"].unsqueeze(0)
    out["image"] = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=True).squeeze(0).clamp_(0.0, 1.0)
    for task in DENSE_TASKS:
        if task not in sample:
            continue
        label = sample[task]
        as_float = (label.unsqueeze(0) if label.ndim == 2 else label).unsqueeze(0).float()
        resized = F.interpolate(as_float, size=(size, size), mode="nearest-exact").squeeze(0)
        if task in CLASS_TASKS:
            out[task] = resized.squeeze(0).round().long()
        else:
            out[task] = resized.contiguous()
    return out


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


def _find_manifest(meta_dirs: Sequence[Path]) -> tuple[Path, dict] | None:
    for folder in meta_dirs:
        path = folder / "manifest.json"
        if path.is_file():
            return path, _read_manifest(path)
    return None


def _read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path} ({exc}): fix the JSON or delete the manifest") from None
    if not isinstance(data, dict) or data.get("format") != SCENES_FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise DataError(f"{path} is not a {SCENES_FORMAT} manifest (format {found!r}): "
                        f"set \"format\": \"{SCENES_FORMAT}\" or delete it")
    if data.get("version") != SCENES_VERSION:
        raise DataError(f"{path} has version {data.get('version')!r} but this mtlcompress reads version "
                        f"{SCENES_VERSION}: upgrade mtlcompress or regenerate the dataset")
    return data


def _manifest_tasks(manifest: tuple[Path, dict], root: Path) -> tuple[str, ...]:
    path, data = manifest
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise DataError(f"{path} needs a \"tasks\" list of task names (from {', '.join(DENSE_TASKS)})")
    unknown = [t for t in tasks if t not in DENSE_TASKS]
    if unknown:
        raise DataError(f"{path} lists unknown task {unknown[0]!r}: known tasks are {', '.join(DENSE_TASKS)}")
    return tuple(dict.fromkeys(tasks))


def _scene_class_names(task: str, manifest: tuple[Path, dict] | None, meta_dirs: Sequence[Path],
                       required: bool) -> list[str] | None:
    """Class names from the manifest, else from classes.txt / parts_classes.txt."""
    names: list[str] | None = None
    count: int | None = None
    source = ""
    if manifest is not None:
        path, data = manifest
        names_key, count_key = ("class_names", "num_classes") if task == "semseg" else \
            ("parts_class_names", "parts_num_classes")
        names = _per_task(data, names_key, "class_names", task)
        count = _per_task(data, count_key, "num_classes", task)
        source = str(path)
        if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise DataError(f"{path}: class names for {task} must be a list of strings")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise DataError(f"{path}: number of {task} classes must be an integer, got {count!r}")
    if names is None and count is None:
        for folder in meta_dirs:
            text_file = folder / _CLASS_FILES[task]
            if text_file.is_file():
                names = [line.strip() for line in text_file.read_text().splitlines() if line.strip()]
                source = str(text_file)
                break
    if names is None and count is None:
        if not required:
            return None
        class_file = _CLASS_FILES[task]
        raise DataError(f"no {task} class list for {meta_dirs[0]}: add class names to manifest.json or write "
                        f"{meta_dirs[0] / class_file} with one class name per line (ids count from 0)")
    if names is None:
        names = [f"class_{i}" for i in range(count)]
    if count is not None and count != len(names):
        raise DataError(f"{source} gives {count} {task} classes but {len(names)} class names: make them agree")
    if not 1 <= len(names) <= IGNORE_INDEX:
        raise DataError(f"{source} gives {len(names)} {task} classes: need 1..{IGNORE_INDEX} "
                        f"({IGNORE_INDEX} is the ignore id)")
    return names


def _per_task(data: dict, key: str, shared_key: str, task: str):
    """``data[key]``, or ``data[shared_key][task]`` when the manifest keys classes by task."""
    shared = data.get(shared_key)
    if isinstance(shared, dict):
        return shared.get(task)
    return data.get(key)
