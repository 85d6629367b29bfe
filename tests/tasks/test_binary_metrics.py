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
