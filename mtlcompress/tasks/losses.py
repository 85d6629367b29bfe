"""Training losses for the dense-prediction tasks, one pure function per task.

Every loss takes the raw head output and the target in the label conventions of
``mtlcompress.tasks`` (batch first) and returns a scalar tensor. A batch with no valid
pixel (all ``ignore_index``, all-invalid depth or normals, or an empty tensor) gives
``0`` that is still attached to the graph, so ``loss.backward()`` and loss weighting
keep working instead of producing NaN: each loss is a *sum over valid pixels divided
by max(#valid, 1)*, which equals the mean whenever there is a valid pixel.

The default task loss weights (semseg 1, parts 2, saliency 5, edges 50, normals 10 in
Multi-Task-Learning-PyTorch / InvPT) were tuned for these normalisations; they live
in the task registry, not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "segmentation_loss",
    "depth_loss",
    "normals_loss",
    "edge_loss",
    "saliency_loss",
    "balanced_bce",
]


def check_same_shape(name: str, prediction: torch.Tensor, target: torch.Tensor) -> None:
    # Element-wise torch losses broadcast silently (with a warning at best); a
    # [B,1,H,W] vs [B,H,W] mix-up would then train on garbage.
    if prediction.shape != target.shape:
        raise ValueError(
            f"{name}: prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}"
        )


def _mean_over(total: torch.Tensor, count: int | torch.Tensor) -> torch.Tensor:
    """``total / max(count, 1)``: the mean, or a graph-attached 0 when nothing is valid."""
    if isinstance(count, torch.Tensor):
        return total / count.clamp(min=1).to(total.dtype)
    return total / max(int(count), 1)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """Cross-entropy averaged over non-ignored pixels (semantic segmentation, parts).

    Args:
        logits: ``[B, C, H, W]`` raw class scores.
        target: ``[B, H, W]`` int64 labels in ``[0, C)``; ``ignore_index`` is skipped.
        ignore_index: label value that contributes neither loss nor count.
    """
    if logits.dim() != target.dim() + 1 or logits.shape[:1] + logits.shape[2:] != target.shape:
        raise ValueError(
            f"segmentation_loss: logits {tuple(logits.shape)} do not match target {tuple(target.shape)}"
        )
    # reduction="mean" divides by 0 (NaN) when every pixel is ignored; sum / count does not.
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    return _mean_over(total, (target != ignore_index).sum())


def depth_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 depth error in metres, averaged over valid pixels.

    A target pixel is valid when it is finite and ``> 0`` (NYUD-v2 marks missing
    depth with 0). Valid pixels are selected *before* any arithmetic, so NaN/Inf in
    invalid target pixels cannot leak into the loss or its gradient.

    Args:
        prediction: ``[B, 1, H, W]`` predicted depth.
        target: ``[B, 1, H, W]`` ground-truth depth.
    """
    check_same_shape("depth_loss", prediction, target)
    valid = torch.isfinite(target) & (target > 0)
    total = F.l1_loss(prediction[valid], target[valid], reduction="sum")
    return _mean_over(total, valid.sum())


def normals_loss(
    prediction: torch.Tensor, target: torch.Tensor, l1_weight: float = 0.0
) -> torch.Tensor:
    """``1 - cos(pred, target)`` averaged over valid pixels, plus an optional L1 term.

    Why cosine by default: it depends only on the predicted *direction*, which is all
    the angular-error metrics measure, and it is ``1 - cos(angle)`` of exactly that
    error. The head therefore needs no output normalisation and is not pushed towards
    unit length. Multi-Task-Learning-PyTorch / InvPT instead use L1 between the
    L2-normalised prediction and the target; set ``l1_weight=1.0`` (with the cosine
    term kept) or compare both if you reproduce their numbers. The L1 term is the
    mean absolute difference per vector component (3 per valid pixel) after
    normalising the prediction, as in their ``NormalsLoss``.

    A target pixel is valid when its vector is finite and not all-zero.

    Args:
        prediction: ``[B, 3, H, W]`` unnormalised normals.
        target: ``[B, 3, H, W]`` unit normals; all-zero marks invalid pixels.
        l1_weight: weight of the optional L1 term; 0 disables it.
    """
    check_same_shape("normals_loss", prediction, target)
    if prediction.dim() != 4 or prediction.shape[1] != 3:
        raise ValueError(f"normals_loss: expected [B,3,H,W], got {tuple(prediction.shape)}")
    valid = (target != 0).any(dim=1) & torch.isfinite(target).all(dim=1)
    # Gather valid pixels as [N, 3] rows first so invalid pixels never enter the graph.
    pred_rows = prediction.permute(0, 2, 3, 1)[valid]
    target_rows = target.permute(0, 2, 3, 1)[valid]
    count = valid.sum()
    cosine = F.cosine_similarity(pred_rows, target_rows, dim=1)
    loss = _mean_over((1.0 - cosine).sum(), count)
    if l1_weight:
        l1 = F.l1_loss(F.normalize(pred_rows, dim=1), target_rows, reduction="sum")
        loss = loss + l1_weight * _mean_over(l1, count * 3)
    return loss


