"""Train -> evaluate -> publish (-> promote): the one story that ``galaxy-pipeline train``,
train-flow and the benchmarks all run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from galaxy_models.registry.cards import ModelCard, Production, promote
from galaxy_models.steps import IN_PROCESS, Steps
from galaxy_models.storage import open_store
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
    log: Callable[[str], None] = print,
    progress: bool = True,
    steps: Steps = IN_PROCESS,
) -> TrainOutcome:
    """Train with torchrun (or find the finished run), score its best epoch on val and test, publish
    it to the registry, and make it production if asked.

    Raises:
        ValueError, RuntimeError, StorageError: from the step that failed, naming what is wrong.
    """
    store = open_store(config.store)
    run = steps.run("train", launch, config, log=log)
    metrics = steps.run("evaluate", evaluate_run, run, workers=config.workers, progress=progress)
    card = steps.run("publish", publish_run, store, run, metrics)
    production = steps.run("promote", promote, store, card.name, card.version) if promote_it else None
    return TrainOutcome(run=run, card=card, production=production)
