"""``import_model``: timm ViTs built here with random weights, saved plain, wrapped and in
HuggingFace's layout, predict exactly as before once imported; leftover keys fail."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import RmsNorm, SwiGLU, SwiGLUPacked, resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from mtlcompress.errors import CheckpointError
from mtlcompress.models.backbone import BackboneConfig, config_from_timm
from mtlcompress.models.checkpoint import load_checkpoint, read_checkpoint_info
from mtlcompress.models.heads import DenseHead, LinearHead, MultiLevelHead
from mtlcompress.models.importing import import_model
from mtlcompress.runtime.dense_engine import DenseEngine
from mtlcompress.runtime.engines import make_engine
from mtlcompress.runtime.shared_engine import SharedEngine
from mtlcompress.bundle.bundle import Bundle

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)
VARIANTS = {
    "plain": {},
    "registers+layer-scale": dict(reg_tokens=2, no_embed_class=True, init_values=0.1),
    "no-class-token": dict(class_token=False),
    "patch14": dict(img_size=28, patch_size=14),
    "clip-style": dict(pre_norm=True),
    "qk-norm": dict(qk_norm=True),
    "swiglu": dict(mlp_layer=SwiGLU, act_layer=torch.nn.SiLU),
    "swiglu-packed": dict(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, mlp_ratio=2.66667 * 2),
    "rmsnorm": dict(norm_layer=RmsNorm),
    "swiglu+rmsnorm+qk-norm": dict(mlp_layer=SwiGLU, act_layer="silu", norm_layer="rmsnorm", qk_norm=True),
    "non-square": dict(img_size=(32, 48)),
}


def make_source(head_kind: str = "linear", channels: int = 1, seed: int = 0, layers=(1, 2), **variant):
    """A timm ViT (embed 32, depth 2, 32 px) + head with random weights, and its config."""
    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0, global_pool="")
    vit = VisionTransformer(**{**args, **variant}).eval()
    for param in vit.parameters():  # zero-initialised tokens would hide a misplaced one
        param.data.add_(torch.randn_like(param) * 0.02)
    config = config_from_timm(vit, "test-vit")
    if head_kind == "multilevel":
        head = MultiLevelHead(32, channels, config.patch_size, 8, layers=layers).eval()
    else:
        head = (LinearHead if head_kind == "linear" else DenseHead)(32, channels, config.patch_size, 8).eval()
    return vit, head, config


def source_prediction(vit, head, config, images):
    """The source model's prediction; a multi-level head reads timm's own
    ``forward_intermediates`` (final-normed block outputs, 0-based indices)."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        if isinstance(head, MultiLevelHead):
            levels = vit.forward_intermediates((images - mean) / std, indices=[i - 1 for i in head.layers],
                                               norm=True, output_fmt="NLC", intermediates_only=True)
            return head(levels, config.grid_size)
        tokens = vit.forward_features((images - mean) / std)[:, config.num_prefix_tokens:]
        return head(tokens, config.grid_size)


def imported_prediction(path, images):
    model, _ = load_checkpoint(path)
    with torch.no_grad():
        return model(images)


