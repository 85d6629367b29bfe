"""The cost model's choices, persistence and calibration (no assertion depends on timing noise)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mtlcompress.errors import MtlCompressError
from mtlcompress.runtime import calibration
from mtlcompress.runtime.calibration import (
    CACHE_DIR_ENV,
    calibrate,
    default_cache_path,
    load_or_calibrate,
    load_timings,
    save_timings,
)
from mtlcompress.runtime.cost_model import (
    TIMINGS_VERSION,
    KernelTimings,
    LinearCost,
    choose_path,
    choose_stacking,
    choose_weight_path,
    estimate_path_costs,
)

SHAPE = dict(tokens=197, in_features=384, out_features=1536)
DENSE_MACS = 197 * 384 * 1536


def _timings(**overrides: LinearCost) -> KernelTimings:
    """Hand-made timings shaped like a CPU: token GEMM 20% dearer per MAC plus overhead,
    element-sparse slow, CSR weight delta cheap per nnz."""
    paths = dict(
        dense=LinearCost(20e-6, 1e-11),
        token=LinearCost(60e-6, 1.2e-11),
        element=LinearCost(500e-6, 5e-11),
        sparse_weight=LinearCost(30e-6, 3e-11),
    )
    paths.update(overrides)
    return KernelTimings(**paths, device="cpu", dtype="float32", device_name="test-cpu")


def test_linear_cost_is_overhead_plus_slope():
    assert LinearCost(2.0, 0.5)(10) == pytest.approx(7.0)
    assert LinearCost(2.0, 0.5, per_row_s=0.25)(10, rows=4) == pytest.approx(8.0)


def test_sparse_weight_cost_per_row_can_make_dense_win_at_many_rows():
    """The CSR product's cost per row of its operand tips full-row calls to the dense
    GEMM while few-row calls (video frames) stay sparse."""
    t = _timings(sparse_weight=LinearCost(30e-6, 3e-11, per_row_s=10e-6), dense=LinearCost(100e-6, 1e-11))
    shape = dict(in_features=384, out_features=1536, weight_density=0.02)
    assert choose_weight_path(t, tokens=4, **shape) == "sparse"
    assert choose_weight_path(t, tokens=197, **shape) == "dense"


def test_token_path_wins_with_nothing_changed_and_dense_wins_with_everything_changed():
    t = _timings()
    assert choose_path(t, **SHAPE, token_density=0.0, weight_density=0.0) == "token"
    assert choose_path(t, **SHAPE, token_density=1.0, weight_density=0.0) == "dense"
    assert choose_path(t, **SHAPE, token_density=1.0, weight_density=0.02) == "dense"


def test_choice_switches_once_from_token_to_dense_as_density_grows():
    t = _timings()
    choices = [choose_path(t, **SHAPE, token_density=d / 20, weight_density=0.01) for d in range(21)]
    switch = choices.index("dense")
    assert switch > 0
    assert choices[:switch] == ["token"] * switch
    assert choices[switch:] == ["dense"] * (len(choices) - switch)


def test_weight_delta_cost_counts_against_the_delta_paths():
    t = _timings()
    # Cheap with shared weights, but a dense-ish dW makes the identity dearer than recomputing.
    assert choose_path(t, **SHAPE, token_density=0.3, weight_density=0.0) == "token"
    assert choose_path(t, **SHAPE, token_density=0.3, weight_density=0.9) == "dense"
    costs = estimate_path_costs(t, **SHAPE, token_density=0.3, weight_density=0.0)
    with_dw = estimate_path_costs(t, **SHAPE, token_density=0.3, weight_density=0.02)
    assert with_dw["dense"] == costs["dense"]
    assert with_dw["token"] > costs["token"]


def test_element_path_is_chosen_when_it_is_cheapest():
    t = _timings(element=LinearCost(1e-6, 1e-12))
    assert choose_path(t, **SHAPE, token_density=0.5, weight_density=0.0, element_density=0.01) == "element"
    # The default element density is the token density (every changed token dense).
    assert choose_path(_timings(), **SHAPE, token_density=0.5, weight_density=0.0) != "element"


def test_choose_weight_path():
    t = _timings()
    assert choose_weight_path(t, **SHAPE, weight_density=0.0) == "none"
    assert choose_weight_path(t, **SHAPE, weight_density=0.02) == "sparse"
    assert choose_weight_path(t, **SHAPE, weight_density=1.0) == "dense"
    slow_sparse = _timings(sparse_weight=LinearCost(10.0, 1e-6))
    assert choose_weight_path(slow_sparse, **SHAPE, weight_density=0.02) == "dense"


def test_stacking_pays_when_per_call_overhead_dominates_and_not_when_the_delta_is_dear():
    """One GEMM with W_0 for all tasks' rows plus dW_t per sub-task, against one GEMM per task."""
    shape = dict(in_features=384, out_features=1536)
    few, many = [3, 3, 3, 3], [197, 197, 197, 197]
    densities = [0.0, 0.02, 0.02, 0.02]
    overhead_bound = _timings(token=LinearCost(200e-6, 1e-12), sparse_weight=LinearCost(20e-6, 1e-10))
    assert choose_stacking(overhead_bound, rows=few, **shape, weight_densities=densities)
    # Stacking saves T - 1 call overheads; at full rows the dW terms cost more than that.
    assert not choose_stacking(overhead_bound, rows=many, **shape, weight_densities=densities)
    dear_delta = _timings(token=LinearCost(200e-6, 1e-12), sparse_weight=LinearCost(1.0, 1e-6),
                          dense=LinearCost(1.0, 1e-6))
    assert not choose_stacking(dear_delta, rows=few, **shape, weight_densities=densities)
    # Tasks with no rows cost nothing either way; shared weights (density 0) need no dW term.
    assert choose_stacking(dear_delta, rows=[3, 0, 3, 0], **shape, weight_densities=[0.0] * 4)


