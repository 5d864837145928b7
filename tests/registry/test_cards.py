"""The model registry in the store: publish once, promote by compare-and-swap, load weights only."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import torch

from galaxy_models.domain import CLASS_NAMES
from galaxy_models.models.architectures import count_parameters, create_model
from galaxy_models.models.preprocessing import Preprocessing
from galaxy_models.registry.cards import (
    ModelCard,
    ModelNotFoundError,
    PromotionConflict,
    PromotionRefused,
    list_models,
    list_versions,
    production_version,
    promote,
    read_card,
)
from galaxy_models.registry.weights import load_model, publish
from galaxy_models.storage import Store
from galaxy_models.training.evaluation import compute_metrics


def _card(
    version: str, predictions: tuple[int, ...] = (0, 1, 2, 3, 4), data: str = "v1", config: dict | None = None
) -> ModelCard:
    metrics = compute_metrics([0, 1, 2, 3, 4], list(predictions))
    return ModelCard(
        name="tiny", version=version, architecture="resnet_tiny", parameters=508_949,
        class_names=list(CLASS_NAMES), preprocessing=Preprocessing(crop_size=224, mean=[0.1] * 3, std=[0.2] * 3),
        config=config or {}, dataset={"name": "d", "version": data, "manifest_sha256": "0" * 64},
        metrics={"val": metrics}, best_epoch=0, history=[], hardware={"device": "cpu"},
        training_seconds=1.0, training_images_per_second=10.0, figures=[], created_at=datetime.now(UTC),
    )  # fmt: skip


def _publish(store: Store, version: str, **card: Any) -> dict[str, torch.Tensor]:
    torch.manual_seed(len(version))
    weights = create_model("resnet_tiny").state_dict()
    assert publish(store, _card(version, **card), weights, {"confusion_val.png": b"\x89PNG fake"})
    return weights


def test_publish_is_write_once_and_loads_weights_only(store: Store) -> None:
    weights = _publish(store, "run1")
    assert not publish(store, _card("run1"), weights, {})  # the same version again writes nothing
    card = read_card(store, "tiny", "run1")
    assert card.figures == ["confusion_val.png"]
    assert store.exists("models/tiny/run1/model.pt")
    model, loaded = load_model(store, "tiny", "run1")
    assert loaded == card
    assert count_parameters(model) == card.parameters
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert list_models(store) == ["tiny"]


def test_promotion(store: Store) -> None:
    _publish(store, "run1")
    _publish(store, "run2")
    assert list_versions(store, "tiny") == ["run1", "run2"]
    with pytest.raises(ModelNotFoundError, match="no production version"):
        read_card(store, "tiny")
    assert promote(store, "tiny", "run1").previous is None
    second = promote(store, "tiny", "run2")
    assert (second.version, second.previous) == ("run2", "run1")
    assert production_version(store, "tiny") == "run2"
    assert read_card(store, "tiny").version == "run2"
    with pytest.raises(ModelNotFoundError, match=r"tiny/run9 is not in .* \(versions: run1, run2\)"):
        promote(store, "tiny", "run9")
    with pytest.raises(ValueError, match="invalid model version"):
        read_card(store, "tiny", "../run1")


def test_concurrent_promotions_one_wins(store: Store) -> None:
    for version in ("run1", "run2", "run3", "run4"):
        _publish(store, version)
    promote(store, "tiny", "run1")
    barrier = threading.Barrier(3)
    outcomes: dict[str, str] = {}
    real_read = store.read_tagged

    def read_then_wait(key: str) -> tuple[bytes, str]:
        result = real_read(key)
        barrier.wait()  # every promoter has read the same production.json before anyone writes
        return result

    store.read_tagged = read_then_wait  # type: ignore[method-assign]

    def attempt(version: str) -> None:
        try:
            promote(store, "tiny", version)
            outcomes[version] = "won"
        except PromotionConflict:
            outcomes[version] = "conflict"

    threads = [threading.Thread(target=attempt, args=(v,)) for v in ("run2", "run3", "run4")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [v for v, o in outcomes.items() if o == "won"]
    assert len(winners) == 1
    assert sorted(outcomes.values()) == ["conflict", "conflict", "won"]
    assert production_version(store, "tiny") == winners[0]


def test_promoting_the_production_version_again_keeps_the_rollback_pointer(store: Store) -> None:
    _publish(store, "run1")
    _publish(store, "run2")
    promote(store, "tiny", "run1")
    promote(store, "tiny", "run2")
    before = store.read_bytes("models/tiny/production.json")
    again = promote(store, "tiny", "run2")
    assert (again.version, again.previous) == ("run2", "run1")
    assert store.read_bytes("models/tiny/production.json") == before  # nothing rewritten


ONE_CLASS = (4, 4, 4, 4, 4)  # a network that calls everything a spiral: macro-F1 0.067
HALF_RIGHT = (0, 1, 2, 0, 0)  # macro-F1 0.5


def test_the_gate_refuses_a_model_below_the_floor(store: Store) -> None:
    _publish(store, "degenerate", predictions=ONE_CLASS)
    with pytest.raises(PromotionRefused, match=r"macro-F1 0.067 is below the floor 0.200") as refused:
        promote(store, "tiny", "degenerate")  # the default floor
    assert "galaxy-pipeline models promote tiny degenerate --force" in str(refused.value)
    assert production_version(store, "tiny") is None
    _publish(store, "half", predictions=HALF_RIGHT, config={"min_val_f1": 0.6})
    with pytest.raises(PromotionRefused, match="below the floor 0.600"):
        promote(store, "tiny", "half")  # the floor its training config set
    assert promote(store, "tiny", "half", floor=0.4).version == "half"  # the caller's floor wins
    assert promote(store, "tiny", "degenerate", force=True).previous == "half"


def test_the_gate_refuses_a_model_worse_than_production_on_the_same_data(store: Store) -> None:
    _publish(store, "good")
    _publish(store, "worse", predictions=HALF_RIGHT)
    _publish(store, "other-data", predictions=HALF_RIGHT, data="v2")
    promote(store, "tiny", "good")
    with pytest.raises(PromotionRefused, match="below production good's 1.000 on the same dataset"):
        promote(store, "tiny", "worse")
    assert production_version(store, "tiny") == "good"
    assert promote(store, "tiny", "other-data").previous == "good"  # scores on other data do not compare
    assert promote(store, "tiny", "good").previous == "other-data"  # a better one goes through
