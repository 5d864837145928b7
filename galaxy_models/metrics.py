"""Scores of a classifier as the paper reports them, their bootstrap intervals, and their tables.

``Metrics`` holds accuracy, macro precision, recall and F1, per-class accuracy and the confusion
matrix of one split, and optionally their 95% bootstrap intervals; ``table_v`` and
``per_class_table`` lay them out as the paper's Table V and its per-class figures. Macro averages,
because the paper's precision is below its accuracy: with 2% cigars, a micro average would hide the
class that is hardest to get right. Scoring labels and predictions (scikit-learn) lives with
training, in ``training.evaluation``; model cards only carry the result.

Every score here is a function of the confusion matrix, so the intervals resample the matrix's
cells (numpy only): drawing n galaxies with replacement from a split is the same as drawing n
cells from a multinomial with the cells' shares. That also lets cross-validation pool its folds
by adding their confusion matrices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from galaxy_models.domain import CLASS_NAMES

if TYPE_CHECKING:
    import numpy as np

Interval = tuple[float, float]
SCORES = ("accuracy", "precision", "recall", "f1")  # the Table V columns, also the keys of intervals


class Metrics(BaseModel):
    """Scores on one split, as fractions in [0, 1], with their 95% intervals when computed."""

    samples: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    per_class_accuracy: list[float | None]  # recall of each class; None where the split has none
    support: list[int]
    confusion: list[list[int]]  # rows: true class, columns: predicted
    # Percentile bootstrap intervals: keys of SCORES, and one per class (None where the split has none).
    intervals: dict[str, Interval] | None = None
    per_class_interval: list[Interval | None] | None = None


def confusion_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro precision/recall/F1 and per-class recall of a confusion matrix, or of a stack
    of them (shape ``(..., K, K)``, rows true, columns predicted).

    The rule is ``compute_metrics``': macro averages over the classes present (support > 0) in each
    matrix, a class never predicted has precision 0, and F1 is the mean of the per-class F1s.
    ``per_class`` is NaN where a class is absent; an empty matrix scores NaN throughout.
    """
    import numpy as np  # here, not at the top: reading a model card needs no numpy

    c = np.asarray(confusion, dtype=float)
    support, predicted, hits = c.sum(axis=-1), c.sum(axis=-2), np.diagonal(c, axis1=-2, axis2=-1)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, hits / support, np.nan)
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        classes = present.sum(axis=-1)
        return {
            "accuracy": hits.sum(axis=-1) / c.sum(axis=(-2, -1)),
            "precision": np.where(present, precision, 0.0).sum(axis=-1) / classes,
            "recall": np.where(present, recall, 0.0).sum(axis=-1) / classes,
            "f1": np.where(present, f1, 0.0).sum(axis=-1) / classes,
            "per_class": recall,
        }


def bootstrap_intervals(
    confusion: np.ndarray | list[list[int]], *, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[dict[str, Interval], list[Interval | None]]:
    """Percentile bootstrap intervals of the Table V scores and of each class's recall.

    Each of ``n`` resamples draws as many galaxies as the matrix holds, with replacement (a
    multinomial over its cells, from a ``numpy`` Generator seeded with ``seed``), and is scored by
    ``confusion_scores``; a resample that misses a class leaves it out of that resample's macro
    averages and of that class's interval. Classes absent from ``confusion`` get ``None``.

    Raises:
        ValueError: if the matrix is not square, holds negative counts or is empty, or if ``n`` or
            ``level`` is out of range.
    """
    import numpy as np

    c = np.asarray(confusion, dtype=np.int64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or (c < 0).any() or c.sum() == 0:
        raise ValueError(f"need a square, non-negative, non-empty confusion matrix, got {c.tolist()}")
    if n < 2:
        raise ValueError(f"need at least 2 bootstrap resamples, got n={n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    total = int(c.sum())
    cells = np.random.default_rng(seed).multinomial(total, c.ravel() / total, size=n)
    scores = confusion_scores(cells.reshape(n, *c.shape))
    tails = (100 * (1 - level) / 2, 100 * (1 + level) / 2)

    def interval(values: np.ndarray) -> Interval:
        low, high = np.nanpercentile(values, tails)
        return float(low), float(high)

    per_class = [interval(scores["per_class"][:, k]) if c[k].sum() else None for k in range(c.shape[0])]
    return {name: interval(scores[name]) for name in SCORES}, per_class


def metrics_from_confusion(confusion: np.ndarray | list[list[int]]) -> Metrics:
    """``Metrics`` of a confusion matrix (for instance the sum of cross-validation folds' test
    matrices), scored by the same rule as ``compute_metrics``; no intervals."""
    import numpy as np

    c = np.asarray(confusion, dtype=np.int64)
    if c.shape != (len(CLASS_NAMES), len(CLASS_NAMES)) or (c < 0).any() or c.sum() == 0:
        raise ValueError(
            f"need a non-negative, non-empty {len(CLASS_NAMES)}x{len(CLASS_NAMES)} matrix, got {c.tolist()}"
        )
    s = confusion_scores(c)
    return Metrics(
        samples=int(c.sum()),
        **{name: float(s[name]) for name in SCORES},
        per_class_accuracy=[None if np.isnan(v) else float(v) for v in s["per_class"]],
        support=c.sum(axis=1).tolist(),
        confusion=c.tolist(),
    )


def with_intervals(metrics: Metrics, *, n: int = 1000, seed: int = 0) -> Metrics:
    """``metrics`` with bootstrap intervals (``bootstrap_intervals`` of its confusion matrix)."""
    intervals, per_class = bootstrap_intervals(metrics.confusion, n=n, seed=seed)
    return metrics.model_copy(update={"intervals": intervals, "per_class_interval": per_class})


def _cell(value: float | None, interval: Interval | None) -> str:
    """``89.78%``, or ``89.78% [85.3, 93.8]`` with an interval; ``n/a`` for a missing value."""
    if value is None:
        return "n/a"
    if interval is None:
        return f"{100 * value:.2f}%"
    return f"{100 * value:.2f}% [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def table_v(rows: dict[str, Metrics]) -> str:
    """The paper's Table V (network, accuracy, precision, recall, F1-score) in Markdown, percent,
    each score followed by its 95% interval where the metrics carry one."""
    lines = ["| Network | Accuracy | Precision | Recall | F1-score |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, m in rows.items():
        intervals = m.intervals or {}
        cells = [_cell(getattr(m, score), intervals.get(score)) for score in SCORES]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def per_class_table(rows: dict[str, Metrics]) -> str:
    """Per-class accuracy (the share of each class classified correctly) in Markdown, percent, with
    95% intervals where the metrics carry them."""
    header = "| Network | " + " | ".join(f"{k} {n}" for k, n in enumerate(CLASS_NAMES)) + " |"
    lines = [header, "| --- |" + " ---: |" * len(CLASS_NAMES)]
    for name, m in rows.items():
        intervals = m.per_class_interval or [None] * len(m.per_class_accuracy)
        cells = [_cell(v, i) for v, i in zip(m.per_class_accuracy, intervals, strict=True)]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)
