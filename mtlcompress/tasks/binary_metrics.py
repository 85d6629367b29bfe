"""Streaming F-measures of binary maps: edges (odsF with a pixel tolerance) and
saliency (maxF), over a fixed set of probability thresholds.

Same conventions as ``metrics.py``: additive states, dataset-pooled scores,
post-processed predictions (probabilities), percentages in ``[0, 100]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mtlcompress.tasks.losses import check_same_shape
from mtlcompress.tasks.metrics import StreamingMetric

__all__ = ["EdgeFMeasure", "SaliencyMaxF", "best_f_over_thresholds", "probability_thresholds"]

# ATRC / InvPT ``SaliencyMeter``: ``torch.arange(0.05, 1, 0.05)``, i.e. k / 20 for k = 1..19.
REFERENCE_SALIENCY_THRESHOLDS = 19


def probability_thresholds(count: int) -> torch.Tensor:
    """``k / (count + 1)`` for ``k = 1..count``: 99 gives 0.01, 0.02, ..., 0.99."""
    if count < 1:
        raise ValueError(f"thresholds must be >= 1, got {count}")
    return torch.arange(1, count + 1, dtype=torch.float64) / (count + 1)


def _threshold_histogram(values: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Bin ``values`` by how many thresholds they reach: bin ``i`` = ``#{k: t_k <= v} == i``.

    Storing this histogram instead of per-threshold counts keeps the update O(pixels)
    rather than O(pixels x thresholds), and it is still additive across batches.
    """
    boundaries = thresholds.to(device=values.device, dtype=torch.float32)
    index = torch.bucketize(values.float(), boundaries, right=True)
    return torch.bincount(index.flatten(), minlength=thresholds.numel() + 1)


def _count_at_or_above(histogram: torch.Tensor) -> torch.Tensor:
    """From a ``_threshold_histogram``: ``out[k] = #{v >= t_k}`` for every threshold."""
    reverse_cumsum = histogram.flip(-1).cumsum(-1).flip(-1)
    return reverse_cumsum[..., 1:]


