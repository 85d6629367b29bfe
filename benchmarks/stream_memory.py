"""Stream a long synthetic video through a bundle and record resident memory.

    python benchmarks/stream_memory.py BUNDLE [--frames 1000] [--engine shared]

Frames are rendered on the fly (a smoothly moving synthetic scene at the bundle's
image size), so the input side holds one frame at a time. Prints JSON with the RSS
every 50 frames and the growth after warm-up; with --write, replaces the
stream-memory section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from _markdown import replace_section

import mtlcompress
from mtlcompress.data.synth import random_clip, render_scene
from mtlcompress.runtime.keyframes import KeyframePolicy



def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def frames(count: int, size: int, seed: int = 0):
    """One long smooth clip, rendered in chunks so memory stays flat."""
    rng = np.random.default_rng(seed)
    produced = 0
    while produced < count:
        for scene in random_clip(rng, min(100, count - produced)):
            image = render_scene(scene, size)["image"]
            yield torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0)
            produced += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--engine", default="shared")
    parser.add_argument("--keyframe-every", type=int, default=16)
    parser.add_argument("--write", action="store_true", help="rewrite the section in docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = mtlcompress.load(args.bundle, engine=args.engine)
    bundle, engine = model.bundle, model.engine
    samples, keyframes = [], 0
    start = time.perf_counter()
    for result in engine.stream(frames(args.frames, bundle.backbone.img_size),
                                KeyframePolicy(keyframe_every=args.keyframe_every)):
        keyframes += result.keyframe
        if result.index % 50 == 0 or result.index == args.frames - 1:
            samples.append((result.index, round(rss_mib(), 1)))
    seconds = time.perf_counter() - start
    warm = [rss for index, rss in samples if index >= 100]
    # A leak keeps growing; allocator warm-up levels off: compare the last half alone.
    late = [rss for index, rss in samples if index >= args.frames // 2]
    report = {"bundle": str(args.bundle), "engine": args.engine, "frames": args.frames, "keyframes": keyframes,
              "seconds": round(seconds, 1), "rss_mib_every_50_frames": samples,
              "spread_after_frame_100_mib": round(max(warm) - min(warm), 1) if warm else None,
              "spread_in_last_half_mib": round(max(late) - min(late), 1) if late else None,
              "last_half_end_minus_start_mib": round(late[-1] - late[0], 1) if late else None,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor()}
    print(json.dumps(report, indent=2))
    if args.write:
        command = f"python benchmarks/stream_memory.py {args.bundle} --frames {args.frames} --write"
        replace_section("stream-memory",
                        f"`{command}` ({args.engine} engine, {torch.get_num_threads()} threads, "
                        f"torch {torch.__version__}): "
                        f"{args.frames} frames ({keyframes} keyframes) in {seconds:.0f} s; resident memory "
                        f"{min(warm):.0f}-{max(warm):.0f} MiB from frame 100 on; over the last "
                        f"{args.frames - args.frames // 2} frames it spans {report['spread_in_last_half_mib']} MiB "
                        f"and ends {report['last_half_end_minus_start_mib']:+} MiB from where it began (a leak "
                        "would keep climbing).")


if __name__ == "__main__":
    main()
