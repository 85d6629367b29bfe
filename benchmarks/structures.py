"""Accuracy against speed of the weight-delta structures (issue #20 item 2).

    python benchmarks/structures.py --demo DEMO_DIR [--part accuracy|speed|both] [--runs 2]

Accuracy: on a trained demo (``mtlcompress demo --out DEMO_DIR``, default preset: the
tiny ViT at 64 px; its ``checkpoints/`` and ``data/`` are used), each sub-task is
sparsified against the semseg base with ``sparsify weights --method magnitude`` for
every structure at 1, 2 and 5 % bytes (unstructured at the same bytes: its density is
divided by 1.5, the bytes per kept entry of CSR with int16 columns over those of the
value), no fine-tuning, and the held-out primary metric is compared with the original
single-task checkpoint's (signed relative change, + = better).

Speed: ViT-S/16-224, 4 tasks (random seeded weights as in make_bundles.py), 1 image,
the T models eager and compiled (``torch.compile``, default mode) and the shared engine
for every structure x byte budget, and the base model alone, all interleaved in each run.
Each variant's sub-task thresholds are calibrated on its own deltas
(make_bundles.calibrate_task_domain, target 2 % token deltas: a trained-like operating
point), and each variant's measured token density is reported.

Prints JSON (``--out`` writes it) and the markdown table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_bundles import BundleSpec, calibrate_task_domain, random_bundle  # noqa: E402

from mtlcompress.bundle import layouts  # noqa: E402
from mtlcompress.models.checkpoint import load_checkpoint  # noqa: E402
from mtlcompress.report import flops  # noqa: E402
from mtlcompress.report.benchmark import synthetic_images  # noqa: E402
from mtlcompress.report.compile_peer import compile_models  # noqa: E402
from mtlcompress.report.timing import interleaved_samples, run_models  # noqa: E402
from mtlcompress.runtime.shared_engine import SharedEngine  # noqa: E402
from mtlcompress.sparsify.common import evaluate_on, stage_data, student_from, weight_delta  # noqa: E402
from mtlcompress.sparsify.magnitude import magnitude_masks  # noqa: E402
from mtlcompress.sparsify.structures import add_delta_, structured_deltas  # noqa: E402

BYTES = (0.01, 0.02, 0.05)
STRUCTURES = (("unstructured", None), ("block", "8x8"), ("block", "16x16"), ("block", "1x16"), ("lowrank", None))
SPEED_STRUCTURES = tuple(s for s in STRUCTURES if s[1] != "1x16")  # 1 x k blocks: a GEMV per block, and memory
TOKEN_DENSITY = 0.02  # trained demo sub-tasks keep 0.0-0.1 %; the trained-like point is <= 2 %
CSR_BYTES_PER_VALUE = 1.5  # fp32 value + int16 column index, over the value alone


def _label(structure: str, block: str | None) -> str:
    return structure if block is None else f"block {block}"


def delta_bytes_fraction(model, base) -> float:
    """Bytes of the delta in the bundle's smallest layouts over the dense backbone's."""
    base_weights = dict(base.backbone.named_parameters())
    stored = dense = 0
    for name, weight in model.backbone.named_parameters():
        delta = (weight - base_weights[name]).detach()
        dense += weight.numel() * weight.element_size()
        if bool(delta.ne(0).any()):
            stored += layouts.encode(delta).nbytes
    return stored / dense


def accuracy(demo: Path, log) -> list[dict[str, Any]]:
    """Every structure x budget x sub-task: held-out primary metric against the original's.

    The same selection ``sparsify weights --method magnitude --structure ...`` runs
    (``sparsify.structures`` / ``magnitude``), in process, so each original checkpoint
    is evaluated once rather than once per variant."""
    checkpoints, data = demo / "checkpoints", demo / "data"
    base, base_info = load_checkpoint(checkpoints / "semseg.safetensors")
    rows = []
    for task_path in sorted(checkpoints.glob("*.safetensors")):
        task_model, info = load_checkpoint(task_path)
        if info.task == base_info.task:
            continue
        data_ = stage_data(data, info, "labels")
        metric = data_.spec.metric(data_.num_classes)
        original = evaluate_on(task_model, data_)[metric.primary]
        full = weight_delta(task_model, base)
        for structure, block in STRUCTURES:
            for budget in BYTES:
                if structure == "unstructured":
                    masks = magnitude_masks(full, budget / CSR_BYTES_PER_VALUE)
                    kept = {name: delta * masks[name] for name, delta in full.items()}
                else:
                    kept, _ = structured_deltas(full, budget, structure, block or "8x8")
                student = student_from(base, task_model).eval()
                base_weights = dict(base.backbone.named_parameters())
                with torch.no_grad():
                    for name, parameter in student.backbone.named_parameters():
                        add_delta_(parameter, base_weights[name], kept[name])
                value = evaluate_on(student, data_)[metric.primary]
                change = (value - original) / abs(original) * (1 if metric.higher_is_better else -1)
                row = {"task": info.task, "structure": _label(structure, block), "budget": budget,
                       "primary": metric.primary, "metric": value, "original": original, "relative_change": change,
                       "bytes": delta_bytes_fraction(student, base)}
                rows.append(row)
                log(json.dumps(row))
    return rows


def _variant_bundle(structure: str, block: str | None, budget: float, images: torch.Tensor, log, seed: int = 0):
    """ViT-S, 4 tasks; the sub-tasks' deltas in ``structure`` at ``budget`` bytes, thresholds
    calibrated on these deltas to 2 % token deltas (thresholds do not carry over between
    structures: calibrated on one, they keep almost every token of another)."""
    bundle = random_bundle(BundleSpec("vit_small_patch16_224", 1.0 if structure != "unstructured" else
                                      budget / CSR_BYTES_PER_VALUE, 0.02, seed=seed))
    for task in bundle.sub_tasks:
        if structure != "unstructured":
            bundle.tasks[task].delta, _ = structured_deltas(bundle.tasks[task].delta, budget, structure,
                                                            block or "8x8")
        bundle.tasks[task].activation.granularity = "token"
        bundle.tasks[task].provenance["sparsity"]["activation_density"] = TOKEN_DENSITY
    calibration = calibrate_task_domain(bundle, images, TOKEN_DENSITY, log)
    return bundle, calibration["density"]


def speed(runs: int, repeats: int, log, compile_models_too: bool = True) -> dict[str, Any]:
    images = synthetic_images(1, 224, seed=0)
    engines, bundles, calibration = {}, {}, {}
    start = time.perf_counter()
    for structure, block in SPEED_STRUCTURES:
        for budget in BYTES:
            name = f"{_label(structure, block)} @{budget:g}"
            bundle, calibration[name] = _variant_bundle(structure, block, budget, images, log)
            bundles[name], engines[name] = bundle, SharedEngine(bundle)
    log(f"built and calibrated {len(engines)} engines in {time.perf_counter() - start:.0f} s")
    reference = bundle  # a T model costs the same whatever its delta: the last variant's serve as the peers
    eager = {t: reference.task_model(t).eval() for t in reference.tasks}
    compiled, reason, compile_s = (compile_models(reference, images, torch.device("cpu")) if compile_models_too
                                   else (None, "not run (--no-compile)", 0.0))
    log(f"compiled: {compiled is not None} {reason} in {compile_s:.0f} s")

    variants = {"independent": lambda: run_models(eager.values(), images),
                "base alone": lambda: run_models([eager[reference.base_task]], images)}
    if compiled is not None:
        variants["independent_compiled"] = lambda: run_models(compiled.values(), images)
    for name, engine in engines.items():
        variants[name] = lambda engine=engine: engine.predict(images)
    medians: dict[str, list[float]] = {name: [] for name in variants}
    for run in range(runs):
        for engine in engines.values():
            engine.stats.reset()
        samples = interleaved_samples(variants, repeats, 1, torch.device("cpu"))
        for name, values in samples.items():
            medians[name].append(statistics.median(values))
        log(f"run {run}: " + ", ".join(f"{n} {statistics.median(v) * 1e3:.0f} ms" for n, v in samples.items()))
    density = {name: statistics.mean(statistics.mean(layers.values()) for layers in engine.stats.mean().values())
               for name, engine in engines.items()}
    flop_reduction = {}
    for name, engine in engines.items():
        totals = flops.flops_report(bundles[name], engine.stats.mean())["totals"]
        flop_reduction[name] = totals["independent"]["total"] / totals["bundle"]["total"]
    return {"medians_s": medians, "token_density": density, "flop_reduction": flop_reduction, "compile": {"available": compiled is not None,
                                                                         "reason": reason, "compile_s": compile_s},
            "calibration": calibration, "threads": torch.get_num_threads()}


def speed_table(result: dict[str, Any]) -> str:
    """The markdown speed table: per variant, medians over runs (min-max of the runs' medians)."""
    runs = result["medians_s"]

    def mid(name: str) -> float:
        return statistics.median(runs[name])

    peers = [n for n in ("independent", "independent_compiled") if n in runs]
    fastest_peer = min(mid(n) for n in peers)
    lines = ["| variant | token deltas measured | ms per image, median (min-max over runs) | vs eager T models | "
             "vs faster of eager / compiled T | FLOP reduction vs T | wall / FLOP reduction |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, values in runs.items():
        density = result["token_density"].get(name)
        reduction = result["flop_reduction"].get(name)
        speedup = fastest_peer / mid(name)
        lines.append(f"| {name} | {'-' if density is None else f'{density:.1%}'} | {mid(name) * 1e3:.0f} "
                     f"({min(values) * 1e3:.0f}-{max(values) * 1e3:.0f}) | {mid('independent') / mid(name):.2f}x | "
                     f"{speedup:.2f}x | {'-' if reduction is None else f'{reduction:.2f}x'} | "
                     f"{'-' if reduction is None else f'{speedup / reduction:.2f}'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, help="a default-preset `mtlcompress demo` output folder")
    parser.add_argument("--part", choices=("accuracy", "speed", "both"), default="both")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled T models")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result: dict[str, Any] = {}
    if args.part in ("accuracy", "both"):
        result["accuracy"] = accuracy(args.demo, log)
    if args.part in ("speed", "both"):
        result["speed"] = speed(args.runs, args.repeats, log, not args.no_compile)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    if "speed" in result:
        print(speed_table(result["speed"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
