"""``mtlcompress import`` through the command line: fine-tuned models saved elsewhere
become checkpoints that go through `sparsify`, `export` and `run`."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from mtlcompress.bundle.format import load_bundle
from mtlcompress.cli.main import app, main
from mtlcompress.models.backbone import PRESETS, build_backbone
from mtlcompress.models.checkpoint import load_checkpoint, read_checkpoint_info
from mtlcompress.models.head_module import HEAD_MODULES_ENV
from mtlcompress.models.heads import DenseHead, LinearHead, MultiLevelHead
from mtlcompress.models.single_task import normalize_images
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.shared_engine import SharedEngine

MICRO = PRESETS["micro"]
runner = CliRunner()


def _import(*args) -> dict:
    result = runner.invoke(app, ["import", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A micro ViT with a linear depth head (plain safetensors) and the same ViT, 5% of
    its weights moved, with a dense normals head, wrapped as multi-task codebases save it."""
    folder = tmp_path_factory.mktemp("import")
    torch.manual_seed(0)
    vit, depth_head = build_backbone(MICRO).eval(), LinearHead(32, 1, 8).eval()
    save_file({**vit.state_dict(), **{f"head.{k}": v for k, v in depth_head.state_dict().items()}},
              folder / "depth.safetensors")
    tuned = build_backbone(MICRO).eval()
    tuned.load_state_dict({k: v + (torch.rand_like(v) < 0.05) * torch.randn_like(v) * 0.1
                           for k, v in vit.state_dict().items()})
    normals_head = DenseHead(32, 3, 8, 16).eval()
    torch.save({"model": {**{f"backbone.{k}": v for k, v in tuned.state_dict().items()},
                          **{f"decoder.{k}": v for k, v in normals_head.state_dict().items()}}, "epoch": 7},
               folder / "normals.pth")
    return {"folder": folder, "depth": (vit, depth_head), "normals": (tuned, normals_head)}


def test_import_keeps_backbone_and_head_exactly(sources, tmp_path):
    folder = sources["folder"]
    summary = _import(folder / "depth.safetensors", "--task", "depth", "--backbone", "micro", "--head", "linear",
                      "--out", tmp_path / "depth.safetensors")
    assert summary["head"] == "linear" and summary["source_format"] == "timm" and summary["ignored"] == []
    _import(folder / "normals.pth", "--task", "normals", "--backbone", "micro", "--head-prefix", "decoder.",
            "--out", tmp_path / "normals.safetensors")
    images = torch.rand(2, 3, 32, 32)
    for task in ("depth", "normals"):
        vit, head = sources[task]
        model, _ = load_checkpoint(tmp_path / f"{task}.safetensors")
        with torch.no_grad():
            expected = head(vit.forward_features(normalize_images(images, MICRO))[:, 1:], (4, 4))
            assert torch.allclose(model(images), expected, atol=1e-5)


