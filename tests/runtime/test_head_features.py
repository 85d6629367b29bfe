"""Heads other than the dense one in both engines: a multi-level head reads several
blocks' outputs, each the task's own (base plus delta) tokens; linear and user heads read
the last block. The shared engine must agree with the dense reference on images and
video, on every granularity."""

from __future__ import annotations

import textwrap

import pytest
import torch

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.errors import CheckpointError
from mtlcompress.models.activation_sparsity import ActivationSparsity
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.models.head_module import HEAD_MODULES_ENV
from mtlcompress.models.single_task import normalize_images
from mtlcompress.models.taps import record_block_outputs, record_linear_inputs, shared_linear_names
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.keyframes import KeyframePolicy
from mtlcompress.runtime.shared_engine import SharedEngine

TOL = 1e-4
CONFIG = PRESETS["micro"]
LAYERS = shared_linear_names(CONFIG.depth)
USER_HEADS = textwrap.dedent('''
    import torch.nn as nn

    class TokenMLP(nn.Module):
        """A per-token MLP to out_channels * patch**2 pixels (no pixel shuffle: a reshape)."""
        def __init__(self, embed_dim, out_channels, patch_size):
            super().__init__()
            self.out, self.patch = out_channels, patch_size
            self.mlp = nn.Sequential(nn.Linear(embed_dim, 16), nn.GELU(), nn.Linear(16, out_channels * patch_size ** 2))

        def forward(self, tokens, grid):
            rows, cols = grid
            b, p = tokens.shape[0], self.patch
            x = self.mlp(tokens).view(b, rows, cols, self.out, p, p)
            return x.permute(0, 3, 1, 4, 2, 5).reshape(b, self.out, rows * p, cols * p)

    def token_mlp(embed_dim, out_channels, patch_size):
        return TokenMLP(embed_dim, out_channels, patch_size)
''')


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def user_heads(tmp_path, monkeypatch):
    """A head module installed on this machine (on sys.path) and allowed."""
    (tmp_path / "my_heads.py").write_text(USER_HEADS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(HEAD_MODULES_ENV, "my_heads")
    return "my_heads:token_mlp"


@pytest.fixture
def sources(tmp_path, user_heads):
    """A dense-head semseg base; sub-tasks with a multi-level (depth), linear (normals)
    and user (edges) head, each the base plus a ~5% random delta."""
    torch.manual_seed(0)
    base_info = CheckpointInfo(task="semseg", backbone=CONFIG, out_channels=4, head_hidden=16, num_classes=4)
    base = build_model(base_info)
    save_checkpoint(base, base_info, tmp_path / "semseg.safetensors")
    heads = {"depth": dict(head_type="multilevel", head_layers=(1, 2), out_channels=1),
             "normals": dict(head_type="linear", out_channels=3),
             "edges": dict(head_type="module", head_module=user_heads, out_channels=1)}
    paths = []
    for task, head in heads.items():
        info = CheckpointInfo(task=task, backbone=CONFIG, head_hidden=16, **head)
        model = build_model(info)
        state = {k: v + (torch.rand(v.shape) < 0.05) * torch.randn(v.shape) * 0.3
                 for k, v in base.backbone.state_dict().items()}
        model.backbone.load_state_dict(state)
        paths.append(tmp_path / f"{task}.safetensors")
        save_checkpoint(model, info, paths[-1])
    return tmp_path / "semseg.safetensors", paths


def _sparse(bundle: Bundle, granularity: str) -> Bundle:
    """Task and temporal thresholds at the 60% quantile of measured deltas."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    recorded = {}
    for task in bundle.tasks:
        model = bundle.task_model(task)
        with torch.no_grad(), record_linear_inputs(model.backbone, LAYERS, detach=True) as rec:
            model(images)
        recorded[task] = dict(rec)

    def taus(deltas: dict[str, torch.Tensor]) -> dict[str, float]:
        size = (lambda d: d.norm(dim=-1)) if granularity == "token" else (lambda d: d.abs())
        return {k: float(size(d).flatten().quantile(0.6)) for k, d in deltas.items()}
    for task in bundle.tasks:
        task_delta = {k: recorded[task][k] - recorded[bundle.base_task][k] for k in LAYERS}
        frame_delta = {k: recorded[task][k][1:] - recorded[task][k][:1] for k in LAYERS}
        bundle.tasks[task].activation = ActivationSparsity(
            granularity=granularity, task_thresholds={} if task == bundle.base_task else taus(task_delta),
            temporal_thresholds=taus(frame_delta))
    return bundle


def _frames(count: int = 5) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    background = torch.rand(1, 3, 32, 32, generator=gen)
    frames = []
    for k in range(count):
        frame = (background + 0.01 * k * torch.randn(background.shape, generator=gen)).clone()
        frame[..., 4 * k:4 * k + 10, 2:12] = 1.0
        frames.append(frame.clamp(0, 1))
    return frames


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[t] - b[t]).abs().max()) for t in a)


def test_unsparsified_bundle_reproduces_each_head(sources, fixed_timings):
    bundle = Bundle.from_checkpoints(*sources)
    assert bundle.task("depth").info.head_layers == (1, 2)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = {t: bundle.task_model(t)(images) for t in bundle.tasks}
    assert _max_diff(SharedEngine(bundle, timings=fixed_timings).predict(images), expected) <= TOL


@pytest.mark.parametrize("granularity", ["token", "element"])
def test_engines_agree_on_images_and_video(sources, granularity, fixed_timings):
    bundle = _sparse(Bundle.from_checkpoints(*sources), granularity)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    dense = DenseEngine(bundle).predict(images)
    assert _max_diff(SharedEngine(bundle, timings=fixed_timings).predict(images), dense) <= TOL
    # The thresholds matter: the sparsified multi-level output is not the exact one.
    with torch.no_grad():
        assert float((dense["depth"] - bundle.task_model("depth")(images)).abs().max()) > 1e-3
    frames, policy = _frames(), KeyframePolicy(keyframe_every=3, max_drift=1e9)
    reference = list(DenseEngine(bundle).stream(frames, policy))
    shared = list(SharedEngine(bundle, timings=fixed_timings).stream(frames, policy))
    assert [r.keyframe for r in shared] == [r.keyframe for r in reference]
    for ref, got in zip(reference, shared):
        assert _max_diff(got.outputs, ref.outputs) <= TOL


def test_multilevel_head_reads_the_tasks_own_intermediate_tokens(sources):
    """The depth head's first level is block 1's output of the depth model itself: with
    the base's block-1 output instead, the prediction changes."""
    bundle = Bundle.from_checkpoints(*sources)
    depth, base = bundle.task_model("depth"), bundle.task_model("semseg")
    images = torch.rand(1, 3, 32, 32)
    pixels = normalize_images(images, CONFIG)
    with torch.no_grad():
        with record_block_outputs(depth.backbone, (1, 2)) as own:
            depth.backbone.forward_features(pixels)
        with record_block_outputs(base.backbone, (1,)) as other:
            base.backbone.forward_features(pixels)
        grid = CONFIG.grid_size
        right = depth.head_output(dict(own), grid)
        wrong = depth.head_output({**own, 1: other[1]}, grid)
    assert float((right - wrong).abs().max()) > 1e-4


def test_a_user_head_is_built_only_where_allowed_and_importable(sources, monkeypatch):
    monkeypatch.setenv(HEAD_MODULES_ENV, "")
    with pytest.raises(CheckpointError, match="module 'my_heads' is not allowed: list it in MTLCOMPRESS_HEAD_MODULES"):
        Bundle.from_checkpoints(*sources)
    monkeypatch.setenv(HEAD_MODULES_ENV, "my_heads,missing_heads")
    info = CheckpointInfo(task="edges", backbone=CONFIG, out_channels=1, head_type="module",
                          head_module="missing_heads:make")
    with pytest.raises(CheckpointError, match="'missing_heads' is not importable here"):
        build_model(info)
