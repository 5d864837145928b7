"""Scores of a classifier as the paper reports them, and their tables.

``Metrics`` holds accuracy, macro precision, recall and F1, per-class accuracy and the confusion
matrix of one split; ``table_v`` and ``per_class_table`` lay them out as the paper's Table V and
its per-class figures. Macro averages, because the paper's precision is below its accuracy: with
2% cigars, a micro average would hide the class that is hardest to get right. Scoring itself
(scikit-learn) lives with training, in ``training.evaluation``; model cards only carry the result.
"""

from __future__ import annotations

from pydantic import BaseModel

from galaxy_models.domain import CLASS_NAMES


class Metrics(BaseModel):
    """Scores on one split, as fractions in [0, 1]."""

    samples: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    per_class_accuracy: list[float | None]  # recall of each class; None where the split has none
    support: list[int]
    confusion: list[list[int]]  # rows: true class, columns: predicted


def table_v(rows: dict[str, Metrics]) -> str:
    """The paper's Table V (network, accuracy, precision, recall, F1-score) in Markdown, percent."""
    lines = ["| Network | Accuracy | Precision | Recall | F1-score |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, m in rows.items():
        cells = [f"{100 * v:.2f}%" for v in (m.accuracy, m.precision, m.recall, m.f1)]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def per_class_table(rows: dict[str, Metrics]) -> str:
    """Per-class accuracy (the share of each class classified correctly) in Markdown, percent."""
    header = "| Network | " + " | ".join(f"{k} {n}" for k, n in enumerate(CLASS_NAMES)) + " |"
    lines = [header, "| --- |" + " ---: |" * len(CLASS_NAMES)]
    for name, m in rows.items():
        cells = ["n/a" if v is None else f"{100 * v:.2f}%" for v in m.per_class_accuracy]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)
