"""Shared initial weights for the single-task models.

All task models must start from one initialisation (the method assumes the tasks
were fine-tuned from the same pretrained ViT). That initialisation is either our
``mtlcompress.backbone`` file (the demo makes one by shared pretraining) or a foreign
timm-style state dict (``.safetensors``, ``.pt``/``.pth``/``.bin`` loaded with
``weights_only=True``), which ``checkpoint_filter_fn`` adapts.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed
from timm.models import vision_transformer as timm_vit

from mtlcompress.errors import CheckpointError
from mtlcompress.io.container import (
    FORMAT_KEY,
    check_tensor_shapes,
    read_container_header,
    read_container_shapes,
    read_container_tensors,
    write_container,
)
from mtlcompress.models.backbone import BackboneConfig, backbone_tensor_shapes

FORMAT_NAME = "mtlcompress.backbone"
FORMAT_VERSION = 1

# Wrappers that training frameworks put around a state dict, and key prefixes they add.
_NESTING_KEYS = ("state_dict", "model", "module", "model_state", "ema")
_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "vit.")
# Classifier/pooling parameters of a timm ViT; our backbones have none.
_DROPPED_PREFIXES = ("head.", "fc_norm.", "head_drop.", "attn_pool.")


def save_backbone_init(backbone: torch.nn.Module, config: BackboneConfig, path: str | os.PathLike,
                       training: dict[str, Any] | None = None) -> None:
    write_container(path, backbone.state_dict(), format_name=FORMAT_NAME, version=FORMAT_VERSION,
                    document={"backbone": config.to_dict(), "training": training or {}})


def read_backbone_config(path: str | os.PathLike) -> BackboneConfig:
    """The backbone an init file describes, checked against its tensor header (no data
    read), so a caller can build the model from it without trusting its numbers."""
    _, doc = read_container_header(path, format_name=FORMAT_NAME, versions=(FORMAT_VERSION,), error=CheckpointError)
    try:
        config = BackboneConfig.from_dict(doc.get("backbone"))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    check_tensor_shapes(backbone_tensor_shapes(config), read_container_shapes(path, error=CheckpointError), path,
                        error=CheckpointError, hint=" (the file's backbone metadata does not match its tensors)")
    return config


def checkpoint_filter_fn(state_dict: dict[str, Any], model: timm_vit.VisionTransformer) -> dict[str, torch.Tensor]:
    """Adapt a foreign ViT state dict to ``model``: unwrap, strip prefixes, drop the
    classifier, then let timm's own filter convert layouts and resize ``pos_embed``.

    Returns a new dict; the input is not modified.
    """
    state = unwrap_state_dict(state_dict)
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key.startswith(_DROPPED_PREFIXES):
            continue
        cleaned[key] = value
    return timm_vit.checkpoint_filter_fn(cleaned, model)


def unwrap_state_dict(state_dict: Any) -> dict[str, Any]:
    """The state dict inside the wrappers training frameworks save (``{"model": ...}``,
    ``{"state_dict": ...}``, ...): descends while no value is a tensor."""
    state: Any = state_dict
    while isinstance(state, dict) and len(state) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        nested = next((state[k] for k in _NESTING_KEYS if isinstance(state.get(k), dict)), None)
        if nested is None:
            break
        state = nested
    if not isinstance(state, dict):
        raise CheckpointError("weights file does not contain a state dict")
    return state


def load_initial_backbone(model: timm_vit.VisionTransformer, path: str | os.PathLike) -> dict[str, Any]:
    """Load shared initial weights into ``model`` in place; returns provenance info.

    A position embedding for another grid is resampled with timm's
    ``resample_abs_pos_embed``: from the grid an init file records (non-square ones
    included), else by timm's filter, which assumes a square source grid."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    state = read_weights_file(path)
    if is_backbone_init(path):
        state = _pos_embed_at_grid(state, read_backbone_config(path), model)
    try:
        adapted = checkpoint_filter_fn(state, model)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except Exception as exc:  # timm's filter raises assorted errors on odd inputs
        raise CheckpointError(f"{path}: cannot adapt these weights to the backbone ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(adapted))
    if missing:
        raise CheckpointError(f"{path}: missing backbone tensor '{missing[0]}' (and {len(missing) - 1} more); "
                              "is this a ViT of the same family?")
    for name, tensor in adapted.items():
        if name in expected and tensor.shape != expected[name].shape:
            raise CheckpointError(f"{path}: tensor '{name}' has shape {tuple(tensor.shape)}, "
                                  f"the backbone needs {tuple(expected[name].shape)} (different architecture?)")
    for name, tensor in adapted.items():
        # Training from a NaN or Inf start diverges at step 0 and blames the learning rate.
        if name in expected and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor '{name}' holds NaN or Inf values; these weights cannot "
                                  "start training")
    model.load_state_dict({k: v for k, v in adapted.items() if k in expected})
    return {"init": str(path), "init_format": "mtlcompress" if is_backbone_init(path) else "foreign"}


def _pos_embed_at_grid(state: dict[str, Any], source: BackboneConfig,
                      model: timm_vit.VisionTransformer) -> dict[str, Any]:
    grid, prefix = tuple(model.patch_embed.grid_size), 0 if model.no_embed_class else model.num_prefix_tokens
    pos = state.get("pos_embed")
    if pos is None or model.pos_embed is None or source.grid_size == grid:
        return state
    resampled = resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(source.grid_size),
                                       num_prefix_tokens=prefix)
    return {**state, "pos_embed": resampled}


def is_backbone_init(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get(FORMAT_KEY) == FORMAT_NAME
    except (SafetensorError, OSError):
        return False


def read_weights_file(path: Path) -> dict[str, Any]:
    """Tensors of an init file, a ``.safetensors`` file or a torch pickle read with
    ``weights_only=True`` (nothing in the file can run code)."""
    if is_backbone_init(path):
        read_backbone_config(path)
        return read_container_tensors(path, error=CheckpointError)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # weights_only refuses anything that would run code
            raise CheckpointError(f"{path}: refused: the pickle holds objects other than tensors and plain "
                                  "containers, and loading it could run code (weights_only=True); "
                                  "re-save the weights as .safetensors") from None
        except Exception as exc:  # a torch.save zip cut short, or not a torch file at all
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:200]
            raise CheckpointError(f"{path}: damaged or truncated: not a readable PyTorch weights file "
                                  f"({first})") from None
    raise CheckpointError(f"{path}: unsupported weights file type '{path.suffix}' (use .safetensors, .pt, .pth or .bin)")
