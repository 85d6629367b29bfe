"""Half-precision bundles: bytes of a 4-task ViT-S/16-224 bundle stored in fp32, bf16 and
fp16 against one fp32 single-task checkpoint, and the accuracy change of bf16/fp16 on
the demo's trained tasks.

Bytes: ``make_bundles.random_bundle`` at 2 % weight deltas by default (random seeded
weights: sizes depend only on shapes and non-zero counts, not on training). "One
checkpoint" is the base task's model written by ``save_checkpoint`` in fp32.

Accuracy: the demo's bundle (``--demo DIR``, or a fresh ``quick``-preset run: train,
sparsify, export), stored as ``export --dtype`` would (``Bundle.cast`` + ``save_bundle``),
read back, run by the shared engine in a compute precision and scored with
``training.evaluate.evaluate_predictor`` on the demo data's val split, every task.

Usage: ``python benchmarks/half_precision.py [--demo DIR] [--json OUT] [--write-docs]``;
``--render OUT.json --command "..."`` rewrites the docs section from a saved result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _markdown import replace_section, table  # noqa: E402
from make_bundles import BundleSpec, random_bundle  # noqa: E402

from mtlcompress.bundle.format import SHORT_DTYPE_NAMES, load_bundle, save_bundle, storage_dtype  # noqa: E402
from mtlcompress.data.layouts import open_dataset  # noqa: E402
from mtlcompress.demo import run_demo  # noqa: E402
from mtlcompress.models.checkpoint import save_checkpoint  # noqa: E402
from mtlcompress.runtime.calibration import cpu_model  # noqa: E402
from mtlcompress.runtime.runner import BundleRunner  # noqa: E402
from mtlcompress.tasks.registry import get_task  # noqa: E402
from mtlcompress.training.evaluate import evaluate_predictor  # noqa: E402

ARCH = "vit_small_patch16_224"
WEIGHT_DENSITIES = (0.02,)  # the runtime benchmarks' headline; --densities for more
TARGET_BF16_RATIO = 0.65
# (stored dtype, compute precision): the fp32 reference, a bf16 file computed in fp32
# (what `run` does on a CPU by default), and each 16-bit file computed in its own dtype.
ACCURACY_VARIANTS = (("fp32", "fp32"), ("bf16", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"))


def measure_bytes(folder: Path, densities: tuple[float, ...] = WEIGHT_DENSITIES) -> list[dict[str, Any]]:
    rows = []
    for density in densities:
        bundle = random_bundle(BundleSpec(ARCH, density, 0.15))
        base = bundle.task(bundle.base_task)
        one = folder / "one-checkpoint.safetensors"
        save_checkpoint(bundle.task_model(bundle.base_task), base.info, one)
        row: dict[str, Any] = {"weight_density": density, "tasks": len(bundle.tasks),
                               "one_checkpoint_bytes": one.stat().st_size}
        for short in SHORT_DTYPE_NAMES:
            path = folder / f"bundle-{short}.safetensors"
            save_bundle(bundle.cast(storage_dtype(short)), path)
            row[f"{short}_bytes"] = path.stat().st_size
            row[f"{short}_ratio"] = path.stat().st_size / row["one_checkpoint_bytes"]
            path.unlink()
        rows.append(row)
        del bundle
    return rows


def measure_accuracy(demo: Path, folder: Path) -> dict[str, Any]:
    reference = load_bundle(demo / "bundle.safetensors")
    size = reference.backbone.img_size
    probe = open_dataset(demo / "data", split="val", tasks=[], size=size)
    tasks = [t for t in reference.tasks if t in probe.available_tasks]
    val = open_dataset(demo / "data", split="val", tasks=tasks, size=size)
    results: dict[str, Any] = {"images": len(val), "tasks": {}, "bytes": {}}
    outputs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for stored, compute in ACCURACY_VARIANTS:
        path = folder / f"demo-{stored}.safetensors"
        save_bundle(reference.cast(storage_dtype(stored)), path)
        results["bytes"][stored] = path.stat().st_size
        runner = BundleRunner(load_bundle(path), engine="shared", precision=compute)
        images = torch.stack([val[i]["image"] for i in range(len(val))])
        outputs[stored, compute] = runner.predict(images)
        for task in tasks:
            spec = get_task(task)
            metric = spec.metric(reference.task(task).info.num_classes)
            scores = evaluate_predictor(lambda x, t=task: runner.predict(x)[t], val, spec,
                                        reference.task(task).info.num_classes, batch_size=16)
            entry = results["tasks"].setdefault(task, {"metric": metric.primary,
                                                       "higher_is_better": metric.higher_is_better})
            entry[f"{stored}/{compute}"] = scores[metric.primary]
    exact = outputs["fp32", "fp32"]
    results["max_relative_output_change"] = {
        f"{s}/{c}": {t: float((out[t] - exact[t]).abs().max() / exact[t].abs().max()) for t in exact}
        for (s, c), out in outputs.items() if (s, c) != ("fp32", "fp32")}
    return results


def markdown(result: dict[str, Any], command: str) -> str:
    env = result["environment"]
    parts = [f"Command: `{command}`. Machine: {env['cpu']}, {env['cores']} cores, torch {env['torch']} (shared "
             "with other jobs; no timings here, so load does not change these numbers, which are deterministic)."]
    rows = [[f"{100 * r['weight_density']:.0f}%", r["tasks"], f"{r['one_checkpoint_bytes'] / 2**20:.1f}",
             *(f"{r[f'{s}_bytes'] / 2**20:.1f} ({r[f'{s}_ratio']:.3f}x)" for s in SHORT_DTYPE_NAMES)]
            for r in result["bytes"]]
    parts.append(f"### Bytes: {ARCH}, semseg base + depth, normals, saliency (random weights)\n\n"
                 f"MB (ratio to one fp32 checkpoint). Target: bf16 <= {TARGET_BF16_RATIO}x at 2 % deltas.\n\n"
                 + table(["weight deltas", "tasks", "one fp32 checkpoint MB", "fp32 bundle", "bf16 bundle",
                          "fp16 bundle"], rows))
    acc = result["accuracy"]
    variants = [f"{s}/{c}" for s, c in ACCURACY_VARIANTS]
    rows = []
    for task, entry in acc["tasks"].items():
        ref = entry["fp32/fp32"]
        rows.append([task, entry["metric"], *(f"{entry[v]:.4f}" + ("" if v == "fp32/fp32" else f" ({entry[v] - ref:+.4f})")
                                               for v in variants)])
    change = acc["max_relative_output_change"]
    parts.append(f"### Accuracy: the demo bundle ({acc['demo']}), {acc['images']} val images, shared engine\n\n"
                 "Columns are stored dtype / compute precision; in brackets the change against fp32/fp32 "
                 "(metric units; `higher_is_better` per task in the JSON).\n\n"
                 + table(["task", "metric", *variants], rows)
                 + "\n\nLargest |output - fp32 output| / largest |fp32 output| over the val images: "
                 + "; ".join(f"{v}: {max(change[v].values()):.2e}" for v in change) + ". The demo bundle's own "
                 "file: " + ", ".join(f"{s} {n / 2**20:.2f} MB" for s, n in acc["bytes"].items()) + ".")
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--demo", type=Path, help="a demo folder with bundle.safetensors and data/ "
                                                  "(default: run the quick preset in a temporary folder)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--densities", type=float, nargs="+", default=WEIGHT_DENSITIES,
                        help="weight-delta densities of the ViT-S bundles")
    parser.add_argument("--write-docs", action="store_true", help="replace the section in docs/benchmarks.md")
    parser.add_argument("--render", type=Path, help="only rewrite the docs section from this saved result")
    parser.add_argument("--command", help="with --render: the command that produced the result")
    args = parser.parse_args()
    if args.render:
        replace_section("half-precision", markdown(json.loads(args.render.read_text()), args.command))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        demo = args.demo
        if demo is None:
            demo = folder / "demo"
            run_demo(demo, "quick", stages=("train", "sparsify", "export"), show_progress=False)
        accuracy = measure_accuracy(demo, folder)
        accuracy["demo"] = "quick preset" if args.demo is None else str(args.demo)
        result = {"environment": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__},
                  "bytes": measure_bytes(folder, tuple(args.densities)), "accuracy": accuracy}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    if args.write_docs:
        command = "python benchmarks/half_precision.py" + (f" --demo {args.demo}" if args.demo else "") + \
                  " --write-docs"
        replace_section("half-precision", markdown(result, command))


if __name__ == "__main__":
    main()
