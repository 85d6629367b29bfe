"""``mtlcompress data synth`` through the CLI: a tiny dataset that the loaders open."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mtlcompress.cli.main import app
from mtlcompress.data.layouts import detect_layout, list_video_clips, open_clip, open_dataset


def test_synth_writes_a_scenes_dataset_the_loaders_open(tmp_path):
    out = tmp_path / "synth"
    result = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--images", "4", "--videos", "1",
                                      "--frames", "2", "--size", "16", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["images"] == 4 and manifest["size"] == 16 and len(manifest["videos"]) == 1
    assert manifest["splits"]["train"] + manifest["splits"]["val"] == 4
    assert detect_layout(out) == "scenes"
    train = open_dataset(out, split="train")
    assert len(train) == manifest["splits"]["train"] and train.tasks == tuple(manifest["tasks"])
    assert train[0]["image"].shape == (3, 16, 16)
    clip = open_clip(list_video_clips(out)[0])
    assert len(clip) == 2


def test_synth_prints_a_table_and_refuses_zero_images(tmp_path):
    result = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "s"), "--images", "2",
                                      "--size", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "synthetic scenes in" in result.stdout and "classes" in result.stdout
    refused = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "t"), "--images", "0"])
    assert refused.exit_code == 2 and "--images" in refused.output
    assert not (tmp_path / "t").exists()
