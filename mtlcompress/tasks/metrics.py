"""Streaming, mergeable evaluation metrics for the dense-prediction tasks.

Every metric accumulates a few tensors of *sums and counts* (int64 counts, float64
sums) and derives its scores only in ``compute()``. Because every state is additive,
a distributed run all-reduces ``state_tensors()`` with SUM in place and then calls
``compute()``; two accumulators merged by adding their states give exactly what one
accumulator sees on all the data. All scores are therefore *dataset-pooled* (pixels
of all images pooled), never means of per-image scores; each class says where that
differs from other codebases.

Predictions are post-processed outputs (label maps, metres, probabilities), not
logits. States follow the device of the predictions passed to ``update``; ``to`` moves
them explicitly (e.g. onto the GPU before an NCCL all-reduce on a worker that saw no
data). ``compute()`` on an accumulator that has seen no valid pixel returns NaN scores.
Percentages are in ``[0, 100]``. The F-measures of binary maps (edges, saliency) are in
``binary_metrics.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mtlcompress.errors import DataError
from mtlcompress.tasks.losses import check_same_shape

__all__ = [
    "StreamingMetric",
    "MeanIoU",
    "DepthErrors",
    "NormalsAngularError",
]


class StreamingMetric:
    """Base class: additive state tensors, ``update`` / ``compute`` / ``reset``.

    Subclasses register their accumulators with ``_add_state`` and set ``primary`` (the
    key of ``compute()`` used for model selection) and ``higher_is_better``.
    """

    primary: str = ""
    higher_is_better: bool = True
    protocol: str = ""  # one line naming how the numbers are computed, for result tables

    def __init__(self) -> None:
        self._state_names: list[str] = []

    def _add_state(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        setattr(self, name, torch.zeros(shape, dtype=dtype))
        self._state_names.append(name)

    def _follow(self, reference: torch.Tensor) -> None:
        if self._state_names and getattr(self, self._state_names[0]).device != reference.device:
            self.to(reference.device)

    def to(self, device: torch.device | str) -> StreamingMetric:
        """Move the accumulators to ``device`` (values kept); returns ``self``."""
        for name in self._state_names:
            setattr(self, name, getattr(self, name).to(device))
        return self

    def state_tensors(self) -> list[torch.Tensor]:
        """The accumulator tensors themselves (not copies): all-reduce them with SUM.

        Moving devices (``to``, or the first ``update`` with tensors on another device)
        replaces these tensors, so take the list after the last update.
        """
        return [getattr(self, name) for name in self._state_names]

    def reset(self) -> None:
        """Zero the accumulators in place, so handles from ``state_tensors`` stay valid."""
        for state in self.state_tensors():
            state.zero_()

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError


def ratio_or_nan(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


class MeanIoU(StreamingMetric):
    """Mean intersection-over-union and pixel accuracy from a dataset confusion matrix.

    IoU of class c is ``TP / (TP + FP + FN)`` with counts pooled over the dataset.
    Classes that appear in neither prediction nor target (``TP + FP + FN == 0``) are
    *excluded* from the mean instead of counting as 0 (Multi-Task-Learning-PyTorch
    counts them as 0, which lowers mIoU on small evaluation subsets). Pixels whose
    target is ``ignore_index`` are dropped; other out-of-range targets raise
    ``DataError``.

    ``compute()`` returns ``{"miou", "pixel_acc"}`` in percent.
    """

    confusion: torch.Tensor
    primary = "miou"
    higher_is_better = True
    protocol = "mIoU from a dataset-pooled confusion matrix, 255 ignored, classes absent from both left out"

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # rows: target class, columns: predicted class
        self._add_state("confusion", (num_classes, num_classes), torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``prediction`` and ``target`` are int64 label maps ``[B, H, W]``."""
        check_same_shape("MeanIoU", prediction, target)
        self._follow(prediction)
        keep = target != self.ignore_index
        target = target[keep].long()
        prediction = prediction[keep].long()
        n = self.num_classes
        if target.numel() and (target.min() < 0 or target.max() >= n):
            raise DataError(f"segmentation target has labels outside [0, {n}) other than ignore_index")
        if prediction.numel() and (prediction.min() < 0 or prediction.max() >= n):
            raise ValueError(f"MeanIoU: predicted labels outside [0, {n})")
        counts = torch.bincount(target * n + prediction, minlength=n * n)
        self.confusion += counts.view(n, n).to(self.confusion.device)

    def compute(self) -> dict[str, float]:
        confusion = self.confusion.double().cpu()
        true_positive = confusion.diagonal()
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        present = union > 0
        miou = (true_positive[present] / union[present]).mean().item() * 100 if present.any() else math.nan
        pixel_acc = ratio_or_nan(true_positive.sum().item(), confusion.sum().item()) * 100
        return {"miou": miou, "pixel_acc": pixel_acc}


