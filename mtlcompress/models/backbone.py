"""ViT backbones: a small serialisable config, presets, and timm construction.

Every task model, bundle and runtime needs to rebuild the exact same timm
``VisionTransformer``; ``BackboneConfig`` is the one description of it that travels
inside our files. We support the plain timm ViT family (pre-norm blocks, fused qkv,
LayerNorm, GELU MLP; with or without class token, register tokens, layer scale,
CLIP-style pre-norm, a final norm; any patch size, any (height, width) image size).
Blocks with qk-norm, a SwiGLU MLP (timm's ``SwiGLU`` or ``SwiGLUPacked``) or RMSNorm
are built too, but the shared engine cannot share them: bundles with them run by the
dense path (``dense_path_reason``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.layers import GluMlp, LayerNorm, Mlp, RmsNorm, SwiGLU, SwiGLUPacked
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from mtlcompress.errors import CheckpointError
from mtlcompress.io.image_size import SizeLike, describe_image_size, image_size

# Upper bounds for numbers read from files, well above any published ViT (the largest
# timm ViTs have depth 48, width 1664, images of 518 px) and far below sizes whose
# construction alone would take minutes or more memory than a machine has.
MAX_IMG_SIZE = 8192
MAX_EMBED_DIM = 16384
MAX_DEPTH = 128
MAX_REG_TOKENS = 256
MAX_MLP_RATIO = 64.0
MAX_ARCH_NAME = 200

# The normalisation a backbone expects when nothing else is known (timm's ImageNet
# default); a model's own statistics travel in its ``BackboneConfig``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TRIPLES = ("mean", "std")

# BackboneConfig.mlp_layer -> (timm MLP class, activation). "swiglu" is timm's SwiGLU
# (fc1_g, fc1_x, fc2); "swiglu_packed" its SwiGLUPacked (one fc1 holding [x, gate]).
MLP_LAYERS: dict[str, tuple[Any, type[nn.Module]]] = {
    "mlp": (Mlp, nn.GELU), "swiglu": (SwiGLU, nn.SiLU), "swiglu_packed": (SwiGLUPacked, nn.SiLU)}
# BackboneConfig.norm_layer -> timm norm class (built with ``eps=norm_eps``).
NORM_LAYERS: dict[str, type[nn.Module]] = {"layernorm": LayerNorm, "rmsnorm": RmsNorm}


def check_int_range(what: str, value: Any, low: int, high: int) -> None:
    """An int (not a bool) in ``[low, high]``, or one ``CheckpointError`` line naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{what} must be an integer, found {type(value).__name__}")
    if not low <= value <= high:
        raise CheckpointError(f"{what} is {value}, which is not in [{low}, {high}]")


