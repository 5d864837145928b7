"""The catalog's columns (a fixed pyarrow schema) and how one batch's class probabilities become rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from galaxy_models.domain import CLASS_NAMES, Flag, galaxy_id_from_key

PROBABILITY_COLUMNS = tuple(f"p_{label.replace('-', '_')}" for label in CLASS_NAMES)
EMBEDDING_SIZE = 64  # classify --embeddings: pooled features projected by the model's PCA (inference.embeddings)
OBJECT_COLUMNS = ("ra", "dec", "objid")  # from the batch's sidecar table (catalogs.objects); null without one

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
        pa.field("ra", pa.float64()),  # degrees (J2000), [0, 360)
        pa.field("dec", pa.float64()),  # degrees (J2000), [-90, 90]
        pa.field("objid", pa.string()),  # the survey's own object id
        pa.field("embedding", pa.list_(pa.float32(), EMBEDDING_SIZE)),  # null unless classified with embeddings
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
    objects: pa.Table | None = None,
    embeddings: np.ndarray | None = None,
) -> pa.Table:
    """One row per key, in order. ``probabilities`` is (N, 5) with NaN rows for images without a
    prediction (their ``reasons`` say why): flagged ``missing`` where ``missing`` is true (the file
    had gone), else ``unreadable``. The top class, its probability, the entropy and the flag follow.
    ``objects``: the batch's sidecar columns (``catalogs.objects``), joined on galaxy_id; ``embeddings``:
    (N, EMBEDDING_SIZE) with NaN rows where there is none."""
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
    galaxy_ids = [galaxy_id_from_key(k) for k in keys]
    n = len(keys)
    columns: dict[str, object] = {
        "galaxy_id": galaxy_ids,
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
        **_object_columns(galaxy_ids, objects),
        "embedding": _embedding_column(embeddings, n),
    }
    return pa.table(columns, schema=CATALOG_SCHEMA)


def _object_columns(galaxy_ids: Sequence[str], objects: pa.Table | None) -> dict[str, pa.Array]:
    """ra, dec and objid for each galaxy id: the sidecar's row for it, else null."""
    types = {name: CATALOG_SCHEMA.field(name).type for name in OBJECT_COLUMNS}
    if objects is None:
        return {name: pa.nulls(len(galaxy_ids), type=kind) for name, kind in types.items()}
    position = {gid: i for i, gid in enumerate(objects.column("galaxy_id").to_pylist())}
    rows = pa.array([position.get(gid) for gid in galaxy_ids], type=pa.int64())
    return {name: objects.column(name).take(rows).combine_chunks().cast(kind) for name, kind in types.items()}


def _embedding_column(embeddings: np.ndarray | None, n: int) -> pa.Array:
    kind = CATALOG_SCHEMA.field("embedding").type
    if embeddings is None:
        return pa.nulls(n, type=kind)
    if embeddings.shape != (n, EMBEDDING_SIZE):
        raise ValueError(f"embeddings must have shape ({n}, {EMBEDDING_SIZE}), got {embeddings.shape}")
    values = pa.array(np.nan_to_num(embeddings).astype(np.float32).ravel(), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, EMBEDDING_SIZE, mask=pa.array(np.isnan(embeddings).any(axis=1)))
