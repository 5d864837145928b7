"""Losses for the rare class: logit adjustment (Menon et al. 2021) and balanced class weights, built
from the training split's counts in the manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn import functional

from galaxy_models.training.config import TrainConfig
from galaxy_models.training.loop import train
from galaxy_models.training.losses import LogitAdjustedLoss, class_prior, criterion
from galaxy_models.training.runs import resolve_dataset


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(16, 5, generator=generator), torch.randint(0, 5, (16,), generator=generator)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjustment_is_cross_entropy_on_shifted_logits(tau: float) -> None:
    logits, target = batch()
    prior = torch.tensor([0.27, 0.26, 0.02, 0.13, 0.32])
    expected = functional.cross_entropy(logits + tau * torch.log(prior), target)
    assert LogitAdjustedLoss(prior, tau=tau)(logits, target) == pytest.approx(float(expected), rel=1e-6)
    # the rare class's logit is pushed down in training, so the network must raise it to win
    assert LogitAdjustedLoss(prior, tau=tau)(logits, torch.full((16,), 2)) > functional.cross_entropy(
        logits, torch.full((16,), 2)
    )


def test_a_uniform_prior_or_tau_zero_is_plain_cross_entropy() -> None:
    logits, target = batch(1)
    plain = float(functional.cross_entropy(logits, target, label_smoothing=0.1))
    assert LogitAdjustedLoss(torch.full((5,), 0.2), label_smoothing=0.1)(logits, target) == pytest.approx(plain)
    assert LogitAdjustedLoss(torch.tensor([9.0, 1, 1, 1, 1]), tau=0.0, label_smoothing=0.1)(
        logits, target
    ) == pytest.approx(plain)


def test_a_bad_prior_is_named() -> None:
    with pytest.raises(ValueError, match=r"positive frequencies, got \[0.5, 0.0, 0.5\]"):
        LogitAdjustedLoss(torch.tensor([0.5, 0.0, 0.5]))
    with pytest.raises(ValidationError, match="loss"):
        TrainConfig(loss="focal")  # type: ignore[arg-type]


def test_criterion_reads_the_training_counts(synthetic_dataset: Path) -> None:
    config = TrainConfig(preset="smoke", store=str(synthetic_dataset), loss="logit_adjusted", logit_adjust_tau=2.0)
    _, manifest = resolve_dataset(config)
    counts = torch.tensor([float(manifest.totals["train"].get(str(k), 0)) for k in range(5)])
    prior = class_prior(manifest)
    assert prior.sum() == pytest.approx(1.0)
    assert torch.allclose(prior, counts.clamp_min(1) / counts.clamp_min(1).sum())
    loss = criterion(config, manifest)
    assert isinstance(loss, LogitAdjustedLoss)
    logits, target = batch(2)
    assert loss(logits, target) == pytest.approx(float(functional.cross_entropy(logits + 2 * prior.log(), target)))
    balanced = criterion(config.model_copy(update={"loss": "cross_entropy", "class_weights": "balanced"}), manifest)
    assert isinstance(balanced, nn.CrossEntropyLoss)
    assert balanced.weight is not None
    assert torch.allclose(balanced.weight * counts, torch.full((5,), counts.sum() / 5))


def test_the_loss_settings_enter_the_run_id_only_when_set(synthetic_dataset: Path) -> None:
    """Left at their defaults they are not hashed, so runs trained before they existed keep their ids."""
    config = TrainConfig(preset="smoke", store=str(synthetic_dataset))
    _, manifest = resolve_dataset(config)
    ids = [
        config.model_copy(update=extra).run_id(manifest, 1)
        for extra in ({}, {"loss": "cross_entropy", "logit_adjust_tau": 1.0}, {"loss": "logit_adjusted"})
    ]
    assert ids[0] == ids[1] != ids[2]


def test_a_logit_adjusted_run_trains(synthetic_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(synthetic_dataset, root)
    config = TrainConfig(preset="smoke", store=str(root), epochs=2, workers=0, loss="logit_adjusted")
    run = train(config, progress=False, log=lambda _: None)
    assert all(torch.isfinite(torch.tensor(h.train_loss)) for h in run.history)
    assert run.history[-1].train_loss < run.history[0].train_loss
