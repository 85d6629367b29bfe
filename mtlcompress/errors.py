"""The one error family mtlcompress raises for problems a user can fix.

The CLI turns any ``MtlCompressError`` into a single line and a non-zero exit code;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MtlCompressError(Exception):
    """Base class: a known failure with a message that says what to do."""


class CheckpointError(MtlCompressError):
    """A checkpoint file is missing, corrupt, or does not match what was asked."""


class DataError(MtlCompressError):
    """A dataset folder is missing files, has mismatched stems, or bad labels."""


class BundleError(MtlCompressError):
    """A multi-task bundle is corrupt, of an unknown version, or inconsistent."""


class PlanError(MtlCompressError):
    """A plan file is malformed or refers to things that do not exist."""


class TrainingDiverged(MtlCompressError):
    """Training produced NaN/Inf; the last good checkpoint was kept."""
