"""Edge and saliency metrics at the boundaries their docstrings define: ground truth is
positive when ``target >= 0.5`` and a prediction when ``prob >= t_k``, so a value of
exactly 0.5 counts (soft labels, e.g. averaged annotators, land there)."""

from __future__ import annotations

import pytest
import torch

from mtlcompress.tasks.binary_metrics import EdgeFMeasure, SaliencyMaxF


def one_pixel(value: float, size: int = 4) -> torch.Tensor:
    """A ``[1, 1, size, size]`` map that is ``value`` at (1, 1) and 0 elsewhere."""
    out = torch.zeros(1, 1, size, size)
    out[0, 0, 1, 1] = value
    return out


@pytest.mark.parametrize("metric_class", [EdgeFMeasure, SaliencyMaxF])
def test_ground_truth_of_exactly_one_half_is_positive(metric_class):
    metric = metric_class(thresholds=1)  # one threshold: t = 0.5
    metric.update(one_pixel(1.0), one_pixel(0.5))
    scores = metric.compute()
    assert scores[metric.primary] == pytest.approx(100.0)  # one prediction, one GT pixel, matched


@pytest.mark.parametrize("metric_class", [EdgeFMeasure, SaliencyMaxF])
def test_ground_truth_just_below_one_half_is_negative(metric_class):
    metric = metric_class(thresholds=1)
    metric.update(one_pixel(1.0), one_pixel(0.4999))
    assert metric.compute()[metric.primary] == 0.0  # the prediction matches no GT pixel


def test_edge_recall_counts_a_ground_truth_pixel_of_exactly_one_half():
    metric = EdgeFMeasure(thresholds=1, tolerance_px=0)
    gt = one_pixel(0.5)
    gt[0, 0, 3, 3] = 1.0  # a second GT pixel, never predicted
    metric.update(one_pixel(1.0), gt)
    scores = metric.compute()
    assert scores["ods_precision"] == pytest.approx(100.0)
    assert scores["ods_recall"] == pytest.approx(50.0)  # 1 of 2 GT pixels: the 0.5 one counts


@pytest.mark.parametrize("metric_class", [EdgeFMeasure, SaliencyMaxF])
def test_prediction_of_exactly_the_threshold_is_positive(metric_class):
    metric = metric_class(thresholds=1)  # t = 0.5
    metric.update(one_pixel(0.5), one_pixel(1.0))
    assert metric.compute()[metric.primary] == pytest.approx(100.0)


def test_saliency_default_thresholds_are_the_references_19() -> None:
    metric = SaliencyMaxF()
    reference = torch.arange(0.05, 1, 0.05, dtype=torch.float64)  # ATRC / InvPT SaliencyMeter
    assert len(metric.thresholds) == 19
    assert torch.allclose(metric.thresholds, reference, atol=1e-9)
    assert "ATRC/InvPT thresholds" in metric.protocol
    assert "ATRC" not in SaliencyMaxF(thresholds=99).protocol


def test_saliency_max_is_taken_over_the_reference_thresholds_only() -> None:
    # Salient pixel at 0.97, background pixel at 0.96: only a threshold between them
    # (0.97, among 99) separates them; 0.95 is the references' highest, so P = 1/2.
    prediction = torch.tensor([0.97, 0.96]).view(1, 1, 1, 2)
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    fine, reference = SaliencyMaxF(thresholds=99), SaliencyMaxF()
    fine.update(prediction, target)
    reference.update(prediction, target)
    assert fine.compute()["maxF"] == pytest.approx(100.0)
    assert reference.compute()["maxF"] == pytest.approx(100 * 1.3 * 0.5 / (0.3 * 0.5 + 1))


def test_saliency_ignores_pixels_marked_255() -> None:
    prediction = torch.tensor([0.9, 0.9, 0.1]).view(1, 1, 1, 3)
    target = torch.tensor([1.0, 255.0, 0.0]).view(1, 1, 1, 3)
    metric = SaliencyMaxF()
    metric.update(prediction, target)
    scores = metric.compute()
    assert scores["maxF"] == pytest.approx(100.0)
    assert scores["mae"] == pytest.approx(0.1)
