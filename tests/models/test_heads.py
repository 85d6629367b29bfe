import pytest
import torch
import torch.nn.functional as F

from mtlcompress.models.heads import DenseHead, LinearHead


@pytest.mark.parametrize("channels,batch,grid", [(1, 1, (3, 3)), (5, 2, (2, 3)), (2, 1, (3, 2))])
def test_dense_head_is_a_3x3_conv_a_1x1_conv_and_a_pixel_shuffle(channels, batch, grid):
    torch.manual_seed(0)
    head = DenseHead(embed_dim=12, out_channels=channels, patch_size=4, hidden=8)
    rows, cols = grid
    tokens = torch.randn(batch, rows * cols, 12)
    image = tokens.transpose(1, 2).reshape(batch, 12, rows, cols)
    expected = F.pixel_shuffle(head.proj(F.gelu(head.conv(image))), 4)
    out = head(tokens, grid)
    assert out.shape == (batch, channels, rows * 4, cols * 4)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_linear_head_reads_tokens_row_major_on_a_non_square_grid():
    torch.manual_seed(0)
    head = LinearHead(embed_dim=6, out_channels=2, patch_size=4)
    tokens = torch.randn(1, 2 * 3, 6)
    out = head(tokens, (2, 3))
    assert out.shape == (1, 2, 8, 12)
    image = tokens.transpose(1, 2).reshape(1, 6, 2, 3)
    expected = F.interpolate(head.proj(image), size=(8, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# Head records: multi-level layers and user modules are checked before anything is built.
# ---------------------------------------------------------------------------------------
from pathlib import Path  # noqa: E402

from mtlcompress.bundle.format import FORMAT_NAME, SUPPORTED_VERSIONS, save_bundle  # noqa: E402
from mtlcompress.bundle.manifest import SchemaError, validate_manifest  # noqa: E402
from mtlcompress.io.container import read_container_header  # noqa: E402
from mtlcompress.errors import CheckpointError  # noqa: E402
from mtlcompress.models.backbone import PRESETS  # noqa: E402
from mtlcompress.models.checkpoint import CheckpointInfo  # noqa: E402
from mtlcompress.models.heads import MultiLevelHead  # noqa: E402

_BAD_RECORDS = [
    ({"type": "multilevel", "out_channels": 1, "hidden": 8}, "needs the field 'layers'"),
    ({"type": "multilevel", "out_channels": 1, "hidden": 8, "layers": [1, 3]}, "names block 3; the backbone has "
                                                                                "blocks 1 to 2"),
    ({"type": "multilevel", "out_channels": 1, "hidden": 8, "layers": [2, 2]}, "must increase"),
    ({"type": "multilevel", "out_channels": 1, "hidden": 8, "layers": []}, "a list of 1 to 2 block indices"),
    ({"type": "multilevel", "out_channels": 1, "hidden": 8, "layers": [True]}, "names block True"),
    ({"type": "module", "out_channels": 1, "hidden": 8}, "'module' goes with, and only with"),
    ({"type": "dense", "out_channels": 1, "hidden": 8, "module": "a.b:c"}, "'module' goes with, and only with"),
    ({"type": "module", "out_channels": 1, "hidden": 8, "module": "os; rm -rf /"}, "package.module:factory"),
    ({"type": "module", "out_channels": 1, "hidden": 8, "module": "pkg.mod"}, "package.module:factory"),
]


@pytest.mark.parametrize("record, message", _BAD_RECORDS, ids=[m for _, m in _BAD_RECORDS])
def test_bad_head_records_fail_in_one_line(record, message):
    doc = CheckpointInfo(task="depth", backbone=PRESETS["micro"], out_channels=1).to_document()
    with pytest.raises(CheckpointError, match=message):
        CheckpointInfo.from_document({**doc, "head": record}, Path("x.safetensors"))


def test_the_manifest_checks_head_records_as_checkpoints_do(tmp_path, make_micro_bundle):
    save_bundle(make_micro_bundle(), tmp_path / "b.safetensors")
    _, manifest = read_container_header(tmp_path / "b.safetensors", format_name=FORMAT_NAME,
                                        versions=SUPPORTED_VERSIONS, error=CheckpointError)
    head = manifest["tasks"][manifest["base_task"]]["checkpoint"]["head"]
    for record, problem in (({"type": "multilevel", "layers": [3, 6, 9, 12]}, None),
                            ({"type": "module", "module": "lab.heads:make"}, None),
                            ({"type": "multilevel", "layers": [6, 3]}, "must increase"),
                            ({"type": "module", "module": "a:b", "code": "..."}, "unknown key 'code'")):
        head.clear()
        head.update({"out_channels": 4, "hidden": 8, **record})
        if problem is None:
            validate_manifest(manifest)
        else:
            with pytest.raises(SchemaError, match=problem):
                validate_manifest(manifest)


def test_multilevel_head_sums_projected_levels_then_fuses_and_predicts():
    torch.manual_seed(0)
    head = MultiLevelHead(embed_dim=12, out_channels=2, patch_size=4, hidden=8, layers=(1, 3))
    levels = [torch.randn(2, 9, 12) for _ in range(2)]
    maps = [t.transpose(1, 2).reshape(2, 12, 3, 3) for t in levels]
    fused = F.gelu(head.fuse(F.gelu(head.proj[0](maps[0]) + head.proj[1](maps[1]))))
    expected = F.interpolate(head.predict(fused), size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(head(levels, (3, 3)), expected)
    with pytest.raises(ValueError, match="reads 2 levels, got 1"):
        head(levels[:1], (3, 3))
