"""Seconds to import a ViT-B-sized state dict (``vit_base_patch16_224``, random weights
made here, a linear depth head) with ``mtlcompress.models.importing.import_model``.

    PYTHONPATH=. python benchmarks/import_speed.py [--backbone vit_base_patch16_224]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

from mtlcompress.models.importing import import_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_base_patch16_224")
    args = parser.parse_args()
    model = timm.create_model(args.backbone, pretrained=False, num_classes=0, global_pool="")
    state = dict(model.state_dict())
    state["head.proj.weight"] = torch.randn(1, model.embed_dim, 1, 1)
    state["head.proj.bias"] = torch.zeros(1)
    with tempfile.TemporaryDirectory() as folder:
        source, out = Path(folder) / "source.safetensors", Path(folder) / "depth.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, source)
        start = time.perf_counter()
        result = import_model(source, "depth", out, backbone=args.backbone, head="linear")
        seconds = time.perf_counter() - start
        size = out.stat().st_size / 2**20
    print(f"{args.backbone}: imported {result.loaded} tensors ({size:.0f} MiB) in {seconds:.2f} s "
          f"on {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
