"""ingest-flow: survey images and a vote table in object storage -> a sharded dataset version."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.steps import PrefectSteps
from galaxy_models.data.ingest import IngestConfig, ingest
from galaxy_models.reports import artifact_key, ingest_markdown, ingest_summary, split_table


@flow(name="ingest-flow", log_prints=True)
def ingest_flow(config: IngestConfig) -> dict[str, Any]:
    """Label, split, check, crop and shard a survey; the manifest is written last."""
    result = ingest(config, steps=PrefectSteps())
    manifest = result.manifest
    if not result.created:
        print(f"dataset {manifest.name}/{manifest.version} is already complete; nothing written")
    key = artifact_key("ingest", manifest.name)
    create_table_artifact(table=split_table(manifest), key=f"{key}-splits", description="Samples per class and split")
    create_markdown_artifact(markdown=ingest_markdown(manifest, result.manifest_uri), key=f"{key}-report")
    return ingest_summary(manifest, result.manifest_uri)
