"""classify-flow: every new survey batch in incoming/ -> a catalog from the production model.

Each batch is planned (its image keys dealt into parts), its parts are classified by tasks, on this
process by default or on a Dask cluster (``runner: dask``), and the catalog is committed with a
conditional write once every part is in.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.steps import PrefectSteps
from galaxy_models.inference.classify import classify_pending
from galaxy_models.inference.config import ClassifyConfig
from galaxy_models.reports import artifact_key, classify_rows, late_rows, skipped_rows


def task_runner(config: ClassifyConfig) -> Any:
    """Where a batch's parts run: a Dask cluster, or one at a time here (torch already uses every core)."""
    if config.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if config.dask_address:
            return DaskTaskRunner(address=config.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": config.dask_workers, "threads_per_worker": 1})
    return ThreadPoolTaskRunner(max_workers=1)


@flow(name="classify-flow", log_prints=True)
def classify_flow(config: ClassifyConfig = ClassifyConfig()) -> dict[str, Any]:  # noqa: B008
    """Classify the batches without a catalog for the model version (or those named)."""
    report = classify_pending(config, progress=True, steps=PrefectSteps(task_runner(config)))
    card = report.card
    for result in report.batches:
        state = "committed" if result.committed else "already committed by another run"
        print(f"{result.manifest.batch_id}: {result.manifest.rows} rows {state}")
    if report.skipped:
        create_table_artifact(
            table=skipped_rows(report.skipped),
            key=f"{artifact_key('classify', card.name)}-skipped",
            description="Folders under incoming/ that are not batches, left unclassified",
        )
    if report.late:
        create_table_artifact(
            table=late_rows(report.late),
            key=f"{artifact_key('classify', card.name)}-late",
            description="Images that arrived in a batch after its catalog was planned: not in the catalog",
        )
    if report.batches:
        create_table_artifact(
            table=classify_rows([r.manifest for r in report.batches]),
            key=artifact_key("classify", card.name),
            description=f"Catalog rows per batch for {card.name}/{card.version}: flags and predicted classes",
        )
    return report.summary()
