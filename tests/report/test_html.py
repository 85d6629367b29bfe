"""The HTML report: one self-contained file (no scripts, no URLs) with its SVG charts and
example predictions, readable in a real browser when one is installed."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image

from mtlcompress.bundle.bundle import Bundle
from mtlcompress.bundle.format import load_bundle, save_bundle
from mtlcompress.data.synth import CLASS_NAMES, generate_scenes
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, save_checkpoint
from mtlcompress.report.html import write_html_report
from mtlcompress.report.inspect import inspect_bundle
from mtlcompress.runtime.calibration import default_cache_path, save_timings
from mtlcompress.runtime.cost_model import KernelTimings, LinearCost

MICRO = PRESETS["micro"]
LAYERS = ("blocks.0.attn.qkv", "blocks.1.mlp.fc2")


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.links += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href", "action")]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """A measured report (densities, temporal densities, accuracy) of a 3-task micro bundle."""
    folder = tmp_path_factory.mktemp("html")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTLCOMPRESS_CACHE_DIR", str(folder / "cache"))
        cost = LinearCost(0.0, 1e-9)
        save_timings(KernelTimings(dense=cost, token=cost, element=cost, sparse_weight=cost), default_cache_path("cpu"))
        torch.manual_seed(0)
        base_info = CheckpointInfo(task="semseg", backbone=MICRO, out_channels=len(CLASS_NAMES), head_hidden=16,
                                   num_classes=len(CLASS_NAMES), metrics={"miou": 30.0})
        base = build_model(base_info)
        save_checkpoint(base, base_info, folder / "semseg.safetensors")
        paths = []
        for task, channels in (("depth", 1), ("normals", 3)):
            info = CheckpointInfo(task=task, backbone=MICRO, out_channels=channels, head_hidden=8, sparsity={
                "activation": {"task_thresholds": {n: 0.05 for n in LAYERS},
                               "temporal_thresholds": {n: 0.05 for n in LAYERS}}})
            model = build_model(info)
            model.backbone.load_state_dict({k: v + (torch.rand_like(v) < 0.02) * 0.3
                                            for k, v in base.backbone.state_dict().items()})
            paths.append(folder / f"{task}.safetensors")
            save_checkpoint(model, info, paths[-1])
        save_bundle(Bundle.from_checkpoints(folder / "semseg.safetensors", paths), folder / "b.safetensors")
        generate_scenes(folder / "data", images=8, videos=1, frames=3, size=32)
        return inspect_bundle(load_bundle(folder / "b.safetensors"), folder / "b.safetensors",
                              data=folder / "data", max_images=4, examples=2)


def test_html_is_self_contained_and_has_every_chart(report, tmp_path):
    path = tmp_path / "sub" / "report.html"
    write_html_report(report, path)
    text = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert "http://" not in text and "https://" not in text and "<script" not in text.lower()
    assert all(not link.startswith(("http", "//")) for link in parser.links)
    assert parser.tags.count("svg") >= 5  # weight, activation, temporal heat-maps; FLOPs; bytes; accuracy
    assert parser.tags.count("rect") >= 3 * len(report["bundle"]["layers"])
    assert parser.tags.count("circle") >= 4  # original + bundle point for each labelled task
    for heading in ("Weight-delta density", "activation-delta density", "FLOPs per image", "Bytes", "Accuracy",
                    "Example predictions"):
        assert heading in text
    # Per example: the photo, then the bundle's and the original's map of every task, inline.
    images = [link for link in parser.links if link.startswith("data:image/png;base64,")]
    assert len(images) == parser.tags.count("img") == 2 * (1 + 2 * len(report["tasks"]))
    assert text.count(">depth: bundle<") == text.count(">depth: original<") == 2
    assert not list(path.parent.glob(".*.tmp"))  # atomic write leaves no temp file


def _png_is_blank(path: Path) -> bool:
    """True when every pixel has one colour (a page that did not render)."""
    with Image.open(path) as image:
        return all(low == high for low, high in image.convert("RGB").getextrema())


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (apt-get install chromium to render the report headless)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    page, shot = tmp_path / "report.html", tmp_path / "shot.png"
    write_html_report(report, page)
    result = subprocess.run(["chromium", "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}",
                             "--window-size=1200,1600", page.resolve().as_uri()],
                            capture_output=True, text=True, timeout=60)
    assert shot.is_file(), result.stderr[-2000:]
    assert not _png_is_blank(shot)


def _colours(image: Image.Image) -> set[tuple[int, int, int]]:
    return {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 24)}


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (apt-get install chromium to render the report headless)")
def test_example_predictions_are_drawn_by_the_browser(report, tmp_path):
    """Decoded and painted, not a broken-image icon: the class colours of the first
    semseg map appear on screen (the page holds only the examples, so they are in view)."""
    page, shot = tmp_path / "examples.html", tmp_path / "shot.png"
    only_examples = {**report, "tasks": {}, "notes": [], "bundle": {**report["bundle"], "layers": []},
                     "totals": {**report["totals"], "flops": {**report["totals"]["flops"]}}}
    write_html_report(only_examples, page)
    subprocess.run(["chromium", "--headless", "--disable-gpu", "--no-sandbox", f"--screenshot={shot}",
                    "--window-size=1200,1200", page.resolve().as_uri()], capture_output=True, timeout=60)
    with Image.open(io.BytesIO(base64.b64decode(report["examples"][0]["tasks"]["semseg"]["bundle"]))) as expected, \
            Image.open(shot) as screen:
        wanted = _colours(expected)
        assert len(wanted) >= 2 and wanted <= _colours(screen)
