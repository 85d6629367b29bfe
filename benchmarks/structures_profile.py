"""Where the shared engine's time goes on a structured bundle, and its static-shape path.

    python benchmarks/structures_profile.py [--structure lowrank] [--budget 0.02] [--runs 2]

ViT-S/16-224, 4 tasks, the sub-tasks' deltas in ``--structure`` at ``--budget`` bytes and
thresholds calibrated to 2 % token deltas (``structures._variant_bundle``). Prints the
per-layer-kind profile (``SharedEngine(profile=True)``, mean of 3 calls after 2 warm-ups)
and interleaved timings of the T models, the base model alone, the shared engine's default
path and its static-shape path (``graphs="on"``, which runs eagerly off CUDA), with the
largest output difference between the two paths.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from structures import _variant_bundle  # noqa: E402

from mtlcompress.report.benchmark import synthetic_images  # noqa: E402
from mtlcompress.report.timing import interleaved_samples, run_models  # noqa: E402
from mtlcompress.runtime.shared_engine import SharedEngine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--structure", default="lowrank", choices=("unstructured", "block", "lowrank"))
    parser.add_argument("--block", default=None, help="block shape for --structure block (default 8x8)")
    parser.add_argument("--budget", type=float, default=0.02, help="delta bytes over the dense layer's")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = synthetic_images(1, 224, seed=0)
    bundle, density = _variant_bundle(args.structure, args.block, args.budget, images,
                                      lambda message: print(message, file=sys.stderr, flush=True))

    profiled = SharedEngine(bundle, profile=True)
    for _ in range(2):
        profiled.predict(images)
    profiled.reset_profile()
    for _ in range(3):
        profiled.predict(images)
    by_kind = {role: {kind: round(float(seconds) / 3 * 1e3, 1) for kind, seconds in kinds.items()}
               for role, kinds in profiled.profile_seconds.items()}
    print(json.dumps({"token_density": density, "profile_ms_per_call": by_kind}, indent=1), flush=True)

    default, static = SharedEngine(bundle), SharedEngine(bundle, graphs="on")
    models = {task: bundle.task_model(task).eval() for task in bundle.tasks}

    variants = {"T models": lambda: run_models(models.values(), images),
                "base alone": lambda: run_models([models[bundle.base_task]], images),
                "shared (default path)": lambda: default.predict(images),
                "shared (static path, graphs=on)": lambda: static.predict(images)}
    for index in range(args.runs):
        samples = interleaved_samples(variants, 5, 1, torch.device("cpu"))
        print(f"run {index}: " + ", ".join(f"{name} {statistics.median(values) * 1e3:.0f} ms"
                                           for name, values in samples.items()), flush=True)
    gap = max(float((default.predict(images)[t] - static.predict(images)[t]).abs().max()) for t in bundle.tasks)
    print(f"largest |default - static| output difference: {gap:.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
