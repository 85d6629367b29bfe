"""The one error family mtlcompress raises for problems a user can fix.

The CLI turns any ``MtlCompressError`` into a single line and a non-zero exit code;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MtlCompressError(Exception):
    """Base class: a known failure with a message that says what to do.

    ``code`` is the stable name scripts read from ``--json`` errors; subclasses keep it.
    """

    code = "error"


class CheckpointError(MtlCompressError):
    """A checkpoint file is missing, corrupt, or does not match what was asked."""

    code = "checkpoint"


class DataError(MtlCompressError):
    """A dataset folder is missing files, has mismatched stems, or bad labels."""

    code = "data"


class BundleError(MtlCompressError):
    """A multi-task bundle is corrupt, of an unknown version, or inconsistent."""

    code = "bundle"


class PlanError(MtlCompressError):
    """A plan file is malformed or refers to things that do not exist."""

    code = "plan"


class TrainingDiverged(MtlCompressError):
    """Training produced NaN/Inf; the last good checkpoint was kept."""

    code = "diverged"
