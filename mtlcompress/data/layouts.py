"""Telling the on-disk dataset layouts apart and opening any of them as a ``DenseDataset``.

Three layouts are understood:

* the mtlcompress *scenes* layout (``scenes.py``; written by our synthetic generator or by hand),
* PASCAL-Context in the ATRC / InvPT ``PASCAL_MT`` layout (``pascal_context.py``),
* NYUD-v2 in the ATRC ``NYUD_MT`` layout or InvPT's PNG variant of it (``nyud.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mtlcompress.data.base import DenseDataset, existing_dir
from mtlcompress.data.nyud import NyudDataset
from mtlcompress.data.pascal_context import PascalContextDataset
from mtlcompress.data.scenes import ScenesDataset
from mtlcompress.errors import DataError
from mtlcompress.io.image_size import SizeLike

LAYOUT_SCENES = "scenes"
LAYOUT_PASCAL_CONTEXT = "pascal_context"
LAYOUT_NYUD = "nyud"


def detect_layout(root: str | os.PathLike) -> str:
    """The layout name of ``root``: ``"scenes"``, ``"pascal_context"`` or ``"nyud"``."""
    return _locate(existing_dir(root))[0]


def open_dataset(root: str | os.PathLike, split: str = "train", tasks: Sequence[str] | None = None,
                 size: SizeLike | None = None, native_labels: bool = False) -> DenseDataset:
    """Open ``root`` in whichever known layout it is in.

    A folder that holds ``PASCAL_MT/`` or ``NYUD_MT/`` (the ATRC download folder) is
    accepted too. ``native_labels`` adds each label at its image's own size to the
    samples (``"native"``), for evaluation by the references' protocol.
    """
    layout, base = _locate(existing_dir(root))
    if layout == LAYOUT_PASCAL_CONTEXT:
        dataset: DenseDataset = PascalContextDataset(base, split=split, tasks=tasks, size=size)
    elif layout == LAYOUT_NYUD:
        dataset = NyudDataset(base, split=split, tasks=tasks, size=size)
    else:
        dataset = ScenesDataset(base, split=split, tasks=tasks, size=size)
    dataset.keep_native_labels = native_labels
    return dataset


def list_video_clips(root: str | os.PathLike) -> list[Path]:
    """Clip folders under ``root/videos/``, sorted by name; empty if there is no videos/."""
    videos = existing_dir(root) / "videos"
    if not videos.is_dir():
        return []
    return sorted(p for p in videos.iterdir() if p.is_dir() and not p.name.startswith("."))


def open_clip(clip_dir: str | os.PathLike, tasks: Sequence[str] | None = None,
              size: SizeLike | None = None) -> DenseDataset:
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