def hf_state(vit, head, prefix="decoder."):
    """The keys ``transformers``' ViTForImageClassification would save, written out here."""
    sd, out = vit.state_dict(), {}
    out["vit.embeddings.cls_token"] = sd["cls_token"]
    out["vit.embeddings.position_embeddings"] = sd["pos_embed"]
    out["vit.embeddings.patch_embeddings.projection.weight"] = sd["patch_embed.proj.weight"]
    out["vit.embeddings.patch_embeddings.projection.bias"] = sd["patch_embed.proj.bias"]
    for i in range(len(vit.blocks)):
        hf, timm = f"vit.encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[f"{timm}attn.qkv.{kind}"].chunk(3)
            out[f"{hf}attention.attention.query.{kind}"] = q
            out[f"{hf}attention.attention.key.{kind}"] = k
            out[f"{hf}attention.attention.value.{kind}"] = v
            out[f"{hf}attention.output.dense.{kind}"] = sd[f"{timm}attn.proj.{kind}"]
            out[f"{hf}intermediate.dense.{kind}"] = sd[f"{timm}mlp.fc1.{kind}"]
            out[f"{hf}output.dense.{kind}"] = sd[f"{timm}mlp.fc2.{kind}"]
            out[f"{hf}layernorm_before.{kind}"] = sd[f"{timm}norm1.{kind}"]
            out[f"{hf}layernorm_after.{kind}"] = sd[f"{timm}norm2.{kind}"]
    out["vit.layernorm.weight"], out["vit.layernorm.bias"] = sd["norm.weight"], sd["norm.bias"]
    out.update({f"{prefix}{k}": v for k, v in head.state_dict().items()})
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_plain_vit_variant_predicts_as_its_source(variant, tmp_path):
    vit, head, config = make_source("linear", **VARIANTS[variant])
    state = {**vit.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}}
    save_file(state, tmp_path / "src.safetensors")
    import_model(tmp_path / "src.safetensors", "depth", tmp_path / "out.safetensors", backbone=config,
                 head="linear", mean=MEAN, std=STD)
    images = torch.rand(2, 3, *config.img_size)
    expected = source_prediction(vit, head, config, images)
    assert torch.allclose(imported_prediction(tmp_path / "out.safetensors", images), expected, atol=1e-5)
    info = read_checkpoint_info(tmp_path / "out.safetensors")
    assert info.head_type == "linear" and info.backbone.mean == MEAN and info.backbone.std == STD
    assert info.training["stage"] == "import"


def test_a_wrapped_pickle_with_a_decoder_prefix_keeps_the_dense_head(tmp_path):
    vit, head, config = make_source("dense", channels=3)
    wrapped = {"model": {**{f"backbone.{k}": v for k, v in vit.state_dict().items()},
                         **{f"decoder.{k}": v for k, v in head.state_dict().items()}}}
    torch.save(wrapped, tmp_path / "src.pth")
    result = import_model(tmp_path / "src.pth", "normals", tmp_path / "out.safetensors", backbone=config,
                          head_prefix="decoder.", mean=MEAN, std=STD)
    assert result.source_format == "timm" and result.info.head_type == "dense" and result.info.head_hidden == 8
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(imported_prediction(tmp_path / "out.safetensors", images),
                          source_prediction(vit, head, config, images), atol=1e-5)


def test_a_huggingface_folder_is_mapped_with_qkv_fused(tmp_path):
    vit, head, config = make_source("linear", channels=5)
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(hf_state(vit, head), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 128, "image_size": 32, "patch_size": 8, "qkv_bias": True,
        "layer_norm_eps": 1e-6, "hidden_act": "gelu"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD}))
    result = import_model(folder, "semseg", tmp_path / "out.safetensors", head="linear", head_prefix="decoder.")
    assert result.source_format == "hf-vit" and result.info.num_classes == 5
    assert result.info.backbone.mean == MEAN and result.info.backbone.norm_eps == 1e-6
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(imported_prediction(tmp_path / "out.safetensors", images),
                          source_prediction(vit, head, config, images), atol=1e-5)


def test_a_user_key_map_renames_foreign_keys(tmp_path):
    vit, head, config = make_source("linear")
    state = {k.replace("blocks.", "layers."): v for k, v in vit.state_dict().items()}
    state.update({f"probe.{k}": v for k, v in head.state_dict().items()})
    save_file(state, tmp_path / "src.safetensors")
    (tmp_path / "map.toml").write_text('[keys]\n"^layers\\\\." = "blocks."\n"^probe\\\\." = "head."\n')
    import_model(tmp_path / "src.safetensors", "depth", tmp_path / "out.safetensors", backbone=config,
                 head="linear", key_map=tmp_path / "map.toml", mean=MEAN, std=STD)
    images = torch.rand(1, 3, 32, 32)
    assert torch.allclose(imported_prediction(tmp_path / "out.safetensors", images),
                          source_prediction(vit, head, config, images), atol=1e-5)


