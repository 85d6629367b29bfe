"""``load(..., precision=)`` / ``BundleRunner(precision=)``: the engines compute in the
asked dtype, outputs come back as fp32, and shared and dense engines agree (fp32: 1e-4;
bf16 and fp16: the looser tolerances documented in docs/formats.md)."""

from __future__ import annotations

import pytest
import torch

from mtlcompress.errors import MtlCompressError
from mtlcompress.runtime.engines import make_engine
from mtlcompress.runtime.runner import BundleRunner, resolve_precision
from mtlcompress.runtime.shared_engine import SharedEngine

# Largest |shared - dense| as a fraction of the largest |output| (docs/formats.md).
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 5e-3}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def runners(bundle, precision, fixed_timings) -> tuple[BundleRunner, BundleRunner]:
    dense = BundleRunner(bundle, engine="dense", precision=precision)
    shared = BundleRunner(bundle, engine="shared", precision=precision)
    shared.engine = SharedEngine(shared.engine.bundle, timings=fixed_timings)  # no calibration in tests
    return shared, dense


def relative_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[t] - b[t]).abs().max() / b[t].abs().max()) for t in b)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_shared_and_dense_agree_in_every_precision(make_micro_bundle, fixed_timings, precision):
    bundle = make_micro_bundle((("depth", 1), ("normals", 3)))
    shared, dense = runners(bundle, precision, fixed_timings)
    assert shared.precision == dense.precision == precision
    assert {w.dtype for w in shared.engine.bundle.base_weights.values()} == {DTYPES[precision]}
    assert next(dense.engine.models["depth"].parameters()).dtype == DTYPES[precision]
    got, ref = shared.predict(images(2)), dense.predict(images(2))
    assert all(out.dtype == torch.float32 for out in [*got.values(), *ref.values()])
    assert relative_gap(got, ref) <= TOLERANCE[precision]
    clip = [(images(1) + 0.02 * i * images(1, seed=i)).clamp(0, 1) for i in range(4)]
    for a, b in zip(shared.stream(clip, keyframe_every=3), dense.stream(clip, keyframe_every=3)):
        assert a.keyframe == b.keyframe
        assert relative_gap(a.outputs, b.outputs) <= TOLERANCE[precision]


def test_half_precision_stays_near_fp32(make_micro_bundle, fixed_timings):
    bundle = make_micro_bundle()
    exact = BundleRunner(bundle, engine="dense", precision="fp32").predict(images(2))
    for precision in ("bf16", "fp16"):
        half = BundleRunner(bundle, engine="dense", precision=precision).predict(images(2))
        gap = relative_gap(half, exact)
        assert 0 < gap <= 5e-2, precision  # really computed in 16 bits, and close


def test_auto_is_fp32_on_cpu_and_the_stored_dtype_on_a_gpu(make_micro_bundle):
    bundle = make_micro_bundle()
    half = bundle.cast(torch.bfloat16)
    assert resolve_precision("auto", half, "cpu") == "fp32"
    assert resolve_precision("auto", half, "cuda") == "bf16"
    assert resolve_precision("auto", bundle.cast(torch.float16), "cuda:0") == "fp16"
    assert resolve_precision("auto", bundle, "cuda") == "fp32"
    assert resolve_precision("bf16", bundle, "cpu") == "bf16"
    assert BundleRunner(half, engine="dense").predict(images(1))["depth"].dtype == torch.float32
    with pytest.raises(MtlCompressError, match="unknown precision 'fp8'"):
        BundleRunner(bundle, precision="fp8")


def test_engines_read_a_16_bit_bundle_in_fp32_by_default(make_micro_bundle):
    # inspect, check and the demo hand fp32 images to make_engine, whatever the file stores.
    half = make_micro_bundle().cast(torch.bfloat16)
    engine = make_engine(half, "dense")
    assert next(engine.models["depth"].parameters()).dtype == torch.float32
    out = engine.predict(images(1))["depth"]
    assert out.dtype == torch.float32
    assert torch.allclose(out, BundleRunner(half, engine="dense", precision="fp32").predict(images(1))["depth"])
