"""The one check every command runs before it writes: an output never replaces one of
the command's own inputs, an existing output is replaced only when asked, and a path
of the wrong kind (a folder where a file goes, a file where a folder goes, the wrong
extension) is one clear line before any work starts, not a traceback after it.

Torch-free, so the CLI can call it before importing anything heavy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mtlcompress.errors import MtlCompressError

PathLike = str | os.PathLike
# Checkpoints, backbone initialisations and bundles are safetensors files; reports are HTML.
SAFETENSORS_SUFFIXES = (".safetensors",)
HTML_SUFFIXES = (".html", ".htm")


class OutputError(MtlCompressError):
    """An output path would destroy an input, replace a file unasked, or is of the wrong kind."""

    code = "output"


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same file: the same resolved path, or (both
    existing) the same inode, which also catches hard links and symlinks."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_output(
    path: PathLike,
    inputs: Iterable[PathLike | None] = (),
    *,
    overwrite: bool = False,
    suffixes: Iterable[str] | None = None,
    folder: bool = False,
    label: str = "--out",
) -> Path:
    """Return ``path`` as a ``Path`` if writing it is safe; raise ``OutputError`` otherwise.

    Args:
        path: the file (or, with ``folder=True``, the folder) the command will write.
        inputs: every file or folder the command reads; ``None`` entries are skipped.
            The output may not be one of them (compared as files, links included).
        overwrite: an existing output file may be replaced, or a folder that is not empty
            written into (commands that resume in their folder always pass ``True``).
        suffixes: allowed file extensions (lower case, with the dot), e.g. ``(".html",)``.
        folder: the output is a folder (``data synth``, ``demo``, a plan's ``out``).
        label: how the user named the path (an option), for the message.
    """
    out = Path(path)
    for source in inputs:
        if source is not None and same_file(out, Path(source)):
            raise OutputError(f"{label} {out} is also an input ({source}); write to another path")
    if folder:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{label} {out} is a file; it must be a folder (or not exist yet)")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise OutputError(f"{label} {out} is a folder that is not empty; pass --overwrite to write into it")
        return out
    if out.is_dir():
        raise OutputError(f"{label} {out} is a folder; give a file path")
    allowed = tuple(suffixes or ())
    if allowed and out.suffix.lower() not in allowed:
        raise OutputError(f"{label} {out} must end in {' or '.join(allowed)}")
    if out.parent.exists() and not out.parent.is_dir():
        raise OutputError(f"{label} {out}: {out.parent} is a file, not a folder")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputError(f"{label} {out} already exists; pass --overwrite to replace it")
    return out