class DepthErrors(StreamingMetric):
    """Depth RMSE and absolute relative error, pooled over all valid pixels.

    ``rmse = sqrt(sum_i (p_i - t_i)^2 / N)`` and ``abs_rel = sum_i |p_i - t_i| / t_i / N``
    where ``i`` runs over every valid pixel of every image seen and ``N`` is their
    count. This is Multi-Task-Learning-PyTorch's / InvPT's NYUD-v2 ``DepthMeter``
    (which pools squared errors over the dataset); it is *not* the mean of per-image
    RMSEs that some monocular-depth codebases report. A pixel is valid when its
    target is finite and ``> 0``. Predictions are used as given (no clamping).

    ``compute()`` returns ``{"rmse"}`` in metres and ``{"abs_rel"}`` as a fraction.
    """

    sums: torch.Tensor
    count: torch.Tensor
    primary = "rmse"
    higher_is_better = False
    protocol = "RMSE pooled over the valid pixels (target > 0) of the split"

    def __init__(self) -> None:
        super().__init__()
        self._add_state("sums", (2,), torch.float64)  # squared error, relative error
        self._add_state("count", (1,), torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``prediction`` and ``target`` are ``[B, 1, H, W]`` in metres."""
        check_same_shape("DepthErrors", prediction, target)
        self._follow(prediction)
        valid = torch.isfinite(target) & (target > 0)
        pred = prediction[valid].double()
        true = target[valid].double()
        error = pred - true
        self.sums += torch.stack([error.square().sum(), (error.abs() / true).sum()])
        self.count += valid.sum()

    def compute(self) -> dict[str, float]:
        squared, relative = self.sums.tolist()
        count = float(self.count.item())
        return {"rmse": math.sqrt(ratio_or_nan(squared, count)), "abs_rel": ratio_or_nan(relative, count)}


class NormalsAngularError(StreamingMetric):
    """Angle between predicted and true normals, pooled over all valid pixels.

    The prediction and target are L2-normalised per pixel (a zero prediction counts
    as 90 degrees off) and the angle is ``acos(clamp(cos, -1, 1))`` in float64. A pixel
    is valid when its target vector is finite and not all-zero. Pooling matches
    Multi-Task-Learning-PyTorch's ``eval_normals``.

    The median cannot be streamed exactly, so errors are also counted in a fixed
    histogram of ``histogram_bins`` equal bins over ``[0, 180]`` degrees (1800 bins =
    0.1 degree). ``median_angle`` is the mean of the midpoints of the bins holding the
    two middle ranks (``floor((N+1)/2)`` and ``floor(N/2)+1``), so it is within half a
    bin (0.05 degree by default) of the exact median and the histogram merges by
    summation. Means and ``within_*`` fractions are exact (``angle < threshold``).

    ``compute()`` returns degrees for ``mean_angle``, ``median_angle``, ``rmse_angle``
    and percents for ``within_11.25``, ``within_22.5``, ``within_30``.
    """

    sums: torch.Tensor
    counts: torch.Tensor
    histogram: torch.Tensor
    primary = "mean_angle"
    higher_is_better = False
    protocol = "mean angle in degrees pooled over valid pixels (non-zero target)"
    WITHIN_DEGREES = (11.25, 22.5, 30.0)

    def __init__(self, histogram_bins: int = 1800) -> None:
        super().__init__()
        if histogram_bins < 1:
            raise ValueError(f"histogram_bins must be >= 1, got {histogram_bins}")
        self.histogram_bins = histogram_bins
        self._add_state("sums", (2,), torch.float64)  # angle, squared angle
        self._add_state("counts", (1 + len(self.WITHIN_DEGREES),), torch.int64)  # N, within...
        self._add_state("histogram", (histogram_bins,), torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``prediction`` ``[B, 3, H, W]`` (any length), ``target`` unit normals."""
        check_same_shape("NormalsAngularError", prediction, target)
        if prediction.dim() != 4 or prediction.shape[1] != 3:
            raise ValueError(f"NormalsAngularError: expected [B,3,H,W], got {tuple(prediction.shape)}")
        self._follow(prediction)
        valid = (target != 0).any(dim=1) & torch.isfinite(target).all(dim=1)
        pred_rows = prediction.permute(0, 2, 3, 1)[valid].double()
        target_rows = target.permute(0, 2, 3, 1)[valid].double()
        cosine = F.cosine_similarity(pred_rows, target_rows, dim=1).clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.acos(cosine))
        within = [(angle < limit).sum() for limit in self.WITHIN_DEGREES]
        self.sums += torch.stack([angle.sum(), angle.square().sum()])
        self.counts += torch.stack([valid.sum(), *within])
        bins = (angle * (self.histogram_bins / 180.0)).long().clamp(0, self.histogram_bins - 1)
        self.histogram += torch.bincount(bins, minlength=self.histogram_bins)

    def _median(self) -> float:
        histogram = self.histogram.cpu()
        count = int(histogram.sum())
        if count == 0:
            return math.nan
        cumulative = histogram.cumsum(0)
        ranks = torch.tensor([(count + 1) // 2, count // 2 + 1])
        bins = torch.searchsorted(cumulative, ranks)  # first bin whose cumulative count >= rank
        width = 180.0 / self.histogram_bins
        return float(((bins.double() + 0.5) * width).mean())

    def compute(self) -> dict[str, float]:
        angle_sum, squared_sum = self.sums.tolist()
        count, *within = (float(c) for c in self.counts.tolist())
        scores = {
            "mean_angle": ratio_or_nan(angle_sum, count),
            "median_angle": self._median(),
            "rmse_angle": math.sqrt(ratio_or_nan(squared_sum, count)),
        }
        for limit, hits in zip(self.WITHIN_DEGREES, within):
            scores[f"within_{limit:g}"] = ratio_or_nan(hits, count) * 100
        return scores
