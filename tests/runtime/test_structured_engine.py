"""Structured weight deltas (blocks, low rank) through the bundle and both engines: the
shared engine runs them as dense GEMMs on blocks or factors and agrees with the dense
reference to 1e-4, on images and video frames."""

from __future__ import annotations

import pytest
import torch

from mtlcompress.bundle.format import load_bundle, save_bundle
from mtlcompress.runtime import structured_kernels
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.runtime.shared_engine import SharedEngine
from mtlcompress.sparsify.structures import structured_deltas

TOL = 1e-4
STRUCTURES = [("block", "4x4", "block4x4", structured_kernels.BlockDelta),
              ("block", "1x16", "block1x16", structured_kernels.BlockDelta),
              ("lowrank", "8x8", "lowrank", structured_kernels.LowRankDelta)]


def _structured_bundle(make_micro_bundle, tmp_path, structure: str, block: str):
    bundle = make_micro_bundle((("depth", 1), ("normals", 3)))
    gen = torch.Generator().manual_seed(3)
    for name in bundle.sub_tasks:
        full = {k: torch.randn(w.shape, generator=gen) * 0.05 for k, w in bundle.base_weights.items()
                if k.startswith("blocks.")}
        bundle.tasks[name].delta, _ = structured_deltas(full, 0.2, structure, block)
    path = tmp_path / "b.safetensors"
    save_bundle(bundle, path)  # through the file: the layouts are what the engines see
    return load_bundle(path)


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[t] - b[t]).abs().max()) for t in a)


@pytest.mark.parametrize("structure,block,layout,kind", STRUCTURES)
def test_images_agree_with_the_dense_engine(make_micro_bundle, fixed_timings, tmp_path, monkeypatch,
                                            structure, block, layout, kind):
    bundle = _structured_bundle(make_micro_bundle, tmp_path, structure, block)
    calls = []
    original = kind.add_matmul_
    monkeypatch.setattr(kind, "add_matmul_", lambda self, out, x: calls.append(1) or original(self, out, x))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    shared = SharedEngine(bundle, timings=fixed_timings)
    assert _max_diff(shared.predict(images), DenseEngine(bundle).predict(images)) <= TOL
    assert calls, "the structured kernel never ran"
    paths = {p for task in bundle.sub_tasks for p in shared.layer_paths[task].values()}
    assert paths == {"token"}


@pytest.mark.parametrize("structure,block,layout,kind", STRUCTURES[::2])
def test_frames_agree_with_the_dense_engine(make_micro_bundle, fixed_timings, tmp_path, structure, block, layout,
                                            kind):
    bundle = _structured_bundle(make_micro_bundle, tmp_path, structure, block)
    gen = torch.Generator().manual_seed(1)
    frames = [torch.rand(1, 3, 32, 32, generator=gen)]
    for _ in range(4):
        frames.append(frames[-1] + 0.05 * (torch.rand(1, 3, 32, 32, generator=gen) < 0.1))
    policy = KeyframePolicy(keyframe_every=3, max_drift=1e9)
    dense = list(DenseEngine(bundle).stream(frames, policy))
    shared = list(SharedEngine(bundle, timings=fixed_timings).stream(frames, policy))
    for ref, got in zip(dense, shared):
        assert _max_diff(got.outputs, ref.outputs) <= TOL


@pytest.mark.parametrize("structure,block,layout,kind", STRUCTURES)
def test_the_bundle_stores_the_structure(make_micro_bundle, tmp_path, structure, block, layout, kind):
    bundle = make_micro_bundle((("depth", 1),))
    full = {k: torch.randn(w.shape) * 0.05 for k, w in bundle.base_weights.items() if k.startswith("blocks.")}
    bundle.tasks["depth"].delta, _ = structured_deltas(full, 0.2, structure, block)
    stored = save_bundle(bundle, tmp_path / "b.safetensors")["tasks"]["depth"]["delta"]
    bundle = load_bundle(tmp_path / "b.safetensors")
    assert {d["layout"] for n, d in stored.items() if n.endswith(("qkv.weight", "fc1.weight"))} == {layout}
    layer = "blocks.0.mlp.fc1.weight"
    operand = structured_kernels.structured_operand(bundle.tasks["depth"].delta[layer])
    assert isinstance(operand, kind)
    assert torch.allclose(operand.dense(), bundle.tasks["depth"].delta[layer], atol=1e-6)
