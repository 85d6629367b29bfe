"""Wall-clock benchmark of a bundle: T independent models vs the dense engine vs the
shared engine, on images and on a video sequence, in one process.

Timings are *interleaved*: every repeat runs each variant once, in an order rotated by
the repeat index, so slow drift of a shared machine (other jobs, frequency scaling)
hits all variants alike. The first ``warmup`` rounds are discarded (they include lazy
set-up such as the shared engine's kernel calibration). Each variant reports the
median, min/max and quartiles of its samples; every ratio is a ratio of medians.

The per-layer-kind breakdown comes from a *separate* pass with
``SharedEngine(profile=True)`` (it synchronises around every part), so profiling never
pollutes the timed runs. FLOPs are analytic (:mod:`mtlcompress.report.flops`), with the
activation densities measured in the timed shared runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.data.synth import random_clip, random_scene, render_scene
from mtlcompress.io.image_size import SizeLike
from mtlcompress.progress import Advance, progress_bar
from mtlcompress.bundle.format import storage_dtype
from mtlcompress.report import flops
from mtlcompress.report.timing import (environment, interleaved_samples, median_ratios, run_models, summarize_samples,
                                       synchronize)
from mtlcompress.runtime.cost_model import KernelTimings
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.runtime.runner import resolve_precision
from mtlcompress.runtime.shared_engine import PROFILE_KINDS, SharedEngine
from mtlcompress.runtime.stream_fallback import FRAME_PATHS

__all__ = ["IMAGE_VARIANTS", "VIDEO_VARIANTS", "FRAME_KINDS", "RATIOS", "SPEEDUPS", "benchmark_bundle", "environment",
           "interleaved_samples", "speedups", "summarize_samples", "synthetic_images", "static_clip", "stream_flops"]

# Variant names (keys of the result's "images" / "video" sections).
IMAGE_VARIANTS = ("independent", "base_only", "dense", "shared")
VIDEO_VARIANTS = ("independent", "dense", "shared_per_frame", "shared_stream")
# The shared stream's frames, timed one by one: keyframes, the delta frames between, and
# frames computed by the tasks' own models once a stream falls back to full frames.
FRAME_KINDS = FRAME_PATHS
# (numerator, denominator) pairs reported as ``"<num>/<den>"``: how many times faster
# the denominator is.
RATIOS = {
    "images": (("independent", "shared"), ("dense", "shared"), ("independent", "dense"), ("shared", "base_only")),
    "video": (("independent", "shared_stream"), ("dense", "shared_stream"), ("shared_per_frame", "shared_stream"),
              ("independent", "shared_per_frame")),
}

# The headline: how many times faster the shared engine is than what a user would
# otherwise run (the T single-task models) and than the dense reference engine.
SPEEDUPS = {"images": {"vs_models": "independent/shared", "vs_dense": "dense/shared"},
            "video": {"vs_models": "independent/shared_stream", "vs_dense": "dense/shared_stream"}}


# ------------------------------------------------------------------------------------
# Inputs.
# ------------------------------------------------------------------------------------
def _to_tensor(image: np.ndarray) -> Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)


def synthetic_images(count: int, size: SizeLike, seed: int = 0) -> Tensor:
    """``count`` rendered rooms ``[count, 3, H, W]`` (``size``: a side or (H, W)) in [0, 1] (deterministic)."""
    rng = np.random.default_rng(seed)
    return torch.stack([_to_tensor(render_scene(random_scene(rng), size)["image"]) for _ in range(count)])


def static_clip(frames: int, size: SizeLike, seed: int = 0) -> list[Tensor]:
    """A static-camera synthetic clip (objects move, the camera does not): ``frames`` x
    ``[1, 3, H, W]``. Seeds are tried from ``seed`` upward until a clip's camera
    stays still, so the result is deterministic."""
    for attempt in range(seed, seed + 1000):
        scenes = random_clip(np.random.default_rng(attempt), frames)
        if all(s.camera == scenes[0].camera for s in scenes):
            return [_to_tensor(render_scene(s, size)["image"]).unsqueeze(0) for s in scenes]
    raise RuntimeError("no static-camera clip found")  # pragma: no cover - half the clips are static


def speedups(ratios: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """``SPEEDUPS`` read from a result's ``ratios``."""
    return {section: {name: ratios[section][key] for name, key in names.items() if key in ratios.get(section, {})}
            for section, names in SPEEDUPS.items()}


