"""train-flow on a temporary Prefect server: the run, the published and promoted card, the library's
steps as named task runs, and both artifacts."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from galaxy_models.registry.cards import production_version, read_card
from galaxy_models.storage import LocalStore
from galaxy_models.training.config import TrainConfig


@pytest.mark.usefixtures("prefect_server")
def test_train_flow_publishes_a_card_and_artifacts(synthetic_dataset: Path, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    from flows.train import train_flow

    root = tmp_path / "store"
    shutil.copytree(synthetic_dataset, root)
    state = train_flow(
        TrainConfig(preset="smoke", store=str(root), epochs=1, workers=0, min_val_f1=0), promote=True, return_state=True
    )
    result = state.result()
    card = read_card(LocalStore(root), "cs_resnet_tiny", result["version"])
    assert result["promoted"]
    assert production_version(LocalStore(root), "cs_resnet_tiny") == card.version
    assert result["card"].endswith(f"models/cs_resnet_tiny/{card.version}/card.json")
    assert result["metrics"]["test"]["accuracy"] == card.metrics["test"].accuracy
    assert card.dataset["name"] == "synthetic"
    assert len(card.dataset["manifest_sha256"]) == 64

    async def artifacts() -> dict[str, str]:
        async with get_client() as client:
            keys = ["train-cs-resnet-tiny-metrics", "train-cs-resnet-tiny-report"]
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
            return {a.key: str(a.data) for a in found if a.key}

    async def task_runs() -> list[str]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
            return [r.name.rsplit("-", 1)[0] for r in runs if r.state and r.state.is_completed()]

    assert sorted(asyncio.run(task_runs())) == ["calibrate", "evaluate", "promote", "publish", "train"]
    published = asyncio.run(artifacts())
    assert set(published) == {"train-cs-resnet-tiny-metrics", "train-cs-resnet-tiny-report"}
    assert "| Network | Accuracy | Precision | Recall | F1-score |" in published["train-cs-resnet-tiny-report"]
    assert "confusion_test.png" in published["train-cs-resnet-tiny-report"]
