"""Stratified 8:1:1 splits."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from galaxy_models.data.splits import SPLITS, SplitRatios, stratified_split


def frame(sizes: list[int]) -> pd.DataFrame:
    rows = [(f"g{label}-{i}", label) for label, n in enumerate(sizes) for i in range(n)]
    return pd.DataFrame(rows, columns=["galaxy_id", "label"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 400), min_size=1, max_size=5), st.integers(0, 10**6))
def test_each_class_is_split_8_1_1_within_one(sizes: list[int], seed: int) -> None:
    parts = stratified_split(frame(sizes), SplitRatios(), seed)
    for label, n in enumerate(sizes):
        got = {s: int((parts[s]["label"] == label).sum()) for s in SPLITS}
        assert sum(got.values()) == n
        for split, share in zip(SPLITS, (0.8, 0.1, 0.1), strict=True):
            assert abs(got[split] - share * n) <= 1


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10**6), st.randoms(use_true_random=False))
def test_order_does_not_matter_and_seed_does(seed: int, random: object) -> None:
    data = frame([50, 30, 7])
    shuffled = data.sample(frac=1.0, random_state=random.randint(0, 10**6)).reset_index(drop=True)  # type: ignore[attr-defined]
    a, b = stratified_split(data, SplitRatios(), seed), stratified_split(shuffled, SplitRatios(), seed)
    for split in SPLITS:
        assert a[split]["galaxy_id"].tolist() == b[split]["galaxy_id"].tolist()
    other = stratified_split(data, SplitRatios(), seed + 1)
    assert any(a[s]["galaxy_id"].tolist() != other[s]["galaxy_id"].tolist() for s in SPLITS)


def test_splits_are_disjoint_and_mixed() -> None:
    parts = stratified_split(frame([100, 100]), SplitRatios(), 0)
    ids = [set(parts[s]["galaxy_id"]) for s in SPLITS]
    assert not ids[0] & ids[1]
    assert not ids[0] & ids[2]
    assert not ids[1] & ids[2]
    assert parts["train"]["label"].head(20).nunique() == 2  # shuffled, not class blocks


def test_bad_ratios_and_duplicates() -> None:
    with pytest.raises(ValidationError, match="sum to 1"):
        SplitRatios(train=0.8, val=0.2, test=0.2)
    with pytest.raises(ValueError, match="duplicate ids"):
        stratified_split(pd.DataFrame({"galaxy_id": ["a", "a"], "label": [0, 0]}), SplitRatios(), 0)
