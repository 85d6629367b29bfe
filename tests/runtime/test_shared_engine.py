"""The shared engine computes what the dense reference computes, on every path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.models.taps import record_linear_inputs, shared_linear_names
from mtlcompress.models.activation_sparsity import ActivationSparsity
from mtlcompress.runtime import lockstep, row_state
from mtlcompress.runtime.layer_plan import LayerPlanner
from mtlcompress.runtime.cost_model import KernelTimings, LinearCost, choose_stacking
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.results import DensityStats
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.runtime.shared_engine import SharedEngine

TOL = 1e-4
CONFIG = PRESETS["micro"]
LAYERS = shared_linear_names(CONFIG.depth)
EXACT_LAYER = "blocks.0.mlp.fc2"        # no threshold anywhere: must run exactly
UNCHANGED_WEIGHT = "blocks.1.attn.proj.weight"  # no delta in any sub-task
SUB_TASKS = {"depth": 1, "normals": 3, "edges": 1}
CHEAP, DEAR = LinearCost(0.0, 1e-15), LinearCost(1.0, 1.0)


def _timings(path: str, sparse_weight: LinearCost = CHEAP) -> KernelTimings:
    """Timings that make ``path`` always win (with the CSR kernel for ``dW x_0``, unless
    ``sparse_weight`` makes it dear)."""
    costs = {name: (CHEAP if name == path else DEAR) for name in ("dense", "token", "element")}
    return KernelTimings(**costs, sparse_weight=sparse_weight, device="cpu", dtype="float32", device_name="test")


def _checkpoints(tmp_path, config=CONFIG) -> tuple:
    """A semseg base and sub-tasks = base + ~5% random delta (depth also changes the embedding)."""
    torch.manual_seed(0)
    base_info = CheckpointInfo(task="semseg", backbone=config, out_channels=4, head_hidden=16, num_classes=4)
    base = build_model(base_info)
    save_checkpoint(base, base_info, tmp_path / "semseg.safetensors")
    paths = []
    for task, channels in SUB_TASKS.items():
        info = CheckpointInfo(task=task, backbone=config, out_channels=channels, head_hidden=16)
        model = build_model(info)
        state = base.backbone.state_dict()
        for name, weight in state.items():
            if name == UNCHANGED_WEIGHT or (name.startswith("patch_embed") and task != "depth"):
                continue
            mask = torch.rand(weight.shape) < 0.05
            state[name] = weight + mask * torch.randn(weight.shape) * 0.3
        model.backbone.load_state_dict(state)
        path = tmp_path / f"{task}.safetensors"
        save_checkpoint(model, info, path)
        paths.append(path)
    return tmp_path / "semseg.safetensors", paths


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return _checkpoints(tmp_path_factory.mktemp("ckpt"))


def _frames(count: int = 7, batch: int = 1, noise: float = 0.01) -> list[torch.Tensor]:
    """A moving bright square over a background (with growing pixel noise unless
    ``noise=0``, a static camera): some tokens change per frame."""
    gen = torch.Generator().manual_seed(1)
    background = torch.rand(batch, 3, *CONFIG.img_size, generator=gen)
    frames = []
    for k in range(count):
        frame = background + noise * k * torch.randn(background.shape, generator=gen)
        frame[..., 4 * k:4 * k + 10, 2:12] = 1.0
        frames.append(frame.clamp(0, 1))
    return frames


def _moved_patches(frame: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """``[B, grid, grid]``: the patches with any pixel that differs between two frames."""
    patch = CONFIG.patch_size
    differs = (frame - previous).abs().amax(dim=1)
    return differs.unfold(1, patch, patch).unfold(2, patch, patch).amax(dim=(-1, -2)).ne(0)


def _quantile_taus(deltas: dict[str, torch.Tensor], granularity: str, q: float) -> dict[str, float]:
    def size(d: torch.Tensor) -> torch.Tensor:
        return d.norm(dim=-1) / d.shape[-1] ** 0.5 if granularity == "token" else d.abs()
    return {k: float(size(d).flatten().quantile(q)) for k, d in deltas.items() if k != EXACT_LAYER}


def _sparse_bundle(sources, granularity: str, temporal: bool = True) -> Bundle:
    """Thresholds at quantiles of the measured deltas, so a good share of tokens changes."""
    bundle = Bundle.from_checkpoints(*sources)
    images = torch.rand(2, 3, *CONFIG.img_size, generator=torch.Generator().manual_seed(2))
    frames = _frames(2)
    recorded = {}
    for task in bundle.tasks:
        model = bundle.task_model(task)
        for key, inputs in (("img", images), ("f0", frames[0]), ("f1", frames[1])):
            with torch.no_grad(), record_linear_inputs(model.backbone, LAYERS, detach=True) as rec:
                model(inputs)
            recorded[task, key] = dict(rec)
    q = 0.6 if granularity == "token" else 0.8
    for task in bundle.tasks:
        task_delta = {k: recorded[task, "img"][k] - recorded[bundle.base_task, "img"][k] for k in LAYERS}
        frame_delta = {k: recorded[task, "f1"][k] - recorded[task, "f0"][k] for k in LAYERS}
        bundle.tasks[task].activation = ActivationSparsity(
            granularity=granularity,
            task_thresholds={} if task == bundle.base_task else _quantile_taus(task_delta, granularity, q),
            temporal_thresholds=_quantile_taus(frame_delta, granularity, q) if temporal else {})
    return bundle


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[t] - b[t]).abs().max()) for t in a)


def test_unsparsified_bundle_reproduces_each_checkpoint(sources):
    bundle = Bundle.from_checkpoints(*sources)
    engine = SharedEngine(bundle, timings=_timings("token"))
    images = torch.rand(2, 3, *CONFIG.img_size)
    outputs = engine.predict(images)
    with torch.no_grad():
        expected = {t: bundle.task_model(t)(images) for t in bundle.tasks}
    assert _max_diff(outputs, expected) <= TOL
    assert set(engine.layer_paths) == set(SUB_TASKS)
    assert {p for paths in engine.layer_paths.values() for p in paths.values()} == {"exact"}


@pytest.mark.parametrize("granularity", ["token", "element"])
@pytest.mark.parametrize("path", ["token", "element", "dense"])
def test_predict_matches_dense_engine(sources, granularity, path):
    bundle = _sparse_bundle(sources, granularity, temporal=False)
    images = torch.rand(3, 3, *CONFIG.img_size, generator=torch.Generator().manual_seed(5))
    dense = DenseEngine(bundle)
    shared = SharedEngine(bundle, timings=_timings(path))
    assert _max_diff(shared.predict(images), dense.predict(images)) <= TOL
    for task in SUB_TASKS:
        paths = shared.layer_paths[task]
        assert paths[EXACT_LAYER] == "exact"
        assert {p for name, p in paths.items() if name != EXACT_LAYER} == {path}
    # Same measured densities, and the thresholds really sparsify (neither all nor nothing).
    dense_kept, shared_kept = dense.stats.mean(), shared.stats.mean()
    assert dense_kept.keys() == shared_kept.keys() == set(SUB_TASKS)
    for task, layers in dense_kept.items():
        assert layers.keys() == shared_kept[task].keys()
        assert all(abs(layers[k] - shared_kept[task][k]) < 1e-6 for k in layers)
        assert 0.05 < sum(layers.values()) / len(layers) < 0.8


def _force_paths(monkeypatch, chosen: dict[str, str]) -> None:
    """Make every sub-task take ``chosen[task]`` on every thresholded layer (the cost
    model is still asked, so ``layer_paths`` and densities are kept as usual)."""
    choose = LayerPlanner.choose

    def forced(self, task, name, *args, **kwargs):
        choose(self, task, name, *args, **kwargs)
        self.layer_paths[task.name][name] = chosen[task.name]
        return chosen[task.name]
    monkeypatch.setattr(LayerPlanner, "choose", forced)


@pytest.mark.parametrize("granularity", ["token", "element"])
@pytest.mark.parametrize("paths", [("token", "dense", "element"), ("dense", "token", "token"),
                                   ("element", "token", "dense")])
def test_sub_tasks_on_different_paths_in_one_layer(sources, granularity, paths, monkeypatch):
    """Each sub-task picks its own path per layer. The stacked GEMM and the stacked
    ``dW`` product must hand each token-path task its own rows and its own delta's
    columns, whatever the tasks before it chose."""
    bundle = _sparse_bundle(sources, granularity, temporal=False)
    chosen = dict(zip(SUB_TASKS, paths))
    _force_paths(monkeypatch, chosen)
    images = torch.rand(2, 3, *CONFIG.img_size, generator=torch.Generator().manual_seed(6))
    shared = SharedEngine(bundle, timings=_timings("token"))
    assert _max_diff(shared.predict(images), DenseEngine(bundle).predict(images)) <= TOL
    for task, path in chosen.items():
        assert {p for name, p in shared.layer_paths[task].items() if name != EXACT_LAYER} == {path}


@pytest.mark.parametrize("path", ["token", "element"])
def test_weight_deltas_priced_dense_stay_out_of_the_stacked_product(sources, path, monkeypatch):
    """Where a dense ``dW`` GEMM is priced lower than the CSR product, no weight delta
    joins the stacked product and each sub-task adds its own ``dW x``; the results stay
    the reference's."""
    bundle = _sparse_bundle(sources, "token", temporal=False)
    _force_paths(monkeypatch, dict.fromkeys(SUB_TASKS, path))
    images = torch.rand(2, 3, *CONFIG.img_size, generator=torch.Generator().manual_seed(7))
    # Per multiply-add, the CSR product dearer than the (already dear) dense GEMM.
    shared = SharedEngine(bundle, timings=_timings("token", sparse_weight=LinearCost(1.0, 1e6)))
    assert _max_diff(shared.predict(images), DenseEngine(bundle).predict(images)) <= TOL
    layers = shared._task_rows._linears.values()
    assert layers and all(layer.subs[j].dw is None for layer in layers for j in layer.members)  # bias deltas only