@dataclass(frozen=True)
class BackboneConfig:
    """Everything needed to rebuild a timm ``VisionTransformer`` without weights."""

    arch: str = "tiny"
    # (height, width) in pixels; an int n (old files, callers) means (n, n).
    img_size: tuple[int, int] = (64, 64)
    patch_size: int = 8
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    reg_tokens: int = 0
    init_values: float | None = None
    # CLIP-style: a LayerNorm before the blocks, and a patch embedding without bias.
    pre_norm: bool = False
    # Position embedding for the patch tokens only (dinov2, register-token ViTs).
    no_embed_class: bool = False
    # False for average-pooling ViTs, whose norm sits after the pooling (``fc_norm``).
    final_norm: bool = True
    qk_norm: bool = False
    norm_eps: float = 1e-6
    mlp_layer: str = "mlp"         # a key of MLP_LAYERS
    norm_layer: str = "layernorm"  # a key of NORM_LAYERS
    # The per-channel statistics the model was trained with, for images in [0, 1].
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # Shape only (n -> (n, n), a list -> a tuple); the values are checked by check_ranges.
        size = self.img_size
        if isinstance(size, int) and not isinstance(size, bool):
            object.__setattr__(self, "img_size", (size, size))
        elif isinstance(size, (list, tuple)) and len(size) in (1, 2):
            object.__setattr__(self, "img_size", (size[0], size[-1]))

    @property
    def dense_path_reason(self) -> str | None:
        """Why the shared engine cannot share this backbone's blocks (None: it can)."""
        parts = [part for part, present in (("qk-norm", self.qk_norm), ("a SwiGLU MLP", self.mlp_layer != "mlp"),
                                            ("RMSNorm", self.norm_layer != "layernorm")) if present]
        return f"blocks with {' and '.join(parts)}, which the shared engine cannot share" if parts else None

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches down and across: ``(rows, cols)``, the grid heads take."""
        height, width = self.img_size
        return height // self.patch_size, width // self.patch_size

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid_size
        return rows * cols

    @property
    def num_tokens(self) -> int:
        """Tokens every block sees: patches plus class/register tokens."""
        return self.num_patches + self.num_prefix_tokens

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (the triples as lists), equal to what a file reads back."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Any) -> BackboneConfig:
        """Validate untrusted JSON (types, then ranges) before anything is built from it.

        Every number is checked here because the first use of a bad one is a
        ZeroDivisionError deep in timm, or a model that takes minutes or terabytes to build.
        """
        if not isinstance(data, dict):
            raise CheckpointError("backbone config must be a JSON object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise CheckpointError(f"backbone config has unknown fields: {', '.join(unknown)}")
        kwargs = {}
        for name, value in data.items():
            if name in _TRIPLES:
                kwargs[name] = _float_triple(name, value)
                continue
            if name == "img_size":  # [H, W], or one int in files written before non-square sizes
                if not isinstance(value, (int, list)) or isinstance(value, bool) or (
                        isinstance(value, list) and len(value) != 2):
                    raise CheckpointError("backbone config field 'img_size' must be [height, width] or one integer")
                kwargs[name] = value
                continue
            expected = type(getattr(cls(), name)) if name != "init_values" else (float, type(None))
            if isinstance(value, bool) and expected is not bool:
                raise CheckpointError(f"backbone config field '{name}' has the wrong type")
            if expected is float and isinstance(value, int):
                value = float(value)
            if not isinstance(value, expected):
                raise CheckpointError(f"backbone config field '{name}' has the wrong type")
            kwargs[name] = value
        config = cls(**kwargs)
        config.check_ranges()
        return config

    def check_ranges(self) -> None:
        """Refuse sizes no ViT has: each field in its range, then the fields' relations."""
        if not isinstance(self.img_size, tuple) or len(self.img_size) != 2:
            raise CheckpointError("backbone config field 'img_size' must be two integers (height, width)")
        for side in self.img_size:
            check_int_range("backbone config field 'img_size'", side, 1, MAX_IMG_SIZE)
        check_int_range("backbone config field 'patch_size'", self.patch_size, 1, min(self.img_size))
        check_int_range("backbone config field 'embed_dim'", self.embed_dim, 1, MAX_EMBED_DIM)
        check_int_range("backbone config field 'depth'", self.depth, 1, MAX_DEPTH)
        check_int_range("backbone config field 'num_heads'", self.num_heads, 1, self.embed_dim)
        check_int_range("backbone config field 'reg_tokens'", self.reg_tokens, 0, MAX_REG_TOKENS)
        if len(self.arch) > MAX_ARCH_NAME:
            raise CheckpointError(f"backbone config field 'arch' is longer than {MAX_ARCH_NAME} characters")
        if not (math.isfinite(self.mlp_ratio) and 0 < self.mlp_ratio <= MAX_MLP_RATIO):
            raise CheckpointError(f"backbone config field 'mlp_ratio' is {self.mlp_ratio}, "
                                  f"which is not in (0, {MAX_MLP_RATIO:g}]")
        if int(self.embed_dim * self.mlp_ratio) < 1:
            raise CheckpointError("backbone config gives an MLP with no hidden units (embed_dim * mlp_ratio < 1)")
        if self.init_values is not None and not math.isfinite(self.init_values):
            raise CheckpointError(f"backbone config field 'init_values' is {self.init_values}, not a finite number")
        if not (math.isfinite(self.norm_eps) and 0 < self.norm_eps <= 1):
            raise CheckpointError(f"backbone config field 'norm_eps' is {self.norm_eps}, which is not in (0, 1]")
        for name, known in (("mlp_layer", MLP_LAYERS), ("norm_layer", NORM_LAYERS)):
            if getattr(self, name) not in known:
                raise CheckpointError(f"backbone config field '{name}' is {getattr(self, name)!r:.40}; "
                                      f"known: {', '.join(known)}")
        for name in _TRIPLES:
            _float_triple(name, getattr(self, name))
        if not all(s > 0 for s in self.std):
            raise CheckpointError("backbone config field 'std' must be positive")
        if any(side % self.patch_size for side in self.img_size) or self.embed_dim % self.num_heads:
            raise CheckpointError("backbone config is inconsistent (img/patch or dim/heads)")

    def describe(self) -> str:
        return (f"{self.arch} ({describe_image_size(self.img_size)}, patch {self.patch_size}, dim {self.embed_dim}, "
                f"depth {self.depth}, heads {self.num_heads})")