def test_leftover_keys_exit_2_with_one_line_unless_ignored(sources, tmp_path, monkeypatch, capsys):
    vit, head = sources["depth"]
    state = {**vit.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()},
             "head_drop.x": torch.zeros(1), "pooler.weight": torch.zeros(2)}
    save_file(state, tmp_path / "extra.safetensors")
    args = ["import", str(tmp_path / "extra.safetensors"), "--task", "depth", "--backbone", "micro", "--head",
            "linear", "--out", str(tmp_path / "out.safetensors")]
    monkeypatch.setattr(sys, "argv", ["mtlcompress", *args, "--json"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    error = json.loads(capsys.readouterr().out)
    assert error["error"] and "2 source keys unused: head_drop.x, pooler.weight" in error["message"]
    assert "\n" not in error["message"]
    summary = _import(*args[1:], "--ignore", "^pooler", "--ignore", "head_drop")
    assert summary["ignored"] == ["head_drop.x", "pooler.weight"]


@pytest.mark.parametrize("size", [["32", "48"], ["32x48"]])
def test_img_size_takes_height_then_width(sources, tmp_path, monkeypatch, capsys, size):
    """``--img-size 32 48`` (two numbers, through ``main``) or ``32x48``: a 32 px high,
    48 px wide model whose position embedding timm resampled from the 4x4 grid."""
    args = ["import", str(sources["folder"] / "depth.safetensors"), "--task", "depth", "--backbone", "micro",
            "--head", "linear", "--img-size", *size, "--out", str(tmp_path / "wide.safetensors"), "--json"]
    monkeypatch.setattr(sys, "argv", ["mtlcompress", *args])
    main()
    summary = json.loads(capsys.readouterr().out)
    assert summary["backbone"]["img_size"] == [32, 48] and summary["resampled_pos_embed"] == [4, 4]
    model, info = load_checkpoint(tmp_path / "wide.safetensors")
    assert info.backbone.grid_size == (4, 6) and model(torch.rand(1, 3, 32, 48)).shape == (1, 1, 32, 48)


@pytest.mark.parametrize(("size", "message"), [("30", "not a multiple of patch size 8"), ("0", "must be positive"),
                                               ("32x", None), ("a", "one number or two")])
def test_a_bad_img_size_is_a_usage_error(sources, tmp_path, size, message):
    result = runner.invoke(app, ["import", str(sources["folder"] / "depth.safetensors"), "--task", "depth",
                                 "--backbone", "micro", "--head", "linear", "--img-size", size,
                                 "--out", str(tmp_path / "bad.safetensors")])
    assert result.exit_code != 0 and not (tmp_path / "bad.safetensors").exists()
    assert message is None or message in result.output + str(result.exception)


def test_imported_checkpoints_sparsify_export_and_run(sources, quick_demo, tmp_path, fixed_timings):
    folder = sources["folder"]
    depth, normals = tmp_path / "depth.safetensors", tmp_path / "normals.safetensors"
    _import(folder / "depth.safetensors", "--task", "depth", "--backbone", "micro", "--head", "linear", "--out", depth)
    _import(folder / "normals.pth", "--task", "normals", "--backbone", "micro", "--head-prefix", "decoder.",
            "--out", normals)
    sparse = tmp_path / "normals.weights.safetensors"
    result = runner.invoke(app, ["sparsify", "weights", "--base", str(depth), "--task", str(normals), "--data",
                                 str(quick_demo["data"]), "--out", str(sparse), "--method", "magnitude",
                                 "--steps", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert read_checkpoint_info(sparse).head_type == "dense"
    result = runner.invoke(app, ["export", "--base", str(depth), "--task", str(sparse), "--out",
                                 str(tmp_path / "bundle.safetensors"), "--json"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "bundle.safetensors")
    assert bundle.task("depth").info.head_type == "linear"
    images = torch.rand(2, 3, 32, 32)
    shared = SharedEngine(bundle, timings=fixed_timings).predict(images)
    dense = DenseEngine(bundle).predict(images)
    for task in ("depth", "normals"):
        assert torch.allclose(shared[task], dense[task], atol=1e-4)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        tmp_path / "imgs" / "a.png")
    result = runner.invoke(app, ["run", str(tmp_path / "bundle.safetensors"), str(tmp_path / "imgs"), "--out",
                                 str(tmp_path / "out"), "--engine", "dense", "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a" / "depth.png").is_file()


USER_HEAD = """
import torch.nn as nn
import torch.nn.functional as F


class TwoLevelProbe(nn.Module):
    def __init__(self, embed_dim, out_channels, patch_size, layers):
        super().__init__()
        self.patch = patch_size
        self.probe = nn.Linear(embed_dim * len(layers), out_channels)

    def forward(self, levels, grid):
        rows, cols = grid
        maps = self.probe(torch.cat(levels, dim=-1)).transpose(1, 2).reshape(levels[0].shape[0], -1, rows, cols)
        return F.interpolate(maps, scale_factor=self.patch, mode="bilinear", align_corners=False)


def two_level_probe(embed_dim, out_channels, patch_size, layers=()):
    return TwoLevelProbe(embed_dim, out_channels, patch_size, layers)
"""


def test_multilevel_and_user_heads_import_sparsify_export_and_run(sources, quick_demo, tmp_path, fixed_timings,
                                                                   monkeypatch):
    """A multi-level normals head (--head-layers) and a user's edges head (--head-module,
    reading both blocks) on the depth model's backbone, 5% moved: imported exactly, then
    sparsified, exported and run, with the engines agreeing."""
    (tmp_path / "lab_heads.py").write_text("import torch\n" + USER_HEAD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(HEAD_MODULES_ENV, "lab_heads")
    import lab_heads

    folder = sources["folder"]
    tuned = sources["normals"][0]
    torch.manual_seed(3)
    heads = {"normals": MultiLevelHead(32, 3, 8, 16, layers=(1, 2)).eval(),
             "edges": lab_heads.two_level_probe(32, 1, 8, layers=(1, 2)).eval()}
    for task, head in heads.items():
        torch.save({"model": {**{f"backbone.{k}": v for k, v in tuned.state_dict().items()},
                              **{f"decoder.{k}": v for k, v in head.state_dict().items()}}}, folder / f"{task}-ml.pth")
    depth = tmp_path / "depth.safetensors"
    _import(folder / "depth.safetensors", "--task", "depth", "--backbone", "micro", "--head", "linear", "--out", depth)
    summary = _import(folder / "normals-ml.pth", "--task", "normals", "--backbone", "micro", "--head-prefix",
                      "decoder.", "--head-layers", "1,2", "--out", tmp_path / "normals.safetensors")
    assert summary["head"] == "multilevel" and summary["head_layers"] == [1, 2]
    summary = _import(folder / "edges-ml.pth", "--task", "edges", "--backbone", "micro", "--head-prefix", "decoder.",
                      "--head-module", "lab_heads:two_level_probe", "--head-layers", "1,2",
                      "--out", tmp_path / "edges.safetensors")
    assert summary["head"] == "module" and summary["head_module"] == "lab_heads:two_level_probe"
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        levels = tuned.forward_intermediates(normalize_images(images, MICRO), indices=[0, 1], norm=True,
                                             output_fmt="NLC", intermediates_only=True)
        for task, head in heads.items():
            model, _ = load_checkpoint(tmp_path / f"{task}.safetensors")
            assert torch.allclose(model(images), head(levels, (4, 4)), atol=1e-5)
    sparse = []
    for task in heads:
        sparse.append(tmp_path / f"{task}.weights.safetensors")
        result = runner.invoke(app, ["sparsify", "weights", "--base", str(depth), "--task",
                                     str(tmp_path / f"{task}.safetensors"), "--data", str(quick_demo["data"]),
                                     "--out", str(sparse[-1]), "--method", "magnitude", "--steps", "2", "--json"])
        assert result.exit_code == 0, result.output
    assert read_checkpoint_info(sparse[0]).head_layers == (1, 2)
    bundle_path = tmp_path / "bundle.safetensors"
    result = runner.invoke(app, ["export", "--base", str(depth), "--task", str(sparse[0]), "--task", str(sparse[1]),
                                 "--out", str(bundle_path), "--json"])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(bundle_path)
    assert bundle.task("edges").info.head_module == "lab_heads:two_level_probe"
    shared = SharedEngine(bundle, timings=fixed_timings).predict(images)
    dense = DenseEngine(bundle).predict(images)
    for task in ("depth", "normals", "edges"):
        assert torch.allclose(shared[task], dense[task], atol=1e-4)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
        tmp_path / "imgs" / "a.png")
    result = runner.invoke(app, ["run", str(bundle_path), str(tmp_path / "imgs"), "--out", str(tmp_path / "out"),
                                 "--engine", "dense", "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a" / "edges.png").is_file() and (tmp_path / "out" / "a" / "normals.png").is_file()
    monkeypatch.delenv(HEAD_MODULES_ENV)
    result = runner.invoke(app, ["run", str(bundle_path), str(tmp_path / "imgs"), "--out", str(tmp_path / "out2"),
                                 "--json"])
    assert "'lab_heads' is not allowed: list it in MTLCOMPRESS_HEAD_MODULES" in str(result.exception)


@pytest.mark.parametrize("extra, message", [
    (["--head-layers", "1,x"], "'1,x' is not a comma-separated list of block numbers"),
    (["--head-layers", "1,3"], "names block 3; the backbone has blocks 1 to 2"),
    (["--head-module", "no_such_heads:make"], "module 'no_such_heads' is not importable here"),
    (["--head", "linear", "--head-module", "no_such_heads:make"], "only a module head"),
])
def test_bad_head_options_exit_2_with_one_line(sources, tmp_path, monkeypatch, capsys, extra, message):
    args = ["import", str(sources["folder"] / "depth.safetensors"), "--task", "depth", "--backbone", "micro",
            "--out", str(tmp_path / "out.safetensors"), *extra, "--json"]
    monkeypatch.setattr(sys, "argv", ["mtlcompress", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    output = capsys.readouterr()
    assert message in output.out + output.err
