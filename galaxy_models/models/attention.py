"""Attention modules for residual units: channel attention, spatial attention and CBAM.

As in the paper (eqs. 1 and 2) and Woo et al. 2018 (CBAM): channel attention passes the average-
and max-pooled descriptors through one shared 1x1-convolution MLP (C -> C/r -> C), sums them and
applies a sigmoid; spatial attention stacks the channel-wise mean and max maps, applies a 7x7
convolution (followed by BatchNorm, as in the CBAM reference code) and a sigmoid. Each module's
``gate`` returns the weights in [0, 1] so they can be inspected and tested.

The maths is the paper's; the work is arranged to be cheap. Written op by op, CBAM cost CS_ResNet50
a quarter of ResNet50's CPU training speed for 0.5% more multiply-accumulates: the time goes to passes
over, and fresh allocations of, the (N, C, H, W) tensor, and to autograd's backward of ``amax``. So:

- Both descriptors go through the MLP in one call, stacked on the batch (2N x C), as two matrix
  products on the 1x1 convolutions' own weights (``F.linear``: several times faster than 1x1
  convolutions on 1x1 maps). Parameter names and shapes are unchanged, so state dicts load as before.
- With gradients (training, Grad-CAM), ``CBAM`` runs as one autograd function, ``_FusedCBAM``. Its
  forward writes one full-size tensor: ``x * channel gate``, whose channel mean and max are taken
  before the spatial gate multiplies it in place. Its backward works in two full-size buffers where
  the op-by-op graph allocated about ten. The maxima keep their arg-max, as max pooling does, so their
  gradient is a scatter of N*C (or N*H*W) values instead of ``amax``'s compare, count and divide over
  the whole tensor. Where a maximum is attained more than once, ``amax`` splits the gradient among the
  ties and this gives it to one of them: both are subgradients, and float activations practically
  never tie. The small parts (MLP, 7x7 convolution, BatchNorm, sigmoids) stay ordinary autograd
  graphs, built in the forward and differentiated in the backward, so their parameters get their
  gradients, and BatchNorm its running statistics, as before. Double backward is not supported.
- Without gradients (inference, export), the plain modules run (``amax``, no arg-max) and, with
  ``inplace=True`` (what ``attention_factory`` builds: the bottleneck's BatchNorm output is a
  temporary), both gates multiply in place. A module watched by a forward hook neither multiplies in
  place nor is bypassed by the fused function (``inference/explain.py`` recomputes the spatial gate
  from the module's input after the call).
- Under ``torch.compile`` the plain modules are traced and the compiler fuses them itself. On a 2-core
  CPU that costs minutes of compilation (CS_ResNet tiny: about 100 s for training, 50 s for
  inference), so it stays opt-in (``TrainConfig.compile``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

AttentionFactory = Callable[[int], nn.Module]


def _observed(module: nn.Module) -> bool:
    """Whether forward hooks may look at the module's input or output."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _apply_gate(module: ChannelAttention | SpatialAttention, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x * gate``, in ``x``'s dtype (autocast may compute the small graph wider), in place where the module
    allows it, nothing needs ``x`` for gradients and no hook may look at it."""
    gate = gate.to(x.dtype)
    if module.inplace and not torch.is_grad_enabled() and not _observed(module):
        return x.mul_(gate)
    return x * gate


class ChannelAttention(nn.Module):
    """Reweights channels: ``x * sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))``."""

    def __init__(self, channels: int, *, reduction: int = 16, inplace: bool = False) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be positive, got {channels!r}, {reduction!r}")
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.inplace = inplace

    def from_descriptors(self, pooled: torch.Tensor) -> torch.Tensor:
        """The gate (N, C, 1, 1) from the average and max descriptors stacked on the batch (2N, C)."""
        squeeze, excite = cast(nn.Conv2d, self.mlp[0]), cast(nn.Conv2d, self.mlp[2])
        both = F.linear(F.relu(F.linear(pooled, squeeze.weight.flatten(1))), excite.weight.flatten(1))
        n = both.shape[0] // 2  # an addition, not sum(): CUDA autocast runs sum in fp32
        return torch.sigmoid(both[:n] + both[n:])[:, :, None, None]

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_descriptors(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _apply_gate(self, x, self.gate(x))


class SpatialAttention(nn.Module):
    """Reweights positions: ``x * sigmoid(bn(conv7x7([mean_c(x), max_c(x)])))``."""

    def __init__(self, *, kernel_size: int = 7, norm: bool = True, inplace: bool = False) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size!r}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=not norm)
        self.norm = nn.BatchNorm2d(1) if norm else nn.Identity()
        self.inplace = inplace

    def from_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """The gate (N, 1, H, W) from the channel mean and max maps stacked on the channels (N, 2, H, W)."""
        return torch.sigmoid(self.norm(self.conv(maps)))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_maps(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _apply_gate(self, x, self.gate(x))


class CBAM(nn.Module):
    """Channel attention, then spatial attention (the paper's "CS" module)."""

    def __init__(self, channels: int, *, reduction: int = 16, kernel_size: int = 7, inplace: bool = False) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction=reduction, inplace=inplace)
        self.spatial = SpatialAttention(kernel_size=kernel_size, inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and not torch.compiler.is_compiling() and not self._observed():
            return _FusedCBAM.apply(x, self, *self.channel.parameters(), *self.spatial.parameters())
        return self.spatial(self.channel(x))

    def _observed(self) -> bool:
        return _observed(self.channel) or _observed(self.spatial)


class _FusedCBAM(torch.autograd.Function):
    """``CBAM.forward`` with gradients, in one full-size buffer forward and two backward (see the module
    docstring). The gates' small graphs are built in the forward and differentiated in the backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cbam: CBAM, *params: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        peak, peak_at = F.adaptive_max_pool2d(x, 1, return_indices=True)
        with torch.enable_grad():
            pooled = torch.cat([x.mean(dim=(2, 3)), peak.view(n, c)]).requires_grad_()
            channel_gate = cbam.channel.from_descriptors(pooled)
        # the gates in x's dtype: under autocast their small graphs may run wider (fp32), and every
        # full-size tensor and gradient here stays in the activations' dtype
        out = x * channel_gate.detach().to(x.dtype)
        map_peak, map_peak_at = out.max(dim=1, keepdim=True)
        with torch.enable_grad():
            maps = torch.cat([out.mean(dim=1, keepdim=True), map_peak], dim=1).requires_grad_()
            spatial_gate = cbam.spatial.from_maps(maps)
        out.mul_(spatial_gate.detach().to(x.dtype))
        ctx.save_for_backward(x, peak_at, map_peak_at)
        ctx.graphs = (pooled, channel_gate, maps, spatial_gate)
        ctx.params = params
        ctx.channel_params = len(list(cbam.channel.parameters()))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, peak_at, map_peak_at = ctx.saved_tensors
        pooled, channel_graph, maps, spatial_graph = ctx.graphs
        channel_gate, spatial_gate = channel_graph.detach().to(x.dtype), spatial_graph.detach().to(x.dtype)
        spatial_params, channel_params = ctx.params[ctx.channel_params :], ctx.params[: ctx.channel_params]
        n, c, h, w = x.shape
        # out = y * spatial_gate, y = x * channel_gate: the spatial gate's gradient sums grad * y over channels
        buffer = torch.mul(grad, x).mul_(channel_gate)
        d_maps, d_spatial = _small_grads(spatial_graph, maps, spatial_params, buffer.sum(dim=1, keepdim=True))
        d_maps = d_maps.to(x.dtype)
        # y's gradient, in the same buffer: through the product, the channel mean and the channel max
        d_y = torch.addcmul(d_maps[:, :1] / c, grad, spatial_gate, out=buffer)
        d_y.scatter_add_(1, map_peak_at, d_maps[:, 1:])
        d_cg = (d_y * x).sum(dim=(2, 3), keepdim=True)
        d_pooled, d_channel = _small_grads(channel_graph, pooled, channel_params, d_cg)
        d_pooled = d_pooled.to(x.dtype)
        # x's gradient, in the same buffer: through the product, the positions' mean and their max
        d_x = torch.addcmul((d_pooled[:n] / (h * w))[:, :, None, None], d_y, channel_gate, out=d_y)
        rows = torch.arange(n, device=x.device)[:, None].expand(n, c)
        columns = torch.arange(c, device=x.device).expand(n, c)
        peak_at = peak_at.view(n, c)
        d_x.index_put_((rows, columns, peak_at // w, peak_at % w), d_pooled[n:], accumulate=True)
        return (d_x, None, *d_channel, *d_spatial)


def _small_grads(
    output: torch.Tensor, leaf: torch.Tensor, params: tuple[torch.Tensor, ...], grad: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Gradients of a gate's small graph for its input leaf and those of ``params`` that need them."""
    wanted = [p for p in params if p.requires_grad]
    # retain_graph: the small graphs live as long as ctx, so a retained outer graph can run backward again
    grads = torch.autograd.grad(output, [leaf, *wanted], grad.to(output.dtype), retain_graph=True)
    found = iter(grads[1:])
    return grads[0], [next(found) if p.requires_grad else None for p in params]


def attention_factory(name: str | None, *, reduction: int = 16, kernel_size: int = 7) -> AttentionFactory | None:
    """The bottleneck hook for an attention setting: ``None`` (plain ResNet) or ``"cbam"``. The modules
    gate in place without gradients: the bottleneck passes them its BatchNorm output, a temporary."""
    if name is None:
        return None
    if name == "cbam":
        return partial(CBAM, reduction=reduction, kernel_size=kernel_size, inplace=True)
    raise ValueError(f"unknown attention {name!r}; known: 'cbam' or None")
