import dataclasses
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from mtlcompress.errors import CheckpointError
from mtlcompress.models.backbone import PRESETS, build_backbone, resolve_backbone
from mtlcompress.models.weights import checkpoint_filter_fn, load_initial_backbone, read_backbone_config, save_backbone_init

MICRO = PRESETS["micro"]


def _source():
    torch.manual_seed(1)
    return build_backbone(MICRO)


def test_our_backbone_init_round_trip(tmp_path):
    source = _source()
    path = tmp_path / "init.safetensors"
    save_backbone_init(source, MICRO, path)
    assert read_backbone_config(path) == MICRO
    target = build_backbone(MICRO)
    load_initial_backbone(target, path)
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


def test_foreign_nested_prefixed_state_dict_with_classifier(tmp_path):
    source = _source()
    state = {f"module.backbone.{k}": v for k, v in source.state_dict().items()}
    state["module.backbone.head.weight"] = torch.zeros(10, MICRO.embed_dim)
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    target = build_backbone(MICRO)
    info = load_initial_backbone(target, path)
    assert info["init_format"] == "foreign"
    assert torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_pos_embed_is_resized_for_another_image_size(tmp_path):
    source = _source()
    path = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    bigger = dataclasses.replace(MICRO, img_size=48)
    target = build_backbone(bigger)
    load_initial_backbone(target, path)
    assert target.pos_embed.shape[1] == 1 + (48 // 8) ** 2
    assert torch.equal(target.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)


def test_filter_does_not_modify_input():
    source = _source()
    state = {f"model.{k}": v for k, v in source.state_dict().items()}
    keys = list(state)
    checkpoint_filter_fn(state, build_backbone(MICRO))
    assert list(state) == keys


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: the marker's existence proves code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": _Payload(marker)}
    if writer == "pickle":
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_initial_backbone(build_backbone(MICRO), path)
    assert not marker.exists(), "the pickle's payload ran: torch.load must use weights_only=True"


def test_truncated_pt_is_damaged_not_refused(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save(_source().state_dict(), path)
    path.write_bytes(path.read_bytes()[:-300])
    with pytest.raises(CheckpointError, match=r"damaged or truncated: not a readable PyTorch weights file "
                                              r"\(PytorchStreamReader failed reading zip archive"):
        load_initial_backbone(build_backbone(MICRO), path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", "init"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_starting_weights_are_refused(tmp_path, suffix, bad):
    source = _source()
    with torch.no_grad():
        source.blocks[1].mlp.fc1.weight[3, 2] = bad
    if suffix == "init":
        path = tmp_path / "init.safetensors"
        save_backbone_init(source, MICRO, path)
    elif suffix == ".pt":
        path = tmp_path / "w.pt"
        torch.save(source.state_dict(), path)
    else:
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=f"{path.name}: tensor 'blocks.1.mlp.fc1.weight' holds NaN or Inf"):
        load_initial_backbone(build_backbone(MICRO), path)


def test_different_architecture_is_a_clear_error(tmp_path):
    other = build_backbone(dataclasses.replace(MICRO, embed_dim=64))
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="different architecture|cannot adapt"):
        load_initial_backbone(build_backbone(MICRO), path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported weights file type"):
        load_initial_backbone(build_backbone(MICRO), path)


def test_timm_names_resolve_without_weights():
    config = resolve_backbone("vit_small_patch16_224")
    assert (config.embed_dim, config.depth, config.num_heads, config.patch_size, config.img_size) == (384, 12, 6, 16, (224, 224))
    assert resolve_backbone("vit_base_patch16_224").embed_dim == 768
    with pytest.raises(CheckpointError, match="unknown backbone"):
        resolve_backbone("resnet_of_dreams")
