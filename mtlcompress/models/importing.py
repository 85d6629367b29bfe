"""Bring your own fine-tuned model: a foreign ViT state dict (timm, wrapped, HuggingFace,
or anything a user key map describes) -> an mtlcompress single-task checkpoint, backbone
and head weights kept exactly, without training.

Every source key is accounted for: it is loaded into the model, or named by an
``ignore`` pattern, or the import fails with one line listing the first few keys left
over (and the model keys nothing provided). Nothing is dropped silently.

Key handling, in order: unwrap (``{"model": ...}``, ``{"state_dict": ...}``), strip
``module.``; rename (the HF ViT map, or the user's regex rules applied in file order);
split off the head by ``head_prefix``; strip wrapper prefixes (``model.``,
``backbone.``, ``encoder.``) where that gives a backbone name. A position embedding for
another image size is resampled with timm's ``resample_abs_pos_embed``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed

from mtlcompress.errors import CheckpointError, MtlCompressError
from mtlcompress.models import hf_vit
from mtlcompress.io.image_size import SizeLike
from mtlcompress.models.backbone import BackboneConfig, build_backbone, resolve_backbone, with_image_size
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.models.head_module import allowing_head_module
from mtlcompress.models.heads import HEAD_TYPES_WITH_LAYERS, HEADS, head_layers_from_dict
from mtlcompress.models.weights import read_weights_file, unwrap_state_dict
from mtlcompress.tasks.registry import get_task

__all__ = ["ImportResult", "import_model", "read_key_map"]

_WRAPPER_PREFIXES = ("model.", "backbone.", "encoder.")
_SHOWN = 3  # keys named in an error line


@dataclass
class ImportResult:
    """What an import wrote and how every source key was used."""

    info: CheckpointInfo
    source_format: str               # "timm", "hf-vit" or "key-map"
    loaded: int                      # model tensors filled from the source
    ignored: list[str] = field(default_factory=list)      # source keys an ignore pattern named
    initialised: list[str] = field(default_factory=list)  # model keys left at their fresh init (ignored)
    resampled_pos_embed: tuple[int, int] | None = None    # source grid (rows, cols), when resampled

    def describe(self) -> str:
        head = self.info.head_module or self.info.head_type
        if self.info.head_layers:
            head += " on blocks " + ",".join(map(str, self.info.head_layers))
        parts = [f"{self.info.task}, {head} head, {self.info.backbone.describe()}",
                 f"{self.loaded} tensors from a {self.source_format} state dict"]
        if self.ignored:
            parts.append(f"{len(self.ignored)} source keys ignored")
        if self.initialised:
            parts.append(f"{len(self.initialised)} model keys left at their initialisation")
        if self.resampled_pos_embed:
            parts.append("position embedding resampled from a {}x{} grid".format(*self.resampled_pos_embed))
        return "; ".join(parts)


def read_key_map(path: str | os.PathLike) -> list[tuple[re.Pattern[str], str]]:
    """A TOML file's ``[keys]`` table: ``"regex" = "replacement"`` rules, in file order."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable TOML key map ({exc})") from None
    rules = table.get("keys")
    if not isinstance(rules, dict) or not rules:
        raise CheckpointError(f"{path}: the key map needs a [keys] table of \"pattern\" = \"name\" rules")
    compiled = []
    for pattern, name in rules.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{path}: rule '{pattern}' must map to a string")
        try:
            compiled.append((re.compile(pattern), name))
        except re.error as exc:
            raise CheckpointError(f"{path}: rule '{pattern}' is not a valid regular expression ({exc})") from None
    return compiled


