"""Paper metrics (macro averages, per-class accuracy, confusion), Table V and the figures."""

from __future__ import annotations

import numpy as np
import pytest

from galaxy_models.metrics import per_class_table, table_v
from galaxy_models.training.evaluation import compute_metrics
from galaxy_models.training.figures import confusion_png, curves_png


def test_metrics_by_hand() -> None:
    labels = [0, 0, 0, 1, 1, 2, 3, 4, 4, 4]
    predictions = [0, 0, 1, 1, 1, 1, 3, 4, 4, 0]
    m = compute_metrics(labels, predictions)
    assert m.samples == 10
    assert m.accuracy == pytest.approx(0.7)
    # per-class recall: 2/3, 1, 0, 1, 2/3 -> macro recall
    assert m.per_class_accuracy == pytest.approx([2 / 3, 1.0, 0.0, 1.0, 2 / 3])
    assert m.recall == pytest.approx(np.mean([2 / 3, 1.0, 0.0, 1.0, 2 / 3]))
    # precision: class 0 2/3, class 1 2/4, class 2 0 (never predicted), class 3 1, class 4 1
    assert m.precision == pytest.approx(np.mean([2 / 3, 0.5, 0.0, 1.0, 1.0]))
    assert m.confusion[2] == [0, 1, 0, 0, 0]
    assert m.support == [3, 2, 1, 1, 3]


def test_a_class_absent_from_the_split_is_not_averaged_in() -> None:
    m = compute_metrics([0, 1, 1], [0, 1, 0])
    assert m.per_class_accuracy[2:] == [None, None, None]
    assert m.recall == pytest.approx((1.0 + 0.5) / 2)


@pytest.mark.parametrize(
    ("labels", "predictions", "message"),
    [([0, 1], [0], "equal"), ([], [], "non-empty"), ([0, 7], [0, 1], r"labels hold classes \[7\]")],
)
def test_bad_inputs_are_named(labels: list[int], predictions: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(labels, predictions)


def test_table_v_and_figures() -> None:
    m = compute_metrics([0, 1, 2, 3, 4], [0, 1, 2, 3, 3])
    table = table_v({"CS_ResNet50": m})
    assert table.splitlines()[0] == "| Network | Accuracy | Precision | Recall | F1-score |"
    assert "| CS_ResNet50 | 80.00% |" in table
    assert "0.00%" in per_class_table({"x": m})
    history = [
        {"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1), "val_accuracy": 0.5, "val_f1": 0.4}
        for e in range(3)
    ]
    for png in (confusion_png(m, "test"), curves_png(history, "test")):
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(png) > 10_000
