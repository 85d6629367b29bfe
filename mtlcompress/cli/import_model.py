"""``mtlcompress import``: an already fine-tuned model -> a single-task checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlcompress.cli._options import ImgSizeOpt, JsonOpt, OverwriteOpt, QuietOpt


def register(app: typer.Typer) -> None:
    app.command("import")(import_command)


def import_command(
    source: Annotated[Path, typer.Argument(help="State dict (.safetensors/.pt/.pth/.bin) or HuggingFace ViT folder.")],
    task: Annotated[str, typer.Option(help="Task the model's head predicts.")],
    out: Annotated[Path, typer.Option("--out", help="Single-task checkpoint to write (.safetensors).")],
    backbone: Annotated[str | None, typer.Option(help="timm ViT name or preset; default for a HuggingFace "
                                                 "folder: its config.json.")] = None,
    head: Annotated[str, typer.Option(help="Head type: 'dense' (3x3 conv + pixel shuffle), 'linear' "
                                      "(1x1 conv + bilinear upsampling), 'multilevel' (reads --head-layers) "
                                      "or 'module' (--head-module).")] = "dense",
    head_layers: Annotated[str | None, typer.Option(help="Blocks (1-based, comma-separated, e.g. 3,6,9,12) "
                                                    "a multi-level head reads; implies --head multilevel.")] = None,
    head_module: Annotated[str | None, typer.Option(help="package.module:factory building your own head class "
                                                    "(see docs/formats.md, head trust); implies --head module.")
                           ] = None,
    head_prefix: Annotated[str, typer.Option(help="Key prefix of the head's tensors in the source "
                                             "(e.g. 'decoder.').")] = "head.",
    key_map: Annotated[Path | None, typer.Option(help="TOML file of \"regex\" = \"name\" rules under [keys], "
                                                 "applied to every key in order.")] = None,
    ignore: Annotated[list[str] | None, typer.Option(help="Regex of source keys (or missing model keys) that "
                                                     "may stay unused; repeatable.")] = None,
    mean: Annotated[tuple[float, float, float] | None, typer.Option(help="Per-channel mean the model was "
                                                                   "trained with (images in [0, 1]).")] = None,
    std: Annotated[tuple[float, float, float] | None, typer.Option(help="Per-channel std.")] = None,
    img_size: ImgSizeOpt = None,
    overwrite: OverwriteOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert a fine-tuned ViT (timm, wrapped, HuggingFace or key-mapped) without training."""
    from mtlcompress.cli._output import emit, make_table
    from mtlcompress.errors import MtlCompressError
    from mtlcompress.models.importing import import_model

    if out.exists() and not overwrite:
        raise MtlCompressError(f"{out} exists; pass --overwrite to replace it")
    layers = None
    if head_layers is not None:
        try:
            layers = [int(part) for part in head_layers.split(",")]
        except ValueError:
            raise typer.BadParameter(f"'{head_layers}' is not a comma-separated list of block numbers",
                                     param_hint="--head-layers") from None
    if head == "dense" and head_module is not None:  # the default head: the option says which
        head = "module"
    elif head == "dense" and layers is not None:
        head = "multilevel"
    result = import_model(source, task, out, backbone=backbone, head=head, head_prefix=head_prefix,
                          head_layers=layers, head_module=head_module,
                          key_map=key_map, ignore=ignore or (), mean=mean, std=std, img_size=img_size)
    config = result.info.backbone
    data = {"checkpoint": str(out), "task": task, "head": result.info.head_type,
            "head_layers": result.info.head_layers and list(result.info.head_layers),
            "head_module": result.info.head_module,
            "out_channels": result.info.out_channels, "source_format": result.source_format,
            "backbone": config.to_dict(), "loaded": result.loaded, "ignored": result.ignored,
            "initialised": result.initialised, "resampled_pos_embed": result.resampled_pos_embed,
            "note": config.dense_path_reason and f"runs by the dense path: {config.dense_path_reason}"}
    rows = [("backbone", config.describe()), ("head", f"{result.info.head_module or result.info.head_type}, {result.info.out_channels} ch"
                      + (f", blocks {data['head_layers']}" if data["head_layers"] else "")),
            ("source", result.source_format), ("tensors loaded", result.loaded),
            ("source keys ignored", len(result.ignored)), ("mean", config.mean), ("std", config.std)]
    emit(data, as_json, make_table(f"{source} -> {out}", ["", "value"], rows),
         note=None if quiet else data["note"])