def test_unused_and_missing_keys_fail_in_one_line_unless_ignored(tmp_path):
    vit, head, config = make_source("linear")
    state = {**vit.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}}
    state["fc_norm.weight"] = torch.ones(32)
    save_file(state, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match=r"1 source keys unused: fc_norm\.weight; .*--ignore") as error:
        import_model(tmp_path / "extra.safetensors", "depth", tmp_path / "out.safetensors", backbone=config,
                     head="linear")
    assert "\n" not in str(error.value)
    result = import_model(tmp_path / "extra.safetensors", "depth", tmp_path / "out.safetensors", backbone=config,
                          head="linear", ignore=[r"^fc_norm\."])
    assert result.ignored == ["fc_norm.weight"]
    del state["fc_norm.weight"], state["norm.bias"], state["blocks.0.mlp.fc1.bias"]
    save_file(state, tmp_path / "short.safetensors")
    with pytest.raises(CheckpointError, match=r"2 model keys missing: backbone\.blocks\.0\.mlp\.fc1\.bias, "
                                              r"backbone\.norm\.bias;"):
        import_model(tmp_path / "short.safetensors", "depth", tmp_path / "out.safetensors", backbone=config,
                     head="linear")


def test_a_head_for_another_task_is_refused(tmp_path):
    vit, head, config = make_source("linear", channels=2)
    save_file({**vit.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}}, tmp_path / "s.safetensors")
    with pytest.raises(CheckpointError, match="the head predicts 2 channels, task 'depth' needs 1"):
        import_model(tmp_path / "s.safetensors", "depth", tmp_path / "o.safetensors", backbone=config, head="linear")


def test_another_image_size_resamples_the_position_embedding_with_timm(tmp_path):
    vit, head, config = make_source("linear")
    save_file({**vit.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}}, tmp_path / "s.safetensors")
    result = import_model(tmp_path / "s.safetensors", "depth", tmp_path / "o.safetensors", backbone=config,
                          head="linear", img_size=48)
    assert result.resampled_pos_embed == (4, 4)
    model, info = load_checkpoint(tmp_path / "o.safetensors")
    assert info.backbone.img_size == (48, 48) and model(torch.rand(1, 3, 48, 48)).shape == (1, 1, 48, 48)
    expected = resample_abs_pos_embed(vit.pos_embed.detach(), new_size=[6, 6], num_prefix_tokens=1)
    assert torch.equal(model.backbone.pos_embed.detach(), expected)


def test_a_non_square_source_is_resampled_from_its_own_grid(tmp_path):
    """A 32x48 source (4x6 grid) run at 48x32: timm's helper with old_size=(4, 6), not a
    square guess (24 tokens have none)."""
    vit, head, config = make_source("linear", img_size=(32, 48))
    save_file({**vit.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}}, tmp_path / "s.safetensors")
    result = import_model(tmp_path / "s.safetensors", "depth", tmp_path / "o.safetensors", backbone=config,
                          head="linear", img_size=(48, 32))
    assert result.resampled_pos_embed == (4, 6)
    model, info = load_checkpoint(tmp_path / "o.safetensors")
    assert info.backbone.grid_size == (6, 4) and model(torch.rand(1, 3, 48, 32)).shape == (1, 1, 48, 32)
    expected = resample_abs_pos_embed(vit.pos_embed.detach(), new_size=[6, 4], old_size=[4, 6], num_prefix_tokens=1)
    assert torch.equal(model.backbone.pos_embed.detach(), expected)


