"""Calibration after training: train -> evaluate -> calibrate -> publish stores the temperature, the
scores before and after on val and test, and the reliability diagram in the model card."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from galaxy_models.calibration import split_calibration
from galaxy_models.registry.cards import read_card
from galaxy_models.reports import training_markdown
from galaxy_models.storage import LocalStore
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.evaluation import run_predictions
from galaxy_models.training.loop import train
from galaxy_models.training.pipeline import train_evaluate_publish
from galaxy_models.training.runs import TrainRun


class _FinishedRun:
    """Steps that hand back the already finished run for "train" (no torchrun) and run the rest."""

    def __init__(self, run: TrainRun) -> None:
        self.finished = run
        self.names: list[str] = []

    def run(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.names.append(name)
        return self.finished if name == "train" else fn(*args, **kwargs)

    def map(self, name: str, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], /) -> list[Any]:
        return [fn(*call) for call in calls]


def test_publishing_a_run_stores_its_calibration_and_reliability_figure(root: Path) -> None:
    store = LocalStore(root)
    config = TrainConfig(preset="smoke", store=str(root), epochs=1, workers=0)  # the fixture's run: found, not rerun
    run = train(config, progress=False, log=lambda _: None)
    (root / "models" / run.name / run.run_id / "card.json").unlink()  # published without calibration: anew
    steps = _FinishedRun(run)
    card = train_evaluate_publish(config, log=lambda _: None, progress=False, steps=steps).card
    assert steps.names == ["train", "evaluate", "calibrate", "publish"]
    assert card == read_card(store, run.name, run.run_id)
    calibration = card.calibration
    assert calibration is not None
    assert calibration.fitted_on == "val"
    assert 0.05 <= calibration.temperature <= 20
    assert set(calibration.splits) == {"val", "test"}
    predictions = run_predictions(run, workers=0)
    for split, scores in calibration.splits.items():
        assert scores.samples == card.metrics[split].samples
        assert sum(b.count for b in scores.bins_before) == sum(b.count for b in scores.bins_after) == scores.samples
        labels, probabilities = predictions[split]
        again = split_calibration(probabilities, labels, calibration.temperature)
        assert again.ece_before == pytest.approx(scores.ece_before, abs=1e-6)
        assert again.brier_after == pytest.approx(scores.brier_after, abs=1e-6)
    val = calibration.splits["val"]
    assert val.nll_after <= val.nll_before + 1e-9  # T minimises the validation NLL; T = 1 was a candidate
    assert "reliability.png" in card.figures
    png = (root / "models" / run.name / run.run_id / "reliability.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    report = training_markdown(card, store)
    assert "## Calibration" in report
    assert f"T = {calibration.temperature:.3f}" in report
    assert np.isfinite([val.ece_before, val.ece_after, val.brier_before, val.brier_after]).all()