def import_model(source: str | os.PathLike, task: str, out: str | os.PathLike, *,
                 backbone: str | BackboneConfig | None = None, head: str = "dense", head_prefix: str = "head.",
                 head_layers: Sequence[int] | None = None, head_module: str | None = None,
                 key_map: str | os.PathLike | None = None, ignore: Sequence[str] = (),
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 img_size: SizeLike | None = None) -> ImportResult:
    """Convert a fine-tuned model into a single-task checkpoint at ``out``.

    Args:
        source: a state dict file (``.safetensors``, ``.pt``/``.pth``/``.bin``), or a
            HuggingFace ViT folder / file next to its ``config.json``.
        task: the task the head predicts (its channels are checked against the task).
        backbone: a timm ViT name or preset, or a ``BackboneConfig``; for HF sources
            the default is the folder's ``config.json``.
        head: a head type in ``models.heads.HEADS``; its weights are the source keys under
            ``head_prefix`` (``conv.*``/``proj.*``; for ``linear`` also a bare ``weight``
            and ``bias``, from a ``Conv2d`` 1x1 or a ``Linear``; for ``multilevel``
            ``proj.<level>.*``, ``fuse.*``, ``predict.*``; for ``module`` the user
            module's own ``state_dict`` names).
        head_layers: the blocks (1-based) a ``multilevel`` or ``module`` head reads.
        head_module: ``package.module:factory`` of a ``module`` head; trusted for this
            import only (loading the checkpoint later needs it allowed: ``models.head_module``).
        key_map: TOML rules (see ``read_key_map``) applied to every key first.
        ignore: regular expressions; source keys (or missing model keys) they match are
            not an error (missing ones keep their fresh initialisation).
        mean, std: the model's normalisation, overriding the backbone's.
        img_size: the input size to run at, one number or (height, width); the
            position embedding is resampled with timm's ``resample_abs_pos_embed``.
    """
    if head not in HEADS:
        raise CheckpointError(f"unknown head type '{head}'; known head types: {', '.join(HEADS)}")
    if (head_module is not None) != (head == "module"):
        raise CheckpointError("a module head needs --head-module package.module:factory, and only a module head")
    with allowing_head_module(head_module):
        return _import_model(source, task, out, backbone, head, head_prefix, head_layers, head_module, key_map,
                             ignore, mean, std, img_size)


def _import_model(source: str | os.PathLike, task: str, out: str | os.PathLike, backbone: str | BackboneConfig | None,
                  head: str, head_prefix: str, head_layers: Sequence[int] | None, head_module: str | None,
                  key_map: str | os.PathLike | None, ignore: Sequence[str], mean: Sequence[float] | None,
                  std: Sequence[float] | None, img_size: int | None) -> ImportResult:
    spec = get_task(task)
    source = Path(source)
    if not source.exists():
        raise CheckpointError(f"{source}: file not found")
    patterns = _compile_ignores(ignore)
    hf_folder = hf_vit.find_hf_folder(source)
    weights_path = hf_vit.hf_weights_file(source) if source.is_dir() else source
    state = _tensors_only(unwrap_state_dict(read_weights_file(weights_path)), weights_path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    origin = {k: k for k in state}

    if key_map is not None:
        source_format = "key-map"
        state, origin = _apply_rules(state, origin, read_key_map(key_map))
    elif hf_vit.looks_like_hf_vit(list(state)):
        source_format = "hf-vit"
        renamed, hf_origin = hf_vit.hf_to_timm_keys(state)
        state, origin = renamed, {k: hf_origin[k] for k in renamed}
    else:
        source_format = "timm"

    config = _target_config(backbone, source_format, hf_folder, source)
    if mean is not None or std is not None:
        config = BackboneConfig.from_dict({**config.to_dict(), **({"mean": list(mean)} if mean is not None else {}),
                                           **({"std": list(std)} if std is not None else {})})
    source_grid = config.grid_size  # the grid the source's position embedding was trained on
    if img_size is not None:
        config = with_image_size(config, img_size)

    head_state, backbone_state = _split_head(state, origin, head_prefix, head)
    expected_backbone = set(_backbone_keys(config))
    backbone_state = _strip_wrappers(backbone_state, origin, expected_backbone)
    layers = _check_layers(head_layers, config, head)
    out_channels, hidden = _head_sizes(head_state, head, config, head_prefix, spec.channels)
    num_classes = out_channels if spec.categorical else None
    if spec.channels is not None and spec.channels != out_channels:
        raise CheckpointError(f"{source}: the head predicts {out_channels} channels, task '{task}' needs "
                              f"{spec.channels}; is this the right task or --head type?")
    info = CheckpointInfo(task=task, backbone=config, out_channels=out_channels, head_hidden=hidden,
                          num_classes=num_classes, head_type=head, head_layers=layers, head_module=head_module)
    with torch.device("meta"):  # shapes only: the weights come from the source
        expected = build_model(info).state_dict()
    provided = {f"backbone.{k}": v for k, v in backbone_state.items()}
    provided.update({f"head.{k}": v for k, v in head_state.items()})
    resampled = _resample_pos_embed(provided, expected, config, source_grid)

    unused = sorted(k for k in provided if k not in expected)
    missing = sorted(k for k in expected if k not in provided)
    ignored = sorted(origin[k] for k in unused if _matches(patterns, origin[k]))
    initialised = [k for k in missing if _matches(patterns, k)]
    _refuse_leftovers(source, [origin[k] for k in unused if not _matches(patterns, origin[k])],
                      [k for k in missing if k not in initialised])
    for name in expected:
        if name in provided:
            tensor = provided[name]
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise CheckpointError(f"{source}: '{origin.get(name, name)}' has shape {tuple(tensor.shape)}, "
                                      f"'{name}' needs {tuple(expected[name].shape)} (another architecture? "
                                      "check --backbone and --head)")
            # One reduction first: a full isfinite pass over a ViT-B costs seconds.
            if not tensor.is_floating_point() or (not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all()):
                raise CheckpointError(f"{source}: '{origin.get(name, name)}' is not finite floating point")
    if initialised:  # model keys left at a fresh initialisation need a real, initialised model
        model = build_model(info)
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in provided.items() if k in expected},
                              strict=False)
    else:
        with torch.device("meta"):
            model = build_model(info, initialise=False)
        model.load_state_dict({k: v.to(expected[k].dtype).contiguous() for k, v in provided.items()
                               if k in expected}, assign=True)
    info.training = {"stage": "import", "source": str(source), "source_format": source_format,
                     "ignored": ignored, "initialised": initialised}
    save_checkpoint(model, info, out)
    return ImportResult(info=info, source_format=source_format, loaded=len(expected) - len(missing),
                        ignored=ignored, initialised=initialised, resampled_pos_embed=resampled)


