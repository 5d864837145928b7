"""Training losses for a long-tailed class distribution (the cigars are 2% of the galaxies).

``class_weights`` weighs each class's loss inversely to its training frequency; ``LogitAdjustedLoss``
(Menon et al. 2021, "Long-tail learning via logit adjustment") instead adds ``tau * log(prior)`` to
the logits inside the loss only. The network is then pushed to win by a larger margin on the rare
classes, while its plain argmax at test time estimates the balanced (per-class) error. Both read
the training split's class counts from the dataset manifest; ``criterion`` builds the one a
``TrainConfig`` asks for.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from galaxy_models.data.manifest import DatasetManifest
from galaxy_models.domain import CLASS_NAMES
from galaxy_models.training.config import TrainConfig


def training_counts(manifest: DatasetManifest) -> np.ndarray:
    """Images of each class in the training split, from the manifest's totals."""
    return np.array([manifest.totals["train"].get(str(k), 0) for k in range(len(CLASS_NAMES))], dtype=float)


def class_weights(config: TrainConfig, manifest: DatasetManifest) -> torch.Tensor | None:
    """Loss weights inverse to the training split's class counts (``class_weights="balanced"``)."""
    if config.class_weights == "none":
        return None
    counts = training_counts(manifest)
    weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def class_prior(manifest: DatasetManifest) -> torch.Tensor:
    """The training split's class frequencies. A class with no training image counts as one, so its
    log-prior stays finite (label smoothing still gives it a share of the target)."""
    counts = np.maximum(training_counts(manifest), 1.0)
    return torch.tensor(counts / counts.sum(), dtype=torch.float32)


class LogitAdjustedLoss(nn.Module):
    """Cross-entropy on ``logits + tau * log(prior)``; with a uniform prior, plain cross-entropy."""

    adjustment: torch.Tensor
    weight: torch.Tensor | None

    def __init__(
        self,
        prior: torch.Tensor,
        *,
        tau: float = 1.0,
        weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if prior.ndim != 1 or not bool((prior > 0).all()):
            raise ValueError(f"the prior must be a 1-D tensor of positive frequencies, got {prior.tolist()}")
        self.register_buffer("adjustment", tau * torch.log(prior / prior.sum()))
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        adjusted = logits.float() + self.adjustment  # in float32, as cross-entropy runs under autocast
        return functional.cross_entropy(adjusted, target, weight=self.weight, label_smoothing=self.label_smoothing)


def criterion(config: TrainConfig, manifest: DatasetManifest) -> nn.Module:
    """The training loss ``config`` asks for (``loss``, ``class_weights``, ``label_smoothing``), on the CPU."""
    weights = class_weights(config, manifest)
    if config.loss == "logit_adjusted":
        return LogitAdjustedLoss(
            class_prior(manifest), tau=config.logit_adjust_tau, weight=weights, label_smoothing=config.label_smoothing
        )
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