def test_densities_outside_unit_interval_are_rejected():
    with pytest.raises(ValueError):
        estimate_path_costs(_timings(), **SHAPE, token_density=1.5, weight_density=0.0)
    with pytest.raises(ValueError):
        choose_path(_timings(), **SHAPE, token_density=0.5, weight_density=-0.1)


def test_fit_line_recovers_a_line_and_stays_positive_under_noise():
    fit = calibration._fit_line([1e6, 2e6, 4e6], [3e-4 + 1e-10 * u for u in (1e6, 2e6, 4e6)])
    assert fit.overhead_s == pytest.approx(3e-4, rel=1e-6)
    assert fit.per_unit_s == pytest.approx(1e-10, rel=1e-6)
    negative_intercept = calibration._fit_line([1.0, 2.0, 3.0], [0.5, 2.0, 3.0])
    assert negative_intercept.overhead_s >= 0 and negative_intercept.per_unit_s > 0
    flat = calibration._fit_line([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert flat.overhead_s > 0 and flat.per_unit_s > 0


def test_fit_line_recovers_a_cost_per_row():
    points = [(0.01, 197), (0.02, 197), (0.05, 197), (0.02, 4), (0.02, 32)]  # calibrate's (density, rows)
    units = [d * 384 * 1536 * r for d, r in points]
    rows = [r for _, r in points]
    seconds = [5e-5 + 3e-11 * u + 2e-6 * r for u, r in zip(units, rows)]
    fit = calibration._fit_line(units, seconds, rows=rows)
    assert fit.overhead_s == pytest.approx(5e-5, rel=1e-6)
    assert fit.per_unit_s == pytest.approx(3e-11, rel=1e-6)
    assert fit.per_row_s == pytest.approx(2e-6, rel=1e-6)
    assert calibration._fit_line(units, seconds).per_row_s == 0.0


def test_every_timed_calibration_call_follows_a_cache_eviction():
    evict = torch.zeros(16)
    calls = []
    calibration._measure(lambda: calls.append(float(evict[0])), torch.device("cpu"), repeats=3, evict=evict)
    # Warm-up calls first (no eviction), then one eviction before each timed call.
    assert calls == [0.0] * calibration._WARMUP + [1.0, 2.0, 3.0]


def test_json_round_trip(tmp_path):
    t = _timings(sparse_weight=LinearCost(30e-6, 3e-11, per_row_s=1e-6))
    path = save_timings(t, tmp_path / "sub" / "timings.json")
    data = json.loads(path.read_text())
    assert data["format"] == "mtlcompress.kernel_timings" and data["version"] == TIMINGS_VERSION
    assert load_timings(path) == t


def test_load_rejects_other_versions_formats_and_garbage(tmp_path):
    good = _timings().to_dict()
    cases = {
        "future.json": json.dumps({**good, "version": TIMINGS_VERSION + 1}),
        "format.json": json.dumps({**good, "format": "something.else"}),
        "missing.json": json.dumps({k: v for k, v in good.items() if k != "token"}),
        "garbage.json": "{not json",
        "list.json": "[]",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(MtlCompressError):
            load_timings(tmp_path / name)
    with pytest.raises(MtlCompressError):
        load_timings(tmp_path / "absent.json")


def test_default_cache_path_honours_env_and_keys_by_torch_version(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    path = default_cache_path("cpu", torch.float32)
    assert path.parent == tmp_path / "cache"
    assert torch.__version__.replace("+", "_") in path.name or torch.__version__ in path.name
    assert default_cache_path("cpu", torch.bfloat16) != path
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_path("cpu").parent == tmp_path / "home" / ".cache" / "mtlcompress"


@pytest.fixture
def calibrations(tmp_path, monkeypatch):
    """Calibration replaced by a recorder; the cache lives in tmp_path."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))
    calls = []

    def fake_calibrate(device, dtype, **kwargs):
        calls.append(kwargs)
        return _timings()

    monkeypatch.setattr(calibration, "calibrate", fake_calibrate)
    return calls


def test_load_or_calibrate_uses_the_cache_and_replaces_a_corrupt_one(calibrations):
    calls = calibrations
    first = load_or_calibrate("cpu", torch.float32, tokens=4)
    assert len(calls) == 1 and default_cache_path("cpu").exists()
    assert load_or_calibrate("cpu", torch.float32) == first and len(calls) == 1
    default_cache_path("cpu").write_text("{broken")
    assert load_or_calibrate("cpu", torch.float32) == first and len(calls) == 2
    load_or_calibrate("cpu", torch.float32, recalibrate=True)
    assert len(calls) == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_calibrate_tiny_shapes_gives_positive_finite_timings(dtype):
    t = calibrate("cpu", dtype, in_features=16, out_features=32, tokens=8, repeats=3)
    for path in (t.dense, t.token, t.element, t.sparse_weight):
        assert math.isfinite(path.overhead_s) and path.overhead_s >= 0
        assert math.isfinite(path.per_unit_s) and path.per_unit_s > 0
    assert t.dtype == str(dtype).removeprefix("torch.") and t.calibration_shape == (8, 16, 32)
    assert choose_path(t, tokens=8, in_features=16, out_features=32, token_density=0.5,
                       weight_density=0.1) in ("dense", "token", "element")


def test_timings_are_cached_per_layer_shape_with_a_machine_wide_fallback(calibrations):
    calls = calibrations
    shape = {"in_features": 8, "out_features": 32, "tokens": 5}
    load_or_calibrate("cpu", torch.float32, **shape)
    assert calls == [shape]
    assert default_cache_path("cpu", torch.float32, (8, 32, 5)).exists()
    assert not default_cache_path("cpu").exists()
    load_or_calibrate("cpu", torch.float32, **shape)
    assert len(calls) == 1  # read back from its own file
    load_or_calibrate("cpu", torch.float32, in_features=32, out_features=8, tokens=5)
    assert len(calls) == 2  # another shape: calibrated on its own
    save_timings(_timings(), default_cache_path("cpu"))
    load_or_calibrate("cpu", torch.float32, in_features=16, out_features=16, tokens=5)
    assert len(calls) == 2  # a never-calibrated shape falls back to the machine-wide file