def _float_triple(name: str, value: Any) -> tuple[float, float, float]:
    """Three finite numbers (one per RGB channel), or one ``CheckpointError`` line."""
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise CheckpointError(f"backbone config field '{name}' must be three finite numbers (R, G, B)")
    return tuple(float(v) for v in value)


# CPU-friendly preset for the demo and tests; the named timm ViTs are derived from
# timm itself so their hyper-parameters are never written down twice.
PRESETS: dict[str, BackboneConfig] = {
    "tiny": BackboneConfig(),
    "micro": BackboneConfig(arch="micro", img_size=(32, 32), patch_size=8, embed_dim=32, depth=2, num_heads=2),
}


def resolve_backbone(name: str, img_size: SizeLike | None = None) -> BackboneConfig:
    """A preset name or any timm ViT name -> config (timm models are built on 'meta'),
    at ``img_size`` (one number, or (height, width)) when given."""
    if name in PRESETS:
        config = PRESETS[name]
    else:
        if name not in timm.list_models():
            raise CheckpointError(f"unknown backbone '{name}': use a preset ({', '.join(PRESETS)}) or a timm ViT name")
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        config = config_from_timm(model, arch=name)
    return config if img_size is None else with_image_size(config, img_size)


def with_image_size(config: BackboneConfig, img_size: SizeLike) -> BackboneConfig:
    """``config`` at another input size: each side a multiple of the patch size, within
    ``MAX_IMG_SIZE`` (position embeddings are resampled where weights are loaded)."""
    size = image_size(img_size, "image size", CheckpointError)
    if any(side % config.patch_size for side in size):
        raise CheckpointError(f"image size {size[0]}x{size[1]} (height x width) is not a multiple of "
                              f"patch size {config.patch_size} on each side")
    if max(size) > MAX_IMG_SIZE:
        raise CheckpointError(f"image size {size[0]}x{size[1]} is larger than {MAX_IMG_SIZE} px on a side")
    return dataclasses.replace(config, img_size=size)


def config_from_timm(model: torch.nn.Module, arch: str) -> BackboneConfig:
    """Read a timm ViT's hyper-parameters off the module itself, and its normalisation
    off its ``pretrained_cfg`` (ImageNet's when it has none)."""
    if not isinstance(model, VisionTransformer):
        raise CheckpointError(f"'{arch}' is not a plain timm VisionTransformer")
    check_buildable(model, arch)
    block = model.blocks[0]
    ls = getattr(block, "ls1", None)
    init_values = float(ls.gamma.detach().flatten()[0]) if hasattr(ls, "gamma") and not ls.gamma.is_meta else None
    if hasattr(ls, "gamma") and init_values is None:
        init_values = 1e-5
    pretrained = getattr(model, "pretrained_cfg", None) or {}
    return BackboneConfig(
        arch=arch,
        img_size=(int(model.patch_embed.img_size[0]), int(model.patch_embed.img_size[1])),
        patch_size=int(model.patch_embed.patch_size[0]),
        embed_dim=int(model.embed_dim),
        depth=len(model.blocks),
        num_heads=int(block.attn.num_heads),
        mlp_ratio=_mlp_ratio(block.mlp, model.embed_dim),
        qkv_bias=block.attn.qkv.bias is not None,
        class_token=model.cls_token is not None,
        reg_tokens=int(model.num_reg_tokens),
        init_values=init_values,
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        no_embed_class=bool(model.no_embed_class),
        final_norm=not isinstance(model.norm, nn.Identity),
        qk_norm=not isinstance(block.attn.q_norm, nn.Identity),
        norm_eps=float(block.norm1.eps),
        mlp_layer=next(name for name, (cls, _) in MLP_LAYERS.items() if _is_mlp(block.mlp, cls)),
        norm_layer="rmsnorm" if isinstance(block.norm1, RmsNorm) else "layernorm",
        mean=_float_triple("mean", pretrained.get("mean", IMAGENET_MEAN)),
        std=_float_triple("std", pretrained.get("std", IMAGENET_STD)),
    )


