"""Task losses: exact values on tiny tensors, no NaN on empty batches, gradients flow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtlcompress.tasks.losses import (
    depth_loss,
    edge_loss,
    normals_loss,
    saliency_loss,
    segmentation_loss,
)


def _assert_zero_with_graph(loss: torch.Tensor, leaf: torch.Tensor) -> None:
    assert loss.dim() == 0
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert leaf.grad is not None
    assert torch.isfinite(leaf.grad).all()
    assert (leaf.grad == 0).all()


# --- segmentation ---------------------------------------------------------------------


def test_segmentation_loss_is_near_zero_for_confident_correct_logits() -> None:
    target = torch.tensor([[[0, 1, 2], [2, 1, 0]]])
    logits = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50.0
    assert segmentation_loss(logits, target).item() < 1e-6


def test_segmentation_loss_averages_over_non_ignored_pixels_only() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 3)
    target = torch.tensor([[[0, 1, 255], [2, 255, 0]]])
    valid = target != 255
    log_probs = logits.log_softmax(dim=1).permute(0, 2, 3, 1)[valid]  # [4, 3]
    expected = -log_probs[torch.arange(4), target[valid]].mean()
    assert segmentation_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_segmentation_loss_all_ignored_is_zero_with_grad() -> None:
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    target = torch.full((2, 3, 3), 255)
    _assert_zero_with_graph(segmentation_loss(logits, target), logits)


def test_segmentation_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        segmentation_loss(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


# --- depth ----------------------------------------------------------------------------


def test_depth_loss_is_l1_over_valid_pixels() -> None:
    pred = torch.tensor([1.0, 2.0, 3.0, 7.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 5.0, math.nan]).view(1, 1, 2, 2)
    # valid: (1 vs 1) and (3 vs 5) -> (0 + 2) / 2
    assert depth_loss(pred, target).item() == pytest.approx(1.0)
    assert depth_loss(target.nan_to_num(0.0), target.nan_to_num(0.0)).item() == 0.0


def test_depth_loss_gradient_is_finite_with_nan_targets() -> None:
    pred = torch.ones(1, 1, 2, 2, requires_grad=True)
    target = torch.tensor([2.0, math.nan, math.inf, 0.0]).view(1, 1, 2, 2)
    depth_loss(pred, target).backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad.view(-1).tolist() == [-1.0, 0.0, 0.0, 0.0]


def test_depth_loss_no_valid_pixel_is_zero_with_grad() -> None:
    pred = torch.rand(2, 1, 3, 3, requires_grad=True)
    _assert_zero_with_graph(depth_loss(pred, torch.zeros(2, 1, 3, 3)), pred)


# --- normals --------------------------------------------------------------------------


def _normals_image(vectors: list[list[float]]) -> torch.Tensor:
    """A [1, 3, 1, N] image from N 3-vectors."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 1, len(vectors))


def test_normals_loss_is_one_minus_cosine_and_scale_invariant() -> None:
    target = _normals_image([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]])
    pred = _normals_image([[3, 0, 0], [0, 2, 0], [-1, 0, 0], [0, 5, 0]])
    # per valid pixel: 0 (same direction, any length), 1 (90 deg), 2 (180 deg); last invalid
    assert normals_loss(pred, target).item() == pytest.approx(1.0)
    assert normals_loss(target * 7.0, target).item() == pytest.approx(0.0, abs=1e-7)


def test_normals_loss_optional_l1_term_uses_normalised_prediction() -> None:
    target = _normals_image([[1, 0, 0]])
    pred = _normals_image([[-4, 0, 0]])
    # cosine term 2; L1 term mean(|-1-1|, 0, 0) = 2/3
    assert normals_loss(pred, target, l1_weight=1.0).item() == pytest.approx(2.0 + 2.0 / 3.0)
    assert normals_loss(pred, target).item() == pytest.approx(2.0)


