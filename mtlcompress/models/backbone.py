"""ViT backbones: a small serialisable config, presets, and timm construction.

Every task model, bundle and runtime needs to rebuild the exact same timm
``VisionTransformer``; ``BackboneConfig`` is the one description of it that travels
inside our files. We support the plain timm ViT family (class token, pre-norm blocks,
fused qkv, optional register tokens and layer scale), which is what the runtime's
shared execution understands.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from mtlcompress.errors import CheckpointError

# Upper bounds for numbers read from files, well above any published ViT (the largest
# timm ViTs have depth 48, width 1664, images of 518 px) and far below sizes whose
# construction alone would take minutes or more memory than a machine has.
MAX_IMG_SIZE = 8192
MAX_EMBED_DIM = 16384
MAX_DEPTH = 128
MAX_REG_TOKENS = 256
MAX_MLP_RATIO = 64.0
MAX_ARCH_NAME = 200


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
    img_size: int = 64
    patch_size: int = 8
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    reg_tokens: int = 0
    init_values: float | None = None

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
        check_int_range("backbone config field 'img_size'", self.img_size, 1, MAX_IMG_SIZE)
        check_int_range("backbone config field 'patch_size'", self.patch_size, 1, self.img_size)
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
        if self.img_size % self.patch_size or self.embed_dim % self.num_heads:
            raise CheckpointError("backbone config is inconsistent (img/patch or dim/heads)")

    def describe(self) -> str:
        return (f"{self.arch} ({self.img_size}px, patch {self.patch_size}, dim {self.embed_dim}, "
                f"depth {self.depth}, heads {self.num_heads})")


# CPU-friendly preset for the demo and tests; the named timm ViTs are derived from
# timm itself so their hyper-parameters are never written down twice.
PRESETS: dict[str, BackboneConfig] = {
    "tiny": BackboneConfig(),
    "micro": BackboneConfig(arch="micro", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
}


def resolve_backbone(name: str, img_size: int | None = None) -> BackboneConfig:
    """A preset name or any timm ViT name -> config (timm models are built on 'meta')."""
    if name in PRESETS:
        config = PRESETS[name]
    else:
        if name not in timm.list_models():
            raise CheckpointError(f"unknown backbone '{name}': use a preset ({', '.join(PRESETS)}) or a timm ViT name")
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        config = config_from_timm(model, arch=name)
    if img_size is not None and img_size != config.img_size:
        config = dataclasses.replace(config, img_size=img_size)
        if img_size % config.patch_size:
            raise CheckpointError(f"image size {img_size} is not a multiple of patch size {config.patch_size}")
    return config


def config_from_timm(model: torch.nn.Module, arch: str) -> BackboneConfig:
    """Read a timm ViT's hyper-parameters off the module itself."""
    if not isinstance(model, VisionTransformer):
        raise CheckpointError(f"'{arch}' is not a plain timm VisionTransformer")
    block = model.blocks[0]
    ls = getattr(block, "ls1", None)
    init_values = float(ls.gamma.flatten()[0]) if hasattr(ls, "gamma") and not ls.gamma.is_meta else None
    if hasattr(ls, "gamma") and init_values is None:
        init_values = 1e-5
    return BackboneConfig(
        arch=arch,
        img_size=int(model.patch_embed.img_size[0]),
        patch_size=int(model.patch_embed.patch_size[0]),
        embed_dim=int(model.embed_dim),
        depth=len(model.blocks),
        num_heads=int(block.attn.num_heads),
        mlp_ratio=block.mlp.fc1.out_features / model.embed_dim,
        qkv_bias=block.attn.qkv.bias is not None,
        class_token=model.cls_token is not None,
        reg_tokens=int(model.num_reg_tokens),
        init_values=init_values,
    )


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
        class_token=config.class_token,
        reg_tokens=config.reg_tokens,
        init_values=config.init_values,
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
