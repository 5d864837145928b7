"""train-flow: a dataset version -> a trained, evaluated model in the store's registry.

The training step runs ``torchrun --nproc-per-node=<devices>`` on the worker that picked up the
run, so a GPU host in the ``gpu`` pool trains on all its GPUs; evaluation and publishing follow in
the flow's own process.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.steps import PrefectSteps
from galaxy_models.reports import artifact_key, training_markdown, training_rows
from galaxy_models.storage import open_store
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.pipeline import train_evaluate_publish


@flow(name="train-flow", log_prints=True)
def train_flow(
    config: TrainConfig = TrainConfig(preset="smoke"),  # noqa: B008
    promote: bool = False,
    force_promote: bool = False,
) -> dict[str, Any]:
    """Train, evaluate the best epoch on val and test, publish to models/, report; promote if asked and
    the gate lets it through (``config.min_val_f1``, production's score), or if forced."""
    outcome = train_evaluate_publish(
        config, promote_it=promote or force_promote, force=force_promote, log=get_run_logger().info,
        progress=False, steps=PrefectSteps(),
    )  # fmt: skip
    card, store = outcome.card, open_store(config.store)
    key = artifact_key("train", card.name)
    create_table_artifact(
        table=training_rows(card),
        key=f"{key}-metrics",
        description=f"{card.name}/{card.version}: Table V metrics (macro averages) on each split",
    )
    create_markdown_artifact(markdown=training_markdown(card, store), key=f"{key}-report")
    if outcome.production is None:
        print(f"published {card.name}/{card.version}; promote it with `galaxy-pipeline models promote`")
    return {
        "name": card.name,
        "version": card.version,
        "card": store.url(f"models/{card.name}/{card.version}/card.json"),
        "metrics": {split: {"accuracy": m.accuracy, "f1": m.f1} for split, m in card.metrics.items()},
        "promoted": outcome.production is not None,
    }