def _compile_ignores(ignore: Sequence[str]) -> list[re.Pattern[str]]:
    patterns = []
    for pattern in ignore:
        try:
            patterns.append(re.compile(pattern))
        except re.error as exc:
            raise MtlCompressError(f"--ignore '{pattern}' is not a valid regular expression ({exc})") from None
    return patterns


def _matches(patterns: list[re.Pattern[str]], key: str) -> bool:
    return any(p.search(key) for p in patterns)


def _tensors_only(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    others = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if others:
        raise CheckpointError(f"{path}: the state dict holds {len(others)} entries that are not tensors "
                              f"({', '.join(others[:_SHOWN])}); save only the model's state dict")
    return state


def _apply_rules(state: dict[str, torch.Tensor], origin: dict[str, str],
                 rules: list[tuple[re.Pattern[str], str]]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    out, out_origin = {}, {}
    for key, tensor in state.items():
        name = key
        for pattern, replacement in rules:
            name = pattern.sub(replacement, name)
        if name in out:
            raise CheckpointError(f"the key map gives '{out_origin[name]}' and '{origin[key]}' the same name '{name}'")
        out[name], out_origin[name] = tensor, origin[key]
    return out, out_origin


def _target_config(backbone: str | BackboneConfig | None, source_format: str, hf_folder: Path | None,
                   source: Path) -> BackboneConfig:
    if isinstance(backbone, BackboneConfig):
        return backbone
    if backbone is not None:
        return resolve_backbone(backbone)
    if source_format == "hf-vit":
        if hf_folder is None:
            raise CheckpointError(f"{source}: HuggingFace ViT keys but no config.json beside them; pass --backbone")
        return hf_vit.hf_backbone_config(hf_folder)
    raise CheckpointError(f"{source}: name the architecture with --backbone (a timm ViT name)")


def _split_head(state: dict[str, torch.Tensor], origin: dict[str, str], prefix: str,
                head: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Head tensors (prefix stripped; a linear head's bare ``weight``/``bias`` and a
    ``Linear`` weight become its 1x1 ``proj``) and the rest."""
    heads, rest = {}, {}
    for key, tensor in state.items():
        if prefix and key.startswith(prefix):
            name = key[len(prefix):]
            if head == "linear" and name in ("weight", "bias"):
                name = f"proj.{name}"
            if head == "linear" and name == "proj.weight" and tensor.dim() == 2:
                tensor = tensor[:, :, None, None]
            heads[name] = tensor
            origin[f"head.{name}"] = origin[key]
        else:
            rest[key] = tensor
    return heads, rest


def _strip_wrappers(state: dict[str, torch.Tensor], origin: dict[str, str],
                    expected: set[str]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in state.items():
        name = key
        while name not in expected and name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        name = name if name in expected else key
        out[name] = tensor
        origin[f"backbone.{name}"] = origin[key]
    return out


def _backbone_keys(config: BackboneConfig) -> list[str]:
    with torch.device("meta"):
        return list(build_backbone(config, initialise=False).state_dict())


def _check_layers(layers: Sequence[int] | None, config: BackboneConfig, head: str) -> tuple[int, ...] | None:
    """The blocks a head reads, checked as a file's record is (against the depth)."""
    if layers is None:
        if head == "multilevel":
            raise CheckpointError("a multilevel head needs the blocks it reads (--head-layers 3,6,9,12)")
        return None
    if head not in HEAD_TYPES_WITH_LAYERS:
        raise CheckpointError(f"--head-layers go with a {' or '.join(HEAD_TYPES_WITH_LAYERS)} head, not {head}")
    return head_layers_from_dict({"layers": list(layers)}, config.depth)


def _head_sizes(head_state: dict[str, torch.Tensor], head: str, config: BackboneConfig,
                prefix: str, task_channels: int | None) -> tuple[int, int]:
    """(out_channels, hidden) read off the head's weights. A user's head: the task's
    channels, else the first dimension of its last weight (the built module's shapes
    are checked against the source's afterwards)."""
    if head == "module":
        weights = [t for k, t in head_state.items() if k.endswith("weight") and t.dim() >= 2]
        if task_channels is None and not weights:
            raise CheckpointError(f"no head weights under the prefix '{prefix}'; name it with --head-prefix")
        return (task_channels if task_channels is not None else int(weights[-1].shape[0])), 128
    if head == "multilevel":
        predict = head_state.get("predict.weight")
        if predict is None or predict.dim() != 4:
            raise CheckpointError(f"no multilevel head weights under the prefix '{prefix}' (expected "
                                  f"'{prefix}predict.weight'); name the head's prefix with --head-prefix")
        return int(predict.shape[0]), int(predict.shape[1])
    proj = head_state.get("proj.weight")
    if proj is None or proj.dim() != 4:
        raise CheckpointError(f"no {head} head weights under the prefix '{prefix}' (expected '{prefix}proj.weight'); "
                              "name the head's prefix with --head-prefix, or choose --head")
    if head == "linear":
        return int(proj.shape[0]), int(proj.shape[1])
    patch_pixels = config.patch_size ** 2
    if proj.shape[0] % patch_pixels:
        raise CheckpointError(f"'{prefix}proj.weight' has {proj.shape[0]} outputs, not a multiple of "
                              f"patch_size**2 = {patch_pixels}; is this a dense head (--head)?")
    return int(proj.shape[0]) // patch_pixels, int(proj.shape[1])


def _resample_pos_embed(provided: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                        config: BackboneConfig, source_grid: tuple[int, int]) -> tuple[int, int] | None:
    """Resize a position embedding trained at another image size (timm's helper). The
    source grid is the source architecture's (its config) when the token count fits it,
    else a square one (timm's own assumption)."""
    key = "backbone.pos_embed"
    if key not in provided or key not in expected:
        return None
    pos = provided[key]
    prefix = 0 if config.no_embed_class else config.num_prefix_tokens
    tokens = pos.shape[1] - prefix if pos.dim() == 3 else -1
    if tokens == source_grid[0] * source_grid[1]:
        old = source_grid
    else:
        side = int(round(max(tokens, 0) ** 0.5))
        old = (side, side)
    if pos.dim() != 3 or old[0] * old[1] != tokens or pos.shape[2] != config.embed_dim:
        return None  # reported as a shape mismatch
    if old == config.grid_size:
        return None
    provided[key] = resample_abs_pos_embed(pos, new_size=list(config.grid_size), old_size=list(old),
                                           num_prefix_tokens=prefix)
    return old


def _refuse_leftovers(source: Path, unused: list[str], missing: list[str]) -> None:
    def listing(keys: list[str]) -> str:
        more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
        return ", ".join(keys[:_SHOWN]) + more

    parts = []
    if unused:
        parts.append(f"{len(unused)} source keys unused: {listing(unused)}")
    if missing:
        parts.append(f"{len(missing)} model keys missing: {listing(missing)}")
    if parts:
        raise CheckpointError(f"{source}: {'; '.join(parts)}; map them (--key-map, --head-prefix) or name them "
                              "with --ignore PATTERN")
