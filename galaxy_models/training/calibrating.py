"""Calibrating a finished run: its best weights' probabilities on val and test, a temperature fitted
on val (``galaxy_models.calibration``), and the scores before and after on both splits. The result
goes into the model card, where every inference path reads the temperature.

The splits are predicted here and again by ``evaluation.evaluate_run``: one more forward pass over
val and test, a small cost next to training (0.25% of a 100-epoch run on the paper's split), paid to
keep the evaluation step and this one independent.
"""

from __future__ import annotations

from galaxy_models.calibration import Calibration, calibrate
from galaxy_models.training.evaluation import run_predictions
from galaxy_models.training.runs import TrainRun


def calibrate_run(run: TrainRun, *, workers: int = 2, progress: bool = False) -> Calibration:
    """The temperature of a finished run, fitted on its validation split, with ECE, Brier score, NLL and
    reliability bins before and after on val and test.

    Raises:
        ValueError: if the run's dataset has an empty validation split (nothing to fit on).
    """
    predictions = run_predictions(run, ("val", "test"), workers=workers, progress=progress, description="calibrate")
    return calibrate(predictions, fit_split="val")
