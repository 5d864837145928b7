"""Attention modules for residual units: channel attention, spatial attention and CBAM.

As in the paper (eqs. 1 and 2) and Woo et al. 2018 (CBAM): channel attention passes the average-
and max-pooled descriptors through one shared 1x1-convolution MLP (C -> C/r -> C), sums them and
applies a sigmoid; spatial attention stacks the channel-wise mean and max maps, applies a 7x7
convolution (followed by BatchNorm, as in the CBAM reference code) and a sigmoid. Each module's
``gate`` returns the weights in [0, 1] so they can be inspected and tested.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

AttentionFactory = Callable[[int], nn.Module]


class ChannelAttention(nn.Module):
    """Reweights channels: ``x * sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))``."""

    def __init__(self, channels: int, *, reduction: int = 16) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be positive, got {channels!r}, {reduction!r}")
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + peak)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SpatialAttention(nn.Module):
    """Reweights positions: ``x * sigmoid(bn(conv7x7([mean_c(x), max_c(x)])))``."""

    def __init__(self, *, kernel_size: int = 7, norm: bool = True) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size!r}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=not norm)
        self.norm = nn.BatchNorm2d(1) if norm else nn.Identity()

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        stacked = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.norm(self.conv(stacked)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class CBAM(nn.Module):
    """Channel attention, then spatial attention (the paper's "CS" module)."""

    def __init__(self, channels: int, *, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction=reduction)
        self.spatial = SpatialAttention(kernel_size=kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


def attention_factory(name: str | None, *, reduction: int = 16, kernel_size: int = 7) -> AttentionFactory | None:
    """The bottleneck hook for an attention setting: ``None`` (plain ResNet) or ``"cbam"``."""
    if name is None:
        return None
    if name == "cbam":
        return partial(CBAM, reduction=reduction, kernel_size=kernel_size)
    raise ValueError(f"unknown attention {name!r}; known: 'cbam' or None")
