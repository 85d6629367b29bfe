"""What is inside a bundle and what it buys: per task and per layer weight-delta
density, bytes and layouts; measured activation-delta density and kernel paths on
data; parameters, bytes and FLOPs against independent models; accuracy.

``inspect_bundle`` returns plain JSON (schema version ``SCHEMA_VERSION``, documented
field by field in ``docs/inspect-schema.md``); the CLI prints it and the HTML report
draws it, so every number has one source.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from mtlcompress.version import __version__
from mtlcompress.bundle.bundle import Bundle
from mtlcompress.bundle.format import FORMAT_NAME, SUPPORTED_VERSIONS
from mtlcompress.data.layouts import list_video_clips, open_clip, open_dataset
from mtlcompress.errors import BundleError, DataError
from mtlcompress.io.container import read_container_header
from mtlcompress.models.taps import shared_linear_names
from mtlcompress.progress import progress_bar
from mtlcompress.report import flops
from mtlcompress.report.examples import example_entry
from mtlcompress.report.originals import find_original
from mtlcompress.runtime.engines import make_engine
from mtlcompress.tasks.registry import get_task

SCHEMA_VERSION = 1
ASSUMED_DENSITY = 1.0
HTML_EXAMPLES = 3  # example images the HTML report shows (with --data)
_TOKEN_TENSORS = ("cls_token", "reg_token", "pos_embed")


def inspect_bundle(bundle: Bundle, manifest_or_path: Mapping[str, Any] | str | os.PathLike,
                   data: str | os.PathLike | None = None, max_images: int = 64,
                   show_progress: bool = False, examples: int = 0,
                   device: str | torch.device = "cpu") -> dict[str, Any]:
    """The full report of ``bundle`` (see ``docs/inspect-schema.md``).

    Args:
        bundle: the loaded bundle.
        manifest_or_path: its manifest (``save_bundle``'s return value) or the bundle
            file, whose manifest is read and whose size is reported.
        data: a dataset folder; with it activation densities, kernel paths and
            accuracy are measured through the shared engine.
        max_images: images of the val split to run (the first ones).
        show_progress: count the images (and clip frames) run on stderr.
        examples: with ``data``, keep this many of those images with every task's
            predicted map from the bundle and from the original model, as base64 PNGs
            (for the HTML report; 0 keeps the JSON small).
        device: where the engine and the original models run with ``data``.
    """
    path, manifest = _manifest(manifest_or_path)
    measured = measure_on_data(bundle, data, max_images, show_progress=show_progress,
                               examples=examples, device=device) if data is not None else None
    task_density = measured["activation_density"] if measured else None
    flop = flops.flops_report(bundle, task_density, ASSUMED_DENSITY)
    tasks = {task: _task_report(bundle, manifest, task, measured, flop) for task in bundle.tasks}
    notes = [] if measured else [
        f"no --data: activation densities are unknown; bundle FLOPs assume density {ASSUMED_DENSITY:g} on every "
        f"thresholded layer (bundle(d) = fixed + slope * d for a uniform density d)"]
    if measured:
        notes += measured.pop("notes")
    if bundle.backbone.dense_path_reason:
        notes.append(f"runs by the dense path (each task as its own dense model, under --engine shared too): "
                     f"{bundle.backbone.dense_path_reason}")
    return {
        "schema": SCHEMA_VERSION,
        "mtlcompress_version": __version__,
        "bundle": {
            "path": None if path is None else str(path),
            "file_bytes": None if path is None else path.stat().st_size,
            "base_task": bundle.base_task,
            "tasks": list(bundle.tasks),
            "backbone": bundle.backbone.to_dict(),
            "tokens": flops.token_count(bundle.backbone),
            "layers": _tapped_layers(bundle),
        },
        "tasks": tasks,
        "totals": _totals(tasks, flop),
        "activation_density_source": "measured" if measured else "assumed",
        "assumed_density": None if measured else ASSUMED_DENSITY,
        "data": None if measured is None else measured["data"],
        "examples": None if measured is None else measured["examples"],
        "flops_convention": ("2 FLOPs per multiply-add (as torch.utils.flop_counter); counted: patch-embed conv, "
                             "qkv/proj/fc1/fc2 linears, attention QK^T and AV matmuls, head convs; not counted: "
                             "biases, norms, softmax, GELU, residual adds, layer scale, pixel shuffle"),
        "notes": notes,
    }


# ------------------------------------------------------------------ manifest


def _manifest(manifest_or_path: Mapping[str, Any] | str | os.PathLike) -> tuple[Path | None, Mapping[str, Any]]:
    if isinstance(manifest_or_path, Mapping):
        return None, manifest_or_path
    path = Path(manifest_or_path)
    _, manifest = read_container_header(path, format_name=FORMAT_NAME, versions=SUPPORTED_VERSIONS, error=BundleError)
    return path, manifest


# ------------------------------------------------------------------ per task


def _tapped_layers(bundle: Bundle) -> list[str]:
    """The shared linear layers this backbone has (a SwiGLU MLP has fc1_g and fc1_x, no fc1)."""
    return [layer for layer in shared_linear_names(bundle.backbone.depth) if f"{layer}.weight" in bundle.base_weights]


def _nbytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _task_report(bundle: Bundle, manifest: Mapping[str, Any], task: str, measured: dict[str, Any] | None,
                 flop: dict[str, Any]) -> dict[str, Any]:
    entry, stored = bundle.task(task), manifest["tasks"][task]["delta"]
    is_base = task == bundle.base_task
    activation = entry.activation
    density = (measured or {}).get("activation_density", {}).get(task, {})
    temporal = (measured or {}).get("temporal_density", {}).get(f"{task}/temporal", {})
    paths = (measured or {}).get("layer_paths") or {}
    per_layer_flops = flop["per_task"]["bundle"][task]["per_layer"]
    layers = {}
    for layer in _tapped_layers(bundle):
        names = {part: f"{layer}.{part}" for part in ("weight", "bias") if f"{layer}.{part}" in bundle.base_weights}
        params = sum(bundle.base_weights[n].numel() for n in names.values())
        nnz = {part: stored.get(n, {}).get("nnz", 0) for part, n in names.items()}
        weight_numel = bundle.base_weights[names["weight"]].numel()
        layers[layer] = {
            "params": params,
            "weight_nnz": nnz["weight"],
            "weight_density": nnz["weight"] / weight_numel,
            "bias_nnz": nnz.get("bias", 0),
            "delta_nnz": sum(nnz.values()),
            "delta_density": sum(nnz.values()) / params,
            "delta_bytes": sum(stored.get(n, {}).get("bytes", 0) for n in names.values()),
            "layout": {part: stored.get(n, {}).get("layout") for part, n in names.items()},
            "task_threshold": None if is_base else activation.task_thresholds.get(layer),
            "temporal_threshold": activation.temporal_thresholds.get(layer),
            "activation_density": density.get(layer),
            "temporal_density": temporal.get(layer),
            "path": paths.get(task, {}).get(layer),
            "temporal_path": paths.get(f"{task}/temporal", {}).get(layer),
            "flops": {"dense": flops.linear_flops(bundle.backbone, layer), "bundle": per_layer_flops[layer]},
        }
    tapped = {f"{layer}.{part}" for layer in layers for part in ("weight", "bias")}
    other: dict[str, dict[str, Any]] = {}
    for name, weight in bundle.base_weights.items():
        if name in tapped:
            continue
        group = other.setdefault(_group(name), {"tensors": 0, "params": 0, "delta_nnz": 0, "delta_bytes": 0,
                                                "layouts": Counter()})
        group["tensors"] += 1
        group["params"] += weight.numel()
        if name in stored:
            group["delta_nnz"] += stored[name]["nnz"]
            group["delta_bytes"] += stored[name]["bytes"]
            group["layouts"][stored[name]["layout"]] += 1
    for group in other.values():
        group["delta_density"] = group["delta_nnz"] / group["params"] if group["params"] else 0.0
        group["layouts"] = dict(sorted(group["layouts"].items()))

    backbone_params = sum(w.numel() for w in bundle.base_weights.values())
    backbone_bytes = _nbytes(bundle.base_weights)
    head_params = sum(h.numel() for h in entry.head.values())
    head_bytes = _nbytes(entry.head)
    delta_nnz = sum(d["nnz"] for d in stored.values())
    delta_bytes = sum(d["bytes"] for d in stored.values())
    task_flops = {name: flop["per_task"][name][task]["total"] for name in ("independent", "bundle", "limit")}
    task_flops.update(bundle_fixed=flop["per_task"]["bundle"][task]["fixed"],
                      bundle_slope=flop["per_task"]["bundle"][task]["slope"])
    return {
        "role": "base" if is_base else "sub-task",
        "granularity": activation.granularity,
        "delta_density": manifest["tasks"][task]["delta_density"],
        "delta_nnz": delta_nnz,
        "delta_bytes": delta_bytes,
        "layouts": dict(sorted(Counter(d["layout"] for d in stored.values()).items())),
        "head_params": head_params,
        "head_bytes": head_bytes,
        "activation_density": _mean(density.values()),
        "temporal_density": _mean(temporal.values()),
        "params": {"independent": backbone_params + head_params,
                   "bundle": (backbone_params if is_base else delta_nnz) + head_params},
        "bytes": {"independent": backbone_bytes + head_bytes,
                  "bundle": (backbone_bytes if is_base else delta_bytes) + head_bytes},
        "flops": task_flops,
        "accuracy": (measured or {}).get("accuracy", {}).get(task),
        "layers": layers,
        "other": other,
    }


def _group(name: str) -> str:
    """Which summary group a non-tapped backbone tensor belongs to."""
    if name.startswith("patch_embed."):
        return "patch_embed"
    if name in _TOKEN_TENSORS:
        return "tokens"
    if ".ls1." in name or ".ls2." in name:
        return "layer_scale"
    if "norm" in name:
        return "norms"
    return "other"


def _mean(values: Any) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _totals(tasks: Mapping[str, dict[str, Any]], flop: dict[str, Any]) -> dict[str, Any]:
    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None

    out: dict[str, Any] = {}
    for key in ("params", "bytes"):
        independent = sum(t[key]["independent"] for t in tasks.values())
        bundled = sum(t[key]["bundle"] for t in tasks.values())
        out[key] = {"independent": independent, "bundle": bundled, "ratio": ratio(bundled, independent)}
    totals = flop["totals"]
    out["flops"] = {**totals,
                    "ratio_bundle": ratio(totals["bundle"]["total"], totals["independent"]["total"]),
                    "ratio_limit": ratio(totals["limit"]["total"], totals["independent"]["total"])}
    return out


# ------------------------------------------------------------------ measurement


@torch.inference_mode()
def measure_on_data(bundle: Bundle, data: str | os.PathLike, max_images: int = 64,
                    batch_size: int = 16, show_progress: bool = False, examples: int = 0,
                    device: str | torch.device = "cpu") -> dict[str, Any]:
    """Run the shared engine on the first ``max_images`` val images and the first clip.

    Returns activation densities (task domain, from the images only), temporal
    densities (from the clip), the engine's ``layer_paths`` when it has them,
    accuracy of labelled tasks, the first ``examples`` images with their predicted
    maps, and a ``data`` summary. The original single-task models
    (``report.originals``) run on the same batches, so their accuracy compares like
    with like. Not ``report.check``'s ``compare_engines``: that runs the dense engine
    too and the whole split.
    """
    if max_images < 1:
        raise DataError(f"max_images must be >= 1, got {max_images}")
    size = bundle.backbone.img_size
    notes: list[str] = []
    split = "val"
    probe = open_dataset(data, split=split, tasks=[], size=size)
    if len(probe) == 0:
        split = "train"
        probe = open_dataset(data, split=split, tasks=[], size=size)
        notes.append("the val split is empty: measured on the train split (accuracy is not held-out)")
    labelled = [t for t in bundle.tasks if t in probe.available_tasks]
    dataset = open_dataset(data, split=split, tasks=labelled, size=size)
    for task in labelled:
        ours, theirs = bundle.task(task).info.num_classes, dataset.num_classes.get(task)
        if ours is not None and theirs is not None and ours != theirs:
            raise DataError(f"{data}: task '{task}' has {theirs} classes in the data, {ours} in the bundle")
    subset = Subset(dataset, range(min(max_images, len(dataset))))
    if len(subset) == 0:
        raise DataError(f"{data}: no images to inspect in the '{split}' split")
    engine = make_engine(bundle, "shared", device=device)
    metrics = {t: get_task(t).metric(bundle.task(t).info.num_classes) for t in labelled}
    originals = {t: find_original(bundle, t) for t in (bundle.tasks if examples > 0 else labelled)}
    original_metrics = {t: get_task(t).metric(bundle.task(t).info.num_classes)
                        for t in labelled if originals[t].model is not None}
    notes += [f"task '{o.task}': {o.reason}; its 'original' accuracy is the stored number, measured on other "
              "images than the bundle's" for o in originals.values() if o.task in labelled and o.model is None]
    kept: list[dict[str, Any]] = []
    with progress_bar("inspect: images", len(subset), enabled=show_progress) as advance:
        for batch in DataLoader(subset, batch_size=batch_size):
            outputs = {t: o.cpu() for t, o in engine.predict(batch["image"]).items()}
            # Unlabelled tasks' originals only run while example pictures are still wanted.
            wanted = [t for t, o in originals.items() if o.model is not None and (t in original_metrics or
                                                                                  len(kept) < examples)]
            original_outputs = {t: o.model.to(device)(batch["image"].to(device)).cpu() if t in wanted else None
                                for t, o in originals.items()}
            for task, metric in metrics.items():
                metric.update(get_task(task).predict(outputs[task]), batch[task])
                if task in original_metrics:
                    original_metrics[task].update(get_task(task).predict(original_outputs[task]), batch[task])
            for i in range(min(examples - len(kept), len(batch["image"]))):
                kept.append(example_entry(batch["stem"][i], batch["image"][i], {t: o[i] for t, o in outputs.items()},
                                          {t: None if o is None else o[i] for t, o in original_outputs.items()}))
            advance(len(batch["image"]))
    task_density = {k: v for k, v in engine.stats.mean().items() if "/" not in k}
    paths = {k: dict(v) for k, v in (getattr(engine, "layer_paths", None) or {}).items()}
    if not hasattr(engine, "layer_paths"):
        notes.append("this shared engine does not expose layer_paths: kernel paths are not reported")
    clip_summary: dict[str, Any] = {"clip": None, "frames": 0}
    temporal: dict[str, dict[str, float]] = {}
    clips = list_video_clips(data)
    if clips:
        clip = open_clip(clips[0], tasks=[], size=size)
        frames = [clip[i]["image"].unsqueeze(0) for i in range(len(clip))]
        with progress_bar("inspect: clip frames", len(frames), enabled=show_progress) as advance:
            for _ in engine.stream(frames):
                advance(1)
        temporal = {k: v for k, v in engine.stats.mean().items() if k.endswith("/temporal")}
        paths.update({k: dict(v) for k, v in (getattr(engine, "layer_paths", None) or {}).items()
                      if k.endswith("/temporal")})
        clip_summary = {"clip": clips[0].name, "frames": len(frames)}
    accuracy = {}
    for task, metric in metrics.items():
        original = originals[task]
        accuracy[task] = {
            "original": _finite_or_none(bundle.task(task).provenance.get("metrics") or {}),
            "bundle": _finite_or_none(metric.compute()),
            "original_same_images": (_finite_or_none(original_metrics[task].compute())
                                     if task in original_metrics else None),
            "original_from": original.source,
            "original_path": original.path,
            "stored": _finite_or_none(original.stored_metrics),
        }
    return {
        "activation_density": task_density,
        "temporal_density": temporal,
        "layer_paths": paths,
        "accuracy": accuracy,
        "examples": kept if examples > 0 else None,
        "data": {"path": str(data), "split": split, "images": len(subset), "labelled_tasks": labelled,
                 **clip_summary},
        "notes": notes,
    }


def _finite_or_none(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """NaN/inf (e.g. a metric with no valid pixel) become null: the report stays strict JSON."""
    return {str(k): float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
            for k, v in metrics.items()}
