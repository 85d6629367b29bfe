"""Cost of the BSDS-style edge odsF (thinning + one-to-one matching) per threshold.

A synthetic square map: a grid of one-pixel ground-truth lines; the prediction is the
lines blurred (sigma 2) plus uniform noise in [0, 0.05]. Prints, for 15 of the 99
thresholds, the mask size and the seconds spent thinning and matching, then totals, then
the seconds ``EdgeMatchedFMeasure.update`` takes for the whole image (all 99 thresholds).

    python benchmarks/edge_matching_cost.py --size 256
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy import ndimage

from mtlcompress.tasks.edge_matching import EdgeMatchedFMeasure, count_matched_pixels
from mtlcompress.tasks.thinning import thin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--max-dist", type=float, default=0.0075, help="fraction of the diagonal")
    args = parser.parse_args()
    size = args.size
    truth = np.zeros((size, size), bool)
    truth[size // 25::size // 12, :] = True
    truth[:, size // 17::size // 8] = True
    rng = np.random.default_rng(0)
    prob = np.clip(ndimage.gaussian_filter(truth.astype(np.float32), 2) * 4 + rng.uniform(0, 0.05, truth.shape), 0, 1)
    thinning = matching = 0.0
    for threshold in np.arange(1, 100, 7) / 100:
        start = time.perf_counter()
        thinned = thin(prob >= threshold)
        middle = time.perf_counter()
        count_matched_pixels(thinned, truth, args.max_dist * math.hypot(size, size))
        end = time.perf_counter()
        thinning, matching = thinning + middle - start, matching + end - middle
        print(f"t={threshold:.2f} mask {int((prob >= threshold).sum())} thinned {int(thinned.sum())} "
              f"thin {middle - start:.2f} s match {end - middle:.2f} s", flush=True)
    print(f"{size}x{size}: thinning {thinning:.1f} s, matching {matching:.1f} s over 15 thresholds")
    metric = EdgeMatchedFMeasure(max_dist=args.max_dist)
    start = time.perf_counter()
    metric.update(torch.from_numpy(prob)[None, None], torch.from_numpy(truth).float()[None, None])
    print(f"{size}x{size}: one image, all 99 thresholds: {time.perf_counter() - start:.1f} s, "
          f"odsF {metric.compute()['odsF']:.2f}")


if __name__ == "__main__":
    main()
