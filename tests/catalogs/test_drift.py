"""Drift per batch: class shares against the training split's (Jensen-Shannon) and confidence against
the validation split's; a shifted batch is flagged, one like the training data is not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from galaxy_models.catalogs.drift import DriftReference, batch_drift, drift_reference, js_divergence
from galaxy_models.catalogs.schema import catalog_rows
from galaxy_models.domain import CLASS_NAMES
from galaxy_models.registry.cards import read_card
from galaxy_models.storage import LocalStore

REFERENCE = DriftReference(
    source="test", class_shares=dict(zip(CLASS_NAMES, [0.27, 0.26, 0.02, 0.13, 0.32], strict=True)), mean_confidence=0.8
)


def _rows(classes: list[int], confidence: float) -> object:
    """Catalog rows predicting ``classes`` with top probability ``confidence``."""
    p = np.full((len(classes), 5), (1 - confidence) / 4, dtype=np.float32)
    p[np.arange(len(classes)), classes] = confidence
    keys = [f"incoming/b/{i}.jpg" for i in range(len(classes))]
    return catalog_rows("b", keys, [None] * len(keys), p, model_name="m", model_version="v", low_confidence=0.5)


def _like_reference(n: int = 1000) -> list[int]:
    shares = np.array(list(REFERENCE.class_shares.values()))
    return np.repeat(np.arange(5), np.round(shares * n).astype(int)).tolist()


def test_js_divergence_is_zero_for_equal_shares_and_one_for_disjoint() -> None:
    assert js_divergence(REFERENCE.class_shares, REFERENCE.class_shares) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence({"round": 1.0}, {"spiral": 1.0}) == pytest.approx(1.0)


def test_a_batch_like_the_training_data_does_not_drift() -> None:
    drift = batch_drift(_rows(_like_reference(), 0.78), REFERENCE)
    assert drift.js_divergence < 0.001
    assert drift.confidence_drop == pytest.approx(0.02, abs=1e-6)
    assert not drift.drifted
    assert drift.reasons == []


def test_a_shifted_batch_is_flagged_for_classes_and_for_confidence() -> None:
    shifted = batch_drift(_rows([2] * 600 + [4] * 400, 0.78), REFERENCE)  # cigars and spirals only
    assert shifted.batch_shares["cigar"] == pytest.approx(0.6)
    assert shifted.js_divergence > 0.1
    assert shifted.drifted
    assert "class shares diverge" in shifted.reasons[0]
    unsure = batch_drift(_rows(_like_reference(), 0.55), REFERENCE)  # same classes, much less sure
    assert unsure.confidence_drop == pytest.approx(0.25, abs=1e-6)
    assert unsure.drifted
    assert "mean confidence 0.550" in unsure.reasons[0]
    lenient = batch_drift(_rows([2] * 600 + [4] * 400, 0.78), REFERENCE, js_threshold=0.9)
    assert not lenient.drifted


def test_the_reference_is_the_training_split_of_the_models_dataset(trained_store: Path) -> None:
    store = LocalStore(trained_store)
    card = read_card(store, "cs_resnet_tiny")
    reference = drift_reference(store, card)
    assert reference.source == f"train split of datasets/{card.dataset['name']}/{card.dataset['version']}"
    assert sum(reference.class_shares.values()) == pytest.approx(1.0)
    assert card.calibration is None
    assert reference.mean_confidence is None
    empty = LocalStore(trained_store / "models")  # the dataset is not there: the card's support stands in
    assert "support on the card" in drift_reference(empty, card).source
