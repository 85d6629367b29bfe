"""``mtlcompress bench``: time a bundle against its T independent models (images and video).

With a CUDA ``--device`` it also times the peers a GPU user would deploy: the T models
and the base model captured as CUDA graphs, and the shared engine's static image path
captured likewise (:mod:`mtlcompress.report.graph_peer`). Run it once per ``--batch``
(the issue asks for 1 and 32). That path has not yet run on a GPU here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mtlcompress.cli._options import DeviceOpt, InferencePrecisionOpt, JsonOpt, QuietOpt
from mtlcompress.cli._output import emit, info, make_table
from mtlcompress.errors import MtlCompressError

if TYPE_CHECKING:
    import torch

SYNTHETIC_SEED = 0


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


def bench(
    bundle: Annotated[Path, typer.Argument(help="Bundle file written by `mtlcompress export`.")],
    inputs: Annotated[list[Path] | None, typer.Option("--input", metavar="PATH", help=(
        "PNG/JPEG file or folder; repeat for more. The first --batch images form the image batch and the first "
        "--frames (in name order) the video sequence. Default: rendered synthetic rooms and a static-camera clip."))
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Images per predict call.")] = 1,
    frames: Annotated[int, typer.Option(min=0, help="Video frames to stream (0: no video benchmark); the default "
                                        "is one period of the default keyframe policy.")] = 16,
    repeats: Annotated[int, typer.Option(min=1, help="Timed rounds (each runs every variant once).")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed rounds first.")] = 1,
    keyframe_every: Annotated[int, typer.Option(min=1, help="Video: a keyframe (every task exactly) every K "
                                                          "frames.")] = 16,
    max_drift: Annotated[float, typer.Option(help="Video: keyframe once the unpropagated error passes this.")] = 0.25,
    device: DeviceOpt = "auto",
    precision: InferencePrecisionOpt = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads (default: torch's choice).")] = None,
    no_profile: Annotated[bool, typer.Option("--no-profile", help="Skip the per-layer-kind breakdown pass.")
                          ] = False,
    compiled: Annotated[bool, typer.Option("--compiled", help="Also time the T models under torch.compile (the "
                                           "honest CPU peer; compiling takes minutes; reported as unavailable "
                                           "where it cannot compile).")] = False,
    graphs: Annotated[bool | None, typer.Option("--graphs/--no-graphs", help=(
        "Also time the GPU peers at --batch: the T models and the base model each captured as a CUDA graph, and the "
        "shared engine's static image path captured too (default: on with a CUDA --device, off elsewhere; asked "
        "for off CUDA, reported as unavailable (needs CUDA)). Not yet run on a GPU."), show_default=False)] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Time T independent models, the dense engine and the shared engine, interleaved."""
    import torch

    from mtlcompress.bundle.format import load_bundle
    from mtlcompress.report.benchmark import benchmark_bundle
    from mtlcompress.runtime.allocator import keep_freed_memory
    from mtlcompress.runtime.devices import resolve_device
    from mtlcompress.runtime.keyframes import KeyframePolicy

    device = str(resolve_device(device))  # "auto" -> the device it means here
    if max_drift <= 0:
        raise MtlCompressError("--max-drift must be > 0")
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()
    loaded = load_bundle(bundle)
    size = loaded.backbone.img_size
    images, clip, source = _inputs(inputs, size, batch, frames)
    info(f"benchmarking {bundle.name}: {len(loaded.tasks)} tasks, {repeats} repeats after {warmup} warm-up, "
         f"{source}", quiet or as_json)
    result = benchmark_bundle(loaded, images, clip, repeats=repeats, warmup=warmup, device=device,
                              policy=KeyframePolicy(keyframe_every, max_drift), profile=not no_profile,
                              precision=precision, show_progress=not (quiet or as_json))
    result["bundle"] = str(bundle)
    result["inputs"] = source
    if compiled:
        result["compile_peer"] = _compile_peer(loaded, images, repeats, warmup, device, quiet or as_json)
    if graphs if graphs is not None else torch.device(device).type == "cuda":
        from mtlcompress.bundle.format import storage_dtype
        from mtlcompress.report.graph_peer import graphed_peer

        info("capturing the T models and the shared engine as CUDA graphs and timing them", quiet or as_json)
        cast = loaded.cast(storage_dtype(result["config"]["precision"]))  # the precision the other variants ran in
        result["graph_peer"] = graphed_peer(cast, images, repeats=repeats, warmup=warmup, device=device)
    emit(result, as_json, *tables(result), *compile_peer_tables(result), *graph_peer_tables(result))


def _compile_peer(bundle, images, repeats: int, warmup: int, device: str, quiet: bool) -> dict[str, Any]:
    from mtlcompress.report.compile_peer import compiled_peer

    info("compiling the T models (torch.compile) and timing them beside the eager ones", quiet)
    return compiled_peer(bundle, images, repeats=repeats, warmup=warmup, device=device)


def compile_peer_tables(result: dict[str, Any]) -> list:
    """The shared engine against the eager and the compiled T models (with ``--compiled``)."""
    peer = result.get("compile_peer")
    if not peer:
        return []
    title = "images: T models eager and under torch.compile vs the shared engine, ms per call"
    if not peer["available"]:
        title += f" (torch.compile unavailable: {peer['reason']})"
    rows = [[name, _ms(s["median_s"]), _ms(s["min_s"]), _ms(s["max_s"])] for name, s in peer["images"].items()]
    return [make_table(title, ["variant", "median", "min", "max"], rows),
            make_table("ratios of medians (x faster: the right-hand side)", ["ratio", "value"],
                       [[name, value] for name, value in peer["ratios"].items()])]


