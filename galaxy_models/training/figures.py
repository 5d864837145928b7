"""Figures of a training run (matplotlib, headless): the confusion matrix, the training curves and the
reliability diagram of its calibration."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from galaxy_models.calibration import Calibration
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


def reliability_png(calibration: Calibration, title: str) -> bytes:
    """Reliability diagram per split, before and after temperature scaling: each confidence bin's
    accuracy against its mean confidence (a calibrated model lies on the diagonal), marker area by the
    bin's share of samples, ECE and Brier score in the panel titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(calibration.splits.items())
    figure, panels = plt.subplots(1, max(len(splits), 1), figsize=(5 * max(len(splits), 1), 4.6), squeeze=False)
    for axes, (split, scores) in zip(panels[0], splits, strict=False):
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
        for name, bins, colour in (
            ("raw softmax", scores.bins_before, "tab:red"),
            ("T-scaled", scores.bins_after, "tab:blue"),
        ):
            full = [b for b in bins if b.count and b.confidence is not None and b.accuracy is not None]
            sizes = [400 * b.count / max(scores.samples, 1) + 8 for b in full]
            axes.plot([b.confidence for b in full], [b.accuracy for b in full], color=colour, linewidth=1)
            axes.scatter([b.confidence for b in full], [b.accuracy for b in full], s=sizes, color=colour, label=name)
        fitted = " (T fitted here)" if split == calibration.fitted_on else ""
        axes.set_title(
            f"{split}{fitted}, {scores.samples} images\nECE {100 * scores.ece_before:.1f}% -> "
            f"{100 * scores.ece_after:.1f}%, Brier {scores.brier_before:.3f} -> {scores.brier_after:.3f}",
            fontsize=9,
        )
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel(f"confidence (top probability, {calibration.bins} bins)")
        axes.set_ylabel("accuracy")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, loc="upper left")
    figure.suptitle(f"{title}: temperature T = {calibration.temperature:.3f}", y=1.04)
    return _png(figure)
