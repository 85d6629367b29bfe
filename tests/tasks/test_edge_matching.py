"""BSDS-style edge odsF: one-to-one matching within a fraction of the diagonal, on maps
small enough to count by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlcompress.tasks.binary_metrics import EdgeFMeasure
from mtlcompress.tasks.edge_matching import EdgeMatchedFMeasure, count_matched_pixels
from mtlcompress.tasks.registry import get_task


def _mask(shape: tuple[int, int], pixels: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for row, col in pixels:
        mask[row, col] = True
    return mask


def test_matching_is_one_to_one() -> None:
    # Three predictions around one true pixel: only one of them may be matched.
    predicted = _mask((3, 5), [(1, 1), (1, 2), (1, 3)])
    truth = _mask((3, 5), [(1, 2)])
    assert count_matched_pixels(predicted, truth, 1.0) == 1


def test_matching_is_maximum_not_greedy() -> None:
    # A=(0,0) may take X=(0,1) or Y=(1,0); B=(0,2) only X. Greedy A->X leaves B alone;
    # the maximum matching is A->Y, B->X.
    predicted = _mask((3, 3), [(0, 0), (0, 2)])
    truth = _mask((3, 3), [(0, 1), (1, 0)])
    assert count_matched_pixels(predicted, truth, 1.0) == 2


def test_distance_limit_is_euclidean_and_inclusive() -> None:
    predicted = _mask((4, 4), [(0, 0)])
    assert count_matched_pixels(predicted, _mask((4, 4), [(0, 2)]), 2.0) == 1
    assert count_matched_pixels(predicted, _mask((4, 4), [(0, 2)]), 1.99) == 0
    assert count_matched_pixels(predicted, _mask((4, 4), [(1, 1)]), 1.4) == 0  # diagonal is sqrt 2
    assert count_matched_pixels(predicted, _mask((4, 4), [(1, 1)]), 1.5) == 1
    assert count_matched_pixels(predicted, np.zeros((4, 4), bool), 3.0) == 0
    assert count_matched_pixels(predicted, predicted, 0.5) == 1  # distance 0 counts


def _line_case() -> tuple[torch.Tensor, torch.Tensor]:
    """10x10: GT column 5; prediction 0.9 on column 6 rows 0-4 (near) and column 0 rows 0-1 (far)."""
    target = torch.zeros(1, 1, 10, 10)
    target[0, 0, :, 5] = 1.0
    prob = torch.zeros(1, 1, 10, 10)
    prob[0, 0, 0:5, 6] = 0.9
    prob[0, 0, 0:2, 0] = 0.9
    return prob, target


def test_odsf_matches_the_hand_count() -> None:
    prob, target = _line_case()
    metric = EdgeMatchedFMeasure(max_dist=1.5 / math.hypot(10, 10), thresholds=1)  # 1.5 px, t = 0.5
    metric.update(prob, target)
    scores = metric.compute()
    # matched 5, predicted 7, GT 10: P = 5/7, R = 1/2, F = 10/17
    assert scores["ods_precision"] == pytest.approx(100 * 5 / 7)
    assert scores["ods_recall"] == pytest.approx(50.0)
    assert scores["odsF"] == pytest.approx(100 * 10 / 17)
    assert scores["best_threshold"] == pytest.approx(0.5)


def test_thick_predictions_are_thinned_before_matching() -> None:
    # A 3x10 band on a 10-px GT line. The approximation counts all 30 band pixels as
    # true positives; BSDS thins the band to its middle line (8 px: rows 2-9, the
    # thinning shortens the ends), all 8 matched one-to-one: P = 100%, R = 80%.
    target = torch.zeros(1, 1, 12, 12)
    target[0, 0, 1:11, 5] = 1.0
    prob = torch.zeros(1, 1, 12, 12)
    prob[0, 0, 1:11, 4:7] = 0.8
    matched = EdgeMatchedFMeasure(max_dist=1.0 / math.hypot(12, 12), thresholds=1)
    matched.update(prob, target)
    assert matched.counts[:, 0].tolist() == [8, 8]
    scores = matched.compute()
    assert scores["ods_precision"] == pytest.approx(100.0) and scores["ods_recall"] == pytest.approx(80.0)
    approx = EdgeFMeasure(thresholds=1, tolerance_px=1)
    approx.update(prob, target)
    assert approx.compute()["ods_recall"] == pytest.approx(100.0)


def test_states_merge_by_addition() -> None:
    prob, target = _line_case()
    other_prob = torch.rand(1, 1, 10, 10, generator=torch.Generator().manual_seed(0))
    both = EdgeMatchedFMeasure(max_dist=0.1, thresholds=9)
    both.update(torch.cat([prob, other_prob]), torch.cat([target, target]))
    first, second = EdgeMatchedFMeasure(max_dist=0.1, thresholds=9), EdgeMatchedFMeasure(max_dist=0.1, thresholds=9)
    first.update(prob, target)
    second.update(other_prob, target)
    for a, b, total in zip(first.state_tensors(), second.state_tensors(), both.state_tensors()):
        a += b
        assert torch.equal(a, total)
    assert first.compute() == both.compute()


def test_registry_picks_the_matched_metric_only_when_a_tolerance_is_given() -> None:
    spec = get_task("edges")
    assert isinstance(spec.metric(None), EdgeFMeasure)
    metric = spec.metric(None, max_dist=0.0075)
    assert isinstance(metric, EdgeMatchedFMeasure) and "0.0075" in metric.protocol
    assert "approximation" in spec.metric(None).protocol
    with pytest.raises(ValueError, match="fraction"):
        EdgeMatchedFMeasure(max_dist=2.0)
