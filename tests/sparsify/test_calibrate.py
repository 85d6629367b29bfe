"""Threshold calibration: which metric values pass the tolerance, the bisection on
``keep``, and the device calibration runs on."""

import math

import pytest
import torch

from mtlcompress.data.layouts import open_dataset
from mtlcompress.models.checkpoint import load_checkpoint
from mtlcompress.models.taps import shared_linear_names
from mtlcompress.sparsify.calibrate import (
    BISECTION_STEPS,
    Calibration,
    calibrate,
    calibrate_task_thresholds,
    calibrate_temporal_thresholds,
    delta_magnitudes,
    search_keep,
    thresholds_for_keep,
    within_tolerance,
)
from mtlcompress.sparsify.temporal_data import split_clips
from mtlcompress.tasks.registry import get_task


class _Metric:
    def __init__(self, primary: str, higher_is_better: bool) -> None:
        self.primary, self.higher_is_better = primary, higher_is_better


@pytest.mark.parametrize(("value", "accepted"), [(0.80, True), (0.79, True), (0.784, True), (0.78, False),
                                                 (0.90, True)])
def test_tolerance_for_a_higher_is_better_metric(value, accepted):
    # reference 0.8, 2% -> anything down to 0.784 passes, any improvement passes.
    assert within_tolerance(value, 0.8, 0.02, higher_is_better=True) is accepted


@pytest.mark.parametrize(("value", "accepted"), [(0.50, True), (0.509, True), (0.51, True), (0.511, False),
                                                 (0.40, True)])
def test_tolerance_for_a_lower_is_better_metric(value, accepted):
    # reference 0.5 (e.g. rmse), 2% -> anything up to 0.51 passes, any improvement passes.
    assert within_tolerance(value, 0.5, 0.02, higher_is_better=False) is accepted


def test_tolerance_is_relative_to_a_negative_reference_too():
    assert within_tolerance(-1.01, -1.0, 0.02, higher_is_better=True)
    assert not within_tolerance(-1.03, -1.0, 0.02, higher_is_better=True)


def test_zero_tolerance_accepts_only_no_loss():
    assert within_tolerance(0.8, 0.8, 0.0, True) and not within_tolerance(0.7999, 0.8, 0.0, True)
    assert within_tolerance(0.5, 0.5, 0.0, False) and not within_tolerance(0.5001, 0.5, 0.0, False)


def test_delta_magnitudes_by_granularity():
    delta = torch.tensor([[[3.0, -4.0], [0.0, 0.0]]])
    assert torch.allclose(delta_magnitudes(delta, "element"), torch.tensor([3.0, 4.0, 0.0, 0.0]))
    assert torch.allclose(delta_magnitudes(delta, "token"), torch.tensor([5.0 / math.sqrt(2), 0.0]))


def test_thresholds_for_keep():
    magnitudes = {"a": torch.arange(1.0, 101.0)}
    assert thresholds_for_keep(magnitudes, 1.0) == {"a": 0.0}
    assert thresholds_for_keep(magnitudes, 0.25)["a"] == pytest.approx(75.25)
    assert thresholds_for_keep(magnitudes, 0.0)["a"] == 100.0


def _fake(keep_to_metric, higher_is_better):
    """A calibration problem whose metric and density are known functions of the kept fraction."""
    magnitudes = {"a": torch.linspace(0.0, 1.0, 10_001)}

    def measure(thresholds):
        keep = float((magnitudes["a"] > thresholds["a"]).float().mean()) if thresholds["a"] else 1.0
        return {"m": keep_to_metric(keep)}, {"a": keep}

    return magnitudes, measure, _Metric("m", higher_is_better)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_calibrate_finds_the_sparsest_keep_within_tolerance(higher_is_better):
    # The metric moves linearly away from the reference as fewer deltas are kept; 10% loss allowed.
    reference = 1.0
    lose = (lambda keep: reference * keep) if higher_is_better else (lambda keep: reference * (2.0 - keep))
    magnitudes, measure, metric = _fake(lose, higher_is_better)
    result = calibrate(magnitudes, measure, {"m": reference}, metric, tolerance=0.1, target_density=None)
    assert within_tolerance(result.metrics["m"], reference, 0.1, higher_is_better)
    assert result.keep == pytest.approx(0.9, abs=2.0 ** -BISECTION_STEPS + 1e-3)
    assert result.density == pytest.approx(result.keep, abs=1e-3)


def test_calibrate_to_a_target_density_ignores_the_metric():
    magnitudes, measure, metric = _fake(lambda keep: 0.0, True)
    result = calibrate(magnitudes, measure, {"m": 1.0}, metric, tolerance=0.0, target_density=0.3)
    assert result.density <= 0.3
    assert result.density == pytest.approx(0.3, abs=2.0 ** -BISECTION_STEPS + 1e-3)


def test_search_keep_keeps_everything_when_nothing_is_acceptable():
    def evaluate(keep):
        return False, Calibration({}, keep, {}, {}, keep, {})
    assert search_keep(evaluate, to_target=False).keep == 1.0
    assert search_keep(evaluate, to_target=True).keep == 0.0


@pytest.fixture
def moved_to_meta(monkeypatch):
    """Every tensor whose ``.to(meta)`` was asked for. The spy hands it back unmoved (on
    the CPU), so a calibration told to run on ``meta`` computes here and shows which
    inputs it moved to its device."""
    moved = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        target = kwargs.get("device", args[0] if args else None)
        if isinstance(target, torch.device) and target.type == "meta":
            moved.append(self)
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    return moved


def _calibrate_both(quick_demo, **device):
    """Task thresholds (depth against the semseg base, with a reference model) and
    temporal thresholds (depth on the held-out clip), with the models on the CPU."""
    student, info = load_checkpoint(quick_demo["checkpoints"]["depth"])
    base, _ = load_checkpoint(quick_demo["checkpoints"]["semseg"])
    spec, layers = get_task("depth"), shared_linear_names(info.backbone.depth)
    inputs = []
    for model in (student, base):
        model.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    train = open_dataset(quick_demo["data"], split="train", tasks=["depth"], size=info.backbone.img_size)
    task = calibrate_task_thresholds(student, base, train, spec, None, layers, "token", images=6,
                                     reference_model=student, **device)
    _, held_out = split_clips(quick_demo["data"], ["depth"], info.backbone.img_size)
    temporal = calibrate_temporal_thresholds(student, held_out, spec, None, layers, "element", **device)
    return task, temporal, inputs


def test_calibration_moves_every_batch_to_its_device_and_returns_floats(quick_demo, moved_to_meta):
    task, temporal, inputs = _calibrate_both(quick_demo, device="meta")
    assert inputs
    assert all(any(x is moved for moved in moved_to_meta) for x in inputs)
    for calibration in (task, temporal):
        values = [*calibration.thresholds.values(), *calibration.metrics.values(),
                  *calibration.reference_metrics.values(), *calibration.layer_density.values(), calibration.density]
        assert values and all(type(value) is float for value in values)


def test_an_explicit_device_computes_what_the_default_does(quick_demo, moved_to_meta):
    # The default is the models' device (the CPU); "meta" runs here too (see the spy), through the device path.
    assert _calibrate_both(quick_demo)[:2] == _calibrate_both(quick_demo, device="meta")[:2]
    assert _calibrate_both(quick_demo, device="cpu")[:2] == _calibrate_both(quick_demo)[:2]