def test_imported_linear_and_qk_norm_bundles_agree_across_engines(tmp_path, fixed_timings):
    for variant in ("plain", "qk-norm"):
        paths = []
        for seed, task in enumerate(("depth", "edges")):
            vit, head, config = make_source("linear", seed=0, **VARIANTS[variant])
            if seed:
                with torch.no_grad():
                    for param in vit.parameters():
                        param.add_((torch.rand_like(param) < 0.05) * torch.randn_like(param) * 0.1)
            save_file({**vit.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}},
                      tmp_path / f"{variant}-{task}-src.safetensors")
            paths.append(tmp_path / f"{variant}-{task}.safetensors")
            import_model(tmp_path / f"{variant}-{task}-src.safetensors", task, paths[-1], backbone=config,
                         head="linear")
        bundle = Bundle.from_checkpoints(paths[0], paths[1:])
        images = torch.rand(2, 3, 32, 32)
        engine = SharedEngine(bundle, timings=fixed_timings) if variant == "plain" else make_engine(bundle, "shared")
        assert isinstance(engine, SharedEngine if variant == "plain" else DenseEngine)
        shared = engine.predict(images)
        dense = make_engine(bundle, "dense").predict(images)
        for task in dense:
            assert torch.allclose(shared[task], dense[task], atol=1e-4)
    assert bundle.backbone.qk_norm and bundle.backbone.dense_path_reason


@pytest.mark.parametrize("variant", ["swiglu", "rmsnorm"])
def test_swiglu_and_rmsnorm_bundles_run_by_the_dense_path_with_a_note(variant, tmp_path):
    from mtlcompress.bundle.format import export_bundle, load_bundle
    from mtlcompress.report.inspect import inspect_bundle
    from mtlcompress.sparsify.common import load_pair

    paths = []
    for seed, task in enumerate(("depth", "edges")):
        vit, head, config = make_source("linear", seed=seed, **VARIANTS[variant])
        save_file({**vit.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}},
                  tmp_path / f"{task}-src.safetensors")
        paths.append(tmp_path / f"{task}.safetensors")
        import_model(tmp_path / f"{task}-src.safetensors", task, paths[-1], backbone=config, head="linear")
    export_bundle(paths[0], paths[1:], tmp_path / "bundle.safetensors")
    bundle = load_bundle(tmp_path / "bundle.safetensors")
    engine = make_engine(bundle, "shared")
    assert isinstance(engine, DenseEngine)
    images = torch.rand(2, 3, 32, 32)
    outputs = engine.predict(images)
    for task, path in zip(("depth", "edges"), paths):
        assert torch.allclose(outputs[task], imported_prediction(path, images), atol=1e-5)
    report = inspect_bundle(bundle, tmp_path / "bundle.safetensors")
    reason = {"swiglu": "a SwiGLU MLP", "rmsnorm": "RMSNorm"}[variant]
    assert any("runs by the dense path" in note and reason in note for note in report["notes"])
    if variant == "swiglu":  # fc1 is fc1_g + fc1_x: the layers listed are the ones it has
        assert "blocks.0.mlp.fc1" not in report["bundle"]["layers"]
        with pytest.raises(CheckpointError, match="SwiGLU MLP \\(fc1_g, fc1_x\\) has no fc1"):
            load_pair(paths[0], paths[1])
    else:
        load_pair(paths[0], paths[1])


def test_a_swiglu_with_another_activation_is_refused_in_one_line():
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, mlp_layer=SwiGLU)
    with pytest.raises(CheckpointError, match="only exact GELU with Mlp, SiLU with SwiGLU"):
        config_from_timm(vit, "geglu")


def test_backbone_config_refuses_bad_normalisation():
    with pytest.raises(CheckpointError, match="'std' must be positive"):
        BackboneConfig.from_dict({"std": [0.2, 0.0, 0.2]})
    with pytest.raises(CheckpointError, match="'mean' must be three finite numbers"):
        BackboneConfig.from_dict({"mean": [0.5, 0.5]})
    assert BackboneConfig.from_dict({}).mean == (0.485, 0.456, 0.406)  # files from before the field


