"""A non-square model (32 px high, 48 px wide, patch 16: a 2x3 grid) runs the same on
the shared engine as on the dense reference, for images and for video, on every path
that reads the grid (heads, incremental patch embedding and head, token rows); and a
photo of any aspect run through it gives maps at the photo's size."""

from __future__ import annotations

import pytest
import torch

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.models.activation_sparsity import ActivationSparsity
from mtlcompress.models.backbone import BackboneConfig
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.models.taps import record_linear_inputs, shared_linear_names
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.runtime.shared_engine import SharedEngine

WIDE = BackboneConfig(arch="wide", img_size=(32, 48), patch_size=16, embed_dim=32, depth=2, num_heads=2)
LAYERS = shared_linear_names(WIDE.depth)
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wide_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wide")
    torch.manual_seed(0)
    base_info = CheckpointInfo(task="semseg", backbone=WIDE, out_channels=3, head_hidden=8, num_classes=3)
    base = build_model(base_info)
    save_checkpoint(base, base_info, folder / "semseg.safetensors")
    paths = []
    for task, channels in (("depth", 1), ("normals", 3)):
        info = CheckpointInfo(task=task, backbone=WIDE, out_channels=channels, head_hidden=8)
        model = build_model(info)
        model.backbone.load_state_dict({k: v + (torch.rand(v.shape) < 0.05) * torch.randn(v.shape) * 0.3
                                        for k, v in base.backbone.state_dict().items()})
        save_checkpoint(model, info, folder / f"{task}.safetensors")
        paths.append(folder / f"{task}.safetensors")
    return folder / "semseg.safetensors", paths


def _frames(count: int) -> list[torch.Tensor]:
    """A bright bar moving right over a still background: a few tokens change per frame."""
    background = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    frames = []
    for k in range(count):
        frame = background.clone()
        frame[..., 3:20, 6 * k:6 * k + 9] = 1.0
        frames.append(frame)
    return frames


def _sparse_bundle(sources, granularity: str) -> Bundle:
    """Thresholds at the median of the measured deltas: half the rows or entries change."""
    bundle = Bundle.from_checkpoints(*sources)
    images, frames = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(2)), _frames(2)
    recorded = {}
    for task in bundle.tasks:
        model = bundle.task_model(task)
        for key, inputs in (("img", images), ("f0", frames[0]), ("f1", frames[1])):
            with torch.no_grad(), record_linear_inputs(model.backbone, LAYERS, detach=True) as rec:
                model(inputs)
            recorded[task, key] = dict(rec)

    def taus(deltas: dict[str, torch.Tensor]) -> dict[str, float]:
        size = (lambda d: d.norm(dim=-1)) if granularity == "token" else (lambda d: d.abs())
        return {k: float(size(d).flatten().quantile(0.5)) for k, d in deltas.items()}

    for task in bundle.tasks:
        task_delta = {k: recorded[task, "img"][k] - recorded[bundle.base_task, "img"][k] for k in LAYERS}
        frame_delta = {k: recorded[task, "f1"][k] - recorded[task, "f0"][k] for k in LAYERS}
        bundle.tasks[task].activation = ActivationSparsity(
            granularity=granularity, task_thresholds={} if task == bundle.base_task else taus(task_delta),
            temporal_thresholds=taus(frame_delta))
    return bundle


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[t] - b[t]).abs().max()) for t in a)


@pytest.mark.parametrize("granularity", ["token", "element"])
def test_shared_and_dense_engines_agree_on_a_non_square_model(wide_checkpoints, fixed_timings, granularity):
    bundle = _sparse_bundle(wide_checkpoints, granularity)
    assert bundle.backbone.grid_size == (2, 3) and bundle.backbone.num_tokens == 7
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    shared_engine, dense_engine = SharedEngine(bundle, timings=fixed_timings), DenseEngine(bundle)
    shared, dense = shared_engine.predict(images), dense_engine.predict(images)
    assert all(out.shape[-2:] == (32, 48) for out in shared.values())
    assert _max_diff(shared, dense) <= TOL
    policy = KeyframePolicy(keyframe_every=4, max_drift=1e9)
    frames = _frames(5)
    for ref, got in zip(dense_engine.stream(frames, policy), shared_engine.stream(frames, policy)):
        assert got.keyframe == ref.keyframe and _max_diff(got.outputs, ref.outputs) <= TOL
    # The unsparsified bundle is each checkpoint exactly, at (H, W).
    exact = Bundle.from_checkpoints(*wide_checkpoints)
    with torch.no_grad():
        expected = {t: exact.task_model(t)(images) for t in exact.tasks}
    assert _max_diff(SharedEngine(exact, timings=fixed_timings).predict(images), expected) <= TOL


def test_square_images_are_refused_by_a_non_square_bundle(wide_checkpoints, fixed_timings):
    from mtlcompress.errors import MtlCompressError

    engine = SharedEngine(Bundle.from_checkpoints(*wide_checkpoints), timings=fixed_timings)
    with pytest.raises(MtlCompressError, match=r"images must be \[B, 3, 32, 48\]"):
        engine.predict(torch.rand(1, 3, 48, 32))


@pytest.mark.parametrize("photo_size", [(451, 300), (300, 451)])  # PIL sizes: width x height
def test_a_photo_of_any_aspect_gives_maps_at_its_own_size(wide_checkpoints, tmp_path, photo_size):
    """The documented policy: the photo is resized (not letterboxed) to the model's 48x32
    (width x height) and every map is resized back to the photo's size."""
    import numpy as np
    from PIL import Image

    from mtlcompress.report.media import run_on_media

    width, height = photo_size
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(
        tmp_path / "photo.png")
    summary = run_on_media(Bundle.from_checkpoints(*wide_checkpoints), [tmp_path / "photo.png"], tmp_path / "out",
                           engine="dense", save_raw=True)
    assert any(f"resized {width}x{height} to 48x32" in w for w in summary["warnings"])
    for task, channels in (("semseg", 3), ("depth", 1), ("normals", 3)):
        with Image.open(tmp_path / "out" / "photo" / f"{task}.png") as png:
            assert png.size == (width, height)
        assert np.load(tmp_path / "out" / "photo" / f"{task}.npy").shape == (channels, height, width)
