"""BSDS-style edge odsF: thinned predictions matched one-to-one to ground-truth edge
pixels within a fraction of the image diagonal.

This is the protocol ATRC and InvPT report for PASCAL-Context (``maxDist`` 0.0075) and
NYUD-v2 (0.011), which they run through the seism / BSDS ``correspondPixels`` code.
``EdgeFMeasure`` in ``binary_metrics.py`` is the cheaper approximation used where no
dataset names a tolerance (the synthetic scenes, sparsify's internal checks).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree

from mtlcompress.tasks.binary_metrics import best_f_over_thresholds, probability_thresholds
from mtlcompress.tasks.bipartite_matching import maximum_matching
from mtlcompress.tasks.losses import check_same_shape
from mtlcompress.tasks.metrics import StreamingMetric
from mtlcompress.tasks.thinning import thin

__all__ = ["count_matched_pixels", "EdgeMatchedFMeasure"]


def count_matched_pixels(predicted: np.ndarray, truth: np.ndarray, max_dist_px: float) -> int:
    """Size of a maximum one-to-one matching of predicted to true edge pixels.

    A predicted and a true pixel may be matched when their Euclidean distance is at
    most ``max_dist_px``; each pixel is matched at most once (``maximum_matching``,
    seeded nearest-first). BSDS's ``correspondPixels`` solves a min-cost assignment in
    which leaving a pixel unmatched costs far more than any allowed distance, so its
    number of matches is this maximum too.
    """
    predicted_px = np.argwhere(predicted)
    true_px = np.argwhere(truth)
    if len(predicted_px) == 0 or len(true_px) == 0:
        return 0
    pairs = cKDTree(predicted_px).sparse_distance_matrix(cKDTree(true_px), max_dist_px, output_type="coo_matrix")
    # Exact zero distances are stored too, so coinciding pixels are candidates.
    match = maximum_matching(pairs.row, pairs.col, len(predicted_px), len(true_px), priority=pairs.data)
    return int(np.count_nonzero(match >= 0))


class EdgeMatchedFMeasure(StreamingMetric):
    """odsF (%) with BSDS-style one-to-one matching within ``max_dist`` of the diagonal.

    For every image and every threshold ``t_k = k / (thresholds + 1)`` (0.01 ... 0.99,
    as BSDS's ``nthresh = 99``): the prediction ``prob >= t_k`` is thinned to
    one-pixel curves (``tasks.thinning.thin``, the algorithm of ``bwmorph 'thin'``),
    and its pixels are matched one-to-one to ground-truth edge pixels (``target >=
    0.5``) within ``max_dist * sqrt(H^2 + W^2)`` pixels (``count_matched_pixels``).
    Matched, predicted and ground-truth counts are summed over the dataset;
    ``P = matched / predicted``, ``R = matched / GT``, ``F = 2PR / (P + R)``, and odsF
    is the best F over thresholds (BSDS additionally interpolates between
    neighbouring thresholds, which can add a fraction of a point).

    Cost: one thinning and one matching per threshold whose mask differs from the
    previous one; see docs/method.md for a 512x512 timing. Runs on the CPU with
    numpy/scipy whatever the device of the predictions.
    """

    counts: torch.Tensor
    num_gt: torch.Tensor
    primary = "odsF"
    higher_is_better = True

    def __init__(self, max_dist: float, thresholds: int = 99) -> None:
        super().__init__()
        if not 0 < max_dist < 1:
            raise ValueError(f"max_dist is a fraction of the image diagonal in (0, 1), got {max_dist}")
        self.max_dist = max_dist
        self.thresholds = probability_thresholds(thresholds)
        # rows: matched pixels, predicted (thinned) pixels, per threshold
        self._add_state("counts", (2, thresholds), torch.int64)
        self._add_state("num_gt", (1,), torch.int64)

    @property
    def protocol(self) -> str:
        return (f"odsF, BSDS-style: {len(self.thresholds)} thresholds, thinned predictions matched one-to-one "
                f"within {self.max_dist:g} of the image diagonal")

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``prediction`` probabilities and ``target`` edges, ``[B, 1, H, W]``."""
        check_same_shape("EdgeMatchedFMeasure", prediction, target)
        if prediction.dim() != 4 or prediction.shape[1] != 1:
            raise ValueError(f"EdgeMatchedFMeasure: expected [B,1,H,W], got {tuple(prediction.shape)}")
        probabilities = prediction.detach().float().cpu().numpy()[:, 0]
        truths = (target.detach().cpu().numpy()[:, 0] >= 0.5)
        thresholds = self.thresholds.float().numpy()
        for prob, truth in zip(probabilities, truths):
            max_dist_px = self.max_dist * math.hypot(*truth.shape)
            counts = np.zeros((2, len(thresholds)), dtype=np.int64)
            previous_size, previous = -1, (0, 0)
            for k, threshold in enumerate(thresholds):
                mask = prob >= threshold
                size = int(mask.sum())
                if size != previous_size:  # masks are nested: same size means same mask
                    thinned = thin(mask)
                    previous = (count_matched_pixels(thinned, truth, max_dist_px), int(thinned.sum()))
                    previous_size = size
                counts[:, k] = previous
            self.counts += torch.from_numpy(counts).to(self.counts.device)
            self.num_gt += int(truth.sum())

    def compute(self) -> dict[str, float]:
        matched, predicted = self.counts.cpu().double()
        if predicted.sum() == 0 and self.num_gt.item() == 0:
            return {"odsF": math.nan, "ods_precision": math.nan, "ods_recall": math.nan, "best_threshold": math.nan}
        return best_f_over_thresholds(matched, predicted, matched, float(self.num_gt.item()), self.thresholds)
