"""Models by name, so a config or the CLI can say ``model: cs_resnet50``.

Builders are keyword-only and registered with ``@register``. The two paper models are ``resnet50``
and ``cs_resnet50`` (CBAM in every bottleneck); the ``*_tiny`` variants share the code at a fraction
of the size for fast CPU tests and demos.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from galaxy_models.models.attention import attention_factory
from galaxy_models.models.resnet import ResNet

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register(builder: Builder) -> Builder:
    """Register a model builder under its function name."""
    if builder.__name__ in _REGISTRY:
        raise ValueError(f"model {builder.__name__!r} is already registered")
    _REGISTRY[builder.__name__] = builder
    return builder


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)


@register
def resnet50(*, num_classes: int = 5) -> ResNet:
    """ResNet50 (3, 4, 6, 3 bottlenecks), the paper's baseline."""
    return ResNet(layers=(3, 4, 6, 3), num_classes=num_classes)


@register
def cs_resnet50(*, num_classes: int = 5, reduction: int = 16, kernel_size: int = 7) -> ResNet:
    """CS_ResNet50: ResNet50 with channel then spatial attention in every residual unit."""
    attention = attention_factory("cbam", reduction=reduction, kernel_size=kernel_size)
    return ResNet(layers=(3, 4, 6, 3), num_classes=num_classes, attention=attention)


@register
def resnet_tiny(*, num_classes: int = 5) -> ResNet:
    """One bottleneck per stage, a quarter of the width: for tests and quick CPU demos."""
    return ResNet(layers=(1, 1, 1, 1), num_classes=num_classes, base_width=16)


@register
def cs_resnet_tiny(*, num_classes: int = 5) -> ResNet:
    """``resnet_tiny`` with CBAM in every bottleneck."""
    return ResNet(layers=(1, 1, 1, 1), num_classes=num_classes, base_width=16, attention=attention_factory("cbam"))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int = 224) -> int:
    """Multiply-accumulates of one forward pass on a 3 x size x size image (convolutions and linear
    layers; attention's pooling and sigmoid are elementwise and add no MACs). A model built on the
    meta device is counted without doing any arithmetic."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, image_size, image_size, device=device))
    return counter.get_total_flops() // 2


def model_table(image_size: int = 224) -> list[dict[str, Any]]:
    """``{"name", "params", "gmacs"}`` for every registered model, built on the meta device."""
    rows = []
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        rows.append(
            {
                "name": name,
                "params": count_parameters(model),
                "gmacs": round(count_macs(model, image_size) / 1e9, 3),
            }
        )
    return rows
