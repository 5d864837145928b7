"""Galaxy Zoo 2 vote tables and the paper's Table I: Kaggle vote fractions -> one of five classes.

The Kaggle table (``training_solutions_rev1.csv``) holds ``GalaxyID`` and 37 cumulative vote
fractions ``Class1.1`` .. ``Class11.6``: a child answer's fraction is already multiplied by the
fraction that reached its question. Table I is applied to those columns as published, with ``>=``.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np
import pandas as pd

from galaxy_models.domain import CLASS_NAMES, NAME_PATTERN, NAME_RULE

ID_COLUMN = "GalaxyID"
NO_CLASS = -1
# Values may stray past [0, 1] by rounding in the published table (seen: 1e-6).
RANGE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Question:
    """One question of the GZ2 decision tree: its answers and the answer that leads to it."""

    number: int
    answers: int
    parent: str | None  # column whose fraction this question's answers sum to; None = all votes

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f"Class{self.number}.{a}" for a in range(1, self.answers + 1))


# Q6 ("anything odd?") is asked of every volunteer, so like Q1 it sums to one.
DECISION_TREE: tuple[Question, ...] = (
    Question(1, 3, None),  # smooth / features or disk / star or artifact
    Question(2, 2, "Class1.2"),  # edge-on? yes / no
    Question(3, 2, "Class2.2"),  # bar? yes / no
    Question(4, 2, "Class2.2"),  # spiral arms? yes / no
    Question(5, 4, "Class2.2"),  # bulge prominence
    Question(6, 2, None),  # anything odd? yes / no
    Question(7, 3, "Class1.1"),  # round / in-between / cigar-shaped
    Question(8, 7, "Class6.1"),  # the odd feature
    Question(9, 3, "Class2.1"),  # edge-on bulge: rounded / boxy / none
    Question(10, 3, "Class4.1"),  # arm winding
    Question(11, 6, "Class4.1"),  # number of arms
)
VOTE_COLUMNS: tuple[str, ...] = tuple(c for q in DECISION_TREE for c in q.columns)


@dataclass(frozen=True)
class Condition:
    """``column >= threshold``."""

    column: str
    threshold: float


@dataclass(frozen=True)
class ClassRule:
    """A class and the conditions that must all hold for a galaxy to belong to it."""

    label: int
    name: str
    conditions: tuple[Condition, ...]


def build_rules(rules: Sequence[ClassRule]) -> tuple[ClassRule, ...]:
    """Validate a rule table: labels 0..n-1 in order, known columns, thresholds in (0, 1]."""
    for index, rule in enumerate(rules):
        if rule.label != index:
            raise ValueError(f"rule {rule.name!r} has label {rule.label}, expected {index}")
        if not rule.conditions:
            raise ValueError(f"rule {rule.name!r} has no conditions")
        for cond in rule.conditions:
            if cond.column not in VOTE_COLUMNS:
                raise ValueError(f"rule {rule.name!r} uses unknown column {cond.column!r}")
            if not 0.0 < cond.threshold <= 1.0:
                raise ValueError(f"rule {rule.name!r} has threshold {cond.threshold!r} outside (0, 1]")
    return tuple(rules)


def _rule(label: int, *conditions: tuple[str, float]) -> ClassRule:
    return ClassRule(label, CLASS_NAMES[label], tuple(Condition(c, t) for c, t in conditions))


# Table I of the paper (thresholds on the cumulative Kaggle columns).
TABLE_I: tuple[ClassRule, ...] = build_rules(
    (
        _rule(0, ("Class1.1", 0.469), ("Class7.1", 0.500)),
        _rule(1, ("Class1.1", 0.469), ("Class7.2", 0.500)),
        _rule(2, ("Class1.1", 0.469), ("Class7.3", 0.500)),
        _rule(3, ("Class1.2", 0.430), ("Class2.1", 0.602)),
        _rule(4, ("Class1.2", 0.430), ("Class2.2", 0.715), ("Class4.1", 0.619)),
    )
)


def _describe_rows(frame: pd.DataFrame, mask: np.ndarray | pd.Series, limit: int = 10) -> str:
    rows = np.flatnonzero(np.asarray(mask))
    shown = ", ".join(f"row {r} (GalaxyID {frame[ID_COLUMN].iloc[r]!r})" for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"{shown}{more}"


def validate_votes(frame: pd.DataFrame) -> None:
    """Raise ``ValueError`` naming the offending columns or rows if ``frame`` is not a valid vote table.

    Checks: the ID column and all 37 vote columns are present; IDs are unique and safe as storage
    keys; every vote value is a finite number within [0, 1] (to ``RANGE_TOLERANCE``).
    """
    missing = [c for c in (ID_COLUMN, *VOTE_COLUMNS) if c not in frame.columns]
    if missing:
        raise ValueError(f"vote table is missing columns: {', '.join(missing)}")
    if frame.empty:
        raise ValueError("vote table has no rows")
    ids = frame[ID_COLUMN].astype(str)
    bad_ids = ~ids.str.fullmatch(NAME_PATTERN.pattern)
    if bad_ids.any():
        raise ValueError(f"invalid {ID_COLUMN} (use {NAME_RULE}): {_describe_rows(frame, bad_ids)}")
    duplicated = ids.duplicated(keep=False)
    if duplicated.any():
        raise ValueError(f"duplicate {ID_COLUMN}: {_describe_rows(frame, duplicated)}")
    for column in VOTE_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
        not_finite = ~np.isfinite(values)
        if not_finite.any():
            raise ValueError(
                f"column {column!r} has missing, non-numeric or infinite values: {_describe_rows(frame, not_finite)}"
            )
        outside = (values < -RANGE_TOLERANCE) | (values > 1.0 + RANGE_TOLERANCE)
        if outside.any():
            raise ValueError(f"column {column!r} has values outside [0, 1]: {_describe_rows(frame, outside)}")


def assign_classes(frame: pd.DataFrame, rules: Sequence[ClassRule] = TABLE_I) -> np.ndarray:
    """Apply a rule table to a validated vote table.

    Returns:
        ``int8`` array, one class per row, ``NO_CLASS`` (-1) where no rule holds.

    Raises:
        ValueError: if the table is invalid, or a row satisfies more than one rule.
    """
    validate_votes(frame)
    rules = build_rules(rules)
    matches = np.ones((len(frame), len(rules)), dtype=bool)
    for rule in rules:
        for cond in rule.conditions:
            values = frame[cond.column].to_numpy(dtype=float)
            matches[:, rule.label] &= values >= cond.threshold
    overlapping = matches.sum(axis=1) > 1
    if overlapping.any():
        raise ValueError(f"rows match more than one class rule: {_describe_rows(frame, overlapping)}")
    return np.where(matches.any(axis=1), matches.argmax(axis=1), NO_CLASS).astype(np.int8)


def read_votes(source: str | IO[bytes] | IO[str]) -> pd.DataFrame:
    """Read a Kaggle-format vote table; IDs stay strings (they become storage keys).

    Validation happens in ``assign_classes`` (or call ``validate_votes``), before anything is labelled.
    """
    return pd.read_csv(source, dtype={ID_COLUMN: str})


def parse_votes(data: bytes, source: str) -> pd.DataFrame:
    """``read_votes`` over a file's bytes, first refusing with a ``ValueError`` naming ``source`` a
    file that is not text (an image, an archive, a spreadsheet) instead of a parser's complaint."""
    if not data.strip():
        raise ValueError(f"{source} is empty; give the vote table (CSV with GalaxyID and the 37 vote columns)")
    head = data[:65536]
    if b"\x00" in head:
        raise ValueError(f"{source} is not a text CSV file (it holds binary data); give the vote table (CSV)")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(data) <= len(head))
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{source} is not a UTF-8 text CSV file (byte {err.start} is {head[err.start : err.start + 1]!r}); "
            "give the vote table (CSV)"
        ) from None
    try:
        return read_votes(io.BytesIO(data))
    except pd.errors.ParserError as err:
        raise ValueError(f"{source} is not a readable CSV file: {err}") from None


def class_counts(classes: np.ndarray, n_classes: int = len(CLASS_NAMES)) -> dict[str, object]:
    """Counts per class, the no-class count and the total, as the CLI's JSON prints them."""
    classes = np.asarray(classes)
    counts = {str(k): int((classes == k).sum()) for k in range(n_classes)}
    return {"counts": counts, "unlabelled": int((classes == NO_CLASS).sum()), "total": int(classes.size)}
