"""Stratified, seeded train/validation/test splits (the paper: 8:1:1 within each class)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, model_validator

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


def stratified_split(
    frame: pd.DataFrame,
    ratios: SplitRatios,
    seed: int,
    *,
    id_column: str = "galaxy_id",
    label_column: str = "label",
) -> dict[str, pd.DataFrame]:
    """Split rows per class: round(n * val) to val, round(n * test) to test, the rest to train.

    The result depends only on the set of (id, label) rows and the seed, not on their order, and each
    split comes back shuffled (so consecutive samples, and therefore shards, mix the classes).
    """
    if frame[id_column].duplicated().any():
        raise ValueError(
            f"duplicate ids in split input: {frame.loc[frame[id_column].duplicated(), id_column].tolist()[:10]}"
        )
    ordered = frame.sort_values(id_column, kind="stable").reset_index(drop=True)
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in SPLITS}
    for label in sorted(ordered[label_column].unique()):
        members = ordered[ordered[label_column] == label]
        order = np.random.default_rng([seed, int(label)]).permutation(len(members))
        members = members.iloc[order]
        n_val, n_test = round(len(members) * ratios.val), round(len(members) * ratios.test)
        parts["val"].append(members.iloc[:n_val])
        parts["test"].append(members.iloc[n_val : n_val + n_test])
        parts["train"].append(members.iloc[n_val + n_test :])
    result = {}
    for index, name in enumerate(SPLITS):
        joined = pd.concat(parts[name]) if parts[name] else ordered.iloc[:0]
        shuffle = np.random.default_rng([seed, 1000 + index]).permutation(len(joined))
        result[name] = joined.iloc[shuffle].reset_index(drop=True)
    return result