class EdgeFMeasure(StreamingMetric):
    """Optimal-dataset-scale F-measure (odsF) for edge maps, with a pixel tolerance.

    Exactly how it is computed:

    1. Thresholds are ``t_k = k / (thresholds + 1)``, ``k = 1..thresholds``
       (0.01 ... 0.99 by default); a pixel is a predicted edge at ``t_k`` when
       ``prob >= t_k`` (float32). Ground-truth edges are ``target >= 0.5``.
    2. Tolerance is a Chebyshev distance of ``tolerance_px``: a
       ``(2 * tolerance_px + 1)``-square max-pool dilation.
    3. A predicted edge pixel is a true positive when a GT edge pixel lies within
       tolerance (it falls on the dilated GT). A GT edge pixel is recalled when a
       predicted edge pixel lies within tolerance (the max of ``prob`` over its
       window is ``>= t_k``).
    4. For each threshold the counts are summed over the whole dataset:
       ``P = TP_pred / #pred``, ``R = recalled_GT / #GT`` (0 when the denominator is
       0), ``F = 2PR / (P + R)`` (0 when ``P + R = 0``).
    5. ``odsF`` is the maximum F over thresholds (one threshold for the whole dataset);
       ``best_threshold`` is the smallest threshold reaching it.

    This approximates the BSDS benchmark, which thins predictions and matches
    predicted and GT pixels one-to-one (bipartite matching) within a tolerance of a
    fraction of the image diagonal. Here several predicted pixels may match one GT
    pixel and predictions are not thinned, so thick edge maps score higher than in
    BSDS; apply non-maximum suppression first if you need BSDS-like behaviour. The
    numbers are comparable between runs of this tool, not with published BSDS odsF.

    ``compute()`` returns ``odsF``, ``ods_precision``, ``ods_recall`` in percent and
    ``best_threshold`` in ``(0, 1)``.
    """

    histograms: torch.Tensor
    primary = "odsF"
    higher_is_better = True

    def __init__(self, thresholds: int = 99, tolerance_px: int = 1) -> None:
        super().__init__()
        if tolerance_px < 0:
            raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
        self.thresholds = probability_thresholds(thresholds)
        self.tolerance_px = tolerance_px
        # rows: prob of every pixel, prob of pixels near GT, max prob near each GT pixel
        self._add_state("histograms", (3, thresholds + 1), torch.int64)

    def _dilate(self, x: torch.Tensor) -> torch.Tensor:
        r = self.tolerance_px
        return F.max_pool2d(x, kernel_size=2 * r + 1, stride=1, padding=r) if r else x

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``prediction`` probabilities and ``target`` edges, ``[B, 1, H, W]``."""
        check_same_shape("EdgeFMeasure", prediction, target)
        if prediction.dim() != 4:
            raise ValueError(f"EdgeFMeasure: expected [B,1,H,W], got {tuple(prediction.shape)}")
        self._follow(prediction)
        prob = prediction.float()
        gt = target >= 0.5
        near_gt = self._dilate(gt.float()) > 0
        max_prob_nearby = self._dilate(prob)
        rows = [
            _threshold_histogram(prob, self.thresholds),
            _threshold_histogram(prob[near_gt], self.thresholds),
            _threshold_histogram(max_prob_nearby[gt], self.thresholds),
        ]
        self.histograms += torch.stack(rows)

    @property
    def protocol(self) -> str:
        return (f"odsF approximation (not BSDS): {len(self.thresholds)} thresholds, {self.tolerance_px}-px "
                "Chebyshev tolerance, many-to-one, predictions not thinned")

    def compute(self) -> dict[str, float]:
        histograms = self.histograms.cpu()
        if histograms[0].sum() == 0:
            return {"odsF": math.nan, "ods_precision": math.nan, "ods_recall": math.nan, "best_threshold": math.nan}
        predicted, matched, recalled = _count_at_or_above(histograms).double()
        return best_f_over_thresholds(matched, predicted, recalled, float(histograms[2].sum()), self.thresholds)


def best_f_over_thresholds(matched: torch.Tensor, predicted: torch.Tensor, recalled: torch.Tensor,
                           num_gt: float, thresholds: torch.Tensor) -> dict[str, float]:
    """odsF from dataset-pooled counts per threshold: ``P = matched / predicted``,
    ``R = recalled / num_gt`` (0 on empty denominators), best ``F = 2PR / (P + R)``;
    the smallest threshold reaching it is reported."""
    precision = matched / predicted.clamp(min=1)
    recall = recalled / max(num_gt, 1.0)
    denominator = precision + recall
    f_measure = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), 0.0)
    best = int(torch.argmax(f_measure))
    return {
        "odsF": float(f_measure[best]) * 100,
        "ods_precision": float(precision[best]) * 100,
        "ods_recall": float(recall[best]) * 100,
        "best_threshold": float(thresholds[best]),
    }


class SaliencyMaxF(StreamingMetric):
    """Maximum F-beta over thresholds and mean absolute error for saliency maps.

    Thresholds are ``t_k = k / (thresholds + 1)``; the default 19 gives 0.05, 0.10, ...,
    0.95, exactly the thresholds of ATRC's / InvPT's ``SaliencyMeter``
    (``arange(0.05, 1, 0.05)``). A pixel is predicted salient when ``prob >= t_k``
    (float32), GT salient when ``target >= 0.5``, and pixels whose target is
    ``ignore_index`` (255, the references' padding value) are left out. True
    positives, predicted positives and GT positives are summed over the *whole
    dataset* and ``F = (1 + b2) P R / (b2 P + R)`` with ``b2 = beta2`` (0.3);
    ``maxF`` is the max over thresholds. This dataset-pooled definition is the
    references' and merges by summation; the salient-object literature often averages
    per-image P and R instead, which weighs small objects more. The references
    threshold the prediction after saving it as 8-bit (``round(255 p) / 255``); here the
    float probability is thresholded, which differs only for pixels within 1/255 of a
    threshold. ``mae`` is ``mean |prob - target|`` over all valid pixels of the dataset.

    ``compute()`` returns ``maxF`` in percent, ``best_threshold`` in ``(0, 1)`` and
    ``mae`` as a fraction.
    """

    histograms: torch.Tensor
    abs_error: torch.Tensor
    primary = "maxF"
    higher_is_better = True

    def __init__(self, thresholds: int = REFERENCE_SALIENCY_THRESHOLDS, beta2: float = 0.3,
                 ignore_index: float = 255) -> None:
        super().__init__()
        if beta2 <= 0:
            raise ValueError(f"beta2 must be > 0, got {beta2}")
        self.thresholds = probability_thresholds(thresholds)
        self.beta2 = beta2
        self.ignore_index = ignore_index
        # rows: prob of every pixel, prob of GT-salient pixels
        self._add_state("histograms", (2, thresholds + 1), torch.int64)
        self._add_state("abs_error", (1,), torch.float64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``prediction`` probabilities and ``target`` in {0, 1}, ``[B, 1, H, W]``."""
        check_same_shape("SaliencyMaxF", prediction, target)
        self._follow(prediction)
        valid = target != self.ignore_index
        prob = prediction.float()[valid]
        target = target[valid]
        salient = target >= 0.5
        rows = [
            _threshold_histogram(prob, self.thresholds),
            _threshold_histogram(prob[salient], self.thresholds),
        ]
        self.histograms += torch.stack(rows)
        self.abs_error += (prob.double() - target.double()).abs().sum()

    @property
    def protocol(self) -> str:
        count = len(self.thresholds)
        which = ("ATRC/InvPT thresholds 0.05..0.95 step 0.05" if count == REFERENCE_SALIENCY_THRESHOLDS
                 else f"{count} thresholds k/{count + 1}")
        return f"maxF, beta^2 = {self.beta2:g}, {which}, dataset-pooled, 255 ignored"

    def compute(self) -> dict[str, float]:
        histograms = self.histograms.cpu()
        num_pixels = float(histograms[0].sum())
        if num_pixels == 0:
            return {"maxF": math.nan, "best_threshold": math.nan, "mae": math.nan}
        predicted, true_positive = _count_at_or_above(histograms).double()
        num_salient = float(histograms[1].sum())
        precision = true_positive / predicted.clamp(min=1)
        recall = true_positive / max(num_salient, 1.0)
        denominator = self.beta2 * precision + recall
        f_beta = torch.where(
            denominator > 0, (1 + self.beta2) * precision * recall / denominator.clamp(min=1e-12), 0.0
        )
        best = int(torch.argmax(f_beta))
        return {
            "maxF": float(f_beta[best]) * 100,
            "best_threshold": float(self.thresholds[best]),
            "mae": float(self.abs_error.item()) / num_pixels,
        }
