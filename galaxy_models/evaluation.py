"""Evaluation as in the paper: accuracy, macro precision, recall and F1, per-class accuracy and the
confusion matrix (scikit-learn), the paper's Table V layout, and the figures (matplotlib).

Macro averages, because the paper's precision is below its accuracy: with 2% cigars, a micro
average would hide the class that is hardest to get right.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from torch import nn
from tqdm import tqdm

from galaxy_models.data import Preprocessing, to_model_input
from galaxy_models.labels import CLASS_NAMES


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


def compute_metrics(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray) -> Metrics:
    """Scores of ``predictions`` against ``labels`` (class indices 0-4).

    Raises:
        ValueError: if the two differ in length, are empty, or hold a class outside 0-4.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    if y.shape != p.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(f"need equal, non-empty 1-D labels and predictions, got shapes {y.shape} and {p.shape}")
    classes = list(range(len(CLASS_NAMES)))
    for name, values in (("labels", y), ("predictions", p)):
        bad = sorted(set(values.tolist()) - set(classes))
        if bad:
            raise ValueError(f"{name} hold classes {bad} outside 0-{classes[-1]}")
    present = sorted(set(y.tolist()))  # macro averages over the classes the split has
    precision, recall, f1, _ = precision_recall_fscore_support(y, p, labels=present, average="macro", zero_division=0)
    matrix = confusion_matrix(y, p, labels=classes)
    support = matrix.sum(axis=1)
    per_class = [float(matrix[k, k] / support[k]) if support[k] else None for k in classes]
    return Metrics(
        samples=int(y.size),
        accuracy=float(accuracy_score(y, p)),
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        per_class_accuracy=per_class,
        support=support.astype(int).tolist(),
        confusion=matrix.astype(int).tolist(),
    )


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocessing: Preprocessing,
    device: torch.device,
    *,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    description: str = "evaluate",
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, class probabilities) over a loader, the model in eval mode."""
    model.eval()
    labels: list[np.ndarray] = []
    probabilities: list[np.ndarray] = []
    for images, y in tqdm(batches, desc=description, disable=not progress, leave=False):
        x = to_model_input(images, preprocessing, device, channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(x)
        probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        labels.append(y.numpy())
    if not labels:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(CLASS_NAMES)), dtype=np.float32)
    return np.concatenate(labels), np.concatenate(probabilities)


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


def _png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def confusion_png(metrics: Metrics, title: str) -> bytes:
    """The confusion matrix as a figure: row-normalised colours, counts and row shares in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(metrics.confusion, dtype=float)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(6.2, 5.4))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            colour = "white" if shares[i, j] > 0.6 else "black"
            text = f"{int(matrix[i, j])}\n{100 * shares[i, j]:.1f}%"
            axes.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ticks = range(len(CLASS_NAMES))
    axes.set_xticks(ticks, [n.replace(" ", "\n") for n in CLASS_NAMES], fontsize=8)
    axes.set_yticks(ticks, CLASS_NAMES, fontsize=8)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"{title}\naccuracy {100 * metrics.accuracy:.2f}%, macro F1 {100 * metrics.f1:.2f}%", fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class")
    return _png(figure)


def curves_png(history: Sequence[dict[str, float]], title: str) -> bytes:
    """Training curves: loss per epoch on the left, validation accuracy and macro F1 on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(h["epoch"]) + 1 for h in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o", label="training loss")
    left.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation loss")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.legend()
    right.plot(epochs, [100 * h["val_accuracy"] for h in history], marker="o", label="validation accuracy")
    right.plot(epochs, [100 * h["val_f1"] for h in history], marker="o", label="validation macro F1")
    right.set_xlabel("epoch")
    right.set_ylabel("%")
    right.legend()
    for axes in (left, right):
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    return _png(figure)