def test_a_bare_linear_probe_is_the_linear_head(tmp_path):
    """``decoder.weight``/``decoder.bias`` of an ``nn.Linear`` probe: the same 1x1 map."""
    vit, head, config = make_source("linear", channels=4)
    probe = {"decoder.weight": head.proj.weight.detach()[:, :, 0, 0].clone(), "decoder.bias": head.proj.bias.detach()}
    save_file({**vit.state_dict(), **probe}, tmp_path / "s.safetensors")
    import_model(tmp_path / "s.safetensors", "semseg", tmp_path / "o.safetensors", backbone=config, head="linear",
                 head_prefix="decoder.", mean=MEAN, std=STD)
    images = torch.rand(1, 3, 32, 32)
    assert torch.allclose(imported_prediction(tmp_path / "o.safetensors", images),
                          source_prediction(vit, head, config, images), atol=1e-5)


def _save(layout: str, vit, head, folder):
    """The source as ``layout`` saves it; returns what to import and the head prefix."""
    if layout == "plain":
        save_file({**vit.state_dict(), **{f"head.{k}": v for k, v in head.state_dict().items()}},
                  folder / "src.safetensors")
        return folder / "src.safetensors", "head."
    if layout == "wrapped":
        torch.save({"state_dict": {**{f"module.backbone.{k}": v for k, v in vit.state_dict().items()},
                                   **{f"module.decoder.{k}": v for k, v in head.state_dict().items()}}},
                   folder / "src.pth")
        return folder / "src.pth", "decoder."
    (folder / "hf").mkdir()
    save_file(hf_state(vit, head), folder / "hf" / "model.safetensors")
    (folder / "hf" / "config.json").write_text(json.dumps({
        "model_type": "vit", "hidden_size": 32, "num_hidden_layers": len(vit.blocks), "num_attention_heads": 2,
        "intermediate_size": 128, "image_size": 32, "patch_size": 8, "qkv_bias": True,
        "layer_norm_eps": 1e-6, "hidden_act": "gelu"}))
    (folder / "hf" / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD}))
    return folder / "hf", "decoder."


@pytest.mark.parametrize("layout", ["plain", "wrapped", "hf"])
@pytest.mark.parametrize("head_kind", ["linear", "multilevel"])
def test_linear_and_multilevel_heads_predict_as_their_source_in_every_layout(layout, head_kind, tmp_path):
    vit, head, config = make_source(head_kind, channels=3, layers=(1, 3, 4), depth=4)
    source, prefix = _save(layout, vit, head, tmp_path)
    layers = (1, 3, 4) if head_kind == "multilevel" else None
    result = import_model(source, "normals", tmp_path / "out.safetensors", backbone=None if layout == "hf" else config,
                          head=head_kind, head_prefix=prefix, head_layers=layers, mean=MEAN, std=STD)
    assert result.info.head_type == head_kind and result.info.head_layers == layers
    images = torch.rand(2, 3, 32, 32)
    expected = source_prediction(vit, head, config, images)
    assert torch.allclose(imported_prediction(tmp_path / "out.safetensors", images), expected, atol=1e-5)


def test_head_layers_are_checked_against_the_backbone(tmp_path):
    vit, head, config = make_source("multilevel", layers=(1, 2))
    source, _ = _save("plain", vit, head, tmp_path)
    for layers, message in (((1, 3), "names block 3; the backbone has blocks 1 to 2"), ((2, 1), "must increase"), (None, "needs the blocks")):
        with pytest.raises(CheckpointError, match=message):
            import_model(source, "depth", tmp_path / "out.safetensors", backbone=config, head="multilevel",
                         head_layers=layers)
    with pytest.raises(CheckpointError, match="2 source keys unused: head.proj.1.bias, head.proj.1.weight"):
        import_model(source, "depth", tmp_path / "out.safetensors", backbone=config, head="multilevel",
                     head_layers=(2,))
    with pytest.raises(CheckpointError, match="--head-layers go with a multilevel or module head"):
        import_model(source, "depth", tmp_path / "out.safetensors", backbone=config, head="linear", head_layers=(2,))
