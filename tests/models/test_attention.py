"""Channel attention, spatial attention and CBAM."""

from __future__ import annotations

import pytest
import torch

from galaxy_models.models.attention import CBAM, ChannelAttention, SpatialAttention, attention_factory


@pytest.fixture
def features() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 32, 9, 7) * 5


def test_channel_gate_is_per_channel_and_in_unit_interval(features: torch.Tensor) -> None:
    gate = ChannelAttention(32, reduction=4).gate(features)
    assert gate.shape == (2, 32, 1, 1)
    assert ((gate >= 0) & (gate <= 1)).all()


def test_spatial_gate_is_per_position_and_in_unit_interval(features: torch.Tensor) -> None:
    gate = SpatialAttention().eval().gate(features)
    assert gate.shape == (2, 1, 9, 7)
    assert ((gate >= 0) & (gate <= 1)).all()


def test_channel_attention_matches_the_paper_equation(features: torch.Tensor) -> None:
    """w = sigmoid(MLP(avgpool) + MLP(maxpool)) with one shared MLP, then x * w."""
    module = ChannelAttention(32, reduction=4)
    mlp = module.mlp
    avg = features.mean(dim=(2, 3), keepdim=True)
    peak = features.amax(dim=(2, 3), keepdim=True)
    expected = features * torch.sigmoid(mlp(avg) + mlp(peak))
    torch.testing.assert_close(module(features), expected)


def test_spatial_attention_uses_mean_and_max_over_channels(features: torch.Tensor) -> None:
    module = SpatialAttention(norm=False)
    stacked = torch.stack([features.mean(1), features.amax(1)], dim=1)
    expected = features * torch.sigmoid(module.conv(stacked))
    torch.testing.assert_close(module(features), expected)


def test_cbam_is_channel_then_spatial(features: torch.Tensor) -> None:
    module = CBAM(32, reduction=8).eval()
    torch.testing.assert_close(module(features), module.spatial(module.channel(features)))


def test_parameter_counts() -> None:
    # MLP C->C/r->C without biases; 7x7 conv on 2 maps plus BatchNorm's weight and bias.
    assert sum(p.numel() for p in ChannelAttention(256).parameters()) == 2 * 256 * 16
    assert sum(p.numel() for p in SpatialAttention().parameters()) == 2 * 7 * 7 + 2
    assert sum(p.numel() for p in CBAM(256).parameters()) == 2 * 256 * 16 + 100


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="0"):
        ChannelAttention(0)
    with pytest.raises(ValueError, match="kernel_size.*4"):
        SpatialAttention(kernel_size=4)
    with pytest.raises(ValueError, match="unknown attention 'se'"):
        attention_factory("se")
    assert attention_factory(None) is None
