"""Our file container: a safetensors file whose metadata holds a format name, a format
version and one JSON document.

Checkpoints, backbone inits, training states and bundles all use it, so the checks a
user relies on (missing file, not safetensors, truncated, wrong format, future
version, bad JSON) are written once and give the same one-line errors everywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from mtlcompress.errors import MtlCompressError
from mtlcompress.io.atomic import save_safetensors_atomic

FORMAT_KEY = "format"
VERSION_KEY = "format_version"
DOCUMENT_KEY = "document"


def write_container(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    *,
    format_name: str,
    version: int,
    document: Mapping[str, Any],
) -> None:
    metadata = {
        FORMAT_KEY: format_name,
        VERSION_KEY: str(version),
        DOCUMENT_KEY: json.dumps(document, sort_keys=True),
    }
    save_safetensors_atomic(tensors, path, metadata)


def read_container_header(
    path: str | os.PathLike,
    *,
    format_name: str,
    versions: tuple[int, ...],
    error: type[MtlCompressError],
) -> tuple[int, dict[str, Any]]:
    """Check the file is our ``format_name`` in a supported version; return (version, document)."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: file not found")
    if not path.is_file():
        raise error(f"{path}: not a file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    found = metadata.get(FORMAT_KEY)
    if found != format_name:
        what = f"a '{found}' file" if found else "a safetensors file without mtlcompress metadata"
        raise error(f"{path}: expected a '{format_name}' file, found {what}")
    try:
        version = int(metadata.get(VERSION_KEY, ""))
    except ValueError:
        raise error(f"{path}: missing or malformed format version") from None
    if version not in versions:
        raise error(
            f"{path}: format version {version} is not supported by this mtlcompress "
            f"(supports {', '.join(map(str, versions))}); upgrade mtlcompress or re-export the file"
        )
    try:
        document = json.loads(metadata.get(DOCUMENT_KEY, ""))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: metadata JSON is corrupt ({exc.msg})") from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise error(f"{path}: metadata JSON is nested too deeply to be one of our documents") from None
    if not isinstance(document, dict):
        raise error(f"{path}: metadata JSON must be an object")
    return version, document


def read_container_tensors(path: str | os.PathLike, *, error: type[MtlCompressError]) -> dict[str, torch.Tensor]:
    """Load every tensor, turning truncation and corruption into ``error``."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise error(f"{path}: tensor data is truncated or corrupt ({_first_line(exc)})") from None


def read_container_shapes(path: str | os.PathLike, *, error: type[MtlCompressError]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the header alone (no tensor data is read), so a file
    can be checked against the model it claims to hold before anything is allocated."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise error(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None


def check_tensor_shapes(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
                        path: str | os.PathLike, *, error: type[MtlCompressError], hint: str) -> None:
    """Exactly the expected tensors with exactly the expected shapes, or one line
    naming the first tensor that differs."""
    check_tensor_names(expected, found, path, error=error, hint=hint)
    for name in sorted(expected):
        if tuple(found[name]) != tuple(expected[name]):
            raise error(f"{path}: tensor '{name}' has shape {tuple(found[name])}, the architecture in the "
                        f"metadata needs {tuple(expected[name])}")


def check_tensor_names(expected: Iterable[str], found: Iterable[str], path: str | os.PathLike, *,
                       error: type[MtlCompressError], hint: str) -> None:
    """Exactly the expected tensors, or one line naming the first missing or extra one."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        raise error(f"{path}: missing {len(missing)} tensor(s), e.g. '{missing[0]}'{hint}")
    if extra:
        raise error(f"{path}: {len(extra)} unexpected tensor(s), e.g. '{extra[0]}'{hint}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
