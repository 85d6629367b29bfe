"""Patch embedding and dense head updated where a video frame changed, against timm's
and our head's full computation."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from mtlcompress.models.heads import DenseHead
from mtlcompress.runtime.incremental_embed import PatchEmbedState, embed_tokens, supports_incremental_embed
from mtlcompress.runtime.incremental_head import HeadState, supports_incremental_head

IMG, PATCH, DIM = 24, 4, 32
GRID = IMG // PATCH
HEAD_GRID = (GRID, GRID - 2)  # rows, cols: a non-square grid finds any swapped axis


def _backbone(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=1, num_heads=2, num_classes=0,
                             **kwargs).eval()


@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_patch_embedding_updates_equal_a_full_embedding(reg_tokens):
    backbone = _backbone(reg_tokens=reg_tokens)
    assert supports_incremental_embed(backbone)
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, IMG, IMG, generator=gen)
    with torch.inference_mode():
        state = PatchEmbedState(backbone, pixels)
        torch.testing.assert_close(state.tokens(), embed_tokens(backbone, pixels))
        for step in range(4):
            pixels = pixels.clone()
            if step:  # step 0: nothing moved
                # One pixel of a corner patch in one image, a block across four patches in the other.
                pixels[0, :, -1, -1] += 1.0
                pixels[1, 1, 2 + step:9 + step, 3:6] -= 0.5
            torch.testing.assert_close(state.update(pixels), embed_tokens(backbone, pixels), atol=1e-5, rtol=1e-5)


def test_only_plain_patch_embeddings_are_updated_incrementally():
    assert not supports_incremental_embed(_backbone(dynamic_img_pad=True))
    assert not supports_incremental_embed(torch.nn.Module())


@pytest.mark.parametrize("moved", [0, 1, 3, GRID * (GRID - 2)])  # none, one, a few (edges, corners), all tokens
def test_head_updates_equal_the_full_head(moved):
    torch.manual_seed(0)
    head, norm = DenseHead(DIM, 3, PATCH, hidden=16).eval(), torch.nn.LayerNorm(DIM)
    assert supports_incremental_head(norm, head)
    prefix = 1
    patches = HEAD_GRID[0] * HEAD_GRID[1]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, prefix + patches, DIM, generator=gen)

    def full(x: torch.Tensor) -> torch.Tensor:
        return head(norm(x)[:, prefix:], HEAD_GRID)

    with torch.inference_mode():
        state = HeadState(norm, head, prefix, HEAD_GRID, x)
        torch.testing.assert_close(state.output, full(x))
        for step in range(3):
            x = x.clone()
            x[:, 0] += 1.0  # the class token never reaches the head
            rows = torch.randperm(patches, generator=gen)[:moved] + prefix
            x[step % 2, rows] += torch.randn(moved, DIM, generator=gen)
            torch.testing.assert_close(state.update(x), full(x), atol=1e-5, rtol=1e-5)


def test_only_our_plain_dense_head_after_a_row_wise_norm_is_updated_incrementally():
    head = DenseHead(DIM, 3, PATCH)
    head.conv = torch.nn.Conv2d(DIM, head.hidden, kernel_size=5, padding=2)
    norm = torch.nn.LayerNorm(DIM)
    assert not supports_incremental_head(norm, head)
    assert not supports_incremental_head(norm, torch.nn.Linear(DIM, 3))
    assert not supports_incremental_head(torch.nn.BatchNorm1d(DIM), DenseHead(DIM, 3, PATCH))  # not row-wise
