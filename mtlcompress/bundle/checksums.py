"""The bundle's two checksums: over every tensor's bytes, and over the manifest.

They detect damage (a truncated copy, flipped bits, a hand edit), not deliberate
tampering: whoever can edit the file can recompute them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch


def payload_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor in sorted-name order: name, dtype, shape, raw bytes.

    Each field is length-framed so no two different payloads hash the same input.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        head = json.dumps([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), len(raw)])
        digest.update(len(head).to_bytes(8, "little") + head.encode())
        digest.update(raw)
    return digest.hexdigest()


def manifest_sha256(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the manifest without its ``manifest_sha256`` key."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