def test_normals_loss_no_valid_pixel_is_zero_with_grad() -> None:
    pred = torch.randn(2, 3, 4, 4, requires_grad=True)
    _assert_zero_with_graph(normals_loss(pred, torch.zeros(2, 3, 4, 4), l1_weight=1.0), pred)


def test_normals_loss_gradient_flows_to_prediction() -> None:
    target = _normals_image([[0, 0, 1]])
    pred = _normals_image([[1, 0, 1]]).requires_grad_()
    normals_loss(pred, target).backward()
    assert pred.grad.abs().sum() > 0


# --- edges ----------------------------------------------------------------------------


def test_edge_loss_matches_hand_computed_balanced_bce() -> None:
    target = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4)
    logits = torch.zeros(1, 1, 1, 4)
    # every pixel's BCE is ln 2; w = negative fraction 3/4
    expected = (0.75 * math.log(2) + 0.25 * 3 * math.log(2)) / 4
    assert edge_loss(logits, target).item() == pytest.approx(expected)
    fixed = (0.95 * math.log(2) + 0.05 * 3 * math.log(2)) / 4
    assert edge_loss(logits, target, pos_weight=0.95).item() == pytest.approx(fixed)


def test_edge_loss_weights_positives_above_negatives() -> None:
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 1, 1] = 1.0
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    edge_loss(logits, target).backward()
    grad_positive = logits.grad[0, 0, 1, 1].abs()
    grad_negative = logits.grad[0, 0, 0, 0].abs()
    assert grad_positive == pytest.approx(15 * grad_negative)  # w / (1 - w) = (15/16) / (1/16)
    # missing the edge costs more than an equally confident false edge
    miss = edge_loss(torch.full((1, 1, 4, 4), -3.0), target)
    false_alarm = torch.full((1, 1, 4, 4), -3.0)
    false_alarm[0, 0, 0, 0] = 3.0
    false_alarm[0, 0, 1, 1] = 3.0
    assert miss > edge_loss(false_alarm, target)


def test_edge_loss_empty_batch_is_zero_with_grad() -> None:
    logits = torch.zeros(0, 1, 4, 4, requires_grad=True)
    _assert_zero_with_graph(edge_loss(logits, torch.zeros(0, 1, 4, 4)), logits)


def test_edge_loss_rejects_pos_weight_outside_unit_interval() -> None:
    with pytest.raises(ValueError):
        edge_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), pos_weight=2.0)


# --- saliency -------------------------------------------------------------------------


def test_saliency_loss_is_mean_bce_and_near_zero_when_perfect() -> None:
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0]).view(1, 1, 2, 2)
    expected = -(
        math.log(torch.sigmoid(torch.tensor(0.5)).item())
        + math.log(1 - torch.sigmoid(torch.tensor(-1.0)).item())
        + math.log(torch.sigmoid(torch.tensor(2.0)).item())
        + math.log(0.5)
    ) / 4
    assert saliency_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert saliency_loss((target * 2 - 1) * 50.0, target).item() < 1e-6


def test_saliency_loss_empty_batch_is_zero_with_grad() -> None:
    logits = torch.zeros(0, 1, 4, 4, requires_grad=True)
    _assert_zero_with_graph(saliency_loss(logits, torch.zeros(0, 1, 4, 4)), logits)


def test_saliency_loss_rejects_broadcasting_shapes() -> None:
    with pytest.raises(ValueError):
        saliency_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4))


def test_balanced_saliency_loss_matches_hand_computed_weights() -> None:
    # 1 salient pixel of 4: it weighs 3/4, the others 1/4 each; mean over 4 pixels.
    logits = torch.tensor([0.5, -1.0, 2.0, 0.0]).view(1, 1, 2, 2)
    target = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten()
    expected = (0.75 * bce[0] + 0.25 * bce[1:].sum()) / 4
    assert saliency_loss(logits, target, balanced=True).item() == pytest.approx(expected.item())
    assert saliency_loss(logits, target).item() == pytest.approx(bce.mean().item())

