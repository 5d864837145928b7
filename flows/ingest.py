"""ingest-flow: survey images and a vote table in object storage -> a sharded dataset version."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from galaxy_models import ingest as steps
from galaxy_models.ingest import IngestConfig, JoinResult, LabelTable, SplitResult
from galaxy_models.reports import ingest_markdown, ingest_summary, split_table
from galaxy_models.shards import MANIFEST, DatasetManifest
from galaxy_models.splits import SPLITS, SplitRatios, stratified_split
from galaxy_models.storage import open_store

# Inputs are large tables and images: hashing them for a cache key would cost more than the work.
step = task(cache_policy=NO_CACHE)


@step
def read_labels(uri: str) -> LabelTable:
    return steps.load_labels(uri)


@step
def list_images(uri: str) -> list[str]:
    return steps.list_images(uri)


@step
def join(labels: LabelTable, image_keys: list[str]) -> JoinResult:
    return steps.join_labels_and_images(labels, image_keys)


@step
def find_complete(config: IngestConfig, version: str) -> DatasetManifest | None:
    return steps.find_complete(open_store(config.store), config.name, version)


@step
def split(candidates: pd.DataFrame, ratios: SplitRatios, seed: int) -> dict[str, pd.DataFrame]:
    return stratified_split(candidates, ratios, seed)


@step
def write_split(
    config: IngestConfig, version: str, name: str, members: pd.DataFrame, labels: LabelTable
) -> SplitResult:
    with tempfile.TemporaryDirectory(prefix="galaxy-ingest-") as workdir:
        return steps.shard_split(
            config, open_store(config.store), version, name, members, labels, workdir=Path(workdir)
        )


@step
def commit_manifest(
    config: IngestConfig, version: str, labels: LabelTable, joined: JoinResult, results: list[SplitResult]
) -> DatasetManifest:
    manifest = steps.build_manifest(config, version, labels, joined, results)
    return steps.commit_manifest(open_store(config.store), manifest)


@step
def publish_report(manifest: DatasetManifest, manifest_uri: str) -> None:
    key = f"ingest-{manifest.name}".lower().replace("_", "-")
    create_table_artifact(table=split_table(manifest), key=f"{key}-splits", description="Samples per class and split")
    create_markdown_artifact(markdown=ingest_markdown(manifest, manifest_uri), key=f"{key}-report")


@flow(name="ingest-flow", log_prints=True)
def ingest_flow(config: IngestConfig) -> dict[str, Any]:
    """Label, split, check, crop and shard a survey; the manifest is written last."""
    labels = read_labels(config.labels)
    image_keys = list_images(config.images)
    joined = join(labels, image_keys)
    version = steps.dataset_version(config, labels, image_keys)
    manifest = find_complete(config, version)
    if manifest is None:
        joined.require_candidates(config.images)
        splits = split(joined.candidates, config.split, config.seed)
        results = [write_split(config, version, name, splits[name], labels) for name in SPLITS]
        manifest = commit_manifest(config, version, labels, joined, results)
    else:
        print(f"dataset {config.name}/{version} is already complete; nothing written")
    manifest_uri = open_store(config.store).url(f"{manifest.prefix}/{MANIFEST}")
    publish_report(manifest, manifest_uri)
    return ingest_summary(manifest, manifest_uri)
