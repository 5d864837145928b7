"""ingest-flow against a real (temporary) Prefect server: result, artifacts, idempotent re-run."""

from __future__ import annotations

from pathlib import Path

import pytest

from galaxy_models.data.ingest import IngestConfig
from galaxy_models.data.manifest import read_manifest
from galaxy_models.data.shards import verify_dataset
from galaxy_models.storage import LocalStore
from galaxy_models.synth.survey import SynthConfig, synthesize_survey


@pytest.mark.usefixtures("prefect_server")
def test_ingest_flow_runs_and_publishes_reports(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.ingest import ingest_flow

    synthesize_survey(SynthConfig(store=str(tmp_path), n=120, seed=2, workers=2), progress=False)
    raw = tmp_path / "raw" / "synthetic"
    config = IngestConfig(
        images=str(raw / "images"),
        labels=str(raw / "labels.csv"),
        store=str(tmp_path),
        name="flowtest",
        samples_per_shard=20,
    )
    summary = ingest_flow(config)
    store = LocalStore(tmp_path)
    manifest = read_manifest(store, "flowtest")
    assert summary["dataset"] == "flowtest"
    assert summary["version"] == manifest.version
    assert summary["manifest"].endswith(f"datasets/flowtest/{manifest.version}/manifest.json")
    assert summary["counts"] == manifest.totals
    assert verify_dataset(store, manifest) == len(manifest.shards)
    files = store.list("datasets/flowtest/")

    again = ingest_flow(config)
    assert again == summary
    assert store.list("datasets/flowtest/") == files

    async def artifacts() -> dict[str, str]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["ingest-flowtest-splits", "ingest-flowtest-report"])
                )
            )
            return {a.key: str(a.data) for a in found if a.key}

    import asyncio

    published = asyncio.run(artifacts())
    assert set(published) == {"ingest-flowtest-splits", "ingest-flowtest-report"}
    assert "quarantined" in published["ingest-flowtest-report"]
    assert "train" in published["ingest-flowtest-splits"]