def edge_loss(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: float | None = None
) -> torch.Tensor:
    """Class-balanced binary cross-entropy for edge detection (HED style).

    Edge pixels are rare (a few percent), so plain BCE learns to predict "no edge".
    Each pixel's BCE is weighted by ``w`` if it is an edge and by ``1 - w`` if not, and
    the weighted sum is divided by the number of pixels::

        loss = (w * sum_pos BCE + (1 - w) * sum_neg BCE) / (B * H * W)

    This is Multi-Task-Learning-PyTorch's ``BalancedCrossEntropyLoss`` with
    ``size_average=True``. With ``pos_weight=None`` (HED), ``w`` is the fraction of
    *negative* pixels in this batch, so positives weigh ~0.95 and negatives ~0.05 on
    typical edge maps; a float fixes ``w`` instead (ATRC / InvPT use 0.95 on
    PASCAL-Context and 0.8 on NYUD-v2, which those datasets' ``loss_options`` pass). Note: a batch without any edge pixel gets ``w = 1`` and therefore zero loss,
    exactly as in the reference.

    ``pos_weight`` here is the weight *fraction* of positives in ``[0, 1]``, not the
    positive-to-negative ratio that ``F.binary_cross_entropy_with_logits`` calls
    ``pos_weight``.

    Args:
        logits: ``[B, 1, H, W]`` raw edge scores.
        target: ``[B, 1, H, W]`` edge map; values ``>= 0.5`` are edges.
        pos_weight: fixed positive weight ``w``; ``None`` uses the batch's negative fraction.
    """
    check_same_shape("edge_loss", logits, target)
    positive = target >= 0.5
    return balanced_bce(logits, positive.to(logits.dtype), positive, pos_weight)


def balanced_bce(logits: torch.Tensor, labels: torch.Tensor, positive: torch.Tensor,
                 pos_weight: float | None) -> torch.Tensor:
    """``(w * sum_pos BCE + (1 - w) * sum_neg BCE) / #pixels``; ``w`` from the batch when None."""
    if pos_weight is not None and not 0.0 <= pos_weight <= 1.0:
        raise ValueError(f"pos_weight must be in [0, 1], got {pos_weight}")
    if pos_weight is None:
        w = (~positive).sum().to(logits.dtype) / max(positive.numel(), 1)
    else:
        w = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    weights = torch.where(positive, w, 1.0 - w)
    total = F.binary_cross_entropy_with_logits(logits, labels, weight=weights, reduction="sum")
    return _mean_over(total, labels.numel())


def saliency_loss(logits: torch.Tensor, target: torch.Tensor, balanced: bool = False) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over all pixels.

    With ``balanced=True`` each pixel is weighted as in ``edge_loss`` with
    ``pos_weight=None`` (salient pixels by the batch's non-salient fraction): the
    class-balanced BCE ATRC and InvPT train saliency with. PASCAL-Context asks for it
    through its ``loss_options``; the synthetic scenes keep plain BCE.

    Args:
        logits: ``[B, 1, H, W]`` raw saliency scores.
        target: ``[B, 1, H, W]`` saliency map in ``[0, 1]`` (soft targets allowed;
            ``>= 0.5`` counts as salient for the balancing weights).
        balanced: weigh salient and other pixels by the batch's class balance.
    """
    check_same_shape("saliency_loss", logits, target)
    labels = target.to(logits.dtype)
    if balanced:
        return balanced_bce(logits, labels, target >= 0.5, None)
    total = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
    return _mean_over(total, target.numel())
