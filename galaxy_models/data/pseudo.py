"""Pseudo-labels: a model's confident predictions standing in for the votes that gave no Table I class.

Fewer than half the GZ2 galaxies match a Table I rule (2,246 of the 4,665 labelled images here); the
rest have votes but no class. A catalog of a trained model's predictions for them (what
``galaxy-pipeline classify`` and ``catalog export`` write: ``galaxy_id``, ``predicted_class``,
``confidence``) can label the confident ones. Ingest puts those in the training split only, never in
validation or test, and never over a Table I class, so every reported score stays a score on
volunteer labels.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import pandas as pd

from galaxy_models.domain import CLASS_NAMES, is_name
from galaxy_models.storage import open_store, split_uri

COLUMNS = ("galaxy_id", "predicted_class", "confidence")
MAX_TABLE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class PseudoLabels:
    """The confident predictions of one catalog file."""

    classes: dict[str, int]  # galaxy_id -> predicted class, confidence >= the minimum asked for
    sha256: str
    rows: int  # rows in the file, confident or not


def load_pseudo_labels(uri: str, min_confidence: float) -> PseudoLabels:
    """Read a catalog (``.parquet``, else CSV) and keep the rows predicted with ``min_confidence`` or more.

    Rows without a prediction (unreadable images) are left out.

    Raises:
        ValueError: naming the file and what is wrong: a missing column, a duplicate or invalid
            galaxy ID, a class outside 0-4, a confidence outside [0, 1].
    """
    store_uri, key = split_uri(uri)
    data = open_store(store_uri).read_bytes(key, max_bytes=MAX_TABLE_BYTES)
    try:
        if uri.endswith(".parquet"):
            frame = pd.read_parquet(io.BytesIO(data))
        else:
            frame = pd.read_csv(io.BytesIO(data), dtype={"galaxy_id": str})
    except Exception as err:  # pandas and pyarrow raise many kinds for a file that is not a table
        raise ValueError(f"pseudo-label catalog {uri} cannot be read as a table: {err}") from err
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"pseudo-label catalog {uri} lacks column(s) {', '.join(missing)}; it needs {COLUMNS}")
    rows = len(frame)
    frame = frame[list(COLUMNS)].dropna(subset=["predicted_class", "confidence"])
    ids = frame["galaxy_id"].astype(str)
    bad = [gid for gid in ids if not is_name(gid)]
    if bad:
        raise ValueError(f"pseudo-label catalog {uri}: invalid galaxy IDs {bad[:5]}")
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        raise ValueError(f"pseudo-label catalog {uri}: duplicate galaxy IDs {duplicated[:5]}")
    classes, confidence = frame["predicted_class"].astype(float), frame["confidence"].astype(float)
    out_of_range = frame[(classes % 1 != 0) | (classes < 0) | (classes >= len(CLASS_NAMES))]
    if not out_of_range.empty:
        raise ValueError(
            f"pseudo-label catalog {uri}: predicted_class {float(out_of_range['predicted_class'].iloc[0]):g} "
            f"(galaxy {out_of_range['galaxy_id'].iloc[0]}) is not a class 0-{len(CLASS_NAMES) - 1}"
        )
    if ((confidence < 0) | (confidence > 1)).any():
        row = frame[(confidence < 0) | (confidence > 1)].iloc[0]
        value, gid = float(row["confidence"]), row["galaxy_id"]
        raise ValueError(f"pseudo-label catalog {uri}: confidence {value:g} of {gid} is not in [0, 1]")
    keep = confidence >= min_confidence
    chosen = dict(zip(ids[keep], classes[keep].astype(int), strict=True))
    return PseudoLabels(chosen, hashlib.sha256(data).hexdigest(), rows)
