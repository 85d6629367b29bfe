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
