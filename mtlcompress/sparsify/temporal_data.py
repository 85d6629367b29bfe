"""Pairs of video frames for temporal training: a frame and one a few frames before."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from mtlcompress.data.base import DenseDataset
from mtlcompress.data.layouts import list_video_clips, open_clip
from mtlcompress.errors import DataError


class FramePairs(Dataset):
    """Every ``(frame f, frame f - k)`` with ``1 <= k <= max_offset`` inside each clip.

    Training draws batches at random from all pairs, so each step sees random frame
    offsets, as the method asks. Items carry the later frame's labels.
    """

    def __init__(self, clips: Sequence[DenseDataset], max_offset: int = 3) -> None:
        if max_offset < 1:
            raise DataError("max frame offset must be >= 1")
        self.clips = list(clips)
        self.pairs = [(c, f, f - k) for c, clip in enumerate(self.clips) for f in range(1, len(clip))
                      for k in range(1, max_offset + 1) if f - k >= 0]
        if not self.pairs:
            raise DataError("no frame pairs: clips need at least two frames")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip, frame, previous = self.pairs[index]
        sample = dict(self.clips[clip][frame])
        sample["previous"] = self.clips[clip][previous]["image"]
        return sample


def split_clips(data: str | os.PathLike, tasks: Sequence[str], size: int) -> tuple[list[DenseDataset], list[DenseDataset]]:
    """(training clips, held-out clips): the last quarter of clips (at least one) is held out."""
    paths = list_video_clips(data)
    if len(paths) < 2:
        raise DataError(f"{data} needs at least two video clips under videos/ (one is held out for calibration); "
                        "make some with `mtlcompress data synth --videos N`")
    held_out = max(1, len(paths) // 4)
    clips = [open_clip(path, tasks=tasks, size=size) for path in paths]
    return clips[:-held_out], clips[-held_out:]
