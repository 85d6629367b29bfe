#!/usr/bin/env bash
# Re-run every benchmark and rewrite every section of docs/benchmarks.md.
# About 1.5 hours on a quiet 2-core CPU (the full runtime matrix includes ViT-B); run
# nothing else at the same time: torch threads oversubscribe and every timing suffers.
set -euo pipefail
cd "$(dirname "$0")/.."
work=benchmarks/.cache/demo-out
rm -rf "$work"
start=$(date +%s)
mtlcompress demo --out "$work" --quiet
python benchmarks/demo_tables.py "$work/demo-report.json" --wall-seconds $(( $(date +%s) - start ))
python benchmarks/sparsify_sweep.py "$work" --tasks edges
python benchmarks/run_all.py --threads 2
python benchmarks/stream_memory.py "$work/bundle.safetensors" --frames 1000 --write
