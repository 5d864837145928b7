"""Simulated GZ2 votes: the decision tree's arithmetic and Table I agreement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from galaxy_models.labels import DECISION_TREE, NO_CLASS, assign_classes
from galaxy_models.synth.volunteers import simulate_votes


@pytest.fixture(scope="module")
def table() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(11)
    intended = rng.choice([NO_CLASS, 0, 1, 2, 3, 4], size=6000)
    ids = np.arange(200000, 206000).astype(str)
    return simulate_votes(ids, intended, np.random.default_rng(12)), intended


def test_fractions_are_cumulative_like_kaggle(table: tuple[pd.DataFrame, np.ndarray]) -> None:
    frame, _ = table
    for q in DECISION_TREE:
        answers = frame[list(q.columns)].sum(axis=1)
        parent = 1.0 if q.parent is None else frame[q.parent]
        np.testing.assert_allclose(answers, parent, atol=1e-12, err_msg=f"question {q.number}")
    values = frame.drop(columns="GalaxyID").to_numpy()
    assert values.min() >= 0
    assert values.max() <= 1


def test_table_i_returns_the_intended_class(table: tuple[pd.DataFrame, np.ndarray]) -> None:
    frame, intended = table
    classes = assign_classes(frame)
    labelled = intended != NO_CLASS
    assert (classes[labelled] == intended[labelled]).mean() >= 0.99
    assert (classes[~labelled] == NO_CLASS).all()
    for k in range(5):  # no class is left behind
        assert (classes[intended == k] == k).mean() >= 0.98


def test_reproducible() -> None:
    ids, intended = np.array(["1", "2", "3"]), np.array([0, 3, NO_CLASS])
    a = simulate_votes(ids, intended, np.random.default_rng(0))
    b = simulate_votes(ids, intended, np.random.default_rng(0))
    pd.testing.assert_frame_equal(a, b)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="2 galaxy ids but 3"):
        simulate_votes(np.array(["1", "2"]), np.array([0, 1, 2]), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\[5, 9\]"):
        simulate_votes(np.array(["1", "2"]), np.array([5, 9]), np.random.default_rng(0))
