"""The shared engine chooses per network between its shared paths and the tasks' own
models, and a stream computes every frame in full when delta frames cost more than
keyframes; either way the outputs are the dense reference's (exact thresholds) or the
tasks' own models' (the per-task path applies no thresholds)."""

from __future__ import annotations

import itertools

import pytest
import torch

from mtlcompress.errors import MtlCompressError
from mtlcompress.runtime.cost_model import KernelTimings, LinearCost
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.runtime.network_plan import NetworkChooser, price_network
from mtlcompress.runtime.shared_engine import SharedEngine

from .conftest import exact_thresholds

TOL = 1e-4
NO_DRIFT_KEYFRAMES = KeyframePolicy(keyframe_every=16, max_drift=1e9)  # one keyframe, then delta frames
SUB_TASKS = (("depth", 1), ("normals", 3))
DEAR = LinearCost(1.0, 1.0)
# GEMMs cheap and every sparse kernel dear: the shared forward is T GEMMs plus its bookkeeping.
GEMMS_ONLY = KernelTimings(dense=LinearCost(1e-5, 1e-12), token=DEAR, element=DEAR, sparse_weight=DEAR,
                           device="cpu", dtype="float32", device_name="test")


def _images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(3))


def _frames(count: int = 6, size: int = 32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    background = torch.rand(1, 3, size, size, generator=gen)
    frames = []
    for k in range(count):
        frame = background.clone()
        frame[..., 4 * k:4 * k + 8, 2:10] = 1.0
        frames.append(frame)
    return frames


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[t] - b[t]).abs().max()) for t in a)


def test_priced_choice_follows_the_kernel_timings(make_micro_bundle, fixed_timings):
    bundle = make_micro_bundle(SUB_TASKS)
    cheap_sparse = SharedEngine(bundle, network_path="auto", timings=fixed_timings)
    cheap_sparse.predict(_images())
    plan = cheap_sparse.network_plan
    assert (plan.path, plan.source, plan.batch) == ("shared", "priced", 2)
    assert plan.shared_s < plan.per_task_s
    gemms_only = SharedEngine(bundle, network_path="auto", timings=GEMMS_ONLY)
    outputs = gemms_only.predict(_images())
    plan = gemms_only.network_plan
    assert (plan.path, plan.source) == ("per-task", "priced") and plan.per_task_s < plan.shared_s
    # The tasks' own models, plainly: no thresholds, no densities measured.
    for task, output in outputs.items():
        assert torch.allclose(output, bundle.task_model(task)(_images()), atol=TOL)
    assert gemms_only.stats.mean() == {}


def test_price_grows_with_the_batch_on_both_sides(make_micro_bundle, fixed_timings):
    engine = SharedEngine(make_micro_bundle(SUB_TASKS), network_path="auto", timings=fixed_timings)
    one, eight = (price_network(engine.planner, batch=b, tokens=17) for b in (1, 8))
    assert all(eight[side] > one[side] > 0 for side in ("shared", "per-task"))


@pytest.mark.parametrize("path", ["shared", "per-task"])
def test_forced_paths_agree_with_the_dense_engine(make_micro_bundle, fixed_timings, path):
    bundle = exact_thresholds(make_micro_bundle(SUB_TASKS))
    shared = SharedEngine(bundle, timings=fixed_timings, network_path=path)
    dense = DenseEngine(bundle)
    images = _images()
    assert _max_diff(shared.predict(images), dense.predict(images)) <= TOL
    assert (shared.network_plan.path, shared.network_plan.source) == (path, "forced")
    assert bool(shared.stats.mean()) == (path == "shared")  # the tasks' own models measure no deltas
    policy = KeyframePolicy(keyframe_every=4)
    ours, theirs = list(shared.stream(_frames(), policy)), list(dense.stream(_frames(), policy))
    for mine, reference in zip(ours, theirs):
        assert _max_diff(mine.outputs, reference.outputs) <= TOL
    expected = {"per-task"} if path == "per-task" else {"keyframe", "delta"}
    assert {r.path for r in ours} == expected


def test_forced_shared_path_keeps_the_thresholded_semantics(make_micro_bundle, fixed_timings):
    bundle = make_micro_bundle(SUB_TASKS)  # thresholds 0.02: the dense engine simulates them
    images = _images()
    shared = SharedEngine(bundle, timings=GEMMS_ONLY, network_path="shared")
    assert _max_diff(shared.predict(images), DenseEngine(bundle).predict(images)) <= TOL
    assert shared.network_plan.path == "shared"


