"""Fine-tuning: a run can start from the weights of a published model (``init_from=NAME@VERSION``),
e.g. one pre-trained on a synthetic GalSim survey; the starting point is part of the run's identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from galaxy_models.data.manifest import read_manifest
from galaxy_models.models.architectures import create_model
from galaxy_models.models.serialization import load_checkpoint
from galaxy_models.registry.cards import ModelNotFoundError
from galaxy_models.storage import LocalStore
from galaxy_models.training.config import TrainConfig
from galaxy_models.training.loop import load_initial_weights, train
from galaxy_models.training.pipeline import train_evaluate_publish


@pytest.fixture(scope="module")
def pretrained(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store holding the synthetic dataset and a published smoke model; its ``NAME@VERSION``."""
    import shutil

    root = tmp_path_factory.mktemp("fine-tuning") / "store"
    shutil.copytree(synthetic_dataset, root)
    config = TrainConfig(preset="smoke", store=str(root), epochs=1, workers=0, name="pretrained")
    card = train_evaluate_publish(config, log=lambda _: None, progress=False).card
    return root, f"{card.name}@{card.version}"


def test_the_starting_weights_are_the_published_models(pretrained: tuple[Path, str]) -> None:
    root, ref = pretrained
    store = LocalStore(root)
    config = TrainConfig(preset="smoke", store=str(root), init_from=ref)
    model = create_model(config.model)
    load_initial_weights(model, store, config)
    name, version = ref.split("@")
    published = load_checkpoint(store, f"models/{name}/{version}/model.pt")
    state = model.state_dict()
    assert state.keys() == published.keys()
    assert all(torch.equal(state[k], published[k]) for k in published)


def test_a_fine_tuned_run_trains_from_them_and_has_its_own_id(pretrained: tuple[Path, str]) -> None:
    root, ref = pretrained
    lines: list[str] = []
    tuned = TrainConfig(preset="smoke", store=str(root), epochs=1, workers=0, name="tuned", init_from=ref)
    run = train(tuned, progress=False, log=lines.append)
    assert f"starting from the weights of {ref}" in lines[0]
    assert len(run.history) == 1
    manifest = read_manifest(LocalStore(root), "synthetic")
    scratch = TrainConfig(preset="smoke", store=str(root), epochs=1, workers=0, name="tuned")
    assert tuned.run_id(manifest, 1) != scratch.run_id(manifest, 1)
    assert "init_from" not in scratch.model_dump(exclude_defaults=True)  # runs from before keep their ids


def test_a_starting_point_must_be_pinned_published_and_the_same_architecture(pretrained: tuple[Path, str]) -> None:
    root, ref = pretrained
    with pytest.raises(ValidationError, match="names no version; use NAME@VERSION"):
        TrainConfig(preset="smoke", store=str(root), init_from="pretrained")
    store = LocalStore(root)
    other = TrainConfig(preset="smoke", store=str(root), model="resnet_tiny", init_from=ref)
    with pytest.raises(ValueError, match=f"init_from {ref} is a cs_resnet_tiny model; this run trains resnet_tiny"):
        load_initial_weights(create_model("resnet_tiny"), store, other)
    missing = TrainConfig(preset="smoke", store=str(root), init_from="pretrained@0123456789abcdef")
    with pytest.raises(ModelNotFoundError, match="0123456789abcdef"):
        load_initial_weights(create_model("cs_resnet_tiny"), store, missing)
