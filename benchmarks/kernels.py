"""Time the delta kernels against the plain dense layer, per ViT-S linear-layer shape.

    python benchmarks/kernels.py [--threads 2] [--write]

For each shared layer shape of ViT-S/16-224 (197 tokens) it times, with random
inputs: the dense layer ``F.linear``; ``dW x`` with a 2%-dense weight delta in sparse
CSR (``kernels.sparse_delta_weight_matmul``, the shared engine's ``dW x_0`` term); the
token path on 15% of the rows (``kernels.token_sparse_linear``: gather, GEMM,
scatter); and the element path with 15% of the entries kept
(``kernels.element_sparse_linear``, CSR activations). Medians of interleaved repeats;
with --write, replaces the kernels section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings

import torch
import torch.nn.functional as F
from _markdown import replace_section, table

from mtlcompress.report.benchmark import interleaved_samples
from mtlcompress.runtime import kernels
from mtlcompress.runtime.calibration import cpu_model

TOKENS = 197
SHAPES = {"qkv": (384, 1152), "proj": (384, 384), "fc1": (384, 1536), "fc2": (1536, 384)}  # (in, out)
WEIGHT_DENSITY = 0.02
ROW_DENSITY = 0.15
WARMUP = 5


def measure(repeats: int) -> list[dict[str, object]]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for kind, (inputs, outputs) in SHAPES.items():
        x = torch.randn(1, TOKENS, inputs, generator=generator)
        weight = torch.randn(outputs, inputs, generator=generator)
        delta = weight * (torch.rand(outputs, inputs, generator=generator) < WEIGHT_DENSITY)
        delta_csr = kernels.to_csr(delta)
        mask = torch.zeros(1, TOKENS, dtype=torch.bool)
        mask[0, torch.randperm(TOKENS, generator=generator)[:round(ROW_DENSITY * TOKENS)]] = True
        dx = x * (torch.rand(x.shape, generator=generator) < ROW_DENSITY)
        samples = interleaved_samples({
            "dense": lambda: F.linear(x, weight),
            "csr": lambda: kernels.sparse_delta_weight_matmul(x, delta_csr),
            "token": lambda: kernels.token_sparse_linear(x, weight, mask),
            "element": lambda: kernels.element_sparse_linear(dx, weight),
        }, repeats, WARMUP, torch.device("cpu"))
        rows.append({"layer": kind, "in": inputs, "out": outputs,
                     **{f"{k}_ms": statistics.median(v) * 1e3 for k, v in samples.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--write", action="store_true", help="rewrite the section in docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
    rows = measure(args.repeats)
    print(json.dumps(rows, indent=2))
    if args.write:
        body = table(
            ["layer", "in x out", "dense ms", f"CSR dW x, {WEIGHT_DENSITY:.0%} dense: ms", "% of dense",
             f"token path, {ROW_DENSITY:.0%} of rows: ms", "% of dense",
             f"element path, {ROW_DENSITY:.0%} of entries: ms", "% of dense"],
            [[r["layer"], f"{r['in']} x {r['out']}", round(r["dense_ms"], 3), round(r["csr_ms"], 3),
              f"{r['csr_ms'] / r['dense_ms']:.0%}", round(r["token_ms"], 3), f"{r['token_ms'] / r['dense_ms']:.0%}",
              round(r["element_ms"], 3), f"{r['element_ms'] / r['dense_ms']:.0%}"]
             for r in rows])
        replace_section("kernels", f"`python benchmarks/kernels.py --threads {args.threads} --write` on {cpu_model()}, "
                                   f"{args.threads} torch threads, torch {torch.__version__}: {TOKENS} tokens, "
                                   f"random inputs, medians of {args.repeats} interleaved repeats.\n\n{body}")


if __name__ == "__main__":
    main()
