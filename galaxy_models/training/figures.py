"""Figures of a training run (matplotlib, headless): the confusion matrix and the training curves."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from galaxy_models.domain import CLASS_NAMES
from galaxy_models.metrics import Metrics


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