def graph_peer_tables(result: dict[str, Any]) -> list:
    """Eager against CUDA-graph-captured variants (with a CUDA ``--device`` or ``--graphs``)."""
    peer = result.get("graph_peer")
    if not peer:
        return []
    if not peer["available"]:
        return [make_table("images: CUDA graph peers", ["", ""], [["unavailable", peer["reason"]]])]
    batch = result["config"].get("batch")
    rows = [[name, _ms(s["median_s"]), _ms(s["min_s"]), _ms(s["max_s"])] for name, s in peer["images"].items()]
    return [make_table(f"images, batch {batch}: eager and CUDA-graph variants, ms per call",
                       ["variant", "median", "min", "max"], rows),
            make_table("ratios of medians (x faster: the right-hand side)", ["ratio", "value"],
                       [[name, value] for name, value in peer["ratios"].items()])]


def _inputs(paths: list[Path] | None, size: tuple[int, int], batch: int, frames: int) -> tuple[torch.Tensor, list | None, str]:
    from mtlcompress.io.images import find_inputs, read_images
    from mtlcompress.report.benchmark import static_clip, synthetic_images

    if not paths:
        images = synthetic_images(batch, size, seed=SYNTHETIC_SEED)
        clip = static_clip(frames, size, seed=SYNTHETIC_SEED) if frames else None
        return images, clip, f"synthetic (seed {SYNTHETIC_SEED})"
    files = [f for item in find_inputs(paths) for f in item.frames]
    if len(files) < batch:
        raise MtlCompressError(f"--batch {batch} needs at least {batch} input images, got {len(files)}")
    images, _ = read_images(files[:batch], size)
    clip = None
    if frames:
        if len(files) < frames:
            raise MtlCompressError(f"--frames {frames} needs at least {frames} input images, got {len(files)}")
        stacked, _ = read_images(files[:frames], size)
        clip = [frame.unsqueeze(0) for frame in stacked]
    return images, clip, f"{len(files)} input image(s)"


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def tables(result: dict[str, Any]) -> list:
    """Timings with spread, ratios, and the per-layer-kind breakdown, for people."""
    env, config = result["environment"], result["config"]
    out = []
    for section, unit in (("images", "image"), ("video", "frame")):
        rows = [[name, _ms(s["median_s"]), _ms(s["min_s"]), _ms(s["max_s"]), _ms(s["per_item_s"])]
                for name, s in result[section].items()]
        if rows:
            out.append(make_table(
                f"{section}: ms per call ({config['repeats']} repeats, {config['precision']}, {env['device_name']}, "
                f"{env['threads']} threads, torch {env['torch']})",
                ["variant", "median", "min", "max", f"median per {unit}"], rows))
    if result.get("video_frames"):
        out.append(make_table("shared stream, single frames by kind: ms", ["frame", "median", "min", "max", "frames"],
                              [[kind, _ms(s["median_s"]), _ms(s["min_s"]), _ms(s["max_s"]), s["repeats"]]
                               for kind, s in result["video_frames"].items()]))
    ratios = [[f"{section}: {name}", value] for section, values in result["ratios"].items()
              for name, value in values.items()]
    out.append(make_table("ratios of medians (x faster: the right-hand side)", ["ratio", "value"], ratios))
    speedup = result.get("speedup", {})
    plan, stream = result.get("network_plan") or {}, result.get("stream_plan") or {}
    how = {"images": f"network path {plan.get('path')} ({plan.get('source')})",
           "video": f"stream {stream.get('mode')}" + (f": {stream['reason']}" if stream.get("reason") else "")}
    out.append(make_table("shared engine: x faster than the T single-task models and than the dense engine",
                          ["", "vs T models", "vs dense engine", "how it ran"],
                          [[section, values.get("vs_models"), values.get("vs_dense"), how[section]]
                           for section, values in speedup.items() if values]))
    flop = result["flops"]["images"]
    out.append(make_table("GFLOPs per image (analytic, measured densities)", ["variant", "GFLOPs"],
                          [[k, v / 1e9] for k, v in flop.items()]))
    for section, profile in result["profile"].items():
        roles = list(profile["seconds"])
        rows = [[kind, *(_ms(profile["seconds"][r].get(kind, 0.0)) for r in roles), _ms(total)]
                for kind, total in profile["by_kind"].items()]
        rows.append(["sum", *(_ms(sum(profile["seconds"][r].values())) for r in roles), _ms(profile["sum_s"])])
        out.append(make_table(f"shared engine, {section}: ms per layer kind (profiled pass, wall "
                              f"{_ms(profile['wall_s']):.1f} ms)", ["kind", *roles, "total"], rows))
    density = result["activation_density"]
    rows = [[task, value, density["video"].get("temporal_mean", {}).get(task)]
            for task, value in density["images"]["task_mean"].items()]
    rows += [[task, None, value] for task, value in density["video"].get("temporal_mean", {}).items()
             if task not in density["images"]["task_mean"]]
    out.append(make_table("token-delta density (kept fraction, mean over layers)",
                          ["task", "vs base (images)", "vs previous frame (video)"], rows))
    return out
