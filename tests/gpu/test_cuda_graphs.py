"""CUDA graphs on a CUDA GPU (skipped without CUDA; not yet run: no GPU was lent when
this was written).

    PYTHONPATH=$PWD python -m pytest tests/gpu/test_cuda_graphs.py -q

The shared engine's static image path captured once per batch size and replayed on new
images agrees with the dense engine to 1e-4 at batch 1 and 32, an overflow is re-run
exactly, and a T model captured by ``CapturedCall`` replays what it computes eagerly.
"""

from __future__ import annotations

import pytest
import torch

from mtlcompress.runtime.cuda_graphs import CapturedCall
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.shared_engine import SharedEngine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = 1e-4


def _bundle(make_micro_bundle, tau: float = 0.3):
    bundle = make_micro_bundle((("depth", 1), ("normals", 3)))
    for name in bundle.sub_tasks:
        activation = bundle.tasks[name].activation
        activation.task_thresholds = dict.fromkeys(activation.task_thresholds, tau)
    return bundle


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[t] - b[t]).abs().max()) for t in a)


@pytest.fixture(autouse=True)
def _exact_fp32():
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # 1e-4 needs full fp32 GEMMs
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.parametrize("batch", [1, 32])
def test_captured_static_path_agrees_with_the_dense_engine(make_micro_bundle, fixed_timings, batch):
    bundle = _bundle(make_micro_bundle)
    dense = DenseEngine(bundle, device="cuda")
    shared = SharedEngine(bundle, device="cuda", timings=fixed_timings, graphs="auto")
    assert shared.graphed is not None and shared.graphed.capture
    shared.graphed.rows.headroom = 3.0
    gen = torch.Generator().manual_seed(batch)
    for _ in range(3):  # the first call captures, the later ones replay on new images
        images = torch.rand(batch, 3, 32, 32, generator=gen).cuda()
        assert _max_diff(shared.predict(images), dense.predict(images)) <= TOL
    assert list(shared.graphed.capacities) == [batch]


def test_overflow_on_the_gpu_is_rerun_exactly(make_micro_bundle, fixed_timings):
    bundle = _bundle(make_micro_bundle)
    shared = SharedEngine(bundle, device="cuda", timings=fixed_timings, graphs="on")
    shared.graphed.rows.headroom = 0.01
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).cuda()
    assert _max_diff(shared.predict(images), DenseEngine(bundle, device="cuda").predict(images)) <= TOL
    assert shared.graphed.overflows == 1


def test_a_captured_model_replays_its_eager_output(make_micro_bundle):
    model = make_micro_bundle().task_model("semseg").cuda().eval()
    gen = torch.Generator().manual_seed(1)
    captured = CapturedCall(model, torch.rand(4, 3, 32, 32, generator=gen).cuda())
    for _ in range(2):
        images = torch.rand(4, 3, 32, 32, generator=gen).cuda()
        with torch.no_grad():
            assert torch.allclose(captured(images).clone(), model(images), atol=TOL)
