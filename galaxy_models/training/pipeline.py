"""Train -> evaluate -> publish (-> promote): the one story that ``galaxy-pipeline train``,
train-flow and the benchmarks all run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from galaxy_models.registry.cards import ModelCard, Production, promote
from galaxy_models.steps import IN_PROCESS, Steps
from galaxy_models.storage import open_store
from galaxy_models.training.calibrating import calibrate_run
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.evaluation import evaluate_run
from galaxy_models.training.launch import launch
from galaxy_models.training.publishing import publish_run
from galaxy_models.training.runs import TrainRun


@dataclass(frozen=True)
class TrainOutcome:
    run: TrainRun
    card: ModelCard
    production: Production | None  # set when this call promoted the card


def train_evaluate_publish(
    config: TrainConfig,
    *,
    promote_it: bool = False,
    force: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
    steps: Steps = IN_PROCESS,
) -> TrainOutcome:
    """Train with torchrun (or find the finished run), score its best epoch on val and test, fit its
    temperature on val (``calibrating``), publish it to the registry, and make it production if asked
    and it passes the promotion gate (``config.min_val_f1``, and production's score on the same data) or ``force``.

    Raises:
        PromotionRefused: if the gate refuses the published model (it stays published).
        ValueError, RuntimeError, StorageError: from the step that failed, naming what is wrong.
    """
    store = open_store(config.store)
    run = steps.run("train", launch, config, log=log)
    metrics = steps.run("evaluate", evaluate_run, run, workers=config.workers, progress=progress)
    calibration = steps.run("calibrate", calibrate_run, run, workers=config.workers, progress=progress)
    card = steps.run("publish", publish_run, store, run, metrics, calibration)
    production = None
    if promote_it:
        production = steps.run("promote", promote, store, card.name, card.version, floor=config.min_val_f1, force=force)
    return TrainOutcome(run=run, card=card, production=production)
