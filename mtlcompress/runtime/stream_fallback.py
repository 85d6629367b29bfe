"""Whether a video stream's delta frames pay off, from what its frames measured.

A delta frame reuses the previous frame, but on a small model or a moving scene its
row-by-row bookkeeping can cost more than computing the frame in full. The engine
times every frame it streams; once it has timed a keyframe and a few delta frames and
the delta frames' median is the higher, it computes every later frame in full
("per-frame"): each frame either as a keyframe (all tasks stacked) or as the tasks' own
models, whichever measured cheaper (the latter is timed once to know). Both give every
task's exact output. The decision outlives the stream, so the engine's next stream
starts in full frames.
"""

from __future__ import annotations

import statistics

__all__ = ["FRAME_PATHS", "StreamFallback"]

# How a streamed frame was computed (``FrameResult.path``).
FRAME_PATHS = ("keyframe", "delta", "per-task")
_MIN_DELTA_FRAMES = 2
_SAMPLES_KEPT = 16


class StreamFallback:
    """Per-frame timings of an engine's streams and the decision they support.

    Args:
        mode: ``"auto"`` (decide from timings), ``"temporal"`` (always reuse frames)
            or ``"per-task"`` (every frame through the tasks' own models).
        measure: whether ``"auto"`` may decide at all (off: always temporal).
    """

    def __init__(self, mode: str = "auto", measure: bool = True) -> None:
        self.mode = mode
        self.measure = measure
        self.per_frame = mode == "per-task"
        self.reason: str | None = "forced (network_path='per-task')" if self.per_frame else None
        self.seconds: dict[str, list[float]] = {path: [] for path in FRAME_PATHS}  # the latest, per path
        self.frames: dict[str, int] = dict.fromkeys(FRAME_PATHS, 0)

    def frame_path(self) -> str | None:
        """The full-frame path for the next frame while ``per_frame`` (``None``: temporal)."""
        if not self.per_frame:
            return None
        if self.mode == "per-task" or not self.seconds["per-task"] or not self.seconds["keyframe"]:
            return "per-task"
        medians = self.medians()
        return "keyframe" if medians["keyframe"] < medians["per-task"] else "per-task"

    def record(self, path: str, seconds: float) -> str | None:
        """A frame's wall-clock; returns the reason if the stream switches to full frames now."""
        self.frames[path] += 1
        samples = self.seconds[path]
        samples.append(seconds)
        del samples[:-_SAMPLES_KEPT]
        if self.per_frame or self.mode != "auto" or not self.measure:
            return None
        delta, key = self.seconds["delta"], self.seconds["keyframe"]
        if len(delta) < _MIN_DELTA_FRAMES or not key:
            return None
        medians = self.medians()
        if medians["delta"] <= medians["keyframe"]:
            return None
        self.per_frame = True
        self.reason = (f"delta frames took {medians['delta'] * 1e3:.3g} ms (median of the last {len(delta)}), keyframes "
                       f"{medians['keyframe'] * 1e3:.3g} ms: every later frame is computed in full")
        return self.reason

    def medians(self) -> dict[str, float]:
        return {path: statistics.median(values) for path, values in self.seconds.items() if values}

    def summary(self) -> dict:
        """JSON-ready: the mode, whether frames are computed in full and why, median seconds by frame path."""
        return {"mode": "per-frame" if self.per_frame else "temporal", "reason": self.reason,
                "median_s": self.medians(), "frames": dict(self.frames)}
