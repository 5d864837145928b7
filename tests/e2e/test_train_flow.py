"""train-flow on a temporary Prefect server: the run, the published card and both artifacts."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from galaxy_models.registry.cards import read_card
from galaxy_models.storage import LocalStore
from galaxy_models.training.config import TrainConfig


@pytest.mark.usefixtures("prefect_server")
def test_train_flow_publishes_a_card_and_artifacts(synthetic_dataset: Path, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.train import train_flow

    root = tmp_path / "store"
    shutil.copytree(synthetic_dataset, root)
    result = train_flow(TrainConfig(preset="smoke", store=str(root), epochs=1, workers=0))
    card = read_card(LocalStore(root), "cs_resnet_tiny", result["version"])
    assert result["card"].endswith(f"models/cs_resnet_tiny/{card.version}/card.json")
    assert result["metrics"]["test"]["accuracy"] == card.metrics["test"].accuracy
    assert card.dataset["name"] == "synthetic"
    assert len(card.dataset["manifest_sha256"]) == 64

    async def artifacts() -> dict[str, str]:
        async with get_client() as client:
            keys = ["train-cs-resnet-tiny-metrics", "train-cs-resnet-tiny-report"]
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
            return {a.key: str(a.data) for a in found if a.key}

    published = asyncio.run(artifacts())
    assert set(published) == {"train-cs-resnet-tiny-metrics", "train-cs-resnet-tiny-report"}
    assert "| Network | Accuracy | Precision | Recall | F1-score |" in published["train-cs-resnet-tiny-report"]
    assert "confusion_test.png" in published["train-cs-resnet-tiny-report"]
