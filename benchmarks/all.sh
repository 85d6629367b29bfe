#!/usr/bin/env bash
# Re-run every benchmark and rewrite every section of docs/benchmarks.md.
# About 45-60 minutes on a 2-core CPU (50 min last time, the demo 17 of them);
# run nothing else at the same time: torch threads oversubscribe and every timing suffers.
# The GPU section of docs/benchmarks.md is not touched (it needs a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
work=benchmarks/.cache/demo-out
rm -rf "$work"
start=$(date +%s)
mtlcompress demo --out "$work" --quiet
python benchmarks/demo_tables.py "$work/demo-report.json" --wall-seconds $(( $(date +%s) - start ))
python benchmarks/sparsify_sweep.py "$work" --tasks edges
python benchmarks/kernels.py --threads 2 --write
python benchmarks/run_all.py --threads 2
python benchmarks/stream_memory.py "$work/bundle.safetensors" --frames 3000 --write
python benchmarks/synth_speed.py --write
