import json
import struct

import pytest
import torch

from mtlcompress.errors import CheckpointError
from mtlcompress.models.backbone import PRESETS
from mtlcompress.models.checkpoint import CheckpointInfo, build_model, load_checkpoint, read_checkpoint_info, save_checkpoint


def _info(**overrides):
    fields = dict(task="depth", backbone=PRESETS["micro"], out_channels=1, metrics={"rmse": 1.5})
    fields.update(overrides)
    return CheckpointInfo(**fields)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    info = _info()
    model = build_model(info)
    path = tmp_path / "depth.safetensors"
    save_checkpoint(model, info, path)
    return path, model


def test_round_trip_reproduces_outputs(checkpoint):
    path, model = checkpoint
    loaded, info = load_checkpoint(path)
    images = torch.rand(2, 3, 32, 32)
    model.eval()
    assert torch.equal(loaded(images), model(images))
    assert info.task == "depth" and info.metrics == {"rmse": 1.5}
    assert info.backbone == PRESETS["micro"]
    assert loaded(images).shape == (2, 1, 32, 32)


def test_categorical_task_needs_matching_channels(tmp_path):
    info = _info(task="semseg", out_channels=5, num_classes=7)
    model = build_model(info)
    path = tmp_path / "seg.safetensors"
    save_checkpoint(model, info, path)
    with pytest.raises(CheckpointError, match="needs 7 output channels"):
        read_checkpoint_info(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_truncated_file(checkpoint):
    path, _ = checkpoint
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def _rewrite_document(path, edit):
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    edit(header["__metadata__"])
    new_header = json.dumps(header).encode()
    new_header += b" " * (-len(new_header) % 8)
    path.write_bytes(struct.pack("<Q", len(new_header)) + new_header + data[8 + header_len:])


def test_missing_metadata(checkpoint):
    path, _ = checkpoint
    _rewrite_document(path, lambda meta: meta.clear())
    with pytest.raises(CheckpointError, match="without mtlcompress metadata"):
        load_checkpoint(path)


def test_missing_field(checkpoint):
    path, _ = checkpoint

    def drop_task(meta):
        doc = json.loads(meta["document"])
        del doc["task"]
        meta["document"] = json.dumps(doc)

    _rewrite_document(path, drop_task)
    with pytest.raises(CheckpointError, match="missing the field 'task'"):
        load_checkpoint(path)


def test_unknown_task(checkpoint):
    path, _ = checkpoint

    def rename(meta):
        doc = json.loads(meta["document"])
        doc["task"] = "telepathy"
        meta["document"] = json.dumps(doc)

    _rewrite_document(path, rename)
    with pytest.raises(CheckpointError, match="unknown task 'telepathy'"):
        load_checkpoint(path)


def test_future_version(checkpoint):
    path, _ = checkpoint
    _rewrite_document(path, lambda meta: meta.update(format_version="99"))
    with pytest.raises(CheckpointError, match="version 99 is not supported"):
        load_checkpoint(path)


def test_wrong_architecture(checkpoint):
    path, _ = checkpoint

    def widen(meta):
        doc = json.loads(meta["document"])
        doc["backbone"]["embed_dim"] = 64
        meta["document"] = json.dumps(doc)

    _rewrite_document(path, widen)
    with pytest.raises(CheckpointError, match="has shape .* needs"):
        load_checkpoint(path)


def test_deeper_architecture_reports_missing_tensors(checkpoint):
    path, _ = checkpoint

    def deepen(meta):
        doc = json.loads(meta["document"])
        doc["backbone"]["depth"] = 3
        meta["document"] = json.dumps(doc)

    _rewrite_document(path, deepen)
    with pytest.raises(CheckpointError, match="missing .* tensor"):
        load_checkpoint(path)


def test_non_finite_weights_rejected(tmp_path):
    info = _info()
    model = build_model(info)
    with torch.no_grad():
        model.head.proj.bias[0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(model, info, path)
    with pytest.raises(CheckpointError, match="not finite"):
        load_checkpoint(path)
