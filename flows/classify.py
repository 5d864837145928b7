"""classify-flow: every new survey batch in incoming/ -> a catalog from the production model.

Each batch is planned (its image keys dealt into parts), its parts are classified by tasks, on this
process by default or on a Dask cluster (``runner: dask``), and the catalog is committed with a
conditional write once every part is in.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from galaxy_models import classify as steps
from galaxy_models.catalogs import CatalogManifest, CatalogPart, CatalogPlan
from galaxy_models.classify import ClassifyConfig
from galaxy_models.model_store import ModelCard
from galaxy_models.storage import open_store

step = task(cache_policy=NO_CACHE)  # catalogs are idempotent in the store itself


@step
def find_work(config: ClassifyConfig) -> tuple[ModelCard, list[str]]:
    store = open_store(config.store)
    card = steps.resolve_card(store, config)
    batches = config.batches if config.batches is not None else steps.pending_batches(store, card.version)
    return card, batches


@step
def plan_batch(config: ClassifyConfig, card: ModelCard, batch_id: str) -> CatalogPlan:
    return steps.plan_batch(open_store(config.store), config, card, batch_id)


@step
def classify_part(config: ClassifyConfig, plan: CatalogPlan, index: int) -> CatalogPart:
    return steps.classify_part(config, plan, index)


@step
def commit(config: ClassifyConfig, plan: CatalogPlan, parts: list[CatalogPart]) -> CatalogManifest:
    manifest, wrote = steps.commit(open_store(config.store), plan, parts)
    print(f"{plan.batch_id}: {manifest.rows} rows {'committed' if wrote else 'already committed by another run'}")
    return manifest


@flow(name="classify-parts")
def classify_parts(config: ClassifyConfig, plan: CatalogPlan) -> list[CatalogPart]:
    """The parts of one batch, as concurrent tasks on whichever task runner the caller chose."""
    futures = [classify_part.submit(config, plan, i) for i in range(len(plan.parts()))]
    return [f.result() for f in futures]


def task_runner(config: ClassifyConfig) -> Any:
    if config.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if config.dask_address:
            return DaskTaskRunner(address=config.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": config.dask_workers, "threads_per_worker": 1})
    return ThreadPoolTaskRunner(max_workers=1)  # one part at a time: torch already uses every core


@flow(name="classify-flow", log_prints=True)
def classify_flow(config: ClassifyConfig = ClassifyConfig()) -> dict[str, Any]:  # noqa: B008
    """Classify the batches without a catalog for the model version (or those named)."""
    card, batches = find_work(config)
    print(f"model {card.name}/{card.version}; batches to classify: {', '.join(batches) or 'none'}")
    parts_flow = classify_parts.with_options(task_runner=task_runner(config))
    manifests = []
    for batch_id in batches:
        existing = steps.read_catalog_manifest(open_store(config.store), batch_id, card.version)
        if existing is not None:
            manifests.append(existing)
            continue
        plan = plan_batch(config, card, batch_id)
        manifests.append(commit(config, plan, parts_flow(config, plan)))
    if manifests:
        create_table_artifact(
            table=[{"batch": m.batch_id, "rows": m.rows, **m.flags, **{f"class {k}": v for k, v in m.classes.items()}}
                   for m in manifests],
            key=f"classify-{card.name}".lower().replace("_", "-"),
            description=f"Catalog rows per batch for {card.name}/{card.version}: flags and predicted classes",
        )  # fmt: skip
    return {
        "model": card.name,
        "version": card.version,
        "batches": {m.batch_id: {"rows": m.rows, "flags": m.flags, "classes": m.classes} for m in manifests},
    }
