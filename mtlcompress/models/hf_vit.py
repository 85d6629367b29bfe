"""HuggingFace ``transformers`` ViT checkpoints read without ``transformers``: its
``config.json`` -> ``BackboneConfig``, its key names -> timm's.

HF's ViT is the same computation as timm's plain ViT (pre-norm blocks, class token,
learned position embedding over class and patch tokens, a final LayerNorm); only the
names differ, and HF keeps the attention's query, key and value as three linear layers
where timm has one fused ``qkv``. Keys this map does not know (``pooler``,
``classifier``, ``mask_token``, a task head) are passed through unchanged, so the
importer reports them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from mtlcompress.errors import CheckpointError
from mtlcompress.models.backbone import BackboneConfig

__all__ = ["find_hf_folder", "hf_backbone_config", "hf_to_timm_keys", "looks_like_hf_vit"]

# One HF name -> one timm name (``N``: the block index).
_RENAMES = (
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
)
_QKV = re.compile(r"(?:vit\.)?encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")
_HF_SIGN = re.compile(r"(^|\.)encoder\.layer\.\d+\.attention\.attention\.")


def looks_like_hf_vit(keys: list[str]) -> bool:
    return any(_HF_SIGN.search(k) for k in keys)


def find_hf_folder(path: Path) -> Path | None:
    """The folder whose ``config.json`` describes ``path`` (a folder or a file in it)."""
    folder = path if path.is_dir() else path.parent
    return folder if (folder / "config.json").is_file() else None


def hf_weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no model.safetensors (or pytorch_model.bin) next to config.json")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must hold a JSON object")
    return data


def hf_backbone_config(folder: Path, arch: str = "hf-vit") -> BackboneConfig:
    """``config.json`` (and ``preprocessor_config.json``'s mean and std, when present)
    -> the timm ViT that computes the same function."""
    config = _read_json(folder / "config.json")
    if config.get("model_type", "vit") != "vit":
        raise CheckpointError(f"{folder}/config.json: model_type '{config.get('model_type')}' is not a plain ViT; "
                              "import its state dict with --key-map instead")
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{folder}/config.json: hidden_act '{config.get('hidden_act')}' (only exact GELU)")
    try:
        hidden, image, patch = int(config["hidden_size"]), config.get("image_size", 224), config.get("patch_size", 16)
        fields: dict[str, Any] = {
            "arch": arch, "img_size": image, "patch_size": patch, "embed_dim": hidden,
            "depth": config["num_hidden_layers"], "num_heads": config["num_attention_heads"],
            "mlp_ratio": float(config.get("intermediate_size", 4 * hidden)) / hidden,
            "qkv_bias": bool(config.get("qkv_bias", True)), "norm_eps": float(config.get("layer_norm_eps", 1e-12)),
        }
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{folder}/config.json: not a ViT config ({type(exc).__name__}: {exc})") from None
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        pre = _read_json(preprocessor)
        fields.update({name: pre[key] for name, key in (("mean", "image_mean"), ("std", "image_std")) if key in pre})
    else:  # transformers' ViTImageProcessor defaults
        fields.update(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    try:
        return BackboneConfig.from_dict(fields)
    except CheckpointError as exc:
        raise CheckpointError(f"{folder}/config.json: {exc}") from None


def hf_to_timm_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """HF names -> timm names, q/k/v fused into ``qkv`` (in timm's q, k, v order).

    Returns the renamed tensors and, per new name, the source key(s) it came from (for
    reports). Unknown keys keep their names; a block missing one of q/k/v keeps all three
    unfused, so the importer reports them rather than inventing a tensor.
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    parts: dict[tuple[str, str], dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        match = _QKV.fullmatch(key)
        if match:
            block, which, kind = match.groups()
            parts.setdefault((block, kind), {})[which] = (key, tensor)
            continue
        name = key.removeprefix("vit.")
        for pattern, replacement in _RENAMES:
            if re.fullmatch(pattern, name):
                name = re.sub(pattern, replacement, name)
                break
        else:
            name = key
        out[name], origin[name] = tensor, key
    for (block, kind), found in parts.items():
        if set(found) == {"query", "key", "value"}:
            name = f"blocks.{block}.attn.qkv.{kind}"
            out[name] = torch.cat([found[w][1] for w in ("query", "key", "value")], dim=0)
            origin[name] = " + ".join(found[w][0] for w in ("query", "key", "value"))
        else:
            for key, tensor in found.values():
                out[key], origin[key] = tensor, key
    return out, origin
