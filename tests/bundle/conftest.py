"""Helpers for bundle tests: re-sign an edited bundle so an edit reaches the validators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mtlcompress.bundle.checksums import manifest_sha256, payload_sha256
from mtlcompress.bundle.format import FORMAT_NAME
from mtlcompress.io.container import write_container

Edit = Callable[[dict[str, torch.Tensor], dict[str, Any]], Any]


def read_manifest(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["document"])


def write_signed(path: Path, tensors: dict[str, torch.Tensor], manifest: dict[str, Any], *, checksums: bool = True,
                 version: int = 1, name: str = FORMAT_NAME) -> None:
    """Write a bundle container with both checksums recomputed, as a careful forger would."""
    if checksums:
        manifest["payload_sha256"] = payload_sha256(tensors)
        manifest["manifest_sha256"] = manifest_sha256(manifest)
    write_container(path, tensors, format_name=name, version=version, document=manifest)


def rewrite(path: Path, edit: Edit, *, checksums: bool = True, version: int = 1, name: str = FORMAT_NAME) -> None:
    """Re-write a bundle with ``edit(tensors, manifest)`` applied, checksums recomputed."""
    tensors, manifest = load_file(path), read_manifest(path)
    edit(tensors, manifest)
    write_signed(path, tensors, manifest, checksums=checksums, version=version, name=name)
