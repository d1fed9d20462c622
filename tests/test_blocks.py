"""The encoder layer against torch's reference layer, its first-row path, and its parameter names."""
import pytest
import torch
from torch import nn

from vidlang.models.blocks import Encoded, EncoderLayer, FusionEncoder, TransformerStack


def reference_layer(width: int, heads: int, dropout: float) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=dropout, activation="gelu",
                                      batch_first=True)


def batch(b=3, n=7, d=16):
    torch.manual_seed(1)
    x = torch.randn(b, n, d)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 1:] = False
    return x, mask


def test_parameter_names_are_torch_layer_names():
    ours, ref = EncoderLayer(16, 4, 0.1), reference_layer(16, 4, 0.1)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("training", [False, True])
def test_matches_torch_layer(training):
    """Same weights, no dropout: the same outputs and gradients as nn.TransformerEncoderLayer (post-norm, GELU)."""
    ours, ref = EncoderLayer(16, 4, 0.0), reference_layer(16, 4, 0.0)
    ours.load_state_dict(ref.state_dict())
    ours.train(training), ref.train(training)
    x, mask = batch()
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_ref = ours(a, mask), ref(b, src_key_padding_mask=~mask)
    real = mask.unsqueeze(-1)
    assert torch.allclose(out_ours * real, out_ref * real, atol=1e-5)
    (out_ours * real).square().sum().backward()
    (out_ref * real).square().sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-4)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4), name


def test_padding_does_not_leak():
    layer = EncoderLayer(16, 4, 0.0).eval()
    x, mask = batch()
    y = x.clone()
    y[1, 4:] = 100.0  # padded positions changed
    assert torch.allclose(layer(x, mask)[1, :4], layer(y, mask)[1, :4], atol=1e-5)


def test_first_rows_equal_full_layer():
    layer = EncoderLayer(16, 4, 0.0).eval()
    x, mask = batch()
    assert torch.allclose(layer(x, mask, rows=2), layer(x, mask)[:, :2], atol=1e-5)


def test_feed_forward_hidden_is_not_dropped_out(monkeypatch):
    """BERT drops out the attention probabilities and the two sublayer outputs, never the 4x-wide activation."""
    layer = EncoderLayer(16, 4, 0.5).train()
    widths = []
    real = nn.functional.dropout

    def spy(x, *a, **k):
        widths.append(x.shape[-1])
        return real(x, *a, **k)

    monkeypatch.setattr(nn.functional, "dropout", spy)
    x, mask = batch()
    layer(x, mask)
    assert widths == [16, 16]


def test_fusion_cls_equals_full_fusion():
    torch.manual_seed(0)
    fusion = FusionEncoder(16, 2, 4, 32, 0.0).eval()
    x, mask = batch()
    text, video = Encoded(x[:, :3], mask[:, :3], x[:, 0]), Encoded(x, mask, x[:, 0])
    assert torch.allclose(fusion(text, video), fusion.fuse(text, video).pooled, atol=1e-5)


def test_stack_runs_its_layers_in_order():
    stack = TransformerStack(16, 4, 3, 0.0).eval()
    x, mask = batch()
    y = x
    for layer in stack.layers:
        y = layer(y, mask)
    assert torch.allclose(stack(x, mask), y)


def test_heads_that_do_not_divide_the_width_name_their_key():
    from vidlang.errors import ConfigError
    from vidlang.models.blocks import VideoEncoder

    with pytest.raises(ConfigError, match="model.video_heads=5 does not divide the width 16"):
        VideoEncoder(8, 16, 1, 5, 32, 0.0)
    with pytest.raises(ConfigError, match="model.fusion_heads=3"):
        FusionEncoder(16, 1, 3, 32, 0.0)
