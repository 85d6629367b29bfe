"""Streaming metrics: hand-computed values on tiny maps, streaming and merging are exact."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlcompress.errors import DataError
from mtlcompress.tasks.binary_metrics import EdgeFMeasure, SaliencyMaxF
from mtlcompress.tasks.metrics import DepthErrors, MeanIoU, NormalsAngularError, StreamingMetric

# --- mean IoU -------------------------------------------------------------------------


def test_mean_iou_matches_hand_computed_confusion_matrix() -> None:
    target = torch.tensor([[[0, 1, 1], [2, 255, 0]]])
    prediction = torch.tensor([[[0, 1, 2], [2, 2, 1]]])
    metric = MeanIoU(num_classes=4)
    metric.update(prediction, target)
    # valid pixels (t, p): (0,0) (1,1) (1,2) (2,2) (0,1); the ignored pixel predicts 2
    # IoU0 = 1/2, IoU1 = 1/3, IoU2 = 1/2; class 3 absent everywhere -> excluded
    scores = metric.compute()
    assert scores["miou"] == pytest.approx(100 * (1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert scores["pixel_acc"] == pytest.approx(100 * 3 / 5)
    assert metric.confusion[1].tolist() == [0, 1, 1, 0]


def test_mean_iou_class_present_only_in_prediction_counts_as_zero() -> None:
    metric = MeanIoU(num_classes=3)
    metric.update(torch.tensor([[[0, 2]]]), torch.tensor([[[0, 0]]]))
    # class 0: TP 1, FN 1 -> 1/2; class 2: FP 1 -> 0; class 1 absent
    assert metric.compute()["miou"] == pytest.approx(25.0)


def test_mean_iou_rejects_out_of_range_target() -> None:
    metric = MeanIoU(num_classes=3)
    with pytest.raises(DataError):
        metric.update(torch.tensor([[[0, 7]]]), torch.tensor([[[0, 7]]]))


# --- depth ----------------------------------------------------------------------------


def test_depth_errors_match_hand_computed_values() -> None:
    prediction = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).view(1, 1, 2, 3)
    target = torch.tensor([[1.0, 3.0, 0.0], [2.0, math.nan, 4.0]]).view(1, 1, 2, 3)
    metric = DepthErrors()
    metric.update(prediction, target)
    # valid errors: 0, -1, 2, 2 -> rmse sqrt(9/4); abs_rel (0 + 1/3 + 1 + 1/2) / 4
    scores = metric.compute()
    assert scores["rmse"] == pytest.approx(1.5)
    assert scores["abs_rel"] == pytest.approx((1 / 3 + 1 + 1 / 2) / 4)


def test_depth_rmse_pools_pixels_rather_than_averaging_images() -> None:
    target = torch.ones(2, 1, 3, 3)
    target[0].view(-1)[1:] = 0.0  # image 0: one valid pixel, error 3
    prediction = target.clone()
    prediction[0, 0, 0, 0] = 4.0  # image 1: nine valid pixels, error 0
    metric = DepthErrors()
    metric.update(prediction, target)
    # pooled sqrt(9 / 10); the mean of per-image RMSEs would be 1.5
    assert metric.compute()["rmse"] == pytest.approx(math.sqrt(9 / 10))


# --- normals --------------------------------------------------------------------------


def _normals_image(vectors: list[list[float]]) -> torch.Tensor:
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 1, len(vectors))


def test_normals_angular_error_matches_hand_computed_angles() -> None:
    target = _normals_image([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]])
    prediction = _normals_image([[2, 0, 0], [0, 1, 0], [-1, 0, 0], [1, 1, 0], [0, 1, 0]])
    metric = NormalsAngularError()
    metric.update(prediction, target)
    # angles 0, 90, 180, 45; the last pixel is invalid
    scores = metric.compute()
    assert scores["mean_angle"] == pytest.approx(315 / 4)
    assert scores["median_angle"] == pytest.approx((45 + 90) / 2, abs=0.05 + 1e-9)
    assert scores["rmse_angle"] == pytest.approx(math.sqrt((90**2 + 180**2 + 45**2) / 4))
    assert scores["within_11.25"] == pytest.approx(25.0)
    assert scores["within_30"] == pytest.approx(25.0)


def test_normals_histogram_median_is_within_half_a_bin_of_exact_median() -> None:
    generator = torch.Generator().manual_seed(0)
    target = F.normalize(torch.randn(3, 3, 9, 11, generator=generator), dim=1)
    prediction = target + 0.7 * torch.randn(3, 3, 9, 11, generator=generator)
    for width in (11, 10):  # 297 (odd) and 270 (even) pixels
        pred, true = prediction[..., :width], target[..., :width]
        cosine = F.cosine_similarity(pred.double(), true.double(), dim=1).clamp(-1, 1)
        exact = float(np.median(np.degrees(np.arccos(cosine.numpy()))))
        metric = NormalsAngularError()
        metric.update(pred, true)
        assert metric.compute()["median_angle"] == pytest.approx(exact, abs=0.05 + 1e-9)


# --- edges ----------------------------------------------------------------------------


def _edge_case() -> tuple[torch.Tensor, torch.Tensor]:
    """GT edge on column 1 of a 5x5 image; a confident 1-px-off prediction on column 2
    and a weaker one on column 4, three pixels away."""
    target = torch.zeros(1, 1, 5, 5)
    target[..., :, 1] = 1.0
    prob = torch.zeros(1, 1, 5, 5)
    prob[..., :, 2] = 0.9
    prob[..., :, 4] = 0.6
    return prob, target


def test_edge_fmeasure_counts_one_pixel_offset_inside_tolerance() -> None:
    prob, target = _edge_case()
    metric = EdgeFMeasure(thresholds=99, tolerance_px=1)
    metric.update(prob, target)
    scores = metric.compute()
    # t <= 0.60: 10 predictions, 5 matched, 5/5 recalled -> F = 2/3; 0.60 < t <= 0.90: F = 1
    assert scores["odsF"] == pytest.approx(100.0)
    assert scores["best_threshold"] == pytest.approx(0.61)
    single = EdgeFMeasure(thresholds=1, tolerance_px=1)  # t = 0.5 only
    single.update(prob, target)
    assert single.compute()["odsF"] == pytest.approx(100 * 2 / 3)
    assert single.compute()["ods_precision"] == pytest.approx(50.0)


def test_edge_fmeasure_rejects_offset_outside_tolerance() -> None:
    prob, target = _edge_case()
    metric = EdgeFMeasure(tolerance_px=0)
    metric.update(prob, target)
    assert metric.compute()["odsF"] == 0.0


def test_edge_fmeasure_recall_uses_tolerance_window_around_gt() -> None:
    target = torch.zeros(1, 1, 5, 5)
    target[..., :, 1] = 1.0
    prob = torch.zeros(1, 1, 5, 5)
    prob[0, 0, 0, 2] = 0.9  # recalls GT (0,1) and (1,1) only
    metric = EdgeFMeasure(thresholds=1, tolerance_px=1)
    metric.update(prob, target)
    scores = metric.compute()
    assert scores["ods_precision"] == pytest.approx(100.0)
    assert scores["ods_recall"] == pytest.approx(40.0)
    assert scores["odsF"] == pytest.approx(100 * 2 * 0.4 / 1.4)


# --- saliency -------------------------------------------------------------------------


def test_saliency_maxf_and_mae_match_hand_computed_values() -> None:
    target = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).view(1, 1, 2, 3)
    prob = torch.tensor([[0.9, 0.4, 0.8], [0.1, 0.2, 0.7]]).view(1, 1, 2, 3)
    metric = SaliencyMaxF(thresholds=3, beta2=0.3)  # t = 0.25, 0.5, 0.75
    metric.update(prob, target)

    def f_beta(p: float, r: float) -> float:
        return 1.3 * p * r / (0.3 * p + r)

    # t=0.25: P 3/4 R 1; t=0.5: P 2/3 R 2/3; t=0.75: P 1/2 R 1/3
    candidates = [f_beta(3 / 4, 1.0), f_beta(2 / 3, 2 / 3), f_beta(1 / 2, 1 / 3)]
    scores = metric.compute()
    assert scores["maxF"] == pytest.approx(100 * max(candidates))
    assert scores["best_threshold"] == pytest.approx(0.25)
    assert scores["mae"] == pytest.approx((0.1 + 0.6 + 0.8 + 0.1 + 0.2 + 0.3) / 6)


def test_saliency_maxf_beta_changes_the_score() -> None:
    target = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)
    prob = torch.tensor([0.9, 0.9, 0.1, 0.1]).view(1, 1, 2, 2)
    metric = SaliencyMaxF(thresholds=1, beta2=1.0)  # P 1/2, R 1 -> F1 = 2/3
    metric.update(prob, target)
    assert metric.compute()["maxF"] == pytest.approx(100 * 2 / 3)


# --- streaming, merging, reset for every metric ---------------------------------------


def _random_batch(name: str, generator: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (batch, 1, 6, 7)
    if name == "miou":
        target = torch.randint(0, 5, (batch, 6, 7), generator=generator)
        target[:, 0, :2] = 255
        return torch.randint(0, 5, (batch, 6, 7), generator=generator), target
    if name == "depth":
        target = torch.rand(shape, generator=generator) * 5
        target[..., 0, :] = 0.0
        return target + torch.randn(shape, generator=generator) * 0.3, target
    if name == "normals":
        target = F.normalize(torch.randn(batch, 3, 6, 7, generator=generator), dim=1)
        target[..., 0, :] = 0.0
        return target + torch.randn(batch, 3, 6, 7, generator=generator), target
    target = (torch.rand(shape, generator=generator) > 0.7).float()
    return torch.rand(shape, generator=generator), target


METRICS: dict[str, Callable[[], StreamingMetric]] = {
    "miou": lambda: MeanIoU(num_classes=5),
    "depth": DepthErrors,
    "normals": NormalsAngularError,
    "edges": EdgeFMeasure,
    "saliency": SaliencyMaxF,
}


@pytest.fixture(params=sorted(METRICS))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def _two_batches(name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [_random_batch(name, generator, 2), _random_batch(name, generator, 3)]


def test_streaming_two_batches_equals_one_batch(name: str) -> None:
    batches = _two_batches(name)
    streamed = METRICS[name]()
    for prediction, target in batches:
        streamed.update(prediction, target)
    whole = METRICS[name]()
    whole.update(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    assert streamed.compute() == pytest.approx(whole.compute(), rel=1e-9)


def test_summed_states_equal_one_accumulator_on_all_data(name: str) -> None:
    batches = _two_batches(name)
    workers = [METRICS[name](), METRICS[name]()]
    for worker, (prediction, target) in zip(workers, batches):
        worker.update(prediction, target)
    single = METRICS[name]()
    for prediction, target in batches:
        single.update(prediction, target)
    assert workers[0].compute() != pytest.approx(single.compute())
    for mine, theirs in zip(workers[0].state_tensors(), workers[1].state_tensors()):
        mine += theirs  # what an in-place all-reduce(SUM) does
    assert workers[0].compute() == pytest.approx(single.compute(), rel=1e-9)


def test_reset_forgets_everything_and_keeps_state_handles(name: str) -> None:
    batches = _two_batches(name)
    metric = METRICS[name]()
    handles = metric.state_tensors()
    metric.update(*batches[0])
    metric.reset()
    assert all(int(h.count_nonzero()) == 0 for h in handles)
    metric.update(*batches[1])
    fresh = METRICS[name]()
    fresh.update(*batches[1])
    assert metric.compute() == pytest.approx(fresh.compute())
    assert all(a is b for a, b in zip(handles, metric.state_tensors()))


def test_metric_declares_primary_key(name: str) -> None:
    metric = METRICS[name]()
    metric.update(*_two_batches(name)[0])
    assert metric.primary in metric.compute()
    assert isinstance(type(metric).higher_is_better, bool)


def test_empty_accumulator_reports_nan(name: str) -> None:
    scores = METRICS[name]().compute()
    assert math.isnan(scores[METRICS[name]().primary])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inputs_give_the_same_scores(name: str) -> None:
    batches = _two_batches(name)
    on_cpu, on_gpu = METRICS[name](), METRICS[name]()
    for prediction, target in batches:
        on_cpu.update(prediction, target)
        on_gpu.update(prediction.cuda(), target.cuda())
    assert all(state.is_cuda for state in on_gpu.state_tensors())
    assert on_gpu.compute() == pytest.approx(on_cpu.compute(), rel=1e-6)
