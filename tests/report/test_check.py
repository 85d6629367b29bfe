"""The demo's end-to-end check of a bundle: both engines on held-out images and a clip."""

from __future__ import annotations

import pytest

from mtlcompress.bundle.format import load_bundle
from mtlcompress.bundle.format import export_bundle
from mtlcompress.report import check
from mtlcompress.runtime.shared_engine import SharedEngine

TOL = 1e-4


@pytest.fixture(scope="module")
def bundle(quick_demo, tmp_path_factory):
    """A bundle of the quick demo's unsparsified checkpoints (semseg base)."""
    checkpoints = quick_demo["checkpoints"]
    path = tmp_path_factory.mktemp("check") / "bundle.safetensors"
    export_bundle(checkpoints["semseg"], [p for t, p in checkpoints.items() if t != "semseg"], path)
    return load_bundle(path)


def test_engines_agree_and_calibration_is_not_timed(bundle, quick_demo, monkeypatch):
    events = []
    predict, timings = SharedEngine.predict, SharedEngine.timings.fget
    monkeypatch.setattr(SharedEngine, "predict", lambda self, images: events.append("predict") or predict(self, images))
    monkeypatch.setattr(SharedEngine, "timings",
                        property(lambda self: events.append("timings") or timings(self)))
    result = check.compare_engines(bundle, quick_demo["data"], batch_size=8)
    # The cost model is calibrated (or loaded) before the first timed call, not inside it.
    assert events[0] == "timings" and "predict" in events
    assert result["images"] > 0 and set(result["metrics"]) <= set(bundle.tasks)
    assert set(result["seconds"]) == {"dense", "shared"}
    assert max(result["max_abs_diff"].values()) <= TOL
    assert result["video"]["frames"] > 0 and result["video"]["max_abs_diff"] <= TOL
