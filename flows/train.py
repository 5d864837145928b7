"""train-flow: a dataset version -> a trained, evaluated model in the store's registry.

The training task runs ``torchrun --nproc-per-node=<devices>`` on the worker that picked up the
run, so a GPU host in the ``gpu`` pool trains on all its GPUs; evaluation and publishing follow in
the flow's own process.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from galaxy_models.evaluation import Metrics, per_class_table, table_v
from galaxy_models.model_store import ModelCard, publish_run
from galaxy_models.storage import open_store
from galaxy_models.training import TrainConfig, TrainRun, evaluate_run, launch

step = task(cache_policy=NO_CACHE)  # runs and models are idempotent in the store itself


@step
def train_model(config: TrainConfig) -> TrainRun:
    logger = get_run_logger()
    return launch(config, log=logger.info)


@step
def evaluate(run: TrainRun) -> dict[str, Metrics]:
    return evaluate_run(run, workers=run.config.workers)


@step
def publish(run: TrainRun, metrics: dict[str, Metrics]) -> ModelCard:
    return publish_run(open_store(run.config.store), run, metrics)


@step
def report(card: ModelCard, store_uri: str) -> None:
    key = f"train-{card.name}".lower().replace("_", "-")
    rows = [
        {"split": split, "images": m.samples, "accuracy %": round(100 * m.accuracy, 2),
         "precision %": round(100 * m.precision, 2), "recall %": round(100 * m.recall, 2), "F1 %": round(100 * m.f1, 2)}
        for split, m in card.metrics.items()
    ]  # fmt: skip
    create_table_artifact(
        table=rows,
        key=f"{key}-metrics",
        description=f"{card.name}/{card.version}: Table V metrics (macro averages) on each split",
    )
    store = open_store(store_uri)
    prefix = f"models/{card.name}/{card.version}"
    sections = [
        f"# {card.name} {card.version}",
        f"{card.architecture}, {card.parameters:,} parameters, trained on {card.dataset['name']}/"
        f"{card.dataset['version']}; best epoch {card.best_epoch + 1}, "
        f"{card.training_images_per_second:.1f} training images/s on {card.hardware.get('device')} "
        f"x{card.hardware.get('processes')}.",
    ]
    for split, m in card.metrics.items():
        sections += [f"## {split}", table_v({card.architecture: m}), per_class_table({card.architecture: m})]
    sections += ["## Files", *(f"- {store.url(f'{prefix}/{name}')}" for name in ["card.json", *card.figures])]
    create_markdown_artifact(markdown="\n\n".join(sections), key=f"{key}-report")


@flow(name="train-flow", log_prints=True)
def train_flow(config: TrainConfig = TrainConfig(preset="smoke")) -> dict[str, Any]:  # noqa: B008
    """Train, evaluate the best epoch on val and test, publish to models/, report."""
    run = train_model(config)
    metrics = evaluate(run)
    card = publish(run, metrics)
    report(card, config.store)
    print(f"published {card.name}/{card.version}; promote it with `galaxy-pipeline models promote`")
    return {
        "name": card.name,
        "version": card.version,
        "card": open_store(config.store).url(f"models/{card.name}/{card.version}/card.json"),
        "metrics": {split: {"accuracy": m.accuracy, "f1": m.f1} for split, m in card.metrics.items()},
    }
