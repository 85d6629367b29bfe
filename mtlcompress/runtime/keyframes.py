"""When a video stream must recompute a frame in full (a keyframe).

Frames between keyframes propagate only token deltas above threshold, measured
against the last value that was *propagated* (not the last one received), so a slow
drift below threshold is caught as soon as it adds up to one threshold step. What
remains unpropagated is measured as ``drift``: the largest relative RMS error
``||x - x_propagated|| / ||x||`` over the tapped layers in the frame. A keyframe is
forced every ``keyframe_every`` frames, and on the frame after drift passed
``max_drift``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeyframePolicy:
    """When a video stream recomputes a frame in full instead of from the previous one.

    Args:
        keyframe_every: a keyframe at least every this many frames (1: every frame).
        max_drift: also a keyframe after a frame whose measured drift exceeds this.
    """

    keyframe_every: int = 16
    max_drift: float = 0.25

    def __post_init__(self) -> None:
        if self.keyframe_every < 1:
            raise ValueError("keyframe_every must be >= 1 (1 means every frame is a keyframe)")
        if not self.max_drift > 0:
            raise ValueError("max_drift must be > 0")

    def is_keyframe(self, frames_since_keyframe: int | None, previous_drift: float) -> bool:
        """``frames_since_keyframe`` is None before the first frame."""
        return (frames_since_keyframe is None or frames_since_keyframe + 1 >= self.keyframe_every
                or previous_drift > self.max_drift)

