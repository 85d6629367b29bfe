"""Hostile numbers in a checkpoint's metadata: each is one CheckpointError line, found
before any model is built from them (issue #21.2)."""

import json
import math
import struct
import time

import pytest
import torch

import mtlcompress.models.checkpoint as checkpoint_module
from mtlcompress.errors import CheckpointError
from mtlcompress.models.backbone import PRESETS, BackboneConfig, build_backbone
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, load_checkpoint, save_checkpoint
from mtlcompress.models.weights import read_backbone_config, save_backbone_init

MICRO = PRESETS["micro"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    info = CheckpointInfo(task="depth", backbone=MICRO, out_channels=1)
    path = tmp_path_factory.mktemp("ckpt") / "depth.safetensors"
    save_checkpoint(build_model(info), info, path)
    return path.read_bytes()


def _with_document(tmp_path, data, edit):
    """A copy of the checkpoint bytes whose JSON document went through ``edit``."""
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    doc = json.loads(header["__metadata__"]["document"])
    edit(doc)
    header["__metadata__"]["document"] = json.dumps(doc)  # NaN/Infinity pass through as JSON does
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    path = tmp_path / "edited.safetensors"
    path.write_bytes(struct.pack("<Q", len(new_header)) + new_header + data[8 + header_len:])
    return path


def _set(section, field, value):
    def edit(doc):
        (doc[section] if section else doc)[field] = value
    return edit


@pytest.fixture
def no_allocation(monkeypatch):
    """Fail the test if a model is built for real (not on the meta device)."""
    def refuse(info):
        raise AssertionError("a model was allocated before the metadata was checked against the tensors")
    monkeypatch.setattr(checkpoint_module, "build_model", refuse)


@pytest.mark.parametrize("section, field, value, message", [
    ("backbone", "num_heads", 0, r"'num_heads' is 0, which is not in \[1, 32\]"),
    ("backbone", "num_heads", -4, r"'num_heads' is -4"),
    ("backbone", "num_heads", True, r"'num_heads' has the wrong type"),
    ("backbone", "patch_size", 0, r"'patch_size' is 0"),
    ("backbone", "patch_size", 64, r"'patch_size' is 64, which is not in \[1, 32\]"),
    ("backbone", "mlp_ratio", math.nan, r"'mlp_ratio' is nan"),
    ("backbone", "mlp_ratio", math.inf, r"'mlp_ratio' is inf"),
    ("backbone", "mlp_ratio", 1e-9, r"no hidden units"),
    ("backbone", "init_values", -math.inf, r"'init_values' is -inf"),
    ("backbone", "reg_tokens", -1, r"'reg_tokens' is -1"),
    ("backbone", "depth", 10**6, r"'depth' is 1000000, which is not in \[1, 128\]"),
    ("backbone", "embed_dim", 10**9, r"'embed_dim' is 1000000000"),
    ("backbone", "img_size", 10**6, r"'img_size' is 1000000"),
    ("backbone", "img_size", 36, r"inconsistent \(img/patch"),
    ("backbone", "img_size", [32, 36], r"inconsistent \(img/patch"),
    ("backbone", "img_size", [32, 10**6], r"'img_size' is 1000000"),
    ("backbone", "img_size", [32], r"'img_size' must be \[height, width\] or one integer"),
    ("backbone", "img_size", [32, 32, 32], r"'img_size' must be \[height, width\] or one integer"),
    ("backbone", "img_size", [32, True], r"'img_size' must be an integer"),
    ("backbone", "img_size", "32", r"'img_size' must be \[height, width\] or one integer"),
    ("backbone", "arch", "x" * 10_000, r"'arch' is longer than 200"),
    ("head", "hidden", -3, r"head field 'hidden' is -3"),
    ("head", "hidden", 10**12, r"head field 'hidden' is 1000000000000"),
    ("head", "out_channels", 0, r"head field 'out_channels' is 0"),
    ("head", "out_channels", 1.0, r"'out_channels' must be an integer"),
    (None, "head", 5, r"head must be a JSON object"),
    (None, "num_classes", -2, r"'num_classes' is -2"),
    (None, "class_names", [1, 2], r"'class_names' must be a list of strings"),
    (None, "task", 7, r"'task' must be a string"),
    (None, "metrics", [1], r"'metrics' must be a JSON object"),
])
def test_bad_numbers_are_one_line_before_any_model_is_built(tmp_path, saved, no_allocation,
                                                             section, field, value, message):
    path = _with_document(tmp_path, saved, _set(section, field, value))
    with pytest.raises(CheckpointError, match=message) as raised:
        load_checkpoint(path)
    assert str(raised.value).startswith(f"{path}: ") and "\n" not in str(raised.value)


@pytest.mark.parametrize("section, field, value, message", [
    # In range, but the tensors in the file are the micro model's: the header shows it.
    ("backbone", "embed_dim", 8192, r"'backbone.blocks.0.attn.proj.bias' has shape \(32,\).*needs \(8192,\)"),
    ("backbone", "depth", 128, r"missing 1512 tensor\(s\), e.g. 'backbone.blocks.10."),
    ("head", "hidden", 16384, r"'head.conv.bias' has shape \(128,\).*needs \(16384,\)"),
    ("backbone", "reg_tokens", 200, r"missing 1 tensor\(s\), e.g. 'backbone.reg_token'"),
])
def test_sizes_that_disagree_with_the_tensor_header_fail_before_allocating(tmp_path, saved, no_allocation,
                                                                         section, field, value, message):
    path = _with_document(tmp_path, saved, _set(section, field, value))
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    assert time.perf_counter() - started < 10  # the meta-device model costs no weight init


def test_valid_checkpoint_still_loads_bit_exactly(tmp_path, saved):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(saved)
    model, info = load_checkpoint(path)
    assert info.backbone == MICRO and (info.out_channels, info.head_hidden) == (1, 128)
    torch.manual_seed(0)
    original = build_model(CheckpointInfo(task="depth", backbone=MICRO, out_channels=1))
    for name, tensor in original.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


@pytest.mark.parametrize("stored", [32, [32, 32]])
def test_img_size_is_written_as_height_width_and_an_old_single_int_still_loads(tmp_path, saved, stored):
    """Files written before non-square sizes record ``img_size: 32``; both read as (32, 32)."""
    header = json.loads(saved[8:8 + struct.unpack("<Q", saved[:8])[0]])
    assert json.loads(header["__metadata__"]["document"])["backbone"]["img_size"] == [32, 32]
    model, info = load_checkpoint(_with_document(tmp_path, saved, _set("backbone", "img_size", stored)))
    assert info.backbone.img_size == (32, 32) and info.backbone == MICRO
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_a_non_square_size_is_checked_per_side():
    config = BackboneConfig.from_dict({**MICRO.to_dict(), "img_size": [32, 48]})
    assert (config.img_size, config.grid_size, config.num_tokens) == ((32, 48), (4, 6), 25)
    assert BackboneConfig.from_dict(config.to_dict()) == config
    with pytest.raises(CheckpointError, match=r"'patch_size' is 40, which is not in \[1, 32\]"):
        BackboneConfig.from_dict({**MICRO.to_dict(), "img_size": [32, 80], "patch_size": 40})


def test_from_dict_accepts_every_preset_and_the_timm_vits():
    for config in PRESETS.values():
        assert BackboneConfig.from_dict(config.to_dict()) == config
    from mtlcompress.models.backbone import resolve_backbone

    for name in ("vit_base_patch16_224", "vit_small_patch14_reg4_dinov2"):
        config = resolve_backbone(name)
        assert BackboneConfig.from_dict(config.to_dict()) == config


def test_backbone_init_whose_metadata_disagrees_with_its_tensors(tmp_path):
    path = tmp_path / "init.safetensors"
    save_backbone_init(build_backbone(MICRO), MICRO, path)
    edited = _with_document(tmp_path, path.read_bytes(), _set("backbone", "embed_dim", 4096))
    with pytest.raises(CheckpointError, match=r"'blocks.0.attn.proj.bias' has shape \(32,\).*needs \(4096,\)"):
        read_backbone_config(edited)
    edited = _with_document(tmp_path, path.read_bytes(), _set("backbone", "num_heads", 0))
    with pytest.raises(CheckpointError, match="'num_heads' is 0"):
        read_backbone_config(edited)