def _split_density(mean: dict[str, dict[str, float]]) -> dict[str, Any]:
    """``DensityStats.mean()`` -> task-domain and temporal per-layer densities, plus means."""
    task = {k: v for k, v in mean.items() if not k.endswith("/temporal")}
    temporal = {k.removesuffix("/temporal"): v for k, v in mean.items() if k.endswith("/temporal")}

    def means(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
        return {t: sum(layers.values()) / len(layers) for t, layers in per_task.items() if layers}

    return {"task": task, "temporal": temporal, "task_mean": means(task), "temporal_mean": means(temporal)}


def _path_counts(layer_paths: dict[str, dict[str, str]]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for key, paths in layer_paths.items():
        for path in paths.values():
            counts.setdefault(key, {}).setdefault(path, 0)
            counts[key][path] += 1
    return counts


# ------------------------------------------------------------------------------------
# FLOPs.
# ------------------------------------------------------------------------------------
def stream_flops(bundle: Bundle, temporal_density: dict[str, dict[str, float]], keyframes: int,
                 frames: int) -> dict[str, float]:
    """Analytic FLOPs per frame of the shared stream, averaged over the sequence.

    Keyframes run every task exactly: the T models' FLOPs. A non-keyframe costs, per
    task, ``linear * d_temporal`` on every layer with a temporal threshold (the
    identity ``y^f = y^{f-1} + W dx``), dense linears elsewhere, plus attention, head
    and the patch embedding (the base's; a sub-task's own only if its embedding has a
    delta), these three counted in full: an upper bound, as the engine updates them
    where tokens moved. Same counting convention as :mod:`mtlcompress.report.flops`.
    """
    config = bundle.backbone
    keyframe = sum(task["total"] for task in flops.independent_flops(bundle).values())
    other = 0.0
    for name, entry in bundle.tasks.items():
        dense = flops.task_model_flops(bundle, name)
        thresholds = entry.activation.temporal_thresholds
        measured = temporal_density.get(name, {})
        linear = sum(flops.linear_flops(config, layer) * (float(measured.get(layer, 1.0)) if layer in thresholds
                                                          else 1.0) for layer in flops.linear_shapes(config))
        embeds = name == bundle.base_task or any(k.startswith(("patch_embed", "pos_embed", "cls_token"))
                                                 for k in entry.delta)
        other += linear + dense["attention"] + dense["head"] + (dense["patch_embed"] if embeds else 0)
    non_key = max(0, frames - keyframes)
    return {"keyframe": float(keyframe), "non_keyframe": float(other),
            "mean_per_frame": (keyframes * keyframe + non_key * other) / max(1, frames)}


# ------------------------------------------------------------------------------------
# The benchmark.
# ------------------------------------------------------------------------------------
def _profile(engine_factory: Callable[[], SharedEngine], run: Callable[[SharedEngine], object],
             device: torch.device, advance: Advance) -> dict[str, Any]:
    """One warm-up and one profiled call on a fresh profiling engine."""
    engine = engine_factory()
    run(engine)
    advance(1, "profile")
    engine.reset_profile()
    synchronize(device)
    start = time.perf_counter()
    run(engine)
    synchronize(device)
    wall = time.perf_counter() - start
    advance(1, "profile")
    seconds = {role: {kind: float(engine.profile_seconds[role].get(kind, 0.0)) for kind in PROFILE_KINDS}
               for role in engine.profile_seconds}
    by_kind = {kind: sum(roles.get(kind, 0.0) for roles in seconds.values()) for kind in PROFILE_KINDS}
    return {"seconds": seconds, "by_kind": by_kind, "sum_s": sum(by_kind.values()), "wall_s": wall}


def benchmark_bundle(bundle: Bundle, images: Tensor, frames: list[Tensor] | None = None, *, repeats: int = 5,
                     warmup: int = 1, device: str | torch.device = "cpu", policy: KeyframePolicy | None = None,
                     timings: KernelTimings | None = None, profile: bool = True, precision: str = "auto",
                     show_progress: bool = False) -> dict[str, Any]:
    """Time a bundle's executors against T independent models; return plain JSON.

    Args:
        bundle: the bundle to measure (all its tasks run).
        images: one batch ``[B, 3, H, W]`` in [0, 1]; each variant processes it per call.
        frames: a video sequence of ``[1, 3, H, W]`` frames (None: no video section).
        repeats: timed rounds; warmup: discarded rounds before them.
        device: ``cpu`` or ``cuda``.
        policy: keyframe policy for the shared stream (default ``KeyframePolicy()``).
        timings: kernel timings for the shared engine (default: this machine's, cached).
        profile: also run the per-layer-kind breakdown pass.
        precision: compute dtype of every variant (``runtime.runner.resolve_precision``).
        show_progress: count the timed and warm-up calls on stderr, with an ETA.

    Returns:
        ``{"environment", "config", "images", "video", "video_frames", "ratios",
        "speedup", "network_plan", "stream_plan", "profile", "activation_density",
        "layer_paths", "flops"}``; ``speedup``: the shared engine against the T models
        and the dense engine (``SPEEDUPS``); ``network_plan``: the shared engine's last
        network-level choice on images; ``stream_plan``: its stream's frame-path
        decision (``SharedEngine.stream_plan``); ``images`` and
        ``video`` map each variant (``IMAGE_VARIANTS`` / ``VIDEO_VARIANTS``) to
        :func:`summarize_samples` output; ``ratios`` are ratios of those medians;
        ``video_frames`` maps each kind in ``FRAME_KINDS`` that occurred to the same
        summary of the shared stream's single frames of that kind.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("need repeats >= 1 and warmup >= 0")
    device = torch.device(device)
    policy = policy or KeyframePolicy()
    precision = resolve_precision(precision, bundle, device)
    bundle = bundle.cast(storage_dtype(precision))
    images = images.to(device, bundle.dtype)
    frames = [f.to(device, bundle.dtype) for f in frames] if frames else None
    calls = (warmup + repeats) * (len(IMAGE_VARIANTS) + (len(VIDEO_VARIANTS) if frames else 0))
    with progress_bar("bench", calls + (2 + 2 * bool(frames)) * profile, enabled=show_progress) as advance:
        return _benchmark(bundle, images, frames, repeats, warmup, device, policy, timings, profile, precision,
                          advance)


def _benchmark(bundle: Bundle, images: Tensor, frames: list[Tensor] | None, repeats: int, warmup: int,
               device: torch.device, policy: KeyframePolicy, timings: KernelTimings | None, profile: bool,
               precision: str, advance: Advance) -> dict[str, Any]:
    tasks = list(bundle.tasks)
    models = {t: bundle.task_model(t).to(device, bundle.dtype) for t in tasks}
    dense = DenseEngine(bundle, device=device)
    shared = SharedEngine(bundle, device=device, timings=timings, network_path="auto")

    def independent(batch: Tensor) -> None:
        run_models(models.values(), batch)

    @torch.inference_mode()
    def base_only(batch: Tensor) -> None:
        models[bundle.base_task](batch)

    def reset_stats() -> None:
        dense.stats.reset()
        shared.stats.reset()

    batch = images.shape[0]
    image_samples = interleaved_samples({
        "independent": lambda: independent(images),
        "base_only": lambda: base_only(images),
        "dense": lambda: dense.predict(images),
        "shared": lambda: shared.predict(images),
    }, repeats, warmup, device, before_timed=reset_stats, advance=advance)
    image_density = _split_density(shared.stats.mean())
    image_paths = _path_counts(shared.layer_paths)
    result_images = {name: summarize_samples(s, batch) for name, s in image_samples.items()}

    result_video: dict[str, Any] = {}
    video_frames: dict[str, Any] = {}
    video_density: dict[str, Any] = {}
    video_paths: dict[str, Any] = {}
    keyframes = 0
    if frames:
        # Measures its frames (and may fall back to full frames) as a self-calibrated engine does.
        shared_video = SharedEngine(bundle, device=device, timings=shared.timings, network_path="auto",
                                    measure=timings is None)
        last_keyframes: list[int] = []
        frame_kinds: dict[str, list[float]] = {kind: [] for kind in FRAME_KINDS}

        def stream() -> None:
            keyframes_seen = 0
            start = time.perf_counter()
            for result in shared_video.stream(frames, policy):
                synchronize(device)
                now = time.perf_counter()
                frame_kinds[result.path].append(now - start)
                keyframes_seen += result.keyframe
                start = now
            last_keyframes.append(keyframes_seen)

        def reset_video() -> None:
            shared_video.stats.reset()
            for values in frame_kinds.values():
                values.clear()

        def per_frame(fn: Callable[[Tensor], object]) -> Callable[[], None]:
            return lambda: [fn(frame) for frame in frames]

        video_samples = interleaved_samples({
            "independent": per_frame(independent),
            "dense": per_frame(dense.predict),
            "shared_per_frame": per_frame(shared.predict),
            "shared_stream": stream,
        }, repeats, warmup, device, before_timed=reset_video, advance=advance)
        keyframes = last_keyframes[-1]
        video_density = _split_density(shared_video.stats.mean())
        video_paths = _path_counts(shared_video.layer_paths)
        result_video = {name: summarize_samples(s, len(frames)) for name, s in video_samples.items()}
        video_frames = {kind: summarize_samples(values) for kind, values in frame_kinds.items() if values}

    profiles: dict[str, Any] = {}
    if profile:
        factory = lambda: SharedEngine(bundle, device=device, timings=shared.timings, profile=True,  # noqa: E731
                                       network_path="shared")  # the shared paths' breakdown, whatever auto picks
        profiles["images"] = _profile(factory, lambda e: e.predict(images), device, advance)
        if frames:
            profiles["video"] = _profile(factory, lambda e: list(e.stream(frames, policy)), device, advance)

    report = flops.flops_report(bundle, image_density["task"])
    totals = report["totals"]
    flop_summary: dict[str, Any] = {
        "images": {"independent": totals["independent"]["total"], "bundle": totals["bundle"]["total"],
                   "limit": totals["limit"]["total"], "single_model": report["per_task"]["independent"][
                       bundle.base_task]["total"]},
        "per_image": True,
    }
    if frames:
        flop_summary["video"] = {
            "independent": totals["independent"]["total"],
            "bundle_per_frame": report["totals"]["bundle"]["total"],
            "stream": stream_flops(bundle, video_density.get("temporal", {}), keyframes, len(frames)),
        }
    ratios = {"images": median_ratios(result_images, RATIOS["images"]),
              "video": median_ratios(result_video, RATIOS["video"]) if result_video else {}}
    return {
        "environment": environment(device),
        "config": {
            "repeats": repeats, "warmup": warmup, "batch": batch, "precision": precision, "image_size": int(images.shape[-1]),
            "frames": len(frames) if frames else 0, "keyframes": keyframes,
            "keyframe_every": policy.keyframe_every, "max_drift": policy.max_drift,
            "tasks": tasks, "base_task": bundle.base_task, "backbone": bundle.backbone.to_dict(),
            "weight_density": {t: bundle.delta_density(t) for t in bundle.sub_tasks},
            "interleaved": True,
        },
        "images": result_images,
        "video": result_video,
        "video_frames": video_frames,
        "ratios": ratios,
        "speedup": speedups(ratios),
        "network_plan": shared.network_plan.to_dict() if shared.network_plan else None,
        "stream_plan": shared_video.stream_plan if frames else None,
        "profile": profiles,
        "activation_density": {"images": image_density, "video": video_density},
        "layer_paths": {"images": image_paths, "video": video_paths},
        "flops": flop_summary,
    }