def test_unknown_network_path_is_one_clear_error(make_micro_bundle, fixed_timings):
    with pytest.raises(MtlCompressError, match="unknown network path 'fast'"):
        SharedEngine(make_micro_bundle(SUB_TASKS), timings=fixed_timings, network_path="fast")


def test_measured_calls_replace_the_prices_once_both_sides_ran():
    chooser = NetworkChooser("auto", lambda batch: {"shared": 1.0, "per-task": 2.0}, measure=True)
    seen = []
    for seconds in ({"shared": 5.0, "per-task": 3.0}, ) * 6:
        plan = chooser.choose(4)
        seen.append((plan.path, plan.source))
        chooser.record(plan.path, 4, seconds[plan.path])
    # First call of each side is a warm-up; then the other side is timed; then the medians decide.
    assert seen == [("shared", "priced"), ("shared", "priced"), ("per-task", "exploring"),
                    ("per-task", "exploring"), ("per-task", "measured"), ("per-task", "measured")]
    assert chooser.choose(4).per_task_s == 3.0
    assert chooser.choose(1).source == "priced"  # each batch size on its own
    unmeasured = NetworkChooser("auto", lambda batch: {"shared": 1.0, "per-task": 2.0}, measure=False)
    for _ in range(4):
        unmeasured.record(unmeasured.choose(4).path, 4, 9.0)
    assert unmeasured.choose(4).source == "priced"


def _clock(seconds_at):
    """A fake clock: the n-th reading is ``seconds_at(n)``. The engine reads it before
    and after each frame, so frame k takes ``seconds_at(2k + 1) - seconds_at(2k)``."""
    readings = itertools.count()
    return lambda: float(seconds_at(next(readings)))


def test_stream_falls_back_to_full_frames_when_delta_frames_measure_dearer(make_micro_bundle, fixed_timings):
    bundle = exact_thresholds(make_micro_bundle(SUB_TASKS))
    # Frame k takes 4k + 1 "seconds": every delta frame is dearer than the keyframe.
    engine = SharedEngine(bundle, network_path="auto", timings=fixed_timings, measure=True, clock=_clock(lambda n: n * n))
    results = list(engine.stream(_frames(7), KeyframePolicy(keyframe_every=16)))
    reference = list(DenseEngine(bundle).stream(_frames(7), KeyframePolicy(keyframe_every=16)))
    # Frames 0-2 take 1, 5, 9: the switch; then the tasks' own models are timed once (13)
    # and every frame takes whichever full path has the lower median so far.
    assert [r.path for r in results] == ["keyframe", "delta", "delta", "per-task", "keyframe", "keyframe", "per-task"]
    assert [r.reason is not None for r in results] == [False, False, True, False, False, False, False]
    assert "delta frames took" in results[2].reason
    for mine, theirs in zip(results, reference):
        assert _max_diff(mine.outputs, theirs.outputs) <= TOL
    plan = engine.stream_plan
    assert plan["mode"] == "per-frame" and plan["reason"] == results[2].reason
    assert plan["frames"] == {"keyframe": 3, "delta": 2, "per-task": 2}
    # The decision outlives the stream: the next one computes every frame in full.
    assert {r.path for r in engine.stream(_frames(3))} <= {"keyframe", "per-task"}


def test_stream_keeps_reusing_frames_when_delta_frames_measure_cheaper(make_micro_bundle, fixed_timings):
    bundle = make_micro_bundle(SUB_TASKS)
    # Frame k takes 99 - 4k "seconds": delta frames are cheaper than the keyframe.
    engine = SharedEngine(bundle, network_path="auto", timings=fixed_timings, measure=True, clock=_clock(lambda n: 100 * n - n * n))
    results = list(engine.stream(_frames(6), NO_DRIFT_KEYFRAMES))
    assert [r.path for r in results] == ["keyframe"] + ["delta"] * 5
    assert all(r.reason is None for r in results)
    assert engine.stream_plan["mode"] == "temporal" and engine.stream_plan["reason"] is None


def test_without_measuring_a_stream_never_falls_back(make_micro_bundle, fixed_timings):
    engine = SharedEngine(make_micro_bundle(SUB_TASKS), network_path="auto", timings=fixed_timings, clock=_clock(lambda n: n * n))
    assert [r.path for r in engine.stream(_frames(5), NO_DRIFT_KEYFRAMES)] == ["keyframe"] + ["delta"] * 4
