"""Bootstrap intervals on the Table V scores, the numpy scoring rule behind them, and the tables."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from galaxy_models.metrics import (
    SCORES,
    bootstrap_intervals,
    confusion_scores,
    metrics_from_confusion,
    per_class_table,
    table_v,
    with_intervals,
)
from galaxy_models.training.evaluation import compute_metrics


def predictions(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labels in the real set's class shares and predictions right with probability ``accuracy``."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, size=n, p=[0.27, 0.26, 0.02, 0.13, 0.32])
    wrong = rng.random(n) > accuracy
    return labels, np.where(wrong, (labels + rng.integers(1, 5, size=n)) % 5, labels)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=80))
def test_numpy_scores_follow_compute_metrics_rule(pairs: list[tuple[int, int]]) -> None:
    """The resampled statistic is the one scikit-learn computes for the card (macro over present classes)."""
    labels, predicted = (list(x) for x in zip(*pairs, strict=True))
    reference = compute_metrics(labels, predicted)
    ours = metrics_from_confusion(reference.confusion)
    for score in SCORES:
        assert getattr(ours, score) == pytest.approx(getattr(reference, score))
    assert ours.per_class_accuracy == pytest.approx(reference.per_class_accuracy)
    assert ours.support == reference.support


def test_intervals_contain_the_estimate_and_are_deterministic() -> None:
    labels, predicted = predictions(600, 0.85, seed=1)
    m = compute_metrics(labels, predicted, bootstrap=1000, seed=4)
    assert m.intervals is not None
    assert m.per_class_interval is not None
    for score in SCORES:
        low, high = m.intervals[score]
        assert low < getattr(m, score) < high
    for value, interval in zip(m.per_class_accuracy, m.per_class_interval, strict=True):
        assert interval is not None
        assert value is not None
        assert interval[0] <= value <= interval[1]
    assert compute_metrics(labels, predicted, bootstrap=1000, seed=4) == m
    assert compute_metrics(labels, predicted, bootstrap=1000, seed=5).intervals != m.intervals


def test_intervals_narrow_with_more_samples() -> None:
    small = compute_metrics(*predictions(200, 0.85, seed=2), bootstrap=1000)
    large = compute_metrics(*predictions(5000, 0.85, seed=2), bootstrap=1000)
    assert small.intervals is not None
    assert large.intervals is not None
    for score in SCORES:
        width = {name: m.intervals[score][1] - m.intervals[score][0] for name, m in (("s", small), ("l", large))}  # type: ignore[index]
        assert width["l"] < width["s"] / 2  # 25 times the galaxies: 1/5 as wide, less where 2 cigars are lumpy


def test_a_class_absent_from_the_split_has_no_interval() -> None:
    m = compute_metrics([0, 0, 1, 1, 3, 3], [0, 1, 1, 1, 3, 0], bootstrap=200)
    assert m.per_class_interval is not None
    assert [i is None for i in m.per_class_interval] == [False, False, True, False, True]
    assert "n/a" in per_class_table({"x": m})


def test_a_rare_class_missed_by_some_resamples_is_scored_where_present() -> None:
    """With 2 cigars in 300, about 1 resample in 1,000 has none: no NaN reaches the intervals."""
    confusion = np.diag([100, 100, 2, 50, 48])
    intervals, per_class = bootstrap_intervals(confusion, n=2000, seed=0)
    assert all(np.isfinite(intervals[s]).all() for s in SCORES)
    assert per_class[2] == (1.0, 1.0)


def test_stacked_confusions_score_one_by_one() -> None:
    stack = np.stack([compute_metrics(*predictions(50, a, seed=3)).confusion for a in (0.5, 0.9)])
    scores = confusion_scores(stack)
    for i in range(2):
        assert scores["f1"][i] == pytest.approx(metrics_from_confusion(stack[i]).f1)


@pytest.mark.parametrize(
    ("confusion", "n", "message"),
    [
        ([[1, 2]], 100, "square"),
        ([[0, 0], [0, 0]], 100, "non-empty"),
        ([[1, -1], [0, 1]], 100, "non-negative"),
        ([[1, 0], [0, 1]], 1, "n=1"),
    ],
)
def test_bad_bootstrap_inputs_are_named(confusion: list[list[int]], n: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_intervals(confusion, n=n)


def test_pooled_folds_and_the_tables_show_intervals() -> None:
    """Cross-validation pools its folds by adding confusion matrices; the tables print the intervals."""
    folds = [compute_metrics(*predictions(225, 0.9, seed=s)) for s in range(5)]
    pooled = with_intervals(metrics_from_confusion(np.sum([f.confusion for f in folds], axis=0)))
    assert pooled.samples == sum(f.samples for f in folds)
    table = table_v({"cs_resnet50": pooled})
    assert table.splitlines()[0] == "| Network | Accuracy | Precision | Recall | F1-score |"
    low, high = pooled.intervals["accuracy"]  # type: ignore[index]
    assert f"| cs_resnet50 | {100 * pooled.accuracy:.2f}% [{100 * low:.1f}, {100 * high:.1f}] |" in table
    assert table_v({"x": folds[0]}).count("[") == 0  # no intervals, the old layout
    assert per_class_table({"cs_resnet50": pooled}).count("[") == 5
