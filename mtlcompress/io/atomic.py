"""Crash-safe file writes: a killed process leaves the old file or the new one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path in the target's folder; rename it over ``path`` on success.

    The temp file lives next to the target so the final ``os.replace`` is a rename on
    one filesystem, which POSIX makes atomic. The rename also replaces a symbolic link
    at ``path`` itself, never the file it points to. ``durable=False`` skips the fsync:
    still all-or-nothing if the process dies, but not across a power cut; for the many
    small per-frame files of ``run``, where an fsync each would dominate the time.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        # mkstemp's 0600 would make every output private; writers may also re-create tmp.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (setting it, even
    briefly, would race with files other threads create)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_safetensors_atomic(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str]
) -> None:
    """Write a safetensors file atomically; tensors are made contiguous first."""
    payload = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(payload, str(tmp), metadata=dict(metadata))
