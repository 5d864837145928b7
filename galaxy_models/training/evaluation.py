"""Evaluating a model as the paper does: class probabilities over a split's loader, scored with
scikit-learn into ``Metrics`` (accuracy, macro precision, recall, F1, per-class accuracy, confusion),
with 95% bootstrap intervals on the scores a model card reports."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from torch import nn

from galaxy_models.data.loader import make_loader
from galaxy_models.domain import CLASS_NAMES
from galaxy_models.metrics import Metrics, with_intervals
from galaxy_models.models.architectures import create_model
from galaxy_models.models.preprocessing import Preprocessing, to_model_input
from galaxy_models.models.serialization import load_checkpoint
from galaxy_models.progress import progress_bar
from galaxy_models.storage import open_store
from galaxy_models.training.runs import TrainRun, run_manifest

# Bootstrap resamples behind a model card's intervals: percentiles at 2.5 and 97.5 settle to about a
# tenth of a point by 1,000, which costs milliseconds (the resampling is of confusion cells).
BOOTSTRAP_SAMPLES = 1000


def compute_metrics(
    labels: Sequence[int] | np.ndarray,
    predictions: Sequence[int] | np.ndarray,
    *,
    bootstrap: int = 0,
    seed: int = 0,
) -> Metrics:
    """Scores of ``predictions`` against ``labels`` (class indices 0-4); with ``bootstrap`` > 0, also
    their 95% percentile intervals over that many resamples of the split (seeded by ``seed``), so that
    two models can be told apart only where their intervals say so.

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
    metrics = Metrics(
        samples=int(y.size),
        accuracy=float(accuracy_score(y, p)),
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        per_class_accuracy=per_class,
        support=support.astype(int).tolist(),
        confusion=matrix.astype(int).tolist(),
    )
    return with_intervals(metrics, n=bootstrap, seed=seed) if bootstrap else metrics


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
    for images, y in progress_bar(batches, desc=description, unit="batch", enabled=progress):
        x = to_model_input(images, preprocessing, device, channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(x)
        probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        labels.append(y.numpy())
    if not labels:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(CLASS_NAMES)), dtype=np.float32)
    return np.concatenate(labels), np.concatenate(probabilities)


def run_predictions(
    run: TrainRun,
    splits: tuple[str, ...] = ("val", "test"),
    *,
    workers: int = 2,
    progress: bool = False,
    description: str = "evaluate",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split -> (labels, raw softmax probabilities) of a finished run's best weights, in this process
    (GPU if there is one), on the data the run trained on (``run_manifest`` checks the seal)."""
    store = open_store(run.config.store)
    manifest = run_manifest(store, run)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model = create_model(run.architecture, num_classes=len(CLASS_NAMES))
    model.load_state_dict(load_checkpoint(store, run.best_key)["model"])
    model.to(device)
    results = {}
    for split in splits:
        loader = make_loader(
            store, manifest, split, batch_size=run.config.batch_size, train=False, workers=workers, distributed=False
        )
        results[split] = predict(
            model, loader, run.preprocessing, device, progress=progress, description=f"{description} {split}"
        )
    return results


def evaluate_run(
    run: TrainRun, splits: tuple[str, ...] = ("val", "test"), *, workers: int = 2, progress: bool = False
) -> dict[str, Metrics]:
    """Scores of a finished run's best weights on each split, with bootstrap intervals."""
    predictions = run_predictions(run, splits, workers=workers, progress=progress)
    return {
        split: compute_metrics(labels, probabilities.argmax(axis=1), bootstrap=BOOTSTRAP_SAMPLES)
        for split, (labels, probabilities) in predictions.items()
    }
