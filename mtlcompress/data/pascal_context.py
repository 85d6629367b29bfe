"""PASCAL-Context in the ATRC / InvPT ``PASCAL_MT`` layout, decoded as those papers do.

The multi-task PASCAL-Context benchmark (ASTMT, Maninis et al. 2019; reused unchanged by
Multi-Task-Learning-PyTorch, ATRC and InvPT, whose published numbers the paper compares
against) ships as one folder::

    ROOT/JPEGImages/{id}.jpg
    ROOT/semseg/VOC12/{id}.png            preferred when present, else
    ROOT/semseg/pascal-context/{id}.png
    ROOT/human_parts/{id}.mat             PASCAL-Part annotation struct ``anno``
    ROOT/normals_distill/{id}.png         RGB, distilled from a NYUD-trained model
    ROOT/sal_distill/{id}.png             grey, distilled saliency
    ROOT/pascal-context/trainval/{id}.mat ``LabelMap``: the 459-class PASCAL-Context map
    ROOT/ImageSets/Context/{train,val}.txt
    ROOT/ImageSets/Parts/{split}.txt      optional JSON cache {id: [object class ids]}

Encodings implemented here (checked against ``data/pascal_context.py`` and
``data/custom_transforms.py`` of SimonVandenhende/Multi-Task-Learning-PyTorch,
``src/data/pascal_context.py`` of brdav/atrc and ``code/data/pascal_context.py`` of
prismformore/Multi-Task-Transformer, the InvPT code):

* semseg: the PNG's stored values are the 21 VOC classes (0 = background ... 20 =
  tvmonitor), 255 = ignore. ATRC: ``semseg_num_classes = 21``.
* parts: from the ``anno`` struct, objects of class index 15 (person) that have part
  annotations paint each part mask with one of 6 groups (head, torso, upper arm,
  lower arm, upper leg, lower leg; the ``num_human_parts=6`` table), over background 0:
  7 classes. Later objects and parts overwrite earlier ones. A label with no part
  pixel at all (no person, or persons without parts) becomes all 255, as the
  references' ``AddIgnoreRegions`` does, so it teaches nothing. When "parts" is the only
  task, images without a person are dropped from the split, as the references do.
* normals: ``2 * v / 255 - 1`` per RGB channel, kept only on pixels whose ``LabelMap``
  class is one of the 170 PASCAL-Context classes that also exist in NYUD (the
  distilling model only knows those; list below), every other pixel the zero vector
  (invalid). Valid vectors are then scaled to unit length, as the references do
  before computing angles.
* saliency: ``v / 255 > 0.5``.
* edges: pixels where the 4-neighbour Laplacian of ``LabelMap`` (OpenCV's ``ksize=1``
  kernel, reflect-101 border) is non-zero, thinned to one pixel by the two-subiteration
  algorithm of Guo & Hall (1989), which is what ``skimage.morphology.thin`` runs. As in
  the reference, a pixel whose neighbours' labels cancel in the Laplacian (e.g. 1 and 3
  around a 2) is not an edge.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
from scipy import ndimage

from mtlcompress.data.base import IGNORE_INDEX, DenseDataset, existing_dir, select_tasks
from mtlcompress.data.readers import read_index_png, read_rgb, read_split
from mtlcompress.errors import DataError
from mtlcompress.io.image_size import SizeLike
from mtlcompress.tasks.labels import unit_normals
from mtlcompress.tasks.thinning import thin
from mtlcompress.tasks.registry import task_names

VOC_CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
PART_CLASS_NAMES: tuple[str, ...] = (
    "background", "head", "torso", "upper_arm", "lower_arm", "upper_leg", "lower_leg",
)
PERSON_CLASS_INDEX = 15  # VOC class index of "person" in PASCAL-Part's anno.objects.class_ind

# PASCAL-Part person part name -> index in PART_CLASS_NAMES.
PERSON_PART_CLASS: dict[str, int] = {
    **dict.fromkeys(("head", "hair", "lear", "rear", "lebrow", "rebrow", "leye", "reye", "mouth", "nose"), 1),
    **dict.fromkeys(("neck", "torso"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("llarm", "rlarm", "lhand", "rhand"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("llleg", "rlleg", "lfoot", "rfoot"), 6),
}

# PASCAL-Context (459-class LabelMap) ids whose class name also appears among the NYUD
# classes (except "unknown"), plus tvmonitor (427): the pixels where distilled normals
# are trusted. Derived from db_info/context_classes.json and db_info/nyu_classes.json
# of Multi-Task-Learning-PyTorch, the same rule its loader applies at run time.
NORMALS_VALID_CONTEXT_IDS: frozenset[int] = frozenset((
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50, 51,
    53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104, 105, 107,
    111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172, 174, 181, 183,
    184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228, 230, 232, 233, 238, 239,
    242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287,
    288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345,
    349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405, 407, 408,
    411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457,
))

_LAPLACIAN_4 = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)


class PascalContextDataset(DenseDataset):
    """PASCAL-Context multi-task data: semseg, parts, normals, saliency, edges."""

    # ATRC / InvPT: seism edge tolerance 0.0075 of the diagonal; edge BCE pos_weight 0.95;
    # saliency trained with class-balanced BCE.
    metric_options = {"edges": {"max_dist": 0.0075}}
    loss_options = {"edges": {"pos_weight": 0.95}, "saliency": {"balanced": True}}

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 tasks: Sequence[str] | None = None, size: SizeLike | None = None) -> None:
        root = existing_dir(root)
        available = tuple(t for t in task_names() if _task_source_present(root, t))
        class_names = {}
        if "semseg" in available:
            class_names["semseg"] = list(VOC_CLASS_NAMES)
        if "parts" in available:
            class_names["parts"] = list(PART_CLASS_NAMES)
        super().__init__(root, split, available_tasks=available, tasks=select_tasks(tasks, available, root),
                         size=size, class_names=class_names)
        self.stems = read_split(root / "ImageSets" / "Context" / f"{split}.txt")
        self._check_files()
        if self.tasks == ("parts",):
            self.stems = self._stems_with_person()

    def _image_path(self, stem: str) -> Path:
        return self.root / "JPEGImages" / f"{stem}.jpg"

    def _label_files(self, task: str, stem: str) -> tuple[Path, ...]:
        label_map = self.root / "pascal-context" / "trainval" / f"{stem}.mat"
        if task == "semseg":
            voc = self.root / "semseg" / "VOC12" / f"{stem}.png"
            return (voc if voc.is_file() else self.root / "semseg" / "pascal-context" / f"{stem}.png",)
        if task == "parts":
            return (self.root / "human_parts" / f"{stem}.mat",)
        if task == "normals":
            return (self.root / "normals_distill" / f"{stem}.png", label_map)
        if task == "saliency":
            return (self.root / "sal_distill" / f"{stem}.png",)
        return (label_map,)

    def _read_label(self, task: str, stem: str, shape: tuple[int, int]) -> np.ndarray:
        files = self._label_files(task, stem)
        if task == "semseg":
            return read_index_png(files[0])
        if task == "parts":
            return decode_human_parts(files[0], shape)
        if task == "saliency":
            return (read_index_png(files[0]) > 127).astype(np.float32)  # v / 255 > 0.5
        if task == "normals":
            return decode_distilled_normals(files[0], load_label_map(files[1]))
        return label_map_edges(load_label_map(files[0]))

    def _stems_with_person(self) -> list[str]:
        """Stems whose parts label is not all-ignore, from the ImageSets/Parts cache if valid."""
        cache = self.root / "ImageSets" / "Parts" / f"{self.split}.txt"
        objects: dict | None = None
        if cache.is_file():
            try:
                objects = json.loads(cache.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                objects = None
        if isinstance(objects, dict) and set(objects) >= set(self.stems):
            keep = [s for s in self.stems if PERSON_CLASS_INDEX in objects[s]]
        else:
            keep = [s for s in self.stems if _has_person(self.root / "human_parts" / f"{s}.mat")]
        if not keep:
            raise DataError(f"no image of split {self.split!r} in {self.root / 'human_parts'} shows a person "
                            "with part annotations: pick another split or add tasks besides 'parts'")
        return keep


def _task_source_present(root: Path, task: str) -> bool:
    label_maps = (root / "pascal-context" / "trainval").is_dir()
    return {
        "semseg": (root / "semseg" / "VOC12").is_dir() or (root / "semseg" / "pascal-context").is_dir(),
        "parts": (root / "human_parts").is_dir(),
        "normals": (root / "normals_distill").is_dir() and label_maps,
        "saliency": (root / "sal_distill").is_dir(),
        "edges": label_maps,
    }.get(task, False)


def _loadmat(path: Path) -> dict:
    try:
        return scipy.io.loadmat(str(path))
    except (OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise DataError(f"cannot read MATLAB file {path} ({exc}): re-extract it from the PASCAL_MT archive") from None


def load_label_map(path: Path) -> np.ndarray:
    """The 459-class PASCAL-Context ``LabelMap`` of one image, as int64 [H,W]."""
    mat = _loadmat(path)
    if "LabelMap" not in mat:
        raise DataError(f"{path} has no 'LabelMap' variable: it is not a PASCAL-Context trainval annotation")
    return np.asarray(mat["LabelMap"]).astype(np.int64)


def _person_objects(path: Path):
    """(class_ind, parts) of every object in a PASCAL-Part ``anno`` struct."""
    mat = _loadmat(path)
    try:
        objects = mat["anno"][0][0][1]  # anno.objects: fields (class, class_ind, mask, parts)
        for obj in objects.ravel():
            yield int(np.asarray(obj[1]).ravel()[0]), obj[3], obj[2]
    except (KeyError, IndexError, TypeError, ValueError):
        raise DataError(f"{path} is not a PASCAL-Part annotation (no anno.objects struct): "
                        "re-extract human_parts/ from the PASCAL_MT archive") from None


def _has_person(path: Path) -> bool:
    return any(class_ind == PERSON_CLASS_INDEX and np.asarray(mask).sum() > 0
               for class_ind, _, mask in _person_objects(path))


def decode_human_parts(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """int64 [H,W]: 0 background, 1..6 part groups; all 255 when no part is annotated."""
    target = np.zeros(shape, dtype=np.int64)
    for class_ind, parts, _ in _person_objects(path):
        if class_ind != PERSON_CLASS_INDEX or np.asarray(parts).size == 0:
            continue
        for part in np.asarray(parts).ravel():  # anno.objects.parts: fields (part_name, mask)
            name = str(np.asarray(part[0]).ravel()[0])
            if name not in PERSON_PART_CLASS:
                raise DataError(f"{path} has unknown person part {name!r}: expected PASCAL-Part names "
                                f"such as {', '.join(sorted(PERSON_PART_CLASS)[:4])}, ...")
            mask = np.asarray(part[1]).astype(bool)
            if mask.shape != shape:
                raise DataError(f"part mask {name!r} in {path} is {mask.shape[1]}x{mask.shape[0]} but the image "
                                f"is {shape[1]}x{shape[0]}: the annotation belongs to another image")
            target[mask] = PERSON_PART_CLASS[name]
    if not target.any():
        target.fill(IGNORE_INDEX)
    return target


def decode_distilled_normals(path: Path, label_map: np.ndarray) -> np.ndarray:
    """float32 [H,W,3] unit normals, zero outside classes NYUD knows."""
    encoded = read_rgb(path)
    if encoded.shape[:2] != label_map.shape:
        raise DataError(f"normals {path} and its LabelMap differ in size: re-extract both from PASCAL_MT")
    normals = 2.0 * encoded.astype(np.float32) / 255.0 - 1.0
    valid = np.isin(label_map, np.fromiter(NORMALS_VALID_CONTEXT_IDS, dtype=np.int64))
    normals[~valid] = 0.0
    return unit_normals(normals, path)


def label_map_edges(label_map: np.ndarray) -> np.ndarray:
    """float32 [H,W] in {0,1}: thinned boundaries between labelled regions."""
    laplacian = ndimage.correlate(label_map.astype(np.float64), _LAPLACIAN_4, mode="mirror")
    return thin(laplacian != 0).astype(np.float32)
