"""Writing rendered synthetic samples into the scenes layout, off the rendering thread,
and rendering them ahead in worker processes."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def _write_sample(root: Path, stem: str, sample: dict[str, np.ndarray]) -> None:
    """Write one rendered sample into the per-task folders of ``root``."""
    Image.fromarray(sample["image"]).save(root / "images" / f"{stem}.png", format="PNG")
    Image.fromarray(sample["semseg"]).save(root / "semseg" / f"{stem}.png", format="PNG")
    np.save(root / "depth" / f"{stem}.npy", sample["depth"])
    np.save(root / "normals" / f"{stem}.npy", sample["normals"])
    for task in ("edges", "saliency"):
        Image.fromarray(sample[task] * np.uint8(255)).save(root / task / f"{stem}.png", format="PNG")


class SampleWriter:
    """Writes samples on one background thread so slow file creation overlaps rendering.

    Results are collected in submission order, so ``progress`` counts files that are
    really on disk and a failed write is re-raised in the caller's thread.
    """

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: deque[Future] = deque()
        self._total, self._done, self._progress = total, 0, progress

    def submit(self, root: Path, stem: str, sample: dict[str, np.ndarray]) -> None:
        self._pending.append(self._pool.submit(_write_sample, root, stem, sample))
        while len(self._pending) > 8:
            self._finish_one()

    def _finish_one(self) -> None:
        self._pending.popleft().result()
        self._done += 1
        if self._progress is not None:
            self._progress(self._done, self._total)

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            while self._pending and exc_type is None:
                self._finish_one()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(pool: Executor | None, render: Callable, jobs: list[tuple], ahead: int = 64) -> Iterator:
    """``render(*job)`` for each job, in order: here, or in ``pool`` with at most ``ahead``
    results waiting, so memory stays bounded however many items are made."""
    if pool is None:
        yield from (render(*job) for job in jobs)
        return
    pending = [pool.submit(render, *job) for job in jobs[:ahead]]
    for position in range(len(jobs)):
        result = pending[position].result()
        pending[position] = None  # let the sample go once written
        if position + ahead < len(jobs):
            pending.append(pool.submit(render, *jobs[position + ahead]))
        yield result
