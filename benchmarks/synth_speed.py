"""Time the built-in synthetic data generator through the CLI, start-up included.

    python benchmarks/synth_speed.py [--images 1000] [--size 64] [--write]

Runs ``mtlcompress data synth`` into a temporary folder and reports the wall-clock
seconds; with --write, replaces the synth section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _markdown import replace_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--write", action="store_true", help="rewrite the section in docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        command = ["mtlcompress", "data", "synth", "--out", f"{folder}/scenes", "--images", str(args.images),
                   "--size", str(args.size), "--quiet", "--json"]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        files = sum(1 for path in Path(folder).rglob("*") if path.is_file())
    report = {"images": args.images, "size": args.size, "seconds": round(seconds, 1), "files": files,
              "machine": platform.processor() or platform.machine(), "python": sys.version.split()[0]}
    print(json.dumps(report, indent=2))
    if args.write:
        shown = " ".join(command).replace(f"{folder}/scenes", "/tmp/scenes")
        replace_section("synth", f"`{shown}` (run by `python benchmarks/synth_speed.py --write`): {seconds:.1f} s "
                                 f"for {args.images:,} labelled {args.size}-px scenes ({files:,} files written), "
                                 "CLI start-up included (target: under a minute).")


if __name__ == "__main__":
    main()
