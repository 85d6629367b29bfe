"""Where ``mtlcompress run`` may write: names made from input files, kept inside the
output folder, never through a symbolic link, never over an input, never colliding.

Output folders are named from input file names, which an attacker or an accident can
choose (``...png`` has the stem ``..``). Names are sanitised first; each folder is then
created one component at a time, refusing links, and checked to resolve inside the
output root. Files themselves are written through ``io.atomic.atomic_path``, whose
final ``os.replace`` swaps a link at the target for the new file without touching what
the link pointed to.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from mtlcompress.errors import MtlCompressError

# Letters and digits of any script, space, ``_ . -``; anything else (path separators,
# control characters, shell and Windows specials) becomes ``_``.
_UNSAFE = re.compile(r"[^\w .\-]")
_MAX_NAME = 200  # bytes below the usual 255-byte limit, leaving room for a temp prefix


def safe_name(name: str) -> str:
    """A single, non-hidden path component made from ``name``: never empty, ``.`` or
    ``..``, no separator, not starting with a dot."""
    cleaned = _UNSAFE.sub("_", name).strip()
    cleaned = re.sub(r"^\.+", lambda dots: "_" * len(dots.group()), cleaned)  # "..", ".hidden" -> "__", "_hidden"
    while len(cleaned.encode("utf-8")) > _MAX_NAME:
        cleaned = cleaned[:-1]
    return cleaned or "_"


def output_names(short: Sequence[str], full: Sequence[str]) -> list[str]:
    """One output name per input, sanitised by ``safe_name``: its short name (a file's
    stem), or its full name (the file name) when another input has the same short name,
    so ``a.png`` and ``a.jpg`` write ``a.png/`` and ``a.jpg/``. Inputs whose names
    still coincide (one file name in two folders) are an error, listing those names."""
    shorts = [safe_name(name) for name in short]
    short_counts = Counter(shorts)
    names = [name if short_counts[name] == 1 else safe_name(long) for name, long in zip(shorts, full)]
    counts = Counter(names)  # one pass: 12,000 inputs must not cost 12,000 list scans
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        shown = ", ".join(duplicates[:10]) + (f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else "")
        raise MtlCompressError(f"several inputs are named {shown}; their outputs would collide "
                               "(rename them or run them separately)")
    return names


class OutputFolder:
    """The ``--out`` folder: hands out folders and file paths below it that are safe
    to write (see the module docstring). ``root`` itself may be a link the user made.

    Args:
        root: the output folder; created if missing.
        protected: input files that no output may replace.
    """

    def __init__(self, root: str | os.PathLike, protected: Iterable[str | os.PathLike] = ()) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise MtlCompressError(f"--out {self.root} is a file; give a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self._resolved_root = self.root.resolve()
        self._protected = {Path(p).resolve() for p in protected}

    def folder(self, *names: str) -> Path:
        """``root/names[0]/names[1]/...``, created; each name must already be safe."""
        path = self.root
        for name in names:
            if name != safe_name(name):
                raise MtlCompressError(f"unsafe output name '{name}'")  # a caller bug, kept as one line
            path = path / name
            if path.is_symlink():
                raise MtlCompressError(f"{path} is a symbolic link; mtlcompress run never writes through a link "
                                       "(remove it or choose another --out)")
            if path.exists() and not path.is_dir():
                raise MtlCompressError(f"{path} exists and is not a folder; remove it or choose another --out")
            path.mkdir(exist_ok=True)
        self._check_inside(path)
        return path

    def child(self, *names: str) -> OutputFolder:
        """``folder(*names)`` as an ``OutputFolder`` of its own, guarding the same
        inputs (resolved once, not again per child) and checked against the same root."""
        child = object.__new__(OutputFolder)
        child.root = self.folder(*names)
        child._resolved_root = self._resolved_root
        child._protected = self._protected
        return child

    def file(self, folder: Path, name: str) -> Path:
        """``folder/name``, checked: inside the root, not a folder, not an input."""
        if name != safe_name(name):
            raise MtlCompressError(f"unsafe output name '{name}'")
        path = folder / name
        self._check_inside(path.parent)
        if path.is_dir() and not path.is_symlink():
            raise MtlCompressError(f"{path} is a folder; remove it or choose another --out")
        if path.resolve() in self._protected:
            raise MtlCompressError(f"{path} is one of the inputs; choose another --out")
        return path

    def _check_inside(self, folder: Path) -> None:
        resolved = folder.resolve()
        if resolved != self._resolved_root and not resolved.is_relative_to(self._resolved_root):
            raise MtlCompressError(f"{folder} resolves outside --out {self.root}; refusing to write there")
