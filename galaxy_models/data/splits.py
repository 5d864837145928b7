"""Stratified, seeded train/validation/test splits (the paper: 8:1:1 within each class), and the
folds of stratified k-fold cross-validation (one fold the test split, the rest train and val)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

SPLITS = ("train", "val", "test")


class SplitRatios(BaseModel):
    """Fractions of each class that go to each split."""

    train: float = Field(0.8, gt=0.0, lt=1.0)
    val: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitRatios:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"split ratios must sum to 1, got {self.train} + {self.val} + {self.test} = {total}")
        return self


class CrossValidation(BaseModel):
    """Which fold of a stratified k-fold partition is the test split."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    folds: int = Field(5, ge=2, le=100, description="k: the labelled set is cut into this many folds")
    fold: int = Field(0, ge=0, description="the fold (0 to k-1) that becomes the test split")

    @model_validator(mode="after")
    def _fold_exists(self) -> CrossValidation:
        if self.fold >= self.folds:
            raise ValueError(f"fold {self.fold} does not exist with {self.folds} folds (0 to {self.folds - 1})")
        return self


def stratified_split(
    frame: pd.DataFrame,
    ratios: SplitRatios,
    seed: int,
    *,
    cross_validation: CrossValidation | None = None,
    id_column: str = "galaxy_id",
    label_column: str = "label",
) -> dict[str, pd.DataFrame]:
    """Split rows per class: round(n * val) to val, round(n * test) to test, the rest to train.

    With ``cross_validation``, the test split is instead one fold of a stratified k-fold partition
    (``fold_of``), and the other folds are split into val and train in the proportion
    ``ratios.val : ratios.train`` per class (``ratios.test`` is not used). The k test splits of one
    seed are disjoint and cover every row once, so their predictions pool into one confusion matrix.

    The result depends only on the set of (id, label) rows and the seed, not on their order, and each
    split comes back shuffled (so consecutive samples, and therefore shards, mix the classes).
    """
    if frame[id_column].duplicated().any():
        raise ValueError(
            f"duplicate ids in split input: {frame.loc[frame[id_column].duplicated(), id_column].tolist()[:10]}"
        )
    ordered = frame.sort_values(id_column, kind="stable").reset_index(drop=True)
    cv = cross_validation
    fold = None if cv is None else fold_of(ordered[label_column].to_numpy(), cv.folds, seed)
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in SPLITS}
    for label in sorted(ordered[label_column].unique()):
        members = ordered[ordered[label_column] == label]
        members = members.iloc[np.random.default_rng([seed, int(label)]).permutation(len(members))]
        if cv is None or fold is None:
            n_val, n_test = round(len(members) * ratios.val), round(len(members) * ratios.test)
            in_test = (np.arange(len(members)) >= n_val) & (np.arange(len(members)) < n_val + n_test)
        else:
            in_test = fold[members.index.to_numpy()] == cv.fold
            n_val = round(int((~in_test).sum()) * ratios.val / (ratios.val + ratios.train))
        parts["test"].append(members[in_test])
        rest = members[~in_test]  # still in the class's shuffled order
        parts["val"].append(rest.iloc[:n_val])
        parts["train"].append(rest.iloc[n_val:])
    result = {}
    for index, name in enumerate(SPLITS):
        joined = pd.concat(parts[name]) if parts[name] else ordered.iloc[:0]
        shuffle = np.random.default_rng([seed, 1000 + index]).permutation(len(joined))
        result[name] = joined.iloc[shuffle].reset_index(drop=True)
    return result


def fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0 to ``folds``-1) of each row of a stratified k-fold partition, seeded.

    Each class's rows are shuffled with their own generator and dealt round the folds like cards,
    so a class's count differs by at most one between folds; each class starts dealing where the
    previous one stopped, so the folds' sizes also differ by at most one.
    """
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    labels = np.asarray(labels)
    result = np.empty(len(labels), dtype=np.int64)
    start = 0
    for label in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == label)
        rows = rows[np.random.default_rng([seed, int(label), folds]).permutation(len(rows))]
        result[rows] = (start + np.arange(len(rows))) % folds
        start = (start + len(rows)) % folds
    return result