def test_sparse_weight_deltas_are_int32_csr_of_the_dense_delta(sources):
    """The CPU sparse kernel takes int32 indices (int64 ones are converted per call)."""
    engine = SharedEngine(_sparse_bundle(sources, "token"), timings=_timings("token"))
    layers = [layer for task in engine._subs for layer in task.layers.values() if layer.dw is not None]
    assert layers
    for layer in layers:
        csr = layer.dw_sparse
        assert csr.layout == torch.sparse_csr and csr.crow_indices().dtype == csr.col_indices().dtype == torch.int32
        assert torch.equal(csr.to_dense(), layer.dw)


def test_task_subset_without_base(sources):
    bundle = _sparse_bundle(sources, "token", temporal=False)
    images = torch.rand(1, 3, *CONFIG.img_size)
    shared = SharedEngine(bundle, tasks=["normals", "depth"], timings=_timings("token"))
    outputs = shared.predict(images)
    assert list(outputs) == ["depth", "normals"]
    assert _max_diff(outputs, DenseEngine(bundle, tasks=["normals", "depth"]).predict(images)) <= TOL


def _drift_policy(bundle: Bundle, frames: list[torch.Tensor]) -> KeyframePolicy:
    """A max_drift that the reference crosses mid-stream, so a drift keyframe happens."""
    free = [r.drift for r in DenseEngine(bundle).stream(frames, KeyframePolicy(keyframe_every=4, max_drift=1e9))
            if not r.keyframe]
    return KeyframePolicy(keyframe_every=4, max_drift=sorted(free)[len(free) // 2] * 0.999)


@pytest.mark.parametrize("granularity,path", [("token", "token"), ("token", "dense"), ("element", "element"),
                                              ("element", "token")])
def test_stream_matches_dense_engine(sources, granularity, path, monkeypatch):
    bundle = _sparse_bundle(sources, granularity)
    frames = _frames(8, batch=2)
    policy = _drift_policy(bundle, frames)
    dense_engine = DenseEngine(bundle)
    dense = list(dense_engine.stream(frames, policy))
    stacked = []  # the lockstep row path's choices: one W_0 GEMM for all tasks, or one per task

    def spy(*args, **kwargs):
        stacked.append(choose_stacking(*args, **kwargs))
        return stacked[-1]
    monkeypatch.setattr(lockstep, "choose_stacking", spy)
    shared_engine = SharedEngine(bundle, timings=_timings(path))
    shared = list(shared_engine.stream(frames, policy))
    keyframes = [r.keyframe for r in dense]
    assert [r.keyframe for r in shared] == keyframes
    assert keyframes[0] and not all(keyframes)
    assert any(k and i % 4 for i, k in enumerate(keyframes)), "no drift-triggered keyframe"
    for ref, got in zip(dense, shared):
        assert got.index == ref.index
        assert got.drift == pytest.approx(ref.drift, rel=1e-4, abs=1e-6)
        assert _max_diff(got.outputs, ref.outputs) <= TOL
    # Dear token GEMMs ("dense" timings) make the shared-weight GEMM pay, cheap ones do not.
    if granularity == "token":
        assert stacked and all(stacked) if path == "dense" else not any(stacked)
    # Token granularity always runs row by row in time (whatever the task-domain path).
    assert shared_engine.layer_paths["depth/temporal"]["blocks.1.mlp.fc1"] == (
        "token" if granularity == "token" else path)
    assert set(shared_engine.stats.mean()) == set(dense_engine.stats.mean()) == {
        f"{t}/temporal" for t in bundle.tasks}  # keyframes run exactly: no task-domain thresholds
    for key, layers in dense_engine.stats.mean().items():
        assert shared_engine.stats.mean()[key] == pytest.approx(layers, abs=1e-6)


def test_static_camera_stream_skips_unchanged_rows_exactly(sources):
    """Without pixel noise most patches are bit-identical between frames, so the shared
    engine recomputes norms, GELU and residuals on the moving square's rows only; the
    results must still equal the reference's full recomputation."""
    bundle = _sparse_bundle(sources, "token")
    frames = _frames(6, batch=2, noise=0.0)
    policy = KeyframePolicy(keyframe_every=6, max_drift=1e9)
    moved = [_moved_patches(a, b) for a, b in zip(frames[1:], frames[:-1])]
    assert all(0 < float(m.float().mean()) < 0.5 for m in moved), "frames must move some patches, not most"
    dense_engine, shared_engine = DenseEngine(bundle), SharedEngine(bundle, timings=_timings("token"))
    dense = list(dense_engine.stream(frames, policy))
    shared = list(shared_engine.stream(frames, policy))
    assert [r.keyframe for r in shared] == [r.keyframe for r in dense] == [True] + [False] * 5
    for ref, got in zip(dense, shared):
        assert got.drift == pytest.approx(ref.drift, rel=1e-4, abs=1e-6)
        assert _max_diff(got.outputs, ref.outputs) <= TOL
    for key, layers in dense_engine.stats.mean().items():
        assert shared_engine.stats.mean()[key] == pytest.approx(layers, abs=1e-6)


def test_keyframes_are_each_task_exactly_and_the_next_frame_only_moves_changed_rows(sources):
    """A keyframe resets every approximation: each task's output is its own model's.
    The frame after it then starts from exact references, so on a static camera it
    propagates the moving square's rows only, like any later frame."""
    bundle = _sparse_bundle(sources, "token")
    frames = _frames(2, batch=2, noise=0.0)
    engine = SharedEngine(bundle, timings=_timings("token"))
    keyframe, after = list(engine.stream(frames, KeyframePolicy(keyframe_every=8, max_drift=1e9)))
    with torch.inference_mode():
        exact = {t: bundle.task_model(t)(frames[0]) for t in bundle.tasks}
    assert keyframe.keyframe and _max_diff(keyframe.outputs, exact) <= TOL
    assert not after.keyframe
    moved = float(_moved_patches(frames[1], frames[0]).float().mean()) * CONFIG.num_patches / CONFIG.num_tokens
    first = [engine.stats.mean()[f"{task}/temporal"]["blocks.0.attn.qkv"] for task in bundle.tasks]
    assert 0 < max(first) <= moved + 1e-6 and moved < 0.5  # the moved patches (and not the class token) at most


def test_keyframes_write_over_the_state_they_replace(sources):
    """A keyframe reuses the memory of the rows it replaces (the stream's last period's,
    or the engine's last stream's), with the results of a fresh engine; a batch of
    another shape gets new memory."""
    bundle = _sparse_bundle(sources, "token")
    frames = _frames(6, batch=2)
    policy = KeyframePolicy(keyframe_every=3, max_drift=1e9)
    engine = SharedEngine(bundle, timings=_timings("token"))

    def buffers() -> set[int]:  # (attention outputs are new tensors on every frame)
        return {t.data_ptr() for key, t in row_state.named_tensors(engine._spare_rows) if not key.endswith("/attn")}
    first = list(engine.stream(frames, policy))
    memory = buffers()
    again = list(engine.stream(frames, policy))
    assert buffers() == memory and sum(r.keyframe for r in again) == 2
    single = [f[:1] for f in frames]
    resized = list(engine.stream(single, policy))
    assert not buffers() & memory
    fresh = list(SharedEngine(bundle, timings=_timings("token")).stream(single, policy))
    for got, ref in [*zip(again, first), *zip(resized, fresh)]:
        assert got.drift == pytest.approx(ref.drift, rel=1e-4, abs=1e-6)
        assert _max_diff(got.outputs, ref.outputs) <= TOL


def test_layer_scale_blocks_stream_like_the_dense_engine(tmp_path):
    """LayerScale gammas differ per task (the random deltas touch them): the lockstep
    row path must scale each row with its own task's gamma."""
    bundle = _sparse_bundle(_checkpoints(tmp_path, dataclasses.replace(CONFIG, init_values=0.5)), "token")
    assert bundle.backbone.init_values == 0.5
    frames = _frames(5, batch=2)
    policy = KeyframePolicy(keyframe_every=8, max_drift=1e9)
    dense = list(DenseEngine(bundle).stream(frames, policy))
    shared = list(SharedEngine(bundle, timings=_timings("token")).stream(frames, policy))
    for ref, got in zip(dense, shared):
        assert _max_diff(got.outputs, ref.outputs) <= TOL


def test_stream_without_temporal_thresholds_is_exact(sources):
    bundle = _sparse_bundle(sources, "token", temporal=False)
    frames = _frames(3)
    shared = list(SharedEngine(bundle, timings=_timings("token")).stream(frames, KeyframePolicy(keyframe_every=8)))
    dense = list(DenseEngine(bundle).stream(frames, KeyframePolicy(keyframe_every=8)))
    assert [r.keyframe for r in shared] == [True, False, False]
    for ref, got in zip(dense, shared):
        assert _max_diff(got.outputs, ref.outputs) <= TOL and got.drift == 0.0


def test_profile_breaks_time_down_by_layer_kind_and_role(sources):
    bundle = _sparse_bundle(sources, "token", temporal=False)
    engine = SharedEngine(bundle, timings=_timings("token"), profile=True)
    engine.predict(torch.rand(1, 3, *CONFIG.img_size))
    # The blocks run for every task at once; embeddings and heads per task.
    assert set(engine.profile_seconds["all tasks"]) == {"qkv", "attention", "proj", "fc1", "fc2", "norm_act"}
    assert set(engine.profile_seconds["base"]) == {"embed", "head"}
    assert set(engine.profile_seconds["sub-tasks"]) == {"embed", "head"}  # depth has its own patch embedding
    assert all(v > 0 for role in engine.profile_seconds.values() for v in role.values())
    assert not SharedEngine(bundle, timings=_timings("token")).profile_seconds


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("granularity", ["token", "element"])
def test_cuda_matches_the_dense_engine(sources, granularity):
    bundle = _sparse_bundle(sources, granularity)
    shared = SharedEngine(bundle, device="cuda", timings=_timings("token"))
    dense = DenseEngine(bundle, device="cuda")
    images = torch.rand(2, 3, *CONFIG.img_size)
    assert _max_diff(shared.predict(images), dense.predict(images)) <= TOL
    policy = KeyframePolicy(keyframe_every=4)
    for s, d in zip(shared.stream(_frames(), policy), dense.stream(_frames(), policy)):
        assert s.keyframe == d.keyframe
        assert _max_diff(s.outputs, d.outputs) <= TOL


def test_density_stats_average_over_calls_in_constant_memory():
    stats = DensityStats()
    for step in range(1000):
        stats.add("depth", {"blocks.0.attn.qkv": [0.1, 0.3]})
        stats.add("depth/temporal", {"blocks.0.attn.qkv": [step / 999]})
    assert stats.mean() == {"depth": {"blocks.0.attn.qkv": pytest.approx(0.2)},
                            "depth/temporal": {"blocks.0.attn.qkv": pytest.approx(0.5)}}
    assert stats.totals["depth"]["blocks.0.attn.qkv"] == [pytest.approx(400.0), 2000]  # a sum and a count, no list
    stats.reset()
    assert stats.mean() == {}


@pytest.mark.parametrize("variant", [{"qk_norm": True}, {"norm_layer": "rmsnorm"}])
def test_blocks_the_engine_does_not_reimplement_are_refused(variant):
    """The engine re-implements plain pre-norm ViT blocks (LayerNorm, no qk-norm); other
    blocks must fail with a message pointing at the dense engine, not compute wrongly."""
    from timm.models.vision_transformer import VisionTransformer

    from mtlcompress.errors import MtlCompressError
    from mtlcompress.runtime.layer_plan import check_supported

    plain = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    check_supported(VisionTransformer(**plain))
    with pytest.raises(MtlCompressError, match="--engine dense"):
        check_supported(VisionTransformer(**plain, **variant))
