"""Stratified 8:1:1 splits and stratified k-fold cross-validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from galaxy_models.data.ingest import IngestConfig, ingest
from galaxy_models.data.splits import SPLITS, CrossValidation, SplitRatios, fold_of, stratified_split
from galaxy_models.storage import LocalStore
from galaxy_models.synth.survey import SynthConfig, synthesize_survey


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


CV_SIZES = [120, 117, 39, 58, 143]  # the real set's shape, a fifth of it, with all 39 cigars


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=5), st.integers(2, 7), st.integers(0, 10**6))
def test_folds_are_stratified_and_even(sizes: list[int], k: int, seed: int) -> None:
    labels = frame(sizes)["label"].to_numpy()
    folds = fold_of(labels, k, seed)
    assert set(folds.tolist()) <= set(range(k))
    for label in range(len(sizes)):
        per_fold = np.bincount(folds[labels == label], minlength=k)
        assert per_fold.max() - per_fold.min() <= 1
    sizes_per_fold = np.bincount(folds, minlength=k)
    assert sizes_per_fold.max() - sizes_per_fold.min() <= 1


def test_cross_validation_test_splits_partition_the_set() -> None:
    data = frame(CV_SIZES)
    parts = [
        stratified_split(data, SplitRatios(), 3, cross_validation=CrossValidation(folds=5, fold=f)) for f in range(5)
    ]
    tests = [set(p["test"]["galaxy_id"]) for p in parts]
    assert sum(len(t) for t in tests) == len(data)
    assert set().union(*tests) == set(data["galaxy_id"])  # every galaxy in exactly one test split
    for p in parts:
        train, val, test = (set(p[s]["galaxy_id"]) for s in SPLITS)
        assert not train & test
        assert not val & test
        assert not train & val
        assert train | val | test == set(data["galaxy_id"])
        for label, n in enumerate(CV_SIZES):
            got = {s: int((p[s]["label"] == label).sum()) for s in SPLITS}
            assert abs(got["test"] - n / 5) < 1
            rest = n - got["test"]
            assert abs(got["val"] - rest / 9) <= 0.5 + 1e-9  # val : train = 1 : 8, as in the ratios
    cigars = [int((p["test"]["label"] == 2).sum()) for p in parts]
    assert sorted(cigars) == [7, 8, 8, 8, 8]


def test_cross_validation_is_seeded_and_order_free() -> None:
    data = frame(CV_SIZES)
    shuffled = data.sample(frac=1.0, random_state=1).reset_index(drop=True)
    cv = CrossValidation(folds=5, fold=2)
    a, b = (
        stratified_split(data, SplitRatios(), 7, cross_validation=cv),
        stratified_split(shuffled, SplitRatios(), 7, cross_validation=cv),
    )
    for split in SPLITS:
        assert a[split]["galaxy_id"].tolist() == b[split]["galaxy_id"].tolist()
    other = stratified_split(data, SplitRatios(), 8, cross_validation=cv)
    assert set(a["test"]["galaxy_id"]) != set(other["test"]["galaxy_id"])


def test_cross_validation_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="fold 5 does not exist with 5 folds"):
        CrossValidation(folds=5, fold=5)
    with pytest.raises(ValidationError, match="greater than or equal to 2"):
        CrossValidation(folds=1, fold=0)
    with pytest.raises(ValueError, match="at least 2 folds, got 1"):
        fold_of(np.zeros(3), 1, 0)


def test_ingest_makes_one_dataset_version_per_fold(tmp_path: Path) -> None:
    """Each fold is its own dataset version whose test split is that fold; the setting is not hashed
    when unset, so datasets ingested before it existed keep their versions."""
    synthesize_survey(SynthConfig(store=str(tmp_path / "raw"), n=60, seed=2, workers=2), progress=False)
    raw = tmp_path / "raw" / "raw" / "synthetic"
    store = LocalStore(tmp_path / "store")
    plain = IngestConfig(images=str(raw / "images"), labels=str(raw / "labels.csv"), store=store.uri, crop_size=64)
    assert "cross_validation" not in plain.content_settings()
    manifests = [
        ingest(plain.model_copy(update={"cross_validation": CrossValidation(folds=3, fold=f)}), progress=False).manifest
        for f in range(3)
    ]
    assert len({m.version for m in manifests} | {ingest(plain, progress=False).manifest.version}) == 4
    tests = [{k for s in m.shards if s.split == "test" for k in s.sample_keys} for m in manifests]
    assert len(set().union(*tests)) == sum(len(t) for t in tests) == manifests[0].counts.sharded  # disjoint, all
