"""The static-shape image path (what CUDA graphs capture), run eagerly on the CPU: it
agrees with the dense engine to 1e-4 for unstructured, block and low-rank deltas; an
input with more changed rows than the capacity is detected and re-run exactly; and the
static call never reads a tensor's value on the host."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mtlcompress.bundle.format import load_bundle, save_bundle
from mtlcompress.errors import MtlCompressError
from mtlcompress.models.activation_sparsity import token_rms
from mtlcompress.models.taps import record_linear_inputs, shared_linear_names
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.graphed_images import StaticImageRows
from mtlcompress.runtime.shared_engine import SharedEngine
from mtlcompress.sparsify.structures import structured_deltas

TOL = 1e-4
QUANTILE = 0.7  # thresholds that keep about this fraction of token rows unchanged, per layer
# Ops that make the host wait for the device: a CUDA graph cannot capture them.
HOST_SYNC_OPS = {"nonzero", "_local_scalar_dense", "item", "is_nonzero", "masked_select", "unique", "_unique2"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _bundle(make_micro_bundle, tmp_path, structure: str | None = None, block: str = "4x4"):
    """Two sub-tasks; with ``structure``, deltas stored in that layout. Each layer's
    threshold is its unthresholded delta RMS's ``QUANTILE`` on ``_images()``: every
    layer, the ones after attention and the MLP's activation included (whose deltas are
    ten times smaller), then changes part of its rows, so every capacity matters."""
    bundle = make_micro_bundle((("depth", 1), ("normals", 3)))
    gen = torch.Generator().manual_seed(3)
    for name in bundle.sub_tasks:
        if structure is not None:
            full = {k: torch.randn(w.shape, generator=gen) * 0.05 for k, w in bundle.base_weights.items()
                    if k.startswith("blocks.")}
            bundle.tasks[name].delta, _ = structured_deltas(full, 0.2, structure, block)
    path = tmp_path / "b.safetensors"
    save_bundle(bundle, path)
    bundle = load_bundle(path)
    layers = shared_linear_names(bundle.backbone.depth)
    inputs = {}
    for task in bundle.tasks:
        model = bundle.task_model(task)
        with torch.no_grad(), record_linear_inputs(model.backbone, layers, detach=True) as seen:
            model(_images())
        inputs[task] = dict(seen)
    for name in bundle.sub_tasks:
        bundle.tasks[name].activation.task_thresholds = {
            layer: float(token_rms(inputs[name][layer] - inputs[bundle.base_task][layer]).quantile(QUANTILE))
            for layer in layers}
    return bundle


def _images(batch: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[t] - b[t]).abs().max()) for t in a)


@pytest.mark.parametrize("structure,block", [(None, ""), ("block", "4x4"), ("lowrank", "8x8")])
def test_static_path_agrees_with_the_dense_engine(make_micro_bundle, fixed_timings, tmp_path, structure, block):
    bundle = _bundle(make_micro_bundle, tmp_path, structure, block)
    dense = DenseEngine(bundle)
    shared = SharedEngine(bundle, timings=fixed_timings, graphs="on")
    shared.graphed.rows.headroom = 2.5  # capacity 39 of 51 rows: enough for these images
    for seed in (5, 6, 7):
        images = _images(seed=seed)
        assert _max_diff(shared.predict(images), dense.predict(images)) <= TOL
    graphed = shared.graphed
    assert graphed.overflows == 0, "capacity sufficed: no input may have fallen back"
    rows = 3 * bundle.backbone.num_tokens
    assert 0 < min(graphed.capacities[3].values()) and max(graphed.capacities[3].values()) < rows
    assert {p for task in bundle.sub_tasks for p in shared.layer_paths[task].values()} == {"static"}
    density = shared.stats.mean()["depth"]
    assert 0 < max(density.values()) < 1 and density.keys() == dense.stats.mean()["depth"].keys()


def test_overflow_is_detected_and_rerun_exactly(make_micro_bundle, fixed_timings, tmp_path):
    bundle = _bundle(make_micro_bundle, tmp_path)
    images = _images()
    shared = SharedEngine(bundle, timings=fixed_timings, graphs="on")
    shared.graphed.rows.headroom = 0.01  # one row per layer: every thresholded layer overflows
    reference = DenseEngine(bundle).predict(images)
    assert _max_diff(shared.predict(images), reference) <= TOL
    assert shared.graphed.overflows == 1
    assert "token" in shared.layer_paths["depth"].values()  # the exact task-domain path ran
    shared.graphed.rows.headroom = 1.5  # re-built from the densities the exact path measured
    assert _max_diff(shared.predict(images), reference) <= TOL
    assert shared.graphed.overflows == 1


def test_an_overflowed_static_call_is_inexact_and_says_so(make_micro_bundle, fixed_timings, tmp_path):
    """Why the counts are read: too small a capacity gives wrong outputs, silently."""
    bundle = _bundle(make_micro_bundle, tmp_path)
    shared = SharedEngine(bundle, timings=fixed_timings, graphs="on")
    rows = shared.graphed.rows
    images = _images()
    capacities = dict.fromkeys(rows.gathered, 1)
    with torch.no_grad():
        outputs, counts = rows.forward(images, capacities)
    assert int(counts.max()) > 1
    assert _max_diff({t: outputs[t] for t in shared.tasks}, DenseEngine(bundle).predict(images)) > TOL


class _RecordOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("structure,block", [(None, ""), ("block", "4x4"), ("lowrank", "8x8")])
def test_the_static_call_never_synchronises_with_the_host(make_micro_bundle, fixed_timings, tmp_path, structure,
                                                          block):
    bundle = _bundle(make_micro_bundle, tmp_path, structure, block)
    shared = SharedEngine(bundle, timings=fixed_timings, graphs="on")
    rows: StaticImageRows = shared.graphed.rows
    images = _images()
    with torch.no_grad(), _RecordOps() as static:
        rows.forward(images, rows.capacities(3))
    assert {"topk", "gather", "index_copy"} <= static.ops  # the mode sees the call's ops
    assert not static.ops & HOST_SYNC_OPS
    if structure is None:  # the exact path does synchronise: the check can see it
        with torch.no_grad(), _RecordOps() as task_domain:
            SharedEngine(bundle, timings=fixed_timings).predict(images)
        assert task_domain.ops & HOST_SYNC_OPS


def test_the_static_call_traces_as_one_graph(make_micro_bundle, fixed_timings, tmp_path):
    """``torch.compile(fullgraph=True)`` fails on any graph break: ``.item()``, ``nonzero``,
    Python branching on a tensor's value (the eager backend: tracing only, seconds)."""
    bundle = _bundle(make_micro_bundle, tmp_path)
    rows = SharedEngine(bundle, timings=fixed_timings, graphs="on").graphed.rows
    capacities = rows.capacities(3)
    traced = torch.compile(lambda images: rows.forward(images, capacities), fullgraph=True, backend="eager")
    images = _images()
    with torch.no_grad():
        outputs, counts = traced(images)
        expected, expected_counts = rows.forward(images, capacities)
    assert torch.equal(counts, expected_counts) and _max_diff(outputs, expected) <= 1e-6


def test_modes(make_micro_bundle, fixed_timings, tmp_path):
    bundle = _bundle(make_micro_bundle, tmp_path)
    assert SharedEngine(bundle, timings=fixed_timings).graphed is None  # default: off
    assert SharedEngine(bundle, timings=fixed_timings, graphs="auto").graphed is None  # no CUDA here
    if not torch.cuda.is_available():
        assert SharedEngine(bundle, timings=fixed_timings, graphs="on").graphed.capture is False
    with pytest.raises(MtlCompressError, match="graphs mode"):
        SharedEngine(bundle, timings=fixed_timings, graphs="sometimes")
    bundle.tasks["depth"].activation.granularity = "element"
    with pytest.raises(MtlCompressError, match="token granularity"):
        SharedEngine(bundle, timings=fixed_timings, graphs="on")
    assert SharedEngine(bundle, timings=fixed_timings, graphs="auto").graphed is None
