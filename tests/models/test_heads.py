import pytest
import torch
import torch.nn.functional as F

from mtlcompress.models.heads import DenseHead


@pytest.mark.parametrize("channels,batch", [(1, 1), (5, 2)])
def test_dense_head_is_a_3x3_conv_a_1x1_conv_and_a_pixel_shuffle(channels, batch):
    torch.manual_seed(0)
    head = DenseHead(embed_dim=12, out_channels=channels, patch_size=4, hidden=8)
    grid = 3
    tokens = torch.randn(batch, grid * grid, 12)
    image = tokens.transpose(1, 2).reshape(batch, 12, grid, grid)
    expected = F.pixel_shuffle(head.proj(F.gelu(head.conv(image))), 4)
    out = head(tokens, grid)
    assert out.shape == (batch, channels, grid * 4, grid * 4)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