def check_buildable(model: VisionTransformer, arch: str) -> None:
    """Refuse, in one line, the ViTs ``build_backbone`` would not rebuild exactly: another
    block, MLP, norm, activation, non-square patches, or a patch bias that does not
    follow timm's pre-norm rule."""
    embed = model.patch_embed
    reasons = []
    if embed.patch_size[0] != embed.patch_size[1]:
        reasons.append("non-square patches")
    if (embed.proj.bias is None) != (not isinstance(model.norm_pre, nn.Identity)):
        reasons.append("a patch-embedding bias that does not follow timm's pre-norm rule")
    outer = [n for n in (model.norm_pre, model.norm) if not isinstance(n, nn.Identity)]
    for index, block in enumerate(model.blocks):
        mlp_kind = next((name for name, (cls, _) in MLP_LAYERS.items() if _is_mlp(block.mlp, cls)), None)
        if type(block) is not Block or type(block.attn) is not Attention or mlp_kind is None:
            reasons.append(f"block {index} is {type(block).__name__} with {type(block.mlp).__name__} "
                           "(only timm's plain Block and Attention, with Mlp, SwiGLU or SwiGLUPacked)")
        elif not all(_is_affine_norm(n, type(block.norm1)) for n in (block.norm1, block.norm2, *outer)):
            reasons.append(f"block {index} uses {type(block.norm1).__name__} "
                           "(only LayerNorm with bias or RmsNorm with weight, the same everywhere)")
        elif not _has_activation(block.mlp.act, MLP_LAYERS[mlp_kind][1]):
            reasons.append(f"block {index} uses the activation {block.mlp.act!r} with {type(block.mlp).__name__} "
                           "(only exact GELU with Mlp, SiLU with SwiGLU)")
        elif not isinstance(block.mlp.norm, nn.Identity) or not isinstance(block.attn.norm, nn.Identity):
            reasons.append(f"block {index} has a norm inside its MLP or attention")
        elif any(m.bias is None for m in block.mlp.modules() if isinstance(m, nn.Linear)):
            reasons.append(f"block {index} has an MLP without biases")
        if reasons:
            break
    if reasons:
        raise CheckpointError(f"'{arch}' cannot be rebuilt as a plain timm ViT: {reasons[0]}")


def _is_mlp(mlp: nn.Module, cls: Any) -> bool:
    if cls is SwiGLUPacked:  # a partial of GluMlp: SiLU on the first half, token-wise
        return type(mlp) is GluMlp and not mlp.gate_last and mlp.chunk_dim == -1
    return type(mlp) is cls


def _is_affine_norm(norm: nn.Module, kind: type) -> bool:
    if type(norm) is not kind:
        return False
    if isinstance(norm, nn.LayerNorm):
        return norm.elementwise_affine and norm.bias is not None
    return isinstance(norm, RmsNorm) and norm.elementwise_affine


def _has_activation(act: nn.Module, expected: type[nn.Module]) -> bool:
    return type(act) is expected and getattr(act, "approximate", "none") == "none"


def _mlp_ratio(mlp: nn.Module, embed_dim: int) -> float:
    """``hidden / embed_dim``, nudged so that timm's ``int(embed_dim * mlp_ratio)``
    gives ``hidden`` back (8192 / 1536 * 1536 is 8191.99...)."""
    hidden = (mlp.fc1_x if isinstance(mlp, SwiGLU) else mlp.fc1).out_features
    ratio = hidden / embed_dim
    return ratio if int(embed_dim * ratio) == hidden else (hidden + 0.5) / embed_dim


def build_backbone(config: BackboneConfig, *, initialise: bool = True) -> VisionTransformer:
    """A randomly initialised timm ViT that returns tokens (no pooling, no classifier).

    ``initialise=False`` skips timm's weight init: for models built on the meta device
    only for their tensor shapes, where the init is wasted time.
    """
    return VisionTransformer(
        img_size=config.img_size,
        patch_size=config.patch_size,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        qkv_bias=config.qkv_bias,
        qk_norm=config.qk_norm,
        class_token=config.class_token,
        reg_tokens=config.reg_tokens,
        no_embed_class=config.no_embed_class,
        pre_norm=config.pre_norm,
        final_norm=config.final_norm,
        init_values=config.init_values,
        norm_layer=functools.partial(NORM_LAYERS[config.norm_layer], eps=config.norm_eps),
        mlp_layer=MLP_LAYERS[config.mlp_layer][0],
        act_layer=MLP_LAYERS[config.mlp_layer][1],
        num_classes=0,
        global_pool="",
        weight_init="" if initialise else "skip",
    )


def backbone_signature(config: BackboneConfig) -> tuple:
    """Everything that fixes tensor shapes and the computation (the name does not)."""
    return dataclasses.astuple(dataclasses.replace(config, arch=""))


def backbone_tensor_shapes(config: BackboneConfig) -> dict[str, tuple[int, ...]]:
    """The {name: shape} of every backbone tensor, from a model on the meta device
    (no memory, no init), to compare with a file's header before allocating anything."""
    with torch.device("meta"):
        model = build_backbone(config, initialise=False)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
