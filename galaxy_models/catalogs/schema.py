"""The catalog's columns (a fixed pyarrow schema) and how one batch's class probabilities become rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from galaxy_models.domain import CLASS_NAMES, Flag, galaxy_id_from_key

PROBABILITY_COLUMNS = tuple(f"p_{label.replace('-', '_')}" for label in CLASS_NAMES)

CATALOG_SCHEMA = pa.schema(
    [
        pa.field("galaxy_id", pa.string(), nullable=False),
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("source_key", pa.string(), nullable=False),
        pa.field("predicted_class", pa.int8()),  # null where the image is unreadable
        pa.field("predicted_label", pa.string()),
        *(pa.field(name, pa.float32()) for name in PROBABILITY_COLUMNS),
        pa.field("confidence", pa.float32()),
        pa.field("entropy", pa.float32()),  # nats; ln 5 = 1.609 is a uniform guess
        pa.field("flag", pa.string(), nullable=False),
        pa.field("reason", pa.string()),  # why an image is unreadable
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("processed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"description": "galaxy-pipeline morphology catalog, one row per survey image"},
)


def catalog_rows(
    batch_id: str,
    source_keys: Sequence[str],
    reasons: Sequence[str | None],
    probabilities: np.ndarray,
    *,
    model_name: str,
    model_version: str,
    low_confidence: float,
    missing: Sequence[bool] | None = None,
) -> pa.Table:
    """One row per key, in order. ``probabilities`` is (N, 5) with NaN rows for images without a
    prediction (their ``reasons`` say why): flagged ``missing`` where ``missing`` is true (the file
    had gone), else ``unreadable``. The top class, its probability, the entropy and the flag follow."""
    p = probabilities
    readable = ~np.isnan(p).any(axis=1)
    predicted = np.where(readable, np.nan_to_num(p).argmax(axis=1), -1)
    confidence = np.where(readable, np.nan_to_num(p).max(axis=1), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = np.where(readable, -(np.where(p > 0, p * np.log(p), 0.0)).sum(axis=1), np.nan)
    gone = np.zeros(len(p), dtype=bool) if missing is None else np.asarray(missing, dtype=bool)
    flags = np.where(
        ~readable,
        np.where(gone, Flag.MISSING.value, Flag.UNREADABLE.value),
        np.where(confidence < low_confidence, Flag.LOW_CONFIDENCE.value, Flag.OK.value),
    )
    keys = [str(k) for k in source_keys]
    n = len(keys)
    columns: dict[str, object] = {
        "galaxy_id": [galaxy_id_from_key(k) for k in keys],
        "batch_id": [batch_id] * n,
        "source_key": keys,
        "predicted_class": pa.array(predicted, mask=~readable, type=pa.int8()),
        "predicted_label": pa.array(
            [CLASS_NAMES[c] if ok else None for c, ok in zip(predicted, readable, strict=True)], type=pa.string()
        ),
        **{name: pa.array(p[:, k], mask=~readable, type=pa.float32()) for k, name in enumerate(PROBABILITY_COLUMNS)},
        "confidence": pa.array(confidence, mask=~readable, type=pa.float32()),
        "entropy": pa.array(entropy, mask=~readable, type=pa.float32()),
        "flag": flags.tolist(),
        "reason": list(reasons),
        "model_name": [model_name] * n,
        "model_version": [model_version] * n,
        "processed_at": pa.array([datetime.now(UTC)] * n, type=pa.timestamp("us", tz="UTC")),
    }
    return pa.table(columns, schema=CATALOG_SCHEMA)
