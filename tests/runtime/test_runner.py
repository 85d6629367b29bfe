"""``mtlcompress.load`` / ``BundleRunner``: the Python entry point builds one engine
and every call runs it; the package resolves its public names lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import mtlcompress
from mtlcompress.bundle.format import save_bundle
from mtlcompress.errors import MtlCompressError
from mtlcompress.runtime import runner as runner_module
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.calibration import CACHE_DIR_ENV, default_cache_path, save_timings
from mtlcompress.runtime.runner import BundleRunner


@pytest.fixture
def bundle_path(tmp_path, make_micro_bundle, fixed_timings, monkeypatch):
    # The shared engine would calibrate on first use: a cached machine-wide table instead.
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    save_timings(fixed_timings, default_cache_path("cpu"))
    path = tmp_path / "micro.safetensors"
    save_bundle(make_micro_bundle(), path)
    return path


def images(count: int = 2) -> torch.Tensor:
    size = 32
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_the_engine_is_built_once_and_reused(bundle_path, monkeypatch):
    built = []
    make_engine = runner_module.make_engine

    def counting(*args, **kwargs):
        built.append(args[1])
        return make_engine(*args, **kwargs)
    monkeypatch.setattr(runner_module, "make_engine", counting)
    model = mtlcompress.load(bundle_path)
    engine = model.engine
    first = model.predict(images())
    second = model.predict(images())
    list(model.stream([images(1)] * 3, keyframe_every=2))
    assert built == ["shared"] and model.engine is engine
    assert all(torch.equal(first[t], second[t]) for t in first)


def test_load_matches_the_reference_engine(bundle_path):
    shared = mtlcompress.load(bundle_path)
    dense = mtlcompress.load(bundle_path, engine="dense")
    assert isinstance(dense.engine, DenseEngine) and shared.tasks == dense.tasks == ["semseg", "depth"]
    got, ref = shared.predict(images()), dense.predict(images())
    assert all((got[t] - ref[t]).abs().max() <= 1e-4 for t in ref)
    frames = list(shared.stream([images(1)] * 4, keyframe_every=2))
    assert [f.keyframe for f in frames] == [True, False, True, False]
    assert isinstance(shared.bundle, mtlcompress.Bundle)


def test_runner_arguments_are_checked(bundle_path):
    bundle = mtlcompress.load_bundle(bundle_path)
    assert BundleRunner(bundle, tasks=["depth"]).tasks == ["depth"]
    with pytest.raises(MtlCompressError, match="unknown engine"):
        BundleRunner(bundle, engine="fast")
    with pytest.raises(MtlCompressError, match="unknown device"):
        BundleRunner(bundle, device="tpu")
    with pytest.raises(ValueError, match="keyframe_every"):
        list(BundleRunner(bundle).stream([images(1)], keyframe_every=0))
    with pytest.raises(MtlCompressError, match="unknown graphs mode"):
        BundleRunner(bundle, engine="dense", graphs="always")


def test_the_static_image_path_through_load(bundle_path):
    """``graphs="on"``: images by the static-shape path (eager on a CPU), same outputs."""
    static = mtlcompress.load(bundle_path, graphs="on")
    assert static.engine.graphed is not None and mtlcompress.load(bundle_path).engine.graphed is None
    ref = mtlcompress.load(bundle_path, engine="dense").predict(images())
    for _ in range(2):  # (the first call may overflow the first capacities and run exactly)
        got = static.predict(images())
        assert all((got[t] - ref[t]).abs().max() <= 1e-4 for t in ref)
    assert "static" in static.engine.layer_paths["depth"].values()


def test_import_and_version_do_not_import_torch():
    code = ("import sys, mtlcompress; v = mtlcompress.__version__; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(v)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == mtlcompress.__version__


def test_public_names_resolve_lazily():
    assert set(mtlcompress.__all__) <= set(dir(mtlcompress))
    for name in mtlcompress.__all__:
        assert getattr(mtlcompress, name) is not None
    with pytest.raises(AttributeError):
        mtlcompress.not_a_name  # noqa: B018
